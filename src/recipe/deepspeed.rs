//! The DeepSpeed config file a recipe names (`deepspeed: zero2.json`), from its parsed tree to the
//! typed `DeepSpeedConfig` (config/deepspeed.rs). JSON is YAML, so the recipe's own loader reads
//! it (recipe/mod.rs) and every diagnostic points at `file:line:col` inside the JSON. DeepSpeed
//! options recipe does not implement are refused by name first (quiet when empty or `false`), then
//! the DeepSpeed schema reports unknown keys (with did-you-mean) and wrong values, as for a recipe.
//! Agreement with the recipe's own keys is a cross-field rule (config/rules.rs).

use super::check::{decode, describe_node, map_schema_error, strip_nulls};
use super::diagnostic::Diagnostic;
use super::yaml::{Node, Value};
use crate::config::deepspeed::{self, DeepSpeedConfig};
use crate::config::schema;
use std::sync::OnceLock;

/// The recipe key the file hangs from; diagnostics' key paths start with it.
pub const KEY: &str = "deepspeed";

pub struct Checked {
    /// The file's tree, refused options and nulls removed.
    pub tree: Node,
    /// None when the file has errors.
    pub config: Option<DeepSpeedConfig>,
    pub diagnostics: Vec<Diagnostic>,
}

pub fn check(mut tree: Node) -> Checked {
    let mut diagnostics = Vec::new();
    settle(&mut tree, "", &mut diagnostics);
    let nulls = strip_nulls(&mut tree);
    let json = tree.to_json();
    let root = schema::deepspeed_schema();
    for error in validator().iter_errors(&json) {
        for d in map_schema_error(&error, &tree, &nulls, root) {
            let d = prefixed(d);
            if !diagnostics.contains(&d) {
                diagnostics.push(d);
            }
        }
    }
    let config = if diagnostics.iter().any(Diagnostic::is_error) {
        None
    } else {
        let mut decoded = Vec::new();
        let config = decode::<DeepSpeedConfig>(&json, &tree, &mut decoded);
        diagnostics.extend(decoded.into_iter().map(prefixed));
        config
    };
    Checked { tree, config, diagnostics }
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        jsonschema::draft202012::new(schema::deepspeed_schema()).expect("the DeepSpeed schema compiles")
    })
}

/// Key paths inside the file are shown under the recipe key: `deepspeed.zero_optimization.stage`.
fn prefixed(mut d: Diagnostic) -> Diagnostic {
    d.key_path = Some(match d.key_path {
        Some(path) => format!("{KEY}.{path}"),
        None => KEY.to_string(),
    });
    d
}

/// Removes the options of DeepSpeed's that recipe does not implement, with an error unless inert.
fn settle(node: &mut Node, prefix: &str, diagnostics: &mut Vec<Diagnostic>) {
    let Some(entries) = node.as_map_mut() else {
        return;
    };
    entries.retain(|entry| {
        let path = if prefix.is_empty() { entry.key.clone() } else { format!("{prefix}.{}", entry.key) };
        let Some(known) = deepspeed::lookup(&path) else {
            return true;
        };
        if !is_inert(&entry.value) {
            let help = match known.alternative {
                Some(alt) => format!("{alt}; or remove `{}` from the DeepSpeed config", entry.key),
                None => format!("remove `{}` from the DeepSpeed config", entry.key),
            };
            diagnostics.push(
                Diagnostic::error(
                    "unsupported-deepspeed-key",
                    format!("`{path}` is a DeepSpeed option that recipe does not support ({})", known.what),
                )
                .at(entry.key_span, "not supported by recipe")
                .key(format!("{KEY}.{path}"))
                .expected("an empty value, `false` or `{\"enabled\": false}`, which has no effect")
                .found(describe_node(&entry.value))
                .help(help),
            );
        }
        false
    });
    for entry in entries.iter_mut() {
        let path = if prefix.is_empty() { entry.key.clone() } else { format!("{prefix}.{}", entry.key) };
        settle(&mut entry.value, &path, diagnostics);
    }
}

/// Empty, `false`, or a section switched off with `"enabled": false`.
fn is_inert(node: &Node) -> bool {
    match &node.value {
        Value::Null | Value::Bool(false) => true,
        Value::Map(entries) => {
            entries.is_empty()
                || node.get("enabled").is_some_and(|e| matches!(e.value.value, Value::Bool(false) | Value::Null))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::source::SourceId;

    fn checked(text: &str) -> Checked {
        check(super::super::yaml::parse(text, SourceId(0), 0).unwrap().unwrap())
    }

    #[test]
    fn refused_options_are_named_and_inert_ones_pass() {
        let c = checked(
            r#"{"zero_optimization": {"stage": 3, "zero_quantized_weights": true}, "tensorboard": {"enabled": false}}"#,
        );
        assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
        assert_eq!(c.diagnostics[0].rule, "unsupported-deepspeed-key");
        assert_eq!(c.diagnostics[0].key_path.as_deref(), Some("deepspeed.zero_optimization.zero_quantized_weights"));
        assert!(c.config.is_none());
        let ok = checked(
            r#"{"zero_optimization": {"stage": 2, "zero_quantized_weights": false}, "tensorboard": {"enabled": false}}"#,
        );
        assert!(ok.diagnostics.is_empty(), "{:?}", ok.diagnostics);
        assert_eq!(ok.config.unwrap().stage(), crate::config::deepspeed::ZeroStage::Zero2);
    }

    #[test]
    fn typos_get_a_suggestion() {
        let c = checked(r#"{"zero_optimization": {"stage": 2, "overlap_com": true}}"#);
        assert_eq!(c.diagnostics[0].rule, "unknown-key");
        assert_eq!(c.diagnostics[0].suggestion.as_deref(), Some("overlap_comm"));
    }
}

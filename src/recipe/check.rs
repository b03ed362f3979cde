//! From the layered tree to a typed Config: Axolotl's keys, the JSON Schema, typed decoding and
//! the cross-field rules, every problem reported at its key with expected / found / did-you-mean.
//!
//! Order matters: Axolotl keys that recipe recognises but does not implement are settled first
//! (accepted quietly when inert, rejected by name otherwise), nulls are removed (an empty key means
//! "unset"), then the schema reports everything else in one pass, and only a schema-valid tree is
//! decoded and checked by the cross-field rules.

use super::deepspeed;
use super::diagnostic::{Diagnostic, did_you_mean, key_path};
use super::source::{Sources, Span};
use super::yaml::{Entry, Node, Value};
use crate::config::axolotl_keys::{self, AxolotlKeyKind, Inert};
use crate::config::training::{RlMethod, Switch};
use crate::config::{Config, rules, schema};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value as Json;
use std::sync::OnceLock;

pub struct Checked {
    pub tree: Node,
    pub config: Option<Config>,
    pub diagnostics: Vec<Diagnostic>,
    pub ignored_keys: Vec<String>,
    /// The DeepSpeed config file's tree (recipe/deepspeed.rs), when the recipe names one.
    pub deepspeed: Option<Node>,
}

/// Checks the layered tree; `deepspeed` is the parsed file its `deepspeed:` key names (None when
/// there is none, or it could not be read: the loader has reported that at the key).
pub fn check(mut tree: Node, deepspeed: Option<Node>, sources: &Sources) -> Checked {
    let mut diagnostics = Vec::new();
    let ignored_keys = settle_axolotl_keys(&mut tree, &mut diagnostics);
    // Axolotl keys refused by name: rules that name one stay quiet (the refusal says it all).
    let axolotl_refused: Vec<String> =
        diagnostics.iter().filter(|d| d.rule == "unsupported-axolotl-key").filter_map(|d| d.key_path.clone()).collect();
    let nulls = strip_nulls(&mut tree);
    let json = tree.to_json();
    // Top-level keys whose value the schema refused.
    let mut refused: Vec<String> = Vec::new();
    for error in validator().iter_errors(&json) {
        let pointer = pointer_segments(error.instance_path().as_str());
        match (pointer.first(), error.kind()) {
            (Some(key), _) => refused.push(key.clone()),
            (None, ValidationErrorKind::AdditionalProperties { unexpected }) => refused.extend(unexpected.clone()),
            (None, _) => {}
        }
        for d in map_schema_error(&error, &tree, &nulls, schema::schema()) {
            // A key can fail the same way under two schema paths (a union and its branch).
            if !diagnostics.contains(&d) {
                diagnostics.push(d);
            }
        }
    }
    let names_file = tree.get(deepspeed::KEY).is_some_and(|e| e.value.as_str().is_some());
    let deepspeed = deepspeed.map(deepspeed::check);
    let deepspeed_config = deepspeed.as_ref().and_then(|d| d.config.clone());
    if let Some(d) = &deepspeed {
        diagnostics.extend(d.diagnostics.iter().cloned());
    }
    // A file that is missing or has errors: the recipe is invalid, and rules about it stay quiet.
    if names_file && deepspeed_config.is_none() && !refused.iter().any(|k| k == deepspeed::KEY) {
        refused.push(deepspeed::KEY.into());
    }
    let deepspeed_tree = deepspeed.map(|d| d.tree);
    if refused.is_empty() {
        let mut config = decode::<Config>(&json, &tree, &mut diagnostics);
        if let Some(config) = &mut config {
            config.distributed.deepspeed_config = deepspeed_config;
            let at = Locator { tree: &tree, sources, deepspeed: deepspeed_tree.as_ref() };
            // Axolotl's normalize_config: `batch_size` alone gives the accumulation steps.
            let t = &mut config.training;
            if let Some(batch) = t.batch_size
                && at.entry("gradient_accumulation_steps").is_none()
            {
                t.gradient_accumulation_steps = (batch / t.micro_batch_size).max(1);
            }
            // Axolotl's spellings of recipe's settings: `rl_beta` (ORPO's beta under rl: orpo) and
            // `bfloat16: true`. Written beside recipe's own key, rules.rs names both.
            if let Some(beta) = t.rl_beta {
                if t.rl == Some(RlMethod::Orpo) {
                    if at.entry("orpo_alpha").is_none() {
                        t.orpo_alpha = Some(beta);
                    }
                } else if at.entry("dpo_beta").is_none() {
                    t.dpo_beta = beta;
                }
            }
            // Axolotl trains in bf16 when `bf16 or bfloat16`: true beats `bf16: auto` (false is an
            // error, rules.rs).
            if t.bfloat16 == Some(true) && t.bf16 != Switch::Off {
                t.bf16 = Switch::On;
            }
            diagnostics.extend(rules::check(config, &at, &axolotl_refused));
        }
        return Checked { tree, config, diagnostics, ignored_keys, deepspeed: deepspeed_tree };
    }
    // Report every problem at once: the cross-field rules still run on the keys the schema
    // accepted (the refused ones fall back to defaults, and rules involving them stay quiet). The
    // recipe stays invalid, so no config is returned.
    let mut accepted = tree.clone();
    if let Some(entries) = accepted.as_map_mut() {
        entries.retain(|e| !refused.contains(&e.key));
    }
    if let Ok(mut config) = serde_json::from_value::<Config>(accepted.to_json()) {
        config.distributed.deepspeed_config = deepspeed_config;
        let at = Locator { tree: &accepted, sources, deepspeed: deepspeed_tree.as_ref() };
        refused.extend(axolotl_refused);
        diagnostics.extend(rules::check(&config, &at, &refused));
    }
    Checked { tree, config: None, diagnostics, ignored_keys, deepspeed: deepspeed_tree }
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| jsonschema::draft202012::new(schema::schema()).expect("the generated schema compiles"))
}

/// Finds the key and value written at a dotted path, for rules and the plan's provenance.
pub struct Locator<'a> {
    pub tree: &'a Node,
    pub sources: &'a Sources,
    /// The DeepSpeed config file's tree: paths under `deepspeed.` are found there.
    pub deepspeed: Option<&'a Node>,
}

impl<'a> Locator<'a> {
    /// The entry at `path` (`lora_r`, `datasets.0.path`; `deepspeed.zero_optimization.stage` in
    /// the DeepSpeed config file).
    pub fn entry(&self, path: &str) -> Option<&'a Entry> {
        if let (Some(inner), Some(file)) = (path.strip_prefix("deepspeed."), self.deepspeed) {
            return locate(file, inner.split('.')).0;
        }
        locate(self.tree, path.split('.')).0
    }

    /// The span of the value at `path`, if the recipe (or a preset) wrote it.
    pub fn value_span(&self, path: &str) -> Option<Span> {
        self.entry(path).map(|e| e.value.span)
    }

    /// The span of the list item at `path` (`lora_target_modules.2`), if the recipe wrote it.
    pub fn item_span(&self, path: &str) -> Option<Span> {
        let (list, index) = path.rsplit_once('.')?;
        let index: usize = index.parse().ok()?;
        match &self.entry(list)?.value.value {
            Value::Seq(items) => items.get(index).map(|item| item.span),
            _ => None,
        }
    }

    /// Where the value at `path` came from: `file:line:col`, `preset NAME`, `--set ...` or `default`.
    pub fn origin(&self, path: &str) -> String {
        match self.entry(path) {
            Some(e) => self.sources.origin(e.value.span),
            None => "default".to_string(),
        }
    }

    /// The folder a relative path written as the value of `path` is relative to: the folder of the
    /// recipe file that wrote it (none for presets and `--set`, which are relative to the working
    /// directory).
    pub fn base_dir(&self, path: &str) -> std::path::PathBuf {
        self.value_span(path)
            .and_then(|span| self.sources.get(span.source).path())
            .and_then(std::path::Path::parent)
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// Top-level keys of Axolotl's that recipe does not implement: quiet when inert, errors otherwise.
fn settle_axolotl_keys(tree: &mut Node, diagnostics: &mut Vec<Diagnostic>) -> Vec<String> {
    let known = schema::top_level_keys();
    let mut ignored = Vec::new();
    let Some(entries) = tree.as_map_mut() else {
        return ignored;
    };
    entries.retain(|entry| {
        if known.contains(&entry.key.as_str()) {
            return true;
        }
        let Some(key) = axolotl_keys::lookup(&entry.key) else {
            return true;
        };
        if is_inert(&entry.value, key.inert) {
            ignored.push(entry.key.clone());
            return false;
        }
        let message = match key.kind {
            AxolotlKeyKind::Unsupported => format!("`{}` is an Axolotl option that recipe does not support", entry.key),
            AxolotlKeyKind::Integration => {
                format!("`{}` is an Axolotl integration that recipe does not support", entry.key)
            }
        };
        let accepted = match key.inert {
            Inert::Any => "any value".to_string(),
            Inert::Null => "an empty value".to_string(),
            Inert::NullOrFalse => "an empty value or `false`".to_string(),
            Inert::NullOr(v) => format!("an empty value or `{v}` (Axolotl's default)"),
        };
        let mut d = Diagnostic::error("unsupported-axolotl-key", message)
            .at(entry.key_span, "not supported by recipe")
            .key(entry.key.clone())
            .expected(format!("{accepted}, which has no effect"))
            .found(describe_node(&entry.value));
        let mut help = format!("remove `{}` from the recipe", entry.key);
        if let Some(alt) = key.alternative {
            help = format!("{alt}; or {help}");
        }
        d = d.help(help);
        diagnostics.push(d);
        false
    });
    ignored
}

fn is_inert(node: &Node, inert: Inert) -> bool {
    let empty = match &node.value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Seq(items) => items.is_empty(),
        Value::Map(entries) => entries.is_empty(),
        _ => false,
    };
    match inert {
        Inert::Any => true,
        Inert::Null => empty,
        Inert::NullOrFalse => empty || node.value == Value::Bool(false),
        Inert::NullOr(default) => {
            empty
                || match (&node.value, super::yaml::parse(default, node.span.source, 0)) {
                    (Value::Int(a), Ok(Some(Node { value: Value::Int(b), .. }))) => *a == b,
                    (Value::Int(a), Ok(Some(Node { value: Value::Float(b), .. }))) => *a as f64 == b,
                    (Value::Float(a), Ok(Some(Node { value: Value::Int(b), .. }))) => *a == b as f64,
                    (a, Ok(Some(b))) => *a == b.value,
                    _ => false,
                }
        }
    }
}

/// Where nulls were removed: an empty key means "unset". List items stay (a null item is an error).
pub(super) type NullKeys = Vec<(String, Span)>;

pub(super) fn strip_nulls(tree: &mut Node) -> NullKeys {
    let mut removed = Vec::new();
    strip(tree, "", &mut removed);
    removed
}

fn strip(node: &mut Node, pointer: &str, removed: &mut NullKeys) {
    match &mut node.value {
        Value::Map(entries) => {
            entries.retain(|e| {
                if e.value.is_null() {
                    removed.push((format!("{pointer}/{}", escape_pointer(&e.key)), e.key_span));
                    false
                } else {
                    true
                }
            });
            for e in entries.iter_mut() {
                let child = format!("{pointer}/{}", escape_pointer(&e.key));
                strip(&mut e.value, &child, removed);
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                strip(item, &format!("{pointer}/{i}"), removed);
            }
        }
        _ => {}
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn pointer_segments(pointer: &str) -> Vec<String> {
    pointer.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~")).collect()
}

/// The entry (when the last segment is a key) and node at a path of keys and list indices. A path
/// that leaves the tree stops at the last node reached, with no entry.
fn locate<S: AsRef<str>>(tree: &Node, segments: impl IntoIterator<Item = S>) -> (Option<&Entry>, &Node) {
    let mut node = tree;
    let mut entry = None;
    for s in segments {
        let s = s.as_ref();
        match &node.value {
            Value::Map(entries) => match entries.iter().find(|e| e.key == s) {
                Some(e) => {
                    entry = Some(e);
                    node = &e.value;
                }
                None => return (None, node),
            },
            Value::Seq(items) => match s.parse::<usize>().ok().and_then(|i| items.get(i)) {
                Some(item) => {
                    entry = None;
                    node = item;
                }
                None => return (None, node),
            },
            _ => return (None, node),
        }
    }
    (entry, node)
}

/// A value as "found" text: `string "abc"`, `integer 3`, `a mapping`.
pub(super) fn describe_node(node: &Node) -> String {
    match &node.value {
        Value::Null => "an empty value".into(),
        Value::Bool(b) => format!("`{b}` (a boolean)"),
        Value::Int(i) => format!("`{i}` (an integer)"),
        Value::Float(f) => format!("`{f:?}` (a number)"),
        Value::String(s) => format!("`{s}` (a string)"),
        Value::Seq(items) => format!("a list of {} items", items.len()),
        Value::Map(entries) => format!("a mapping with {} keys", entries.len()),
    }
}

fn json_type_word(t: &str) -> &str {
    match t {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean (true or false)",
        "null" => "empty",
        other => other,
    }
}

/// Short text for what a schema accepts.
fn describe_schema(s: &Json, root: &Json) -> String {
    if let Some(Json::String(r)) = s.get("$ref")
        && let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p))
    {
        return describe_schema(target, root);
    }
    if let Some(desc) = s.get("description").and_then(Json::as_str)
        && (s.get("anyOf").is_some() || s.get("oneOf").is_some())
    {
        return desc.trim_end_matches('.').to_string();
    }
    if let Some(Json::Array(values)) = s.get("enum") {
        return format!("one of {}", list_values(values));
    }
    if let Some(c) = s.get("const") {
        return format!("`{}`", plain(c));
    }
    if let Some(Json::Array(branches)) = s.get("anyOf") {
        let parts: Vec<String> = branches
            .iter()
            .filter(|b| b.get("type") != Some(&Json::String("null".into())))
            .map(|b| describe_schema(b, root))
            .collect();
        return parts.join(", or ");
    }
    match s.get("type") {
        Some(Json::String(t)) => json_type_word(t).to_string(),
        Some(Json::Array(ts)) => ts
            .iter()
            .filter_map(Json::as_str)
            .filter(|t| *t != "null")
            .map(json_type_word)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "a different value".to_string(),
    }
}

fn plain(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list_values(values: &[Json]) -> String {
    values.iter().filter(|v| !v.is_null()).map(|v| format!("`{}`", plain(v))).collect::<Vec<_>>().join(", ")
}

/// Schema errors as diagnostics at their keys; `root` is the schema validated against (the recipe's,
/// or the DeepSpeed config's).
pub(super) fn map_schema_error(
    error: &jsonschema::ValidationError<'_>,
    tree: &Node,
    nulls: &NullKeys,
    root: &Json,
) -> Vec<Diagnostic> {
    let instance_pointer = error.instance_path().as_str().to_string();
    let segments = pointer_segments(&instance_pointer);
    let path = key_path(&segments);
    let (entry, node) = locate(tree, &segments);
    let at = entry.map_or(node.span, |e| e.value.span);
    let last_key = segments.iter().rev().find(|s| s.parse::<usize>().is_err()).cloned().unwrap_or_default();
    let schema_pointer = error.schema_path().as_str().to_string();
    // The schema object holding the failed keyword (its `properties`, `description`, bounds).
    let property_schema = || -> Json {
        let parent = schema_pointer.rsplit_once('/').map_or("", |(a, _)| a);
        root.pointer(parent).cloned().unwrap_or(Json::Null)
    };
    let base = |rule: &'static str, message: String| -> Diagnostic {
        let d = Diagnostic::error(rule, message);
        if path.is_empty() { d } else { d.key(path.clone()) }
    };

    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let parent = property_schema();
            let candidates: Vec<String> = parent
                .get("properties")
                .and_then(Json::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            unexpected
                .iter()
                .map(|key| {
                    let span = node.get(key).map_or(node.span, |e| e.key_span);
                    let full = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    let suggestion = did_you_mean(key, candidates.iter().map(String::as_str));
                    let where_ = if path.is_empty() { "at the top level".to_string() } else { format!("in `{path}`") };
                    let mut d = Diagnostic::error("unknown-key", format!("unknown key `{key}` {where_}"))
                        .at(span, "unknown key")
                        .key(full)
                        .suggest(suggestion.clone());
                    if suggestion.is_none() {
                        d = d.help(format!(
                            "keys allowed here: {}",
                            candidates.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                        ));
                    }
                    d
                })
                .collect()
        }
        ValidationErrorKind::Required { property } => {
            let name = plain(property);
            let full = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
            let null_pointer = format!("{instance_pointer}/{}", escape_pointer(&name));
            let d = match nulls.iter().find(|(p, _)| *p == null_pointer) {
                Some((_, span)) => Diagnostic::error("required", format!("`{full}` is empty, but it is required"))
                    .at(*span, "needs a value"),
                None => {
                    let span = entry.map_or(node.span, |e| e.key_span);
                    let span = Span { end: span.start.max(span.end.min(span.start + 1)), ..span };
                    Diagnostic::error("required", format!("missing required key `{name}`"))
                        .at(span, format!("`{name}` is missing here"))
                }
            };
            vec![d.key(full)]
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => json_type_word(&t.to_string()).to_string(),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| t.to_string())
                    .filter(|t| t != "null")
                    .map(|t| json_type_word(&t).to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            // A value of Axolotl's that recipe lacks (`gradient_checkpointing: offload_disk`) is named.
            if let Value::String(s) = &node.value
                && let Some(what) = axolotl_keys::unsupported_value(&last_key, s)
            {
                return vec![
                    base(
                        "unsupported-axolotl-value",
                        format!("`{s}` is an Axolotl {what} that recipe does not support"),
                    )
                    .at(at, "not supported by recipe")
                    .expected(expected)
                    .found(describe_node(node)),
                ];
            }
            let mut d = base("type", format!("`{path}` must be {expected}"))
                .at(at, format!("expected {expected}"))
                .expected(expected.clone())
                .found(describe_node(node));
            if let Value::String(s) = &node.value {
                if expected.starts_with("a boolean") && matches!(s.as_str(), "yes" | "no" | "on" | "off" | "y" | "n") {
                    d = d.help("YAML 1.2 reads yes/no/on/off as text: write true or false");
                } else if s.parse::<f64>().is_ok() && (expected.contains("number") || expected.contains("integer")) {
                    d = d.help("remove the quotes: a quoted number is text");
                } else if s.contains('_') && s.replace('_', "").parse::<f64>().is_ok() {
                    d = d.help(format!(
                        "YAML 1.2 reads {s} as text (digit separators are YAML 1.1): write {}",
                        s.replace('_', "")
                    ));
                }
            } else if last_key == "tokens" && matches!(node.value, Value::Map(_)) {
                d = d.help("named special tokens (bos_token, eos_token, ...) go under `special_tokens`; `tokens` lists tokens to add");
            }
            vec![d]
        }
        ValidationErrorKind::Enum { options } => {
            let values = options.as_array().cloned().unwrap_or_default();
            let mut d = enum_diagnostic(base, &path, &last_key, at, node, &values);
            if values.iter().filter(|v| !v.is_null()).count() == 1
                && let Some(desc) = property_schema().get("description").and_then(Json::as_str)
            {
                d = d.help(desc.to_string());
            }
            vec![d]
        }
        ValidationErrorKind::Constant { expected_value } => {
            let (rule, why) = fixed_value(&last_key);
            let mut d = base(rule, format!("`{path}` must be `{}`{why}", plain(expected_value)))
                .at(at, format!("expected `{}`", plain(expected_value)))
                .expected(format!("`{}`", plain(expected_value)))
                .found(describe_node(node));
            if let Some(desc) = property_schema().get("description").and_then(Json::as_str) {
                d = d.help(desc.to_string());
            }
            vec![d]
        }
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => {
            let relation = match error.kind() {
                ValidationErrorKind::Minimum { .. } => "at least",
                ValidationErrorKind::Maximum { .. } => "at most",
                ValidationErrorKind::ExclusiveMinimum { .. } => "greater than",
                _ => "less than",
            };
            let range = describe_range(&property_schema());
            vec![
                base("range", format!("`{path}` must be {relation} {limit}"))
                    .at(at, format!("out of range: {range}"))
                    .expected(range)
                    .found(describe_node(node)),
            ]
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            let anyof_schema = property_schema();
            // Branches whose complaint is only "wrong type here" are not what the user meant.
            let plausible: Vec<&Vec<jsonschema::ValidationError<'static>>> = context
                .iter()
                .filter(|errors| {
                    !errors.iter().any(|e| {
                        e.instance_path().as_str() == instance_pointer
                            && matches!(e.kind(), ValidationErrorKind::Type { .. })
                    })
                })
                .collect();
            if let [only] = plausible.as_slice() {
                return only.iter().flat_map(|e| map_schema_error(e, tree, nulls, root)).collect();
            }
            // A closed set of names among the alternatives (dataset `type`, presets): treat as an enum.
            if let Value::String(_) = node.value
                && let Some(Json::Array(branches)) = anyof_schema.get("anyOf")
                && let Some(Json::Array(values)) = branches.iter().find_map(|b| b.get("enum"))
            {
                return vec![enum_diagnostic(base, &path, &last_key, at, node, values)];
            }
            let expected = describe_schema(&anyof_schema, root);
            vec![
                base("type", format!("`{path}` must be {expected}"))
                    .at(at, "not an accepted value")
                    .expected(expected)
                    .found(describe_node(node)),
            ]
        }
        _ => vec![base("schema", format!("`{path}`: {error}")).at(at, "here").found(describe_node(node))],
    }
}

/// The rule and reason for a key whose only accepted value is fixed (a schema const or a one-value
/// enum): Axolotl settings recipe does not support are "not supported", not "wrong".
fn fixed_value(key: &str) -> (&'static str, &'static str) {
    match key {
        "trust_remote_code" => ("unsupported-remote-code", ": a recipe never runs code"),
        "lora_fan_in_fan_out" => {
            ("unsupported-axolotl-value", ": no model family of recipe's stores (in, out) weights")
        }
        _ => ("value", ""),
    }
}

fn enum_diagnostic(
    base: impl Fn(&'static str, String) -> Diagnostic,
    path: &str,
    last_key: &str,
    at: Span,
    node: &Node,
    values: &[Json],
) -> Diagnostic {
    let expected = format!("one of {}", list_values(values));
    let (rule, message, suggestion) = match &node.value {
        Value::String(s) => {
            let names: Vec<String> = values.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect();
            let suggestion = did_you_mean(s, names.iter().map(String::as_str));
            match axolotl_keys::unsupported_value(last_key, s) {
                // Code fetched at run time is refused as remote code is.
                Some(what) if what.ends_with("from the hub") => (
                    "unsupported-remote-code",
                    format!("`{s}` is an Axolotl {what}, which is code: a recipe never runs code"),
                    suggestion,
                ),
                Some(what @ "model class") => {
                    ("unsupported-architecture", format!("`{s}` is a {what} that recipe does not support"), suggestion)
                }
                Some(what) => (
                    "unsupported-axolotl-value",
                    format!("`{s}` is an Axolotl {what} that recipe does not support"),
                    suggestion,
                ),
                None => ("value", format!("`{s}` is not a valid value for `{path}`"), suggestion),
            }
        }
        _ => match values.iter().filter(|v| !v.is_null()).collect::<Vec<_>>().as_slice() {
            [single] => {
                let (rule, why) = fixed_value(last_key);
                (rule, format!("`{path}` must be `{}`{why}", plain(single)), None)
            }
            _ => ("value", format!("`{path}` must be {expected}"), None),
        },
    };
    base(rule, message)
        .at(at, "not one of the accepted values")
        .expected(expected)
        .found(describe_node(node))
        .suggest(suggestion)
}

fn describe_range(s: &Json) -> String {
    let num = |k: &str| s.get(k).map(|v| v.to_string());
    let low = num("minimum").map(|v| format!("≥ {v}")).or(num("exclusiveMinimum").map(|v| format!("> {v}")));
    let high = num("maximum").map(|v| format!("≤ {v}")).or(num("exclusiveMaximum").map(|v| format!("< {v}")));
    match (low, high) {
        (Some(l), Some(h)) => format!("a value {l} and {h}"),
        (Some(l), None) => format!("a value {l}"),
        (None, Some(h)) => format!("a value {h}"),
        (None, None) => "a different value".into(),
    }
}

/// Typed decoding of a schema-valid tree. A failure here means the schema accepted a value the
/// types refuse (e.g. `lora_r: 8.0`); it is still reported at its key.
pub(super) fn decode<T: serde::de::DeserializeOwned>(
    json: &Json,
    tree: &Node,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(json) {
        Ok(config) => Some(config),
        Err(e) => {
            use serde_path_to_error::Segment;
            let segments: Vec<String> = e
                .path()
                .iter()
                .filter_map(|segment| match segment {
                    Segment::Seq { index } => Some(index.to_string()),
                    Segment::Map { key } => Some(key.clone()),
                    Segment::Enum { .. } | Segment::Unknown => None,
                })
                .collect();
            let (entry, node) = locate(tree, &segments);
            let at = entry.map_or(node.span, |e| e.value.span);
            let mut message = e.inner().to_string();
            if let Value::Float(f) = node.value
                && f.fract() == 0.0
            {
                message = format!("`{}` must be a whole number written without a decimal point", key_path(&segments));
            }
            diagnostics.push(
                Diagnostic::error("type", message).at(at, "here").key(key_path(&segments)).found(describe_node(node)),
            );
            None
        }
    }
}

//! The recipe JSON Schema (draft 2020-12), generated from the Config types.
//!
//! Generation is schemars' plus two passes of ours: every optional property also accepts null
//! (Axolotl recipes leave keys empty to mean "unset"), and every object property is documented.
//! The committed copy lives at schema/recipe.schema.json; `tests/schema_in_sync.rs` compares it
//! with this output (`RECIPE_UPDATE_SCHEMA=1` rewrites it).

use super::Config;
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// Where the schema is published in the repository.
pub const SCHEMA_PATH: &str = "schema/recipe.schema.json";

/// The schema as JSON.
pub fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
        let mut value = generator.into_root_schema_for::<Config>().to_value();
        let obj = value.as_object_mut().expect("root schema is an object");
        obj.insert("$id".into(), Value::String("https://recipe.dev/schema/recipe.schema.json".into()));
        closed_sets_as_enums(&mut value);
        allow_null_everywhere(&mut value);
        value
    })
}

/// The schema a DeepSpeed config file (`deepspeed:`) is checked against: the keys recipe reads
/// (config/deepspeed.rs), closed sets as enums. Internal: the file is DeepSpeed's format, not ours.
pub fn deepspeed_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
        let mut value = generator.into_root_schema_for::<super::deepspeed::DeepSpeedConfig>().to_value();
        closed_sets_as_enums(&mut value);
        value
    })
}

/// The schema as the committed text (pretty JSON, trailing newline).
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(schema()).expect("schema serializes");
    text.push('\n');
    text
}

/// schemars writes a documented unit enum as `oneOf` of `const`s; a plain `enum` gives editors a
/// completion list and validators a one-line error. The variant docs move into the description
/// (and `enumDescriptions`, which VS Code and the YAML language server show).
fn closed_sets_as_enums(value: &mut Value) {
    match value {
        Value::Object(map) => {
            // Each branch is a documented `const` or an undocumented `enum` group.
            let consts = map.get("oneOf").and_then(Value::as_array).and_then(|branches| {
                let mut all = Vec::new();
                for b in branches {
                    let b = b.as_object()?;
                    if !b.keys().all(|k| matches!(k.as_str(), "const" | "enum" | "description" | "type")) {
                        return None;
                    }
                    match (b.get("const"), b.get("enum").and_then(Value::as_array)) {
                        (Some(c), None) => all.push((c.clone(), b.get("description").cloned())),
                        (None, Some(values)) => all.extend(values.iter().map(|v| (v.clone(), None))),
                        _ => return None,
                    }
                }
                Some(all)
            });
            if let Some(consts) = consts {
                map.remove("oneOf");
                let names: Vec<Value> = consts.iter().map(|(c, _)| c.clone()).collect();
                let docs: Vec<Value> =
                    consts.iter().map(|(_, d)| d.clone().unwrap_or(Value::String(String::new()))).collect();
                if consts.iter().any(|(_, d)| d.is_some()) {
                    let lines: Vec<String> = consts
                        .iter()
                        .map(|(c, d)| {
                            let name = c.as_str().map_or_else(|| c.to_string(), str::to_owned);
                            match d.as_ref().and_then(Value::as_str) {
                                Some(d) => format!("- `{name}`: {d}"),
                                None => format!("- `{name}`"),
                            }
                        })
                        .collect();
                    let text = match map.get("description").and_then(Value::as_str) {
                        Some(d) => format!("{d}\n\n{}", lines.join("\n")),
                        None => lines.join("\n"),
                    };
                    map.insert("description".into(), Value::String(text));
                    map.insert("enumDescriptions".into(), Value::Array(docs));
                }
                if names.iter().all(Value::is_string) {
                    map.insert("type".into(), Value::String("string".into()));
                }
                map.insert("enum".into(), Value::Array(names));
            }
            for (_, child) in map.iter_mut() {
                closed_sets_as_enums(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(closed_sets_as_enums),
        _ => {}
    }
}

/// Makes every non-required property of every object schema accept `null`.
fn allow_null_everywhere(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let required: Vec<String> = map
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                for (name, prop) in props.iter_mut() {
                    if !required.contains(name) {
                        make_nullable(prop);
                    }
                }
            }
            for (_, child) in map.iter_mut() {
                allow_null_everywhere(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(allow_null_everywhere),
        _ => {}
    }
}

fn make_nullable(prop: &mut Value) {
    let Value::Object(map) = prop else { return };
    if let Some(Value::Array(values)) = map.get_mut("enum") {
        if !values.contains(&Value::Null) {
            values.push(Value::Null);
        }
        if let Some(t) = map.get_mut("type") {
            add_null_type(t);
        }
        return;
    }
    if map.contains_key("const") {
        let c = map.remove("const").expect("checked");
        map.insert("enum".into(), Value::Array(vec![c, Value::Null]));
        if let Some(t) = map.get_mut("type") {
            add_null_type(t);
        }
        return;
    }
    if let Some(t) = map.get_mut("type") {
        add_null_type(t);
        return;
    }
    if let Some(Value::Array(branches)) = map.get_mut("anyOf") {
        if !branches.iter().any(|b| b.get("type") == Some(&Value::String("null".into()))) {
            branches.push(serde_json::json!({"type": "null"}));
        }
        return;
    }
    // A bare $ref (or anything else): wrap it.
    let inner: Map<String, Value> = std::mem::take(map);
    let (docs, rest): (Map<String, Value>, Map<String, Value>) =
        inner.into_iter().partition(|(k, _)| matches!(k.as_str(), "description" | "default" | "title"));
    map.extend(docs);
    map.insert("anyOf".into(), serde_json::json!([Value::Object(rest), {"type": "null"}]));
}

fn add_null_type(t: &mut Value) {
    match t {
        Value::String(s) if s != "null" => *t = serde_json::json!([s.clone(), "null"]),
        Value::Array(types) if !types.contains(&Value::String("null".into())) => {
            types.push(Value::String("null".into()))
        }
        _ => {}
    }
}

/// The names of the top-level keys the schema defines.
pub fn top_level_keys() -> Vec<&'static str> {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    KEYS.get_or_init(|| schema()["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default())
        .iter()
        .map(String::as_str)
        .collect()
}

//! The committed schema/recipe.schema.json must equal the schema generated from the Config types.
//! `RECIPE_UPDATE_SCHEMA=1 cargo test --test schema_in_sync` rewrites it.

use recipe::config::schema::{SCHEMA_PATH, schema_text};

#[test]
fn committed_schema_matches_the_config_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMA_PATH);
    let generated = schema_text();
    if std::env::var_os("RECIPE_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("write schema");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{SCHEMA_PATH} is out of date with the Config types; run `RECIPE_UPDATE_SCHEMA=1 cargo test --test schema_in_sync` and commit it"
    );
}

#[test]
fn schema_is_draft_2020_12_and_every_property_is_documented() {
    let schema = recipe::config::schema::schema();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    let mut undocumented = Vec::new();
    visit(schema, "", &mut undocumented);
    assert!(undocumented.is_empty(), "properties without a description: {undocumented:?}");
}

fn visit(value: &serde_json::Value, at: &str, undocumented: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            // `if` conditions of the dataset union only test `type`; they are not properties users write.
            let condition = at.ends_with("/if");
            if let (false, Some(serde_json::Value::Object(props))) = (condition, map.get("properties")) {
                for (name, prop) in props {
                    if prop.get("description").is_none() {
                        undocumented.push(format!("{at}/{name}"));
                    }
                }
            }
            for (k, v) in map {
                visit(v, &format!("{at}/{k}"), undocumented);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                visit(v, &format!("{at}/{i}"), undocumented);
            }
        }
        _ => {}
    }
}

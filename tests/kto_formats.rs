//! Axolotl's KTO dataset types (`chatml.*`, `llama3.*`): every type turns the fixture rows into the
//! prompt, answer and label Axolotl's own transforms make (goldens from
//! scripts/reference/kto_format_goldens.py, which runs them).

use recipe::config::string_transforms::{StringTransform, TransformReading};
use recipe::data::string_transforms::unpaired_row;
use serde_json::Value;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_kto_type_builds_the_rows_axolotl_builds() {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/golden/kto_formats.json")).unwrap()).unwrap();
    let golden = golden.as_object().unwrap();
    assert_eq!(golden.len(), 10, "five field styles in ChatML and Llama-3 turns");
    for (name, case) in golden {
        let format = StringTransform::from_type(name).unwrap_or_else(|| panic!("`{name}` is not a type recipe reads"));
        assert!(format.defined_for(TransformReading::Unpaired), "`{name}` is not a KTO type recipe reads");
        assert_eq!(format.type_name(), name);
        let text =
            std::fs::read_to_string(root().join("tests/fixtures/kto").join(case["rows"].as_str().unwrap())).unwrap();
        let rows: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let expected = case["expected"].as_array().unwrap();
        assert_eq!(rows.len(), expected.len());
        for (i, (row, want)) in rows.iter().zip(expected).enumerate() {
            let got = unpaired_row(row, format).unwrap_or_else(|e| panic!("{name} row {i}: {e}"));
            assert_eq!(got.prompt, want["prompt"], "{name} row {i}: prompt");
            assert_eq!(got.chosen, want["completion"], "{name} row {i}: answer");
            assert_eq!(got.desirable, want["label"].as_bool(), "{name} row {i}: label");
            assert_eq!(got.rejected, Value::Null);
        }
    }
}

#[test]
fn a_kto_row_without_its_label_or_fields_is_a_bad_row() {
    let format = StringTransform::from_type("llama3.ultra").unwrap();
    let no_label = serde_json::json!({"prompt": "Hi", "completion": "Hello"});
    assert_eq!(unpaired_row(&no_label, format).unwrap_err(), "field `label` is missing");
    let text_label = serde_json::json!({"prompt": "Hi", "completion": "Hello", "label": "yes"});
    assert!(unpaired_row(&text_label, format).unwrap_err().contains("must be true or false"));
    let no_prompt = serde_json::json!({"instruction": "Hi", "completion": "Hello", "label": true});
    assert_eq!(unpaired_row(&no_prompt, format).unwrap_err(), "field `prompt` is missing");
}

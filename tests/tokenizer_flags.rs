//! What `tokenizer(text)` adds and which special tokens the tokenizer names, against transformers
//! 5.24's `AutoTokenizer.from_pretrained` on small tokenizer folders (goldens and folders written by
//! scripts/reference/tokenizer_flags_goldens.py from models/stories260k's files).

use recipe::data::Tokenizer;
use serde_json::Value;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|i| i.as_i64().unwrap()).collect()
}

#[test]
fn special_tokens_added_and_named_as_transformers() {
    let text = std::fs::read_to_string(root().join("tests/golden/tokenizer_flags.json")).unwrap();
    let golden: Value = serde_json::from_str(&text).unwrap();
    let cases = golden["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 12);
    for (case, want) in cases {
        let tok = Tokenizer::load(&root().join("tests/fixtures/tokenizers").join(case)).unwrap();
        assert_eq!(tok.bos_token_id(), want["bos_token_id"].as_i64(), "{case}: bos_token_id");
        assert_eq!(tok.eos_text().as_deref(), want["eos_token"].as_str(), "{case}: eos_token");
        for row in want["texts"].as_array().unwrap() {
            let t = row["text"].as_str().unwrap();
            assert_eq!(tok.encode_with_special(t).unwrap(), ids(&row["input_ids"]), "{case}: {t:?}");
            assert_eq!(tok.encode(t).unwrap(), ids(&row["plain_ids"]), "{case}: {t:?} plain");
            let (prefix, suffix) = (ids(&row["prefix"]), ids(&row["suffix"]));
            let bos = if prefix.len() == 1 { Some(prefix[0]) } else { None };
            assert_eq!(tok.bos(), bos, "{case}: bos()");
            // eos() names the token eos_text() was checked to be.
            let eos: Vec<i64> = tok.eos().into_iter().collect();
            assert_eq!(tok.adds_eos(), !eos.is_empty() && suffix == eos, "{case}: adds_eos()");
        }
    }
    // The cases where the config and the post-processor disagree are the point of the goldens.
    let prefix = |case: &str| ids(&cases[case]["texts"][0]["prefix"]);
    let suffix = |case: &str| ids(&cases[case]["texts"][0]["suffix"]);
    assert_eq!(prefix("config_no_bos"), vec![1], "add_bos_token false does not drop the post-processor's BOS");
    assert!(suffix("config_eos").is_empty(), "add_eos_token true adds no EOS");
    assert!(prefix("no_post_processor").is_empty() && suffix("no_post_processor").is_empty());
    assert_eq!(suffix("post_processor_eos"), vec![2]);
    assert_eq!(prefix("codellama_no_post_processor"), vec![1]);
    assert_eq!(cases["map_overrides_config"]["eos_token"], "<unk>");
}

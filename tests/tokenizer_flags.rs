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

fn golden() -> Value {
    let text = std::fs::read_to_string(root().join("tests/golden/tokenizer_flags.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `tok` against one golden case: the special tokens it names and what `tokenizer(text)` gives.
fn check(tok: &Tokenizer, case: &str, want: &Value) {
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

#[test]
fn special_tokens_added_and_named_as_transformers() {
    let golden = golden();
    let cases = golden["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 12);
    for (case, want) in cases {
        let dir = root().join("tests/fixtures/tokenizers").join(case);
        check(&Tokenizer::load(&dir).unwrap(), case, want);
        // The chat templates' `eos_token` is the same text (transformers passes its own to them).
        let special = recipe::data::template::SpecialTokenStrings::from_model_dir(&dir).unwrap();
        assert_eq!(special.eos_token.as_deref(), want["eos_token"].as_str(), "{case}: template eos_token");
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

/// A recipe's `special_tokens` (Axolotl's `add_special_tokens` call) name new BOS/EOS tokens, but
/// the post-processor keeps adding the old BOS, as transformers 5 does.
#[test]
fn special_tokens_set_keep_the_post_processors_bos() {
    let golden = golden();
    let want = &golden["special_tokens_set"];
    let mut tok = Tokenizer::load(&root().join("tests/fixtures/tokenizers/as_is")).unwrap();
    let special = recipe::config::chat_template::SpecialTokens {
        bos_token: want["bos_token"].as_str().map(str::to_string),
        eos_token: want["eos_token"].as_str().map(str::to_string),
        ..Default::default()
    };
    assert_eq!(tok.add(&special, &[]).unwrap(), 2);
    check(&tok, "special_tokens_set", want);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.bos_token_id(), Some(512));
}

//! Axolotl's string preference types through recipe's data path (`recipe preview --json`, no
//! libtorch needed): under `rl: dpo` every `chatml.*` / `llama3.*` type of Axolotl's
//! `prompt_strategies/dpo`, and under `rl: orpo` `chat_template.argilla`, give the prompt, chosen and
//! rejected texts Axolotl's own transforms give, and the token ids TRL's trainer makes of them (goldens
//! from scripts/reference/preference_format_goldens.py); the same names are errors under a method
//! whose Axolotl module lacks them; ORPO's bad rows are named. Every method tokenizes text and
//! message rows as its TRL trainer does (scripts/reference/preference_tokenization_goldens.py).

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("tests/golden/preference_formats.json")).unwrap())
        .unwrap()
}

fn fixture(rows: &str) -> PathBuf {
    root().join("tests/fixtures").join(rows)
}

/// A recipe on stories260k reading the file `rows` as `type`.
fn write_recipe(dir: &Path, r#type: &str, rows: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "base_model: {model}\nadapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n{extra}\
         datasets:\n  - path: {data}\n    type: {type}\n\
         val_set_size: 0\nshuffle_merged_datasets: false\nsequence_len: 256\nmicro_batch_size: 2\n\
         learning_rate: 5.0e-6\nmax_steps: 2\nseed: 3\noutput_dir: {out}\n",
        model = root().join("models/stories260k").display(),
        data = rows.display(),
        out = dir.join("out").display(),
    );
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn preview(path: &Path) -> Value {
    let out = common::recipe_command().args(["preview", "--json", "-n", "99"]).arg(path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

/// A previewed pair's ids against a golden's: per answer, the prompt ids before it and its own ids
/// (as the method's TRL trainer makes them). Returns whether the pair carried its own rejected prompt.
fn check_ids(what: &str, got: &Value, want: &Value) -> bool {
    let own = !got["rejected_prompt_ids"].is_null();
    let rejected_prompt = if own { &got["rejected_prompt_ids"] } else { &got["prompt_ids"] };
    for (side, prompt) in [("chosen", &got["prompt_ids"]), ("rejected", rejected_prompt)] {
        assert_eq!(ids(prompt), ids(&want[side]["prompt_ids"]), "{what}: prompt ids before the {side} answer");
        assert_eq!(ids(&got[&format!("{side}_ids")]), ids(&want[side]["answer_ids"]), "{what}: {side} ids");
    }
    own
}

/// The previewed pair from line `line` (1-based) of the case's fixture.
fn pair_from_line<'a>(pairs: &'a [Value], case: &Value, line: usize) -> &'a Value {
    let origin = format!("{}:{line}", case["rows"].as_str().unwrap().rsplit('/').next().unwrap());
    pairs
        .iter()
        .find(|p| p["origin"].as_str().unwrap().ends_with(&origin))
        .unwrap_or_else(|| panic!("{}: no pair from {origin}", case["type"]))
}

/// Each previewed pair (by its fixture line) against the golden texts and ids.
fn check_case(case: &Value, pairs: &[Value]) -> usize {
    let name = case["type"].as_str().unwrap();
    let expected = case["expected"].as_array().unwrap();
    assert_eq!(pairs.len(), expected.len(), "{name} on {}: pairs", case["rows"]);
    for (i, want) in expected.iter().enumerate() {
        let got = pair_from_line(pairs, case, i + 1);
        for field in ["prompt", "chosen", "rejected"] {
            assert_eq!(got[field], want[field], "{name} line {}: {field} text", i + 1);
        }
        check_ids(&format!("{name} line {}", i + 1), got, &want["ids"]);
    }
    expected.len()
}

#[test]
fn every_dpo_string_type_gives_the_pairs_axolotl_gives() {
    let golden = golden();
    let cases = golden["dpo"].as_array().unwrap();
    assert_eq!(cases.len(), 14, "six types in ChatML and Llama-3 turns, `default` on two fixtures");
    let dir = tempfile::tempdir().unwrap();
    let mut rows = 0;
    for case in cases {
        let path = write_recipe(
            dir.path(),
            case["type"].as_str().unwrap(),
            &fixture(case["rows"].as_str().unwrap()),
            "rl: dpo\ndpo_beta: 0.1\n",
        );
        let json = preview(&path);
        rows += check_case(case, json["pairs"].as_array().unwrap());
    }
    eprintln!("{rows} pairs of 14 DPO cases equal Axolotl's texts and token ids");
}

/// `chat_template.default` under the methods that read Axolotl's prompt_strategies/dpo: Axolotl's
/// `default` transform's texts, tokenized as TRL's DPO / CPO trainer tokenizes them.
#[test]
fn chat_template_default_under_dpo_and_simpo_gives_the_pairs_axolotl_gives() {
    let golden = golden();
    let cases = golden["default"].as_array().unwrap();
    assert_eq!(cases.len(), 6, "DPO and SimPO on message rows in two templates and on text rows in chatml");
    let dir = tempfile::tempdir().unwrap();
    let mut rows = 0;
    for case in cases {
        let extra = format!(
            "rl: {}\nchat_template: {}\n",
            case["method"].as_str().unwrap(),
            case["chat_template"].as_str().unwrap()
        );
        let r#type = "chat_template.default\n    field_messages: prompt";
        let path = write_recipe(dir.path(), r#type, &fixture(case["rows"].as_str().unwrap()), &extra);
        rows += check_case(case, preview(&path)["pairs"].as_array().unwrap());
    }
    assert_eq!(rows, 22);
}

#[test]
fn orpo_argilla_gives_the_pairs_axolotl_gives() {
    let golden = golden();
    let case = &golden["orpo"][0];
    assert_eq!(case["type"], "chat_template.argilla");
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("rl: orpo\norpo_alpha: 0.1\nchat_template: {}\n", case["chat_template"].as_str().unwrap());
    let path = write_recipe(dir.path(), "chat_template.argilla", &fixture(case["rows"].as_str().unwrap()), &extra);
    let json = preview(&path);
    let n = check_case(case, json["pairs"].as_array().unwrap());
    assert_eq!(n, 4, "single-turn, system, multi-turn and `prompt` rows");
}

#[test]
fn an_odd_conversation_is_a_bad_row_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("odd.jsonl");
    let good = std::fs::read_to_string(fixture("orpo/argilla.jsonl")).unwrap();
    let odd = r#"{"chosen": [{"role": "user", "content": "Hi"}], "rejected": [{"role": "user", "content": "Hi"}]}"#;
    std::fs::write(&rows, format!("{}\n{odd}\n", good.lines().next().unwrap())).unwrap();
    let path = write_recipe(dir.path(), "chat_template.argilla", &rows, "rl: orpo\nchat_template: chatml\n");
    let out = common::recipe_command().args(["preview"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("odd.jsonl:2: field `chosen` has 1 messages"), "{stderr}");
    let json = {
        let out = common::recipe_command()
            .args(["preview", "--json", "--set", "skip_bad_rows=true"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert!(json["report"][0].as_str().unwrap().contains("1 malformed rows skipped"), "{}", json["report"]);
    assert_eq!(json["train_pairs"], 1);
}

#[test]
fn a_string_type_is_an_error_under_a_method_whose_axolotl_module_lacks_it() {
    let dir = tempfile::tempdir().unwrap();
    for (r#type, extra, needle) in [
        ("chatml.argilla", "rl: dpo\n", "which Axolotl defines for rl: kto (prompt_strategies/kto/chatml.py) only"),
        ("llama3.icr", "rl: kto\n", "under `rl: kto` it reads prompt_strategies/kto/llama3.py, which has no `icr`"),
        ("chatml.ultra", "rl: orpo\nchat_template: chatml\n", "`rl: orpo` does not read it"),
        ("chat_template.argilla", "rl: dpo\nchat_template: chatml\n", "Axolotl's ORPO type"),
    ] {
        let path = write_recipe(dir.path(), r#type, &fixture("dpo/rows.jsonl"), extra);
        let out = common::recipe_command().arg("validate").arg(&path).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{type}: {stdout}");
        assert!(stdout.contains("error[type-not-for-method]") && stdout.contains(needle), "{type}: {stdout}");
    }
    // The same names are read by the methods that define them.
    for (r#type, extra) in
        [("chatml.ultra", "rl: simpo\n"), ("llama3.default", "rl: ipo\n"), ("chatml.intel", "rl: kto\n")]
    {
        let path = write_recipe(dir.path(), r#type, &fixture("dpo/rows.jsonl"), extra);
        let out = common::recipe_command().arg("validate").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{type}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

/// Each previewed pair's ids against what the method's TRL trainer trains on (goldens from
/// scripts/reference/preference_tokenization_goldens.py): per answer, the prompt ids before it and
/// its own ids.
#[test]
fn every_method_tokenizes_pairs_as_its_trl_trainer_does() {
    let golden: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/golden/preference_tokenization.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(golden.len(), 6, "KTO and ORPO on text rows and on message rows in two templates");
    let dir = tempfile::tempdir().unwrap();
    let (mut answers, mut own_prompts) = (0, 0);
    for case in &golden {
        let method = case["method"].as_str().unwrap();
        let mut extra = format!("rl: {method}\n");
        if let Some(template) = case["chat_template"].as_str() {
            extra.push_str(&format!("chat_template: {template}\n"));
        }
        let rows = fixture(case["rows"].as_str().unwrap());
        let r#type = "chat_template.default\n    field_messages: prompt";
        let json = preview(&write_recipe(dir.path(), r#type, &rows, &extra));
        let pairs = json["pairs"].as_array().unwrap();
        let expected = case["expected"].as_array().unwrap();
        assert_eq!(pairs.len(), expected.len(), "{method} on {rows:?}");
        // Prompts that end inside a word or on a space lose their end, as TRL warns.
        if method == "kto" && case["chat_template"].is_null() {
            let report = json["report"][0].as_str().unwrap();
            assert!(report.contains("warning: in 3 of 5 rows the tokenized prompt is not a prefix"), "{report}");
        }
        for (i, want) in expected.iter().enumerate() {
            let what = format!("{method} ({}) on line {}", case["chat_template"], i + 1);
            own_prompts += usize::from(check_ids(&what, pair_from_line(pairs, case, i + 1), want));
            answers += 2;
        }
    }
    // The fixture holds a row where a token merges across the join for one answer only.
    assert!(own_prompts > 0, "no pair needed its own rejected prompt");
    eprintln!("{answers} answers of 6 cases equal TRL's ids ({own_prompts} pairs with a rejected prompt of their own)");
}

//! The data pipeline through the CLI (no libtorch needed): `recipe preview` shows trained and
//! masked text and the packing layout (snapshots); malformed rows are named by file, line and
//! field, or skipped and counted; hygiene (dedup, PII) and mixing report what they did; test sets
//! never leak into training; `recipe preprocess` caches and `recipe run` reuses the cache.

mod common;

use common::{portable, stdout_of};

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> String {
    root().join("tests/fixtures/pipeline").join(name).display().to_string()
}

fn write_recipe(dir: &Path, datasets: &str, extra: &str) -> PathBuf {
    let text = format!(
        "base_model: {}\nadapter: lora\nlora_target_linear: true\ndatasets:\n{datasets}sequence_len: 256\n\
         sample_packing: true\nmicro_batch_size: 2\nmax_steps: 2\nlearning_rate: 1.0e-4\nseed: 5\n\
         output_dir: {}\noverwrite_output_dir: true\n{extra}",
        root().join("models/stories260k").display(),
        dir.join("out").display()
    );
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn recipe() -> Command {
    common::recipe_command()
}

#[test]
fn preview_shows_masks_hygiene_and_packing() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = format!(
        "  - path: {}\n    type: alpaca\n  - path: {}\n    type: input_output\n",
        fixture("instructions.jsonl"),
        fixture("segments.jsonl")
    );
    let path = write_recipe(
        dir.path(),
        &datasets,
        "dataset_exact_deduplication: true\ndataset_normalized_deduplication: true\nredact_pii: true\nshuffle_merged_datasets: false\n",
    );
    let text = stdout_of(recipe().args(["preview", "-n", "8"]).arg(&path));
    insta::assert_snapshot!("preview_text", portable(&text, dir.path()));
    assert!(text.contains("2 duplicates dropped") && text.contains("1 PII strings redacted"), "{text}");
    assert!(text.contains("[EMAIL]") && !text.contains("ada@example.org"));

    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(recipe().args(["preview", "--json", "-n", "2"]).arg(&path))).unwrap();
    let first = &json["samples"][0];
    assert_eq!(first["input_ids"].as_array().unwrap().len(), first["labels"].as_array().unwrap().len());
    assert!(first["runs"].as_array().unwrap().iter().any(|r| r["trained"] == true));
    assert!(json["packing"]["efficiency"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_malformed_row_is_named_or_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = format!("  - path: {}\n    type: alpaca\n", fixture("broken.jsonl"));
    let path = write_recipe(dir.path(), &datasets, "");
    let out = recipe().args(["preview"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.jsonl:3: field `output` is missing"), "{stderr}");
    assert!(stderr.contains("skip_bad_rows"), "{stderr}");

    let text = stdout_of(recipe().args(["preview", "--set", "skip_bad_rows=true"]).arg(&path));
    assert!(text.contains("4 rows, 1 malformed rows skipped -> 3 samples"), "{text}");
}

#[test]
fn weights_mix_and_test_sets_never_leak() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = format!(
        "  - path: {}\n    type: alpaca\n    weight: 3\n  - path: {}\n    type: input_output\n    weight: 1\n",
        fixture("instructions.jsonl"),
        fixture("segments.jsonl")
    );
    let extra = format!("test_datasets:\n  - path: {}\n    type: input_output\n", fixture("segments.jsonl"));
    let path = write_recipe(dir.path(), &datasets, &extra);
    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(recipe().args(["preview", "--json"]).arg(&path))).unwrap();
    let report: Vec<String> =
        json["report"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect();
    // 6 + 2 samples, weights 3:1: 6 from the first, 2 from the second, then both of those are test rows.
    assert!(report.iter().any(|l| l == "mixing: datasets[0] gives 6 of 8 samples (6 available)"), "{report:?}");
    assert!(report.iter().any(|l| l == "removed 2 training samples that also appear in test_datasets"), "{report:?}");
    assert_eq!(json["train_samples"], 6);
    assert_eq!(json["test_samples"], 2);
}

#[cfg(feature = "exec")]
#[test]
fn preprocess_caches_and_run_reuses_until_something_changes() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = format!("  - path: {}\n    type: alpaca\n", fixture("instructions.jsonl"));
    let extra = format!("dataset_prepared_path: {}\n", dir.path().join("prepared").display());
    let path = write_recipe(dir.path(), &datasets, &extra);
    let text = stdout_of(recipe().args(["preprocess"]).arg(&path));
    assert!(text.contains("cached   "), "{text}");
    let folders: Vec<_> = std::fs::read_dir(dir.path().join("prepared")).unwrap().flatten().collect();
    assert_eq!(folders.len(), 1);
    let run = stdout_of(recipe().args(["run", "--device", "cpu"]).arg(&path));
    assert!(run.contains("samples reused from"), "{run}");
    // Another option, another key: prepared again.
    let run = stdout_of(recipe().args(["run", "--device", "cpu", "--set", "train_on_inputs=true"]).arg(&path));
    assert!(run.contains("samples prepared now, cached in"), "{run}");
    assert_eq!(std::fs::read_dir(dir.path().join("prepared")).unwrap().count(), 2);
}

#[test]
fn chat_datasets_train_every_assistant_turn() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = format!(
        "  - path: {}\n    type: chat_template\n  - path: {}\n    type: chat_template\n    field_messages: conversations\n    \
         message_property_mappings:\n      role: from\n      content: value\n",
        fixture("chat.jsonl"),
        fixture("sharegpt.jsonl")
    );
    let base = "chat_template: chatml\nshuffle_merged_datasets: false\n";
    let path = write_recipe(dir.path(), &datasets, base);
    let text = stdout_of(recipe().args(["preview", "-n", "1"]).arg(&path));
    assert!(text.contains("template `chatml` never prints the EOS token `</s>`"), "{text}");
    // The template's turn end as EOS: a new special token, trained after every assistant turn.
    let path = write_recipe(dir.path(), &datasets, &format!("{base}special_tokens:\n  eos_token: \"<|im_end|>\"\n"));
    let text = stdout_of(recipe().args(["preview", "-n", "3"]).arg(&path));
    insta::assert_snapshot!("preview_chat", portable(&text, dir.path()));
    // Both assistant turns of the first conversation are trained, not only the last.
    assert!(text.contains("]]Green.<|im_end|>") && text.contains("]]Blue.<|im_end|>"), "{text}");
    assert!(text.contains("]]Apple.<|im_end|>") && text.contains("]]Pear.<|im_end|>"), "{text}");
}

#[test]
fn preference_pairs_are_checked_and_rendered_as_axolotl_does() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = format!("  - path: {}\n    type: chat_template.default\n", fixture("preference.jsonl"));
    let path = write_recipe(dir.path(), &datasets, "rl: dpo\nchat_template: chatml\nval_set_size: 0\n");
    // Pairs are not packed.
    let text = std::fs::read_to_string(&path).unwrap().replace("sample_packing: true", "sample_packing: false");
    std::fs::write(&path, text).unwrap();
    let out = recipe().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    // A malformed pair is named by file, line and field.
    let out = recipe().args(["preview"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("preference.jsonl:3: field `rejected` is missing"), "{stderr}");

    let set = ["--set", "skip_bad_rows=true", "--set", "redact_pii=true", "--set", "dataset_exact_deduplication=true"];
    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(recipe().args(["preview", "--json", "-n", "9"]).args(set).arg(&path))).unwrap();
    let report = json["report"][0].as_str().unwrap();
    assert!(
        report.ends_with("5 rows, 1 malformed rows skipped, 1 PII strings redacted, 1 duplicates dropped -> 3 pairs"),
        "{report}"
    );
    let pairs = json["pairs"].as_array().unwrap();
    let first = pairs.iter().find(|p| p["origin"].as_str().unwrap().ends_with("preference.jsonl:1")).unwrap();
    // Axolotl's chat_template.default under rl: dpo: the prompt ends with the generation prompt;
    // each answer is its turn as the template writes it, trailing whitespace removed, and TRL ends it
    // with EOS.
    assert_eq!(
        first["prompt"],
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(first["chosen"], "4<|im_end|>");
    assert_eq!(first["rejected"], "Five, I think.<|im_end|>");
    let eos = 2;
    for p in pairs {
        assert_eq!(p["chosen_ids"].as_array().unwrap().last().unwrap(), eos, "answers end with EOS");
        assert!(!p["prompt"].as_str().unwrap().contains("ann@example.com"));
    }

    let text = stdout_of(recipe().args(["preprocess"]).args(set).arg(&path));
    assert!(text.contains("checked  3 training, 0 validation, 0 test preference pairs"), "{text}");
}

#[test]
fn plan_measures_local_data_hygiene_and_packing() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = format!("  - path: {}\n    type: alpaca\n", fixture("instructions.jsonl"));
    let path = write_recipe(dir.path(), &datasets, "dataset_exact_deduplication: true\nredact_pii: true\n");
    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(recipe().args(["plan", "--json"]).arg(&path))).unwrap();
    let m = &json["measured_data"];
    let preview: serde_json::Value =
        serde_json::from_str(&stdout_of(recipe().args(["preview", "--json"]).arg(&path))).unwrap();
    // The plan's figures are the data pipeline's own.
    assert_eq!(m["report"], preview["report"]);
    assert_eq!(m["train_samples"], preview["train_samples"]);
    assert_eq!(m["packing_efficiency"], preview["packing"]["efficiency"]);
    assert_eq!(m["train_rows"], preview["packing"]["rows"]);
    assert!(m["report"][0].as_str().unwrap().contains("duplicates dropped"), "{m}");
    let text = stdout_of(recipe().args(["plan"]).arg(&path));
    assert!(text.contains("packing efficiency"), "{text}");
}

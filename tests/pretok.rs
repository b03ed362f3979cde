//! Axolotl's pre-tokenized datasets (a dataset entry without `type`, or with `type:` left empty):
//! rows holding `input_ids`, `attention_mask` and `labels` go through recipe's pipeline unchanged
//! (tests/fixtures/pretok/rows.jsonl, written by scripts/reference/pretokenized_rows.py with
//! transformers' tokenizer for the bundled stories260k), packed and unpacked; over-length rows
//! follow excess_length_strategy and exact deduplication applies, as in Axolotl; a malformed row
//! is named by file and line (or skipped and counted); keys that format rows are refused by name;
//! `recipe preview` decodes the rows; `recipe run` trains on them.

mod common;

use common::{portable, stdout_of};

use recipe::config::datasets::DatasetConfig;
use recipe::data::{self, IGNORE, Sample, Tokenizer, packing};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/pretok").join(name)
}

/// The fixture's rows as samples (input_ids and labels), in file order.
fn fixture_samples() -> Vec<Sample> {
    std::fs::read_to_string(fixture("rows.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let ints = |k: &str| v[k].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<i64>>();
            Sample { input_ids: ints("input_ids"), labels: ints("labels") }
        })
        .collect()
}

/// A LoRA recipe on stories260k training on `data` (a dataset entry without `type` unless `entry`
/// adds one), sequence_len 96, the rows kept in order.
fn write_recipe(dir: &Path, entry: &str, extra: &str) -> PathBuf {
    write_recipe_with(dir, entry, "", extra)
}

/// As `write_recipe`, with `more` dataset entries after the pre-tokenized one.
fn write_recipe_with(dir: &Path, entry: &str, more: &str, extra: &str) -> PathBuf {
    let text = format!(
        "base_model: {model}\nadapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true\n\
         datasets:\n  - path: {data}\n{entry}{more}sequence_len: 96\nmicro_batch_size: 2\nmax_steps: 2\n\
         learning_rate: 1.0e-3\nseed: 5\nshuffle_merged_datasets: false\noutput_dir: {out}\n{extra}",
        model = root().join("models/stories260k").display(),
        data = fixture("rows.jsonl").display(),
        out = dir.join("out").display(),
    );
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn load_plan(path: &Path) -> recipe::plan::Plan {
    let loaded = recipe::recipe::load(path, &[]);
    assert!(!loaded.has_errors(), "{}", common::rendered(&loaded));
    recipe::plan::compile(&loaded, recipe::plan::PlanOptions::default()).unwrap()
}

fn prepare(path: &Path) -> Result<data::Prepared, String> {
    let plan = load_plan(path);
    let dir = root().join("models/stories260k");
    let tok = Tokenizer::load(&dir).unwrap();
    data::prepare(&plan, &tok, &dir)
}

#[test]
fn type_absent_or_left_empty_means_pre_tokenized_rows() {
    let dir = tempfile::tempdir().unwrap();
    // Axolotl's examples/orpheus/finetune.yml writes `type:  # leave empty to load pre-tokenized`.
    for entry in ["", "    type:  # leave empty to load pre-tokenized\n"] {
        let path = write_recipe(dir.path(), entry, "");
        let loaded = recipe::recipe::load(&path, &[]);
        assert!(!loaded.has_errors(), "{}", common::rendered(&loaded));
        let config = loaded.config.as_ref().unwrap();
        assert!(matches!(config.data.datasets[0], DatasetConfig::Pretokenized(_)), "{:?}", config.data.datasets[0]);
        // The resolved settings write the entry back without a `type`, and it reads back the same.
        let settings = serde_json::to_value(&config.data.datasets[0]).unwrap();
        assert!(settings.get("type").is_none(), "{settings}");
        let again: DatasetConfig = serde_json::from_value(settings).unwrap();
        assert_eq!(again, config.data.datasets[0]);
        let plan = recipe::plan::compile(&loaded, recipe::plan::PlanOptions::default()).unwrap();
        let text = recipe::plan::render_text(&plan);
        let line = text.lines().find(|l| l.contains("rows.jsonl")).unwrap_or_else(|| panic!("{text}"));
        assert!(
            line.starts_with("dataset    pre-tokenized local ")
                && line.ends_with(": input_ids and labels as the rows give them (-100 untrained), never retokenized"),
            "{line}"
        );
    }
}

#[test]
fn rows_come_out_as_written_unpacked_and_packed() {
    let dir = tempfile::tempdir().unwrap();
    let rows = fixture_samples();
    let long = rows.iter().filter(|s| s.input_ids.len() > 96).count();
    assert_eq!((rows.len(), long), (8, 1));

    // excess_length_strategy: truncate keeps every row, the long one cut to sequence_len (Axolotl's
    // truncate_long_seq cuts input_ids, attention_mask and labels alike).
    let path = write_recipe(dir.path(), "", "excess_length_strategy: truncate\n");
    let prepared = prepare(&path).unwrap();
    let expected: Vec<Sample> = rows
        .iter()
        .map(|s| Sample {
            input_ids: s.input_ids[..s.input_ids.len().min(96)].to_vec(),
            labels: s.labels[..s.labels.len().min(96)].to_vec(),
        })
        .collect();
    assert_eq!(prepared.train, expected, "{:?}", prepared.report);
    assert!(
        prepared.report[0].contains("8 rows, 1 over-length samples truncated -> 8 samples"),
        "{:?}",
        prepared.report
    );

    // Unpacked: one row per sample, positions 0.., the first label -100 (it never has a loss).
    let unpacked = packing::unpacked(&prepared.train, 96);
    assert_eq!(unpacked.len(), expected.len());
    for (row, s) in unpacked.iter().zip(&expected) {
        assert_eq!(row.input_ids, s.input_ids);
        assert_eq!(row.labels[0], IGNORE);
        assert_eq!(row.labels[1..], s.labels[1..]);
        assert!(row.position_ids.iter().copied().eq(0..s.input_ids.len() as i64));
    }

    // Packed: every row's segments are whole samples, each once, with their own ids and labels.
    let packed = packing::pack(&prepared.train, 96);
    assert!(packed.len() < expected.len(), "{} rows", packed.len());
    let mut segments: Vec<Sample> = Vec::new();
    for row in &packed {
        assert!(row.len() <= 96);
        let mut start = 0;
        while start < row.len() {
            let seg = row.segment_ids[start];
            let end = (start..row.len()).find(|&i| row.segment_ids[i] != seg).unwrap_or(row.len());
            assert!(row.position_ids[start..end].iter().copied().eq(0..(end - start) as i64));
            segments.push(Sample {
                input_ids: row.input_ids[start..end].to_vec(),
                labels: row.labels[start..end].to_vec(),
            });
            start = end;
        }
    }
    let mut want: Vec<Sample> = expected
        .iter()
        .map(|s| {
            let mut labels = s.labels.clone();
            labels[0] = IGNORE;
            Sample { input_ids: s.input_ids.clone(), labels }
        })
        .collect();
    let key = |s: &Sample| (s.input_ids.clone(), s.labels.clone());
    segments.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(segments, want);
}

#[test]
fn length_and_deduplication_apply_as_to_other_rows() {
    let dir = tempfile::tempdir().unwrap();
    let rows = fixture_samples();
    // The default `drop`: the long row goes (Axolotl's handle_long_seq_in_dataset).
    let prepared = prepare(&write_recipe(dir.path(), "", "")).unwrap();
    let kept: Vec<Sample> = rows.iter().filter(|s| s.input_ids.len() <= 96).cloned().collect();
    assert_eq!(prepared.train, kept);
    assert!(prepared.report[0].contains("8 rows, 1 over-length samples dropped -> 7 samples"), "{:?}", prepared.report);
    // `raise` names the row.
    let err = prepare(&write_recipe(dir.path(), "", "excess_length_strategy: raise\n")).unwrap_err();
    assert!(err.contains("rows.jsonl:8: 202 tokens, longer than sequence_len 96"), "{err}");
    // Exact deduplication compares ids and labels: lines 1 and 3 are the same row.
    let prepared = prepare(&write_recipe(dir.path(), "", "dataset_exact_deduplication: true\n")).unwrap();
    assert_eq!(prepared.train.len(), 6);
    assert!(prepared.report[0].contains("1 duplicates dropped"), "{:?}", prepared.report);
    // Mixing with a formatted dataset and the validation split, as for any samples.
    let segments = format!(
        "  - path: {}\n    type: input_output\n",
        root().join("tests/fixtures/pipeline/segments.jsonl").display()
    );
    let prepared = prepare(&write_recipe_with(dir.path(), "", &segments, "val_set_size: 0.25\n")).unwrap();
    assert_eq!(prepared.train.len() + prepared.validation.len(), 7 + 2, "{:?}", prepared.report);
    assert_eq!(prepared.validation.len(), 3);
}

#[test]
fn a_typed_dataset_of_tokenized_rows_is_refused_as_axolotl_would_ignore_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let err = prepare(&write_recipe(dir.path(), "    type: completion\n", "")).unwrap_err();
    assert!(
        err.contains(
            "rows.jsonl:1: the row holds input_ids, attention_mask and labels, which Axolotl trains on as they are, \
             ignoring `type: completion`"
        ),
        "{err}"
    );
}

#[test]
fn a_malformed_row_is_named_or_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "", "");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("rows.jsonl", "bad.jsonl")).unwrap();
    let out = common::recipe_command().args(["preview"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = portable(&String::from_utf8_lossy(&out.stderr), dir.path());
    let error: Vec<&str> = stderr.lines().filter(|l| l.contains("error[")).collect();
    insta::assert_snapshot!("bad_row_error", error.join("\n"));
    // Every malformed line is skipped and counted under skip_bad_rows.
    let text = stdout_of(common::recipe_command().args(["preview", "--set", "skip_bad_rows=true"]).arg(&path));
    assert!(text.contains("7 rows, 6 malformed rows skipped -> 1 samples"), "{text}");

    // What each line is refused for.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(fixture("bad.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let why = |i: usize| {
        data::formats::parse_pretokenized(&lines[i]).and_then(|s| data::formats::check_vocabulary(&s, 512)).err()
    };
    assert_eq!(why(0), None);
    let expected = [
        "field `attention_mask` is missing (a dataset without `type` holds pre-tokenized rows: input_ids, \
         attention_mask and labels)",
        "`labels` holds 3 values, `input_ids` 4: they must be as long",
        "attention_mask[3] is 0: recipe attends to every token of a pre-tokenized row (packing and batching build \
         their own masks), so the mask must be all ones; remove the masked tokens from the row",
        "input_ids[2] is 9999, outside the vocabulary (token ids 0 to 511)",
        "labels[2] is -1: a label is a token id, or -100 for no loss",
        "field `input_ids` must be a list of integers, found a string",
    ];
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(why(i + 1).as_deref(), Some(*want), "line {}", i + 2);
    }
    let positions =
        serde_json::json!({"input_ids": [1, 2], "attention_mask": [1, 1], "labels": [1, 2], "position_ids": [0, 2]});
    assert!(data::formats::parse_pretokenized(&positions).unwrap_err().contains("`position_ids` is not 0, 1, 2"));
    let positions =
        serde_json::json!({"input_ids": [1, 2], "attention_mask": [1, 1], "labels": [1, 2], "position_ids": [0, 1]});
    assert!(data::formats::parse_pretokenized(&positions).is_ok());
}

#[test]
fn keys_that_format_rows_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(
        dir.path(),
        "    field_messages: conversations\n    chat_template: chatml\n    roles_to_train: [assistant]\n",
        "redact_pii: true\ndataset_normalized_deduplication: true\ntrain_on_inputs: true\n",
    );
    let loaded = recipe::recipe::load(&path, &[]);
    let rules: Vec<(&str, String)> =
        loaded.diagnostics.iter().filter(|d| d.is_error()).map(|d| (d.rule, d.message.clone())).collect();
    let count = |rule: &str| rules.iter().filter(|(r, _)| *r == rule).count();
    assert_eq!(count("pretokenized-formatting-key"), 3, "{}", common::rendered(&loaded));
    assert_eq!(count("pretokenized-text-setting"), 3, "{}", common::rendered(&loaded));
    assert_eq!(rules.len(), 6, "{}", common::rendered(&loaded));
    assert!(
        rules
            .iter()
            .any(|(_, m)| m
                .starts_with("`field_messages` acts on how rows become tokens, but datasets[0] has no `type`")),
        "{rules:?}"
    );
    // A key no dataset format has stays an unknown key.
    let path = write_recipe(dir.path(), "    field_mesages: conversations\n", "");
    let loaded = recipe::recipe::load(&path, &[]);
    assert!(loaded.has_errors());
    assert!(
        loaded.diagnostics.iter().all(|d| d.rule != "pretokenized-formatting-key"),
        "{}",
        common::rendered(&loaded)
    );
}

#[test]
fn preview_decodes_the_rows_and_shows_what_is_trained() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "", "sample_packing: true\n");
    let text = stdout_of(common::recipe_command().args(["preview", "-n", "2"]).arg(&path));
    insta::assert_snapshot!("preview_text", portable(&text, dir.path()));
    assert!(text.contains("[[<s> Question: Name a colour of the sky.\nAnswer:]] Blue.</s>"), "{text}");
}

#[cfg(feature = "exec")]
#[test]
fn a_run_trains_on_pre_tokenized_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "    type:\n", "sample_packing: true\nval_set_size: 0.25\n");
    let out = stdout_of(common::recipe_command().args(["run", "--device", "cpu"]).arg(&path));
    assert!(out.contains("steps      2 of 2"), "{out}");
    assert!(out.contains("datasets[0] pre-tokenized"), "{out}");
    let metrics = std::fs::read_to_string(dir.path().join("out/metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("loss")?.as_f64())
        .collect();
    assert!(!losses.is_empty() && losses.iter().all(|l| l.is_finite() && *l > 0.0), "{metrics}");
}

//! `pretraining_dataset`: the stream's rows equal Axolotl's `encode_streaming` on the same files
//! (goldens: scripts/reference/pretrain_stream_goldens.py), token for token; ranks get the rows
//! accelerate's IterableDatasetShard gives them; the model sees a concatenated row as transformers
//! does (the pad between texts hidden, loss within 1e-5); the recipe validates and plans with the
//! stream shown, refuses what it does not reproduce by name, and `recipe run` trains on it and
//! resumes where the stream was.
#![cfg(feature = "exec")]

mod common;

use recipe::data::Tokenizer;
use recipe::data::stream::{PretrainStream, StreamRow, collate, micro_batch_rows};
use recipe::plan::data::PretrainingPlan;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("tests/golden/pretrain/rows.json")).unwrap()).unwrap()
}

fn stream_plan(case: &Value, files: Vec<String>) -> PretrainingPlan {
    PretrainingPlan {
        source: "local fixture".into(),
        files: files.clone(),
        split: "train".into(),
        text_column: "text".into(),
        skip: case["skip"].as_u64().unwrap(),
        concatenate: case["concatenate"].as_bool().unwrap(),
        chunk_texts: case["buffer"].as_u64().unwrap(),
        row_tokens: case["sequence_len"].as_u64().unwrap(),
        rows_per_step: 1,
        steps: 1,
        shards: vec![files],
    }
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn corpus() -> String {
    root().join("tests/fixtures/pretrain/corpus.jsonl").display().to_string()
}

#[test]
fn stream_rows_equal_axolotls_encode_streaming_and_restart_at_the_end() {
    let tok = Tokenizer::load(&root().join("models/stories260k")).unwrap();
    let g = golden();
    for case in g["cases"].as_array().unwrap() {
        let plan = stream_plan(case, vec![corpus()]);
        let mut stream = PretrainStream::new(&plan, 0, &tok).unwrap();
        let want = case["rows"].as_array().unwrap();
        for (i, w) in want.iter().enumerate() {
            let row = stream.next_row().unwrap();
            let expected = StreamRow {
                input_ids: ids(&w["input_ids"]),
                labels: ids(&w["labels"]),
                attention_mask: ids(&w["attention_mask"]),
            };
            assert_eq!(row, expected, "case {} row {i}", case["name"]);
        }
        assert_eq!(stream.passes, 1, "case {}: the golden rows are one pass", case["name"]);
        // The next row opens a second pass, skip applied again.
        let again = stream.next_row().unwrap();
        assert_eq!(again.input_ids, ids(&want[0]["input_ids"]), "case {}", case["name"]);
        assert_eq!(stream.passes, 2);
    }
}

#[test]
fn ranks_get_the_rows_accelerates_iterable_dataset_shard_gives_them() {
    for s in golden()["shard"].as_array().unwrap() {
        let (world, mbs, rank) = (
            s["world"].as_u64().unwrap() as usize,
            s["micro_batch_size"].as_u64().unwrap() as usize,
            s["rank"].as_u64().unwrap() as usize,
        );
        let want = ids(&s["rows"]);
        let groups = want.len() / mbs;
        for gas in [1usize, 2, 3].into_iter().filter(|g| groups % g == 0) {
            let mut got = Vec::new();
            for step in 0..(groups / gas) as u64 {
                for a in 0..gas {
                    let (stream, from) = micro_batch_rows(step, a * world + rank, mbs, gas, world, 1);
                    assert_eq!(stream, 0);
                    got.extend((from..from + mbs as u64).map(|r| r as i64));
                }
            }
            assert_eq!(got, want, "world {world} micro_batch_size {mbs} rank {rank} accumulation {gas}");
        }
    }
    // File-sharded streams: rank r reads its own stream's consecutive micro-batches.
    assert_eq!(micro_batch_rows(3, 5, 2, 4, 2, 2), (1, (3 * 4 + 2) * 2));
}

#[test]
fn a_concatenated_row_scores_as_transformers_scores_it() {
    use recipe::model::llama::{CausalLm, Inputs, LoadOptions, Trainable};
    use tch::{Device, Kind, Tensor};
    let dir = root().join("models/stories260k");
    let g = golden();
    let m = &g["model"];
    let case = g["cases"].as_array().unwrap().iter().find(|c| c["name"] == m["case"]).unwrap();
    let all = case["rows"].as_array().unwrap();
    let rows: Vec<StreamRow> = m["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &all[i.as_u64().unwrap() as usize])
        .map(|w| StreamRow {
            input_ids: ids(&w["input_ids"]),
            labels: ids(&w["labels"]),
            attention_mask: ids(&w["attention_mask"]),
        })
        .collect();
    let b = collate(&rows, 2);
    let between = |r: &StreamRow| r.attention_mask.windows(2).any(|w| w == [0, 1]);
    assert!(rows.iter().all(between), "the golden rows must hold a pad between two texts");
    assert!(b.segment_ids.is_some(), "the pads between texts must be masked");
    let arch = recipe::plan::model::local_architecture(&dir).unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: Trainable::Nothing,
        quantize: None,
        score_head: false,
    };
    let model = CausalLm::load(&arch, &recipe::model::weights::Checkpoint::open(&dir).unwrap(), &opts).unwrap();
    let shape = [b.rows as i64, b.len as i64];
    let t = |v: &[i64]| Tensor::from_slice(v).view(shape);
    let (input_ids, labels, pos) = (t(&b.input_ids), t(&b.labels), t(&b.position_ids));
    let seg = b.segment_ids.as_deref().map(t);
    let logits = tch::no_grad(|| {
        model.logits(&Inputs { input_ids: &input_ids, position_ids: &pos, segment_ids: seg.as_ref(), varlen: None })
    });
    let n = b.len as i64;
    let loss = logits
        .narrow(1, 0, n - 1)
        .reshape([-1, logits.size()[2]])
        .cross_entropy_loss::<Tensor>(&labels.narrow(1, 1, n - 1).reshape([-1]), None, tch::Reduction::Mean, -100, 0.0)
        .double_value(&[]);
    let want = m["loss"].as_f64().unwrap();
    assert!((loss - want).abs() < 1e-5, "loss {loss}, transformers {want}");
    let lse: Vec<f64> =
        Vec::<f64>::try_from(logits.logsumexp([-1], false).to_kind(Kind::Double).flatten(0, -1)).unwrap();
    let want_lse: Vec<f64> = m["logsumexp"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();
    let worst = lse.iter().zip(&want_lse).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "logsumexp differs by {worst}");
}

fn write(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("recipe.yaml");
    let text = format!(
        "base_model: {model}\npretraining_dataset:\n  - path: {data}\n    type: pretrain\n    text_column: text\n{body}",
        model = root().join("models/stories260k").display(),
        data = corpus(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

const BASE: &str = "streaming: true\npretraining_sample_concatenation: true\nstreaming_multipack_buffer_size: 6\n\
                    shuffle_merged_datasets: false\nsequence_len: 64\nmicro_batch_size: 2\ngradient_accumulation_steps: 2\n\
                    max_steps: 6\nlearning_rate: 1.0e-3\nseed: 3\nlogging_steps: 1\n";

#[test]
fn the_plan_shows_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &format!("{BASE}output_dir: {}\n", dir.path().join("out").display()));
    let out = common::recipe_command().arg("plan").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("stream     pretraining_dataset local"), "{stdout}");
    assert!(stdout.contains("text column `text`, 1 file(s), skip 0 texts"), "{stdout}");
    assert!(stdout.contains("concatenated into rows of 64 tokens") && stdout.contains("chunks of 6 texts"), "{stdout}");
    assert!(stdout.contains("4 rows per step for 6 steps (max_steps)"), "{stdout}");
    assert!(stdout.contains("attention  scaled_dot_product_attention with a mask hiding the pad"), "{stdout}");
    assert!(!stdout.contains("warning[data]"), "a plan never reads the stream ahead: {stdout}");
}

#[test]
fn what_is_not_reproduced_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (body, rule) in [
        (BASE.replace("shuffle_merged_datasets: false\n", ""), "unsupported-pretraining-shuffle"),
        (format!("{BASE}sample_packing: true\n"), "unsupported-pretraining-packing"),
        (BASE.replace("max_steps: 6\n", "num_epochs: 1\n"), "pretraining-needs-max-steps"),
        (format!("{BASE}val_set_size: 0.1\n"), "pretraining-val-set-size"),
        (format!("{BASE}pretrain_multipack_buffer_size: 9\n"), "pretraining-buffer-twice"),
    ] {
        let path = write(dir.path(), &body);
        let out = common::recipe_command().arg("validate").arg(&path).output().unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{rule}: {all}");
        assert!(all.contains(rule), "expected {rule}: {all}");
    }
    let hub = dir.path().join("hub.yaml");
    std::fs::write(
        &hub,
        format!(
            "base_model: {}\npretraining_dataset:\n  - path: allenai/c4\n    name: en\n{BASE}",
            root().join("models/stories260k").display()
        ),
    )
    .unwrap();
    let out = common::recipe_command().arg("validate").arg(&hub).output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("unsupported-pretraining-hub") && all.contains("unsupported-pretraining-name"), "{all}");
}

fn losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("out/metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            Some((r.get("step")?.as_u64()?, r.get("loss")?.as_f64()?))
        })
        .collect()
}

fn run(path: &Path, args: &[&str]) -> String {
    let out = common::recipe_command()
        .arg("run")
        .arg(path)
        .args(["--device", "cpu", "--no-progress"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn run_trains_on_the_stream_and_resumes_where_it_was() {
    // 6 steps × 4 rows = 24 rows: more than one pass over the 16-row fixture stream.
    let a = tempfile::tempdir().unwrap();
    let body = |d: &Path| format!("{BASE}save_steps: 3\noutput_dir: {}\n", d.join("out").display());
    run(&write(a.path(), &body(a.path())), &[]);
    let whole = losses(a.path());
    assert_eq!(whole.len(), 6, "{whole:?}");
    assert!(whole.iter().all(|(_, l)| l.is_finite()));
    assert!(a.path().join("out/model.safetensors").is_file());

    let b = tempfile::tempdir().unwrap();
    let path = write(b.path(), &body(b.path()));
    let stdout = run(&path, &["--stop-after", "3"]);
    assert!(stdout.contains("stopped    at step 3"), "{stdout}");
    let stdout = run(&path, &["--set", "resume_from_checkpoint=true"]);
    assert!(stdout.contains("resumed    from"), "{stdout}");
    let resumed = losses(b.path());
    assert_eq!(resumed.len(), 6, "{resumed:?}");
    for ((step, want), (_, got)) in whole.iter().zip(&resumed) {
        assert!((want - got).abs() <= 1e-6, "step {step}: {got} after resume, {want} uninterrupted");
    }
}

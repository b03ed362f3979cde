//! `recipe eval` on the bundled stories260k: batched generation (left padding, attention mask, one
//! key/value cache) gives the ids one-at-a-time generation gives, for several batch sizes and mixed
//! prompt lengths; perplexity equals transformers' exp(mean NLL) (tests/golden/eval/perplexity.json
//! from scripts/reference/eval_perplexity.py) within 1e-4, batched or not; the command writes
//! predictions and results whose figures the metrics recompute; base vs a trained run gives the
//! side-by-side report and warns of evaluation samples seen in training; bad input ends in messages.
#![cfg(feature = "exec")]

mod common;

use recipe::data::{IGNORE, Sample};
use recipe::exec::eval as model_eval;
use recipe::model::generate::{Sampling, generate, generate_batch};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_dir() -> PathBuf {
    root().join("models/stories260k")
}

fn load() -> recipe::exec::Loaded {
    recipe::exec::load_trained(&model_dir(), None, tch::Device::Cpu, None, Some(tch::Kind::Float)).unwrap()
}

#[test]
fn batched_generation_equals_one_at_a_time() {
    tch::set_num_threads(1);
    let loaded = load();
    let tok = &loaded.tokenizer;
    let texts = [
        "Once upon a time",
        "Tom",
        "The little dog ran to the park and saw a big red ball. He",
        "Lily and her mom went",
        "One day, a girl named Sue found a shiny",
        "The sun",
        "Max wanted to play with his friends, but it was raining outside, so",
    ];
    let prompts: Vec<Vec<i64>> =
        texts.iter().map(|t| tok.bos().into_iter().chain(tok.encode(t).unwrap()).collect()).collect();
    let s = Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens: 24, seed: 0 };
    let eos = tok.eos();
    let single: Vec<Vec<i64>> = prompts.iter().map(|p| generate(&loaded.model, p, eos, s)).collect();
    assert!(single.iter().any(|ids| ids.len() == 24), "some prompt should run to the limit: {single:?}");
    for batch in [1, 2, 3, 7] {
        let batched = model_eval::complete(&loaded.model, &prompts, &eos.into_iter().collect::<Vec<_>>(), s, batch);
        assert_eq!(batched, single, "batch size {batch}");
    }
    // A stop id ends its row only; the others run on.
    let stop_at = single[0][3];
    let stopped = generate_batch(&loaded.model, &prompts[..2], &[stop_at], s);
    assert_eq!(stopped[0], single[0][..=single[0].iter().position(|&t| t == stop_at).unwrap()].to_vec());
    // Seeded sampling repeats itself.
    let hot = Sampling { temperature: 0.9, top_p: 0.95, ..s };
    assert_eq!(generate_batch(&loaded.model, &prompts, &[], hot), generate_batch(&loaded.model, &prompts, &[], hot));
}

#[test]
fn perplexity_equals_transformers() {
    tch::set_num_threads(1);
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/golden/eval/perplexity.json")).unwrap())
            .unwrap();
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<i64>>();
    let samples: Vec<Sample> = golden["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Sample { input_ids: ids(&s["input_ids"]), labels: ids(&s["labels"]) })
        .collect();
    assert!(samples.iter().any(|s| s.labels.contains(&IGNORE)), "the golden has answer-only samples");
    let loaded = load();
    let mut worst = 0.0f64;
    for batch in [1, 4] {
        let nll = model_eval::nll(&loaded.model, &samples, batch);
        let (mut sum, mut count) = (0.0, 0);
        for ((n, k), want) in nll.iter().zip(golden["samples"].as_array().unwrap()) {
            assert_eq!(*k, want["tokens"].as_u64().unwrap());
            let ppl = recipe::eval::perplexity(*n, *k);
            let reference = want["perplexity"].as_f64().unwrap();
            assert!(
                (ppl - reference).abs() <= 1e-4 * reference.max(1.0),
                "batch {batch}: {ppl} vs transformers {reference}"
            );
            worst = worst.max((ppl - reference).abs() / reference);
            sum += n;
            count += k;
        }
        let corpus = recipe::eval::perplexity(sum, count);
        let reference = golden["corpus_perplexity"].as_f64().unwrap();
        assert!((corpus - reference).abs() <= 1e-4 * reference, "batch {batch}: corpus {corpus} vs {reference}");
    }
    println!("perplexity: largest relative difference from transformers {worst:e}");
    // A one-token or empty sample beside others has no trained token to score and changes nothing.
    let mut with_short = samples.clone();
    with_short.insert(1, Sample { input_ids: vec![1], labels: vec![1] });
    with_short.insert(0, Sample { input_ids: vec![], labels: vec![] });
    let nll = model_eval::nll(&loaded.model, &with_short, 8);
    assert_eq!((nll[0], nll[2]), ((0.0, 0), (0.0, 0)));
    let alone = model_eval::nll(&loaded.model, &samples, 8);
    assert_eq!([&nll[1..2], &nll[3..]].concat(), alone);
}

fn eval_cmd() -> std::process::Command {
    let mut cmd = common::recipe_command();
    cmd.arg("eval");
    cmd
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn eval_writes_predictions_and_results_the_metrics_recompute() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eval");
    let run = eval_cmd()
        .arg(model_dir())
        .arg("--dataset")
        .arg(root().join("tests/fixtures/pipeline/instructions.jsonl"))
        .args(["--dataset-type", "alpaca", "--max-new-tokens", "12", "--batch-size", "4", "--device", "cpu", "--json"])
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let results: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(results, read_json(&out.join("eval_results.json")));
    let metrics = results["metrics"].as_object().unwrap();
    for k in ["sacrebleu", "chrf", "ter", "rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match", "perplexity"] {
        assert!(metrics[k].as_f64().unwrap().is_finite(), "{k}: {metrics:?}");
    }
    assert_eq!(results["counts"]["samples"], 6);
    assert!(results["counts"]["perplexity_tokens"].as_u64().unwrap() > 6 && !metrics.contains_key("perplexity_tokens"));
    assert_eq!(results["counts"]["leaked"], Value::Null, "a model folder has no training data to compare");
    let rows = json_lines(&out.join("eval_predictions.jsonl"));
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0]["reference"], "Blue.");
    assert!(rows[0]["prompt"].as_str().unwrap().contains("Name a colour of the sky."), "{}", rows[0]);
    // The files agree with the metrics recomputed from the written texts.
    let preds: Vec<&str> = rows.iter().map(|r| r["prediction"].as_str().unwrap()).collect();
    let refs: Vec<&str> = rows.iter().map(|r| r["reference"].as_str().unwrap()).collect();
    assert_eq!(metrics["chrf"].as_f64().unwrap(), recipe::eval::chrf::corpus_chrf(&preds, &refs));
    assert_eq!(rows[1]["scores"]["ter"].as_f64().unwrap(), recipe::eval::ter::sentence_ter(preds[1], refs[1]).score);
    // One at a time gives the same answers (greedy).
    let again = eval_cmd()
        .arg(model_dir())
        .arg("--dataset")
        .arg(root().join("tests/fixtures/pipeline/instructions.jsonl"))
        .args(["--dataset-type", "alpaca", "--max-new-tokens", "12", "--batch-size", "1", "--device", "cpu"])
        .arg("--rouge-stemmer")
        .arg("--output")
        .arg(dir.path().join("again"))
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let rows1 = json_lines(&dir.path().join("again/eval_predictions.jsonl"));
    assert_eq!(read_json(&dir.path().join("again/eval_results.json"))["settings"]["rouge_stemmer"], true);
    for r in &rows1 {
        let (p, reference) = (r["prediction"].as_str().unwrap(), r["reference"].as_str().unwrap());
        let stemmed = recipe::eval::rouge::sample_rouge(p, reference, true);
        assert_eq!(r["scores"]["rouge1"].as_f64().unwrap(), stemmed.rouge1);
    }
    assert_eq!(
        rows1.iter().map(|r| &r["prediction"]).collect::<Vec<_>>(),
        rows.iter().map(|r| &r["prediction"]).collect::<Vec<_>>()
    );
}

#[test]
fn base_vs_trained_writes_the_side_by_side_report_and_warns_of_leakage() {
    let dir = tempfile::tempdir().unwrap();
    let data = root().join("tests/fixtures/pipeline/instructions.jsonl");
    let recipe = dir.path().join("recipe.yaml");
    std::fs::write(
        &recipe,
        format!(
            "base_model: {}\nadapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true\n\
             datasets:\n  - path: {}\n    type: alpaca\nval_set_size: 0\nsequence_len: 256\nmicro_batch_size: 2\n\
             max_steps: 6\nsave_steps: 3\nlearning_rate: 5.0e-3\nseed: 3\noutput_dir: {}\n",
            model_dir().display(),
            data.display(),
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    let trained = common::recipe_command().arg("run").arg(&recipe).args(["--device", "cpu"]).output().unwrap();
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    let out = dir.path().join("report");
    let run = eval_cmd()
        .arg(model_dir())
        .arg(dir.path().join("out"))
        .arg("--dataset")
        .arg(&data)
        .args(["--dataset-type", "alpaca", "--max-new-tokens", "8", "--device", "cpu"])
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning[leakage]: 6 of 6 evaluation samples also appear in the training split"),
        "{stderr}"
    );
    let results = read_json(&out.join("eval_results.json"));
    assert_eq!(results["counts"]["leaked"], 6);
    let (a, b) =
        (results["metrics"]["perplexity"].as_f64().unwrap(), results["metrics_2"]["perplexity"].as_f64().unwrap());
    assert!(b < a, "training on these answers lowers their perplexity: base {a}, trained {b}");
    assert!((results["difference"]["perplexity"].as_f64().unwrap() - (b - a)).abs() < 1e-9);
    let rows = json_lines(&out.join("eval_predictions.jsonl"));
    assert!(rows.iter().all(|r| r["prediction_2"].is_string() && r["scores_2"]["chrf"].is_number()));
    let html = std::fs::read_to_string(out.join("eval_report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("id=\"samples\"") && html.contains("Blue."));
    for remote in ["src=\"http", "href=\"http", "@import", "url("] {
        assert!(!html.contains(remote), "the report fetches {remote}");
    }
    // A checkpoint inside the output folder finds the run's recipe through the folder's recipe_run.json.
    let checkpoint = eval_cmd()
        .arg(dir.path().join("out/checkpoint-3"))
        .arg("--dataset")
        .arg(&data)
        .args(["--dataset-type", "alpaca", "--metrics", "perplexity", "--device", "cpu", "--json"])
        .arg("--output")
        .arg(dir.path().join("checkpoint-eval"))
        .output()
        .unwrap();
    assert!(checkpoint.status.success(), "{}", String::from_utf8_lossy(&checkpoint.stderr));
    let at3: Value = serde_json::from_slice(&checkpoint.stdout).unwrap();
    assert_eq!(at3["counts"]["leaked"], 6);
    let p3 = at3["metrics"]["perplexity"].as_f64().unwrap();
    assert!(p3 < a && p3 != b, "step 3 improves on the base ({a}) and is not step 6 ({b}): {p3}");
    let md = std::fs::read_to_string(out.join("eval_report.md")).unwrap();
    assert!(md.contains("| chrf |") && md.lines().filter(|l| l.starts_with("| ")).count() >= 6 + 9, "{md}");
}

#[test]
fn bad_input_ends_in_messages() {
    let dir = tempfile::tempdir().unwrap();
    let fail = |args: &[&str], code: i32, want: &str| {
        let out = eval_cmd().args(args).args(["--device", "cpu"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    };
    let model = model_dir().display().to_string();
    let fixture = root().join("tests/fixtures/pipeline/instructions.jsonl").display().to_string();
    fail(&[&model, "--metrics", "chrf,bleu"], 2, "unknown metric `bleu`");
    fail(&[&model, "--metrics", "chrf,bleu"], 2, "did you mean `sacrebleu`?");
    let not_model = dir.path().display().to_string();
    fail(&[&not_model], 1, "not a model (no config.json or adapter_config.json)");
    fail(&[&model], 1, "a model folder brings no data; pass --dataset");
    let text = root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display().to_string();
    fail(
        &[&model, "--dataset", &text, "--dataset-type", "completion", "--metrics", "chrf"],
        1,
        "no sample has a prompt and an answer",
    );
    fail(&[&model, "--dataset", &fixture, "--dataset-type", "alpacca"], 1, "alpacca");
    // Text with no prompt: perplexity alone by default.
    let out = eval_cmd()
        .arg(&model)
        .args(["--dataset", &text, "--dataset-type", "completion", "--device", "cpu", "--json", "--output"])
        .arg(dir.path().join("ppl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results["settings"]["metrics"], serde_json::json!(["perplexity"]));
    assert!(results["metrics"]["perplexity"].as_f64().unwrap() > 1.0);
    let rows = json_lines(&dir.path().join("ppl/eval_predictions.jsonl"));
    assert!(rows.iter().all(|r| r["prediction"].is_null() && r["scores"]["perplexity"].as_f64().unwrap() > 1.0));
}

#[test]
fn do_causal_lm_eval_logs_generation_metrics_at_each_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = |extra: &str| {
        let path = dir.path().join("recipe.yaml");
        std::fs::write(
            &path,
            format!(
                "base_model: {}\nadapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true\n\
                 datasets:\n  - path: {}\n    type: alpaca\nsequence_len: 256\nmicro_batch_size: 2\n\
                 max_steps: 4\nlearning_rate: 2.0e-4\nseed: 5\noutput_dir: {}\n{extra}",
                model_dir().display(),
                root().join("tests/fixtures/pipeline/instructions.jsonl").display(),
                dir.path().join("out").display()
            ),
        )
        .unwrap();
        path
    };
    // A key that would do nothing is refused at its place.
    let lone = recipe("val_set_size: 0.34\neval_causal_lm_metrics: [chrf]\n");
    let out = common::recipe_command().arg("validate").arg(&lone).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("`eval_causal_lm_metrics` has no effect without `do_causal_lm_eval: true`"), "{stdout}");
    let no_val = recipe("do_causal_lm_eval: true\n");
    let out = common::recipe_command().arg("validate").arg(&no_val).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("causal-lm-eval-needs-validation"));

    let path = recipe(
        "val_set_size: 0.34\neval_steps: 2\ndo_causal_lm_eval: true\neval_causal_lm_metrics: [sacrebleu, chrf, rouge]\n\
         eval_max_new_tokens: 6\n",
    );
    let plan = common::recipe_command().args(["plan", "--json"]).arg(&path).output().unwrap();
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(
        plan["training"]["causal_lm_eval"],
        serde_json::json!({"metrics": ["sacrebleu", "chrf", "rouge"], "max_new_tokens": 6})
    );
    let run = common::recipe_command().arg("run").arg(&path).args(["--device", "cpu"]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let records = json_lines(&dir.path().join("out/metrics.jsonl"));
    let evals: Vec<&Value> = records.iter().filter(|r| r.get("eval_loss").is_some()).collect();
    assert_eq!(evals.len(), 3, "steps 0, 2 and 4: {records:?}");
    for r in evals {
        for k in ["eval_sacrebleu", "eval_chrf", "eval_rouge1", "eval_rougeL", "eval_perplexity"] {
            assert!(r[k].as_f64().is_some_and(f64::is_finite), "{k} in {r}");
        }
        assert!(r.get("eval_ter").is_none(), "only the metrics asked for: {r}");
    }
    let svg = std::fs::read_to_string(dir.path().join("out/loss_curve.svg")).unwrap();
    assert!(svg.contains(">chrf ") && svg.contains(">rougeL "), "the loss curve lists the generation metrics");
}

//! Reward models (`reward_model: true`): TRL 1.16's RewardTrainer loss (with
//! center_rewards_coefficient), metrics, per-sequence rewards and the gradient of every LoRA tensor
//! and the score head on a fixed batch, from a peft SEQ_CLS adapter it saved (goldens from
//! scripts/reference/reward_goldens.py); `recipe score` equals transformers + peft on plain texts; and
//! `recipe run` end to end: pairs teach the demo's score head, the output is a SEQ_CLS adapter
//! (LoRA) or a `…ForSequenceClassification` folder (full), and `generate` refuses a reward model.
#![cfg(feature = "exec")]

mod common;

use recipe::data::packing::{Example, PairRows};
use recipe::exec::objective::{self, DeviceBatch, Objective, Reward};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(root().join("tests/golden/reward/expected.safetensors")).unwrap().into_iter().collect()
}

fn close(ours: f64, theirs: f64) -> bool {
    (ours - theirs).abs() <= 1e-4 * theirs.abs().max(1.0)
}

fn check_against_trl(checkpointing: bool) {
    let g = golden();
    let model = common::load_peft_folder(&root().join("tests/golden/reward/adapter"), Kind::Float);
    assert!(model.score.is_some(), "a SEQ_CLS adapter loads with its score head");
    let (chosen, rejected) = (common::golden_id_lists(&g, "chosen"), common::golden_id_lists(&g, "rejected"));
    let pairs: Vec<PairRows> = chosen.iter().zip(&rejected).map(|(c, r)| PairRows::new((&[], c), (&[], r))).collect();
    let items: Vec<&PairRows> = pairs.iter().collect();
    // TRL pads with the tokenizer's pad token, here EOS (2): the score is read before it.
    let host = PairRows::collate(&items, 2, None);
    let batch = DeviceBatch::upload(&host, Device::Cpu);
    let objective = Reward { center_rewards_coefficient: Some(0.01) };
    let n = objective.units(&host) as f64;
    assert_eq!(n, 4.0);

    let rewards = tch::no_grad(|| {
        let hidden = model.hidden_states(&batch.inputs(), false);
        objective::sequence_scores(&model, &hidden, &batch)
    });
    let (ours, theirs) =
        (Vec::<f64>::try_from(rewards.to_kind(Kind::Double)).unwrap(), Vec::<f64>::try_from(&g["rewards"]).unwrap());
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(close(*a, *b), "reward of sequence {i}: {a} vs transformers {b}");
    }

    let sums = objective::forward_backward(&model, &objective, &batch, n, checkpointing, &|_| {});
    let loss = sums.loss.double_value(&[]) / n;
    let trl_loss = g["loss"].double_value(&[0]);
    assert!(close(loss, trl_loss), "loss {loss} vs TRL {trl_loss}");
    let values = Vec::<f64>::try_from(sums.metrics.unwrap().to_kind(Kind::Double)).unwrap();
    let metrics = objective.metrics(&values, n);
    assert_eq!(metrics.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["accuracy", "margin", "mean_reward"]);
    for (metric, value) in metrics {
        let trl = g[&format!("metric.{metric}")].double_value(&[0]);
        assert!(close(value, trl), "{metric} {value} vs TRL {trl}");
    }
    let (checked, worst) = common::assert_gradients_match(&model, &g, "reward");
    assert_eq!(checked, 71, "every LoRA tensor's gradient and the score head's are compared");
    assert_eq!(model.trainable_params().last().unwrap().name, "base_model.model.score.weight");
    eprintln!(
        "reward: loss {loss} vs TRL {trl_loss} ({:e}); worst gradient {worst:e} relative",
        (loss - trl_loss).abs()
    );
}

#[test]
fn reward_loss_metrics_and_gradients_match_trl() {
    check_against_trl(false);
}

#[test]
fn reward_with_gradient_checkpointing_matches_trl() {
    check_against_trl(true);
}

#[test]
fn recipe_score_equals_transformers_and_peft() {
    let g = golden();
    let texts = ["Once upon a time there was a little dog.", "The sun went down and the stars came out"];
    let out = common::recipe_command()
        .current_dir(root())
        .args(["score", "tests/golden/reward/adapter", "--device", "cpu", "--json"])
        .args(texts.iter().flat_map(|t| ["--text", t]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let expected = Vec::<f64>::try_from(&g["text_scores"]).unwrap();
    assert_eq!(rows.len(), 2);
    for ((row, text), want) in rows.iter().zip(texts).zip(expected) {
        assert_eq!(row["text"], text);
        let got = row["score"].as_f64().unwrap();
        assert!(close(got, want), "{text:?}: recipe {got} vs transformers + peft {want}");
    }
}

/// A reward recipe on stories260k and the bundled preference pairs, in `dir`.
fn write_recipe(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "base_model: {model}\nreward_model: true\n\
         datasets:\n  - path: {data}\n    type: chat_template.default\n    field_messages: prompt\n\
         sequence_len: 256\nmicro_batch_size: 8\nwarmup_steps: 2\n\
         logging_steps: 10\nseed: 3\noutput_dir: {out}\n{extra}",
        model = root().join("models/stories260k").display(),
        data = root().join("data/preference/shakespeare-continuations.jsonl").display(),
        out = dir.join("out").display(),
    );
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_ok(path: &Path) -> String {
    let out = common::recipe_command().arg("run").arg(path).args(["--device", "cpu"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn score_of(target: &Path, text: &str) -> f64 {
    let out = common::recipe_command()
        .arg("score")
        .arg(target)
        .args(["--device", "cpu", "--json", "--text", text])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows[0]["score"].as_f64().unwrap()
}

#[test]
fn lora_reward_model_learns_the_pairs_and_saves_a_seq_cls_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(
        dir.path(),
        "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\ncenter_rewards_coefficient: 0.01\n\
         val_set_size: 0.1\nmax_steps: 60\nlearning_rate: 1.0e-3\neval_steps: 30\n",
    );
    let stdout = run_ok(&path);
    assert!(stdout.contains("steps      60 of 60"), "{stdout}");
    let all = common::metrics_records(dir.path());
    let train: Vec<&Value> = all.iter().filter(|r| r.get("loss").is_some()).collect();
    assert!(train.iter().all(|r| r["accuracy"].is_f64() && r["margin"].is_f64() && r["mean_reward"].is_f64()));
    let evals: Vec<&Value> = all.iter().filter(|r| r.get("eval_loss").is_some()).collect();
    let (first, last) = (evals.first().unwrap(), evals.last().unwrap());
    let (before, after) = (first["eval_loss"].as_f64().unwrap(), last["eval_loss"].as_f64().unwrap());
    let accuracy = last["eval_accuracy"].as_f64().unwrap();
    eprintln!("reward demo: eval loss {before:.4} -> {after:.4}, accuracy {accuracy:.3}");
    assert!(after < before - 0.1, "eval loss {before} -> {after}");
    assert!(accuracy >= 0.65, "validation accuracy {accuracy}");

    let out = dir.path().join("out");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["modules_to_save"], serde_json::json!(["score"]));
    let saved = Tensor::read_safetensors(out.join("adapter_model.safetensors")).unwrap();
    assert!(saved.iter().any(|(k, t)| k == "base_model.model.score.weight" && t.size() == [1, 64]));

    // Text in the pairs' own shape: a true continuation outscores its shuffled words.
    let prompt = "Go, call the people:\n";
    let good = score_of(&out, &format!("{prompt}in whose name myself</s>"));
    let bad = score_of(&out, &format!("{prompt}whose name in myself</s>"));
    assert!(good.is_finite() && bad.is_finite());

    let refused = common::recipe_command()
        .arg("generate")
        .arg(&out)
        .args(["--prompt", "Hi", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("reward model"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn full_reward_model_is_a_sequence_classifier_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 4\nlearning_rate: 1.0e-4\nval_set_size: 0\n");
    run_ok(&path);
    let out = dir.path().join("out");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], serde_json::json!(["LlamaForSequenceClassification"]));
    assert_eq!(config["id2label"], serde_json::json!({"0": "LABEL_0"}));
    assert_eq!(config["pad_token_id"], 2);
    let saved: HashMap<String, Tensor> =
        Tensor::read_safetensors(out.join("model.safetensors")).unwrap().into_iter().collect();
    assert_eq!(saved["score.weight"].size(), [1, 64]);
    assert!(!saved.contains_key("lm_head.weight"));
    // The folder reloads as a reward model, and scores what the loaded model computes.
    let loaded = recipe::exec::load_trained(&out, None, Device::Cpu, None, Some(Kind::Float)).unwrap();
    let text = "Once upon a time";
    let ids: Vec<i64> = loaded.tokenizer.bos().into_iter().chain(loaded.tokenizer.encode(text).unwrap()).collect();
    let direct = recipe::exec::score_sequences(&loaded, &[ids]).unwrap()[0];
    assert!(close(score_of(&out, text), direct));
}

#[test]
fn reward_model_rules_name_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("rl: dpo\n", "reward-model-with-rl"),
        ("sample_packing: true\n", "preference-packing"),
        ("num_labels: 2\n", "reward-model-num-labels"),
        ("model_type: AutoModelForCausalLM\n", "reward-model-class"),
    ];
    for (extra, code) in cases {
        let path = write_recipe(dir.path(), extra);
        let out = common::recipe_command().arg("validate").arg(&path).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{extra}: {text}");
        assert!(text.contains(code), "{extra}: expected {code} in\n{text}");
    }
}

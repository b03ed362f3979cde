//! Preference training (`rl:`): TRL 1.16's losses, metrics and LoRA gradients on a fixed batch of
//! pairs (goldens from scripts/reference/preference_goldens.py) for DPO and IPO (its DPOTrainer, the
//! reference being the same weights with the adapter switched off), SimPO (its CPO trainer) and ORPO;
//! and `recipe run` on pairs end to end: the first step's DPO loss is ln 2, two ranks repeat one rank
//! with accumulation 2, precomputed references equal the per-step pass, packing is an error.
#![cfg(feature = "exec")]

mod common;

use recipe::data::packing::{Example, PairRows};
use recipe::exec::objective::{self, DeviceBatch, Objective, Preference, PreferenceLoss};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check_against_trl(name: &str, loss: PreferenceLoss, beta: f64, checkpointing: bool) {
    check_weighted_against_trl(name, loss, beta, checkpointing, false);
}

fn check_weighted_against_trl(name: &str, loss: PreferenceLoss, beta: f64, checkpointing: bool, use_weighting: bool) {
    let g: HashMap<String, Tensor> =
        Tensor::read_safetensors(root().join(format!("tests/golden/preference/{name}.safetensors")))
            .unwrap()
            .into_iter()
            .collect();
    let model = common::load_peft_folder(&root().join("tests/golden/lora/stories260k_all_linear"), Kind::Float);
    let (prompts, chosen, rejected) = (
        common::golden_id_lists(&g, "prompt"),
        common::golden_id_lists(&g, "chosen"),
        common::golden_id_lists(&g, "rejected"),
    );
    let pairs: Vec<PairRows> =
        (0..prompts.len()).map(|i| PairRows::new((&prompts[i], &chosen[i]), (&prompts[i], &rejected[i]))).collect();
    let items: Vec<&PairRows> = pairs.iter().collect();
    let host = PairRows::collate(&items, 0, None);
    let batch = DeviceBatch::upload(&host, Device::Cpu);
    let objective = Preference { loss, beta, use_weighting };
    let n = objective.units(&host) as f64;
    assert_eq!(n, 4.0);
    let sums = objective::forward_backward(&model, &objective, &batch, n, checkpointing, &|_| {});
    let ours = sums.loss.double_value(&[]) / n;
    let theirs = g["loss"].double_value(&[0]);
    assert!((ours - theirs).abs() <= 1e-4 * theirs.abs().max(1.0), "{name}: loss {ours} vs TRL {theirs}");
    let values = Vec::<f64>::try_from(sums.metrics.unwrap().to_kind(Kind::Double)).unwrap();
    for (metric, value) in objective.metrics(&values, n) {
        // TRL's CPO / ORPO trainers average logits/* over padding positions too (recipe: real ones).
        if matches!(loss, PreferenceLoss::Simpo { .. } | PreferenceLoss::Orpo) && metric.starts_with("logits/") {
            continue;
        }
        let golden = g[&format!("metric.{}", metric.replace('/', "."))].double_value(&[0]);
        assert!((value - golden).abs() <= 1e-4 * golden.abs().max(1.0), "{name}: {metric} {value} vs TRL {golden}");
    }
    let (checked, worst) = common::assert_gradients_match(&model, &g, name);
    eprintln!("{name}: loss {ours} vs TRL {theirs} ({:e}); worst gradient {worst:e} relative", (ours - theirs).abs());
    assert_eq!(checked, 70, "every LoRA tensor's gradient is compared");
}

#[test]
fn dpo_loss_metrics_and_gradients_match_trl() {
    check_against_trl("dpo", PreferenceLoss::Dpo, 0.1, false);
}

#[test]
fn dpo_with_wpo_weighting_matches_trl() {
    check_weighted_against_trl("dpo_wpo", PreferenceLoss::Dpo, 0.1, false, true);
}

#[test]
fn ipo_loss_metrics_and_gradients_match_trl() {
    check_against_trl("ipo", PreferenceLoss::Ipo, 0.1, false);
}

#[test]
fn dpo_with_gradient_checkpointing_matches_trl() {
    check_against_trl("dpo", PreferenceLoss::Dpo, 0.1, true);
}

#[test]
fn simpo_loss_metrics_and_gradients_match_trl() {
    check_against_trl("simpo", PreferenceLoss::Simpo { gamma: 0.5, cpo_alpha: 1.0 }, 2.0, false);
}

#[test]
fn orpo_loss_metrics_and_gradients_match_trl() {
    check_against_trl("orpo", PreferenceLoss::Orpo, 0.1, false);
}

#[test]
fn kto_loss_metrics_and_gradients_match_trl() {
    use recipe::data::packing::KtoRow;
    let g: HashMap<String, Tensor> =
        Tensor::read_safetensors(root().join("tests/golden/preference/kto.safetensors")).unwrap().into_iter().collect();
    let model = common::load_peft_folder(&root().join("tests/golden/lora/stories260k_all_linear"), Kind::Float);
    // The policy TRL scored: the golden adapter moved towards the rows' answers (see the script).
    tch::no_grad(|| {
        for p in model.trainable_params() {
            p.tensor.shallow_clone().copy_(&g[&format!("lora.{}", p.name)]);
        }
    });
    let (prompts, answers) = (common::golden_id_lists(&g, "prompt"), common::golden_id_lists(&g, "answer"));
    let desirable = Vec::<i64>::try_from(&g["desirable"]).unwrap();
    let rows: Vec<KtoRow> = (0..prompts.len())
        .map(|i| KtoRow { prompt: prompts[i].clone(), answer: answers[i].clone(), desirable: desirable[i] == 1 })
        .collect();
    let items: Vec<&KtoRow> = rows.iter().collect();
    let host = KtoRow::collate(&items, 0, None);
    let batch = DeviceBatch::upload(&host, Device::Cpu);
    let objective = objective::Kto { beta: 0.1, desirable_weight: 1.0, undesirable_weight: 1.5 };
    let n = objective.units(&host) as f64;
    assert_eq!(n, 4.0);
    let sums = objective::forward_backward(&model, &objective, &batch, n, false, &|_| {});
    let ours = sums.loss.double_value(&[]) / n;
    let theirs = g["loss"].double_value(&[0]);
    assert!((ours - theirs).abs() <= 1e-4 * theirs.abs().max(1.0), "kto: loss {ours} vs TRL {theirs}");
    let values = Vec::<f64>::try_from(sums.metrics.unwrap().to_kind(Kind::Double)).unwrap();
    let metrics = objective.metrics(&values, n);
    let trl_metrics = g.keys().filter(|k| k.starts_with("metric.")).count();
    assert_eq!(metrics.len(), trl_metrics, "every metric TRL logs: {metrics:?}");
    for (metric, value) in metrics {
        let golden = g[&format!("metric.{}", metric.replace('/', "."))].double_value(&[0]);
        assert!((value - golden).abs() <= 1e-4 * golden.abs().max(1.0), "kto: {metric} {value} vs TRL {golden}");
    }
    assert!(g["metric.kl"].double_value(&[0]) > 1.0, "the golden exercises the KL estimate, not only its clamp");
    let (checked, worst) = common::assert_gradients_match(&model, &g, "kto");
    assert_eq!(checked, 70, "every LoRA tensor's gradient is compared");
    eprintln!("kto: loss {ours} vs TRL {theirs} ({:e}); worst gradient {worst:e} relative", (ours - theirs).abs());
}

/// A DPO recipe on stories260k and the bundled preference pairs, in `dir`.
fn write_recipe(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "base_model: {model}\nadapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n\
         rl: dpo\ndpo_beta: 0.1\nchat_template: chatml\n\
         datasets:\n  - path: {data}\n    type: chat_template.default\n    field_messages: prompt\n\
         val_set_size: 0.1\nsequence_len: 256\nmicro_batch_size: 4\nlearning_rate: 5.0e-4\nwarmup_steps: 2\n\
         logging_steps: 1\nseed: 3\nddp_timeout: 60\noutput_dir: {out}\n{extra}",
        model = root().join("models/stories260k").display(),
        data = root().join("data/preference/shakespeare-continuations.jsonl").display(),
        out = dir.join("out").display(),
    );
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_ok(path: &Path, args: &[&str]) -> String {
    let out = common::recipe_command().arg("run").arg(path).args(["--device", "cpu"]).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn dpo_trains_from_ln2_and_logs_trl_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 12\neval_steps: 6\n");
    let stdout = run_ok(&path, &[]);
    assert!(stdout.contains("steps      12 of 12"), "{stdout}");
    let all = common::metrics_records(dir.path());
    let train: Vec<&Value> = all.iter().filter(|r| r.get("loss").is_some()).collect();
    // The policy starts as the reference: every pair's margin is 0 and the loss ln 2.
    let first = train[0]["loss"].as_f64().unwrap();
    assert!((first - std::f64::consts::LN_2).abs() < 1e-6, "step 1 loss {first}");
    assert_eq!(train[0]["rewards/margins"].as_f64(), Some(0.0));
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
    ] {
        assert!(train.iter().all(|r| r[key].is_f64()), "{key} missing");
    }
    let last = train.last().unwrap();
    assert!(last["loss"].as_f64().unwrap() < first, "the DPO loss falls: {last}");
    assert!(last["rewards/margins"].as_f64().unwrap() > 0.0, "chosen answers gain on rejected ones: {last}");
    let eval: Vec<&Value> = all.iter().filter(|r| r.get("eval_loss").is_some()).collect();
    assert!(eval.len() >= 2 && eval.iter().all(|r| r["eval_rewards/accuracies"].is_f64()), "{eval:?}");
    assert!(dir.path().join("out/adapter_model.safetensors").is_file());
}

#[test]
fn dpo_on_two_ranks_repeats_one_rank_with_accumulation() {
    let one = tempfile::tempdir().unwrap();
    run_ok(&write_recipe(one.path(), "max_steps: 5\n"), &["--set", "gradient_accumulation_steps=2"]);
    let two = tempfile::tempdir().unwrap();
    run_ok(&write_recipe(two.path(), "max_steps: 5\n"), &["--nproc-per-node", "2"]);
    let losses = |d: &Path| -> Vec<(f64, f64)> {
        common::metrics_records(d)
            .iter()
            .filter(|r| r.get("loss").is_some())
            .map(|r| (r["loss"].as_f64().unwrap(), r["rewards/margins"].as_f64().unwrap()))
            .collect()
    };
    let (a, b) = (losses(one.path()), losses(two.path()));
    assert_eq!(a.len(), 5);
    for (i, ((la, ma), (lb, mb))) in a.iter().zip(&b).enumerate() {
        assert!((la - lb).abs() <= 1e-5 * la.abs(), "step {}: loss {la} vs {lb}", i + 1);
        assert!((ma - mb).abs() <= 1e-5 * ma.abs().max(1e-3), "step {}: margin {ma} vs {mb}", i + 1);
    }
}

/// The DPO recipe switched to KTO.
fn kto_recipe(dir: &Path, extra: &str) -> PathBuf {
    let path = write_recipe(dir, extra);
    let text = std::fs::read_to_string(&path).unwrap().replace("rl: dpo", "rl: kto");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn kto_trains_from_one_half_and_logs_trl_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let path = kto_recipe(
        dir.path(),
        "max_steps: 12
eval_steps: 6
",
    );
    let stdout = run_ok(&path, &[]);
    assert!(stdout.contains("steps      12 of 12"), "{stdout}");
    let all = common::metrics_records(dir.path());
    let train: Vec<&Value> = all.iter().filter(|r| r.get("loss").is_some()).collect();
    // The policy starts as the reference: every reward and the KL estimate are 0, each loss 1 − σ(0).
    let first = train[0]["loss"].as_f64().unwrap();
    assert!((first - 0.5).abs() < 1e-6, "step 1 loss {first}");
    assert_eq!(train[0]["kl"].as_f64(), Some(0.0));
    assert!(train.iter().all(|r| r["kl"].is_f64() && r["entropy"].is_f64()));
    // A side with no rows in a step's micro-batches is left out of that step, as TRL does.
    for key in ["rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"] {
        assert!(train.iter().filter(|r| r[key].is_f64()).count() >= train.len() / 2, "{key} missing");
    }
    let eval: Vec<&Value> = all.iter().filter(|r| r.get("eval_loss").is_some()).collect();
    let (before, after) = (eval[0], eval.last().unwrap());
    assert!(after["eval_loss"].as_f64() < before["eval_loss"].as_f64(), "{before} -> {after}");
    let margin = |r: &Value| r["eval_rewards/margins"].as_f64().unwrap();
    assert!(margin(after) > margin(before), "desirable answers gain on undesirable ones: {before} -> {after}");
    assert!(dir.path().join("out/adapter_model.safetensors").is_file());
}

#[test]
fn kto_on_two_ranks_repeats_one_rank_with_accumulation() {
    let one = tempfile::tempdir().unwrap();
    run_ok(
        &kto_recipe(
            one.path(),
            "max_steps: 4
",
        ),
        &["--set", "gradient_accumulation_steps=2"],
    );
    let two = tempfile::tempdir().unwrap();
    run_ok(
        &kto_recipe(
            two.path(),
            "max_steps: 4
",
        ),
        &["--nproc-per-node", "2"],
    );
    let values = |d: &Path| -> Vec<(f64, f64)> {
        common::metrics_records(d)
            .iter()
            .filter(|r| r.get("loss").is_some())
            .map(|r| (r["loss"].as_f64().unwrap(), r["kl"].as_f64().unwrap()))
            .collect()
    };
    let (a, b) = (values(one.path()), values(two.path()));
    assert_eq!(a.len(), 4);
    for (i, ((la, ka), (lb, kb))) in a.iter().zip(&b).enumerate() {
        assert!((la - lb).abs() <= 1e-5 * la.abs(), "step {}: loss {la} vs {lb}", i + 1);
        assert!((ka - kb).abs() <= 1e-5 * ka.abs().max(1e-3), "step {}: kl {ka} vs {kb}", i + 1);
    }
}

#[test]
fn kto_trains_on_unpaired_rows_of_axolotls_kto_types() {
    let dir = tempfile::tempdir().unwrap();
    let rows = root().join("tests/fixtures/kto/rows.jsonl");
    let path = kto_recipe(dir.path(), "max_steps: 3\n");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            &root().join("data/preference/shakespeare-continuations.jsonl").display().to_string(),
            &rows.display().to_string(),
        )
        .replace("type: chat_template.default\n    field_messages: prompt", "type: chatml.ultra")
        .replace("val_set_size: 0.1", "val_set_size: 0")
        .replace("micro_batch_size: 4", "micro_batch_size: 3");
    std::fs::write(&path, &text).unwrap();
    let stdout = run_ok(&path, &[]);
    assert!(stdout.contains("steps      3 of 3"), "{stdout}");
    let first = common::metrics_records(dir.path()).into_iter().find(|r| r.get("loss").is_some()).unwrap();
    // Two desirable rows and one undesirable, the policy still the reference: each loss 1 − σ(0).
    assert!((first["loss"].as_f64().unwrap() - 0.5).abs() < 1e-6, "{first}");
    assert!(first["rewards/chosen"].is_f64() && first["rewards/rejected"].is_f64(), "{first}");
    // A type Axolotl defines for KTO only is an error under another method, at the dataset's type
    // (`chatml.ultra` itself means pairs under rl: dpo, as in Axolotl: tests/preference_formats.rs).
    std::fs::write(&path, text.replace("rl: kto", "rl: dpo").replace("chatml.ultra", "chatml.argilla")).unwrap();
    let out = common::recipe_command().arg("validate").arg(&path).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("error[type-not-for-method]"));
}

#[test]
fn dpo_trains_from_ln2_on_axolotls_string_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 2\n");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            &root().join("data/preference/shakespeare-continuations.jsonl").display().to_string(),
            &root().join("tests/fixtures/dpo/rows.jsonl").display().to_string(),
        )
        .replace("type: chat_template.default\n    field_messages: prompt", "type: llama3.prompt_pairs")
        .replace("val_set_size: 0.1", "val_set_size: 0")
        .replace("micro_batch_size: 4", "micro_batch_size: 3");
    std::fs::write(&path, text).unwrap();
    let stdout = run_ok(&path, &[]);
    assert!(stdout.contains("steps      2 of 2"), "{stdout}");
    let first = common::metrics_records(dir.path()).into_iter().find(|r| r.get("loss").is_some()).unwrap();
    assert!((first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{first}");
}

#[test]
fn orpo_trains_on_axolotls_argilla_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 2\norpo_alpha: 0.1\n");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            &root().join("data/preference/shakespeare-continuations.jsonl").display().to_string(),
            &root().join("tests/fixtures/orpo/argilla.jsonl").display().to_string(),
        )
        .replace("type: chat_template.default\n    field_messages: prompt", "type: chat_template.argilla")
        .replace("rl: dpo", "rl: orpo")
        .replace("val_set_size: 0.1", "val_set_size: 0")
        .replace("micro_batch_size: 4", "micro_batch_size: 2");
    std::fs::write(&path, text).unwrap();
    let stdout = run_ok(&path, &[]);
    assert!(stdout.contains("steps      2 of 2"), "{stdout}");
    let train: Vec<Value> =
        common::metrics_records(dir.path()).into_iter().filter(|r| r.get("loss").is_some()).collect();
    assert_eq!(train.len(), 2);
    for r in &train {
        assert!(r["loss"].as_f64().unwrap().is_finite() && r["nll_loss"].is_f64(), "{r}");
    }
}

#[test]
fn keys_of_another_preference_method_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, rule) in [
        ("orpo_alpha: 0.2\n", "error[rl-key-without-method]"),
        ("kto_desirable_weight: 1.2\n", "error[rl-key-without-method]"),
        ("precompute_ref_log_probs: true\n", "error[kto-precompute]"),
    ] {
        let path = if rule.contains("kto-") { kto_recipe(dir.path(), extra) } else { write_recipe(dir.path(), extra) };
        let out = common::recipe_command().arg("validate").arg(&path).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{extra}: {stdout}");
        assert!(stdout.contains(rule), "{extra}: expected {rule} in\n{stdout}");
    }
    let path = kto_recipe(dir.path(), "");
    let text = std::fs::read_to_string(&path).unwrap().replace("adapter: lora\n", "");
    std::fs::write(&path, text).unwrap();
    let out = common::recipe_command().arg("validate").arg(&path).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("error[kto-needs-adapter]"));
}

#[test]
fn packing_with_rl_is_an_error_at_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "sample_packing: true\n");
    let out = common::recipe_command().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("error[preference-packing]"));
}

#[test]
fn simpo_and_orpo_train_without_a_reference_model() {
    for (method, extra, beta) in
        [("simpo", "simpo_gamma: 0.5\ncpo_alpha: 0.0\n", "2.0"), ("orpo", "orpo_alpha: 0.1\n", "0.1")]
    {
        let dir = tempfile::tempdir().unwrap();
        let path = write_recipe(dir.path(), &format!("max_steps: 10\neval_steps: 10\n{extra}"));
        let text = std::fs::read_to_string(&path).unwrap().replace("rl: dpo", &format!("rl: {method}"));
        std::fs::write(&path, text.replace("dpo_beta: 0.1", &format!("dpo_beta: {beta}"))).unwrap();
        let stdout = run_ok(&path, &[]);
        assert!(stdout.contains("steps      10 of 10"), "{method}: {stdout}");
        let all = common::metrics_records(dir.path());
        let train: Vec<&Value> = all.iter().filter(|r| r.get("loss").is_some()).collect();
        assert!(train.iter().all(|r| r["nll_loss"].is_f64()), "{method}: nll_loss logged");
        // On the held-out pairs the loss falls; with SimPO the chosen answers gain on the rejected
        // ones (ORPO's small odds-ratio weight moves its margin little in 10 steps: its loss falls
        // mostly through the chosen answers' language-modelling term).
        let eval: Vec<&Value> = all.iter().filter(|r| r.get("eval_loss").is_some()).collect();
        let (before, after) = (eval[0], eval.last().unwrap());
        assert!(after["eval_loss"].as_f64() < before["eval_loss"].as_f64(), "{method}: {before} -> {after}");
        let margin = |r: &Value| r["eval_rewards/margins"].as_f64().unwrap();
        if method == "simpo" {
            assert!(margin(after) > margin(before), "{method}: {before} -> {after}");
        } else {
            assert!(
                after["eval_nll_loss"].as_f64() < before["eval_nll_loss"].as_f64(),
                "{method}: {before} -> {after}"
            );
        }
    }
}

#[test]
fn pairs_that_teach_nothing_are_refused_or_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.jsonl");
    std::fs::write(
        &data,
        concat!(
            "{\"prompt\": \"Speak.\\n\", \"chosen\": \"I will speak.\", \"rejected\": \"speak. will I\"}\n",
            "{\"prompt\": \"Speak.\\n\", \"chosen\": \"Same.\", \"rejected\": \"Same.\"}\n",
            "{\"prompt\": \"Speak.\\n\", \"chosen\": \" \", \"rejected\": \"No.\"}\n",
        ),
    )
    .unwrap();
    let path = write_recipe(dir.path(), "max_steps: 2\n");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(
        &root().join("data/preference/shakespeare-continuations.jsonl").display().to_string(),
        &data.display().to_string(),
    );
    std::fs::write(&path, text.replace("val_set_size: 0.1", "val_set_size: 0")).unwrap();
    let out = common::recipe_command().arg("preview").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pairs.jsonl:2: `chosen` and `rejected` are the same"), "{stderr}");
    let out = common::recipe_command()
        .args(["preview", "--json"])
        .arg(&path)
        .args(["--set", "skip_bad_rows=true"])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = json["report"][0].as_str().unwrap();
    assert!(report.contains("3 rows, 2 malformed rows skipped -> 1 pairs"), "{report}");
}

#[test]
fn precomputed_references_repeat_the_per_step_reference_pass() {
    let losses = |extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        let stdout = run_ok(&write_recipe(dir.path(), &format!("max_steps: 6\neval_steps: 3\n{extra}")), &[]);
        assert!(stdout.contains("steps      6 of 6"), "{stdout}");
        common::metrics_records(dir.path())
            .iter()
            .filter_map(|r| r.get("loss").or(r.get("eval_loss")).and_then(Value::as_f64))
            .collect::<Vec<f64>>()
    };
    let (each_step, once) = (losses(""), losses("precompute_ref_log_probs: true\n"));
    assert_eq!(each_step.len(), once.len());
    for (i, (a, b)) in each_step.iter().zip(&once).enumerate() {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "record {i}: {a} with a reference pass, {b} precomputed");
    }
}

#[test]
fn a_full_fine_tune_trains_dpo_against_precomputed_references() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 8\n");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n", "");
    std::fs::write(&path, text.replace("learning_rate: 5.0e-4", "learning_rate: 5.0e-5")).unwrap();
    // Without precomputed references a full fine-tune has no reference model: refused by name.
    let out = common::recipe_command().arg("run").arg(&path).args(["--device", "cpu"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("set precompute_ref_log_probs: true"));
    let stdout = run_ok(&path, &["--set", "precompute_ref_log_probs=true"]);
    assert!(stdout.contains("steps      8 of 8"), "{stdout}");
    let train: Vec<Value> =
        common::metrics_records(dir.path()).into_iter().filter(|r| r.get("loss").is_some()).collect();
    let first = train[0]["loss"].as_f64().unwrap();
    // The references were summed in float32 in batches of other shapes (before training), so the
    // policy's equal log-probabilities differ from them by rounding only.
    assert!((first - std::f64::consts::LN_2).abs() < 1e-5, "step 1 loss {first}");
    assert!(train.last().unwrap()["rewards/margins"].as_f64().unwrap() > 0.0);
    assert!(dir.path().join("out/model.safetensors").is_file());
}

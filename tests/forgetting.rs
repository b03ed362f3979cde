//! Countering forgetting: EWC's Fisher information against a transformers golden
//! (scripts/reference/ewc_goldens.py), for full fine-tuning and through a LoRA layer's probe; EWC
//! end to end on the bundled stories260k (the trained delta shrinks as ewc_lambda grows, the
//! logged penalty is what the checkpoint's Fisher and anchor give, resume repeats the run); and a
//! run with a replay buffer.
#![cfg(feature = "exec")]

mod common;

use recipe::data::Sample;
use recipe::exec::ewc::Ewc;
use recipe::exec::objective::Supervised;
use recipe::model::llama::{CausalLm, LoadOptions, Trainable};
use recipe::model::weights::Checkpoint;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(trainable: Trainable) -> CausalLm {
    let dir = root().join("models/stories260k");
    let arch = recipe::plan::model::local_architecture(&dir).unwrap();
    let opts =
        LoadOptions { device: Device::Cpu, base_kind: Kind::Float, trainable, quantize: None, score_head: false };
    CausalLm::load(&arch, &Checkpoint::open(&dir).unwrap(), &opts).unwrap()
}

#[test]
fn fisher_matches_transformers_for_full_fine_tuning_and_through_a_fresh_lora() {
    let g: HashMap<String, Tensor> =
        Tensor::read_safetensors(root().join("tests/golden/ewc/fisher.safetensors")).unwrap().into_iter().collect();
    let samples: Vec<Sample> = (0..3)
        .map(|n| {
            let ids = Vec::<i64>::try_from(&g[&format!("sample{n}")]).unwrap();
            Sample { input_ids: ids.clone(), labels: ids }
        })
        .collect();
    let lora = Trainable::Lora {
        targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            .map(String::from)
            .to_vec(),
        parameters: vec![],
        r: 4,
        scaling: 2.0,
        dropout: 0.0,
        dora: false,
        modules_to_save: vec![],
    };
    for (what, trainable) in [("full", Trainable::Everything), ("lora", lora)] {
        let model = load(trainable);
        let ewc = Ewc::estimate(&model, &Supervised::WHOLE, 1.0, &samples, 64, 64, 0).unwrap();
        assert_eq!(ewc.samples, 3);
        let mut checked = 0;
        for (name, expected) in g.iter().filter(|(k, _)| k.starts_with("fisher.")) {
            let name = name.trim_start_matches("fisher.");
            let Some(ours) = ewc.fisher_of(name) else {
                assert!(what == "lora" && name == "model.norm.weight", "{what}: no Fisher for {name}");
                continue;
            };
            let scale = expected.abs().max().double_value(&[]);
            let d = (ours - expected).abs().max().double_value(&[]) / scale;
            assert!(scale > 0.0 && d < 1e-4, "{what} {name}: Fisher differs by {d:e} of its largest value {scale:e}");
            checked += 1;
        }
        assert!(checked >= 3, "{what}: {checked} tensors checked");
        // The estimate leaves no gradient behind for the first step.
        for p in model.trainable_params() {
            let grad = p.tensor.grad();
            assert!(!grad.defined() || grad.abs().max().double_value(&[]) == 0.0, "{what}: {} has a gradient", p.name);
        }
    }
}

/// A small LoRA recipe on stories260k in `dir` with EWC data (the base model's own greedy story).
fn write_recipe(dir: &Path, extra: &str) -> PathBuf {
    common::stories_lora_recipe(
        dir,
        &format!("sequence_len: 64\nlr_scheduler: constant\nlogging_steps: 1\nmax_steps: 6\n{extra}"),
    )
}

fn stories() -> String {
    format!(
        "  - path: {}\n    type: completion\n    ds_type: text\n",
        root().join("models/stories260k/expected_greedy_t0_n256.txt").display()
    )
}

fn ewc_lines(lambda: f64) -> String {
    format!("ewc_lambda: {lambda}\newc_datasets:\n{}", stories())
}

fn run_ok(recipe_path: &Path, args: &[&str]) -> String {
    let out =
        common::recipe_command().arg("run").arg(recipe_path).args(["--device", "cpu"]).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn step_records(dir: &Path) -> Vec<Value> {
    common::metrics_records(dir).into_iter().filter(|r| r.get("loss").is_some()).collect()
}

/// The adapter's merged deltas scaling · B·A by module, from a peft adapter file.
fn deltas(file: &Path) -> HashMap<String, Tensor> {
    let t: HashMap<String, Tensor> = Tensor::read_safetensors(file).unwrap().into_iter().collect();
    t.iter()
        .filter_map(|(k, a)| k.strip_suffix(".lora_A.weight").map(|m| (m.to_string(), a)))
        .map(|(m, a)| {
            let b = &t[&format!("{m}.lora_B.weight")];
            (m, b.matmul(a) * 2.0)
        })
        .collect()
}

fn delta_norm(dir: &Path) -> f64 {
    let sum: f64 = deltas(&dir.join("out/adapter_model.safetensors"))
        .values()
        .map(|d| d.square().sum(Kind::Double).double_value(&[]))
        .sum();
    sum.sqrt()
}

#[test]
fn ewc_holds_the_adapter_delta_back_more_as_lambda_grows_and_resumes_exactly() {
    let mut norms = Vec::new();
    let mut strongest = None;
    for lambda in [None, Some(1.0e3), Some(1.0e5)] {
        let dir = tempfile::tempdir().unwrap();
        let extra = lambda.map_or(String::new(), |l| format!("save_steps: 3\n{}", ewc_lines(l)));
        let path = write_recipe(dir.path(), &extra);
        run_ok(&path, &[]);
        let records = step_records(dir.path());
        assert_eq!(records.len(), 6);
        let penalties: Vec<f64> = records.iter().filter_map(|r| r.get("ewc_penalty")?.as_f64()).collect();
        match lambda {
            None => assert!(penalties.is_empty(), "no penalty without ewc_lambda"),
            Some(lambda) => {
                assert_eq!(penalties.len(), 6);
                assert!(penalties.iter().all(|p| p.is_finite() && *p >= 0.0), "{penalties:?}");
                assert_eq!(penalties[0], 0.0, "θ = θ0 at the first step");
                assert!(penalties[5] > 0.0, "{penalties:?}");
                // Step 4's penalty is computed on the weights of checkpoint-3, with the Fisher
                // information and anchor it carries.
                let ckpt = dir.path().join("out/checkpoint-3");
                let state: HashMap<String, Tensor> =
                    Tensor::read_safetensors(ckpt.join("ewc.safetensors")).unwrap().into_iter().collect();
                let mut sum = 0.0;
                for (module, delta) in deltas(&ckpt.join("adapter_model.safetensors")) {
                    let name = format!("{}.weight", module.trim_start_matches("base_model.model."));
                    let (f, anchor) = (&state[&format!("fisher.{name}")], &state[&format!("anchor.{name}")]);
                    assert_eq!(anchor.abs().max().double_value(&[]), 0.0, "a fresh adapter's delta starts at zero");
                    sum += (f * (delta - anchor).square()).sum(Kind::Double).double_value(&[]);
                }
                let expected = lambda / 2.0 * sum;
                assert!(
                    (penalties[3] - expected).abs() <= 1e-4 * expected.abs().max(1e-12),
                    "{penalties:?} vs {expected}"
                );
            }
        }
        norms.push(delta_norm(dir.path()));
        if lambda == Some(1.0e5) {
            strongest = Some((dir, records));
        }
    }
    assert!(norms[0] > norms[1] && norms[1] > norms[2], "||ΔW|| by lambda (none, 1e3, 1e5): {norms:?}");

    // Stopped after a checkpoint and resumed: the same losses and penalties as without the stop.
    let (_, whole) = strongest.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), &format!("save_steps: 3\n{}", ewc_lines(1.0e5)));
    run_ok(&path, &["--stop-after", "3"]);
    assert!(dir.path().join("out/checkpoint-3/ewc.safetensors").is_file());
    run_ok(&path, &["--set", "resume_from_checkpoint=true"]);
    let resumed = step_records(dir.path());
    let key = |r: &Value, k: &str| r[k].as_f64().unwrap();
    assert_eq!(resumed.len(), whole.len());
    for (a, b) in resumed.iter().zip(&whole) {
        assert!((key(a, "loss") - key(b, "loss")).abs() < 1e-6, "{a} vs {b}");
        assert!(
            (key(a, "ewc_penalty") - key(b, "ewc_penalty")).abs() <= 1e-6 * key(b, "ewc_penalty").max(1e-9),
            "{a} vs {b}"
        );
    }
}

#[test]
fn replay_mixes_its_rows_into_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(
        dir.path(),
        &format!("replay_ratio: 0.25\nforgetting_datasets:\n{0}replay_datasets:\n{0}", stories()),
    );
    let plan = common::recipe_command().arg("plan").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("replay     completion local"), "{text}");
    assert!(text.contains("replay_ratio 0.25") && text.contains("1 replay + 3 new rows per step"), "{text}");
    let stdout = run_ok(&path, &[]);
    assert!(stdout.contains("replay_datasets[0] completion"), "{stdout}");
    let records = step_records(dir.path());
    assert_eq!(records.len(), 6);
    // The same recipe without replay trains on other batches: other losses.
    let plain = tempfile::tempdir().unwrap();
    run_ok(&write_recipe(plain.path(), ""), &[]);
    let losses = |r: &[Value]| r.iter().map(|r| r["loss"].as_f64().unwrap()).collect::<Vec<_>>();
    assert_ne!(losses(&records), losses(&step_records(plain.path())));
}

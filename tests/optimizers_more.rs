//! SGD, Adafactor, Lion (32- and 8-bit) and Muon (src/exec/optim_more.rs) against their references on the CPU,
//! goldens written by scripts/reference/optimizer_goldens_more.py: torch 2.11's `SGD`,
//! transformers 5.24's `Adafactor`, bitsandbytes 0.50.2's 32-bit `Lion` (each as transformers'
//! Trainer builds it; its 8-bit `Lion` too) and axolotl-contribs-mit 0.0.6's `Muon` (as Axolotl
//! builds it). Five fp32 parameters (a wide and a tall matrix, a norm weight outside weight decay,
//! an embedding, one of 8,192 values for 8-bit states) take three steps at three learning rates;
//! after every step the parameters and each state tensor are compared (8-bit codes bit for bit, the
//! rest within two ulps of each tensor's largest magnitude (torch's CPU kernels may round a
//! last bit differently on another x86 CPU). Also: a checkpoint of the state taken after step 1
//! resumes to the same step 3, Axolotl's decay-then-constant cosine schedule, and stories260k
//! trains with each optimizer and resumes exactly.
#![cfg(feature = "exec")]

mod common;

use recipe::config::training::{LrScheduler, Optimizer};
use recipe::exec::optimizer::AdamW;
use recipe::model::llama::Param;
use recipe::model::weights::{self, Checkpoint};
use recipe::plan::schedule::{Schedule, learning_rate_at};
use recipe::plan::training::OptimizerPlan;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

const NAMES: [&str; 5] = ["layer.weight", "tall.weight", "norm.weight", "model.embed_tokens.weight", "big.weight"];
const OPTIMIZERS: [(Optimizer, &str); 5] = [
    (Optimizer::Sgd, "sgd"),
    (Optimizer::Adafactor, "adafactor"),
    (Optimizer::Lion32bit, "lion_32bit"),
    (Optimizer::Lion8bit, "lion_8bit"),
    (Optimizer::Muon, "muon"),
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/optimizers_more")
}

fn read(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir().join(format!("{name}.safetensors"))).unwrap().into_iter().collect()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("meta.json")).unwrap()).unwrap()
}

fn start(optimizer: Optimizer) -> (AdamW, Vec<Tensor>) {
    let (g, m) = (read("grads"), meta());
    let plan = OptimizerPlan {
        name: optimizer,
        implementation: String::new(),
        beta1: m["beta1"].as_f64().unwrap(),
        beta2: m["beta2"].as_f64().unwrap(),
        epsilon: m["eps"].as_f64().unwrap(),
        weight_decay: m["weight_decay"].as_f64().unwrap(),
    };
    let params: Vec<Tensor> = NAMES.iter().map(|n| g[&format!("init.{n}")].copy().set_requires_grad(true)).collect();
    let named = NAMES.iter().zip(&params).map(|(n, t)| Param { name: n.to_string(), tensor: t.shallow_clone() });
    (AdamW::new(named.collect(), &plan), params)
}

fn take_step(opt: &mut AdamW, params: &[Tensor], step: usize) {
    let (g, m) = (read("grads"), meta());
    opt.zero_grad();
    let loss: Tensor =
        NAMES.iter().zip(params).map(|(n, p)| (p * &g[&format!("step{step}.grad.{n}")]).sum(Kind::Float)).sum();
    loss.backward();
    opt.step(m["lrs"][step - 1].as_f64().unwrap());
}

/// Every parameter and every state tensor of the golden after `step`, and no state of ours the
/// reference lacks; returns (tensors compared, of them bit-identical).
fn compare(file: &str, opt: &AdamW, params: &[Tensor], step: usize) -> (usize, usize) {
    let golden = read(file);
    let ours: HashMap<String, Tensor> = opt.state().into_iter().filter(|(n, _)| n != "step").collect();
    let prefix = format!("step{step}.");
    let (mut states, mut compared, mut identical) = (0, 0, 0);
    for (key, theirs) in golden.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        let rest = &key[prefix.len()..];
        let name = *NAMES.iter().find(|n| rest.ends_with(&format!(".{n}"))).unwrap();
        let which = &rest[..rest.len() - name.len() - 1];
        let what = format!("{file} step {step} {which} of {name}");
        let mine = if which == "param" {
            params[NAMES.iter().position(|n| *n == name).unwrap()].detach()
        } else {
            states += 1;
            ours.get(&format!("{name}.{which}")).unwrap_or_else(|| panic!("{what}: recipe keeps no such state")).copy()
        };
        if theirs.kind() == Kind::Uint8 {
            // 8-bit codes: exactly the reference's.
            common::assert_identical(&what, &mine, theirs, file);
        } else {
            common::assert_within_ulps(&what, &mine, theirs, file, 2.0);
        }
        compared += 1;
        identical += usize::from(mine.equal(theirs));
    }
    assert_eq!(ours.len(), states, "{file}: recipe's state names {:?}", ours.keys().collect::<Vec<_>>());
    (compared, identical)
}

#[test]
fn steps_equal_the_references() {
    for (optimizer, file) in OPTIMIZERS {
        let (mut opt, params) = start(optimizer);
        let (mut compared, mut identical) = (0, 0);
        for step in 1..=3 {
            take_step(&mut opt, &params, step);
            let (c, i) = compare(file, &opt, &params, step);
            (compared, identical) = (compared + c, identical + i);
        }
        eprintln!(
            "{file}: 3 steps, {compared} tensors within 2 ulps of the reference, {identical} bit for bit; state {} bytes",
            opt.state_bytes()
        );
    }
}

#[test]
fn muon_leaves_one_dimensional_parameters_alone() {
    let (mut opt, params) = start(Optimizer::Muon);
    let before = params[2].detach().copy();
    for step in 1..=3 {
        take_step(&mut opt, &params, step);
    }
    assert!(params[2].detach().equal(&before), "norm.weight moved under Muon");
    assert_eq!(opt.untouched(), vec!["norm.weight".to_string()]);
}

#[test]
fn a_saved_state_resumes_to_the_same_steps() {
    for (optimizer, file) in OPTIMIZERS {
        let tmp = tempfile::tempdir().unwrap();
        let (mut first, params) = start(optimizer);
        take_step(&mut first, &params, 1);
        let path = tmp.path().join("optimizer.safetensors");
        weights::save(&path, &first.state()).unwrap();
        let saved: Vec<Tensor> = params.iter().map(|p| p.detach().copy()).collect();
        drop(first);
        let (mut resumed, params) = start(optimizer);
        tch::no_grad(|| {
            for (p, s) in params.iter().zip(&saved) {
                p.shallow_clone().copy_(s);
            }
        });
        resumed.load_state(&Checkpoint::open_files(tmp.path(), &[path]).unwrap()).unwrap();
        assert_eq!(resumed.step, 1);
        for step in 2..=3 {
            take_step(&mut resumed, &params, step);
        }
        compare(file, &resumed, &params, 3);
    }
}

#[test]
fn the_decay_then_constant_cosine_is_axolotls() {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("schedule.json")).unwrap()).unwrap();
    let peak = 3e-4;
    let mut worst = 0f64;
    for case in &cases {
        let schedule = Schedule {
            scheduler: LrScheduler::Cosine,
            min_ratio: case["min_ratio"].as_f64().unwrap(),
            constant_ratio: Some(case["constant_ratio"].as_f64().unwrap()),
        };
        let (warmup, total) = (case["warmup"].as_u64().unwrap(), case["total"].as_u64().unwrap());
        for (step, lambda) in case["lambdas"].as_array().unwrap().iter().enumerate() {
            // LambdaLR: the peak times the lambda.
            let theirs = peak * lambda.as_f64().unwrap();
            let ours = learning_rate_at(schedule, peak, step as u64, warmup, total);
            worst = worst.max((ours - theirs).abs() / theirs.abs().max(f64::MIN_POSITIVE));
            assert!((ours - theirs).abs() <= 1e-15 * theirs.abs(), "{case}: step {step}: {ours} vs {theirs}");
        }
    }
    eprintln!("decay-then-constant cosine: {} cases, largest relative difference {worst:e}", cases.len());
}

fn full_fine_tune(dir: &Path, optimizer: &str, lr: f64) -> PathBuf {
    common::stories_full_fine_tune(
        dir,
        &format!("learning_rate: {lr:e}\nwarmup_steps: 2\nweight_decay: 0.01\nseed: 2\noptimizer: {optimizer}\n"),
    )
}

#[test]
fn stories260k_trains_with_each_and_resumes_exactly() {
    // Learning rates each optimizer moves stories260k with in six steps (SGD needs a larger one).
    for (optimizer, lr) in
        [("sgd", 0.5), ("adafactor", 2e-3), ("lion_32bit", 1e-3), ("lion_8bit", 1e-3), ("muon", 2e-3)]
    {
        let a = tempfile::tempdir().unwrap();
        let path = full_fine_tune(a.path(), optimizer, lr);
        let stdout = common::run_on_cpu(&path, &[]);
        // stories260k's 11 norm weights are 1-D: Muon leaves them as loaded and says so.
        let untouched = stdout.contains("11 1-D tensors left as loaded");
        assert_eq!(untouched, optimizer == "muon", "{stdout}");
        let full = common::training_losses(&a.path().join("out"));
        eprintln!("{optimizer}: losses {full:?}");
        assert_eq!(full.len(), 6);
        assert!(full[5] < full[0] - 0.05, "{optimizer}: the loss should fall: {full:?}");
        // Stopped after 3 steps and resumed: the same losses as uninterrupted.
        let b = tempfile::tempdir().unwrap();
        let path = full_fine_tune(b.path(), optimizer, lr);
        let stopped = common::run_on_cpu(&path, &["--stop-after", "3"]);
        assert!(stopped.contains("stopped    at step 3"), "{stopped}");
        let resumed = common::run_on_cpu(&path, &["--set", "resume_from_checkpoint=true"]);
        assert!(resumed.contains("resumed    from"), "{resumed}");
        assert_eq!(common::training_losses(&b.path().join("out")), full, "{optimizer}: losses after resuming differ");
    }
}

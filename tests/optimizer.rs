//! 8-bit AdamW (src/exec/optimizer.rs) against bitsandbytes 0.50.2's `AdamW8bit` on the CPU:
//! three steps of fixed gradients on a matrix with 8-bit states (a partial last block, an
//! all-zero block, a block spanning six decades) and a vector with 32-bit ones, compared after
//! every step: the state codes and absmax bit for bit, the parameters within two float32 ulps of
//! the tensor's largest magnitude (torch's CPU kernels round the final `p -= lr·m/(√v+ε)` by one
//! ulp differently on different x86 CPUs — bitsandbytes' own output differs so between machines,
//! while recipe and bitsandbytes on one machine agree bit for bit), with goldens written by
//! scripts/reference/adamw8bit_goldens.py. Also: the states' codes are bitsandbytes' maps.
#![cfg(feature = "exec")]

mod common;

use recipe::config::training::Optimizer;
use recipe::exec::optimizer::AdamW;
use recipe::model::llama::Param;
use recipe::model::nf4;
use recipe::plan::training::OptimizerPlan;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::Tensor;

const NAMES: [&str; 2] = ["layer.weight", "norm.weight"];

fn golden() -> (HashMap<String, Tensor>, serde_json::Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/adamw8bit");
    let tensors = Tensor::read_safetensors(dir.join("adamw8bit.safetensors")).unwrap().into_iter().collect();
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("adamw8bit.json")).unwrap()).unwrap();
    (tensors, meta)
}

fn assert_identical(what: &str, ours: &Tensor, theirs: &Tensor) {
    common::assert_identical(what, ours, theirs, "bitsandbytes");
}

/// Parameters: every element within two ulps of the tensor's largest magnitude (see the module
/// doc for why not bit for bit).
fn assert_param_close(what: &str, ours: &Tensor, theirs: &Tensor) {
    common::assert_within_ulps(what, ours, theirs, "bitsandbytes", 2.0);
}

#[test]
fn the_state_codes_are_bitsandbytes_dynamic_maps() {
    let (g, _) = golden();
    assert_identical("signed dynamic map (qmap1)", &nf4::dynamic_map(), &g["qmap1"]);
    assert_identical("unsigned dynamic map (qmap2)", &nf4::unsigned_dynamic_map(), &g["qmap2"]);
}

#[test]
fn eight_bit_adamw_steps_equal_bitsandbytes_adamw8bit() {
    let (g, meta) = golden();
    let plan = OptimizerPlan {
        name: Optimizer::Adamw8bit,
        implementation: String::new(),
        beta1: meta["beta1"].as_f64().unwrap(),
        beta2: meta["beta2"].as_f64().unwrap(),
        epsilon: meta["eps"].as_f64().unwrap(),
        weight_decay: meta["weight_decay"].as_f64().unwrap(),
    };
    let lr = meta["lr"].as_f64().unwrap();
    let params: Vec<Tensor> = NAMES.iter().map(|n| g[&format!("init.{n}")].copy().set_requires_grad(true)).collect();
    let mut opt = AdamW::new(
        NAMES.iter().zip(&params).map(|(n, t)| Param { name: n.to_string(), tensor: t.shallow_clone() }).collect(),
        &plan,
    );
    for step in 1..=meta["steps"].as_u64().unwrap() {
        opt.zero_grad();
        // Gradients exactly the golden ones: d/dp of sum(p * g) is g.
        let loss: Tensor = NAMES
            .iter()
            .zip(&params)
            .map(|(n, p)| (p * &g[&format!("step{step}.grad.{n}")]).sum(tch::Kind::Float))
            .sum();
        loss.backward();
        opt.step(lr);
        let state: HashMap<String, Tensor> = opt.state().into_iter().collect();
        let layer = |k: &str| format!("step{step}.{k}.layer.weight");
        for (n, p) in NAMES.iter().zip(&params) {
            assert_param_close(&format!("step {step} {n}"), &p.detach(), &g[&format!("step{step}.param.{n}")]);
        }
        assert_identical(&layer("state1"), &state["layer.weight.exp_avg.q8"], &g[&layer("state1")]);
        assert_identical(&layer("absmax1"), &state["layer.weight.exp_avg.absmax"], &g[&layer("absmax1")]);
        assert_identical(&layer("state2"), &state["layer.weight.exp_avg_sq.q8"], &g[&layer("state2")]);
        assert_identical(&layer("absmax2"), &state["layer.weight.exp_avg_sq.absmax"], &g[&layer("absmax2")]);
        let norm = |k: &str| format!("step{step}.{k}.norm.weight");
        assert_identical(&norm("state1"), &state["norm.weight.exp_avg"], &g[&norm("state1")]);
        assert_identical(&norm("state2"), &state["norm.weight.exp_avg_sq"], &g[&norm("state2")]);
    }
}

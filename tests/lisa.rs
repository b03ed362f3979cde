//! LISA (`lisa_n_layers`, `lisa_step_interval`, exec/lisa.rs): six steps of a tiny random Llama
//! with Axolotl's own `LISACallback` choosing the layers (its numpy draws injected into recipe's
//! schedule) against scripts/reference/lisa_goldens.py's torch AdamW loop as transformers' Trainer
//! runs it: the per-step losses, the gradient norms (clipping over the parameters with gradients)
//! and every final weight (frozen layers skip steps: no update, no decay, their own step count),
//! with torch's AdamW and with bitsandbytes' AdamW8bit.
//! Then recipe's own runs end to end on stories260k: the plan's schedule line, the layers logged
//! at each switch (steps 0, 1, then every interval), frozen layers untouched, and a run stopped
//! and resumed equal to the uninterrupted one; two data-parallel ranks equal one rank with
//! accumulation; gradient checkpointing changes nothing. And Axolotl's example validates, and
//! what is not built is refused by name.
#![cfg(feature = "exec")]

mod common;

use recipe::config::training::Optimizer;
use recipe::exec::lisa::{Lisa, LisaSchedule, layer_params};
use recipe::exec::optimizer::AdamW;
use recipe::model::llama::{CausalLm, Inputs, LoadOptions, Trainable};
use recipe::model::weights::Checkpoint;
use recipe::plan::arch::Architecture;
use recipe::plan::training::OptimizerPlan;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden_dir() -> PathBuf {
    root().join("tests/golden/lisa")
}

#[test]
fn six_steps_with_axolotls_layer_sets_match_its_callback_and_torch_adamw() {
    parity(Optimizer::AdamwTorch, "", "torch AdamW");
}

#[test]
fn six_steps_with_axolotls_layer_sets_match_its_callback_and_bitsandbytes_adamw8bit() {
    parity(Optimizer::AdamwBnb8bit, "bnb8bit.", "bitsandbytes AdamW8bit");
}

/// The golden run of `optimizer` (its tensors under `prefix`) with Axolotl's layer sets injected.
fn parity(optimizer: Optimizer, prefix: &str, what: &str) {
    let dir = golden_dir();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lisa.json")).unwrap()).unwrap();
    let g: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("lisa.safetensors")).unwrap().into_iter().collect();
    let arch = Architecture::from_config_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: Trainable::Everything,
        quantize: None,
        score_head: false,
    };
    let model = CausalLm::load(&arch, &Checkpoint::open(&dir).unwrap(), &opts).unwrap();
    let f = |k: &str| meta[k].as_f64().unwrap();
    let plan = OptimizerPlan {
        name: optimizer,
        implementation: String::new(),
        beta1: f("beta1"),
        beta2: f("beta2"),
        epsilon: f("eps"),
        weight_decay: f("weight_decay"),
    };
    let mut optimizer = AdamW::new(model.trainable_params(), &plan).with_per_parameter_steps();
    let sets: Vec<Vec<usize>> = serde_json::from_value(meta["layer_sets"].clone()).unwrap();
    let switches: Vec<u64> = serde_json::from_value(meta["switch_steps"].clone()).unwrap();
    let n = meta["lisa_n_layers"].as_u64().unwrap() as usize;
    let interval = meta["lisa_step_interval"].as_u64().unwrap();
    let schedule = LisaSchedule::new(n, interval, model.layers.len(), 0).with_layer_sets(sets.clone());
    // Axolotl's callback switched exactly where recipe's schedule does (steps 0, 1, then every 2).
    let ours: Vec<u64> = (0..meta["steps"].as_u64().unwrap()).filter(|&s| schedule.switches_at(s)).collect();
    assert_eq!(ours, switches);
    let mut lisa = Lisa::new(schedule, layer_params(&model));
    let losses = Vec::<f64>::try_from(&g[&format!("{prefix}losses")]).unwrap();
    let norms = Vec::<f64>::try_from(&g[&format!("{prefix}grad_norms")]).unwrap();
    let (mut worst_loss, mut worst_norm) = (0f64, 0f64);
    let mut drawn = Vec::new();
    for step in 0..losses.len() as u64 {
        if let Some(active) = lisa.begin_step(step, step == 0, None).unwrap() {
            drawn.push(active);
        }
        let ids = &g[&format!("step{step}.input_ids")];
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
        let h = model
            .hidden_states(&Inputs { input_ids: ids, position_ids: &positions, segment_ids: None, varlen: None }, true);
        let loss = recipe::exec::objective::next_token_loss_sum(&model.head(&h, true), ids) / (b * (t - 1)) as f64;
        loss.backward();
        // Frozen layers got no gradient at all (requires_grad off, stale ones dropped).
        for (i, params) in layer_params(&model).iter().enumerate() {
            let active = lisa.active.contains(&i);
            for p in params {
                assert_eq!(p.grad().defined(), active, "step {step}: layer {i}'s gradient");
            }
        }
        let norm = optimizer.clip_grad_norm(f("max_grad_norm")).double_value(&[]);
        optimizer.step(f("lr"));
        optimizer.zero_grad();
        let l = loss.double_value(&[]);
        let rel = (l - losses[step as usize]).abs() / losses[step as usize].abs();
        worst_loss = worst_loss.max(rel);
        worst_norm = worst_norm.max((norm - norms[step as usize]).abs() / norms[step as usize]);
        assert!(rel <= 1e-5, "step {step}: loss {l} vs Axolotl's {} ({rel:e})", losses[step as usize]);
    }
    assert_eq!(drawn, sets, "the layer sets applied");
    // torch AdamW: every weight within 1e-5. bitsandbytes: 1e-3 and 2e-4. Its tensors with blockwise 8-bit
    // states (4,096 values or more: the embedding and the head) can see a state value land on the
    // next of its 256 codes when a gradient is a few float32 ulps off, which moves that weight by a
    // fraction of the learning rate (bitsandbytes against itself on another CPU does the same), and
    // the layers trained after it (layer 3, first drawn at step 4) take their first Adam steps,
    // about lr · sign(gradient) per value, from gradients that drift accordingly. bitsandbytes
    // itself, its gradients scaled by 1 + 1e-7 noise, moves the head by the same 5.7e-4 in this run
    // (torch AdamW: 1.2e-5).
    let (mut worst_weight, mut worst_quantized) = (0f64, 0f64);
    for p in model.base_params() {
        let theirs = &g[&format!("{prefix}final.{}", p.name)];
        let diff = (&p.tensor - theirs).abs().max().double_value(&[]);
        let quantized = optimizer.has_eight_bit_state(&p.name);
        let bound = match (prefix.is_empty(), quantized) {
            (true, _) => 1e-5,
            (false, false) => 2e-4,
            // A tenth of the learning rate (1e-2).
            (false, true) => 1e-3,
        };
        if quantized {
            worst_quantized = worst_quantized.max(diff);
        } else {
            worst_weight = worst_weight.max(diff);
        }
        assert!(diff <= bound, "{}: differs from {what}'s by {diff:e}", p.name);
    }
    eprintln!(
        "LISA vs Axolotl's callback + {what}, 6 steps: losses within {worst_loss:e} (relative), grad norms \
         {worst_norm:e} (relative), weights {worst_weight:e} (absolute; those with 8-bit states \
         {worst_quantized:e})"
    );
    assert!(worst_norm <= if prefix.is_empty() { 1e-5 } else { 1e-4 });
}

/// A full fine-tune of stories260k (5 layers) with LISA in `dir`.
fn lisa_recipe(dir: &Path, extra: &str) -> PathBuf {
    common::stories_full_fine_tune(
        dir,
        &format!(
            "learning_rate: 2.0e-3\nwarmup_steps: 0\nlr_scheduler: constant\nweight_decay: 0.1\nmax_grad_norm: 1.0\n\
             seed: 5\noptimizer: adamw_torch\nlisa_n_layers: 2\nlisa_step_interval: 3\n\
             lisa_layers_attribute: model.layers\n{extra}"
        ),
    )
}

fn switches_logged(stdout: &str) -> Vec<String> {
    stdout.lines().filter(|l| l.contains("LISA: training decoder layers")).map(str::to_string).collect()
}

#[test]
fn recipe_draws_switch_and_resume_exactly() {
    let a = tempfile::tempdir().unwrap();
    let path = lisa_recipe(a.path(), "");
    let plan = common::recipe_command().arg("plan").arg(&path).output().unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(plan.contains("LISA: 2 of 5 decoder layers (model.layers) train at a time"), "{plan}");
    assert!(plan.contains("again at step 1"), "{plan}");
    let run = common::recipe_command()
        .arg("run")
        .arg(&path)
        .args(["--device", "cpu", "--no-progress"])
        .env("RECIPE_LOG", "info")
        .output()
        .unwrap();
    assert!(run.status.success());
    // The switches are logged (stderr).
    let stdout = String::from_utf8_lossy(&run.stderr).into_owned();
    let full = common::training_losses(&a.path().join("out"));
    assert_eq!(full.len(), 6);
    // Switches at steps 0, 1 and 3 (interval 3), each 2 distinct layers, logged.
    let logged = switches_logged(&stdout);
    assert_eq!(logged.len(), 3, "{stdout}");
    let schedule = LisaSchedule::new(2, 3, 5, 5);
    for (line, step) in logged.iter().zip([0u64, 1, 3]) {
        let d = schedule.draw(step);
        assert!(line.contains(&format!("{d:?}")), "step {step}: {line}");
        assert!(line.contains(&format!("step={step}")), "{line}");
    }
    // Layers never drawn are the base's, bit for bit; drawn ones moved.
    let drawn: Vec<usize> = [0u64, 1, 3].iter().flat_map(|&s| schedule.draw(s)).collect();
    let base: HashMap<String, Tensor> =
        Tensor::read_safetensors(root().join("models/stories260k/model.safetensors")).unwrap().into_iter().collect();
    let out: HashMap<String, Tensor> =
        Tensor::read_safetensors(a.path().join("out/model.safetensors")).unwrap().into_iter().collect();
    for l in 0..5usize {
        let name = format!("model.layers.{l}.mlp.down_proj.weight");
        let moved = out[&name] != base[&name];
        assert_eq!(moved, drawn.contains(&l), "layer {l} (drawn: {drawn:?})");
    }
    assert_ne!(out["model.embed_tokens.weight"], base["model.embed_tokens.weight"]);
    // Stopped after 2 steps (inside the interval that began at step 1) and resumed: the same run.
    let b = tempfile::tempdir().unwrap();
    let path = lisa_recipe(b.path(), "");
    let stopped = common::run_on_cpu(&path, &["--stop-after", "2"]);
    assert!(stopped.contains("stopped    at step 2"), "{stopped}");
    let resumed = common::run_on_cpu(&path, &["--set", "resume_from_checkpoint=true"]);
    assert!(resumed.contains("resumed    from"), "{resumed}");
    assert_eq!(common::training_losses(&b.path().join("out")), full, "losses after resuming differ");
    let again: HashMap<String, Tensor> =
        Tensor::read_safetensors(b.path().join("out/model.safetensors")).unwrap().into_iter().collect();
    for (name, t) in &out {
        assert!(t.equal(&again[name]), "{name} differs after resuming");
    }
}

fn validate(path: &Path) -> (bool, String) {
    let out = common::recipe_command().arg("validate").arg(path).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn axolotls_example_validates_and_unbuilt_cases_are_refused_by_name() {
    let (ok, text) = validate(&root().join("tests/fixtures/axolotl/llama-2-lisa.yml"));
    assert!(ok, "{text}");
    let dir = tempfile::tempdir().unwrap();
    for (extra, rule) in [
        (
            "optimizer: adamw_torch\nadapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n",
            "unsupported-lisa-with-adapter",
        ),
        ("optimizer: adamw_torch_fused\n", "unsupported-lisa-optimizer"),
        // Axolotl's RL trainer builder never adds the LISA callback.
        ("optimizer: adamw_torch\nrl: orpo\n", "lisa-with-rl"),
        ("optimizer: adamw_torch\nfp16: true\nbf16: false\n", "unsupported-lisa-fp16"),
        (
            "optimizer: adamw_torch\nfsdp_version: 2\nfsdp_config:\n  reshard_after_forward: true\n",
            "unsupported-lisa-sharded",
        ),
    ] {
        let path = lisa_recipe(dir.path(), "");
        let text = std::fs::read_to_string(&path).unwrap().replace("optimizer: adamw_torch\n", extra);
        std::fs::write(&path, text).unwrap();
        let (ok, text) = validate(&path);
        assert!(!ok && text.contains(rule), "{rule}:\n{text}");
    }
    let path = lisa_recipe(dir.path(), "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("lisa_layers_attribute: model.layers", "lisa_layers_attribute: model.model.layers");
    std::fs::write(&path, text).unwrap();
    let (ok, text) = validate(&path);
    assert!(!ok && text.contains("unsupported-lisa-layers-attribute"), "{text}");
    let path = lisa_recipe(dir.path(), "");
    let text = std::fs::read_to_string(&path).unwrap().replace("lisa_step_interval: 3\n", "");
    std::fs::write(&path, text).unwrap();
    let (ok, text) = validate(&path);
    assert!(!ok && text.contains("lisa-incomplete"), "{text}");
    let path = lisa_recipe(dir.path(), "");
    let text = std::fs::read_to_string(&path).unwrap().replace("lisa_n_layers: 2", "lisa_n_layers: 9");
    std::fs::write(&path, text).unwrap();
    let plan = common::recipe_command().arg("plan").arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&plan.stdout), String::from_utf8_lossy(&plan.stderr));
    assert!(!plan.status.success() && text.contains("more than the model's 5 decoder layers"), "{text}");
}

fn output_weights(dir: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("out/model.safetensors")).unwrap().into_iter().collect()
}

#[test]
fn two_ranks_draw_the_same_layers_as_one_rank_with_accumulation_and_checkpointing_changes_nothing() {
    // One rank × micro 2 × accumulation 2 against two ranks × micro 2: every rank draws the same
    // layers and reduces only their gradients.
    let one = tempfile::tempdir().unwrap();
    let _ =
        common::run_on_cpu(&lisa_recipe(one.path(), "ddp_timeout: 60\n"), &["--set", "gradient_accumulation_steps=2"]);
    let two = tempfile::tempdir().unwrap();
    let stdout = common::run_on_cpu(&lisa_recipe(two.path(), "ddp_timeout: 60\n"), &["--nproc-per-node", "2"]);
    assert!(stdout.contains("layout     Ddp across 2 rank(s) (gloo)"), "{stdout}");
    let (a, b) = (common::training_losses(&one.path().join("out")), common::training_losses(&two.path().join("out")));
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "losses {a:?} vs {b:?}");
    }
    let (wa, wb) = (output_weights(one.path()), output_weights(two.path()));
    let mut worst = 0f64;
    for (name, x) in &wa {
        let d = (x - &wb[name]).abs().max().double_value(&[]);
        worst = worst.max(d);
        assert!(d <= 1e-5, "{name}: one rank and two differ by {d:e}");
    }
    eprintln!("LISA: two ranks vs one rank with accumulation 2: weights within {worst:e}");
    // Gradient checkpointing (the example's) recomputes frozen layers too: the same run.
    let ckpt = tempfile::tempdir().unwrap();
    let _ = common::run_on_cpu(&lisa_recipe(ckpt.path(), "gradient_checkpointing: true\n"), &[]);
    let plain = tempfile::tempdir().unwrap();
    let _ = common::run_on_cpu(&lisa_recipe(plain.path(), ""), &[]);
    let (c, p) =
        (common::training_losses(&ckpt.path().join("out")), common::training_losses(&plain.path().join("out")));
    for (x, y) in c.iter().zip(&p) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "with checkpointing {c:?} vs {p:?}");
    }
}

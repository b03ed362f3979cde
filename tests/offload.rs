//! Activation offloading (Axolotl's `activation_offloading: true` and its older spelling
//! `gradient_checkpointing: offload`): gradient checkpointing whose saved layer inputs live in
//! host memory between a layer's forward pass and its recomputation. The math is unchanged, so:
//! both spellings validate and plan; on CPU (where the device is the host and nothing moves) a
//! run with offloading gives the run without it bit for bit (losses and saved adapter), and the
//! gradients match peft's goldens as plain checkpointing does; the memory model moves the layer
//! inputs' bytes from the per-GPU figure to the host figure; on CUDA the saved inputs sit in
//! pinned host memory and the gradients equal those without offloading (skipped without a GPU).
#![cfg(feature = "exec")]

mod common;

use recipe::exec::objective::{self, DeviceBatch, Supervised};
use recipe::model::llama::Inputs;
use recipe::plan::{PlanOptions, compile, render_text};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load_text(dir: &Path, text: &str) -> recipe::recipe::Loaded {
    let path = dir.join("r.yaml");
    std::fs::write(&path, text).unwrap();
    recipe::recipe::load(&path, &[])
}

/// A small LoRA recipe on stories260k writing to `dir/out`, with `extra` lines appended.
fn small_recipe(dir: &Path, extra: &str) -> String {
    format!(
        "base_model: {model}\nadapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true\n\
         datasets:\n  - path: {data}\n    type: completion\n    ds_type: text\n\
         val_set_size: 0\nsequence_len: 128\nsample_packing: true\nmicro_batch_size: 2\nmax_steps: 3\n\
         learning_rate: 2.0e-3\nlogging_steps: 1\nseed: 7\noutput_dir: {out}\n{extra}",
        model = root().join("models/stories260k").display(),
        data = root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
        out = dir.join("out").display(),
    )
}

#[test]
fn both_spellings_validate_and_plan_activation_offloading() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, requested_by) in [
        ("gradient_checkpointing: offload\n", Some("gradient_checkpointing: offload")),
        ("gradient_checkpointing: true\nactivation_offloading: true\n", Some("activation_offloading: true")),
        ("gradient_checkpointing: offload\nactivation_offloading: true\n", Some("activation_offloading: true")),
        ("gradient_checkpointing: true\nactivation_offloading: false\n", None),
        ("gradient_checkpointing: true\nactivation_offloading:\n", None),
    ] {
        let loaded = load_text(dir.path(), &small_recipe(dir.path(), extra));
        assert!(!loaded.has_errors(), "{extra}: {}", common::rendered(&loaded));
        let plan = compile(&loaded, PlanOptions::default()).unwrap();
        assert!(plan.training.gradient_checkpointing, "{extra}");
        assert_eq!(plan.training.activation_offloading.as_ref().map(|a| a.requested_by), requested_by, "{extra}");
        let text = render_text(&plan);
        assert_eq!(
            text.contains("No effect on CPU, the activations already live in host memory"),
            requested_by.is_some(),
            "{extra}: {text}"
        );
    }
    // Refused by name: offloading without checkpointing (Axolotl's check_activation_offloading_wo_gc),
    // the two spellings disagreeing, and the modes recipe does not build.
    for (extra, rule) in [
        ("activation_offloading: true\n", "activation-offloading-without-checkpointing"),
        ("gradient_checkpointing: false\nactivation_offloading: true\n", "activation-offloading-without-checkpointing"),
        ("gradient_checkpointing: offload\nactivation_offloading: false\n", "activation-offloading-disagrees"),
        ("gradient_checkpointing: offload_disk\n", "unsupported-axolotl-value"),
        ("gradient_checkpointing: true\nactivation_offloading: disk\n", "unsupported-axolotl-value"),
        ("gradient_checkpointing: true\nactivation_offloading: legacy\n", "unsupported-axolotl-value"),
        ("gradient_checkpointing: true\nactivation_offloading: hidden_states\n", "unsupported-axolotl-value"),
    ] {
        let loaded = load_text(dir.path(), &small_recipe(dir.path(), extra));
        let rules: Vec<&str> = loaded.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.rule).collect();
        assert_eq!(rules, [rule], "{extra}: {}", common::rendered(&loaded));
    }
}

/// Axolotl's `examples/qwen3/32b-qlora.yaml` (tests/fixtures/axolotl, verbatim) writes
/// `gradient_checkpointing: offload`: it validates and plans with its 64 layer inputs in host memory.
#[test]
fn axolotls_qwen3_32b_qlora_example_plans_its_offloading() {
    let loaded = recipe::recipe::load(Path::new("tests/fixtures/axolotl/qwen3-32b-qlora.yaml"), &[]);
    assert!(!loaded.has_errors(), "{}", common::rendered(&loaded));
    let plan = compile(&loaded, PlanOptions::default()).unwrap();
    assert_eq!(plan.training.activation_offloading.map(|a| a.requested_by), Some("gradient_checkpointing: offload"));
    // 64 layers × (1 row × 2048 tokens) × 5120 hidden × 2 bytes (bf16).
    assert_eq!(plan.memory.host_bytes, 64 * 2048 * 5120 * 2);
}

/// The memory section of the plan for Llama-2-7B with LoRA (bf16, sequence 2048, 4 rows): with
/// offloading the 32 layer inputs leave the per-GPU figure for the host figure.
#[test]
fn the_memory_model_moves_the_layer_inputs_to_host_memory() {
    let plan = |value: &str| {
        let overrides = vec![format!("gradient_checkpointing={value}")];
        let loaded = recipe::recipe::load(Path::new("recipes/llama2-7b-lora.yaml"), &overrides);
        assert!(!loaded.has_errors(), "{}", common::rendered(&loaded));
        compile(&loaded, PlanOptions { gpu_memory: Some(24 << 30), ..PlanOptions::default() }).unwrap()
    };
    let (kept, offloaded) = (plan("true"), plan("offload"));
    let activations = |p: &recipe::plan::Plan| p.memory.items.iter().find(|i| i.name == "activations").unwrap().bytes;
    // 32 layers × (4 rows × 2048 tokens) × 4096 hidden × 2 bytes (bf16).
    let inputs = 32 * 4 * 2048 * 4096 * 2;
    assert_eq!(kept.memory.host_bytes, 0);
    assert_eq!(offloaded.memory.host_bytes, inputs);
    assert_eq!(activations(&kept) - activations(&offloaded), inputs);
    assert!(offloaded.memory.total_bytes < kept.memory.total_bytes - inputs);
    // The CPU figure: host and device are one memory, so nothing moves.
    assert_eq!(offloaded.memory.cpu_total_bytes, kept.memory.cpu_total_bytes);
    let text = render_text(&offloaded);
    // The plan's line for the key, the memory section, and the two settings.
    let memory = text.lines().skip_while(|l| !l.starts_with("memory ")).take_while(|l| !l.is_empty());
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("activation offloading ("))
        .chain(memory)
        .chain(text.lines().filter(|l| l.contains(" activation_offloading ") || l.contains(" gradient_checkpointing ")))
        .collect();
    insta::assert_snapshot!("llama2_7b_lora_offload_memory", lines.join("\n"));
}

/// Runs `recipe run` on CPU; returns the per-step losses and the saved adapter's bytes.
fn run(dir: &Path, extra: &str) -> (Vec<(u64, f64)>, Vec<u8>) {
    let path = dir.join("r.yaml");
    std::fs::write(&path, small_recipe(dir, extra)).unwrap();
    let out =
        common::recipe_command().arg("run").arg(&path).args(["--device", "cpu", "--no-progress"]).output().unwrap();
    assert!(out.status.success(), "{extra}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.contains("no effect on CPU, the activations already live in host memory"),
        extra.contains("offload"),
        "{extra}: {stdout}"
    );
    let losses = common::metrics_records(dir)
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_u64()?, r.get("loss")?.as_f64()?)))
        .collect();
    (losses, std::fs::read(dir.join("out/adapter_model.safetensors")).unwrap())
}

#[test]
fn on_cpu_an_offloaded_run_equals_the_checkpointed_run_bit_for_bit() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (losses, adapter) = run(dirs[0].path(), "gradient_checkpointing: true\n");
    assert_eq!(losses.len(), 3, "{losses:?}");
    for (dir, extra) in [
        (&dirs[1], "gradient_checkpointing: offload\n"),
        (&dirs[2], "gradient_checkpointing: true\nactivation_offloading: true\n"),
    ] {
        let (l, a) = run(dir.path(), extra);
        let bits = |v: &[(u64, f64)]| v.iter().map(|(s, x)| (*s, x.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(&l), bits(&losses), "{extra}: per-step losses");
        assert!(a == adapter, "{extra}: the saved adapter differs from the checkpointed run's");
    }
    eprintln!("3 steps, losses {losses:?}: identical bits with both spellings");
}

/// stories260k with peft's all-linear LoRA (tests/golden/lora, scripts/reference/model_goldens.py)
/// on `device`: the supervised loss's gradients with checkpointing, offloaded or not.
fn gradients(device: Device, offload: bool) -> (Vec<(String, Tensor)>, Vec<Device>, bool, Tensor) {
    let dir = root().join("tests/golden/lora/stories260k_all_linear");
    let model = common::load_peft_folder_on(&dir, Kind::Float, device);
    let g: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
    let (ids, labels) = (g["input_ids"].to_device(device), g["labels"].to_device(device));
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let positions = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0).expand([b, t], false);
    let inputs = Inputs { input_ids: &ids, position_ids: &positions, segment_ids: None, varlen: None };
    model.set_activation_offloading(offload);
    // Where the saved inputs live after the forward pass.
    let forward = model.forward_train(&inputs, true, &|_| {});
    let (devices, pinned) = (forward.saved_input_devices(), device.is_cuda() && forward.saved_inputs_pinned(device));
    drop(forward);
    let counted = labels.narrow(1, 1, t - 1).ne(-100).sum(Kind::Int64).int64_value(&[]) as f64;
    let loss = objective::forward_backward(
        &model,
        &Supervised::WHOLE,
        &DeviceBatch::new(&inputs, &labels),
        counted,
        true,
        &|_| {},
    )
    .loss
        / counted;
    let grads = model
        .trainable_params()
        .into_iter()
        .map(|p| (p.name.clone(), p.tensor.grad().to_device(Device::Cpu)))
        .collect();
    (grads, devices, pinned, loss.to_device(Device::Cpu))
}

#[test]
fn on_cpu_offloaded_gradients_match_peft_as_checkpointing_does() {
    let (plain, devices, _, loss) = gradients(Device::Cpu, false);
    let (offloaded, offloaded_devices, _, offloaded_loss) = gradients(Device::Cpu, true);
    // Nothing moves: the saved inputs are the CPU tensors themselves.
    assert!(devices.len() == 5 && devices == offloaded_devices, "{devices:?} / {offloaded_devices:?}");
    assert!(loss.equal(&offloaded_loss));
    for ((name, a), (_, b)) in plain.iter().zip(&offloaded) {
        assert!(a.equal(b), "gradient of {name} differs with offloading");
    }
    let dir = root().join("tests/golden/lora/stories260k_all_linear");
    let g: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
    let mut worst = 0f64;
    for (name, got) in &offloaded {
        let expected = &g[&format!("grad.{name}")];
        let rel = (got - expected).abs().max().double_value(&[]) / expected.abs().max().double_value(&[]);
        assert!(rel < 1e-4, "gradient of {name} differs from peft's by {rel:e} (relative)");
        worst = worst.max(rel);
    }
    let dl = (offloaded_loss.double_value(&[]) - g["loss"].double_value(&[])).abs();
    assert!(dl < 1e-5, "loss differs from peft's by {dl:e}");
    eprintln!(
        "offloaded (CPU): {} gradients, worst relative difference from peft {worst:e}, loss {dl:e}",
        offloaded.len()
    );
}

#[test]
fn on_cuda_saved_inputs_live_in_pinned_host_memory_and_gradients_are_unchanged() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device (activation offloading moves nothing on CPU)");
        return;
    }
    let cuda = Device::Cuda(0);
    let (plain, devices, _, loss) = gradients(cuda, false);
    assert!(devices.iter().all(|d| *d == cuda), "{devices:?}");
    let (offloaded, devices, pinned, offloaded_loss) = gradients(cuda, true);
    assert!(!devices.is_empty() && devices.iter().all(|d| *d == Device::Cpu), "{devices:?}");
    assert!(pinned, "the offloaded layer inputs are not in pinned memory");
    assert!(loss.equal(&offloaded_loss), "loss {loss} vs {offloaded_loss}");
    for ((name, a), (_, b)) in plain.iter().zip(&offloaded) {
        assert!(a.equal(b), "gradient of {name} differs with offloading");
    }
}

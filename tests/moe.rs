//! Mixture-of-experts parity with transformers 5.24 and peft 0.21.2 (goldens from
//! scripts/reference/model_goldens.py): Mixtral (4 experts, top-2, normalized) and Qwen3-MoE
//! (grouped-query heads, 6 experts, top-3 unnormalized, a dense layer from `mlp_only_layers`), both
//! with `output_router_logits` so the loss carries `router_aux_loss_coef · aux`. Logits, the
//! cross-entropy, the load-balancing loss (with and without padding) and the training loss; the
//! loss's gradients with and without gradient checkpointing; attention LoRA gradients against peft;
//! the checkpoint's per-expert tensor names written back as transformers saves them.
#![cfg(feature = "exec")]

mod common;

use recipe::exec::objective::{self, DeviceBatch, Supervised};
use recipe::model::llama::{CausalLm, Inputs, LoadOptions, Trainable};
use recipe::model::moe::load_balancing_loss;
use recipe::model::weights::Checkpoint;
use recipe::plan::arch::Architecture;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const CASES: [&str; 2] = ["mixtral_moe", "qwen3_moe_gqa"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(case: &str, trainable: Trainable) -> CausalLm {
    let dir = root().join("tests/golden/model").join(case);
    let arch = Architecture::from_config_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let opts =
        LoadOptions { device: Device::Cpu, base_kind: Kind::Float, trainable, quantize: None, score_head: false };
    CausalLm::load(&arch, &ckpt, &opts).unwrap()
}

fn golden(case: &str) -> HashMap<String, Tensor> {
    let path = root().join("tests/golden/model").join(case).join("expected.safetensors");
    Tensor::read_safetensors(&path).unwrap().into_iter().collect()
}

fn positions(ids: &Tensor) -> Tensor {
    let (b, t) = (ids.size()[0], ids.size()[1]);
    Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false)
}

fn diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

#[test]
fn logits_aux_loss_and_loss_match_transformers() {
    for case in CASES {
        let model = load(case, Trainable::Nothing);
        let g = golden(case);
        let ids = &g["input_ids"];
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let pos = positions(ids);
        let inputs = Inputs { input_ids: ids, position_ids: &pos, segment_ids: None, varlen: None };
        let (logits, routers) = tch::no_grad(|| model.logits_with_routing(&inputs));
        let moe = model.arch.moe.clone().unwrap();
        assert_eq!(routers.len() as u64, moe.sparse_layers(model.arch.num_layers), "{case}: sparse layers");
        let d_logits = diff(&logits, &g["logits"]);
        let ce = objective::next_token_loss_sum(&logits, ids) / (b * (t - 1)) as f64;
        let k = moe.experts_per_token as i64;
        let aux = load_balancing_loss(&routers, k, None);
        // transformers' attention_mask [B, T], 0 at padding, flattened as the router's rows are.
        let mask = g["padding_mask"].reshape([-1]);
        let aux_masked = load_balancing_loss(&routers, k, Some(&mask));
        let loss = &ce + &aux * moe.router_aux_loss_coef;
        let d_ce = diff(&ce, &g["ce_loss"]);
        let d_aux = diff(&aux, &g["aux_loss"]);
        let d_masked = diff(&aux_masked, &g["aux_loss_masked"]);
        let d_loss = diff(&loss, &g["loss"]);
        eprintln!(
            "{case}: logits {d_logits:e}, cross-entropy {d_ce:e}, aux {d_aux:e}, aux with padding {d_masked:e}, \
             loss {d_loss:e}"
        );
        assert!(d_logits < 1e-4, "{case}: logits differ by {d_logits:e}");
        for (what, d) in [("cross-entropy", d_ce), ("aux", d_aux), ("masked aux", d_masked), ("loss", d_loss)] {
            assert!(d < 1e-5, "{case}: {what} differs by {d:e}");
        }
    }
}

/// A full fine-tune's training pass gives transformers' loss (cross-entropy + coef · aux), and
/// gradient checkpointing (which adds each recomputed layer's share of the aux loss) gives the same
/// gradients, the routers' included.
#[test]
fn training_loss_carries_the_aux_term_with_and_without_checkpointing() {
    for case in CASES {
        let g = golden(case);
        let ids = &g["input_ids"];
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let pos = positions(ids);
        let inputs = Inputs { input_ids: ids, position_ids: &pos, segment_ids: None, varlen: None };
        let counted = (b * (t - 1)) as f64;
        let mut grads: Vec<Vec<(String, Tensor)>> = Vec::new();
        for checkpointing in [false, true] {
            let model = load(case, Trainable::Everything);
            let sums = objective::forward_backward(
                &model,
                &Supervised::WHOLE,
                &DeviceBatch::new(&inputs, ids),
                counted,
                checkpointing,
                &|_| {},
            );
            let d = diff(&(sums.loss / counted), &g["loss"]);
            assert!(d < 1e-5, "{case} (checkpointing {checkpointing}): training loss differs by {d:e}");
            grads.push(model.trainable_params().into_iter().map(|p| (p.name, p.tensor.grad())).collect());
        }
        let mut worst = 0f64;
        for ((name, plain), (_, checkpointed)) in grads[0].iter().zip(&grads[1]) {
            let scale = plain.abs().max().double_value(&[]);
            assert!(scale > 0.0 || !name.contains(".gate."), "{case}: no gradient reaches {name}");
            let rel = diff(plain, checkpointed) / scale.max(1e-12);
            worst = worst.max(rel);
            assert!(rel < 1e-4, "{case}: checkpointing changes the gradient of {name} by {rel:e}");
        }
        eprintln!("{case}: checkpointed gradients within {worst:e} (relative)");
    }
}

/// The routers' gradient comes from the aux term as well: without it (coef 0) it changes.
#[test]
fn the_aux_term_reaches_the_router() {
    let case = "mixtral_moe";
    let g = golden(case);
    let ids = &g["input_ids"];
    let pos = positions(ids);
    let inputs = Inputs { input_ids: ids, position_ids: &pos, segment_ids: None, varlen: None };
    let router_grad = |with_aux: bool| {
        let mut model = load(case, Trainable::Everything);
        model.arch.moe.as_mut().unwrap().output_router_logits = with_aux;
        objective::forward_backward(&model, &Supervised::WHOLE, &DeviceBatch::new(&inputs, ids), 46.0, false, &|_| {});
        let p = model.trainable_params().into_iter().find(|p| p.name == "model.layers.0.block_sparse_moe.gate.weight");
        p.unwrap().tensor.grad()
    };
    assert!(diff(&router_grad(true), &router_grad(false)) > 1e-6);
}

#[test]
fn attention_lora_gradients_match_peft() {
    let case = "qwen3_moe_attention";
    let dir = root().join("tests/golden/lora").join(case);
    let g: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
    let (ids, labels) = (&g["input_ids"], &g["labels"]);
    let t = ids.size()[1];
    let pos = positions(ids);
    let inputs = Inputs { input_ids: ids, position_ids: &pos, segment_ids: None, varlen: None };
    for checkpointing in [false, true] {
        let model = common::load_peft_folder(&dir, Kind::Float);
        let logits = tch::no_grad(|| model.logits(&inputs));
        let d = diff(&logits, &g["logits"]);
        assert!(d < 1e-4, "logits differ by {d:e}");
        let counted = labels.narrow(1, 1, t - 1).ne(-100).sum(Kind::Int64).int64_value(&[]) as f64;
        let batch = DeviceBatch::new(&inputs, labels);
        let loss = objective::forward_backward(&model, &Supervised::WHOLE, &batch, counted, checkpointing, &|_| {})
            .loss
            / counted;
        let dl = diff(&loss, &g["loss"]);
        assert!(dl < 1e-5, "loss (with the aux term) differs by {dl:e}");
        let params = model.trainable_params();
        assert_eq!(params.len(), g.keys().filter(|k| k.starts_with("grad.")).count(), "trainable set");
        let mut worst = 0f64;
        for p in params {
            let expected = &g[&format!("grad.{}", p.name)];
            let rel = diff(&p.tensor.grad(), expected) / expected.abs().max().double_value(&[]);
            worst = worst.max(rel);
            assert!(rel < 1e-4, "gradient of {} differs by {rel:e} (relative)", p.name);
        }
        eprintln!("{case} (checkpointing {checkpointing}): logits {d:e}, loss {dl:e}, worst gradient {worst:e}");
    }
}

/// What a full fine-tune or merge writes is the checkpoint's own tensor set: every expert's
/// projections apart, under the Hub's names, which transformers 5.24 loads (and saves) as they are.
#[test]
fn saved_tensors_are_the_checkpoints_per_expert_names() {
    for case in CASES {
        let dir = root().join("tests/golden/model").join(case);
        let stored: std::collections::BTreeSet<String> =
            Tensor::read_safetensors(dir.join("model.safetensors")).unwrap().into_iter().map(|(n, _)| n).collect();
        let model = load(case, Trainable::Everything);
        let saved: std::collections::BTreeSet<String> = model.base_params().into_iter().map(|p| p.name).collect();
        assert_eq!(saved, stored, "{case}");
        let merged: std::collections::BTreeSet<String> = model.merged_weights().into_iter().map(|w| w.name).collect();
        assert_eq!(merged, stored, "{case}");
    }
}

/// `recipe plan` of the built-in Qwen3-30B-A3B / Mixtral-8x7B entries (a LoRA recipe re-pointed with
/// `--set`): peft's all-linear reaches the attention projections alone; the recipe's `model_config`
/// switches the load-balancing loss on; what is not built is refused by name.
#[test]
fn plans_resolve_counts_overrides_and_refusals() {
    let plan = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let loaded = recipe::recipe::load(std::path::Path::new("recipes/qwen3-0.6b-lora.yaml"), &sets);
        let errors: Vec<String> =
            loaded.diagnostics.iter().filter(|d| d.is_error()).map(|d| format!("{d:?}")).collect();
        assert!(errors.is_empty(), "{sets:?}: {errors:?}");
        recipe::plan::compile(&loaded, recipe::plan::PlanOptions::default())
    };
    let p = plan(&["base_model=Qwen/Qwen3-30B-A3B"]).unwrap();
    assert_eq!(p.model.parameters.total, 30_532_122_624);
    assert_eq!(p.adapter.target_modules, ["q_proj", "k_proj", "v_proj", "o_proj"]);
    assert_eq!(p.adapter.trainable_parameters, 13_369_344); // peft's count (tests/golden/peft_trainable.json)
    let moe = p.model.architecture.moe.as_ref().unwrap();
    assert!(!moe.output_router_logits && moe.normalize_top_k);
    let text = recipe::plan::render_text(&p);
    assert!(text.contains("mixture of experts: 128 experts of width 768, top-8 (weights renormalized)"), "{text}");

    let p = plan(&["base_model=mistralai/Mixtral-8x7B-v0.1", "model_config.output_router_logits=true"]).unwrap();
    let moe = p.model.architecture.moe.as_ref().unwrap();
    assert!(moe.output_router_logits && moe.router_aux_loss_coef == 0.02);
    assert_eq!(p.model.parameters.total, 46_702_792_704);
    let p = plan(&["base_model=mistralai/Mixtral-8x7B-v0.1", "overrides_of_model_config.router_aux_loss_coef=0.1"])
        .unwrap();
    assert_eq!(p.model.architecture.moe.as_ref().unwrap().router_aux_loss_coef, 0.1);

    for (sets, rule) in [
        (
            &["base_model=mistralai/Mixtral-8x7B-v0.1", "load_in_4bit=true", "adapter=qlora"][..],
            "unsupported-moe-quantization",
        ),
        (&["base_model=mistralai/Mixtral-8x7B-v0.1", "fsdp=[full_shard]"][..], "unsupported-moe-sharding"),
        (&["base_model=Qwen/Qwen3-30B-A3B", "lora_target_modules=[q_proj, w2]"][..], "unsupported-moe-lora-experts"),
        (&["base_model=Qwen/Qwen3-30B-A3B", "lora_target_modules=[gate]"][..], "unsupported-moe-lora-experts"),
    ] {
        let err = plan(sets).unwrap_err();
        assert!(err.starts_with(rule), "{sets:?}: {err}");
    }
    let loaded = recipe::recipe::load(
        std::path::Path::new("recipes/demo/stories260k-ia3.yaml"),
        &["base_model=Qwen/Qwen3-30B-A3B".to_string()],
    );
    let err = recipe::plan::compile(&loaded, recipe::plan::PlanOptions::default()).unwrap_err();
    assert!(err.starts_with("unsupported-moe-ia3"), "{err}");
    // The MoE settings on a dense model.
    let err = plan(&["model_config.output_router_logits=true"]).unwrap_err();
    assert!(err.contains("mixture of experts"), "{err}");
}

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

    // QLoRA: bitsandbytes quantizes the attention projections (nn.Linear) only.
    let p = plan(&["base_model=mistralai/Mixtral-8x7B-v0.1", "load_in_4bit=true", "adapter=qlora"]).unwrap();
    assert_eq!(p.quantization.quantized_parameters, 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024));
    for (sets, rule) in [
        (&["base_model=mistralai/Mixtral-8x7B-v0.1", "load_in_8bit=true"][..], "unsupported-moe-quantization"),
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

/// LoRA through peft's `target_parameters` (its ParamWrapper): Mixtral's router and both fused
/// expert parameters (nested wrappers: gate_up_proj's tensors under `experts.base_layer`), and
/// Qwen3-MoE's expert down_proj alone with rsLoRA (its dense layer has none). The adapter peft
/// saved loads under the same names and shapes; logits, the loss (with the aux term) and every
/// gradient equal peft's, with and without gradient checkpointing.
#[test]
fn target_parameters_lora_matches_peft() {
    for case in ["mixtral_router_experts", "qwen3_moe_expert_down_rslora"] {
        let dir = root().join("tests/golden/lora").join(case);
        let g: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
        let saved: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("adapter_model.safetensors")).unwrap().into_iter().collect();
        let (ids, labels) = (&g["input_ids"], &g["labels"]);
        let t = ids.size()[1];
        let pos = positions(ids);
        let inputs = Inputs { input_ids: ids, position_ids: &pos, segment_ids: None, varlen: None };
        for checkpointing in [false, true] {
            let model = common::load_peft_folder(&dir, Kind::Float);
            let params = model.trainable_params();
            let mut names: Vec<(String, Vec<i64>)> = params.iter().map(|p| (p.name.clone(), p.tensor.size())).collect();
            let mut want: Vec<(String, Vec<i64>)> = saved.iter().map(|(n, t)| (n.clone(), t.size())).collect();
            names.sort();
            want.sort();
            assert_eq!(names, want, "{case}: adapter tensors (names and shapes) as peft saves them");
            let logits = tch::no_grad(|| model.logits(&inputs));
            let d = diff(&logits, &g["logits"]);
            assert!(d < 1e-4, "{case}: logits differ by {d:e}");
            let counted = labels.narrow(1, 1, t - 1).ne(-100).sum(Kind::Int64).int64_value(&[]) as f64;
            let batch = DeviceBatch::new(&inputs, labels);
            let loss = objective::forward_backward(&model, &Supervised::WHOLE, &batch, counted, checkpointing, &|_| {})
                .loss
                / counted;
            let dl = diff(&loss, &g["loss"]);
            assert!(dl < 1e-5, "{case}: loss differs by {dl:e}");
            let mut worst = ("", 0f64);
            let mut worst_expert = 0f64;
            for p in &params {
                let expected = &g[&format!("grad.{}", p.name)];
                let rel = diff(&p.tensor.grad(), expected) / expected.abs().max().double_value(&[]);
                if rel > worst.1 {
                    worst = (p.name.as_str(), rel);
                }
                if p.name.contains(".mlp.") {
                    worst_expert = worst_expert.max(rel);
                }
                assert!(rel < 1e-5, "{case}: gradient of {} differs by {rel:e} (relative)", p.name);
            }
            eprintln!(
                "{case} (checkpointing {checkpointing}): logits {d:e}, loss {dl:e}, worst gradient {:e} ({}), \
                 router/experts {worst_expert:e}",
                worst.1, worst.0
            );
        }
    }
}

/// Merging folds each expert's share of the fused update into its own per-expert weight: the
/// merged checkpoint, loaded with no adapter, gives the adapter's logits.
#[test]
fn target_parameters_merge_into_the_per_expert_weights() {
    let dir = root().join("tests/golden/lora/mixtral_router_experts");
    let g: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
    let model = common::load_peft_folder(&dir, Kind::Float);
    let merged: Vec<(String, Tensor)> =
        model.merged_weights().into_iter().map(|w| (w.name.clone(), w.tensor())).collect();
    let out = tempfile::tempdir().unwrap();
    let base = root().join("tests/golden/model/mixtral_moe");
    std::fs::copy(base.join("config.json"), out.path().join("config.json")).unwrap();
    Tensor::write_safetensors(&merged, out.path().join("model.safetensors")).unwrap();
    let arch = Architecture::from_config_json(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: Trainable::Nothing,
        quantize: None,
        score_head: false,
    };
    let plain = CausalLm::load(&arch, &Checkpoint::open(out.path()).unwrap(), &opts).unwrap();
    let ids = &g["input_ids"];
    let pos = positions(ids);
    let inputs = Inputs { input_ids: ids, position_ids: &pos, segment_ids: None, varlen: None };
    let d = diff(&tch::no_grad(|| plain.logits(&inputs)), &g["logits"]);
    eprintln!("merged mixtral_router_experts: logits {d:e}");
    assert!(d < 1e-4, "merged logits differ by {d:e}");
}

/// `recipe plan` with `lora_target_parameters` over the golden MoE folders counts what peft's
/// get_nb_trainable_parameters counts (case.json), lists the adapted parameters, and refuses what
/// is not built by name.
#[test]
fn target_parameters_plan_counts_equal_peft() {
    let plan = |sets: &[String]| {
        let loaded = recipe::recipe::load(std::path::Path::new("recipes/qwen3-0.6b-lora.yaml"), sets);
        let errors: Vec<String> =
            loaded.diagnostics.iter().filter(|d| d.is_error()).map(|d| format!("{d:?}")).collect();
        assert!(errors.is_empty(), "{sets:?}: {errors:?}");
        recipe::plan::compile(&loaded, recipe::plan::PlanOptions::default())
    };
    for (case, base, sets) in [
        (
            "mixtral_router_experts",
            "mixtral_moe",
            &[
                "lora_r=4",
                "lora_alpha=8",
                "lora_target_modules=[q_proj, v_proj]",
                "lora_target_linear=false",
                "lora_target_parameters=[gate.weight, experts.gate_up_proj, experts.down_proj]",
            ][..],
        ),
        (
            "qwen3_moe_expert_down_rslora",
            "qwen3_moe_gqa",
            &[
                "lora_r=4",
                "lora_alpha=16",
                "peft_use_rslora=true",
                "lora_target_modules=[q_proj, k_proj]",
                "lora_target_linear=false",
                "lora_target_parameters=[mlp.experts.down_proj]",
            ][..],
        ),
    ] {
        let case_json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root().join("tests/golden/lora").join(case).join("case.json")).unwrap(),
        )
        .unwrap();
        let mut all: Vec<String> = vec![
            format!("base_model={}", root().join("tests/golden/model").join(base).display()),
            "lora_dropout=0".into(),
        ];
        all.extend(sets.iter().map(|s| s.to_string()));
        let p = plan(&all).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(p.adapter.trainable_parameters, case_json["trainable_parameters"].as_u64().unwrap(), "{case}");
        assert_eq!(p.adapter.total_parameters, case_json["all_parameters"].as_u64().unwrap(), "{case}");
        assert_eq!(p.adapter.target_parameters, {
            let mut t = case_json["lora"]["target_parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect::<Vec<_>>();
            t.sort();
            t
        });
        let text = recipe::plan::render_text(&p);
        assert!(text.contains("target parameter mlp.experts."), "{text}");
    }
    let mixtral = format!("base_model={}", root().join("tests/golden/model/mixtral_moe").display());
    for (extra, wanted) in [
        ("lora_target_parameters=[q_proj.weight]", "unsupported-lora-target-parameters"),
        ("lora_target_parameters=[block_sparse_moe.experts.down_proj]", "matches no parameter"),
    ] {
        let err = plan(&[mixtral.clone(), "lora_dropout=0".into(), extra.into()]).unwrap_err();
        assert!(err.contains(wanted), "{extra}: {err}");
    }
    let err = plan(&[mixtral.clone(), "lora_dropout=0.05".into(), "lora_target_parameters=[experts.down_proj]".into()])
        .unwrap_err();
    assert!(err.contains("lora_dropout: 0"), "{err}");
    let err = plan(&["lora_dropout=0".into(), "lora_target_parameters=[experts.down_proj]".into()]).unwrap_err();
    assert!(err.starts_with("unsupported-lora-target-parameters"), "{err}");
}

/// QLoRA of Mixtral as transformers 5.24 + bitsandbytes build it (scripts/reference/moe_qlora_goldens.py):
/// the attention projections are NF4 (double-quantized, bit-exact with bitsandbytes), the router and
/// every expert stay in the compute dtype; LoRA on q/v and on the fused experts. Logits, loss and
/// gradients equal peft's.
#[test]
fn qlora_quantizes_attention_only_and_matches_peft() {
    use recipe::model::adapter;
    use recipe::model::llama::{FourBit, Quantize};
    use recipe::model::nf4::QuantType;
    let dir = root().join("tests/golden/qlora/mixtral_moe_nf4_dq");
    let g: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
    let cfg = adapter::read_config(&dir).unwrap();
    let base = root().join(&cfg.base_model);
    let arch = Architecture::from_config_json(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: cfg.trainable.clone(),
        quantize: Some(Quantize::FourBit(FourBit { quant_type: QuantType::Nf4, double_quant: true, blocksize: 64 })),
        score_head: false,
    };
    let model = CausalLm::load(&arch, &Checkpoint::open(&base).unwrap(), &opts).unwrap();
    let file = dir.join("adapter_model.safetensors");
    adapter::load_trainable(&model, &Checkpoint::open_files(&dir, &[file]).unwrap()).unwrap();
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let mut quantized: Vec<String> =
        model.linears().into_iter().filter(|l| l.quantized.is_some()).map(|l| l.name.clone()).collect();
    let mut want: Vec<String> =
        case["linear4bit_modules"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    quantized.sort();
    want.sort();
    let (ids, labels) = (&g["input_ids"], &g["labels"]);
    let t = ids.size()[1];
    let pos = positions(ids);
    let inputs = Inputs { input_ids: ids, position_ids: &pos, segment_ids: None, varlen: None };
    let logits = tch::no_grad(|| model.logits(&inputs));
    let d = diff(&logits, &g["logits"]);
    let counted = labels.narrow(1, 1, t - 1).ne(-100).sum(Kind::Int64).int64_value(&[]) as f64;
    let loss = objective::forward_backward(
        &model,
        &Supervised::WHOLE,
        &DeviceBatch::new(&inputs, labels),
        counted,
        false,
        &|_| {},
    )
    .loss
        / counted;
    let dl = diff(&loss, &g["loss"]);
    let mut worst = 0f64;
    let params = model.trainable_params();
    assert_eq!(params.len(), g.keys().filter(|k| k.starts_with("grad.")).count());
    for p in params {
        let expected = &g[&format!("grad.{}", p.name)];
        let rel = diff(&p.tensor.grad(), expected) / expected.abs().max().double_value(&[]);
        worst = worst.max(rel);
    }
    assert!(worst < 1e-5, "gradients differ by {worst:e} (relative)");
    eprintln!("mixtral_moe_nf4_dq: logits {d:e}, loss {dl:e}, worst gradient {worst:e}");
    assert!(d < 1e-4 && dl < 1e-5, "logits {d:e}, loss {dl:e}");
}

/// A tiny random Mixtral (the golden's weights, with a 512-row embedding and head so the bundled
/// stories260k tokenizer fits) trained end to end by `recipe run`: LoRA on q/v and, through
/// `lora_target_parameters`, on the router and fused experts, with the load-balancing loss. It
/// trains, the adapter is written under peft's names with `target_parameters` in
/// adapter_config.json, and the run's host-sync line counts the per-layer expert-count reads.
#[test]
fn recipe_run_trains_lora_on_router_and_experts() {
    // Left for scripts/reference/check_outputs.py (as tests/outputs.rs leaves its folders).
    let check = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("outputs-check");
    for d in ["moe_base", "lora_moe", "merged_moe"] {
        let _ = std::fs::remove_dir_all(check.join(d));
    }
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    let base = check.join("moe_base");
    common::runnable_copy_of_golden_base(&root().join("tests/golden/model/mixtral_moe"), &base, |config| {
        config["output_router_logits"] = true.into();
    });
    let out = check.join("lora_moe");
    let recipe_path = dir_path.join("recipe.yaml");
    std::fs::write(
        &recipe_path,
        format!(
            "base_model: {base}\nadapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_dropout: 0\n\
             lora_target_modules: [q_proj, v_proj]\n\
             lora_target_parameters: [gate.weight, experts.gate_up_proj, experts.down_proj]\n\
             datasets:\n  - path: {data}\n    type: completion\n    ds_type: text\n\
             sequence_len: 64\nsample_packing: true\nmicro_batch_size: 4\nmax_steps: 12\n\
             learning_rate: 1.0e-2\nwarmup_steps: 2\nlogging_steps: 1\nseed: 3\noutput_dir: {out}\n",
            base = base.display(),
            data = root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let stdout = common::run_on_cpu(&recipe_path, &[]);
    let losses = common::training_losses(&out);
    assert_eq!(losses.len(), 12, "{losses:?}");
    let (first, last) = (losses[..3].iter().sum::<f64>(), losses[9..].iter().sum::<f64>());
    assert!(last < first, "the loss does not fall: {losses:?}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        config["target_parameters"],
        serde_json::json!(["experts.down_proj", "experts.gate_up_proj", "gate.weight"])
    );
    let saved: std::collections::BTreeMap<String, Vec<i64>> =
        Tensor::read_safetensors(out.join("adapter_model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
    let peft: std::collections::BTreeMap<String, Vec<i64>> =
        Tensor::read_safetensors(root().join("tests/golden/lora/mixtral_router_experts/adapter_model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
    assert_eq!(saved, peft, "the same tensor names and shapes as peft's adapter for this layout");
    // Every step logs (logging_steps 1): the pending loss, and one read of the expert token
    // counts per sparse layer and forward pass (2 layers), counted by exec/host_sync.rs.
    let line = stdout.lines().find(|l| l.starts_with("host syncs ")).expect("host syncs line");
    eprintln!("losses {:.4} .. {:.4}; {line}", losses[0], losses[11]);
    assert!(line.starts_with("host syncs 3 per logging step"), "{line}");

    // The adapter as recipe reloads it, and `recipe merge`'s folder: the same logits, saved beside
    // them for the Python check (peft loads the adapter, transformers the merged folder).
    let ids = Tensor::from_slice(&(0..48).map(|i| (i * 37 + 11) % 500 + 3).collect::<Vec<i64>>()).view([2, 24]);
    let logits_of = |dir: &std::path::Path| {
        let loaded = recipe::exec::load_trained(dir, None, Device::Cpu, None, Some(Kind::Float)).unwrap();
        let pos = positions(&ids);
        tch::no_grad(|| {
            loaded.model.logits(&Inputs { input_ids: &ids, position_ids: &pos, segment_ids: None, varlen: None })
        })
    };
    let adapted = logits_of(&out);
    let merged_dir = check.join("merged_moe");
    let merge = common::recipe_command().arg("merge").arg(&out).arg("--output").arg(&merged_dir).output().unwrap();
    assert!(merge.status.success(), "{}", String::from_utf8_lossy(&merge.stderr));
    let d = diff(&logits_of(&merged_dir), &adapted);
    eprintln!("merged vs adapter logits {d:e}");
    assert!(d < 1e-5, "the merged folder's logits differ from the adapter's by {d:e}");
    for dir in [&out, &merged_dir] {
        let file = dir.join("recipe_logits.safetensors");
        Tensor::write_safetensors(&[("input_ids", ids.shallow_clone()), ("logits", adapted.shallow_clone())], file)
            .unwrap();
    }
}

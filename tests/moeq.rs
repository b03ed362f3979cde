//! Axolotl's `quantize_moe_experts` (goldens from scripts/reference/moe_quant_goldens.py:
//! bitsandbytes' `replace_parameter_4bit` on transformers 5.24's fused experts, peft 0.21.2's
//! ParamWrapper LoRA on top): the fused expert tensors quantized bit for bit as bitsandbytes
//! quantizes them whole (double quantization's offset and nested blocks over the whole tensor),
//! each expert's view dequantizing to exactly its rows of the whole; the model's logits, loss
//! (with the load-balancing term) and LoRA gradients against transformers + bitsandbytes + peft,
//! with and without gradient checkpointing; the adapter's tensors as peft saves them; with
//! `load_in_8bit`, Axolotl's int8 rows of each fused tensor and the same parity; the plan's
//! counts, lines and rules.
#![cfg(feature = "exec")]

mod common;

use recipe::exec::objective::{self, DeviceBatch, Supervised};
use recipe::model::adapter;
use recipe::model::linear::QuantizedWeight;
use recipe::model::llama::{CausalLm, FeedForward, FourBit, Inputs, LoadOptions, Quantize};
use recipe::model::nf4::{self, QuantType};
use recipe::model::weights::Checkpoint;
use recipe::plan::arch::Architecture;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The 4-bit cases (case, double quantization).
const CASES: [(&str, bool); 2] = [("mixtral_nf4_dq", true), ("qwen3_moe_nf4_dq", true)];
/// The 8-bit case (Axolotl's replace_parameter_8bit, attention in LLM.int8).
const INT8: &str = "mixtral_int8";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn case_dir(case: &str) -> PathBuf {
    root().join("tests/golden/moeq").join(case)
}

fn golden(case: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(case_dir(case).join("expected.safetensors")).unwrap().into_iter().collect()
}

fn spec(double_quant: bool) -> Quantize {
    Quantize::FourBit(FourBit { quant_type: QuantType::Nf4, double_quant, blocksize: 64 })
}

fn arch_of(base: &Path, quantized_experts: bool) -> Architecture {
    let mut arch = Architecture::from_config_json(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    arch.moe.as_mut().unwrap().quantized_experts = quantized_experts;
    arch
}

/// The case's model with quantized experts and the adapter peft saved.
fn load(case: &str, double_quant: bool) -> CausalLm {
    load_with(case, spec(double_quant))
}

fn load_with(case: &str, quantize: Quantize) -> CausalLm {
    load_case(case, quantize, true)
}

/// The case's model and adapter; `quantized_experts`: whether the architecture says its experts
/// are quantized too (quantize_moe_experts), or only its linear layers.
fn load_case(case: &str, quantize: Quantize, quantized_experts: bool) -> CausalLm {
    let dir = case_dir(case);
    let cfg = adapter::read_config(&dir).unwrap();
    let base = root().join(&cfg.base_model);
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: cfg.trainable.clone(),
        quantize: Some(quantize),
        score_head: false,
    };
    let model = CausalLm::load(&arch_of(&base, quantized_experts), &Checkpoint::open(&base).unwrap(), &opts).unwrap();
    let file = dir.join("adapter_model.safetensors");
    adapter::load_trainable(&model, &Checkpoint::open_files(&dir, &[file]).unwrap()).unwrap();
    model
}

fn diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn same_bits(what: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.size(), b.size(), "{what}: shape");
    assert_eq!(a.kind(), b.kind(), "{what}: dtype");
    let (a, b) = match a.kind() {
        Kind::Float => (a.view_dtype(Kind::Int), b.view_dtype(Kind::Int)),
        _ => (a.shallow_clone(), b.shallow_clone()),
    };
    let differ = a.ne_tensor(&b).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(differ, 0, "{what}: {differ} elements differ");
}

fn positions(ids: &Tensor) -> Tensor {
    let (b, t) = (ids.size()[0], ids.size()[1]);
    Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false)
}

/// The fused tensors transformers 5 holds, from the checkpoint's per-expert weights.
fn fused(ckpt: &Checkpoint, arch: &Architecture, layer: u64) -> (Tensor, Tensor) {
    let moe = arch.moe.as_ref().unwrap();
    let (h, i) = (arch.hidden_size as i64, moe.expert_intermediate_size as i64);
    let (mut gate_up, mut down) = (Vec::new(), Vec::new());
    for e in 0..moe.num_experts {
        let [g, u, d] = moe.expert_names(layer, e).map(|n| format!("{n}.weight"));
        let load = |n: &str, shape: [i64; 2]| ckpt.load(n, &shape, Kind::Float, Device::Cpu).unwrap();
        gate_up.push(Tensor::cat(&[load(&g, [i, h]), load(&u, [i, h])], 0));
        down.push(load(&d, [h, i]));
    }
    (Tensor::stack(&gate_up, 0), Tensor::stack(&down, 0))
}

/// recipe's 4-bit quantization of each fused tensor equals bitsandbytes' bit for bit (codes,
/// absmax codes, nested absmax, offset, and the dequantized tensor); the loaded model's expert
/// linears hold views of it that dequantize to exactly their rows.
#[test]
fn fused_experts_quantize_as_bitsandbytes_and_each_expert_dequantizes_its_rows() {
    for (case, dq) in CASES {
        let g = golden(case);
        let base = case_dir(case).join("base");
        let arch = arch_of(&base, true);
        let ckpt = Checkpoint::open(&base).unwrap();
        let moe = arch.moe.clone().unwrap();
        let model = load(case, dq);
        let mut checked = 0;
        for l in (0..arch.num_layers).filter(|l| moe.is_sparse(*l)) {
            let (gate_up, down) = fused(&ckpt, &arch, l);
            for (name, dense) in [("gate_up_proj", &gate_up), ("down_proj", &down)] {
                let key = format!("{l}.{name}");
                let q = nf4::quantize(dense, 64, QuantType::Nf4, dq);
                same_bits(&format!("{case} {key} packed"), &q.packed, &g[&format!("{key}.packed")]);
                same_bits(&format!("{case} {key} absmax"), &q.absmax, &g[&format!("{key}.absmax")]);
                if dq {
                    let n = q.nested.as_ref().unwrap();
                    same_bits(&format!("{case} {key} nested absmax"), &n.absmax, &g[&format!("{key}.nested_absmax")]);
                    let offset = g[&format!("{key}.offset")].double_value(&[0]) as f32;
                    assert_eq!(n.offset.to_bits(), offset.to_bits(), "{case} {key}: offset");
                }
                let whole = nf4::dequantize(&q, Kind::Float);
                same_bits(&format!("{case} {key} dequantized"), &whole, &g[&format!("{key}.dequantized")]);
                checked += 1;
            }
            // The model's expert linears: views of the fused state, each its own rows.
            let layer = &model.layers[l as usize];
            let FeedForward::Sparse(block) = &layer.mlp else { panic!("{case}: layer {l} is not sparse") };
            let i = moe.expert_intermediate_size as i64;
            let want_gate_up = &g[&format!("{l}.gate_up_proj.dequantized")];
            let want_down = &g[&format!("{l}.down_proj.dequantized")];
            for (e, x) in block.experts.iter().enumerate() {
                let e = e as i64;
                for (lin, want) in [
                    (&x.gate_proj, want_gate_up.get(e).narrow(0, 0, i)),
                    (&x.up_proj, want_gate_up.get(e).narrow(0, i, i)),
                    (&x.down_proj, want_down.get(e)),
                ] {
                    let Some(QuantizedWeight::Four(q)) = &lin.quantized else { panic!("{}: not 4-bit", lin.name) };
                    assert_eq!(lin.weight.numel(), 0, "{}: a dense copy is kept", lin.name);
                    same_bits(&lin.name, &nf4::dequantize(q, Kind::Float), &want);
                    same_bits(&format!("{} merged", lin.name), &lin.dequantized_base(Kind::Float), &want);
                }
            }
            // The router stays in the compute dtype.
            assert!(block.gate.quantized.is_none() && block.gate.weight.kind() == Kind::Float, "{case}: router");
        }
        eprintln!("{case}: {checked} fused expert tensors bit-exact with bitsandbytes, every expert's view exact");
    }
}

/// 8 bits: Axolotl's int8 rows of each fused tensor (one fp16 absmax per row of the last
/// dimension) are recipe's LLM.int8 quantization of each expert's rows, bit for bit, and each
/// expert's weight is `int8_vectorwise_dequant`'s fp32 rows of the parametrized tensor; the
/// attention projections are LLM.int8 linears.
#[test]
fn int8_experts_are_axolotls_rows_and_dequantize_as_its_parametrization() {
    let g = golden(INT8);
    let base = case_dir(INT8).join("base");
    let arch = arch_of(&base, true);
    let moe = arch.moe.clone().unwrap();
    let model = load_with(INT8, Quantize::Int8);
    let i = moe.expert_intermediate_size as i64;
    let h = arch.hidden_size as i64;
    for l in (0..arch.num_layers).filter(|l| moe.is_sparse(*l)) {
        let FeedForward::Sparse(block) = &model.layers[l as usize].mlp else { panic!("layer {l}") };
        let (cb_gu, scb_gu) = (&g[&format!("{l}.gate_up_proj.cb")], &g[&format!("{l}.gate_up_proj.scb")]);
        let (cb_d, scb_d) = (&g[&format!("{l}.down_proj.cb")], &g[&format!("{l}.down_proj.scb")]);
        let (deq_gu, deq_d) = (&g[&format!("{l}.gate_up_proj.dequantized")], &g[&format!("{l}.down_proj.dequantized")]);
        for (e, x) in block.experts.iter().enumerate() {
            let e = e as i64;
            let two_i = 2 * i;
            for (lin, cb, scb, deq) in [
                (
                    &x.gate_proj,
                    cb_gu.get(e).narrow(0, 0, i),
                    scb_gu.narrow(0, e * two_i, i),
                    deq_gu.get(e).narrow(0, 0, i),
                ),
                (
                    &x.up_proj,
                    cb_gu.get(e).narrow(0, i, i),
                    scb_gu.narrow(0, e * two_i + i, i),
                    deq_gu.get(e).narrow(0, i, i),
                ),
                (&x.down_proj, cb_d.get(e), scb_d.narrow(0, e * h, h), deq_d.get(e)),
            ] {
                let Some(QuantizedWeight::ExpertEight(q)) = &lin.quantized else { panic!("{}: not int8", lin.name) };
                same_bits(&format!("{} cb", lin.name), &q.cb, &cb);
                same_bits(&format!("{} scb", lin.name), &q.scb, &scb);
                same_bits(&format!("{} dequantized", lin.name), &lin.base_weight(Kind::Float), &deq);
            }
        }
    }
    let attention =
        model.linears().into_iter().filter(|l| matches!(l.quantized, Some(QuantizedWeight::Eight(_)))).count();
    assert_eq!(attention, 4 * arch.num_layers as usize, "LLM.int8 attention projections");
    eprintln!(
        "{INT8}: every expert's int8 rows, scales and dequantized weight bit-exact with Axolotl's parametrization"
    );
}

/// Logits, the loss (with the load-balancing term) and every LoRA gradient against transformers +
/// bitsandbytes + peft, with and without gradient checkpointing; the trainable tensors are the
/// adapter peft saved, under its names and shapes.
#[test]
fn logits_loss_and_lora_gradients_match_peft_over_quantized_experts() {
    let cases = CASES.iter().map(|&(case, dq)| (case, spec(dq))).chain([(INT8, Quantize::Int8)]);
    for (case, quantize) in cases {
        let g = golden(case);
        let saved: HashMap<String, Tensor> =
            Tensor::read_safetensors(case_dir(case).join("adapter_model.safetensors")).unwrap().into_iter().collect();
        let (ids, labels) = (&g["input_ids"], &g["labels"]);
        let t = ids.size()[1];
        let pos = positions(ids);
        let inputs = Inputs { input_ids: ids, position_ids: &pos, segment_ids: None, varlen: None };
        for checkpointing in [false, true] {
            let model = load_with(case, quantize);
            let params = model.trainable_params();
            let mut names: Vec<(String, Vec<i64>)> = params.iter().map(|p| (p.name.clone(), p.tensor.size())).collect();
            let mut want: Vec<(String, Vec<i64>)> = saved.iter().map(|(n, t)| (n.clone(), t.size())).collect();
            names.sort();
            want.sort();
            assert_eq!(names, want, "{case}: adapter tensors (names and shapes) as peft saves them");
            let logits = tch::no_grad(|| model.logits(&inputs));
            let d = diff(&logits, &g["logits"]);
            let counted = labels.narrow(1, 1, t - 1).ne(-100).sum(Kind::Int64).int64_value(&[]) as f64;
            let batch = DeviceBatch::new(&inputs, labels);
            let loss = objective::forward_backward(&model, &Supervised::WHOLE, &batch, counted, checkpointing, &|_| {})
                .loss
                / counted;
            let dl = diff(&loss, &g["loss"]);
            let mut worst = ("", 0f64);
            for p in &params {
                let expected = &g[&format!("grad.{}", p.name)];
                let rel = diff(&p.tensor.grad(), expected) / expected.abs().max().double_value(&[]);
                if rel > worst.1 {
                    worst = (p.name.as_str(), rel);
                }
            }
            eprintln!(
                "{case} (checkpointing {checkpointing}): logits {d:e}, loss {dl:e}, worst gradient {:e} ({})",
                worst.1, worst.0
            );
            assert!(d < 1e-4, "{case}: logits differ by {d:e}");
            assert!(dl < 1e-5, "{case}: loss differs by {dl:e}");
            assert!(worst.1 < 1e-4, "{case}: gradient of {} differs by {:e} (relative)", worst.0, worst.1);
        }
    }
}

/// The quantized experts change the model (the goldens are not those of a dense-expert base): the
/// same adapter over compute-dtype experts gives other logits.
#[test]
fn quantized_experts_are_not_the_dense_experts() {
    let (case, dq) = CASES[0];
    let g = golden(case);
    let dense = load_case(case, spec(dq), false);
    let ids = &g["input_ids"];
    let pos = positions(ids);
    let inputs = Inputs { input_ids: ids, position_ids: &pos, segment_ids: None, varlen: None };
    let d = diff(&tch::no_grad(|| dense.logits(&inputs)), &g["logits"]);
    eprintln!("{case}: dense experts' logits differ from the quantized goldens by {d:e}");
    assert!(d > 1e-3, "{d:e}");
}

fn plan_with(sets: &[String]) -> Result<recipe::plan::Plan, String> {
    let loaded = recipe::recipe::load(Path::new("recipes/qwen3-0.6b-lora.yaml"), sets);
    let errors: Vec<String> = loaded.diagnostics.iter().filter(|d| d.is_error()).map(|d| format!("{d:?}")).collect();
    assert!(errors.is_empty(), "{sets:?}: {errors:?}");
    recipe::plan::compile(&loaded, recipe::plan::PlanOptions::default())
}

fn sets(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `recipe plan` with `quantize_moe_experts`: the fused experts join the quantized weights (4-bit
/// bytes of each whole fused tensor, per sparse layer), the plan says so, the memory model keeps
/// their dequantized copies for the backward pass; what is not built is refused by name.
#[test]
fn plan_counts_the_quantized_experts_and_refuses_what_is_not_built() {
    let qwen = format!("base_model={}", case_dir("qwen3_moe_nf4_dq").join("base").display());
    let common = ["adapter=qlora", "load_in_4bit=true", "lora_dropout=0", "lora_target_linear=false"];
    let mut with: Vec<String> = sets(&common);
    with.push(qwen.clone());
    with.push("lora_target_modules=[q_proj, k_proj]".into());
    let plain = plan_with(&with).unwrap();
    with.push("quantize_moe_experts=true".into());
    let p = plan_with(&with).unwrap();
    let q = &p.quantization;
    // Qwen3-MoE case: 6 experts, hidden 64, width 64, layers 0 and 2 sparse.
    let (e, h, i) = (6u64, 64u64, 64u64);
    let expert_params = 2 * e * 3 * h * i;
    assert_eq!(q.expert_layers, 2);
    assert_eq!(q.quantized_parameters, plain.quantization.quantized_parameters + expert_params);
    let four = |n: u64| recipe::plan::quantize::four_bit_bytes(n, true);
    assert_eq!(q.quantized_bytes, plain.quantization.quantized_bytes + 2 * (four(e * 2 * i * h) + four(e * h * i)));
    assert_eq!(
        q.expert_modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    );
    let text = recipe::plan::render_text(&p);
    assert!(text.contains("experts (quantize_moe_experts), per sparse layer × 2: mlp.experts.gate_up_proj"), "{text}");
    assert!(!recipe::plan::render_text(&plain).contains("experts (quantize_moe_experts)"));
    let base_bytes = |p: &recipe::plan::Plan| p.memory.items.iter().find(|m| m.name == "base weights").unwrap().bytes;
    assert!(base_bytes(&p) < base_bytes(&plain), "the experts' bytes shrink");
    assert!(p.memory.items.iter().any(|m| m.name == "dequantized experts"), "{text}");

    // Axolotl's rules, by name and at the keys.
    let mixtral = format!("base_model={}", case_dir("mixtral_nf4_dq").join("base").display());
    for (extra, rule) in [
        (&["adapter=qlora", "load_in_4bit=true", "lora_target_linear=true"][..], "moe-experts-quant-target-linear"),
        (&["load_in_4bit=false", "adapter=lora"][..], "moe-experts-quant-needs-quantized-base"),
    ] {
        let mut s = vec![mixtral.clone(), "quantize_moe_experts=true".into(), "lora_dropout=0".into()];
        s.extend(extra.iter().map(|x| x.to_string()));
        let loaded = recipe::recipe::load(Path::new("recipes/qwen3-0.6b-lora.yaml"), &s);
        let d = loaded.diagnostics.iter().find(|d| d.rule == rule).unwrap_or_else(|| panic!("{extra:?}: no {rule}"));
        assert!(d.is_error() && d.primary.is_some(), "{rule}: {d:?}");
    }
    let loaded = recipe::recipe::load(
        Path::new("recipes/demo/stories260k-full.yaml"),
        &[mixtral.clone(), "quantize_moe_experts=true".into()],
    );
    assert!(loaded.diagnostics.iter().any(|d| d.rule == "moe-experts-quant-needs-lora"), "{:?}", loaded.diagnostics);
    // 8 bits: int8 plus an fp32 scale per row of each fused tensor; without quantize_moe_experts
    // an 8-bit MoE base stays refused by name. A dense model has no experts to quantize.
    let eight = ["adapter=lora", "load_in_8bit=true", "lora_dropout=0", "lora_target_linear=false"];
    let mut s = sets(&eight);
    s.extend([mixtral.clone(), "lora_target_modules=[q_proj]".into()]);
    let err = plan_with(&s).unwrap_err();
    assert!(err.starts_with("unsupported-moe-quantization"), "{err}");
    s.push("quantize_moe_experts=true".into());
    let p8 = plan_with(&s).unwrap();
    let (e, h, i) = (4u64, 64u64, 64u64);
    let per_layer = (e * 2 * i * h + 4 * e * 2 * i) + (e * h * i + 4 * e * h);
    assert_eq!(p8.quantization.expert_layers, 2);
    assert_eq!(p8.quantization.expert_modules.iter().map(|m| m.bytes).sum::<u64>(), per_layer);
    assert!(recipe::plan::render_text(&p8).contains("replace_parameter_8bit"));
    let err = plan_with(&sets(&[
        "adapter=qlora",
        "load_in_4bit=true",
        "quantize_moe_experts=true",
        "lora_target_linear=false",
        "lora_target_modules=[q_proj]",
    ]))
    .unwrap_err();
    assert!(err.contains("`quantize_moe_experts`") && err.contains("no mixture of experts"), "{err}");
}

/// The fixture recipe (Qwen3-30B-A3B, QLoRA with quantized experts): valid, and its plan's
/// quantization and memory lines.
#[test]
fn qwen3_30b_a3b_fixture_plans() {
    let path = root().join("tests/fixtures/moeq/qwen3-30b-a3b-qlora-moeq.yaml");
    let loaded = recipe::recipe::load(&path, &[]);
    let errors: Vec<String> = loaded.diagnostics.iter().filter(|d| d.is_error()).map(|d| format!("{d:?}")).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let p = recipe::plan::compile(&loaded, recipe::plan::PlanOptions::default()).unwrap();
    let without = {
        let loaded = recipe::recipe::load(&path, &["quantize_moe_experts=false".to_string()]);
        recipe::plan::compile(&loaded, recipe::plan::PlanOptions::default()).unwrap()
    };
    // 48 sparse layers × 128 experts × 3 × 2048 × 768.
    assert_eq!(p.quantization.quantized_parameters - without.quantization.quantized_parameters, 28_991_029_248);
    let text = recipe::plan::render_text(&p);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(" <- ") && !l.starts_with("schedule"))
        .filter(|l| {
            l.contains("quantize") || l.contains("experts") || l.contains("base weights") || l.contains("total")
        })
        .collect();
    insta::assert_snapshot!(lines.join("\n"));
}

/// `recipe run` end to end on CPU: QLoRA of a tiny Mixtral (the golden base, with a 512-row
/// embedding and head for the bundled stories260k tokenizer) with `quantize_moe_experts`, LoRA on
/// q/v and both fused experts. It trains, and writes peft's adapter (the names and shapes of the
/// golden adapter peft saved over quantized experts); `recipe quantize` refuses the key by name.
#[test]
fn recipe_run_trains_qlora_over_quantized_experts() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    common::runnable_copy_of_golden_base(&case_dir("mixtral_nf4_dq").join("base"), &base, |_| {});
    let out = dir.path().join("out");
    let recipe_path = dir.path().join("recipe.yaml");
    std::fs::write(
        &recipe_path,
        format!(
            "base_model: {base}\nadapter: qlora\nload_in_4bit: true\nquantize_moe_experts: true\n\
             bnb_4bit_compute_dtype: float32\nlora_r: 4\nlora_alpha: 8\nlora_dropout: 0\n\
             lora_target_modules: [q_proj, v_proj]\n\
             lora_target_parameters: [experts.gate_up_proj, experts.down_proj]\n\
             datasets:\n  - path: {data}\n    type: completion\n    ds_type: text\n\
             sequence_len: 64\nsample_packing: true\nmicro_batch_size: 4\nmax_steps: 8\n\
             learning_rate: 1.0e-2\nwarmup_steps: 1\nlogging_steps: 1\nseed: 3\noutput_dir: {out}\n",
            base = base.display(),
            data = root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
            out = out.display(),
        ),
    )
    .unwrap();
    common::run_on_cpu(&recipe_path, &[]);
    let losses = common::training_losses(&out);
    assert_eq!(losses.len(), 8, "{losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let (first, last) = (losses[..2].iter().sum::<f64>(), losses[6..].iter().sum::<f64>());
    assert!(last < first, "the loss does not fall: {losses:?}");
    let shapes = |path: PathBuf| -> std::collections::BTreeMap<String, Vec<i64>> {
        Tensor::read_safetensors(path).unwrap().into_iter().map(|(n, t)| (n, t.size())).collect()
    };
    assert_eq!(
        shapes(out.join("adapter_model.safetensors")),
        shapes(case_dir("mixtral_nf4_dq").join("adapter_model.safetensors")),
        "peft's adapter names and shapes"
    );
    // The run's plan (what the executor loads from): the fused experts quantized.
    let plan = common::recipe_command().arg("plan").arg(&recipe_path).output().unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(plan.contains("experts (quantize_moe_experts), per sparse layer × 2"), "{plan}");
    eprintln!("recipe run over quantized experts: losses {:.4} .. {:.4}", losses[0], losses[7]);
    let quantize = common::recipe_command()
        .arg("quantize")
        .arg(&recipe_path)
        .arg("--output")
        .arg(dir.path().join("quantized"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&quantize.stdout), String::from_utf8_lossy(&quantize.stderr));
    assert!(!quantize.status.success() && text.contains("unsupported-moe-quantized-experts-export"), "{text}");
}

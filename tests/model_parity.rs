//! Forward parity with transformers: logits of the bundled stories260k and of small random
//! configurations of each family (GQA, untied head, llama3 rope scaling, explicit head_dim, qkv
//! bias, Qwen3's q/k norms) against goldens written by scripts/reference/model_goldens.py; greedy
//! decoding of stories260k against llama2.c's ids; Qwen3's q/k norms saved, trained and required.
#![cfg(feature = "exec")]

use recipe::model::generate::{Sampling, generate};
use recipe::model::llama::{CausalLm, FeedForward, Inputs, LoadOptions, Mlp, Trainable};
use recipe::model::weights::Checkpoint;
use recipe::plan::arch::Architecture;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(dir: &Path) -> CausalLm {
    let arch = Architecture::from_config_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let ckpt = Checkpoint::open(dir).unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: Trainable::Nothing,
        quantize: None,
        score_head: false,
    };
    CausalLm::load(&arch, &ckpt, &opts).unwrap()
}

fn golden(case: &str) -> std::collections::HashMap<String, Tensor> {
    let path = root().join("tests/golden/model").join(case).join("expected.safetensors");
    Tensor::read_safetensors(&path).unwrap().into_iter().collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn check_case(case: &str, model_dir: &Path) {
    let model = load(model_dir);
    let g = golden(case);
    let ids = &g["input_ids"];
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
    let logits = tch::no_grad(|| {
        model.logits(&Inputs { input_ids: ids, position_ids: &positions, segment_ids: None, varlen: None })
    });
    let diff = max_abs_diff(&logits, &g["logits"]);
    eprintln!("{case}: max |logits - transformers| = {diff:e}");
    assert!(diff < 1e-4, "{case}: logits differ from transformers by {diff:e}");
    let loss = tch::no_grad(|| {
        let h = model.hidden_states(
            &Inputs { input_ids: ids, position_ids: &positions, segment_ids: None, varlen: None },
            false,
        );
        recipe::exec::objective::next_token_loss_sum(&model.head(&h, false), ids) / (b * (t - 1)) as f64
    });
    let d = (loss.double_value(&[]) - g["loss"].double_value(&[])).abs();
    assert!(d < 1e-5, "{case}: loss differs by {d:e}");
}

#[test]
fn stories260k_logits_match_transformers() {
    check_case("stories260k", &root().join("models/stories260k"));
}

#[test]
fn random_family_configs_match_transformers() {
    for case in ["llama_gqa_untied", "llama3_rope", "mistral", "qwen2", "qwen3_gqa_tied", "qwen3_untied_bias"] {
        check_case(case, &root().join("tests/golden/model").join(case));
    }
}

#[test]
fn packed_rows_match_separate_samples() {
    let dir = root().join("tests/golden/model/llama_gqa_untied");
    let model = load(&dir);
    let g = golden("llama_gqa_untied");
    let ids = &g["packed_input_ids"];
    let positions = &g["packed_position_ids"];
    // Segment ids: a new sample starts wherever the position restarts at 0.
    let starts = positions.eq(0).to_kind(Kind::Int64);
    let segments = starts.cumsum(-1, Kind::Int64);
    let logits = tch::no_grad(|| {
        model.logits(&Inputs { input_ids: ids, position_ids: positions, segment_ids: Some(&segments), varlen: None })
    });
    let diff = max_abs_diff(&logits, &g["packed_logits"]);
    assert!(diff < 1e-4, "packed logits differ by {diff:e}");
}

#[test]
fn stories260k_greedy_from_bos_reproduces_llama2c() {
    let dir = root().join("models/stories260k");
    let model = load(&dir);
    let text =
        std::fs::read_to_string(root().join("tests/golden/model/stories260k/expected_greedy_ids_from_bos_64.txt"))
            .unwrap();
    let expected: Vec<i64> = text.split_whitespace().map(|s| s.parse().unwrap()).collect();
    let ids = generate(&model, &[1], None, Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens: 64, seed: 0 });
    assert_eq!(ids, expected);
}

#[test]
fn pickle_checkpoints_are_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not really").unwrap();
    let err = Checkpoint::open(dir.path()).err().unwrap();
    assert!(err.contains("pickle") && err.contains("pytorch_model.bin"), "{err}");
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes() {
    let dir = root().join("models/stories260k");
    let ckpt = Checkpoint::open(&dir).unwrap();
    let err = ckpt.load("model.norm.weight", &[65], Kind::Float, Device::Cpu).err().unwrap();
    assert!(err.contains("`model.norm.weight`") && err.contains("[64]") && err.contains("[65]"), "{err}");
}

#[test]
fn cached_decoding_equals_rerunning_the_sequence() {
    for dir in [root().join("models/stories260k"), root().join("tests/golden/model/llama_gqa_untied")] {
        let model = load(&dir);
        let ids: Vec<i64> = (0..20).map(|i| (i * 37 + 5) % 120 + 3).collect();
        let full = tch::no_grad(|| {
            let input = Tensor::from_slice(&ids).unsqueeze(0);
            let positions = Tensor::arange(20, (Kind::Int64, Device::Cpu)).unsqueeze(0);
            model.logits(&Inputs { input_ids: &input, position_ids: &positions, segment_ids: None, varlen: None })
        });
        let mut cache = recipe::model::llama::KvCache::new(&model);
        let prefill = tch::no_grad(|| model.logits_cached(&Tensor::from_slice(&ids[..12]).unsqueeze(0), 0, &mut cache));
        let mut diff = (&prefill - full.narrow(1, 0, 12)).abs().max().double_value(&[]);
        for (i, &id) in ids.iter().enumerate().skip(12) {
            let step =
                tch::no_grad(|| model.logits_cached(&Tensor::from_slice(&[id]).unsqueeze(0), i as i64, &mut cache));
            diff = diff.max((&step - full.narrow(1, i as i64, 1)).abs().max().double_value(&[]));
        }
        assert!(diff < 1e-5, "{}: cached decoding differs by {diff:e}", dir.display());
    }
}

#[test]
fn sharded_checkpoints_load_through_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("models/stories260k");
    let tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut map = serde_json::Map::new();
    for (name, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        recipe::model::weights::save(&dir.path().join(name), part).unwrap();
        for (t, _) in part {
            map.insert(t.clone(), name.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let (a, b) = (load(&src), load(dir.path()));
    let ids = Tensor::from_slice(&[1i64, 403, 407, 261, 378]).unsqueeze(0);
    let positions = Tensor::arange(5, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let inputs = Inputs { input_ids: &ids, position_ids: &positions, segment_ids: None, varlen: None };
    assert!(tch::no_grad(|| a.logits(&inputs).equal(&b.logits(&inputs))));
}

#[test]
fn a_16_bit_frozen_base_keeps_the_residual_stream_in_fp32() {
    // LoRA's frozen base stored in bf16 with bf16 matmuls (the CUDA policy): the embedding rows, every
    // layer's output and the final hidden states are fp32 (autocast's policy, as for full
    // fine-tuning), the norm weights stay fp32, and the logits follow the fp32 model closely.
    let dir = root().join("tests/golden/model/llama_gqa_untied");
    let arch = Architecture::from_config_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::BFloat16,
        trainable: Trainable::Nothing,
        quantize: None,
        score_head: false,
    };
    let mut model = CausalLm::load(&arch, &Checkpoint::open(&dir).unwrap(), &opts).unwrap();
    model.compute_kind = Kind::BFloat16;
    assert_eq!(model.layers[0].self_attn.o_proj.weight.kind(), Kind::BFloat16);
    assert_eq!(model.layers[0].post_attention_layernorm.kind(), Kind::Float);
    assert_eq!(model.norm.kind(), Kind::Float);
    let g = golden("llama_gqa_untied");
    let ids = &g["input_ids"];
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
    let inputs = Inputs { input_ids: ids, position_ids: &positions, segment_ids: None, varlen: None };
    assert_eq!(model.embed(ids).kind(), Kind::Float);
    let hidden = tch::no_grad(|| model.hidden_states(&inputs, false));
    assert_eq!(hidden.kind(), Kind::Float);
    let logits = tch::no_grad(|| model.head(&hidden, false));
    let scale = g["logits"].abs().max().double_value(&[]);
    let diff = max_abs_diff(&logits, &g["logits"]) / scale;
    assert!(diff < 5e-2, "bf16 logits differ from fp32 ones by {diff:e} of the largest");
}

#[test]
fn qwen3_q_k_norms_are_saved_trained_and_required() {
    for case in ["qwen3_gqa_tied", "qwen3_untied_bias"] {
        let dir = root().join("tests/golden/model").join(case);
        let arch = Architecture::from_config_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let opts = LoadOptions {
            device: Device::Cpu,
            base_kind: Kind::Float,
            trainable: Trainable::Everything,
            quantize: None,
            score_head: false,
        };
        let model = CausalLm::load(&arch, &ckpt, &opts).unwrap();
        // Full fine-tuning saves, and merging writes, exactly the tensors transformers wrote.
        let mut file: Vec<String> = ckpt.names().map(str::to_string).collect();
        file.sort();
        let mut saved: Vec<String> = model.base_params().into_iter().map(|p| p.name).collect();
        saved.sort();
        assert_eq!(saved, file, "{case}: full fine-tuning's tensors");
        // (Merging an untrained model: with full training a tied head counts as trained and is written.)
        let frozen = load(&dir);
        let mut merged: Vec<String> = frozen.merged_weights().into_iter().map(|d| d.name).collect();
        merged.sort();
        assert_eq!(merged, file, "{case}: merged model's tensors");
        // The per-head norms are trained: the loss reaches them.
        let g = golden(case);
        let ids = &g["input_ids"];
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
        let h = model
            .hidden_states(&Inputs { input_ids: ids, position_ids: &positions, segment_ids: None, varlen: None }, true);
        recipe::exec::objective::next_token_loss_sum(&model.head(&h, true), ids).backward();
        for p in
            model.trainable_params().iter().filter(|p| p.name.contains("_norm.weight") && p.name.contains("self_attn"))
        {
            let grad = p.tensor.grad().abs().max().double_value(&[]);
            assert!(grad > 0.0, "{case}: no gradient reaches {}", p.name);
        }
        assert_eq!(
            model
                .trainable_params()
                .iter()
                .filter(|p| p.name.contains("self_attn.") && p.name.contains("_norm."))
                .count(),
            2 * arch.num_layers as usize,
            "{case}: q_norm and k_norm of every layer train"
        );
    }
    // A Qwen3 checkpoint without its q_norm is refused, naming the tensor.
    let src = root().join("tests/golden/model/qwen3_gqa_tied");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let kept: Vec<(String, Tensor)> = Tensor::read_safetensors(src.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n != "model.layers.1.self_attn.q_norm.weight")
        .collect();
    Tensor::write_safetensors(&kept, dir.path().join("model.safetensors")).unwrap();
    let arch = Architecture::from_config_json(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: Trainable::Nothing,
        quantize: None,
        score_head: false,
    };
    let err = CausalLm::load(&arch, &Checkpoint::open(dir.path()).unwrap(), &opts).err().unwrap();
    assert!(err.contains("model.layers.1.self_attn.q_norm.weight"), "{err}");
}

const PHI3_OLMO2_CASES: [&str; 4] =
    ["phi3_gqa_longrope", "phi3_tied_partial_rotary", "olmo2_gqa", "olmo2_mha_tied_bias"];

#[test]
fn phi3_and_olmo2_random_configs_match_transformers() {
    // Phi-3: fused qkv_proj / gate_up_proj, LongRoPE on its long factors (positions past 16),
    // partial rotary embedding; OLMo 2: post-norms, q/k norms over all heads, attention bias.
    for case in PHI3_OLMO2_CASES {
        check_case(case, &root().join("tests/golden/model").join(case));
    }
}

#[test]
fn phi3_longrope_packed_rows_use_the_short_factors() {
    // Both samples' positions stay below original_max_position_embeddings (16): transformers
    // picks the short factors for this pass, where the unpacked goldens ran on the long ones.
    let dir = root().join("tests/golden/model/phi3_gqa_longrope");
    let model = load(&dir);
    let g = golden("phi3_gqa_longrope");
    let (ids, positions) = (&g["packed_input_ids"], &g["packed_position_ids"]);
    let segments = positions.eq(0).to_kind(Kind::Int64).cumsum(-1, Kind::Int64);
    let logits = tch::no_grad(|| {
        model.logits(&Inputs { input_ids: ids, position_ids: positions, segment_ids: Some(&segments), varlen: None })
    });
    let diff = max_abs_diff(&logits, &g["packed_logits"]);
    eprintln!("phi3_gqa_longrope packed: max |logits - transformers| = {diff:e}");
    assert!(diff < 1e-4, "packed logits differ by {diff:e}");
}

#[test]
fn phi3_and_olmo2_tensors_are_saved_under_their_own_names_and_trained() {
    for case in PHI3_OLMO2_CASES {
        let dir = root().join("tests/golden/model").join(case);
        let arch = Architecture::from_config_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let opts = LoadOptions {
            device: Device::Cpu,
            base_kind: Kind::Float,
            trainable: Trainable::Everything,
            quantize: None,
            score_head: false,
        };
        let model = CausalLm::load(&arch, &ckpt, &opts).unwrap();
        // Full fine-tuning saves, and merging writes, exactly the tensors transformers wrote
        // (fused qkv_proj / gate_up_proj; post_feedforward_layernorm and no input_layernorm).
        let mut file: Vec<String> = ckpt.names().map(str::to_string).collect();
        file.sort();
        let mut saved: Vec<String> = model.base_params().into_iter().map(|p| p.name).collect();
        saved.sort();
        assert_eq!(saved, file, "{case}: full fine-tuning's tensors");
        let mut merged: Vec<String> = load(&dir).merged_weights().into_iter().map(|d| d.name).collect();
        merged.sort();
        assert_eq!(merged, file, "{case}: merged model's tensors");
        let numel: i64 = model.base_params().iter().map(|p| p.tensor.numel() as i64).sum();
        assert_eq!(numel as u64, arch.parameter_counts().total, "{case}: parameter count");
        // Every tensor is reached by the loss's gradient.
        let g = golden(case);
        let ids = &g["input_ids"];
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
        let h = model
            .hidden_states(&Inputs { input_ids: ids, position_ids: &positions, segment_ids: None, varlen: None }, true);
        recipe::exec::objective::next_token_loss_sum(&model.head(&h, true), ids).backward();
        for p in model.trainable_params() {
            let grad = p.tensor.grad().abs().max().double_value(&[]);
            assert!(grad > 0.0, "{case}: no gradient reaches {}", p.name);
        }
    }
}

#[test]
fn a_4_bit_phi3_base_quantizes_each_fused_weight_whole() {
    // bitsandbytes' Linear4bit packs the fused [q + 2 kv, hidden] weight as one tensor: the
    // same blocks as quantizing the checkpoint's qkv_proj / gate_up_proj directly.
    use recipe::model::fused::{GateUpProj, QkvProj};
    use recipe::model::linear::QuantizedWeight;
    use recipe::model::llama::{FourBit, Quantize};
    use recipe::model::nf4::{self, QuantType};
    let dir = root().join("tests/golden/model/phi3_gqa_longrope");
    let arch = Architecture::from_config_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let four = FourBit { quant_type: QuantType::Nf4, double_quant: false, blocksize: 64 };
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: Trainable::Nothing,
        quantize: Some(Quantize::FourBit(four)),
        score_head: false,
    };
    let model = CausalLm::load(&arch, &ckpt, &opts).unwrap();
    let weights: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("model.safetensors")).unwrap().into_iter().collect();
    let layer = &model.layers[0];
    let (QkvProj::Fused { qkv_proj }, FeedForward::Dense(Mlp { gate_up: GateUpProj::Fused { gate_up_proj }, .. })) =
        (&layer.self_attn.qkv, &layer.mlp)
    else {
        panic!("Phi-3 loads fused projections")
    };
    for lin in [qkv_proj, gate_up_proj] {
        let Some(QuantizedWeight::Four(q)) = &lin.quantized else { panic!("{} is not 4-bit", lin.name) };
        let dense = &weights[&format!("{}.weight", lin.name)];
        assert_eq!(q.shape, dense.size(), "{}", lin.name);
        let direct = nf4::quantize(dense, 64, QuantType::Nf4, false);
        assert!(q.packed.equal(&direct.packed) && q.absmax.equal(&direct.absmax), "{}", lin.name);
    }
}

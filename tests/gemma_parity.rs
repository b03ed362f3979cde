//! Gemma 2 and Gemma 3 text against transformers: logits and loss of four random configurations
//! (goldens from scripts/reference/model_goldens.py: soft-caps, sliding windows shorter than the
//! sequence, grouped and ungrouped heads, tied and untied heads, attention bias, Gemma 3's two rope
//! bases and linear rope scaling); packed rows and cached decoding past the window agree with
//! running the samples whole; the sandwich norms and q/k norms are saved, trained and required;
//! config.json is read as transformers reads it (layer types, rope bases, defaults).
#![cfg(feature = "exec")]

use recipe::model::llama::{CausalLm, Inputs, KvCache, LoadOptions, Trainable};
use recipe::model::weights::Checkpoint;
use recipe::plan::arch::{Architecture, Family};
use recipe::plan::model;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const CASES: [&str; 4] = ["gemma2_gqa_tied", "gemma2_untied_bias", "gemma3_gqa_tied", "gemma3_untied_linear_rope"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn case_dir(case: &str) -> PathBuf {
    root().join("tests/golden/model").join(case)
}

fn arch_of(dir: &Path) -> Architecture {
    Architecture::from_config_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn load(dir: &Path, trainable: Trainable) -> CausalLm {
    let opts =
        LoadOptions { device: Device::Cpu, base_kind: Kind::Float, trainable, quantize: None, score_head: false };
    CausalLm::load(&arch_of(dir), &Checkpoint::open(dir).unwrap(), &opts).unwrap()
}

fn golden(case: &str) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(case_dir(case).join("expected.safetensors")).unwrap().into_iter().collect()
}

fn positions(b: i64, t: i64) -> Tensor {
    Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

#[test]
fn random_gemma_configs_match_transformers() {
    for case in CASES {
        let model = load(&case_dir(case), Trainable::Nothing);
        let g = golden(case);
        let ids = &g["input_ids"];
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let pos = positions(b, t);
        let inputs = Inputs { input_ids: ids, position_ids: &pos, segment_ids: None, varlen: None };
        let logits = tch::no_grad(|| model.logits(&inputs));
        let diff = max_abs_diff(&logits, &g["logits"]);
        eprintln!("{case}: max |logits - transformers| = {diff:e}");
        assert!(diff < 1e-4, "{case}: logits differ from transformers by {diff:e}");
        let loss = tch::no_grad(|| {
            let h = model.hidden_states(&inputs, false);
            recipe::exec::objective::next_token_loss_sum(&model.head(&h, false), ids) / (b * (t - 1)) as f64
        });
        let d = (loss.double_value(&[]) - g["loss"].double_value(&[])).abs();
        assert!(d < 1e-5, "{case}: loss differs by {d:e}");
    }
}

#[test]
fn packed_rows_match_separate_samples() {
    // Two samples of 10 and 14 tokens, longer than the windows (5 and 6): the window and the
    // packing mask combine.
    for case in CASES {
        let model = load(&case_dir(case), Trainable::Nothing);
        let ids = Tensor::from_slice(&(0..24).map(|i| (i * 37 + 5) % 120 + 3).collect::<Vec<i64>>()).unsqueeze(0);
        let pos = Tensor::cat(
            &[Tensor::arange(10, (Kind::Int64, Device::Cpu)), Tensor::arange(14, (Kind::Int64, Device::Cpu))],
            0,
        )
        .unsqueeze(0);
        let seg = Tensor::cat(
            &[Tensor::zeros([10], (Kind::Int64, Device::Cpu)), Tensor::ones([14], (Kind::Int64, Device::Cpu))],
            0,
        )
        .unsqueeze(0);
        let packed = tch::no_grad(|| {
            model.logits(&Inputs { input_ids: &ids, position_ids: &pos, segment_ids: Some(&seg), varlen: None })
        });
        let mut diff = 0f64;
        for (start, len) in [(0, 10), (10, 14)] {
            let part = ids.narrow(1, start, len);
            let alone = tch::no_grad(|| {
                model.logits(&Inputs {
                    input_ids: &part,
                    position_ids: &positions(1, len),
                    segment_ids: None,
                    varlen: None,
                })
            });
            diff = diff.max(max_abs_diff(&packed.narrow(1, start, len), &alone));
        }
        assert!(diff < 1e-5, "{case}: packed rows differ from separate samples by {diff:e}");
    }
}

#[test]
fn cached_decoding_past_the_window_equals_rerunning_the_sequence() {
    for case in CASES {
        let model = load(&case_dir(case), Trainable::Nothing);
        let ids: Vec<i64> = (0..20).map(|i| (i * 37 + 5) % 120 + 3).collect();
        let full = tch::no_grad(|| {
            let input = Tensor::from_slice(&ids).unsqueeze(0);
            model.logits(&Inputs {
                input_ids: &input,
                position_ids: &positions(1, 20),
                segment_ids: None,
                varlen: None,
            })
        });
        let mut cache = KvCache::new(&model);
        // The prompt (8 tokens) is already longer than the window; then one token at a time.
        let prefill = tch::no_grad(|| model.logits_cached(&Tensor::from_slice(&ids[..8]).unsqueeze(0), 0, &mut cache));
        let mut diff = max_abs_diff(&prefill, &full.narrow(1, 0, 8));
        for (i, &id) in ids.iter().enumerate().skip(8) {
            let step =
                tch::no_grad(|| model.logits_cached(&Tensor::from_slice(&[id]).unsqueeze(0), i as i64, &mut cache));
            diff = diff.max(max_abs_diff(&step, &full.narrow(1, i as i64, 1)));
        }
        assert!(diff < 1e-5, "{case}: cached decoding differs by {diff:e}");
    }
}

#[test]
fn gemma_norms_are_saved_trained_and_required() {
    for case in CASES {
        let dir = case_dir(case);
        let arch = arch_of(&dir);
        let ckpt = Checkpoint::open(&dir).unwrap();
        let model = load(&dir, Trainable::Everything);
        // Full fine-tuning saves, and merging writes, exactly the tensors transformers wrote.
        let mut file: Vec<String> = ckpt.names().map(str::to_string).collect();
        file.sort();
        let mut saved: Vec<String> = model.base_params().into_iter().map(|p| p.name).collect();
        saved.sort();
        assert_eq!(saved, file, "{case}: full fine-tuning's tensors");
        let frozen = load(&dir, Trainable::Nothing);
        let mut merged: Vec<String> = frozen.merged_weights().into_iter().map(|d| d.name).collect();
        merged.sort();
        assert_eq!(merged, file, "{case}: merged model's tensors");
        let numel: i64 = model.base_params().iter().map(|p| p.tensor.numel() as i64).sum();
        assert_eq!(numel as u64, arch.parameter_counts().total, "{case}: the plan's count is the file's");
        // Every norm trains: the loss reaches it.
        let g = golden(case);
        let ids = &g["input_ids"];
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let pos = positions(b, t);
        let h =
            model.hidden_states(&Inputs { input_ids: ids, position_ids: &pos, segment_ids: None, varlen: None }, true);
        recipe::exec::objective::next_token_loss_sum(&model.head(&h, true), ids).backward();
        let norms: Vec<_> = model.trainable_params().into_iter().filter(|p| p.name.contains("norm.weight")).collect();
        let per_layer = if arch.qk_norm { 6 } else { 4 };
        assert_eq!(norms.len(), per_layer * arch.num_layers as usize + 1, "{case}: norms");
        for p in norms {
            assert!(p.tensor.grad().abs().max().double_value(&[]) > 0.0, "{case}: no gradient reaches {}", p.name);
        }
    }
    // A checkpoint without a sandwich norm is refused, naming the tensor.
    let src = case_dir("gemma2_gqa_tied");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let missing = "model.layers.2.pre_feedforward_layernorm.weight";
    let kept: Vec<(String, Tensor)> = Tensor::read_safetensors(src.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n != missing)
        .collect();
    Tensor::write_safetensors(&kept, dir.path().join("model.safetensors")).unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: Trainable::Nothing,
        quantize: None,
        score_head: false,
    };
    let err = CausalLm::load(&arch_of(&src), &Checkpoint::open(dir.path()).unwrap(), &opts).err().unwrap();
    assert!(err.contains(missing), "{err}");
}

#[test]
fn a_bf16_table_scales_embeddings_by_the_bf16_rounded_root() {
    // transformers multiplies by sqrt(hidden) cast to the table's dtype: sqrt(32) = 5.657 is 5.65625
    // in bf16. The fp32 stream then starts from bf16 products.
    let dir = case_dir("gemma3_gqa_tied");
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::BFloat16,
        trainable: Trainable::Nothing,
        quantize: None,
        score_head: false,
    };
    let model = CausalLm::load(&arch_of(&dir), &Checkpoint::open(&dir).unwrap(), &opts).unwrap();
    let ids = Tensor::from_slice(&[3i64, 77]).unsqueeze(0);
    let got = model.embed(&ids);
    let rows = model.embed_tokens.index_select(0, &ids.squeeze_dim(0));
    let want = (rows * Tensor::from(32f32.sqrt()).to_kind(Kind::BFloat16)).to_kind(Kind::Float).unsqueeze(0);
    assert_eq!(max_abs_diff(&got, &want), 0.0);
    assert_eq!(Tensor::from(32f32.sqrt()).to_kind(Kind::BFloat16).double_value(&[]), 5.65625);
}

#[test]
fn configs_are_read_as_transformers_reads_them() {
    // Gemma 3 1B (transformers 4.x file: sliding_window_pattern 6, rope_local_base_freq).
    let a = model::builtin_architecture("google/gemma-3-1b-it").unwrap();
    let g = a.gemma.as_ref().unwrap();
    assert_eq!(a.family, Family::Gemma3);
    assert_eq!(g.global_layers, vec![5, 11, 17, 23]);
    assert_eq!((g.sliding_window, g.local_rope_theta, a.rope_theta), (512, Some(10_000.0), 1_000_000.0));
    assert_eq!((g.attn_logit_softcapping, g.final_logit_softcapping, a.qk_norm), (None, None, true));
    assert!(a.tie_word_embeddings && a.head_dim == 256);
    // Gemma 2 2B: every second layer global, both soft-caps, no q/k norms.
    let a = model::builtin_architecture("google/gemma-2-2b").unwrap();
    let g = a.gemma.as_ref().unwrap();
    assert_eq!(a.family, Family::Gemma2);
    assert_eq!(g.global_layers, (0..13).map(|i| 2 * i + 1).collect::<Vec<u64>>());
    assert_eq!((g.attn_logit_softcapping, g.final_logit_softcapping), (Some(50.0), Some(30.0)));
    assert!(!a.qk_norm && a.gemma.as_ref().unwrap().local_rope_theta.is_none());
    // Absent keys take Gemma3TextConfig's defaults; a Gemma 3 attention soft-cap is not applied
    // (transformers' Gemma3Attention does not pass it on).
    let a = Architecture::from_config_json(
        r#"{"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 7,
           "num_attention_heads": 4, "vocab_size": 100, "attn_logit_softcapping": 50.0,
           "rope_scaling": {"rope_type": "linear", "factor": 8.0}}"#,
    )
    .unwrap();
    let g = a.gemma.as_ref().unwrap();
    assert_eq!((a.head_dim, g.sliding_window, g.global_layers.clone()), (256, 4096, vec![5]));
    assert_eq!((g.attn_logit_softcapping, g.query_pre_attn_scalar), (None, 256.0));
    assert_eq!(a.rope_scaling.as_ref().map(|r| (r.rope_type.as_str(), r.factor)), Some(("linear", 8.0)));
    // Refused by name: a bidirectional encoder, another activation.
    let bidirectional = r#"{"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "use_bidirectional_attention": true}"#;
    assert!(Architecture::from_config_json(bidirectional).unwrap_err().contains("use_bidirectional_attention"));
    let gelu = r#"{"model_type": "gemma2", "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "hidden_activation": "gelu"}"#;
    assert!(Architecture::from_config_json(gelu).unwrap_err().contains("hidden_activation `gelu`"));
}

#[test]
fn gemma2_plans_eager_attention_and_counts_its_scores() {
    // The Gemma 3 recipe on Gemma 2 2B: soft-capped scores need eager attention, whose s×s scores per
    // head the memory model counts (one layer's with gradient checkpointing, every layer's without).
    // SAFETY: this binary's other tests read no environment.
    unsafe { std::env::set_var("HF_HUB_CACHE", "/nonexistent-recipe-test-cache") };
    let plan = |extra: &[&str]| {
        let mut sets = vec!["base_model=google/gemma-2-2b".to_string()];
        sets.extend(extra.iter().map(|s| s.to_string()));
        let loaded = recipe::recipe::load(Path::new("recipes/gemma3-1b-lora.yaml"), &sets);
        assert!(!loaded.has_errors());
        recipe::plan::compile(&loaded, recipe::plan::PlanOptions::default()).unwrap()
    };
    let scores = |p: &recipe::plan::Plan| {
        p.memory.items.iter().find(|i| i.name == "attention scores (eager)").map(|i| (i.bytes, i.formula.clone()))
    };
    let text = recipe::plan::render_text(&plan(&[]));
    assert!(text.contains("attention  eager attention (soft-capped scores"), "{text}");
    assert!(text.contains("soft-cap attention 50 / logits 30, window 4096 on 13 of 26 layers"), "{text}");
    // 4 rows × 8 heads × 2048² scores × (2 × 2 + 4) bytes, one layer (gradient checkpointing).
    assert_eq!(scores(&plan(&[])).unwrap().0, 4 * 8 * 2048 * 2048 * 8);
    assert_eq!(scores(&plan(&["gradient_checkpointing=false"])).unwrap().0, 26 * 4 * 8 * 2048 * 2048 * 8);
    // Gemma 3 (no attention soft-cap) runs SDPA and materialises no scores.
    let loaded = recipe::recipe::load(Path::new("recipes/gemma3-1b-lora.yaml"), &[]);
    assert!(scores(&recipe::plan::compile(&loaded, recipe::plan::PlanOptions::default()).unwrap()).is_none());
}

//! IA3 and embedding-LoRA parity with peft: for the same base, adapter weights (loaded from peft's
//! own adapter_model.safetensors) and batch, the loss, logits and every trainable gradient match the
//! goldens written by scripts/reference/ia3_goldens.py (logits within 1e-4, loss 1e-5, gradients
//! 1e-4 relative), with and without gradient checkpointing, and the merged weights equal peft's
//! `merge_and_unload` within 1e-5. IA3 over an NF4 (double-quant) base is compared with peft's IA3
//! `Linear4bit` over bitsandbytes. DoRA on the embedding (peft's DoraEmbeddingLayer) likewise.
#![cfg(feature = "exec")]

mod common;

use recipe::model::adapter;
use recipe::model::llama::{CausalLm, FourBit, Inputs, LoadOptions, Quantize, Trainable};
use recipe::model::weights::Checkpoint;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn load_case(case: &str) -> (CausalLm, HashMap<String, Tensor>, Tensor) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/peft_methods").join(case);
    let model = if case.ends_with("_nf4") { load_over_nf4(&dir) } else { common::load_peft_folder(&dir, Kind::Float) };
    let g: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
    let (b, t) = (g["input_ids"].size()[0], g["input_ids"].size()[1]);
    let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
    (model, g, positions)
}

/// The adapter folder's base quantized as the goldens' BitsAndBytesConfig (NF4, double quant,
/// blocksize 64, fp32 compute), with the adapter loaded.
fn load_over_nf4(dir: &std::path::Path) -> CausalLm {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cfg = adapter::read_config(dir).unwrap();
    let base = root.join(&cfg.base_model);
    let arch =
        recipe::plan::arch::Architecture::from_config_json(&std::fs::read_to_string(base.join("config.json")).unwrap())
            .unwrap();
    let nf4 = FourBit { quant_type: recipe::model::nf4::QuantType::Nf4, double_quant: true, blocksize: 64 };
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: cfg.trainable,
        quantize: Some(Quantize::FourBit(nf4)),
        score_head: false,
    };
    let model = CausalLm::load(&arch, &Checkpoint::open(&base).unwrap(), &opts).unwrap();
    let file = dir.join("adapter_model.safetensors");
    adapter::load_trainable(&model, &Checkpoint::open_files(dir, &[file]).unwrap()).unwrap();
    model
}

fn check(case: &str, checkpointing: bool) {
    let (model, g, positions) = load_case(case);
    common::assert_matches_parity_golden(case, &model, &g, &positions, checkpointing);
}

/// recipe's merged weights (`merged_weights`, what `recipe merge` writes) against peft's.
fn check_merge(case: &str) {
    let (model, g, _) = load_case(case);
    let merged: HashMap<String, Tensor> =
        model.merged_weights().iter().map(|d| (d.name.clone(), d.tensor().to_kind(Kind::Float))).collect();
    let mut compared = 0;
    let mut worst = 0f64;
    for (key, expected) in g.iter().filter(|(k, _)| k.starts_with("merged.")) {
        let name = key.trim_start_matches("merged.");
        let d = (&merged[name] - expected).abs().max().double_value(&[]);
        worst = worst.max(d);
        assert!(d < 1e-5, "{case}: merged {name} differs from peft's by {d:e}");
        compared += 1;
    }
    assert!(compared >= 3, "{case}: only {compared} merged tensors in the goldens");
    eprintln!("{case}: {compared} merged tensors, worst difference from peft's merge_and_unload {worst:e}");
}

#[test]
fn ia3_logits_and_gradients_match_peft() {
    check("stories260k_ia3", false);
    check("qwen2_ia3_bias", false);
}

#[test]
fn ia3_over_a_4bit_base_matches_peft_over_bitsandbytes() {
    check("stories260k_ia3_nf4", false);
}

#[test]
fn ia3_with_gradient_checkpointing_gives_the_same_gradients() {
    check("qwen2_ia3_bias", true);
}

#[test]
fn ia3_reads_peft_defaults_and_merges_as_peft() {
    let (model, _, _) = load_case("stories260k_ia3");
    let Trainable::Ia3 { targets, feedforward, .. } = &model.trainable else { panic!("not IA3") };
    assert_eq!((targets.join(","), feedforward.join(",")), ("down_proj,k_proj,v_proj".into(), "down_proj".into()));
    check_merge("stories260k_ia3");
    // q/k/v biases: the output scale folds into the bias too.
    check_merge("qwen2_ia3_bias");
}

#[test]
fn embedding_lora_logits_and_gradients_match_peft() {
    check("stories260k_embed", false);
    check("llama_untied_embed", false);
}

#[test]
fn embedding_lora_with_gradient_checkpointing_gives_the_same_gradients() {
    check("stories260k_embed", true);
}

#[test]
fn embedding_lora_merges_as_peft() {
    check_merge("stories260k_embed");
    check_merge("llama_untied_embed");
}

#[test]
fn switching_adapters_off_gives_the_base_model() {
    // The model-wide switch (peft's disable_adapter), which gives preference training its
    // reference model: IA3 vectors and the embedding's LoRA both step aside.
    for case in ["stories260k_ia3", "stories260k_embed", "qwen2_ia3_bias"] {
        let (model, g, positions) = load_case(case);
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/peft_methods").join(case);
        let base_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(adapter::read_config(&dir).unwrap().base_model);
        let arch = recipe::plan::arch::Architecture::from_config_json(
            &std::fs::read_to_string(base_dir.join("config.json")).unwrap(),
        )
        .unwrap();
        let opts = LoadOptions {
            device: Device::Cpu,
            base_kind: Kind::Float,
            trainable: Trainable::Nothing,
            quantize: None,
            score_head: false,
        };
        let base = CausalLm::load(&arch, &Checkpoint::open(&base_dir).unwrap(), &opts).unwrap();
        let inputs = Inputs { input_ids: &g["input_ids"], position_ids: &positions, segment_ids: None, varlen: None };
        let off = tch::no_grad(|| model.without_adapters(|| model.logits(&inputs)));
        let plain = tch::no_grad(|| base.logits(&inputs));
        assert!(off.equal(&plain), "{case}: adapters off differs from the base");
        let on = tch::no_grad(|| model.logits(&inputs));
        assert!((on - plain).abs().max().double_value(&[]) > 1e-3, "{case}: the adapter changes nothing");
    }
}

#[test]
fn ia3_and_embedding_lora_adapters_switch_over_one_base() {
    // Multi-adapter serving (model::serving): an IA3 and an embedding-LoRA adapter attached to one
    // stories260k base, each switched in, gives the logits of its folder loaded alone.
    use recipe::model::serving::Adapters;
    let (ia3_alone, g, positions) = load_case("stories260k_ia3");
    let (embed_alone, _, _) = load_case("stories260k_embed");
    let inputs = Inputs { input_ids: &g["input_ids"], position_ids: &positions, segment_ids: None, varlen: None };
    let expected = |m: &CausalLm| tch::no_grad(|| m.logits(&inputs));
    let (want_ia3, want_embed) = (expected(&ia3_alone), expected(&embed_alone));
    let base_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/stories260k");
    let arch = recipe::plan::arch::Architecture::from_config_json(
        &std::fs::read_to_string(base_dir.join("config.json")).unwrap(),
    )
    .unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: Trainable::Nothing,
        quantize: None,
        score_head: false,
    };
    let base = CausalLm::load(&arch, &Checkpoint::open(&base_dir).unwrap(), &opts).unwrap();
    let mut adapters = Adapters::new(base, "base");
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/peft_methods");
    adapters.attach("ia3", &golden.join("stories260k_ia3")).unwrap();
    adapters.attach("embed", &golden.join("stories260k_embed")).unwrap();
    for (name, want) in [("ia3", &want_ia3), ("embed", &want_embed), ("ia3", &want_ia3)] {
        adapters.set_adapter(Some(name)).unwrap();
        let got = expected(&adapters.model);
        assert!(got.equal(want), "{name}: switched-in logits differ from the folder loaded alone");
    }
    adapters.set_adapter(None).unwrap();
    let plain = expected(&adapters.model);
    assert!((plain - &want_embed).abs().max().double_value(&[]) > 1e-3, "the base alone has no adapter");
}

#[test]
fn dora_on_the_embedding_matches_peft_and_merges_as_peft() {
    // peft's DoraEmbeddingLayer: a magnitude per hidden feature over the embedding's LoRA pair.
    check("stories260k_dora_embed", false);
    check("stories260k_dora_embed", true);
    check_merge("stories260k_dora_embed");
}

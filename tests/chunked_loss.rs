//! The chunked loss (head and cross-entropy over chunks of tokens, each chunk's backward pass at
//! once; exec/objective.rs) gives the plain loss over whole logits: the summed loss and every
//! trainable gradient within 1e-5 relative in fp32, on random Llama configs with tied and untied
//! heads, LoRA on the head (and every linear), a head trained in full (modules_to_save), full
//! fine-tuning, with and without gradient checkpointing, masked labels (-100) and two
//! micro-batches accumulated under the global label count, as the loop divides them.
#![cfg(feature = "exec")]

mod common;

use recipe::exec::objective::{self, DeviceBatch, Objective, Supervised};
use recipe::model::llama::{CausalLm, Inputs, LoadOptions, Trainable};
use recipe::model::weights::Checkpoint;
use tch::{Device, Kind, Tensor};

fn model(dir: &std::path::Path, tied: bool, trainable: Trainable) -> CausalLm {
    common::random_llama(
        dir,
        &serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 700, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": tied,
            "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"
        }),
    );
    let arch = recipe::plan::model::local_architecture(dir).unwrap();
    let opts =
        LoadOptions { device: Device::Cpu, base_kind: Kind::Float, trainable, quantize: None, score_head: false };
    let model = CausalLm::load(&arch, &Checkpoint::open(dir).unwrap(), &opts).unwrap();
    // LoRA's B starts at zero, which would leave A's gradients zero: give every adapter weight values.
    tch::no_grad(|| {
        for p in model.trainable_params() {
            if p.name.contains("lora_") {
                let mut t = p.tensor.shallow_clone();
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
            }
        }
    });
    model
}

fn lora(targets: &[&str], modules_to_save: &[&str]) -> Trainable {
    Trainable::Lora {
        targets: targets.iter().map(|s| s.to_string()).collect(),
        parameters: vec![],
        r: 4,
        scaling: 2.0,
        dropout: 0.0,
        dora: false,
        modules_to_save: modules_to_save.iter().map(|s| s.to_string()).collect(),
    }
}

const ALL_LINEAR: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// Two micro-batches with masked labels (the first tokens of each row, and a padded tail).
fn batches() -> Vec<(Tensor, Tensor, Tensor)> {
    // Ids from arithmetic, not the global generator other tests' threads draw from meanwhile.
    (0..2)
        .map(|m| {
            let (b, t) = (3, 17 + m);
            let ids: Vec<i64> = (0..b * t).map(|i| (i * 37 + m * 11 + 5) % 697 + 3).collect();
            let ids = Tensor::from_slice(&ids).view([b, t]);
            let labels = ids.copy();
            let _ = labels.narrow(1, 0, 4).fill_(-100);
            let _ = labels.get(1).narrow(0, t - 5, 5).fill_(-100);
            let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
            (ids, labels, positions)
        })
        .collect()
}

/// The summed loss of both micro-batches and every trainable gradient, under `objective`.
fn run(model: &CausalLm, objective: &dyn Objective, checkpointing: bool) -> (f64, Vec<(String, Tensor)>) {
    let params = model.trainable_params();
    for p in &params {
        let mut g = p.tensor.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let batches = batches();
    let counted: i64 = batches
        .iter()
        .map(|(_, l, _)| l.narrow(1, 1, l.size()[1] - 1).ne(-100).sum(Kind::Int64).int64_value(&[]))
        .sum();
    let mut loss = 0.0;
    for (ids, labels, positions) in &batches {
        let inputs = Inputs { input_ids: ids, position_ids: positions, segment_ids: None, varlen: None };
        let batch = DeviceBatch::new(&inputs, labels);
        let sums = objective::forward_backward(model, objective, &batch, counted as f64, checkpointing, &|_| {});
        loss += sums.loss.double_value(&[]);
    }
    (loss / counted as f64, params.into_iter().map(|p| (p.name, p.tensor.grad().copy())).collect())
}

fn same_as_plain(model: &CausalLm, case: &str) {
    // 3 rows × 16 predicted tokens = 48 (then 51): chunks of 7 leave a shorter last chunk.
    let chunked = Supervised { tokens_per_chunk: Some(7), virtual_tokens: 0 };
    for checkpointing in [false, true] {
        let (plain_loss, plain_grads) = run(model, &Supervised::WHOLE, checkpointing);
        let (loss, grads) = run(model, &chunked, checkpointing);
        let dl = (loss - plain_loss).abs() / plain_loss.abs();
        assert!(dl < 1e-5, "{case}: loss {loss} vs plain {plain_loss} ({dl:e} relative)");
        let mut worst = 0f64;
        assert!(!grads.is_empty());
        for ((name, g), (_, plain)) in grads.iter().zip(&plain_grads) {
            assert!(g.defined() && plain.defined(), "{case}: {name} has no gradient");
            let scale = plain.abs().max().double_value(&[]);
            assert!(scale > 0.0, "{case}: {name}'s gradient is zero");
            let rel = (g - plain).abs().max().double_value(&[]) / scale;
            worst = worst.max(rel);
            assert!(rel < 1e-5, "{case} (checkpointing {checkpointing}): gradient of {name} differs by {rel:e}");
        }
        eprintln!("{case} (checkpointing {checkpointing}): loss {dl:e}, worst gradient {worst:e} relative");
        // Evaluation by the same chunks, without gradients.
        let (ids, labels, positions) = &batches()[0];
        let inputs = Inputs { input_ids: ids, position_ids: positions, segment_ids: None, varlen: None };
        let batch = DeviceBatch::new(&inputs, labels);
        let plain = objective::loss_sum_no_grad(model, &Supervised::WHOLE, &batch).loss.double_value(&[]);
        let eval = objective::loss_sum_no_grad(model, &chunked, &batch).loss.double_value(&[]);
        assert!((eval - plain).abs() / plain < 1e-5, "{case}: evaluation {eval} vs {plain}");
    }
}

#[test]
fn chunked_loss_equals_the_plain_loss_with_lora_on_a_tied_head() {
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<&str> = ALL_LINEAR.iter().copied().chain(["lm_head"]).collect();
    same_as_plain(&model(dir.path(), true, lora(&targets, &[])), "tied head, LoRA on every linear and the head");
}

#[test]
fn chunked_loss_equals_the_plain_loss_with_lora_on_an_untied_head() {
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<&str> = ALL_LINEAR.iter().copied().chain(["lm_head"]).collect();
    same_as_plain(&model(dir.path(), false, lora(&targets, &[])), "untied head, LoRA on every linear and the head");
    // LoRA on the head alone: the hidden states need no gradient, the head's adapter does.
    let dir = tempfile::tempdir().unwrap();
    same_as_plain(&model(dir.path(), false, lora(&["lm_head"], &[])), "untied head, LoRA on the head alone");
}

#[test]
fn chunked_loss_equals_the_plain_loss_with_a_head_trained_in_full() {
    let dir = tempfile::tempdir().unwrap();
    same_as_plain(&model(dir.path(), true, lora(&ALL_LINEAR, &["lm_head"])), "tied head in modules_to_save");
}

#[test]
fn chunked_loss_equals_the_plain_loss_in_full_fine_tuning() {
    for tied in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        same_as_plain(&model(dir.path(), tied, Trainable::Everything), &format!("full fine-tuning, tied {tied}"));
    }
}

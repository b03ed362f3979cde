//! DoRA on the input embedding, as peft's `DoraEmbeddingLayer` (`use_dora` with `embed_tokens`
//! targeted): on top of the embedding's LoRA pair (A [r, vocab], B [hidden, r]), a trainable
//! magnitude m [hidden], one per embedding feature. The weight is E' = E + s·(B A)ᵀ [vocab, hidden];
//! its norm is taken per hidden feature over the vocabulary (peft transposes the embedding,
//! `fan_in_fan_out`), detached as DoRA's paper suggests, and a lookup gives
//! (m / ‖E'‖) ⊙ E'[ids]. The magnitude starts at ‖E‖ (A is zero at peft's init), so step 0 is the
//! base model.

use super::linear::Lora;
use tch::{Kind, Tensor};

/// ‖E + s·(B A)ᵀ‖ per hidden feature [hidden], fp32, without a graph.
fn weight_norm(embedding: &Tensor, lora: &Lora) -> Tensor {
    tch::no_grad(|| {
        let delta = lora.b.matmul(&lora.a).tr() * lora.scaling;
        (embedding.to_kind(Kind::Float) + delta).norm_scalaropt_dim(2, [0], false)
    })
}

/// peft's initial magnitude: the weight norm with the LoRA pair as it starts.
pub fn initial_magnitude(embedding: &Tensor, lora: &Lora) -> Tensor {
    weight_norm(embedding, lora).set_requires_grad(true)
}

/// The embedded rows with DoRA: `base` are E[ids] in fp32 [B, T, H], `update` the LoRA lookup
/// s·(Aᵀ[ids] Bᵀ); both are rescaled by m / ‖E'‖.
pub fn lookup(embedding: &Tensor, lora: &Lora, magnitude: &Tensor, base: Tensor, update: Tensor) -> Tensor {
    let scale = magnitude / weight_norm(embedding, lora);
    &scale * base + &scale * update
}

/// peft's merge: (m / ‖E'‖) ⊙ E', a row-broadcast over the vocabulary, in fp32.
pub fn merged(embedding: &Tensor, lora: &Lora, magnitude: &Tensor) -> Tensor {
    let delta = lora.b.matmul(&lora.a).tr() * lora.scaling;
    let weight = embedding.to_kind(Kind::Float) + delta;
    (magnitude / weight_norm(embedding, lora)).view([1, -1]) * weight
}

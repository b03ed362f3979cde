//! peft's PrefixEncoder with `prefix_projection`: prefix tuning's keys and values reparameterized
//! through a two-layer MLP, embedding [N, token_dim] → Linear(token_dim, encoder_hidden_size) →
//! tanh → Linear(encoder_hidden_size, layers × 2 × token_dim), token_dim being the key/value
//! heads' width. The MLP's output is what the layers attend to, and what peft saves (as
//! `prompt_embeddings`, the same tensor a prefix trained without projection has), so an adapter
//! trained this way loads as plain keys and values. Training needs the MLP's own tensors, which
//! recipe names as peft's model does (`prompt_encoder.default.…`) and keeps beside the adapter in
//! [`ENCODER_FILE`] so a checkpoint resumes.

use tch::{Device, Kind, Tensor};

/// The file holding the MLP's trained tensors next to `adapter_model.safetensors` (peft writes only
/// the MLP's output, which cannot be turned back into the MLP).
pub const ENCODER_FILE: &str = "prefix_encoder.safetensors";

/// The MLP's trainable tensors (fp32).
pub struct PrefixEncoder {
    /// [N, token_dim] (`embedding.weight`).
    pub embedding: Tensor,
    /// [encoder_hidden_size, token_dim] and [encoder_hidden_size] (`transform.0`).
    pub hidden_weight: Tensor,
    pub hidden_bias: Tensor,
    /// [layers × 2 × token_dim, encoder_hidden_size] and [layers × 2 × token_dim] (`transform.2`).
    pub out_weight: Tensor,
    pub out_bias: Tensor,
}

impl PrefixEncoder {
    /// A fresh encoder initialised as torch's modules are: the embedding normal(0, 1), each linear
    /// layer's weight and bias uniform in ±1/sqrt(fan_in) (kaiming-uniform with a = sqrt(5)).
    pub fn new(n: i64, token_dim: i64, hidden: i64, width: i64, device: Device) -> PrefixEncoder {
        let uniform = |shape: &[i64], fan_in: i64| {
            let bound = 1.0 / (fan_in as f64).sqrt();
            Tensor::empty(shape, (Kind::Float, device)).uniform_(-bound, bound).set_requires_grad(true)
        };
        PrefixEncoder {
            embedding: Tensor::empty([n, token_dim], (Kind::Float, device)).normal_(0.0, 1.0).set_requires_grad(true),
            hidden_weight: uniform(&[hidden, token_dim], token_dim),
            hidden_bias: uniform(&[hidden], token_dim),
            out_weight: uniform(&[width, hidden], hidden),
            out_bias: uniform(&[width], hidden),
        }
    }

    /// The keys and values [N, layers × 2 × token_dim], as peft's `PrefixEncoder.forward` over
    /// the virtual token ids 0..N.
    pub fn forward(&self) -> Tensor {
        self.embedding
            .linear(&self.hidden_weight, Some(&self.hidden_bias))
            .tanh()
            .linear(&self.out_weight, Some(&self.out_bias))
    }

    pub fn num_virtual_tokens(&self) -> i64 {
        self.embedding.size()[0]
    }

    /// The trainable tensors under their names in peft's model (`named_parameters` of a
    /// PeftModel with one adapter, `default`).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let p = "prompt_encoder.default";
        [
            ("embedding.weight", &self.embedding),
            ("transform.0.weight", &self.hidden_weight),
            ("transform.0.bias", &self.hidden_bias),
            ("transform.2.weight", &self.out_weight),
            ("transform.2.bias", &self.out_bias),
        ]
        .into_iter()
        .map(|(name, t)| (format!("{p}.{name}"), t.shallow_clone()))
        .collect()
    }
}

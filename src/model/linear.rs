//! The one linear layer type: a base weight (frozen under an adapter, trainable in full
//! fine-tuning) with an optional bias and an optional LoRA pair on top. The layer owns its base
//! weight, as in torchtune; a quantized base (the QLoRA issue) is another variant of `base`.

use tch::Tensor;

pub struct Linear {
    /// Hugging Face module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

/// `y = x Wᵀ + b + scaling · B(A(dropout(x)))`, peft's LoRA.
pub struct Lora {
    /// [r, in_features]
    pub a: Tensor,
    /// [out_features, r], zero at initialisation so step 0 is the base model.
    pub b: Tensor,
    pub scaling: f64,
    pub dropout: f64,
}

impl Linear {
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let kind = x.kind();
        let weight = self.weight.to_kind(kind);
        let y = x.linear(&weight, self.bias.as_ref().map(|b| b.to_kind(kind)));
        match &self.lora {
            None => y,
            Some(lora) => {
                let x = if train && lora.dropout > 0.0 { x.dropout(lora.dropout, true) } else { x.shallow_clone() };
                let a = lora.a.to_kind(kind);
                let b = lora.b.to_kind(kind);
                y + x.linear::<Tensor>(&a, None).linear::<Tensor>(&b, None) * lora.scaling
            }
        }
    }

    /// W + scaling · B A, the weight with the adapter folded in.
    pub fn merged_weight(&self) -> Tensor {
        match &self.lora {
            None => self.weight.detach(),
            Some(l) => {
                let delta = l.b.to_kind(tch::Kind::Float).matmul(&l.a.to_kind(tch::Kind::Float)) * l.scaling;
                (self.weight.to_kind(tch::Kind::Float) + delta).to_kind(self.weight.kind()).detach()
            }
        }
    }
}

//! The one linear layer type: a base weight (frozen under an adapter, trainable in full
//! fine-tuning) with an optional bias and an optional adapter on top (LoRA today; DoRA, IA3 and
//! other methods are further `Adapter` variants, not further layer types). The layer owns its base
//! weight, as in torchtune; the base is dense, NF4/FP4-quantized or LLM.int8-quantized (QLoRA is
//! LoRA over a quantized base, not a second model). A quantized base is dequantized to the compute
//! dtype for each matmul, as bitsandbytes' CPU path does.

use super::int8::{self, Int8};
use super::nf4::{self, Quantized4};
use tch::{Kind, Tensor};

/// A quantized base weight.
pub enum QuantizedWeight {
    /// NF4 / FP4 (load_in_4bit).
    Four(Quantized4),
    /// Row-wise int8 (load_in_8bit).
    Eight(Int8),
}

impl QuantizedWeight {
    /// The weight for a matmul in `kind`.
    pub fn matmul_weight(&self, kind: Kind) -> Tensor {
        match self {
            QuantizedWeight::Four(q) => nf4::dequantize(q, kind),
            QuantizedWeight::Eight(q) => int8::matmul_weight(q, kind),
        }
    }

    /// The dequantized weight for merging and saving (transformers' / peft's formula).
    pub fn dequantize(&self, kind: Kind) -> Tensor {
        match self {
            QuantizedWeight::Four(q) => nf4::dequantize(q, kind),
            QuantizedWeight::Eight(q) => int8::dequantize(q, kind),
        }
    }

    /// The shape the weight had before quantizing.
    pub fn shape(&self) -> Vec<i64> {
        match self {
            QuantizedWeight::Four(q) => q.shape.clone(),
            QuantizedWeight::Eight(q) => q.cb.size(),
        }
    }

    /// The dtype the weight had before quantizing.
    pub fn dtype(&self) -> Kind {
        match self {
            QuantizedWeight::Four(q) => q.dtype,
            QuantizedWeight::Eight(q) => q.dtype,
        }
    }

    pub fn storage_bytes(&self) -> i64 {
        match self {
            QuantizedWeight::Four(q) => q.storage_bytes(),
            QuantizedWeight::Eight(q) => q.storage_bytes(),
        }
    }

    /// The tensors transformers' bitsandbytes serialization stores for weight `name`.
    pub fn to_tensors(&self, name: &str) -> Vec<(String, Tensor)> {
        match self {
            QuantizedWeight::Four(q) => super::bnb::to_tensors(name, q),
            QuantizedWeight::Eight(q) => int8::to_tensors(name, q),
        }
    }
}

pub struct Linear {
    /// Hugging Face module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    /// The dense base weight; an empty tensor when the base is quantized.
    pub weight: Tensor,
    /// The quantized base weight (load_in_4bit / load_in_8bit, or a pre-quantized checkpoint).
    pub quantized: Option<QuantizedWeight>,
    pub bias: Option<Tensor>,
    pub adapter: Option<Adapter>,
}

/// A trainable adapter on a frozen linear layer.
pub enum Adapter {
    Lora(Lora),
}

impl Adapter {
    /// The layer's output with the adapter applied, from the input `x` and the base output `y`.
    fn forward(&self, x: &Tensor, y: Tensor, train: bool) -> Tensor {
        match self {
            Adapter::Lora(lora) => {
                let kind = x.kind();
                let x = if train && lora.dropout > 0.0 { x.dropout(lora.dropout, true) } else { x.shallow_clone() };
                let a = lora.a.to_kind(kind);
                let b = lora.b.to_kind(kind);
                y + x.linear::<Tensor>(&a, None).linear::<Tensor>(&b, None) * lora.scaling
            }
        }
    }

    /// The fp32 base weight with the adapter folded in.
    fn merge(&self, base: Tensor) -> Tensor {
        match self {
            Adapter::Lora(l) => base + l.b.to_kind(Kind::Float).matmul(&l.a.to_kind(Kind::Float)) * l.scaling,
        }
    }

    /// The trainable tensors under peft's suffixes (`lora_A.weight`, ...).
    pub fn tensors(&self) -> Vec<(&'static str, Tensor)> {
        match self {
            Adapter::Lora(l) => vec![("lora_A.weight", l.a.shallow_clone()), ("lora_B.weight", l.b.shallow_clone())],
        }
    }
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
    /// The base weight in `kind` (dequantized for a quantized base).
    pub fn base_weight(&self, kind: Kind) -> Tensor {
        match &self.quantized {
            Some(q) => q.matmul_weight(kind),
            None => self.weight.to_kind(kind),
        }
    }

    /// `adapters`: false computes the base layer alone (the model-wide switch,
    /// `CausalLm::without_adapters`, as peft's `disable_adapter`).
    pub fn forward(&self, x: &Tensor, train: bool, adapters: bool) -> Tensor {
        let kind = x.kind();
        let weight = self.base_weight(kind);
        let y = x.linear(&weight, self.bias.as_ref().map(|b| b.to_kind(kind)));
        match &self.adapter {
            Some(adapter) if adapters => adapter.forward(x, y, train),
            _ => y,
        }
    }

    /// W + scaling · B A, the weight with the adapter folded in.
    /// A quantized base comes out dequantized, in its original dtype.
    pub fn merged_weight(&self) -> Tensor {
        let kind = self.quantized.as_ref().map_or_else(|| self.weight.kind(), QuantizedWeight::dtype);
        let base = match &self.quantized {
            Some(q) => q.dequantize(Kind::Float),
            None => self.weight.to_kind(Kind::Float),
        };
        match &self.adapter {
            None => base.to_kind(kind).detach(),
            Some(adapter) => adapter.merge(base).to_kind(kind).detach(),
        }
    }
}

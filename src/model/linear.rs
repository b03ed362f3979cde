//! The one linear layer type: a base weight (frozen under an adapter, trainable in full
//! fine-tuning) with an optional bias and an optional adapter on top (LoRA, DoRA, IA3; further
//! methods are further `Adapter` variants, not further layer types). The layer owns its base
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
    /// Row-wise int8 rows of a mixture of experts' fused parameter (Axolotl's
    /// `quantize_moe_experts` with load_in_8bit, its `Bnb8bitParametrization`): every use takes
    /// `int8_vectorwise_dequant`'s fp32 weight, cast to the compute dtype (no int8 matmul).
    ExpertEight(Int8),
}

impl QuantizedWeight {
    /// The weight for a matmul in `kind`.
    pub fn matmul_weight(&self, kind: Kind) -> Tensor {
        match self {
            QuantizedWeight::Four(q) => nf4::dequantize(q, kind),
            QuantizedWeight::Eight(q) => int8::matmul_weight(q, kind),
            QuantizedWeight::ExpertEight(q) => int8::dequantize(q, kind),
        }
    }

    /// The dequantized weight for merging and saving (transformers' / peft's formula).
    pub fn dequantize(&self, kind: Kind) -> Tensor {
        match self {
            QuantizedWeight::Four(q) => nf4::dequantize(q, kind),
            QuantizedWeight::Eight(q) | QuantizedWeight::ExpertEight(q) => int8::dequantize(q, kind),
        }
    }

    /// The shape the weight had before quantizing.
    pub fn shape(&self) -> Vec<i64> {
        match self {
            QuantizedWeight::Four(q) => q.shape.clone(),
            QuantizedWeight::Eight(q) | QuantizedWeight::ExpertEight(q) => q.cb.size(),
        }
    }

    /// The dtype the weight had before quantizing.
    pub fn dtype(&self) -> Kind {
        match self {
            QuantizedWeight::Four(q) => q.dtype,
            QuantizedWeight::Eight(q) | QuantizedWeight::ExpertEight(q) => q.dtype,
        }
    }

    pub fn storage_bytes(&self) -> i64 {
        match self {
            QuantizedWeight::Four(q) => q.storage_bytes(),
            QuantizedWeight::Eight(q) | QuantizedWeight::ExpertEight(q) => q.storage_bytes(),
        }
    }

    /// The tensors transformers' bitsandbytes serialization stores for weight `name`.
    pub fn to_tensors(&self, name: &str) -> Vec<(String, Tensor)> {
        match self {
            QuantizedWeight::Four(q) => super::bnb::to_tensors(name, q),
            QuantizedWeight::Eight(q) | QuantizedWeight::ExpertEight(q) => int8::to_tensors(name, q),
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
    /// A zero tensor added to the base weight while EWC estimates its Fisher information
    /// (exec/ewc.rs): its gradient is the gradient with respect to the base weight, which a frozen
    /// or quantized base does not have itself.
    pub probe: std::cell::RefCell<Option<Tensor>>,
    /// Quantization-aware training's fake quantizers (`qat`), applied while they are enabled.
    pub qat: Option<Box<super::qat::FakeQuant>>,
}

/// A trainable adapter on a frozen linear layer.
pub enum Adapter {
    Lora(Lora),
    /// DoRA: LoRA plus a trainable magnitude per output row (peft's `use_dora`).
    Dora(Dora),
    /// IA3: a trainable scale per output (or, feed-forward, input) feature.
    Ia3(Ia3),
}

impl Adapter {
    /// The layer's output with the adapter applied, from the input `x`, the base output `y`
    /// (bias included) and the layer (DoRA reads its base weight and bias).
    fn forward(&self, layer: &Linear, x: &Tensor, y: Tensor, train: bool) -> Tensor {
        match self {
            Adapter::Lora(lora) => {
                let kind = x.kind();
                let x = if train && lora.dropout > 0.0 { x.dropout(lora.dropout, true) } else { x.shallow_clone() };
                y + lora.delta(&x, kind)
            }
            Adapter::Dora(dora) => dora.forward(layer, x, y, train),
            // The feed-forward case scales the input before the matmul (`Linear::forward`).
            // peft multiplies by the fp32 vector (type promotion) and casts back to the output's dtype.
            Adapter::Ia3(ia3) => (y * ia3.l.flatten(0, -1)).to_kind(x.kind()),
        }
    }

    /// The fp32 base weight with the adapter folded in.
    fn merge(&self, base: Tensor) -> Tensor {
        match self {
            Adapter::Lora(l) => base + l.delta_weight(),
            Adapter::Dora(d) => {
                // peft's DoraLinearVariant.merge: (m / ||W + ΔW||) · (W + ΔW), the norm of the unmerged base.
                let w = base + d.lora.delta_weight();
                let norm = row_norm(&w);
                (d.magnitude.to_kind(Kind::Float) / norm).unsqueeze(1) * w
            }
            // peft's IA3 merge: W * l, with l [out, 1] (diag(l)·W) or, feed-forward, [1, in] (W·diag(l)).
            Adapter::Ia3(ia3) => base * ia3.l.to_kind(Kind::Float),
        }
    }

    /// The trainable tensors under peft's suffixes (`lora_A.weight`, ...).
    pub fn tensors(&self) -> Vec<(&'static str, Tensor)> {
        match self {
            Adapter::Lora(l) => l.tensors(),
            Adapter::Dora(d) => {
                let mut out = d.lora.tensors();
                out.push(("lora_magnitude_vector", d.magnitude.shallow_clone()));
                out
            }
            Adapter::Ia3(ia3) => vec![("ia3_l", ia3.l.shallow_clone())],
        }
    }
}

/// IA3 as peft computes it (tuners/ia3/layer.py, `Linear.forward`): `y = base(x) · l` (the bias
/// scaled too), or for a feed-forward module `y = base(x · l)`. `l` starts at ones, so step 0 is the
/// base model.
pub struct Ia3 {
    /// fp32, in peft's shape: [out_features, 1], or [1, in_features] for a feed-forward module.
    pub l: Tensor,
    pub feedforward: bool,
}

impl Ia3 {
    /// peft's init (`init_ia3_weights`): ones, trainable.
    pub fn new(fan_in: i64, fan_out: i64, feedforward: bool, device: tch::Device) -> Ia3 {
        let shape = if feedforward { [1, fan_in] } else { [fan_out, 1] };
        Ia3 { l: Tensor::ones(shape, (Kind::Float, device)).set_requires_grad(true), feedforward }
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

impl Lora {
    /// `scaling · B(A(x))` in `kind` (x already through dropout).
    fn delta(&self, x: &Tensor, kind: Kind) -> Tensor {
        x.linear::<Tensor>(&self.a.to_kind(kind), None).linear::<Tensor>(&self.b.to_kind(kind), None) * self.scaling
    }

    /// `scaling · B A` in fp32 (peft's get_delta_weight).
    fn delta_weight(&self) -> Tensor {
        self.b.to_kind(Kind::Float).matmul(&self.a.to_kind(Kind::Float)) * self.scaling
    }

    fn tensors(&self) -> Vec<(&'static str, Tensor)> {
        vec![("lora_A.weight", self.a.shallow_clone()), ("lora_B.weight", self.b.shallow_clone())]
    }
}

/// Weight-decomposed LoRA as peft 0.x computes it (tuners/lora/dora.py, `DoraLinearLayer`):
/// with `n = ||W + scaling · B A||` per output row, computed from the dequantized base and
/// detached (DoRA paper §4.3: the norm is a constant for the backward pass),
/// `out = base(x) + (m/n − 1) · base'(x) + (m/n) · scaling · B(A(dropout(x)))`, where `base'(x)`
/// is the base output without its bias, and with active dropout the base matmul of the dropped-out
/// input (peft recomputes it then). `m` is the trainable magnitude, initialised to `n` of the
/// starting weights (the base's row norms, B being zero), so step 0 is the base model.
pub struct Dora {
    pub lora: Lora,
    /// [out_features], fp32 (peft's `lora_magnitude_vector`).
    pub magnitude: Tensor,
}

impl Dora {
    /// Starts DoRA on `lora` over `layer`'s base: the magnitude is the row norm of
    /// `W + scaling · B A` in fp32, as peft's `update_layer` computes it.
    pub fn new(layer: &Linear, lora: Lora) -> Dora {
        let _guard = tch::no_grad_guard();
        let w = layer.dequantized_base(Kind::Float) + lora.delta_weight().to_device(layer.device());
        let magnitude = row_norm(&w).set_requires_grad(true);
        Dora { lora, magnitude }
    }

    fn forward(&self, layer: &Linear, x: &Tensor, y: Tensor, train: bool) -> Tensor {
        let kind = x.kind();
        let lora = &self.lora;
        let weight = layer.dequantized_base(kind);
        let (x, base) = if train && lora.dropout > 0.0 {
            // peft: with dropout the base term is the base weight applied to the dropped-out input.
            let x = x.dropout(lora.dropout, true);
            let base = x.linear::<Tensor>(&weight, None);
            (x, base)
        } else {
            let base = match &layer.bias {
                Some(b) => &y - b.to_kind(kind),
                None => y.shallow_clone(),
            };
            (x.shallow_clone(), base)
        };
        // ||W + scaling · (B A)|| in the input's dtype, detached.
        let norm = {
            let _guard = tch::no_grad_guard();
            let lora_weight = lora.b.matmul(&lora.a).to_kind(kind);
            row_norm(&(weight + lora_weight * lora.scaling))
        };
        let scale = (&self.magnitude / norm).to_kind(kind).view([1, -1]);
        y + (&scale - 1.0) * base + scale * lora.delta(&x, kind)
    }
}

/// The L2 norm of each row of a [out, in] weight (torch.linalg.norm(w, dim=1)).
fn row_norm(w: &Tensor) -> Tensor {
    w.norm_scalaropt_dim(2.0, [1i64], false).to_kind(w.kind()).detach()
}

impl Linear {
    /// The base weight in `kind` (dequantized for a quantized base).
    pub fn base_weight(&self, kind: Kind) -> Tensor {
        match &self.quantized {
            Some(q) => q.matmul_weight(kind),
            None => self.weight.to_kind(kind),
        }
    }

    /// The base weight dequantized (bitsandbytes' dequantize for a quantized base, as peft's
    /// `dequantize_module_weight`), in `kind`.
    pub fn dequantized_base(&self, kind: Kind) -> Tensor {
        match &self.quantized {
            Some(q) => q.dequantize(kind),
            None => self.weight.to_kind(kind),
        }
    }

    fn device(&self) -> tch::Device {
        match &self.quantized {
            Some(QuantizedWeight::Four(q)) => q.packed.device(),
            Some(QuantizedWeight::Eight(q) | QuantizedWeight::ExpertEight(q)) => q.cb.device(),
            None => self.weight.device(),
        }
    }

    /// Turns a LoRA adapter into DoRA over this layer's base (peft's `use_dora`); the magnitude
    /// starts at the row norms of the current weight (overwritten when a saved adapter loads).
    pub fn decompose(&mut self) -> Result<(), String> {
        match self.adapter.take() {
            Some(Adapter::Lora(lora)) => {
                self.adapter = Some(Adapter::Dora(Dora::new(self, lora)));
                Ok(())
            }
            other => {
                self.adapter = other;
                Err(format!("{}: DoRA needs a LoRA adapter on this layer", self.name))
            }
        }
    }

    /// `adapters`: false computes the base layer alone (the model-wide switch,
    /// `CausalLm::without_adapters`, as peft's `disable_adapter`).
    pub fn forward(&self, x: &Tensor, train: bool, adapters: bool) -> Tensor {
        let kind = x.kind();
        if let Some(fq) = self.qat.as_ref().filter(|fq| fq.on()) {
            return self.fake_quantized_forward(fq, x);
        }
        let base = self.base_weight(kind);
        // Not in place: the base may be the stored weight itself.
        let weight = match self.probe.borrow().as_ref() {
            Some(probe) => &base + probe.to_kind(kind),
            None => base,
        };
        if adapters && let Some(Adapter::Ia3(ia3 @ Ia3 { feedforward: true, .. })) = &self.adapter {
            // peft: the input times l in l's dtype (fp32), cast back, then the base layer.
            let scaled = (x.to_kind(Kind::Float) * ia3.l.flatten(0, -1)).to_kind(kind);
            return scaled.linear(&weight, self.bias.as_ref().map(|b| b.to_kind(kind)));
        }
        let y = x.linear(&weight, self.bias.as_ref().map(|b| b.to_kind(kind)));
        match &self.adapter {
            Some(adapter) if adapters => adapter.forward(self, x, y, train),
            _ => y,
        }
    }

    /// torchao's fake-quantized linear layer for the layer's scheme (model/qat.rs), on the
    /// stored weight. QAT runs on a dense base without an adapter (config rules).
    fn fake_quantized_forward(&self, fq: &super::qat::FakeQuant, x: &Tensor) -> Tensor {
        let weight = match self.probe.borrow().as_ref() {
            Some(probe) => &self.weight + probe.to_kind(self.weight.kind()),
            None => self.weight.shallow_clone(),
        };
        fq.linear(x, &weight, self.bias.as_ref())
    }

    /// W + scaling · B A (DoRA: rescaled per row by m / ||W + scaling · B A||), the weight with the
    /// adapter folded in.
    /// A quantized base comes out dequantized, in its original dtype.
    /// The bias with the adapter folded in: IA3 on the output scales it (peft's merge), else as it is.
    pub fn merged_bias(&self) -> Option<Tensor> {
        let bias = self.bias.as_ref()?;
        Some(match &self.adapter {
            Some(Adapter::Ia3(ia3)) if !ia3.feedforward => {
                (bias.to_kind(Kind::Float) * ia3.l.flatten(0, -1)).to_kind(bias.kind()).detach()
            }
            _ => bias.detach(),
        })
    }

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

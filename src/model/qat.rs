//! Quantization-aware training (Axolotl's `qat`): the fake quantizers a linear layer applies to
//! its input and weight while training, as torchao 0.18's `FakeQuantizedLinear` does for the
//! config Axolotl builds (`axolotl/utils/quantization.py`, `_make_qat_config`). The weights stay
//! in full precision; only the forward pass sees them rounded to the target grid, and the
//! gradient goes straight through the rounding (torchao's `_Round`).
//!
//! Built: `activation_dtype: int8, weight_dtype: int4`, i.e.
//! - activations: `IntxFakeQuantizeConfig(int8, per_token, asymmetric)`: per token (last
//!   dimension) min/max scale and integer zero point, computed without gradient
//!   (`choose_qparams_affine` is `no_grad`), fp32 scale, int32 zero point;
//! - weights: `Int4WeightFakeQuantizeConfig(group_size, activation_dtype=bfloat16)`: per group
//!   of `group_size` input features, asymmetric 4-bit (16 levels) in fp32, scale and offset
//!   from the group's min and max *with* gradient (torchao keeps them in the graph).
//!
//! Every op below is the op torchao runs, in its order and dtypes, so libtorch's autograd gives
//! torchao's gradient (tests/qat.rs holds them to goldens from scripts/reference/qat_goldens.py).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Kind, Tensor};

/// One layer's fake quantization. `enabled` is shared by every layer of a model, so the
/// executor switches them all at `fake_quant_after_n_steps` (Axolotl's `QATCallback`).
#[derive(Clone)]
pub struct FakeQuant {
    /// Input features per weight group (Axolotl's `group_size`).
    pub group_size: i64,
    /// Fake-quantize the input activations to int8 per token (`activation_dtype: int8`).
    pub int8_activations: bool,
    pub enabled: Arc<AtomicBool>,
}

impl FakeQuant {
    pub fn on(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The input as the layer's matmul sees it.
    pub fn activation(&self, x: &Tensor) -> Tensor {
        if self.int8_activations { fake_quantize_int8_per_token(x) } else { x.shallow_clone() }
    }

    /// The weight as the layer's matmul sees it (in the weight's own dtype).
    pub fn weight(&self, w: &Tensor) -> Tensor {
        fake_quantize_int4_weight(w, self.group_size)
    }
}

/// `round` with the identity as its gradient (torchao's `_Round`). `x + (round(x) - x)` is
/// round(x) exactly: `round(x) - x` is exact (Sterbenz: both within a factor of two, or
/// round(x) = 0), and so is the sum, which is representable.
fn round_ste(x: &Tensor) -> Tensor {
    x + (x.round() - x).detach()
}

/// torchao's `IntxFakeQuantizer._per_token_forward` for asymmetric int8 (quant range
/// [-128, 127]), with `choose_qparams_affine`'s parameters (eps: the smallest normal of the
/// input's dtype) and `_fake_quantize_affine`'s quantize / dequantize.
pub fn fake_quantize_int8_per_token(x: &Tensor) -> Tensor {
    let (qmin, qmax) = (-128.0, 127.0);
    let kind = x.kind();
    let (scale, zero_point) = {
        let _guard = tch::no_grad_guard();
        let min_val = x.amin(-1, true);
        let max_val = x.amax(-1, true);
        let min_neg = min_val.minimum(&min_val.zeros_like());
        let max_pos = max_val.maximum(&max_val.zeros_like());
        let scale = ((max_pos - &min_neg) / (qmax - qmin)).clamp_min(smallest_normal(kind));
        let zero_point = (-(min_neg / &scale).round() + qmin).clamp(qmin, qmax);
        (scale.to_kind(Kind::Float), zero_point.to_kind(Kind::Int))
    };
    // torch promotes x * fp32 scale to fp32 and the int32 zero point to the float.
    let quant = (round_ste(&(x * scale.reciprocal())) + &zero_point).clamp(qmin, qmax);
    let dequant = (quant.to_kind(kind) - zero_point.to_kind(kind)) * scale;
    dequant.to_kind(kind)
}

/// `torch.finfo(kind).smallest_normal`.
fn smallest_normal(kind: Kind) -> f64 {
    match kind {
        Kind::Half => 6.103515625e-05,
        Kind::Double => f64::MIN_POSITIVE,
        // fp32 and bf16 share the exponent range.
        _ => f32::MIN_POSITIVE as f64,
    }
}

/// torchao's `Int4WeightFakeQuantizer._bf16_activations_forward` on a [out, in] weight.
pub fn fake_quantize_int4_weight(w: &Tensor, group_size: i64) -> Tensor {
    let (eps, qmin, qmax, mid) = (1e-6, 0.0, 15.0, 8.0);
    let shape = w.size();
    let grouped = w.to_kind(Kind::Float).view([shape[0], -1, group_size]);
    let max_val = grouped.amax(-1, true);
    let min_val = grouped.amin(-1, true);
    let scale = (&max_val - &min_val).clamp_min(eps) / qmax;
    let zero_point = &min_val + &scale * mid;
    let fq = round_ste(&((grouped - &min_val) / &scale)).clamp(qmin, qmax);
    let fq = (fq - mid) * &scale + zero_point;
    fq.view(shape.as_slice()).to_kind(w.kind())
}

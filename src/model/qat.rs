//! Quantization-aware training (Axolotl's `qat`): the fake quantizers a linear layer applies to
//! its input and weight while training, as torchao 0.18's `FakeQuantizedLinear` does for the
//! config Axolotl builds (`axolotl/utils/quantization.py`, `_make_qat_config`). The weights stay
//! in full precision; only the forward pass sees them rounded to the target grid, and the
//! gradient goes straight through the rounding (torchao's `_Round`).
//!
//! Built:
//! - `activation_dtype: int8, weight_dtype: int4` ([`QatScheme::Int8Int4`]):
//!   - activations: `IntxFakeQuantizeConfig(int8, per_token, asymmetric)`: per token (last
//!     dimension) min/max scale and integer zero point, computed without gradient
//!     (`choose_qparams_affine` is `no_grad`), fp32 scale, int32 zero point;
//!   - weights: `Int4WeightFakeQuantizeConfig(group_size, activation_dtype=bfloat16)`: per group
//!     of `group_size` input features, asymmetric 4-bit (16 levels) in fp32, scale and offset
//!     from the group's min and max *with* gradient (torchao keeps them in the graph).
//! - `weight_dtype: mxfp4` ([`QatScheme::Mxfp4`]): torchao's `MXFakeQuantizedLinear` with
//!   `MXFakeQuantizeConfig(float4_e2m1fn_x2, block_size=32)` for the input and the weight (Axolotl
//!   builds the same config for both, whatever `activation_dtype` says). Per block of 32 along the
//!   last dimension: an E8M0 (power-of-two) scale by RCEIL (`_to_mx_rceil`: 2^ceil(log2(amax /
//!   6))), the values times its reciprocal rounded to the nearest FP4 E2M1 value (ties to even,
//!   saturating at ±6), dequantized in the tensor's own dtype; the emulated gemm multiplies the
//!   dequantized input by the dequantized weight (`addmm` with the bias). Its backward is torchao's
//!   custom one: the output gradient times the dequantized weight / input, straight through both
//!   roundings, and *no* gradient for the bias ([`mxfp4_linear`]).
//!
//! Every op below is the op torchao runs, in its order and dtypes, so libtorch's autograd gives
//! torchao's gradient (tests/qat.rs holds them to goldens from scripts/reference/qat_goldens.py).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Kind, Tensor};

/// The grids a fake-quantized layer trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QatScheme {
    /// int8 activations per token, int4 weights per group of `group_size` input features
    /// (torchao's `FakeQuantizedLinear`).
    Int8Int4 { group_size: i64 },
    /// MXFP4 activations and weights, blocks of 32 (torchao's `MXFakeQuantizedLinear`).
    Mxfp4,
}

/// One layer's fake quantization. `enabled` is shared by every layer of a model, so the
/// executor switches them all at `fake_quant_after_n_steps` (Axolotl's `QATCallback`).
#[derive(Clone)]
pub struct FakeQuant {
    pub scheme: QatScheme,
    pub enabled: Arc<AtomicBool>,
}

impl FakeQuant {
    pub fn on(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The layer's output for input `x` (compute dtype `x.kind()`), weight `w` (in its stored
    /// dtype) and bias.
    pub fn linear(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let kind = x.kind();
        match self.scheme {
            // torchao's FakeQuantizedLinear.forward: the fake-quantized input times the weight
            // fake-quantized in its stored dtype, then cast to the compute dtype (as autocast
            // casts F.linear's operands).
            QatScheme::Int8Int4 { group_size } => {
                let weight = fake_quantize_int4_weight(w, group_size).to_kind(kind);
                fake_quantize_int8_per_token(x).linear(&weight, bias.map(|b| b.to_kind(kind)))
            }
            QatScheme::Mxfp4 => mxfp4_linear(x, w, bias),
        }
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

/// MX block size of `mxfp4` (Axolotl accepts no other).
pub const MX_BLOCK: i64 = 32;
/// The largest FP4 E2M1 magnitude.
const F4_E2M1_MAX: f64 = 6.0;
const E8M0_BIAS: f64 = 127.0;

/// `MXTensor.to_mx(t, float4_e2m1fn_x2, 32, RCEIL).dequantize(t.dtype)` for an fp32 or bf16
/// tensor whose last dimension is a multiple of 32: the values the emulated MX gemm multiplies.
/// No gradient (torchao's backward goes around it, see [`mxfp4_linear`]).
///
/// `to_mx` and `_to_mx_rceil` op for op: the block's amax in the input dtype, then fp32; descale
/// = amax / 6; the biased E8M0 exponent clamp(ceil(log2(descale)), -127, 127) + 127 (254 for an
/// infinite, 255 for a NaN descale); the reciprocal scale 2^(127 - e) (1 for e = 0, 2^-127 for
/// 254, the NaN itself for 255); the scaled values clamped to ±6. torchao then rounds to FP4
/// with integer bit tricks (`_f32_to_floatx_unpacked`: round to nearest, ties to even, no
/// special values) and back (`f4_unpacked_to_f32`); here the same rounding is `round` (ties to
/// even) on the grid's spacing in each binade: 0.5 below 2, 1 in [2, 4), 2 in [4, 6], with the
/// sign kept (-0 included). Both are monotone step functions onto the same eight magnitudes, and
/// the goldens hold every grid point, every tie and the floats either side of each to torchao's
/// codes. Dequantization as `to_dtype`: the FP4 value and the scale 2^(e - 127) (`pow(2, e -
/// 127)`, NaN for e = 255), each cast to the tensor's dtype, multiplied there.
pub fn fake_quantize_mxfp4(t: &Tensor) -> Tensor {
    let _guard = tch::no_grad_guard();
    let kind = t.kind();
    let shape = t.size();
    let k = *shape.last().expect("a tensor with a last dimension");
    let mut blocked = shape[..shape.len() - 1].to_vec();
    blocked.extend([k / MX_BLOCK, MX_BLOCK]);
    let blocks = t.reshape(blocked.as_slice());
    let max_abs = blocks.abs().amax(-1, true).to_kind(Kind::Float);
    let data = blocks.to_kind(Kind::Float);
    let descale = max_abs / F4_E2M1_MAX;
    // Constants as tensors of the scales' shape, on their device.
    let scalar = |v: f64| descale.full_like(v);
    let exponent = descale.log2().ceil().clamp(-E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS;
    let exponent = scalar(254.0).where_self(&descale.isinf(), &exponent);
    let exponent = scalar(255.0).where_self(&descale.isnan(), &exponent);
    let normal = (-&exponent + E8M0_BIAS).exp2();
    let rcp = scalar(1.0).where_self(&exponent.eq(0.0), &normal);
    let rcp = scalar(2f64.powi(-127)).where_self(&exponent.eq(254.0), &rcp);
    let rcp = descale.where_self(&exponent.eq(255.0), &rcp);
    let scaled = (data * rcp).clamp(-F4_E2M1_MAX, F4_E2M1_MAX);
    let a = scaled.abs();
    let q = ((&a * 0.5).round() * 2.0).where_self(&a.ge(4.0), &a.round());
    let q = ((&a * 2.0).round() * 0.5).where_self(&a.lt(2.0), &q);
    let q = q.copysign(&scaled);
    let scale = Tensor::full_like(&exponent, 2.0).pow(&(&exponent - E8M0_BIAS));
    let scale = scale.where_self(&exponent.ne(255.0), &scalar(f64::NAN));
    (q.to_kind(kind) * scale.to_kind(kind)).reshape(shape.as_slice())
}

/// torchao's `MXFakeQuantizedLinear.forward` (`_MXQuantizedForwardFakeQuantizedBackward`) with
/// the emulated gemm: the input as 2-D rows and the weight (in its stored dtype) each
/// fake-quantized to MXFP4, then `addmm(bias, x̂, ŵᵀ)` (`mm` without a bias) in the input's dtype
/// (under autocast torchao's addmm casts the dequantized fp32 weight, exactly, as here).
///
/// The backward torchao writes by hand is `grad_x = grad · ŵ`, `grad_w = gradᵀ · x̂`, no bias
/// gradient. Here x̂ and ŵ enter the product as `x̂ + (x - x)` with the difference's operand
/// detached: for finite x its value is x̂ (adding an exact zero; -0 becomes +0, which changes no sum that is
/// not itself zero) and its gradient goes straight to x, so libtorch's `addmm` backward computes
/// the same two products (`grad.mm(ŵ)`, and `grad.t().mm(x̂)` for the column-major ŵᵀ); the bias
/// enters detached, so it gets no gradient, as in torchao.
pub fn mxfp4_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let kind = x.kind();
    let shape = x.size();
    let k = *shape.last().expect("an input with a feature dimension");
    let x2 = x.reshape([-1, k]);
    let through = |t: &Tensor, fq: Tensor| fq + (t - t.detach());
    let a = through(&x2, fake_quantize_mxfp4(&x2));
    let w_hat = through(w, fake_quantize_mxfp4(&w.contiguous())).to_kind(kind);
    let out = match bias {
        Some(b) => b.detach().to_kind(kind).addmm(&a, &w_hat.tr()),
        None => a.mm(&w_hat.tr()),
    };
    let mut out_shape = shape[..shape.len() - 1].to_vec();
    out_shape.push(w.size()[0]);
    out.reshape(out_shape.as_slice())
}

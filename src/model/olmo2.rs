//! What OLMo 2 computes differently from the Llama family, as transformers' modeling_olmo2
//! does: its RMSNorm scales in fp32 before casting back (Llama casts, then scales), and it
//! normalises sublayer outputs (post-norms) and the whole projected q and k (all heads at once)
//! rather than the sublayer inputs. The layer walk itself is in `llama.rs`.

use tch::{Kind, Tensor};

/// transformers' Olmo2RMSNorm: `(weight · x / rms(x)).to(input dtype)`, all in fp32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let variance = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    (weight.to_kind(Kind::Float) * (xf * (variance + eps).rsqrt())).to_kind(kind)
}

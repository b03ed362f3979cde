//! Gemma 2 and Gemma 3 text (`Gemma2ForCausalLM`, `Gemma3ForCausalLM`) as transformers 5.24
//! computes them, on the Llama family's module tree (model/llama.rs): the same projections and
//! checkpoint names, plus what this module owns:
//! - RMSNorm with a (1 + w) scale, computed in fp32 and cast back to the input's kind;
//! - the embedding multiplied by sqrt(hidden) in the embedding's own dtype (a bf16 table takes
//!   sqrt(hidden) rounded to bf16, as transformers does);
//! - sandwich norms: the attention and MLP outputs are normalised before their residual adds
//!   (`post_attention_layernorm`, `pre_feedforward_layernorm`, `post_feedforward_layernorm`);
//! - a gelu(tanh)-gated MLP; scores scaled by `query_pre_attn_scalar^-0.5`;
//! - Gemma 2's soft-capped attention scores (eager attention: the scores are materialised, as
//!   SDPA cannot cap them) and both families' soft-capped final logits;
//! - sliding-window layers, masked exactly (a query sees the keys less than `sliding_window`
//!   positions behind it, counted in the key sequence as transformers' cache positions are);
//! - Gemma 3's per-head q/k norms ((1 + w) here too) and its second rope base for sliding layers
//!   (model/rope.rs puts both tables side by side; `rope_for` picks one).

use super::llama::{CausalLm, DecoderLayer, LayerCache};
use super::rope;
use crate::plan::arch::Architecture;
use tch::{Kind, Tensor};

/// A Gemma decoder layer's parts beyond the Llama layer's.
pub struct GemmaLayer {
    pub pre_feedforward_layernorm: Tensor,
    pub post_feedforward_layernorm: Tensor,
    /// The window this layer attends within; None for a global layer.
    pub window: Option<i64>,
}

impl GemmaLayer {
    /// The two extra norms, by module name under the layer (for saving and sharding).
    pub fn norms(&self) -> [(&'static str, &Tensor); 2] {
        [
            ("pre_feedforward_layernorm", &self.pre_feedforward_layernorm),
            ("post_feedforward_layernorm", &self.post_feedforward_layernorm),
        ]
    }
}

/// transformers' Gemma2RMSNorm / Gemma3RMSNorm: `x · rsqrt(mean(x²) + eps) · (1 + w)` in fp32,
/// then cast to x's kind (Llama casts before scaling; Gemma after).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let variance = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let normed = xf * (variance + eps).rsqrt();
    (normed * (weight.to_kind(Kind::Float) + 1.0)).to_kind(kind)
}

/// `cap · tanh(x / cap)`.
pub fn soft_cap(x: &Tensor, cap: f64) -> Tensor {
    (x / cap).tanh() * cap
}

/// Looked-up embeddings times sqrt(hidden) in their own kind (Gemma), unchanged otherwise.
pub fn scale_embedding(arch: &Architecture, x: Tensor) -> Tensor {
    if arch.gemma.is_none() {
        return x;
    }
    let scale = Tensor::from((arch.hidden_size as f64).sqrt() as f32).to_kind(x.kind()).to_device(x.device());
    x * scale
}

/// The final logits, soft-capped where the model caps them.
pub fn cap_logits(arch: &Architecture, logits: Tensor) -> Tensor {
    match arch.gemma.as_ref().and_then(|g| g.final_logit_softcapping) {
        Some(cap) => soft_cap(&logits, cap),
        None => logits,
    }
}

/// The final norm over hidden states: Gemma's (1 + w) norm or Llama's.
pub fn final_norm(model: &CausalLm, x: &Tensor) -> Tensor {
    if model.arch.gemma.is_some() {
        rms_norm(x, &model.norm, model.arch.rms_norm_eps)
    } else {
        super::llama::rms_norm(x, &model.norm, model.arch.rms_norm_eps)
    }
}

/// cos/sin for a layer: model/rope.rs gives Gemma 3 the global table then the local one along
/// the last dim; every other model has one.
fn rope_for(arch: &Architecture, cos_sin: &(Tensor, Tensor), sliding: bool) -> (Tensor, Tensor) {
    let (cos, sin) = cos_sin;
    let hd = arch.head_dim as i64;
    if cos.size().last() == Some(&(2 * hd)) {
        let start = if sliding { hd } else { 0 };
        (cos.narrow(-1, start, hd), sin.narrow(-1, start, hd))
    } else {
        (cos.shallow_clone(), sin.shallow_clone())
    }
}

/// One Gemma decoder layer (see `CausalLm::layer_forward_cached` for the arguments).
pub fn layer_forward(
    model: &CausalLm,
    layer: &DecoderLayer,
    extra: &GemmaLayer,
    x: &Tensor,
    cos_sin: &(Tensor, Tensor),
    mask: Option<&Tensor>,
    train: bool,
    cache: Option<&mut LayerCache>,
) -> Tensor {
    let a = &model.arch;
    let g = a.gemma.as_ref().expect("a Gemma layer in a model without Gemma settings");
    let eps = a.rms_norm_eps;
    let (b, t) = (x.size()[0], x.size()[1]);
    let (nh, nkv, hd) = (a.num_attention_heads as i64, a.num_key_value_heads as i64, a.head_dim as i64);
    let ck = model.compute_kind;
    let on = model.adapters_on();
    let at = &layer.self_attn;
    let input_norm = layer.input_layernorm.as_ref().expect("Gemma layers have an input norm");
    let h = rms_norm(x, input_norm, eps).to_kind(ck);
    let head_norm = |x: Tensor, w: &Option<Tensor>| match w {
        Some(w) => rms_norm(&x, w, eps),
        None => x,
    };
    let (q, k, v) = at.qkv.forward(&h, train, on, nh * hd);
    let q = head_norm(q.view([b, t, nh, hd]), &at.q_norm).transpose(1, 2);
    let k = head_norm(k.view([b, t, nkv, hd]), &at.k_norm).transpose(1, 2);
    let v = v.view([b, t, nkv, hd]).transpose(1, 2);
    let (cos, sin) = rope_for(a, cos_sin, extra.window.is_some());
    let q = rope::apply(&q, &cos, &sin);
    let k = rope::apply(&k, &cos, &sin);
    let (k, v) = match cache {
        None => (k, v),
        Some(c) => c.append(k, v),
    };
    let s = k.size()[2];
    // Query i is key position s - t + i. With no mask given, attention is causal (a decoding
    // step's single query sees every earlier key, which is causal too).
    let dev = x.device();
    let query_at = Tensor::arange_start(s - t, s, (Kind::Int64, dev)).view([1, 1, t, 1]);
    let key_at = Tensor::arange(s, (Kind::Int64, dev)).view([1, 1, 1, s]);
    let window = extra.window.filter(|w| *w < s);
    let allowed = match (mask, window) {
        (Some(m), None) => Some(m.shallow_clone()),
        (m, Some(w)) => {
            let near = key_at.le_tensor(&query_at).logical_and(&(&query_at - &key_at).lt(w));
            Some(m.map_or(near.shallow_clone(), |m| m.logical_and(&near)))
        }
        // Eager attention always needs the causal mask; SDPA's `is_causal` only fits when the
        // queries are all the keys (a prefix in the cache needs the offset mask).
        (None, None) if t > 1 && (g.attn_logit_softcapping.is_some() || s > t) => Some(key_at.le_tensor(&query_at)),
        (None, None) => None,
    };
    let scale = g.query_pre_attn_scalar.powf(-0.5);
    let attn = match g.attn_logit_softcapping {
        Some(cap) => eager_capped(&q, &k, &v, allowed.as_ref(), scale, cap),
        None => {
            let causal = allowed.is_none() && s == t;
            sdpa_scaled(&q, &k, &v, allowed.as_ref(), causal, scale)
        }
    };
    let attn = attn.transpose(1, 2).reshape([b, t, nh * hd]);
    let attn = at.o_proj.forward(&attn, train, on);
    let x = x + rms_norm(&attn, &layer.post_attention_layernorm, eps);
    let h = rms_norm(&x, &extra.pre_feedforward_layernorm, eps).to_kind(ck);
    let super::llama::FeedForward::Dense(m) = &layer.mlp else { unreachable!("Gemma's feed-forward blocks are dense") };
    let (gate, up) = m.gate_up.forward(&h, train, on);
    let act = gate.gelu("tanh") * up;
    let out = m.down_proj.forward(&act, train, on);
    x + rms_norm(&out, &extra.post_feedforward_layernorm, eps)
}

/// transformers' eager attention with soft-capped scores (Gemma 2): keys and values repeated to
/// the query heads, `softmax(cap · tanh(q kᵀ · scale / cap) + mask)` in fp32, cast back, times v.
/// Masked scores take the dtype's lowest value, as transformers' additive mask does.
fn eager_capped(q: &Tensor, k: &Tensor, v: &Tensor, allowed: Option<&Tensor>, scale: f64, cap: f64) -> Tensor {
    let (nh, nkv) = (q.size()[1], k.size()[1]);
    let (k, v) = if nh != nkv {
        (k.repeat_interleave_self_int(nh / nkv, 1, None), v.repeat_interleave_self_int(nh / nkv, 1, None))
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let scores = soft_cap(&(q.matmul(&k.transpose(-2, -1)) * scale), cap);
    let scores = match allowed {
        Some(m) => scores.masked_fill(&m.logical_not(), lowest(scores.kind())),
        None => scores,
    };
    scores.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(&v)
}

fn lowest(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Half => -65504.0,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// scaled_dot_product_attention with Gemma's scale, grouped heads handled as model/llama.rs
/// `attend` handles them.
fn sdpa_scaled(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, causal: bool, scale: f64) -> Tensor {
    let (nh, nkv) = (q.size()[1], k.size()[1]);
    if mask.is_some() && nh != nkv {
        let (k, v) = (k.repeat_interleave_self_int(nh / nkv, 1, None), v.repeat_interleave_self_int(nh / nkv, 1, None));
        return Tensor::scaled_dot_product_attention(q, &k, &v, mask, 0.0, causal, Some(scale), false);
    }
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, Some(scale), nh != nkv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_scales_by_one_plus_the_weight_in_fp32() {
        let x = Tensor::from_slice(&[3.0f32, 4.0]).view([1, 2]);
        let w = Tensor::from_slice(&[0.0f32, 1.0]);
        // rms = sqrt(12.5): x / rms = [0.8485, 1.1314]; scaled by (1, 2).
        let y = rms_norm(&x, &w, 0.0);
        let want = Tensor::from_slice(&[3.0 / 12.5f32.sqrt(), 8.0 / 12.5f32.sqrt()]).view([1, 2]);
        assert!((y - want).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn soft_cap_bounds_and_keeps_small_values() {
        let x = Tensor::from_slice(&[-1000.0f32, 0.001, 60.0]);
        let v: Vec<f32> = Vec::try_from(soft_cap(&x, 30.0)).unwrap();
        // Bounded by the cap, near the identity for small values, 30·tanh(2) at twice the cap.
        assert!(v[0] >= -30.0 && (v[1] - 0.001).abs() < 1e-7, "{v:?}");
        assert!((v[2] - 30.0 * 2f32.tanh()).abs() < 1e-5, "{v:?}");
    }
}

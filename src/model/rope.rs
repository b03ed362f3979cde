//! Rotary position embeddings as transformers computes them (`rotate_half` layout): inverse
//! frequencies in fp32, optionally rescaled (`linear`, Llama 3.1's `llama3`, Phi-3's `longrope`),
//! then cos/sin for the position ids of each token, so packed samples can restart their positions
//! at 0. With a partial rotary factor (Phi-3/4), only the first dimensions of each head turn.
//! Gemma 3's sliding layers have their own base (no scaling): its table follows the global one
//! along the last dim (model/gemma.rs picks one).

use crate::plan::arch::Architecture;
use tch::{Device, Kind, Tensor};

pub struct Rope {
    inv_freq: Tensor,
    /// Gemma 3's sliding layers' inverse frequencies.
    local_inv_freq: Option<Tensor>,
    /// LongRoPE: the long factors' frequencies, used for a whole pass once a position reaches
    /// `original_max_position_embeddings` (transformers' `longrope_frequency_update`).
    long: Option<(Tensor, i64)>,
    /// What cos and sin are multiplied by (LongRoPE's attention factor; 1 otherwise).
    attention_scaling: f64,
}

impl Rope {
    pub fn new(arch: &Architecture, device: Device) -> Result<Rope, String> {
        let dim = rotary_dim(arch);
        let exponents =
            Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / dim as f64;
        let base = Tensor::from(arch.rope_theta as f32);
        let powers = base.pow(&exponents);
        let mut inv_freq = powers.reciprocal();
        if let Some(s) = arch.rope_scaling.as_ref().filter(|s| s.rope_type == "longrope") {
            return longrope(s, &powers, dim, device);
        }
        if let Some(scaling) = &arch.rope_scaling {
            inv_freq = match scaling.rope_type.as_str() {
                "default" => inv_freq,
                "linear" => inv_freq / scaling.factor,
                "llama3" => llama3_frequencies(&inv_freq, scaling)?,
                other => {
                    return Err(format!(
                        "rope scaling `{other}` is not supported by the executor yet (supported: default, linear, llama3, longrope)"
                    ));
                }
            };
        }
        let local_inv_freq = arch
            .gemma
            .as_ref()
            .and_then(|g| g.local_rope_theta)
            .map(|theta| Tensor::from(theta as f32).pow(&exponents).reciprocal().to_device(device));
        Ok(Rope { inv_freq: inv_freq.to_device(device), local_inv_freq, long: None, attention_scaling: 1.0 })
    }

    /// cos and sin for `positions` [B, T] (or [1, T]): each [B, 1, T, rotary dims], fp32 (Gemma 3:
    /// [B, 1, T, 2·head_dim], the global table then the local one).
    pub fn cos_sin(&self, positions: &Tensor) -> (Tensor, Tensor) {
        // LongRoPE: one set for the whole pass, picked by its largest position, on the device (a
        // select, not a host read).
        let picked = self.long.as_ref().map(|(long, original)| {
            let past = positions.max().gt(*original - 1);
            long.where_self(&past, &self.inv_freq)
        });
        let inv_freq = picked.as_ref().unwrap_or(&self.inv_freq);
        let table = |inv_freq: &Tensor| {
            let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.view([1, 1, -1]);
            Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1)
        };
        let emb = match &self.local_inv_freq {
            Some(local) => Tensor::cat(&[table(inv_freq), table(local)], -1),
            None => table(inv_freq),
        };
        if self.attention_scaling == 1.0 {
            return (emb.cos(), emb.sin());
        }
        (emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling)
    }
}

/// How many of a head's dimensions turn: int(head_dim × partial_rotary_factor), as transformers.
fn rotary_dim(arch: &Architecture) -> i64 {
    match arch.partial_rotary_factor {
        Some(f) => (arch.head_dim as f64 * f) as i64,
        None => arch.head_dim as i64,
    }
}

/// transformers' `_compute_longrope_parameters`: inverse frequencies 1 / (factor_i · base^(2i/d))
/// for the short and the long factors, and the attention factor.
fn longrope(s: &crate::plan::arch::RopeScaling, powers: &Tensor, dim: i64, device: Device) -> Result<Rope, String> {
    let original =
        s.original_max_position_embeddings.ok_or("rope scaling longrope needs original_max_position_embeddings")?;
    let frequencies = |name: &str, factors: &Option<Vec<f64>>| -> Result<Tensor, String> {
        let factors = factors.as_ref().ok_or_else(|| format!("rope scaling longrope needs `{name}`"))?;
        if factors.len() as i64 != dim / 2 {
            return Err(format!(
                "rope scaling longrope: `{name}` has {} values; the {dim} rotary dimensions take {}",
                factors.len(),
                dim / 2
            ));
        }
        let factors: Vec<f32> = factors.iter().map(|&f| f as f32).collect();
        Ok((Tensor::from_slice(&factors) * powers).reciprocal().to_device(device))
    };
    let attention_scaling = match s.attention_factor {
        Some(a) => a,
        None if s.factor <= 1.0 => 1.0,
        None => (1.0 + s.factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(Rope {
        inv_freq: frequencies("short_factor", &s.short_factor)?,
        local_inv_freq: None,
        long: Some((frequencies("long_factor", &s.long_factor)?, original as i64)),
        attention_scaling,
    })
}

/// transformers' `_compute_llama3_parameters`.
fn llama3_frequencies(inv_freq: &Tensor, s: &crate::plan::arch::RopeScaling) -> Result<Tensor, String> {
    let missing = |k: &str| format!("rope_scaling llama3 needs `{k}` in config.json");
    let low = s.low_freq_factor.ok_or_else(|| missing("low_freq_factor"))?;
    let high = s.high_freq_factor.ok_or_else(|| missing("high_freq_factor"))?;
    let old = s.original_max_position_embeddings.ok_or_else(|| missing("original_max_position_embeddings"))? as f64;
    let low_wavelen = old / low;
    let high_wavelen = old / high;
    let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
    let scaled = inv_freq / s.factor;
    let inv_llama = scaled.where_self(&wavelen.gt(low_wavelen), inv_freq);
    let smooth = (wavelen.reciprocal() * old - low) / (high - low);
    let smoothed = (smooth.ones_like() - &smooth) * &inv_llama / s.factor + &smooth * &inv_llama;
    let medium = wavelen.lt(high_wavelen).logical_not().logical_and(&wavelen.gt(low_wavelen).logical_not());
    Ok(smoothed.where_self(&medium, &inv_llama))
}

/// Applies the rotation to q or k [B, H, T, D]; with cos/sin narrower than D (a partial rotary
/// factor), to the first dimensions only, the rest passing through.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let (d, rotary) = (x.size()[3], cos.size()[3]);
    if rotary < d {
        let turned = apply(&x.narrow(3, 0, rotary), cos, sin);
        return Tensor::cat(&[turned, x.narrow(3, rotary, d - rotary)], 3);
    }
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
    let kind = x.kind();
    (x * cos.to_kind(kind)) + (rotated * sin.to_kind(kind))
}

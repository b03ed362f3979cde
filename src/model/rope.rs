//! Rotary position embeddings as transformers computes them (`rotate_half` layout): inverse
//! frequencies in fp32, optionally rescaled (`linear`, Llama 3.1's `llama3`), then cos/sin for the
//! position ids of each token, so packed samples can restart their positions at 0. Gemma 3's
//! sliding layers have their own base (no scaling): its table follows the global one along the
//! last dim (model/gemma.rs picks one).

use crate::plan::arch::Architecture;
use tch::{Device, Kind, Tensor};

pub struct Rope {
    inv_freq: Tensor,
    /// Gemma 3's sliding layers' inverse frequencies.
    local_inv_freq: Option<Tensor>,
}

impl Rope {
    pub fn new(arch: &Architecture, device: Device) -> Result<Rope, String> {
        let dim = arch.head_dim as i64;
        let exponents =
            Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / dim as f64;
        let base = Tensor::from(arch.rope_theta as f32);
        let mut inv_freq = base.pow(&exponents).reciprocal();
        let local_inv_freq = arch
            .gemma
            .as_ref()
            .and_then(|g| g.local_rope_theta)
            .map(|theta| Tensor::from(theta as f32).pow(&exponents).reciprocal().to_device(device));
        if let Some(scaling) = &arch.rope_scaling {
            inv_freq = match scaling.rope_type.as_str() {
                "default" => inv_freq,
                "linear" => inv_freq / scaling.factor,
                "llama3" => llama3_frequencies(&inv_freq, scaling)?,
                other => {
                    return Err(format!(
                        "rope scaling `{other}` is not supported by the executor yet (supported: default, linear, llama3)"
                    ));
                }
            };
        }
        Ok(Rope { inv_freq: inv_freq.to_device(device), local_inv_freq })
    }

    /// cos and sin for `positions` [B, T] (or [1, T]): each [B, 1, T, head_dim], fp32 (Gemma 3:
    /// [B, 1, T, 2·head_dim], the global table then the local one).
    pub fn cos_sin(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let table = |inv_freq: &Tensor| {
            let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.view([1, 1, -1]);
            Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1)
        };
        let emb = match &self.local_inv_freq {
            Some(local) => Tensor::cat(&[table(&self.inv_freq), table(local)], -1),
            None => table(&self.inv_freq),
        };
        (emb.cos(), emb.sin())
    }
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

/// Applies the rotation to q or k [B, H, T, D].
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
    let kind = x.kind();
    (x * cos.to_kind(kind)) + (rotated * sin.to_kind(kind))
}

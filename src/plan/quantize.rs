//! Which base weights are stored quantized, and their bytes: NF4/FP4 in blocks of 64 with
//! (optionally double-quantized) absmax constants, or row-wise absmax int8.

use super::arch::Architecture;
use crate::config::Config;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct QuantizationPlan {
    /// `none`, `int8` or `nf4` / `fp4`.
    pub scheme: String,
    pub block_size: Option<u64>,
    pub double_quant: bool,
    pub compute_dtype: Option<String>,
    /// Which weights are quantized (every decoder linear layer; embeddings, norms and lm_head stay).
    pub quantized_modules: Vec<String>,
    pub quantized_parameters: u64,
    /// Bytes of the quantized weights, constants included.
    pub quantized_bytes: u64,
}

pub fn plan(c: &Config, arch: &Architecture) -> QuantizationPlan {
    let q = &c.quantization;
    if !q.load_in_4bit && !q.load_in_8bit {
        return QuantizationPlan { scheme: "none".into(), ..QuantizationPlan::default() };
    }
    let linears = arch.layer_linears();
    let params: u64 = arch.num_layers * linears.iter().map(|l| l.in_features * l.out_features).sum::<u64>();
    let quantized = QuantizationPlan {
        quantized_modules: linears.iter().map(|l| l.name.to_string()).collect(),
        quantized_parameters: params,
        ..QuantizationPlan::default()
    };
    if q.load_in_4bit {
        // NF4: 4 bits per weight; absmax per 64 weights, itself 8-bit per 256 blocks with an fp32
        // scale (double quant), else fp32 per block.
        let blocks = params.div_ceil(64);
        let constants = if q.bnb_4bit_use_double_quant { blocks + 4 * blocks.div_ceil(256) + 4 } else { 4 * blocks };
        QuantizationPlan {
            scheme: format!("{:?}", q.bnb_4bit_quant_type).to_lowercase(),
            block_size: Some(64),
            double_quant: q.bnb_4bit_use_double_quant,
            compute_dtype: Some(format!("{:?}", q.bnb_4bit_compute_dtype).to_lowercase()),
            quantized_bytes: params.div_ceil(2) + constants,
            ..quantized
        }
    } else {
        // Row-wise absmax int8: one byte per weight plus an fp32 scale per output row.
        let rows: u64 = arch.num_layers * linears.iter().map(|l| l.out_features).sum::<u64>();
        QuantizationPlan { scheme: "int8".into(), quantized_bytes: params + 4 * rows, ..quantized }
    }
}

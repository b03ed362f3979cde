//! Which base weights are stored quantized, and their bytes, per module and in all: NF4/FP4 in
//! blocks of 64 with (optionally double-quantized) absmax constants, as bitsandbytes'
//! `quantize_4bit` stores them, or row-wise absmax int8.
//!
//! 4-bit bytes of one weight of n elements, b = ⌈n/64⌉ blocks: ⌈n/2⌉ packed bytes + the 16-entry
//! fp32 code (64 bytes) + absmax: 4·b bytes plain, or with double quantization b uint8 + an fp32
//! absmax per 256 blocks + an fp32 offset + the 256-entry fp32 nested code (1,024 bytes).
//! int8: n bytes + an fp32 scale per output row.

use super::adapter::{AdapterMethod, AdapterPlan};
use super::arch::{Architecture, Linear};
use super::precision::Precision;
use crate::config::Config;
use crate::config::quantization::QuantType4Bit;
use serde::Serialize;

/// Elements per 4-bit quantization block.
pub const BLOCK_SIZE: u64 = 64;
/// Blocks per block of the double-quantized absmax.
pub const NESTED_BLOCK_SIZE: u64 = 256;

#[derive(Debug, Clone, Default, Serialize)]
pub struct QuantizationPlan {
    /// `none`, `int8` or `nf4` / `fp4`.
    pub scheme: QuantScheme,
    pub block_size: Option<u64>,
    pub double_quant: bool,
    /// bnb_4bit_compute_dtype (4-bit bases), as written or its default; what computes is the
    /// training plan's resolved precision.
    pub compute_dtype: Option<Precision>,
    /// The quantized weights of one decoder layer (embeddings, norms and lm_head stay unquantized),
    /// each present once per layer.
    pub quantized_modules: Vec<QuantizedModule>,
    /// `quantize_moe_experts`: the fused expert tensors of one sparse layer
    /// (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`), each quantized whole, present once
    /// per sparse layer (`expert_layers`). Empty otherwise: the experts stay in the compute dtype.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expert_modules: Vec<QuantizedModule>,
    #[serde(skip_serializing_if = "is_zero")]
    pub expert_layers: u64,
    /// Parameters and bytes of all quantized weights, the experts' included.
    pub quantized_parameters: u64,
    /// Bytes of all quantized weights, constants included.
    pub quantized_bytes: u64,
}

/// How the base's linear weights are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantScheme {
    /// Dense, in the compute dtype.
    #[default]
    None,
    /// 4-bit NormalFloat (QLoRA).
    Nf4,
    /// 4-bit floating point.
    Fp4,
    /// Row-wise absmax int8 (LLM.int8).
    Int8,
}

impl QuantScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            QuantScheme::None => "none",
            QuantScheme::Nf4 => "nf4",
            QuantScheme::Fp4 => "fp4",
            QuantScheme::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct QuantizedModule {
    pub name: String,
    pub parameters: u64,
    /// Bytes of this module's quantized weight in one layer.
    pub bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Bytes of a tensor of `n` elements in 4 bits (blocks of 64), with or without double
/// quantization, as `quantize_4bit` stores it (see the module's formula).
pub fn four_bit_bytes(n: u64, double_quant: bool) -> u64 {
    let blocks = n.div_ceil(BLOCK_SIZE);
    let absmax = if double_quant { blocks + 4 * blocks.div_ceil(NESTED_BLOCK_SIZE) + 4 + 256 * 4 } else { 4 * blocks };
    n.div_ceil(2) + 16 * 4 + absmax
}

pub fn plan(c: &Config, arch: &Architecture) -> QuantizationPlan {
    let q = &c.quantization;
    if !q.load_in_4bit && !q.load_in_8bit {
        return QuantizationPlan { scheme: QuantScheme::None, ..QuantizationPlan::default() };
    }
    let bytes = |l: &Linear| {
        let n = l.in_features * l.out_features;
        if q.load_in_4bit { four_bit_bytes(n, q.bnb_4bit_use_double_quant) } else { n + 4 * l.out_features }
    };
    let modules: Vec<QuantizedModule> = arch
        .layer_linears()
        .iter()
        .map(|l| QuantizedModule {
            name: l.name.to_string(),
            parameters: l.in_features * l.out_features,
            bytes: bytes(l),
        })
        .collect();
    // A mixture of experts' dense layers (Qwen3-MoE's mlp_only_layers) carry MLP linears, which
    // bitsandbytes quantizes; its router and fused experts are not `nn.Linear` and stay unquantized.
    let dense_mlp: Vec<Linear> = match &arch.moe {
        Some(moe) if !moe.dense_layers.is_empty() => {
            let (h, i) = (arch.hidden_size, arch.intermediate_size);
            vec![
                Linear { name: "mlp.gate_proj", in_features: h, out_features: i, bias: arch.mlp_bias },
                Linear { name: "mlp.up_proj", in_features: h, out_features: i, bias: arch.mlp_bias },
                Linear { name: "mlp.down_proj", in_features: i, out_features: h, bias: arch.mlp_bias },
            ]
        }
        _ => Vec::new(),
    };
    let dense_layers = arch.moe.as_ref().map_or(0, |m| m.dense_layers.len() as u64);
    let dense_parameters = dense_layers * dense_mlp.iter().map(|l| l.in_features * l.out_features).sum::<u64>();
    let dense_bytes = dense_layers * dense_mlp.iter().map(bytes).sum::<u64>();
    // quantize_moe_experts: each fused 3-D expert tensor quantized whole (4 bits: one
    // quantize_4bit over the flattened tensor; 8 bits: int8 plus an fp32 scale per row of its last
    // dimension).
    let (expert_modules, expert_layers) = match &arch.moe {
        Some(moe) if moe.quantized_experts => {
            let (e, h, i) = (moe.num_experts, arch.hidden_size, moe.expert_intermediate_size);
            let fused = [("mlp.experts.gate_up_proj", e * 2 * i, h), ("mlp.experts.down_proj", e * h, i)];
            let modules = fused
                .iter()
                .map(|&(name, rows, cols)| {
                    let n = rows * cols;
                    let bytes =
                        if q.load_in_4bit { four_bit_bytes(n, q.bnb_4bit_use_double_quant) } else { n + 4 * rows };
                    QuantizedModule { name: name.to_string(), parameters: n, bytes }
                })
                .collect();
            (modules, moe.sparse_layers(arch.num_layers))
        }
        _ => (Vec::new(), 0),
    };
    let expert_parameters = expert_layers * expert_modules.iter().map(|m| m.parameters).sum::<u64>();
    let expert_bytes = expert_layers * expert_modules.iter().map(|m| m.bytes).sum::<u64>();
    let per_layer = |f: fn(&QuantizedModule) -> u64| arch.num_layers * modules.iter().map(f).sum::<u64>();
    let (scheme, block_size, compute_dtype) = if q.load_in_4bit {
        let scheme = match q.bnb_4bit_quant_type {
            QuantType4Bit::Nf4 => QuantScheme::Nf4,
            QuantType4Bit::Fp4 => QuantScheme::Fp4,
        };
        (scheme, Some(BLOCK_SIZE), Some(Precision::from(q.bnb_4bit_compute_dtype)))
    } else {
        (QuantScheme::Int8, None, None)
    };
    QuantizationPlan {
        scheme,
        block_size,
        double_quant: q.load_in_4bit && q.bnb_4bit_use_double_quant,
        compute_dtype,
        quantized_parameters: per_layer(|m| m.parameters) + dense_parameters + expert_parameters,
        quantized_bytes: per_layer(|m| m.bytes) + dense_bytes + expert_bytes,
        quantized_modules: modules,
        expert_modules,
        expert_layers,
    }
}

/// Bytes of the frozen base: quantized linear layers at their size, the rest in the compute dtype.
pub fn frozen_bytes(arch: &Architecture, quant: &QuantizationPlan, adapter: &AdapterPlan, compute_bytes: u64) -> u64 {
    if adapter.method == AdapterMethod::Full {
        return 0;
    }
    let total = arch.parameter_counts().total;
    quant.quantized_bytes + (total - quant.quantized_parameters) * compute_bytes
}

/// Average bytes per frozen element (what a gather of the frozen base moves per element).
pub fn frozen_bytes_per_element(
    arch: &Architecture,
    quant: &QuantizationPlan,
    adapter: &AdapterPlan,
    compute_bytes: u64,
) -> f64 {
    match frozen_bytes(arch, quant, adapter, compute_bytes) {
        0 => compute_bytes as f64,
        bytes => bytes as f64 / arch.parameter_counts().total as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_names_are_the_serialized_names() {
        for s in [QuantScheme::None, QuantScheme::Nf4, QuantScheme::Fp4, QuantScheme::Int8] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn nf4_with_double_quant_is_about_4_127_bits_per_weight() {
        let arch = super::super::model::builtin_architecture("meta-llama/Llama-2-13b-hf").unwrap();
        let mut c = Config::default();
        c.quantization.load_in_4bit = true;
        let q = plan(&c, &arch);
        let bits = q.quantized_bytes as f64 * 8.0 / q.quantized_parameters as f64;
        assert!((bits - 4.127).abs() < 0.001, "{bits}");
        c.quantization.bnb_4bit_use_double_quant = false;
        let plain = plan(&c, &arch);
        let bits = plain.quantized_bytes as f64 * 8.0 / plain.quantized_parameters as f64;
        assert!((bits - 4.5).abs() < 0.001, "{bits}");
    }
}

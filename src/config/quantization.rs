//! How the frozen base weights are stored: full precision, 8-bit or 4-bit (QLoRA).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Quantized loading of the base model (bitsandbytes' formats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QuantizationConfig {
    /// Load the base weights as row-wise absmax int8 (LLM.int8). Needs an adapter.
    #[serde(default)]
    pub load_in_8bit: bool,
    /// Load the base weights in 4 bits (NF4 or FP4, blocks of 64). Needs `adapter: qlora`.
    #[serde(default)]
    pub load_in_4bit: bool,
    /// The 4-bit data type.
    #[serde(default)]
    pub bnb_4bit_quant_type: QuantType4Bit,
    /// Quantize the per-block absmax constants too (8 bits, blocks of 256): about 0.37 bits per
    /// parameter saved.
    #[serde(default = "default_true")]
    pub bnb_4bit_use_double_quant: bool,
    /// The dtype 4-bit weights are dequantized to for each matmul (float32 on CPU).
    #[serde(default)]
    pub bnb_4bit_compute_dtype: ComputeDtype,
}

impl Default for QuantizationConfig {
    fn default() -> Self {
        super::defaults()
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QuantType4Bit {
    /// 4-bit NormalFloat, the QLoRA data type.
    #[default]
    Nf4,
    /// 4-bit floating point.
    Fp4,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    #[default]
    Bfloat16,
    Float16,
    Float32,
}

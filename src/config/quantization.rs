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
    /// Axolotl's `quantize_moe_experts`: also quantize a mixture of experts' fused expert weights
    /// (transformers 5's `gate_up_proj` [experts, 2·width, hidden] and `down_proj` [experts,
    /// hidden, width]) in the base's format, each fused tensor as one bitsandbytes quantizes a
    /// whole 3-D parameter (`replace_parameter_4bit`: NF4/FP4 in blocks of 64 over the flattened
    /// tensor, double quantization as `bnb_4bit_use_double_quant`), dequantized in the forward
    /// pass; with `load_in_8bit`, Axolotl's row-wise int8 of the fp16 tensor, dequantized to fp32.
    /// Without it a 4-bit base keeps the experts and router in the compute dtype, as transformers +
    /// bitsandbytes do. Needs `adapter: lora` or `qlora`, `load_in_4bit` or `load_in_8bit`, and no
    /// `lora_target_linear`; the router stays in the compute dtype.
    #[serde(default)]
    pub quantize_moe_experts: bool,
    /// Quantization-aware training (Axolotl's `qat`, torchao's fake quantizers): every linear
    /// layer, the output head included, trains on its input and weight rounded to the target
    /// grid in the forward pass, with the gradient straight through the rounding. The saved model
    /// keeps full-precision weights, to be quantized afterwards with the same settings. Needs a
    /// full fine-tune (no adapter, no load_in_4bit / load_in_8bit).
    #[serde(default)]
    pub qat: Option<QatConfig>,
}

/// Axolotl's `qat` block (axolotl/utils/schemas/quantization.py, `QATConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QatConfig {
    /// The grid activations are fake-quantized to: `int8` (per token, asymmetric) with
    /// `weight_dtype: int4`; `mxfp4` (or unset) with `weight_dtype: mxfp4`, which fake-quantizes
    /// the activations to mxfp4 either way, as Axolotl does. Unset with int4: the weights alone
    /// (not built).
    #[serde(default)]
    pub activation_dtype: Option<QatDtype>,
    /// The grid weights are fake-quantized to: `int4` (per group of `group_size` input features,
    /// 16 levels between the group's min and max) or `mxfp4` (FP4 E2M1 in blocks of 32 input
    /// features with a power-of-two E8M0 scale each; torchao's MXFakeQuantizedLinear). `nvfp4`
    /// and float8 are refused. Axolotl's default is `int8`.
    #[serde(default = "default_weight_dtype")]
    pub weight_dtype: QatDtype,
    /// Fake-quantize the token embedding too (Axolotl: weights only).
    #[serde(default)]
    pub quantize_embedding: bool,
    /// Input features per weight quantization group; must divide every layer's input width
    /// (mxfp4: 32, the MX block size, is the only value).
    #[serde(default = "default_group_size")]
    #[schemars(range(min = 1))]
    pub group_size: Option<u32>,
    /// Train the first N optimizer steps without fake quantization, then switch it on
    /// (Axolotl's QATCallback, at global step N). Unset: fake-quantized from the first step.
    /// Refused with mxfp4, whose layers Axolotl's callback does not switch.
    #[serde(default)]
    pub fake_quant_after_n_steps: Option<u64>,
}

fn default_weight_dtype() -> QatDtype {
    QatDtype::Int8
}

fn default_group_size() -> Option<u32> {
    Some(32)
}

/// torchao's quantized dtypes as Axolotl names them (`TorchAOQuantDType`; `fp8` and `float8`
/// are its spellings of `float8_e4m3fn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QatDtype {
    Int4,
    Int8,
    #[serde(rename = "float8_e4m3fn")]
    Float8E4m3fn,
    Fp8,
    Float8,
    Nvfp4,
    Mxfp4,
}

impl QatDtype {
    pub fn as_str(self) -> &'static str {
        match self {
            QatDtype::Int4 => "int4",
            QatDtype::Int8 => "int8",
            QatDtype::Float8E4m3fn => "float8_e4m3fn",
            QatDtype::Fp8 => "fp8",
            QatDtype::Float8 => "float8",
            QatDtype::Nvfp4 => "nvfp4",
            QatDtype::Mxfp4 => "mxfp4",
        }
    }
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

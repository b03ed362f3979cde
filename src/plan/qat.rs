//! Quantization-aware training in the plan: which layers are fake-quantized, on which grids,
//! from which optimizer step, and what is saved (full-precision weights, as Axolotl saves them).

use super::arch::Architecture;
use crate::config::Config;
use crate::config::quantization::QatDtype;
use serde::Serialize;

/// The fake quantizers' grids (model/qat.rs builds each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QatGrids {
    /// int8 activations per token, int4 weights per group (torchao FakeQuantizedLinear).
    Int8Int4,
    /// MXFP4 activations and weights, blocks of 32 (torchao MXFakeQuantizedLinear).
    Mxfp4,
}

#[derive(Debug, Clone, Serialize)]
pub struct QatPlan {
    pub grids: QatGrids,
    /// e.g. "int8, per token, asymmetric (torchao IntxFakeQuantizeConfig)".
    pub activations: String,
    /// e.g. "int4, per group of 32 input features, asymmetric (torchao Int4WeightFakeQuantizeConfig)".
    pub weights: String,
    pub group_size: u64,
    /// Linear layers per decoder layer, by Hugging Face name, and the head.
    pub modules: Vec<String>,
    pub num_layers: u64,
    /// The first optimizer step that trains fake-quantized (0 = from the start).
    pub from_step: u64,
    /// What the fake-quantized layers do to their biases, when the model has any and that
    /// differs from plain training.
    pub biases: Option<String>,
    pub saved: &'static str,
}

/// The `qat` block over the architecture; the rules (config/rules.rs) have already refused the
/// dtype pairs recipe does not build.
pub fn plan(c: &Config, arch: &Architecture) -> Result<Option<QatPlan>, String> {
    let Some(q) = &c.quantization.qat else { return Ok(None) };
    if arch.moe.is_some() {
        return Err("unsupported-qat-moe: quantization-aware training of a mixture of experts is not built \
                    (transformers' experts are not nn.Linear modules, which torchao leaves unquantized)"
            .into());
    }
    let mx = q.weight_dtype == QatDtype::Mxfp4;
    // Axolotl: an unset group_size falls back to the int4 config's own default, 128; MX blocks
    // are 32 (the rules refuse any other group_size).
    let group_size = if mx { 32 } else { q.group_size.map_or(128, u64::from) };
    let mut linears = arch.layer_linears();
    linears.push(arch.lm_head());
    if let Some(l) = linears.iter().find(|l| l.in_features % group_size != 0) {
        return Err(if mx {
            format!(
                "unsupported-qat-mxfp4-width: {}'s {} input features are not a multiple of the MX block size 32 \
                 (torchao's to_mx asserts it; it pads nothing)",
                l.name, l.in_features
            )
        } else {
            format!(
                "qat.group_size {group_size} does not divide {}'s {} input features (torchao groups each weight row)",
                l.name, l.in_features
            )
        });
    }
    let biased: Vec<&str> = linears.iter().filter(|l| l.bias).map(|l| l.name).collect();
    let (grids, activations, weights, biases) = if mx {
        let block = "per block of 32 along the input features, FP4 E2M1 (round to nearest even, ±6) with an E8M0 \
                     power-of-two scale per block (RCEIL: 2^ceil(log2(amax / 6)))";
        (
            QatGrids::Mxfp4,
            format!(
                "mxfp4 {block} (torchao MXFakeQuantizeConfig; Axolotl fake-quantizes the input whatever activation_dtype says)"
            ),
            format!("mxfp4 {block}, in the weight's stored dtype (torchao MXFakeQuantizedLinear, emulated gemm)"),
            (!biased.is_empty()).then(|| {
                format!(
                    "biases of {} get no gradient and stay as loaded (torchao's MX backward returns none for them)",
                    biased.join(", ")
                )
            }),
        )
    } else {
        (
            QatGrids::Int8Int4,
            "int8, per token, asymmetric (torchao IntxFakeQuantizeConfig)".to_string(),
            format!(
                "int4, per group of {group_size} input features, asymmetric (torchao Int4WeightFakeQuantizeConfig)"
            ),
            None,
        )
    };
    Ok(Some(QatPlan {
        grids,
        activations,
        weights,
        group_size,
        modules: linears.iter().map(|l| l.name.to_string()).collect(),
        num_layers: arch.num_layers,
        from_step: q.fake_quant_after_n_steps.unwrap_or(0),
        biases,
        saved: "full-precision weights, as Axolotl saves them: quantize the trained model afterwards with the same \
                qat settings (Axolotl's `axolotl quantize`)",
    }))
}

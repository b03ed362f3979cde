//! Quantization-aware training in the plan: which layers are fake-quantized, on which grids,
//! from which optimizer step, and what is saved (full-precision weights, as Axolotl saves them).

use super::arch::Architecture;
use crate::config::Config;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct QatPlan {
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
    // Axolotl: an unset group_size falls back to the int4 config's own default, 128.
    let group_size = q.group_size.map_or(128, u64::from);
    let mut linears = arch.layer_linears();
    linears.push(arch.lm_head());
    if let Some(l) = linears.iter().find(|l| l.in_features % group_size != 0) {
        return Err(format!(
            "qat.group_size {group_size} does not divide {}'s {} input features (torchao groups each weight row)",
            l.name, l.in_features
        ));
    }
    Ok(Some(QatPlan {
        activations: "int8, per token, asymmetric (torchao IntxFakeQuantizeConfig)".into(),
        weights: format!(
            "int4, per group of {group_size} input features, asymmetric (torchao Int4WeightFakeQuantizeConfig)"
        ),
        group_size,
        modules: linears.iter().map(|l| l.name.to_string()).collect(),
        num_layers: arch.num_layers,
        from_step: q.fake_quant_after_n_steps.unwrap_or(0),
        saved: "full-precision weights, as Axolotl saves them: quantize the trained model afterwards with the same \
                qat settings (Axolotl's `axolotl quantize`)",
    }))
}

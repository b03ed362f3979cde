//! Bottleneck adapters (`adapter: bottleneck`) resolved against the architecture: AdapterHub's
//! `SeqBnConfig` (pfeiffer) or `DoubleSeqBnConfig` (houlsby) with the recipe's reduction factor and
//! activation, the bottleneck's width, and the exact trainable count `adapters` reports for the
//! same model (each adapter: a down projection H → d and an up projection d → H, both with bias).

use super::arch::Architecture;
use crate::config::Config;
use crate::config::adapter::BottleneckArchitecture;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BottleneckPlan {
    pub architecture: BottleneckArchitecture,
    /// The `adapters` config class: `DoubleSeqBnConfig` (houlsby) or `SeqBnConfig` (pfeiffer).
    pub config_class: String,
    pub reduction_factor: f64,
    /// The bottleneck's width d: `hidden_size // reduction_factor`, at least 1 (adapters' rule).
    pub bottleneck_size: u64,
    /// adapters' `non_linearity` name.
    pub non_linearity: String,
    /// An adapter after the attention block of every layer (adapters' `mh_adapter`).
    pub mh_adapter: bool,
    /// An adapter after the feed-forward block of every layer (adapters' `output_adapter`).
    pub output_adapter: bool,
    /// adapters' `original_ln_before`: the adapter reads the block's output plus its residual
    /// (pfeiffer) instead of the block's output alone (houlsby).
    pub original_ln_before: bool,
}

/// adapters' default reduction factor for both architectures.
const DEFAULT_REDUCTION_FACTOR: f64 = 16.0;

pub fn plan(c: &Config, arch: &Architecture) -> BottleneckPlan {
    let a = &c.adapter;
    let architecture = a.adapter_config.unwrap_or(BottleneckArchitecture::Pfeiffer);
    let reduction_factor = a.adapter_reduction_factor.unwrap_or(DEFAULT_REDUCTION_FACTOR);
    let houlsby = architecture == BottleneckArchitecture::Houlsby;
    let default_activation = if houlsby { "swish" } else { "relu" };
    BottleneckPlan {
        architecture,
        config_class: if houlsby { "DoubleSeqBnConfig" } else { "SeqBnConfig" }.into(),
        reduction_factor,
        bottleneck_size: bottleneck_size(arch.hidden_size, reduction_factor),
        non_linearity: a.adapter_non_linearity.as_deref().unwrap_or(default_activation).to_lowercase(),
        mh_adapter: houlsby,
        output_adapter: true,
        original_ln_before: !houlsby,
    }
}

/// adapters' `int(hidden_size // reduction_factor)`, at least 1.
pub fn bottleneck_size(hidden: u64, reduction_factor: f64) -> u64 {
    ((hidden as f64 / reduction_factor).floor() as u64).max(1)
}

impl BottleneckPlan {
    /// `houlsby` or `pfeiffer`, as the recipe writes it.
    pub fn architecture_name(&self) -> &'static str {
        match self.architecture {
            BottleneckArchitecture::Houlsby => "houlsby",
            BottleneckArchitecture::Pfeiffer => "pfeiffer",
        }
    }

    pub fn adapters_per_layer(&self) -> u64 {
        u64::from(self.mh_adapter) + u64::from(self.output_adapter)
    }

    /// Parameters of one decoder layer's adapters: each H·d + d (down) + d·H + H (up).
    pub fn per_layer_parameters(&self, arch: &Architecture) -> u64 {
        let (h, d) = (arch.hidden_size, self.bottleneck_size);
        self.adapters_per_layer() * (2 * h * d + d + h)
    }

    /// Activation elements per token and layer the backward pass keeps: per adapter its input
    /// (H), the down projection before and after the activation (2·d) and the new residual (H).
    pub fn activations_per_token(&self, arch: &Architecture) -> u64 {
        self.adapters_per_layer() * (2 * arch.hidden_size + 2 * self.bottleneck_size)
    }
}

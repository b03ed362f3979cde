//! Countering forgetting while training: a replay buffer (`replay_datasets`, `replay_ratio`) and
//! elastic weight consolidation (`ewc_lambda`, `ewc_datasets`, `ewc_samples`), resolved into what
//! the executor does and what it costs. Forgetting is *measured* by `forgetting_datasets`
//! (plan/data.rs); this module plans what acts against it.
//!
//! Replay: each optimizer step's global batch of G rows holds R = round(G × replay_ratio) replay
//! rows and G − R new ones, so an epoch over the training rows takes ⌈rows / (G − R)⌉ steps.
//! The tokenized replay set stays in host memory for the whole run.
//!
//! EWC: the Fisher information F and the anchor θ0 are fp32 copies of every affected tensor, 8
//! bytes per element: every trainable tensor in a full fine-tune; under an adapter, each adapted
//! base weight W (out × in; its penalty is on the adapter's merged delta) and every other
//! trainable tensor (modules trained in full, DoRA magnitudes), not the LoRA factors themselves.
//! The estimate costs one forward and backward pass per sample, batch 1, before the first step.

use super::adapter::{AdapterMethod, AdapterPlan};
use super::arch::Architecture;
use super::data::DatasetPlan;
use crate::config::Config;
use serde::Serialize;

/// EWC's Fisher samples when `ewc_samples` is absent.
pub const DEFAULT_EWC_SAMPLES: u64 = 64;

#[derive(Debug, Clone, Serialize)]
pub struct ReplayPlan {
    pub datasets: Vec<DatasetPlan>,
    pub ratio: f64,
    /// Replay rows in each optimizer step's global batch.
    pub rows_per_step: u64,
    /// New training rows in each step's global batch (the global batch less the replay rows).
    pub new_rows_per_step: u64,
    /// Host bytes of the tokenized replay set at most (rows × sequence_len × 16: int64 ids and
    /// labels), when its rows are counted before tokenizing.
    pub host_bytes_at_most: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EwcPlan {
    pub datasets: Vec<DatasetPlan>,
    pub lambda: f64,
    /// Samples the Fisher information is estimated on (fewer when the set is smaller).
    pub samples: u64,
    /// Adapted base weights whose merged delta is penalised (adapters), and their elements.
    pub adapted_weights: u64,
    pub adapted_elements: u64,
    /// Trainable tensors penalised directly (every one in a full fine-tune), and their elements.
    pub direct_elements: u64,
    /// Fisher + θ0 in fp32: 8 bytes per affected element.
    pub bytes: u64,
    /// Tokens through a forward and backward pass for the estimate, at most (samples × sequence_len).
    pub estimate_tokens_at_most: u64,
}

/// Replay rows per step of a global batch of `global` rows (at least one is new and one replayed:
/// checked by `replay`).
pub fn replay_rows(ratio: f64, global: u64) -> u64 {
    (ratio * global as f64).round() as u64
}

pub fn replay(c: &Config, datasets: Vec<DatasetPlan>, global: u64) -> Result<Option<ReplayPlan>, String> {
    let Some(ratio) = c.training.replay_ratio else { return Ok(None) };
    let rows_per_step = replay_rows(ratio, global);
    if rows_per_step == 0 || rows_per_step >= global {
        return Err(format!(
            "`replay_ratio` {ratio} of a global batch of {global} rows gives {rows_per_step} replay rows and {} new \
             ones; each step needs at least one of each: change replay_ratio, or raise micro_batch_size or \
             gradient_accumulation_steps",
            global - rows_per_step.min(global)
        ));
    }
    let seq = u64::from(c.data.sequence_len);
    let rows: Option<u64> = datasets.iter().map(|d| d.rows).sum();
    Ok(Some(ReplayPlan {
        datasets,
        ratio,
        rows_per_step,
        new_rows_per_step: global - rows_per_step,
        host_bytes_at_most: rows.map(|r| r * seq * 16),
    }))
}

/// The elements EWC keeps Fisher and θ0 for: (adapted base weights, their elements, direct elements).
pub fn ewc_elements(arch: &Architecture, adapter: &AdapterPlan) -> (u64, u64, u64) {
    if adapter.method == AdapterMethod::Full {
        return (0, 0, adapter.trainable_parameters);
    }
    let mut shapes: Vec<(u64, u64, u64)> = arch
        .layer_linears()
        .iter()
        .filter(|l| adapter.target_modules.iter().any(|t| t == l.short_name()))
        .map(|l| (l.in_features, l.out_features, arch.num_layers))
        .collect();
    if adapter.target_modules.iter().any(|t| t == "lm_head") {
        let l = arch.lm_head();
        shapes.push((l.in_features, l.out_features, 1));
    }
    let weights = shapes.iter().map(|s| s.2).sum();
    let elements = shapes.iter().map(|(i, o, n)| i * o * n).sum();
    let factors: u64 = shapes.iter().map(|(i, o, n)| adapter.r * (i + o) * n).sum();
    (weights, elements, adapter.trainable_parameters.saturating_sub(factors))
}

/// EWC's Fisher and θ0 bytes for this recipe (0 without `ewc_lambda`), for the memory estimate.
pub fn ewc_bytes(c: &Config, arch: &Architecture, adapter: &AdapterPlan) -> u64 {
    if c.training.ewc_lambda.is_none() {
        return 0;
    }
    let (_, adapted, direct) = ewc_elements(arch, adapter);
    8 * (adapted + direct)
}

pub fn ewc(c: &Config, datasets: Vec<DatasetPlan>, arch: &Architecture, adapter: &AdapterPlan) -> Option<EwcPlan> {
    let lambda = c.training.ewc_lambda?;
    let samples = c.training.ewc_samples.map_or(DEFAULT_EWC_SAMPLES, u64::from);
    let (adapted_weights, adapted_elements, direct_elements) = ewc_elements(arch, adapter);
    Some(EwcPlan {
        datasets,
        lambda,
        samples,
        adapted_weights,
        adapted_elements,
        direct_elements,
        bytes: ewc_bytes(c, arch, adapter),
        estimate_tokens_at_most: samples * u64::from(c.data.sequence_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_rows_round_the_share_of_the_global_batch() {
        assert_eq!(replay_rows(0.25, 8), 2);
        assert_eq!(replay_rows(0.25, 4), 1);
        assert_eq!(replay_rows(0.5, 3), 2);
        assert_eq!(replay_rows(0.1, 4), 0);
    }
}

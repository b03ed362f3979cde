//! Objectives: what turns a batch into a loss. The model computes hidden states (and logits
//! through its head); an objective scores them. One training loop serves every objective and
//! every world size: supervised fine-tuning is the first; preference and reward objectives are
//! further implementations of the same trait, not further loops.
//!
//! Losses are sums over the objective's units (trained tokens for language modelling) and the loop
//! divides by the units of the whole global batch, so accumulation and data parallelism give the
//! exact mean.

use crate::data::packing::HostBatch;
use crate::model::llama::{CausalLm, Inputs};
use tch::{Device, Kind, Tensor};

/// A micro-batch on the model's device.
pub struct DeviceBatch {
    pub input_ids: Tensor,
    pub labels: Tensor,
    pub position_ids: Tensor,
    pub segment_ids: Option<Tensor>,
    /// Precomputed reference log-probabilities per row (preference pairs).
    pub reference_logps: Option<Tensor>,
}

impl DeviceBatch {
    /// Uploads a collated batch. On CUDA the copy goes through pinned memory without blocking: a
    /// plain copy from pageable memory would wait for the previous step's kernels (a host-device
    /// sync every step).
    pub fn upload(b: &HostBatch, device: Device) -> DeviceBatch {
        let shape = [b.rows as i64, b.len as i64];
        let t = |v: &[i64]| {
            let host = Tensor::from_slice(v).view(shape);
            match device {
                Device::Cpu => host,
                _ => host.pin_memory(device).to_device_(device, Kind::Int64, true, false),
            }
        };
        DeviceBatch {
            input_ids: t(&b.input_ids),
            labels: t(&b.labels),
            position_ids: t(&b.position_ids),
            segment_ids: b.segment_ids.as_deref().map(t),
            reference_logps: b.reference_logps.as_deref().map(|r| Tensor::from_slice(r).to_device(device)),
        }
    }

    /// A batch of tensors already on the device.
    pub fn new(inputs: &Inputs, labels: &Tensor) -> DeviceBatch {
        DeviceBatch {
            input_ids: inputs.input_ids.shallow_clone(),
            labels: labels.shallow_clone(),
            position_ids: inputs.position_ids.shallow_clone(),
            segment_ids: inputs.segment_ids.map(Tensor::shallow_clone),
            reference_logps: None,
        }
    }

    pub fn inputs(&self) -> Inputs<'_> {
        Inputs { input_ids: &self.input_ids, position_ids: &self.position_ids, segment_ids: self.segment_ids.as_ref() }
    }
}

/// A batch's loss, summed over its units, and the objective's metric sums beside it.
pub struct LossSums {
    pub loss: Tensor,
    /// `Objective::metric_sums()` values (None when it has none).
    pub metrics: Option<Tensor>,
}

pub trait Objective: Sync {
    /// The units this batch's loss sums over (the loop adds them up over the global batch).
    fn units(&self, batch: &HostBatch) -> usize;

    /// How many metric sums `loss_sum` returns beside the loss.
    fn metric_sums(&self) -> usize {
        0
    }

    /// The loss summed over the batch's units, from the model's final hidden states, and the
    /// metric sums (detached).
    fn loss_sum(&self, model: &CausalLm, hidden: &Tensor, batch: &DeviceBatch, train: bool) -> LossSums;

    /// Metrics beside the loss from metric sums reduced over `units` (a step's global batch, or the
    /// whole validation set), under the names metrics.jsonl records.
    fn metrics(&self, sums: &[f64], units: f64) -> Vec<(&'static str, f64)> {
        let _ = (sums, units);
        Vec::new()
    }

    /// Evaluation metrics from the summed loss and metric sums of the whole validation set, the
    /// loss first (`eval_` prefix).
    fn eval_metrics(&self, loss_sum: f64, units: f64, sums: &[f64]) -> Vec<(String, f64)> {
        let loss = loss_sum / units.max(1.0);
        let mut out = vec![("eval_loss".to_string(), loss)];
        out.extend(self.metrics(sums, units).into_iter().map(|(k, v)| (format!("eval_{k}"), v)));
        out
    }
}

/// Supervised fine-tuning: next-token cross-entropy over labels != -100 (labels aligned with
/// input_ids and shifted here, as transformers does).
pub struct Supervised;

impl Objective for Supervised {
    fn units(&self, batch: &HostBatch) -> usize {
        batch.trained_tokens
    }

    fn loss_sum(&self, model: &CausalLm, hidden: &Tensor, batch: &DeviceBatch, train: bool) -> LossSums {
        LossSums { loss: next_token_loss_sum(&model.head(hidden, train), &batch.labels), metrics: None }
    }

    fn eval_metrics(&self, loss_sum: f64, units: f64, _sums: &[f64]) -> Vec<(String, f64)> {
        let loss = loss_sum / units.max(1.0);
        vec![("eval_loss".into(), loss), ("eval_perplexity".into(), loss.exp())]
    }
}

/// The preference losses recipe trains, as TRL 1.16's DPOTrainer defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreferenceLoss {
    /// `-log σ(β Δ)`, Δ = (chosen − ref chosen) − (rejected − ref rejected) log-probabilities.
    Dpo,
    /// `(Δ̄ − 1/(2β))²`, Δ̄ the same difference with each side averaged over its answer tokens.
    Ipo,
}

/// Preference training on pairs against a reference model: the policy with its adapters switched
/// off (LoRA/QLoRA; no second copy), or log-probabilities computed once before training
/// (`reference_logps`). Sequence log-probabilities are summed over answer tokens.
/// A batch holds every pair's chosen sequence, then every rejected one (`PairRows::collate`).
pub struct Preference {
    pub loss: PreferenceLoss,
    pub beta: f64,
}

/// Per sequence: summed log-probabilities of the labelled tokens, their count, and the summed
/// vocabulary-mean logit over them (TRL's `logits/*` metric), from logits [N, T, V].
fn sequence_logps(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor, Tensor) {
    let t = logits.size()[1];
    let shifted = logits.narrow(1, 0, t - 1);
    let targets = labels.narrow(1, 1, t - 1);
    let mask = targets.ne(-100);
    let safe = targets.where_scalarother(&mask, 0);
    let token_logps = shifted.log_softmax(-1, Kind::Float).gather(2, &safe.unsqueeze(-1), false).squeeze_dim(-1);
    let maskf = mask.to_kind(Kind::Float);
    let logps = (token_logps * &maskf).sum_dim_intlist(1, false, Kind::Float);
    let mean_logits = shifted.detach().mean_dim(-1, false, Kind::Float);
    let logit_sums = (mean_logits * &maskf).sum_dim_intlist(1, false, Kind::Float);
    (logps, maskf.sum_dim_intlist(1, false, Kind::Float), logit_sums)
}

/// The reference model's summed answer log-probabilities of every row: the same weights with the
/// adapters switched off, without gradients.
pub fn reference_logps(model: &CausalLm, batch: &DeviceBatch) -> Tensor {
    tch::no_grad(|| {
        model.without_adapters(|| {
            let h = model.hidden_states(&batch.inputs(), false);
            sequence_logps(&model.head(&h, false), &batch.labels).0
        })
    })
}

impl Objective for Preference {
    fn units(&self, batch: &HostBatch) -> usize {
        batch.rows / 2
    }

    fn metric_sums(&self) -> usize {
        10
    }

    fn loss_sum(&self, model: &CausalLm, hidden: &Tensor, batch: &DeviceBatch, train: bool) -> LossSums {
        let (logps, lengths, logit_sums) = sequence_logps(&model.head(hidden, train), &batch.labels);
        let ref_logps = match &batch.reference_logps {
            Some(r) => r.shallow_clone(),
            None => reference_logps(model, batch),
        };
        let n = logps.size()[0] / 2;
        let half = |t: &Tensor| (t.narrow(0, 0, n), t.narrow(0, n, n));
        let (chosen, rejected) = half(&logps);
        let (ref_chosen, ref_rejected) = half(&ref_logps);
        let chosen_ratio = &chosen - ref_chosen;
        let rejected_ratio = &rejected - ref_rejected;
        let per_pair = match self.loss {
            PreferenceLoss::Dpo => -((&chosen_ratio - &rejected_ratio) * self.beta).log_sigmoid(),
            PreferenceLoss::Ipo => {
                let (chosen_len, rejected_len) = half(&lengths);
                let delta = &chosen_ratio / chosen_len.clamp_min(1.0) - &rejected_ratio / rejected_len.clamp_min(1.0);
                (delta - 1.0 / (2.0 * self.beta)).square()
            }
        };
        let chosen_rewards = chosen_ratio.detach() * self.beta;
        let rejected_rewards = rejected_ratio.detach() * self.beta;
        let (chosen_tokens, rejected_tokens) = half(&lengths);
        let (chosen_logits, rejected_logits) = half(&logit_sums);
        let sum = |t: &Tensor| t.sum(Kind::Float);
        let metrics = Tensor::stack(
            &[
                sum(&chosen_rewards),
                sum(&rejected_rewards),
                sum(&chosen_rewards.gt_tensor(&rejected_rewards).to_kind(Kind::Float)),
                sum(&(&chosen_rewards - &rejected_rewards)),
                sum(&chosen.detach()),
                sum(&rejected.detach()),
                sum(&chosen_logits),
                sum(&chosen_tokens),
                sum(&rejected_logits),
                sum(&rejected_tokens),
            ],
            0,
        );
        LossSums { loss: per_pair.sum(Kind::Float), metrics: Some(metrics) }
    }

    fn metrics(&self, s: &[f64], pairs: f64) -> Vec<(&'static str, f64)> {
        let per_pair = |v: f64| v / pairs.max(1.0);
        vec![
            ("rewards/chosen", per_pair(s[0])),
            ("rewards/rejected", per_pair(s[1])),
            ("rewards/accuracies", per_pair(s[2])),
            ("rewards/margins", per_pair(s[3])),
            ("logps/chosen", per_pair(s[4])),
            ("logps/rejected", per_pair(s[5])),
            ("logits/chosen", s[6] / s[7].max(1.0)),
            ("logits/rejected", s[8] / s[9].max(1.0)),
        ]
    }
}

/// Summed cross-entropy of logits [B, T, V] predicting labels [B, T] shifted by one.
pub fn next_token_loss_sum(logits: &Tensor, labels: &Tensor) -> Tensor {
    let t = logits.size()[1];
    let v = logits.size()[2];
    let shifted = logits.narrow(1, 0, t - 1).reshape([-1, v]);
    let targets = labels.narrow(1, 1, t - 1).reshape([-1]);
    shifted.cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::Sum, -100, 0.0)
}

/// Forward and backward of one micro-batch under `objective`; gradients accumulate into the
/// trainable tensors. The loss is divided by `denominator` (the units of the whole global batch,
/// times the fp16 loss scale's inverse). Returns the undivided summed loss and the metric sums
/// (detached).
pub fn forward_backward(
    model: &CausalLm,
    objective: &dyn Objective,
    batch: &DeviceBatch,
    denominator: f64,
    checkpointing: bool,
    layer_seed: &dyn Fn(usize),
) -> LossSums {
    let forward = model.forward_train(&batch.inputs(), checkpointing, layer_seed);
    let sums = objective.loss_sum(model, &forward.hidden, batch, true);
    model.probe_memory();
    (&sums.loss / denominator).backward();
    model.probe_memory();
    model.finish_backward(forward, layer_seed);
    LossSums { loss: sums.loss.detach(), metrics: sums.metrics }
}

/// The summed loss of a batch and its metric sums without gradients (evaluation).
pub fn loss_sum_no_grad(model: &CausalLm, objective: &dyn Objective, batch: &DeviceBatch) -> LossSums {
    let _guard = tch::no_grad_guard();
    let hidden = model.hidden_states(&batch.inputs(), false);
    objective.loss_sum(model, &hidden, batch, false)
}

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
        }
    }

    /// A batch of tensors already on the device.
    pub fn new(inputs: &Inputs, labels: &Tensor) -> DeviceBatch {
        DeviceBatch {
            input_ids: inputs.input_ids.shallow_clone(),
            labels: labels.shallow_clone(),
            position_ids: inputs.position_ids.shallow_clone(),
            segment_ids: inputs.segment_ids.map(Tensor::shallow_clone),
        }
    }

    pub fn inputs(&self) -> Inputs<'_> {
        Inputs { input_ids: &self.input_ids, position_ids: &self.position_ids, segment_ids: self.segment_ids.as_ref() }
    }
}

pub trait Objective {
    /// The units this batch's loss sums over (the loop adds them up over the global batch).
    fn units(&self, batch: &HostBatch) -> usize;

    /// The loss summed over the batch's units, from the model's final hidden states.
    fn loss_sum(&self, model: &CausalLm, hidden: &Tensor, batch: &DeviceBatch, train: bool) -> Tensor;

    /// Evaluation metrics from the summed loss and unit count of the whole validation set, under
    /// the names metrics.jsonl records (`eval_` prefix).
    fn eval_metrics(&self, loss_sum: f64, units: f64) -> Vec<(&'static str, f64)>;
}

/// Supervised fine-tuning: next-token cross-entropy over labels != -100 (labels aligned with
/// input_ids and shifted here, as transformers does).
pub struct Supervised;

impl Objective for Supervised {
    fn units(&self, batch: &HostBatch) -> usize {
        batch.trained_tokens
    }

    fn loss_sum(&self, model: &CausalLm, hidden: &Tensor, batch: &DeviceBatch, train: bool) -> Tensor {
        next_token_loss_sum(&model.head(hidden, train), &batch.labels)
    }

    fn eval_metrics(&self, loss_sum: f64, units: f64) -> Vec<(&'static str, f64)> {
        let loss = loss_sum / units.max(1.0);
        vec![("eval_loss", loss), ("eval_perplexity", loss.exp())]
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
/// times the fp16 loss scale's inverse). Returns the undivided summed loss (detached).
pub fn forward_backward(
    model: &CausalLm,
    objective: &dyn Objective,
    batch: &DeviceBatch,
    denominator: f64,
    checkpointing: bool,
    layer_seed: &dyn Fn(usize),
) -> Tensor {
    let forward = model.forward_train(&batch.inputs(), checkpointing, layer_seed);
    let loss = objective.loss_sum(model, &forward.hidden, batch, true);
    model.probe_memory();
    (&loss / denominator).backward();
    model.probe_memory();
    model.finish_backward(forward, layer_seed);
    loss.detach()
}

/// The summed loss of a batch without gradients (evaluation).
pub fn loss_sum_no_grad(model: &CausalLm, objective: &dyn Objective, batch: &DeviceBatch) -> Tensor {
    let _guard = tch::no_grad_guard();
    let hidden = model.hidden_states(&batch.inputs(), false);
    objective.loss_sum(model, &hidden, batch, false)
}

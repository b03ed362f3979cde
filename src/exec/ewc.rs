//! Elastic weight consolidation (Kirkpatrick et al. 2017): a penalty that holds the weights that
//! mattered for earlier data (`ewc_datasets`) near where training found them.
//!
//! Before the first step, the diagonal empirical Fisher information of every affected tensor is
//! estimated from per-sample gradients (batch 1, adapters on, no dropout):
//!
//! ```text
//! F = 1/N · Σ_n (∂L_n/∂θ)²      L_n: the training objective's mean loss on sample n (its trained tokens)
//! ```
//!
//! and every step adds to the loss
//!
//! ```text
//! penalty = λ/2 · Σ_tensors Σ_elements F ⊙ (θ − θ0)²
//! ```
//!
//! - Full fine-tuning: θ is every trainable tensor, θ0 its value at the start.
//! - LoRA / QLoRA / DoRA: for each adapted linear layer, F is the Fisher information of its base
//!   weight W (the gradient with respect to W, frozen or quantized, taken through a zero probe
//!   added to it: model/linear.rs) and θ − θ0 is the merged delta ΔW − ΔW0 with ΔW = scaling · B·A;
//!   ΔW0 is the delta at the start (zero for a fresh adapter, the loaded adapter's with
//!   `lora_model_dir`). Other trainable tensors (modules trained in full, DoRA magnitudes) are
//!   penalised directly as in full fine-tuning.
//! - IA3, prompt and prefix tuning (and embedding LoRA's pair): the trained tensors are penalised
//!   directly (their own Fisher information and start values).
//!
//! F and θ0 are fp32. metrics.jsonl records the penalty as `ewc_penalty` beside `loss` (the data
//! loss); the gradient is that of their sum. With several ranks every rank adds penalty / world, so
//! the summed gradients carry it once. Under sharding (direct terms only) each rank penalises its
//! chunks and adds the gradient λ·F ⊙ (θ − θ0) to its gradient chunks (exec/shard.rs), once the
//! gradients are summed. Checkpoints carry F and θ0 (`ewc.safetensors`), so a resumed
//! run applies the same penalty as the uninterrupted one.

use super::objective::{DeviceBatch, Objective};
use crate::data::{Sample, packing};
use crate::model::linear::{Adapter, Linear};
use crate::model::llama::{CausalLm, Trainable};
use crate::model::weights::Checkpoint;
use std::path::Path;
use tch::{Kind, Tensor};

/// The checkpoint file holding F and θ0.
pub const FILE: &str = "ewc.safetensors";

/// What one penalty term measures.
enum Target {
    /// A trainable tensor, penalised directly.
    Direct(Tensor),
    /// An adapted base weight: the adapter's merged delta `scaling · B·A` (fp32).
    Delta { a: Tensor, b: Tensor, scaling: f64 },
}

impl Target {
    fn value(&self) -> Tensor {
        match self {
            Target::Direct(t) => t.to_kind(Kind::Float),
            Target::Delta { a, b, scaling } => b.to_kind(Kind::Float).matmul(&a.to_kind(Kind::Float)) * *scaling,
        }
    }
}

struct Term {
    /// The tensor's name (Hugging Face's for a base weight, the saved name otherwise).
    name: String,
    target: Target,
    fisher: Tensor,
    anchor: Tensor,
}

pub struct Ewc {
    pub lambda: f64,
    terms: Vec<Term>,
    /// Samples the Fisher information was estimated on (0 when read from a checkpoint).
    pub samples: usize,
}

/// The affected tensors of `model`, by name, each with its layer when it is an adapted base weight.
fn targets(model: &CausalLm) -> Vec<(String, Target, Option<&Linear>)> {
    let mut out = Vec::new();
    match &model.trainable {
        Trainable::Nothing => {}
        // IA3's vectors and prompt or prefix tuning's virtual tokens: the penalty on the trained
        // tensors themselves.
        Trainable::Everything
        | Trainable::Ia3 { .. }
        | Trainable::Prompt { .. }
        | Trainable::Prefix { .. }
        | Trainable::Bottleneck(_) => {
            for p in model.trainable_params() {
                out.push((p.name, Target::Direct(p.tensor), None));
            }
        }
        Trainable::Lora { .. } => {
            for lin in model.linears().into_iter().chain([&model.lm_head]) {
                let lora = match &lin.adapter {
                    Some(Adapter::Lora(l)) => l,
                    Some(Adapter::Dora(d)) => &d.lora,
                    Some(Adapter::Ia3(_)) | None => continue,
                };
                let target =
                    Target::Delta { a: lora.a.shallow_clone(), b: lora.b.shallow_clone(), scaling: lora.scaling };
                out.push((format!("{}.weight", lin.name), target, Some(lin)));
            }
            for p in model.trainable_params() {
                if !(p.name.ends_with("lora_A.weight") || p.name.ends_with("lora_B.weight")) {
                    out.push((p.name, Target::Direct(p.tensor), None));
                }
            }
        }
    }
    out
}

fn zero_grad(t: &Tensor) {
    let mut g = t.grad();
    if g.defined() {
        let _ = g.zero_();
    }
}

impl Ewc {
    /// Estimates F on the first `n` of `samples` (all when fewer) and takes θ0 from the model as it
    /// is now. Every trainable gradient is zero afterwards.
    pub fn estimate(
        model: &CausalLm,
        objective: &dyn Objective,
        lambda: f64,
        samples: &[Sample],
        n: usize,
        seq_len: usize,
        pad_id: i64,
    ) -> Result<Ewc, String> {
        let rows = packing::unpacked(&samples[..n.min(samples.len())], seq_len);
        let targets = targets(model);
        // The probes: zero tensors whose gradient is the base weight's.
        for (_, _, lin) in &targets {
            if let Some(lin) = lin {
                let shape = match &lin.quantized {
                    Some(q) => q.shape(),
                    None => lin.weight.size(),
                };
                *lin.probe.borrow_mut() =
                    Some(Tensor::zeros(shape, (Kind::Float, model.device)).set_requires_grad(true));
            }
        }
        // Each term's tensor whose gradient is read: the probe of an adapted layer, else the tensor.
        let sensitive: Vec<Tensor> = targets
            .iter()
            .map(|(_, target, lin)| {
                match (lin.and_then(|l| l.probe.borrow().as_ref().map(Tensor::shallow_clone)), target) {
                    (Some(probe), _) => probe,
                    (None, Target::Direct(t)) => t.shallow_clone(),
                    (None, Target::Delta { b, .. }) => b.shallow_clone(),
                }
            })
            .collect();
        let mut fisher: Vec<Tensor> = sensitive.iter().map(|s| Tensor::zeros_like(s).to_kind(Kind::Float)).collect();
        let mut used = 0usize;
        for row in &rows {
            let host = <packing::Row as packing::Example>::collate(&[row], pad_id, None);
            let units = objective.units(&host);
            if units == 0 {
                continue;
            }
            let batch = DeviceBatch::upload(&host, model.device);
            let hidden = model.hidden_states(&batch.inputs(), false);
            let sums = objective.loss_sum(model, &hidden, &batch, false);
            (sums.loss / units as f64).backward();
            for (f, s) in fisher.iter_mut().zip(&sensitive) {
                let g = s.grad();
                if g.defined() {
                    *f += g.to_kind(Kind::Float).square();
                    zero_grad(s);
                }
            }
            for p in model.trainable_params() {
                zero_grad(&p.tensor);
            }
            used += 1;
        }
        for (_, _, lin) in &targets {
            if let Some(lin) = lin {
                lin.probe.borrow_mut().take();
            }
        }
        if used == 0 {
            return Err("ewc_datasets: no sample with a trained token to estimate the Fisher information on".into());
        }
        let _guard = tch::no_grad_guard();
        let terms = targets
            .into_iter()
            .zip(fisher)
            .map(|((name, target, _), f)| {
                let anchor = target.value().detach().copy();
                Term { name, target, fisher: f / used as f64, anchor }
            })
            .collect();
        Ok(Ewc { lambda, terms, samples: used })
    }

    /// F and θ0 as a checkpoint saved them (`ewc.safetensors` in `dir`).
    pub fn load(model: &CausalLm, lambda: f64, dir: &Path) -> Result<Ewc, String> {
        let file = dir.join(FILE);
        if !file.is_file() {
            return Err(format!(
                "{}: holds no EWC state ({FILE}); it was saved by a run without ewc_lambda, so it cannot be resumed \
                 with EWC",
                dir.display()
            ));
        }
        let ckpt = Checkpoint::open_files(dir, &[file])?;
        let mut terms = Vec::new();
        for (name, target, _) in targets(model) {
            let shape = target.value().size();
            let fisher = ckpt.load(&format!("fisher.{name}"), &shape, Kind::Float, model.device)?;
            let anchor = ckpt.load(&format!("anchor.{name}"), &shape, Kind::Float, model.device)?;
            terms.push(Term { name, target, fisher, anchor });
        }
        Ok(Ewc { lambda, terms, samples: 0 })
    }

    /// The tensors a checkpoint saves: `fisher.NAME` and `anchor.NAME`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.terms
            .iter()
            .flat_map(|t| {
                [
                    (format!("fisher.{}", t.name), t.fisher.shallow_clone()),
                    (format!("anchor.{}", t.name), t.anchor.shallow_clone()),
                ]
            })
            .collect()
    }

    /// λ/2 · Σ F ⊙ (θ − θ0)², a scalar with a graph to the trainable tensors.
    pub fn penalty(&self) -> Tensor {
        let mut total = Tensor::zeros([], (Kind::Float, self.device()));
        for t in &self.terms {
            total += (&t.fisher * (t.target.value() - &t.anchor).square()).sum(Kind::Float);
        }
        total * (self.lambda / 2.0)
    }

    fn device(&self) -> tch::Device {
        self.terms.first().map_or(tch::Device::Cpu, |t| t.fisher.device())
    }

    /// Σ F over every term (for the log line).
    pub fn fisher_sum(&self) -> f64 {
        let _guard = tch::no_grad_guard();
        self.terms.iter().map(|t| t.fisher.sum(Kind::Float).double_value(&[])).sum()
    }

    /// The Fisher information kept for the tensor `name` (an adapted base weight's own name).
    pub fn fisher_of(&self, name: &str) -> Option<&Tensor> {
        self.terms.iter().find(|t| t.name == name).map(|t| &t.fisher)
    }

    /// How many tensors are penalised.
    pub fn tensors(&self) -> usize {
        self.terms.len()
    }

    /// Under sharded training (exec/shard.rs): each term as (its trained tensor's name, F, θ0),
    /// whose chunks the sharder penalises. A LoRA term's merged delta B·A needs both whole
    /// tensors, which sharding splits: not built.
    pub fn direct_terms(&self) -> Result<Vec<(&str, &Tensor, &Tensor)>, String> {
        self.terms
            .iter()
            .map(|t| match t.target {
                Target::Direct(_) => Ok((t.name.as_str(), &t.fisher, &t.anchor)),
                Target::Delta { .. } => Err(format!(
                    "ewc_lambda with LoRA: the penalty on `{}` is on the merged delta B·A, which sharded training \
                     splits across ranks (not built); train data-parallel (without fsdp / deepspeed), or EWC a full \
                     fine-tune, IA3 or prompt tuning",
                    t.name
                )),
            })
            .collect()
    }
}

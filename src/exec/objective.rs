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
    /// Packed rows on CUDA: the samples' boundaries, for per-sample flash attention.
    pub varlen: Option<crate::model::llama::Varlen>,
    /// Precomputed reference log-probabilities per row (preference pairs).
    pub reference_logps: Option<Tensor>,
    /// Each row's length before padding [B] (None: every position is real).
    pub lengths: Option<Tensor>,
    /// The padding token (None: rows are not padded). A reward model reads each row's score at
    /// its last token that is not this one, as transformers' `…ForSequenceClassification` does.
    pub pad_id: Option<i64>,
    /// KTO: whether each row's answer is desirable [B] (bool).
    pub desirable: Option<Tensor>,
    /// KTO: the KL rows (each prompt with another row's answer), scored without gradients.
    pub kl_rows: Option<Box<DeviceBatch>>,
}

impl DeviceBatch {
    /// Uploads a collated batch. On CUDA the copy goes through pinned memory without blocking: a
    /// plain copy from pageable memory would wait for the previous step's kernels (a host-device
    /// sync every step). It runs on a side stream (exec/torch_ops.rs `copy_on_side_stream`), which
    /// the compute stream waits for by an event: since a step reads nothing back, the host
    /// uploads the next step's micro-batches while the GPU computes this one, and the copies
    /// overlap that compute (double buffering: this step's batches in use, the next one's filling).
    pub fn upload(b: &HostBatch, device: Device) -> DeviceBatch {
        let shape = [b.rows as i64, b.len as i64];
        let upload = |host: Tensor| match device {
            Device::Cpu => host,
            // Without pinned memory (none left), a blocking copy is still correct.
            _ => match super::torch_ops::pin_memory(&host) {
                Ok(pinned) => match device {
                    // On a side stream, overlapping the compute still queued (exec/torch_ops.rs).
                    Device::Cuda(ordinal) => {
                        super::torch_ops::copy_on_side_stream(&pinned, ordinal).unwrap_or_else(|e| {
                            tracing::debug!("side stream: {e}; copying on the compute stream");
                            pinned.to_device_(device, host.kind(), true, false)
                        })
                    }
                    _ => pinned.to_device_(device, host.kind(), true, false),
                },
                Err(e) => {
                    tracing::debug!("pin_memory: {e}; copying the batch from pageable memory");
                    host.to_device(device)
                }
            },
        };
        let t = |v: &[i64]| upload(Tensor::from_slice(v).view(shape));
        DeviceBatch {
            input_ids: t(&b.input_ids),
            labels: t(&b.labels),
            position_ids: t(&b.position_ids),
            segment_ids: b.segment_ids.as_deref().map(t),
            // Only CUDA has the varlen kernel; the CPU takes the mask.
            varlen: match device {
                Device::Cpu => None,
                _ => b.sample_boundaries().map(|(cu, longest)| crate::model::llama::Varlen {
                    cu_seqlens: upload(Tensor::from_slice(&cu)),
                    max_seqlen: longest,
                }),
            },
            reference_logps: b.reference_logps.as_deref().map(|r| Tensor::from_slice(r).to_device(device)),
            lengths: Some(
                Tensor::from_slice(&b.row_lengths.iter().map(|&n| n as i64).collect::<Vec<_>>()).to_device(device),
            ),
            pad_id: Some(b.pad_id),
            desirable: b.desirable.as_ref().map(|d| Tensor::from_slice(d).to_device(device)),
            kl_rows: b.kl_rows.as_ref().map(|k| Box::new(DeviceBatch::upload(k, device))),
        }
    }

    /// A batch of tensors already on the device.
    pub fn new(inputs: &Inputs, labels: &Tensor) -> DeviceBatch {
        DeviceBatch {
            input_ids: inputs.input_ids.shallow_clone(),
            labels: labels.shallow_clone(),
            position_ids: inputs.position_ids.shallow_clone(),
            segment_ids: inputs.segment_ids.map(Tensor::shallow_clone),
            varlen: inputs.varlen.map(crate::model::llama::Varlen::shallow_clone),
            reference_logps: None,
            lengths: None,
            pad_id: None,
            desirable: None,
            kl_rows: None,
        }
    }

    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            input_ids: &self.input_ids,
            position_ids: &self.position_ids,
            segment_ids: self.segment_ids.as_ref(),
            varlen: self.varlen.as_ref(),
        }
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

    /// Forward and backward of the loss at once, for objectives that compute it in pieces (the
    /// chunked head and cross-entropy): accumulates the gradients of the head's trainable tensors
    /// (the loss divided by `denominator`, times fp16's `loss_scale` when given) and returns the
    /// loss sums (detached) with the gradient
    /// of that divided loss with respect to `hidden` (None when `hidden` needs none). None: the
    /// caller differentiates `loss_sum` as a whole.
    fn loss_backward(
        &self,
        model: &CausalLm,
        hidden: &Tensor,
        batch: &DeviceBatch,
        denominator: f64,
        loss_scale: Option<&Tensor>,
    ) -> Option<(LossSums, Option<Tensor>)> {
        let _ = (model, hidden, batch, denominator, loss_scale);
        None
    }

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
///
/// With `tokens_per_chunk`, the head and the cross-entropy never see the whole micro-batch: the
/// hidden states are cut into chunks of that many tokens, and each chunk's logits, loss
/// and backward pass run at once (`loss_backward`), accumulating the head's gradients and filling
/// the gradient of the hidden states, which then goes back through the decoder in one pass. Only
/// one chunk's logits are ever alive, and nothing is approximated: the same sums in another order.
///
/// With prompt tuning's `virtual_tokens` N, the hidden states have N positions in front of the
/// labels: the labels get N × -100 in front, as peft's forward gives them, so the last virtual
/// token predicts each row's first label (which therefore counts, when it is not -100).
pub struct Supervised {
    pub tokens_per_chunk: Option<i64>,
    pub virtual_tokens: i64,
}

impl Supervised {
    /// The plain loss over the whole logits.
    pub const WHOLE: Supervised = Supervised { tokens_per_chunk: None, virtual_tokens: 0 };

    /// The labels aligned with the hidden states: -100 in front of them for each virtual token.
    fn labels(&self, labels: &Tensor) -> Tensor {
        if self.virtual_tokens == 0 {
            return labels.shallow_clone();
        }
        let ignored = Tensor::full([labels.size()[0], self.virtual_tokens], -100, (Kind::Int64, labels.device()));
        Tensor::cat(&[ignored, labels.shallow_clone()], 1)
    }

    /// The hidden states [B·T, H] (a view) and each position's next-token target [B·T]: the
    /// labels shifted by one, the last position of each row ignored (-100), so no copy of the
    /// hidden states is made and their gradient has their shape.
    fn flat_targets(hidden: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
        let (b, t, h) = (hidden.size()[0], hidden.size()[1], hidden.size()[2]);
        let last = Tensor::full([b, 1], -100, (Kind::Int64, labels.device()));
        let targets = Tensor::cat(&[labels.narrow(1, 1, t - 1), last], 1).reshape([-1]);
        (hidden.reshape([-1, h]), targets)
    }
}

/// Summed cross-entropy of the head over hidden states `x` [n, H] against `targets` [n].
fn head_loss_sum(model: &CausalLm, x: &Tensor, targets: &Tensor, train: bool) -> Tensor {
    model.head(x, train).cross_entropy_loss::<Tensor>(targets, None, tch::Reduction::Sum, -100, 0.0)
}

/// The summed cross-entropy of fp32 `logits` [n, V] against `targets` [n] (-100: ignored), and its
/// gradient divided by `denominator`: softmax minus the one-hot target on counted rows, zero on
/// ignored ones. The gradient is computed in the logits' own storage (their values are no longer
/// needed: the head's backward pass reads its input and weight, not its output), so a chunk holds
/// one fp32 copy of its logits.
fn cross_entropy_and_grad(logits: &Tensor, targets: &Tensor, denominator: f64) -> (Tensor, Tensor) {
    let _guard = tch::no_grad_guard();
    let counted = targets.ne(-100);
    let safe = targets.where_scalarother(&counted, 0).unsqueeze(1);
    let weight = counted.to_kind(Kind::Float).unsqueeze(1);
    let picked = logits.gather(1, &safe, false);
    let max = logits.amax([1], true);
    // exp(logits - max) in place, then the log-sum-exp from its row sums.
    let mut probs = logits.detach();
    probs -= &max;
    let _ = probs.exp_();
    let sums = probs.sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
    let lse = sums.log() + &max;
    let loss = ((lse - picked) * &weight).sum(Kind::Float);
    let scale = weight / denominator;
    probs /= sums / &scale;
    let _ = probs.scatter_add_(1, &safe, &(-scale));
    (loss, probs)
}

impl Objective for Supervised {
    fn units(&self, batch: &HostBatch) -> usize {
        // Behind virtual tokens, each row's first label is predicted too.
        let first_labels = if self.virtual_tokens > 0 {
            (0..batch.rows).filter(|&r| batch.labels[r * batch.len] != crate::data::IGNORE).count()
        } else {
            0
        };
        batch.trained_tokens + first_labels
    }

    fn loss_sum(&self, model: &CausalLm, hidden: &Tensor, batch: &DeviceBatch, train: bool) -> LossSums {
        let labels = self.labels(&batch.labels);
        let Some(chunk) = self.tokens_per_chunk else {
            return LossSums { loss: next_token_loss_sum(&model.head(hidden, train), &labels), metrics: None };
        };
        // Chunk by chunk (evaluation, under no_grad: nothing is kept between chunks).
        let (x, targets) = Self::flat_targets(hidden, &labels);
        let n = x.size()[0];
        let mut loss = Tensor::zeros([], (Kind::Float, hidden.device()));
        for start in (0..n).step_by(chunk.max(1) as usize) {
            let len = chunk.min(n - start);
            loss += head_loss_sum(model, &x.narrow(0, start, len), &targets.narrow(0, start, len), train);
        }
        LossSums { loss, metrics: None }
    }

    fn loss_backward(
        &self,
        model: &CausalLm,
        hidden: &Tensor,
        batch: &DeviceBatch,
        denominator: f64,
        loss_scale: Option<&Tensor>,
    ) -> Option<(LossSums, Option<Tensor>)> {
        let chunk = self.tokens_per_chunk?.max(1);
        let hidden_detached = hidden.detach().contiguous();
        let (x, targets) = Self::flat_targets(&hidden_detached, &self.labels(&batch.labels));
        let n = x.size()[0];
        let wants_grad = hidden.requires_grad();
        let grad = wants_grad.then(|| hidden_detached.zeros_like());
        let flat_grad = grad.as_ref().map(|g| g.view([n, -1]));
        let mut loss = Tensor::zeros([], (Kind::Float, hidden.device()));
        for start in (0..n).step_by(chunk as usize) {
            let len = chunk.min(n - start);
            let piece = x.narrow(0, start, len).detach().set_requires_grad(wants_grad);
            let logits = model.head(&piece, true);
            let (sum, mut logit_grad) = cross_entropy_and_grad(&logits, &targets.narrow(0, start, len), denominator);
            if let Some(scale) = loss_scale {
                logit_grad *= scale.reshape([]);
            }
            model.probe_memory();
            loss += sum;
            if logits.requires_grad()
                && let Err(e) = super::torch_ops::backward_with_grad(&logits, &logit_grad)
            {
                panic!("the chunked loss's backward pass: {e}");
            }
            drop((logits, logit_grad));
            if let Some(flat) = &flat_grad {
                flat.narrow(0, start, len).copy_(&piece.grad());
            }
        }
        Some((LossSums { loss, metrics: None }, grad))
    }

    fn eval_metrics(&self, loss_sum: f64, units: f64, _sums: &[f64]) -> Vec<(String, f64)> {
        let loss = loss_sum / units.max(1.0);
        vec![("eval_loss".into(), loss), ("eval_perplexity".into(), loss.exp())]
    }
}

/// The preference losses recipe trains, as TRL 1.16 defines them: DPO and IPO (its DPOTrainer,
/// against a reference model), SimPO (its CPO trainer, `loss_type="simpo"`) and ORPO (its ORPO
/// trainer), both without a reference model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PreferenceLoss {
    /// `-log σ(β Δ)`, Δ = (chosen − ref chosen) − (rejected − ref rejected) log-probabilities.
    Dpo,
    /// `(Δ̄ − 1/(2β))²`, Δ̄ the same difference with each side averaged over its answer tokens.
    Ipo,
    /// `-log σ(β (c̄ − r̄) − γ) + cpo_alpha · NLL(chosen answers)`, c̄ / r̄ the answers' mean
    /// token log-probabilities.
    Simpo { gamma: f64, cpo_alpha: f64 },
    /// `NLL(chosen prompt + answer) − β · log σ(log odds(c̄) − log odds(r̄))`.
    Orpo,
}

impl PreferenceLoss {
    fn needs_reference(self) -> bool {
        matches!(self, PreferenceLoss::Dpo | PreferenceLoss::Ipo)
    }
}

/// Preference training on pairs. DPO and IPO compare with a reference model: the policy with its
/// adapters switched off (LoRA/QLoRA; no second copy), or log-probabilities computed once before
/// training (`reference_logps`). Sequence log-probabilities are summed over answer tokens (averaged
/// for IPO, SimPO and ORPO). A batch holds every pair's chosen sequence, then every rejected one
/// (`PairRows::collate`).
pub struct Preference {
    pub loss: PreferenceLoss,
    /// β of DPO, IPO and SimPO; ORPO's odds-ratio weight (`orpo_alpha`).
    pub beta: f64,
    /// DPO / IPO: weigh each pair's loss as WPO does (`dpo_use_weighting`, TRL's `use_weighting`): by
    /// w(chosen) · w(rejected), w = exp(mean over answer tokens of log p(token) − log Σ_v p(v)²),
    /// without gradients.
    pub use_weighting: bool,
}

/// Per-token log-probabilities of the next tokens [N, T-1] under logits [N, T, V], with the
/// label mask (labels != -100) and, when `lengths` are given, the mask of real next tokens.
struct TokenLogps {
    answer: Tensor,
    answer_mask: Tensor,
    real: Option<(Tensor, Tensor)>,
    /// log Σ_v p(v)² at each position (WPO's weights), when asked for.
    /// Every next-token log-distribution [N, T-1, V], without a graph (WPO's weights, KTO's
    /// entropy): computed once, with the answers' log-probabilities.
    log_probs: Tensor,
}

fn token_logps(logits: &Tensor, batch: &DeviceBatch, full_sequence: bool) -> TokenLogps {
    let t = logits.size()[1];
    let log_probs = logits.narrow(1, 0, t - 1).log_softmax(-1, Kind::Float);
    let gather = |ids: &Tensor, mask: &Tensor| {
        let safe = ids.where_scalarother(mask, 0);
        log_probs.gather(2, &safe.unsqueeze(-1), false).squeeze_dim(-1)
    };
    let targets = batch.labels.narrow(1, 1, t - 1);
    let answer_mask = targets.ne(-100);
    let answer = gather(&targets, &answer_mask);
    let real = full_sequence.then(|| {
        let next = batch.input_ids.narrow(1, 1, t - 1);
        let positions = Tensor::arange_start(1, t, (Kind::Int64, logits.device())).unsqueeze(0);
        let mask = match &batch.lengths {
            Some(lengths) => positions.lt_tensor(&lengths.unsqueeze(1)),
            None => positions.ones_like().to_kind(Kind::Bool).expand_as(&next),
        };
        (gather(&next, &mask), mask.to_kind(Kind::Float))
    });
    TokenLogps { answer, answer_mask: answer_mask.to_kind(Kind::Float), real, log_probs: log_probs.detach() }
}

/// Summed answer log-probabilities per row.
fn sequence_logps(logits: &Tensor, batch: &DeviceBatch) -> Tensor {
    let t = token_logps(logits, batch, false);
    (t.answer * t.answer_mask).sum_dim_intlist(1, false, Kind::Float)
}

/// The reference model's summed answer log-probabilities of every row: the same weights with the
/// adapters switched off, without gradients.
pub fn reference_logps(model: &CausalLm, batch: &DeviceBatch) -> Tensor {
    tch::no_grad(|| {
        model.without_adapters(|| {
            let h = model.hidden_states(&batch.inputs(), false);
            sequence_logps(&model.head(&h, false), batch)
        })
    })
}

/// log(1 − exp(x)) for x < 0, as TRL's ORPO computes it.
fn log1mexp(x: &Tensor) -> Tensor {
    let t = -std::f64::consts::LN_2;
    let small = (-x.exp()).log1p();
    let large = (-x.expm1()).log();
    small.where_self(&x.lt(t), &large)
}

/// Metric sums of a preference batch, in this order (`Preference::metrics` reads them).
const PREFERENCE_SUMS: usize = 13;

impl Objective for Preference {
    fn units(&self, batch: &HostBatch) -> usize {
        batch.rows / 2
    }

    fn metric_sums(&self) -> usize {
        PREFERENCE_SUMS
    }

    fn loss_sum(&self, model: &CausalLm, hidden: &Tensor, batch: &DeviceBatch, train: bool) -> LossSums {
        let logits = model.head(hidden, train);
        let orpo = self.loss == PreferenceLoss::Orpo;
        let tokens = token_logps(&logits, batch, orpo);
        let sums = (&tokens.answer * &tokens.answer_mask).sum_dim_intlist(1, false, Kind::Float);
        let lengths = tokens.answer_mask.sum_dim_intlist(1, false, Kind::Float);
        let n = sums.size()[0] / 2;
        let half = |t: &Tensor| (t.narrow(0, 0, n), t.narrow(0, n, n));
        let (chosen_len, rejected_len) = half(&lengths);
        let pairs = n as f64;
        let sum = |t: &Tensor| t.sum(Kind::Float);
        // The chosen answers' (SimPO) or whole chosen sequences' (ORPO) mean token NLL over the batch,
        // as TRL's CrossEntropyLoss, counted once per pair so the global mean over pairs keeps it.
        let chosen_nll = |values: &Tensor, mask: &Tensor| {
            let (v, m) = (values.narrow(0, 0, n), mask.narrow(0, 0, n));
            -sum(&(v * &m)) / sum(&m).clamp_min(1.0)
        };
        let zero = || Tensor::zeros([], (Kind::Float, logits.device()));
        let (per_pair, chosen_scores, rejected_scores, nll, odds) = match self.loss {
            PreferenceLoss::Dpo | PreferenceLoss::Ipo => {
                let reference = match &batch.reference_logps {
                    Some(r) => r.shallow_clone(),
                    None => reference_logps(model, batch),
                };
                let (chosen, rejected) = half(&sums);
                let (ref_chosen, ref_rejected) = half(&reference);
                let chosen_ratio = &chosen - ref_chosen;
                let rejected_ratio = &rejected - ref_rejected;
                let per_pair = if self.loss == PreferenceLoss::Dpo {
                    -((&chosen_ratio - &rejected_ratio) * self.beta).log_sigmoid()
                } else {
                    let delta =
                        &chosen_ratio / chosen_len.clamp_min(1.0) - &rejected_ratio / rejected_len.clamp_min(1.0);
                    (delta - 1.0 / (2.0 * self.beta)).square()
                };
                let per_pair = if self.use_weighting {
                    let log_sum_sq = (&tokens.log_probs * 2.0).logsumexp(-1, false);
                    let aligned = (tokens.answer.detach() - log_sum_sq) * &tokens.answer_mask;
                    let weights = (aligned.sum_dim_intlist(1, false, Kind::Float) / lengths.clamp_min(1.0)).exp();
                    let (chosen_w, rejected_w) = half(&weights);
                    per_pair * chosen_w * rejected_w
                } else {
                    per_pair
                };
                (per_pair, chosen_ratio, rejected_ratio, zero(), None)
            }
            PreferenceLoss::Simpo { gamma, cpo_alpha } => {
                let means = &sums / &lengths;
                let (chosen, rejected) = half(&means);
                let per_pair = -((&chosen - &rejected) * self.beta - gamma).log_sigmoid();
                let nll = if cpo_alpha == 0.0 { zero() } else { chosen_nll(&tokens.answer, &tokens.answer_mask) };
                let per_pair = per_pair + &nll * cpo_alpha;
                (per_pair, chosen, rejected, nll, None)
            }
            PreferenceLoss::Orpo => {
                let means = &sums / &lengths;
                let (chosen, rejected) = half(&means);
                let log_odds = (&chosen - &rejected) - (log1mexp(&chosen) - log1mexp(&rejected));
                let ratio = log_odds.log_sigmoid();
                let (real, real_mask) = tokens.real.as_ref().expect("ORPO reads whole sequences");
                let nll = chosen_nll(real, real_mask);
                let per_pair = &nll - &ratio * self.beta;
                (per_pair, chosen, rejected, nll, Some((ratio, log_odds)))
            }
        };
        let chosen_rewards = chosen_scores.detach() * self.beta;
        let rejected_rewards = rejected_scores.detach() * self.beta;
        // logits/*: DPO averages the vocabulary-mean logit over answer tokens, as TRL's DPOTrainer;
        // SimPO and ORPO over every real position of the rows (TRL's CPO and ORPO trainers also
        // average over padding, whose logits depend on how a model attends from padding: not kept).
        let mean_logits = logits.detach().mean_dim(-1, false, Kind::Float);
        let t = mean_logits.size()[1];
        let real_positions = |width: i64| -> Tensor {
            let positions = Tensor::arange(width, (Kind::Int64, logits.device())).unsqueeze(0);
            match &batch.lengths {
                Some(lengths) => positions.lt_tensor(&lengths.unsqueeze(1)).to_kind(Kind::Float),
                None => positions.ones_like().to_kind(Kind::Float).expand([mean_logits.size()[0], width], false),
            }
        };
        let (logit_sums, logit_counts) = match self.loss {
            PreferenceLoss::Dpo | PreferenceLoss::Ipo => {
                let shifted = mean_logits.narrow(1, 0, t - 1) * &tokens.answer_mask;
                (shifted.sum_dim_intlist(1, false, Kind::Float), lengths.shallow_clone())
            }
            PreferenceLoss::Simpo { .. } | PreferenceLoss::Orpo => {
                // ORPO's trainer leaves out the last position, as its logits predict nothing.
                let width = if self.loss == PreferenceLoss::Orpo { t - 1 } else { t };
                let mask = real_positions(width);
                let values = mean_logits.narrow(1, 0, width) * &mask;
                (values.sum_dim_intlist(1, false, Kind::Float), mask.sum_dim_intlist(1, false, Kind::Float))
            }
        };
        let (chosen_logits, rejected_logits) = half(&logit_sums);
        let (chosen_counts, rejected_counts) = half(&logit_counts);
        let (chosen_logps, rejected_logps) = if self.loss.needs_reference() {
            half(&sums)
        } else {
            (chosen_scores.shallow_clone(), rejected_scores.shallow_clone())
        };
        let (odds_ratio, odds_chosen) = match &odds {
            Some((ratio, log_odds)) => (sum(&ratio.detach()), sum(&log_odds.detach())),
            None => (zero(), zero()),
        };
        let metrics = Tensor::stack(
            &[
                sum(&chosen_rewards),
                sum(&rejected_rewards),
                sum(&chosen_rewards.gt_tensor(&rejected_rewards).to_kind(Kind::Float)),
                sum(&(&chosen_rewards - &rejected_rewards)),
                sum(&chosen_logps.detach()),
                sum(&rejected_logps.detach()),
                sum(&chosen_logits),
                sum(&chosen_counts),
                sum(&rejected_logits),
                sum(&rejected_counts),
                nll.detach() * pairs,
                odds_ratio,
                odds_chosen,
            ],
            0,
        );
        LossSums { loss: per_pair.sum(Kind::Float), metrics: Some(metrics) }
    }

    fn metrics(&self, s: &[f64], pairs: f64) -> Vec<(&'static str, f64)> {
        let per_pair = |v: f64| v / pairs.max(1.0);
        let mut out = vec![
            ("rewards/chosen", per_pair(s[0])),
            ("rewards/rejected", per_pair(s[1])),
            ("rewards/accuracies", per_pair(s[2])),
            ("rewards/margins", per_pair(s[3])),
            ("logps/chosen", per_pair(s[4])),
            ("logps/rejected", per_pair(s[5])),
            ("logits/chosen", s[6] / s[7].max(1.0)),
            ("logits/rejected", s[8] / s[9].max(1.0)),
        ];
        match self.loss {
            PreferenceLoss::Simpo { .. } => out.push(("nll_loss", per_pair(s[10]))),
            PreferenceLoss::Orpo => out.extend([
                ("nll_loss", per_pair(s[10])),
                ("log_odds_ratio", per_pair(s[11])),
                ("log_odds_chosen", per_pair(s[12])),
            ]),
            _ => {}
        }
        out
    }
}

/// KTO, as TRL 1.16's KTOTrainer (`loss_type="kto"`) defines it: each row is a prompt with one
/// answer, desirable or not. With r = β (log π(answer) − log π_ref(answer)) summed over answer
/// tokens and z the micro-batch's KL estimate (mean log-ratio of its KL rows, each prompt paired
/// with another row's answer, without gradients, clamped at 0), a desirable row's loss is
/// `w_d (1 − σ(r − β z))` and an undesirable one's `w_u (1 − σ(β z − r))`; the loss is their mean.
/// The reference is the policy with its adapters switched off. TRL also averages z over the ranks
/// of a step; recipe keeps it per micro-batch, so N ranks equal one rank with accumulation N.
pub struct Kto {
    pub beta: f64,
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
}

/// Metric sums of a KTO batch, in this order (`Kto::metrics` reads them).
const KTO_SUMS: usize = 13;

impl Objective for Kto {
    fn units(&self, batch: &HostBatch) -> usize {
        batch.rows
    }

    fn metric_sums(&self) -> usize {
        KTO_SUMS
    }

    fn loss_sum(&self, model: &CausalLm, hidden: &Tensor, batch: &DeviceBatch, train: bool) -> LossSums {
        let desirable = batch.desirable.as_ref().expect("KTO batches say which answers are desirable");
        let kl_rows = batch.kl_rows.as_ref().expect("KTO batches carry their KL rows");
        let logits = model.head(hidden, train);
        let tokens = token_logps(&logits, batch, false);
        let logps = (&tokens.answer * &tokens.answer_mask).sum_dim_intlist(1, false, Kind::Float);
        let reference = reference_logps(model, batch);
        let (kl_logps, kl_reference) = tch::no_grad(|| {
            let h = model.hidden_states(&kl_rows.inputs(), false);
            (sequence_logps(&model.head(&h, false), kl_rows), reference_logps(model, kl_rows))
        });
        let kl = (kl_logps - kl_reference).mean(Kind::Float).clamp_min(0.0).detach();
        let ratio = &logps - &reference;
        let d = desirable.to_kind(Kind::Float);
        let u = 1.0 - &d;
        let desirable_losses = 1.0 - ((&ratio - &kl) * self.beta).sigmoid();
        let undesirable_losses = 1.0 - ((&kl - &ratio) * self.beta).sigmoid();
        let per_row =
            &desirable_losses * &d * self.desirable_weight + &undesirable_losses * &u * self.undesirable_weight;
        let rewards = ratio.detach() * self.beta;
        let logps = logps.detach();
        let sum = |t: &Tensor| t.sum(Kind::Float);
        // Per answer token: the vocabulary-mean logit and the entropy of the next-token distribution.
        let t = logits.size()[1];
        let answer_mask = &tokens.answer_mask;
        let mean_logits = logits.detach().narrow(1, 0, t - 1).mean_dim(-1, false, Kind::Float) * answer_mask;
        let log_probs = &tokens.log_probs;
        let entropy = -(log_probs.exp() * log_probs).sum_dim_intlist(-1, false, Kind::Float) * answer_mask;
        let row_logits = mean_logits.sum_dim_intlist(1, false, Kind::Float);
        let row_tokens = answer_mask.sum_dim_intlist(1, false, Kind::Float);
        let rows = d.size()[0] as f64;
        let metrics = Tensor::stack(
            &[
                &kl * rows,
                sum(&d),
                sum(&u),
                sum(&(&rewards * &d)),
                sum(&(&rewards * &u)),
                sum(&(&logps * &d)),
                sum(&(&logps * &u)),
                sum(&(&row_logits * &d)),
                sum(&(&row_tokens * &d)),
                sum(&(&row_logits * &u)),
                sum(&(&row_tokens * &u)),
                sum(&entropy),
                sum(answer_mask),
            ],
            0,
        );
        LossSums { loss: per_row.sum(Kind::Float), metrics: Some(metrics) }
    }

    /// TRL's names: `kl`, `rewards/chosen` / `rejected` / `margins`, `logps/*`, `logits/*` and
    /// `entropy`; a side without rows in the step is left out, as TRL does.
    fn metrics(&self, s: &[f64], rows: f64) -> Vec<(&'static str, f64)> {
        let mut out = vec![("kl", s[0] / rows.max(1.0))];
        let (chosen, rejected) = (s[1], s[2]);
        if chosen > 0.0 {
            out.extend([("rewards/chosen", s[3] / chosen), ("logps/chosen", s[5] / chosen)]);
        }
        if rejected > 0.0 {
            out.extend([("rewards/rejected", s[4] / rejected), ("logps/rejected", s[6] / rejected)]);
        }
        if chosen > 0.0 && rejected > 0.0 {
            out.push(("rewards/margins", s[3] / chosen - s[4] / rejected));
        }
        if s[8] > 0.0 {
            out.push(("logits/chosen", s[7] / s[8]));
        }
        if s[10] > 0.0 {
            out.push(("logits/rejected", s[9] / s[10]));
        }
        out.push(("entropy", s[11] / s[12].max(1.0)));
        out
    }
}

/// A Bradley-Terry reward model, as TRL 1.16's RewardTrainer trains one: each sequence's score is
/// the `score` head at its last non-padding token, and a pair's loss is `-log σ(r_chosen −
/// r_rejected)`, plus `center_rewards_coefficient · (r_chosen + r_rejected)²` when set (which keeps
/// rewards centred on zero). Batches hold every pair's chosen sequence, then every rejected one.
pub struct Reward {
    pub center_rewards_coefficient: Option<f64>,
}

/// Each row's score at its last token that is not padding (transformers' rule: the rightmost
/// position whose id differs from the pad id; the last position when rows are not padded).
pub fn sequence_scores(model: &CausalLm, hidden: &Tensor, batch: &DeviceBatch) -> Tensor {
    let scores = model.score(hidden);
    let t = scores.size()[1];
    let last = match batch.pad_id {
        Some(pad) => {
            let positions = Tensor::arange(t, (Kind::Int64, scores.device())).unsqueeze(0);
            (positions * batch.input_ids.ne(pad).to_kind(Kind::Int64)).argmax(-1, false)
        }
        None => Tensor::full([scores.size()[0]], t - 1, (Kind::Int64, scores.device())),
    };
    scores.gather(1, &last.unsqueeze(1), false).squeeze_dim(1)
}

impl Objective for Reward {
    fn units(&self, batch: &HostBatch) -> usize {
        batch.rows / 2
    }

    fn metric_sums(&self) -> usize {
        3
    }

    fn loss_sum(&self, model: &CausalLm, hidden: &Tensor, batch: &DeviceBatch, _train: bool) -> LossSums {
        let rewards = sequence_scores(model, hidden, batch);
        let n = rewards.size()[0] / 2;
        let (chosen, rejected) = (rewards.narrow(0, 0, n), rewards.narrow(0, n, n));
        let bradley_terry = -(&chosen - &rejected).log_sigmoid();
        let per_pair = match self.center_rewards_coefficient {
            Some(c) => bradley_terry + (&chosen + &rejected).square() * c,
            None => bradley_terry,
        };
        let (chosen, rejected) = (chosen.detach(), rejected.detach());
        let metrics = Tensor::stack(
            &[
                chosen.gt_tensor(&rejected).to_kind(Kind::Float).sum(Kind::Float),
                (&chosen - &rejected).sum(Kind::Float),
                rewards.detach().sum(Kind::Float),
            ],
            0,
        );
        LossSums { loss: per_pair.sum(Kind::Float), metrics: Some(metrics) }
    }

    /// TRL's names: `accuracy` (chosen scored above rejected), `margin` (mean r_chosen − r_rejected),
    /// `mean_reward` (over both sequences of every pair).
    fn metrics(&self, s: &[f64], pairs: f64) -> Vec<(&'static str, f64)> {
        let pairs = pairs.max(1.0);
        vec![("accuracy", s[0] / pairs), ("margin", s[1] / pairs), ("mean_reward", s[2] / (2.0 * pairs))]
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
    forward_backward_scaled(model, objective, batch, denominator, None, checkpointing, layer_seed)
}

/// `forward_backward` with the loss multiplied by `loss_scale` (fp16's scale, a device tensor
/// [1]) before the backward pass, so the scale never travels to the host.
pub fn forward_backward_scaled(
    model: &CausalLm,
    objective: &dyn Objective,
    batch: &DeviceBatch,
    denominator: f64,
    loss_scale: Option<&Tensor>,
    checkpointing: bool,
    layer_seed: &dyn Fn(usize),
) -> LossSums {
    model.begin_routing();
    let forward = model.forward_train(&batch.inputs(), checkpointing, layer_seed);
    // A mixture of experts asking for it: the load-balancing term (model/moe.rs), differentiated
    // with the loss, and its value counted in the logged loss (which the loop divides by `denominator`).
    let routing = model.routing_loss(batch.lengths.as_ref(), checkpointing, loss_scale);
    let logged = |loss: Tensor| match &routing {
        Some((_, value)) => loss + value * denominator,
        None => loss,
    };
    if let Some((sums, grad)) = objective.loss_backward(model, &forward.hidden, batch, denominator, loss_scale) {
        let routing_term = routing.as_ref().map(|(term, _)| term).filter(|t| t.requires_grad());
        match (grad, routing_term) {
            // The vector-Jacobian product from the hidden states down: d(sum(hidden · g)).
            (Some(grad), term) => {
                let vjp = (&forward.hidden * grad).sum(Kind::Float);
                match term {
                    Some(t) => (vjp + t).backward(),
                    None => vjp.backward(),
                }
            }
            (None, Some(term)) => term.backward(),
            (None, None) => {}
        }
        model.probe_memory();
        model.finish_backward(forward, layer_seed);
        model.end_routing();
        return LossSums { loss: logged(sums.loss), metrics: sums.metrics };
    }
    let sums = objective.loss_sum(model, &forward.hidden, batch, true);
    model.probe_memory();
    let loss = match loss_scale {
        Some(scale) => &sums.loss * scale.reshape([]) / denominator,
        None => &sums.loss / denominator,
    };
    match routing.as_ref().map(|(term, _)| term) {
        Some(term) => (loss + term).backward(),
        None => loss.backward(),
    }
    model.probe_memory();
    model.finish_backward(forward, layer_seed);
    model.end_routing();
    LossSums { loss: logged(sums.loss.detach()), metrics: sums.metrics }
}

/// The summed loss of a batch and its metric sums without gradients (evaluation).
pub fn loss_sum_no_grad(model: &CausalLm, objective: &dyn Objective, batch: &DeviceBatch) -> LossSums {
    let _guard = tch::no_grad_guard();
    let hidden = model.hidden_states(&batch.inputs(), false);
    objective.loss_sum(model, &hidden, batch, false)
}

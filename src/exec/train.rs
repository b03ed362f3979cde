//! The training loop: micro-batches with gradient accumulation (the loss divided by the units of
//! the whole global batch, so accumulation equals one big batch), clipping, AdamW with the plan's
//! schedule, evaluation and early stopping, checkpoints and exact resume. The objective
//! (exec/objective.rs) turns batches into losses; the loop does not know which one it runs.
//!
//! No host-device sync per step: per-step loss and gradient norm stay on the device and are read
//! in one go at logging steps (and before a checkpoint, so a non-finite loss is never saved); the
//! fp16 loss scale and its overflow check stay there too (exec/loss_scale.rs). Every read goes
//! through exec/host_sync.rs, which counts them per step for the run summary.
//! Randomness is a pure function of (seed, step, micro-batch, layer) and the data order of (seed,
//! epoch), so a resumed run repeats the uninterrupted one exactly.
//!
//! One loop for every world size (exec/distributed.rs): each optimizer step consumes one global
//! batch of micro × accumulation × world sequences; rank r takes micro-batches r, r + world, ... of
//! the same shuffled order, so N ranks × micro b make the same batches (and dropout masks) as one
//! rank × b × accumulation N. Every rank counts the units of the whole global batch from the host
//! data (no communication), gradients are summed over the ranks in buckets, and every rank takes
//! the same step. Per-step values are reduced at logging steps only; a stop request (Ctrl-C) is
//! agreed on there too, so ranks never part ways. Only the main process writes.
//! Sharded strategies (exec/shard.rs) move gradients as each unit's backward pass ends and step
//! on this rank's chunks; every rank then runs as many forward and backward passes as the busiest
//! one (a rank short of micro-batches adds passes that count zero), because each pass gathers
//! parameters from all of them.

use super::checkpoint::{self, TrainerState};
use super::metrics::MetricsLog;
use super::objective::{self, DeviceBatch, LossSums, Objective};
use super::optimizer::AdamW;
use super::runtime::Runtime;
use crate::data::packing::{Example, HostBatch};
use crate::model::llama::{CausalLm, Trainable};
use crate::plan::Plan;
use crate::plan::schedule::{Schedule, Steps, learning_rate_at};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Kind, Tensor};

/// Set by Ctrl-C / SIGTERM: the loop saves a checkpoint and stops cleanly.
pub static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

pub struct Loop<'a, E: Example> {
    pub plan: &'a Plan,
    pub runtime: &'a Runtime,
    pub objective: &'a dyn Objective,
    pub model: &'a CausalLm,
    pub base_dir: &'a Path,
    /// Where the run's tokenizer files come from.
    pub tokenizer_dir: &'a Path,
    pub output_dir: &'a Path,
    pub train: &'a [E],
    /// `replay_datasets`' rows, `plan.replay`'s share of every step (empty without replay).
    pub replay: &'a [E],
    /// Elastic weight consolidation's penalty, added every step.
    pub ewc: Option<&'a super::ewc::Ewc>,
    pub validation: &'a [E],
    pub pad_id: i64,
    /// The run's tokenizer when it differs from the base's: checkpoints carry it.
    pub run_tokenizer: Option<&'a crate::data::Tokenizer>,
    pub progress: &'a indicatif::ProgressBar,
    /// Stop (as if killed) after this many optimizer steps; for tests of resume.
    pub stop_after: Option<u64>,
    pub steps: Steps,
    /// `do_causal_lm_eval`: generated answers scored at each evaluation (main process; every rank
    /// under sharding).
    pub causal_lm_eval: Option<&'a super::eval::CausalLmEval<'a>>,
    /// Sharded training's state (None: replicated, data-parallel or one process).
    pub sharder: Option<&'a super::shard::Sharder>,
    /// `unfrozen_parameters`' row ranges: gradient rows zeroed every step.
    pub frozen_rows: &'a super::unfrozen::FrozenRows,
    /// LISA: the decoder layers switched at the start of steps (exec/lisa.rs).
    pub lisa: Option<&'a std::cell::RefCell<super::lisa::Lisa>>,
    /// `pretraining_dataset`: the stream each step's rows are read from (`train` is empty then).
    pub stream: Option<&'a std::cell::RefCell<Vec<crate::data::stream::PretrainStream<'a>>>>,
}

pub struct Outcome {
    pub steps_done: u64,
    pub stopped_early: Option<String>,
    pub interrupted: bool,
    pub last_eval_loss: Option<f64>,
    pub tokens_per_second: f64,
    /// Payload bytes of the collectives of the last optimizer step (none for one process).
    pub collectives_per_step: crate::plan::shard::Collectives,
    /// Device-to-host reads per optimizer step, by kind of step.
    pub host_syncs: super::host_sync::StepSyncs,
}

/// A step's values still on the device.
struct Pending {
    step: u64,
    /// This rank's share of the global mean loss (the shares sum to it).
    loss: Tensor,
    grad_norm: Tensor,
    lr: f64,
    /// Tokens of the whole global batch.
    tokens: usize,
    /// Units of the whole global batch (the loss's denominator).
    units: usize,
    /// This rank's share of the objective's metric sums.
    metrics: Option<Tensor>,
    /// fp16: the scale this step's loss was multiplied by, on the device (its grad_norm is NaN
    /// when the step was skipped).
    loss_scale: Option<Tensor>,
    /// EWC's penalty at this step (before its update), detached.
    ewc_penalty: Option<Tensor>,
}

impl<E: Example> Loop<'_, E> {
    /// Rows of optimizer step `step` (0-based) for the whole global batch, one slice per
    /// micro-batch: `accumulation × world` of them; this rank's are those at index
    /// `a × world + rank`. Empty slices (the end of an epoch) are dropped by the caller.
    fn global_micro_batches(&self, step: u64, s: Steps, order: &mut (u64, Vec<usize>)) -> Vec<Vec<&E>> {
        let b = &self.plan.batch;
        let world = self.runtime.comm.world_size;
        let (mbs, count) = (b.micro_batch_size as usize, b.gradient_accumulation_steps as usize * world);
        let epoch = step / s.per_epoch;
        if order.0 != epoch || order.1.is_empty() {
            let mut idx: Vec<usize> = (0..self.train.len()).collect();
            let mut rng =
                rand_chacha::ChaCha8Rng::seed_from_u64(self.plan.training.seed ^ epoch.wrapping_mul(0x9E37_79B9));
            idx.shuffle(&mut rng);
            *order = (epoch, idx);
        }
        // With replay, a step's new rows are the global batch less its replay rows
        // (data/replay.rs places those).
        let replay_rows = match &self.plan.replay {
            Some(r) if !self.replay.is_empty() => r.rows_per_step as usize,
            _ => 0,
        };
        let new_rows = mbs * count - replay_rows;
        let start = ((step % s.per_epoch) as usize) * new_rows;
        let (lo, hi) = (start.min(order.1.len()), (start + new_rows).min(order.1.len()));
        let picks = crate::data::replay::step_picks(
            &order.1[lo..hi],
            step,
            self.replay.len(),
            replay_rows,
            self.plan.training.seed,
        );
        let rows: Vec<&E> = picks
            .into_iter()
            .map(|p| match p {
                crate::data::replay::Pick::Train(i) => &self.train[i],
                crate::data::replay::Pick::Replay(i) => &self.replay[i],
            })
            .collect();
        (0..count)
            .map(|j| {
                let (lo, hi) = ((j * mbs).min(rows.len()), ((j + 1) * mbs).min(rows.len()));
                rows[lo..hi].to_vec()
            })
            .collect()
    }

    /// A stream's rows of step `step`, one micro-batch per slot of the global batch (rank r's are
    /// those at a × world + r, as in `global_micro_batches`).
    fn stream_micro_batches(
        &self,
        streams: &std::cell::RefCell<Vec<crate::data::stream::PretrainStream<'_>>>,
        step: u64,
    ) -> Result<Vec<HostBatch>, String> {
        let b = &self.plan.batch;
        let (mbs, gas) = (b.micro_batch_size as usize, b.gradient_accumulation_steps as usize);
        let world = self.runtime.comm.world_size;
        let mut streams = streams.borrow_mut();
        let n = streams.len();
        let passes: u64 = streams.iter().map(|s| s.passes).sum();
        let mut out = Vec::with_capacity(gas * world);
        for j in 0..gas * world {
            let (which, from) = crate::data::stream::micro_batch_rows(step, j, mbs, gas, world, n);
            let rows = streams[which].rows_at(from, mbs)?;
            out.push(crate::data::stream::collate(&rows, self.pad_id));
        }
        if streams.iter().map(|s| s.passes).sum::<u64>() != passes {
            tracing::info!("pretraining stream: a new pass over the files begins at step {step}");
        }
        Ok(out)
    }

    fn pad_to(&self) -> Option<usize> {
        self.plan.batch.sample_packing.then_some(self.plan.batch.sequence_len as usize)
    }

    /// The objective's evaluation metrics over the validation rows (each rank scores every
    /// world-th chunk; the sums are reduced), the loss first. None without validation rows.
    pub fn evaluate(&self) -> Result<Option<Vec<(String, f64)>>, String> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        let comm = &self.runtime.comm;
        let device = self.model.device;
        let mbs = self.plan.training.eval_batch_size as usize;
        let k = self.objective.metric_sums() as i64;
        let mut total = Tensor::zeros([1 + k], (Kind::Float, device));
        let mut units = 0usize;
        let chunks: Vec<&[E]> = self.validation.chunks(mbs).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let items: Vec<&E> = chunk.iter().collect();
            let b = E::collate(&items, self.pad_id, self.pad_to());
            // Every rank counts every chunk's units (host data); each scores its share.
            units += self.objective.units(&b);
            if i % comm.world_size == comm.rank {
                let batch = DeviceBatch::upload(&b, device);
                total += sums_vector(objective::loss_sum_no_grad(self.model, self.objective, &batch));
            }
        }
        if self.sharder.is_some() {
            // Sharded: every rank runs as many passes as rank 0 (each gathers from all ranks);
            // the extra ones score the first chunk and are not counted.
            let rounds = chunks.len().div_ceil(comm.world_size);
            let mine = chunks.len().saturating_sub(comm.rank).div_ceil(comm.world_size);
            for _ in mine..rounds {
                let items: Vec<&E> = chunks[0].iter().collect();
                let batch = DeviceBatch::upload(&E::collate(&items, self.pad_id, self.pad_to()), device);
                let _ = objective::loss_sum_no_grad(self.model, self.objective, &batch);
            }
            self.model.end_inference();
        }
        comm.all_reduce_sum(&mut total)?;
        let sums = super::host_sync::read_f64(&total, "the evaluation sums")?;
        Ok(Some(self.objective.eval_metrics(sums[0], units as f64, &sums[1..])))
    }

    /// Evaluates, records the metrics at `step` and logs them; returns the evaluation loss.
    pub fn evaluate_and_log(&self, step: u64, log: &mut MetricsLog) -> Result<Option<f64>, String> {
        let Some(mut metrics) = self.evaluate()? else { return Ok(None) };
        // Sharded, every rank generates alike (each pass gathers from all of them).
        if let Some(c) = self.causal_lm_eval.filter(|_| self.runtime.is_main() || self.sharder.is_some()) {
            metrics.extend(c.run(self.model, self.plan.training.eval_batch_size as usize));
            if self.sharder.is_some() {
                self.model.end_inference();
            }
        }
        let shown: Vec<String> =
            metrics.iter().map(|(k, v)| format!("{}={v:.4}", k.trim_start_matches("eval_"))).collect();
        tracing::info!(step, metrics = shown.join(" "), "evaluation");
        let mut record = serde_json::Map::new();
        record.insert("step".into(), json!(step));
        for (name, value) in &metrics {
            record.insert(name.clone(), json!(value));
        }
        log.write(&serde_json::Value::Object(record))?;
        Ok(metrics.first().map(|m| m.1))
    }

    pub fn run(&self, optimizer: &mut AdamW, mut state: TrainerState, log: &mut MetricsLog) -> Result<Outcome, String> {
        let plan = self.plan;
        let t = &plan.training;
        let comm = &self.runtime.comm;
        let s = Steps { total: state.total_steps, ..self.steps };
        let dropout = matches!(&self.model.trainable, Trainable::Lora { dropout, .. } if *dropout > 0.0);
        let eval_every = t.eval.map(|e| e.interval(s.total, s.per_epoch));
        let save_every = t.save.map(|e| e.interval(s.total, s.per_epoch));
        let bucket_bytes = plan.layout.ddp.bucket_cap_mb as usize * 1024 * 1024;
        let params: Vec<(String, Tensor)> = optimizer.named_params();
        let mut order = (u64::MAX, Vec::new());
        let mut pending: Vec<Pending> = Vec::new();
        // Steps in a row with the loss above loss_watchdog_threshold.
        let mut watchdog = 0u32;
        let mut window = (Instant::now(), 0usize);
        let mut throughput = (0.0f64, 0usize);
        let mut outcome = Outcome {
            steps_done: state.global_step,
            stopped_early: None,
            interrupted: false,
            last_eval_loss: None,
            tokens_per_second: 0.0,
            collectives_per_step: Default::default(),
            host_syncs: Default::default(),
        };
        // fp16: the loss scale on the device for the whole run (the host copy in `state` is
        // refreshed at checkpoints).
        let mut scaler = state.loss_scaler.map(|s| super::loss_scale::DeviceScaler::new(s, self.model.device));
        let seed = t.seed;
        // Memory is sampled (a costly allocator walk on CPU) only in steps that can set a new
        // peak: the first two (optimizer state appears in the first) and any batch larger than
        // all before it; the other steps repeat a known footprint.
        let probe = self.model.memory_probe.get();
        // Full sharding releases a layer's parameters after its forward pass: the backward pass
        // recomputes it.
        let checkpointing = t.gradient_checkpointing || self.sharder.is_some_and(|s| s.needs_recompute());
        // Activation offloading: the checkpointed layer inputs in host memory (a no-op on CPU).
        self.model.set_activation_offloading(t.activation_offloading.is_some());
        let mut largest_batch = 0usize;
        let first_step = state.global_step;
        for step in first_step..s.total {
            let reads_before = super::host_sync::count();
            let written_before = super::host_sync::written();
            // Axolotl's QATCallback: no fake quantization before fake_quant_after_n_steps.
            if let Some(q) = &plan.qat {
                self.model.set_fake_quant(step >= q.from_step);
            }
            if let Some(sharder) = self.sharder {
                // Evaluation's gathers are not this step's.
                sharder.take_moved();
            }
            // LISA: Axolotl's callback runs at the start of the step (`on_step_begin`).
            if let Some(lisa) = self.lisa {
                let mut lisa = lisa.borrow_mut();
                let resumed = state.lisa_layers.clone().filter(|_| step == first_step);
                if let Some(active) = lisa.begin_step(step, step == first_step, resumed.as_deref())? {
                    tracing::info!(step, "LISA: training decoder layers {active:?}");
                    state.lisa_layers = Some(active);
                }
            }
            let schedule = Schedule {
                scheduler: plan.batch.lr_scheduler,
                min_ratio: t.cosine_min_lr_ratio,
                constant_ratio: t.cosine_constant_lr_ratio,
            };
            let lr = learning_rate_at(schedule, plan.batch.peak_learning_rate, step, s.warmup, s.total);
            // The whole global batch on the host: its unit count is the loss's denominator.
            let global: Vec<HostBatch> = match self.stream {
                Some(stream) => self.stream_micro_batches(stream, step)?,
                None => self
                    .global_micro_batches(step, s, &mut order)
                    .iter()
                    .map(|items| E::collate(items, self.pad_id, self.pad_to()))
                    .collect(),
            };
            let denominator = global.iter().filter(|b| b.rows > 0).map(|b| self.objective.units(b)).sum::<usize>();
            // A mixture of experts' load-balancing loss weighs each micro-batch of the step alike.
            self.model.routing.set_micro_batches(global.iter().filter(|b| b.rows > 0).count());
            let tokens = global.iter().filter(|b| b.rows > 0).map(|b| b.real_tokens).sum::<usize>();
            let mine: Vec<(usize, &HostBatch)> = global
                .iter()
                .enumerate()
                .skip(comm.rank)
                .step_by(comm.world_size)
                .filter(|(_, b)| b.rows > 0)
                .collect();
            // Sharded: passes that count zero, so this rank runs as many as the busiest rank.
            let idle_passes = match self.sharder {
                Some(_) => {
                    let busiest = (0..comm.world_size)
                        .map(|r| global.iter().skip(r).step_by(comm.world_size).filter(|b| b.rows > 0).count())
                        .max()
                        .unwrap_or(0);
                    busiest - mine.len()
                }
                None => 0,
            };
            let batch_size = mine.iter().map(|(_, b)| b.input_ids.len()).max().unwrap_or(0);
            let new_footprint = step < first_step + 2 || batch_size > largest_batch;
            largest_batch = largest_batch.max(batch_size);
            self.model.memory_probe.set(probe.filter(|_| new_footprint));
            if denominator == 0 {
                return Err(format!(
                    "step {}: the batch has no trained token (every label is -100); check the dataset's masking",
                    step + 1
                ));
            }
            // fp16: the loss is scaled up for the backward pass (exec/loss_scale.rs).
            let scale = scaler.as_ref().map(|s| s.scale.copy());
            let mut loss = Tensor::zeros([], (Kind::Float, self.model.device));
            let mut metric_sums: Option<Tensor> = None;
            // Every micro-batch of the step queued for upload first (asynchronous from pinned
            // memory on CUDA), so each copy overlaps the compute of the ones before it.
            let uploaded: Vec<DeviceBatch> =
                mine.iter().map(|(_, b)| DeviceBatch::upload(b, self.model.device)).collect();
            for ((m, _), batch) in mine.iter().zip(uploaded) {
                let m = *m as u64;
                let reseed = |layer: usize| {
                    if dropout {
                        tch::manual_seed(mix(seed, step, m, layer as u64));
                    }
                };
                let sums = objective::forward_backward_scaled(
                    self.model,
                    self.objective,
                    &batch,
                    denominator as f64,
                    scale.as_ref(),
                    checkpointing,
                    &reseed,
                );
                loss += sums.loss;
                if let Some(m) = sums.metrics {
                    metric_sums = Some(metric_sums.map_or_else(|| m.shallow_clone(), |acc| acc + &m));
                }
            }
            if idle_passes > 0
                && let Some(b) = global.iter().find(|b| b.rows > 0)
            {
                let zero = Tensor::zeros([1], (Kind::Float, self.model.device));
                for _ in 0..idle_passes {
                    let batch = DeviceBatch::upload(b, self.model.device);
                    let _ = objective::forward_backward_scaled(
                        self.model,
                        self.objective,
                        &batch,
                        denominator as f64,
                        Some(&zero),
                        checkpointing,
                        &|_| {},
                    );
                }
            }
            // EWC: λ/2 · Σ F ⊙ (θ − θ0)², its gradient added once per step (each rank adds 1/world
            // of it; the all-reduce sums them).
            let ewc_penalty = self.ewc.filter(|_| self.sharder.is_none()).map(|ewc| {
                let penalty = ewc.penalty();
                let share = &penalty / comm.world_size as f64;
                match &scale {
                    Some(s) => (share * s.reshape([])).backward(),
                    None => share.backward(),
                }
                penalty.detach()
            });
            match self.sharder {
                Some(sharder) => sharder.finish_gradients()?,
                None => {
                    // LISA: only the parameters training now have gradients (every rank drew the
                    // same layers: the same seed and step).
                    let active: Vec<(String, Tensor)>;
                    let reduced = match self.lisa {
                        Some(_) => {
                            active = params
                                .iter()
                                .filter(|(_, p)| p.requires_grad())
                                .map(|(n, p)| (n.clone(), p.shallow_clone()))
                                .collect();
                            &active
                        }
                        None => &params,
                    };
                    outcome.collectives_per_step.all_reduce = comm.all_reduce_gradients(
                        reduced,
                        bucket_bytes,
                        plan.layout.ddp.find_unused_parameters || mine.is_empty(),
                    )?
                }
            }
            // Sharded: EWC's gradient goes into each rank's chunks once the gradients are summed.
            let ewc_penalty = match (self.ewc, self.sharder) {
                (Some(ewc), Some(sharder)) => Some(sharder.add_ewc_gradient(ewc.lambda, scale.as_ref())?),
                _ => ewc_penalty,
            };
            self.frozen_rows.zero_gradients();
            let clip = |optimizer: &AdamW| match self.sharder {
                Some(sharder) => sharder.clip_grad_norm(t.max_grad_norm),
                None => Ok(optimizer.clip_grad_norm(t.max_grad_norm)),
            };
            let grad_norm = match &mut scaler {
                // Unscaled, checked, stepped or skipped, and the scale updated, all on the device.
                Some(scaler) => {
                    let mut found_inf = scaler.unscale(&optimizer.grads());
                    if self.sharder.is_some() {
                        // Each rank checked its own chunks.
                        comm.all_reduce_max(&mut found_inf)?;
                    }
                    let norm = clip(optimizer)?;
                    optimizer.step_unless(lr, &found_inf)?;
                    scaler.update(&found_inf);
                    // A skipped step logs a NaN norm (and `skipped: true`).
                    let nan = Tensor::full([], f64::NAN, (Kind::Float, norm.device()));
                    norm.to_kind(Kind::Float).where_self(&found_inf.eq(0.0).reshape([]), &nan)
                }
                None => {
                    let norm = clip(optimizer)?;
                    optimizer.step(lr);
                    norm
                }
            };
            if let Some(sharder) = self.sharder {
                sharder.after_step()?;
                outcome.collectives_per_step = sharder.take_moved();
            }
            self.model.probe_memory();
            optimizer.zero_grad();
            pending.push(Pending {
                step: step + 1,
                loss: loss / denominator as f64,
                grad_norm,
                lr,
                tokens,
                units: denominator,
                metrics: metric_sums,
                loss_scale: scale,
                ewc_penalty,
            });
            state.global_step = step + 1;
            outcome.steps_done = step + 1;
            self.progress.inc(1);
            // transformers' on_step_end, with its state.epoch (host numbers: no device read).
            log.step_end(step + 1, (step + 1) as f64 / s.per_epoch.max(1) as f64);

            let last = step + 1 == s.total;
            // One process stops on Ctrl-C at once; several agree on it at the next logging step.
            let stop_local = STOP_REQUESTED.load(Ordering::Relaxed);
            let stop_after = self.stop_after == Some(step + 1);
            let save_due = save_every.is_some_and(|n| (step + 1) % n == 0);
            let eval_now = eval_every.is_some_and(|n| (step + 1) % n == 0) || (last && eval_every.is_some());
            let logging = (step + 1) % t.logging_steps == 0 || last;
            let mut stop = stop_after || (stop_local && !comm.is_distributed());
            if logging || save_due || eval_now || stop {
                let (n, secs) =
                    (window.1 + pending.iter().map(|p| p.tokens).sum::<usize>(), window.0.elapsed().as_secs_f64());
                let tps = n as f64 / secs.max(1e-9);
                throughput = (throughput.0 + secs, throughput.1 + n);
                let flushed = self.flush(&mut pending, tps, log, stop_local)?;
                stop |= flushed.stop;
                if let Some((threshold, patience)) = t.loss_watchdog {
                    for (step, loss) in flushed.losses {
                        watchdog = if loss > threshold { watchdog + 1 } else { 0 };
                        if watchdog >= patience && outcome.stopped_early.is_none() {
                            outcome.stopped_early = Some(format!(
                                "the training loss was above loss_watchdog_threshold ({threshold}) for {patience} steps \
                                 in a row (up to step {step}, loss {loss:.4})"
                            ));
                        }
                    }
                }
                window = (Instant::now(), 0);
            }
            let save_now = save_due || stop;
            if eval_now {
                let eval_loss = self.evaluate_and_log(step + 1, log)?.unwrap_or(f64::NAN);
                outcome.last_eval_loss = Some(eval_loss);
                if state.best_eval_loss.is_none_or(|b| eval_loss < b) {
                    state.best_eval_loss = Some(eval_loss);
                    state.evals_without_improvement = 0;
                } else {
                    state.evals_without_improvement += 1;
                }
                if let Some(p) = t.early_stopping_patience
                    && state.evals_without_improvement >= p
                {
                    outcome.stopped_early = Some(format!(
                        "validation loss has not improved for {p} evaluations (best {:.4})",
                        state.best_eval_loss.unwrap_or(f64::NAN)
                    ));
                }
            }
            if save_now {
                if let Some(scaler) = &scaler {
                    state.loss_scaler = Some(scaler.to_host()?);
                }
                let finite = match self.sharder {
                    Some(sharder) => sharder.all_finite()?,
                    None => optimizer.params_finite()?,
                };
                if !finite {
                    let kept = checkpoint::latest(self.output_dir).map_or("no checkpoint was saved yet".into(), |p| {
                        format!("the last good checkpoint is {}", p.display())
                    });
                    return Err(format!(
                        "the weights became non-finite at step {}; not saving them ({kept}). Lower learning_rate or \
                         weight_decay, or set max_grad_norm",
                        step + 1
                    ));
                }
                // Sharded: every rank helps assemble the optimizer state and the weights, and rank 0
                // writes them; or (SHARDED_STATE_DICT) each rank writes its chunks, then rank 0 the rest.
                let per_rank = self.sharder.filter(|_| plan.layout.sharded_checkpoints);
                let full = matches!(self.model.trainable, Trainable::Everything);
                let optimizer_state = match (plan.training.save_only_model, self.sharder) {
                    (true, _) => None,
                    (false, _) if per_rank.is_some() => None,
                    (false, Some(sharder)) => Some(sharder.gather_optimizer_state(optimizer)?),
                    (false, None) => Some(optimizer.state()),
                };
                if let Some(sharder) = per_rank {
                    let staging = checkpoint::staging_dir(self.output_dir, step + 1);
                    let fresh = if comm.is_main() {
                        let _ = std::fs::remove_dir_all(&staging);
                        std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))
                    } else {
                        Ok(())
                    };
                    comm.agree(fresh, &format!("to stage checkpoint-{}", step + 1), self.model.device)?;
                    let with_state = (!plan.training.save_only_model).then_some(&*optimizer);
                    let wrote = sharder.write_shard(&staging, with_state, comm.is_main());
                    comm.agree(wrote, &format!("to write its shard of checkpoint-{}", step + 1), self.model.device)?;
                }
                let write = || {
                    checkpoint::save(
                        self.output_dir,
                        self.model,
                        match (per_rank, self.sharder) {
                            (Some(_), _) => checkpoint::Staged::Shards,
                            (None, Some(sharder)) if full => checkpoint::Staged::Streamed(
                                sharder.stream_weights(self.model, Kind::Float)?,
                                optimizer_state.as_deref(),
                            ),
                            (None, _) => checkpoint::Staged::Whole(optimizer_state.as_deref()),
                        },
                        self.ewc.map(|e| e.state()).as_deref(),
                        &state,
                        &checkpoint::RunFiles {
                            plan,
                            base_dir: self.base_dir,
                            tokenizer_dir: self.tokenizer_dir,
                            pad_id: self.pad_id,
                            tokenizer: self.run_tokenizer,
                        },
                        t.save_total_limit,
                    )
                    .map(|dir| tracing::info!(step = step + 1, "saved {}", dir.display()))
                };
                let saved = match self.sharder {
                    Some(_) if per_rank.is_some() => {
                        if comm.is_main() {
                            write()
                        } else {
                            Ok(())
                        }
                    }
                    // A full fine-tune's weights stream one unit at a time: every rank gathers them in turn.
                    Some(sharder) if full => {
                        let written = if comm.is_main() { write() } else { Ok(()) };
                        sharder.follow_stream(self.model).and(written)
                    }
                    Some(sharder) => {
                        sharder.with_outputs_gathered(false, || if comm.is_main() { write() } else { Ok(()) })?
                    }
                    None if comm.is_main() => write(),
                    None => Ok(()),
                };
                // No rank runs ahead of a checkpoint it may have to resume from, nor on after a
                // failed save (a full disk on rank 0 stops every rank).
                comm.agree(saved, &format!("to save checkpoint-{}", step + 1), self.model.device)?;
            }
            let logged = logging || stop;
            outcome.host_syncs.record(
                super::host_sync::count() - reads_before,
                super::host_sync::written() - written_before,
                super::host_sync::StepKind { logged, evaluated: eval_now, saved: save_now },
            );
            if stop {
                outcome.interrupted = true;
                break;
            }
            if outcome.stopped_early.is_some() {
                break;
            }
        }
        outcome.tokens_per_second = throughput.1 as f64 / throughput.0.max(1e-9);
        Ok(outcome)
    }

    /// Reads the pending per-step values (one sync; over several ranks one all-reduce, which also
    /// carries this rank's stop request), stops on a non-finite loss, and logs. Returns whether
    /// any rank asked to stop, and each step's loss (the same on every rank).
    fn flush(
        &self,
        pending: &mut Vec<Pending>,
        tokens_per_second: f64,
        log: &mut MetricsLog,
        stop_requested: bool,
    ) -> Result<Flushed, String> {
        let device = self.model.device;
        let k = self.objective.metric_sums() as i64;
        let mut shares: Vec<Tensor> = pending.iter().map(|p| p.loss.to_kind(Kind::Float).reshape([1])).collect();
        shares.push(Tensor::from_slice(&[if stop_requested { 1.0f32 } else { 0.0 }]).to_device(device));
        // A rank without a micro-batch in a step has no metric sums: zeros.
        shares.extend(pending.iter().filter(|_| k > 0).map(|p| match &p.metrics {
            Some(m) => m.to_kind(Kind::Float),
            None => Tensor::zeros([k], (Kind::Float, device)),
        }));
        let mut summed = Tensor::cat(&shares, 0);
        self.runtime.comm.all_reduce_sum(&mut summed)?;
        let n = pending.len();
        let norms: Vec<Tensor> = pending.iter().map(|p| p.grad_norm.to_device(device).to_kind(Kind::Float)).collect();
        let norms = if norms.is_empty() { Tensor::zeros([0], (Kind::Float, device)) } else { Tensor::stack(&norms, 0) };
        let scales: Vec<Tensor> = pending
            .iter()
            .filter_map(|p| p.loss_scale.as_ref().map(|s| s.to_kind(Kind::Float).reshape([-1])))
            .collect();
        let n_scales = scales.len();
        let penalties: Vec<Tensor> = pending
            .iter()
            .filter_map(|p| p.ewc_penalty.as_ref().map(|t| t.to_device(device).to_kind(Kind::Float).reshape([-1])))
            .collect();
        let has_penalty = !penalties.is_empty();
        let mut parts = vec![summed, norms.reshape([-1])];
        parts.extend(scales);
        parts.extend(penalties);
        let both = Tensor::cat(&parts, 0);
        // The step's one read.
        let values = super::host_sync::read_f64(&both, "the pending losses")?;
        let scales_at = n + 1 + n * k as usize + n;
        let metric_at = |i: usize| &values[n + 1 + i * k as usize..n + 1 + (i + 1) * k as usize];
        let norms_at = n + 1 + n * k as usize;
        let penalty_at = |i: usize| has_penalty.then(|| values[scales_at + n_scales + i]);
        let stop = values[n] > 0.0;
        for (i, p) in pending.iter().enumerate() {
            let (loss, grad_norm) = (values[i], values[norms_at + i]);
            if !loss.is_finite() {
                let kept = checkpoint::latest(self.output_dir).map_or("no checkpoint was saved yet".into(), |p| {
                    format!("the last good checkpoint is {}", p.display())
                });
                return Err(format!(
                    "the training loss became {loss} at step {}; stopped ({kept}). Lower learning_rate, set \
                     max_grad_norm, or check the data",
                    p.step
                ));
            }
            let mut record = json!({
                "step": p.step,
                "loss": loss,
                "lr": p.lr,
                "grad_norm": grad_norm,
                "tokens_per_second": tokens_per_second,
            });
            for (name, value) in self.objective.metrics(metric_at(i), p.units as f64) {
                record[name] = json!(value);
            }
            if let Some(penalty) = penalty_at(i) {
                record["ewc_penalty"] = json!(penalty);
            }
            if p.loss_scale.is_some() {
                record["loss_scale"] = json!(values[scales_at + i]);
                record["skipped"] = json!(!grad_norm.is_finite());
                if !grad_norm.is_finite() {
                    tracing::debug!(step = p.step, "fp16 gradients overflowed; step skipped, loss scale halved");
                }
            }
            log.write(&record)?;
            if p.step % self.plan.training.logging_steps == 0 {
                tracing::info!(
                    step = p.step,
                    loss = format!("{loss:.4}"),
                    lr = format!("{:.3e}", p.lr),
                    grad_norm = format!("{grad_norm:.3}"),
                    tokens_per_s = format!("{tokens_per_second:.0}"),
                    "train"
                );
            }
        }
        if let Some(last) = pending.last() {
            let loss = values[n - 1];
            // Preference and reward training: their accuracy and margin beside the loss.
            let shown: String = self
                .objective
                .metrics(metric_at(n - 1), last.units as f64)
                .into_iter()
                .filter(|(name, _)| name.contains("accura") || name.contains("margin"))
                .map(|(name, value)| format!(" {} {value:.3}", name.trim_start_matches("rewards/")))
                .collect();
            let ewc = penalty_at(n - 1).map_or(String::new(), |p| format!(" ewc {p:.3e}"));
            self.progress
                .set_message(format!("loss {loss:.4}{shown}{ewc} lr {:.2e} {tokens_per_second:.0} tok/s", last.lr));
        }
        let losses = pending.iter().enumerate().map(|(i, p)| (p.step, values[i])).collect();
        pending.clear();
        Ok(Flushed { stop, losses })
    }
}

/// What a flush read: whether any rank asked to stop, and (step, loss) of each pending step.
struct Flushed {
    stop: bool,
    losses: Vec<(u64, f64)>,
}

/// A batch's loss and metric sums as one vector [loss, metrics...].
fn sums_vector(sums: LossSums) -> Tensor {
    let loss = sums.loss.to_kind(Kind::Float).reshape([1]);
    match sums.metrics {
        Some(m) => Tensor::cat(&[loss, m.to_kind(Kind::Float)], 0),
        None => loss,
    }
}

/// A seed for (run seed, step, micro-batch, layer): splitmix64 of the combination.
pub fn mix(seed: u64, step: u64, micro: u64, layer: u64) -> i64 {
    let mut z = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ micro.wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ layer.wrapping_mul(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// The checkpoint to resume from, if the recipe asks for one.
pub fn resume_dir(plan: &Plan, output_dir: &Path) -> Result<Option<PathBuf>, String> {
    use crate::config::logging::ResumeFrom;
    match &plan.training.resume_from_checkpoint {
        None | Some(ResumeFrom::Latest(false)) => Ok(None),
        Some(ResumeFrom::Latest(true)) => Ok(checkpoint::latest(output_dir)),
        Some(ResumeFrom::Path(p)) => {
            let path = PathBuf::from(p);
            if path.join("trainer_state.json").is_file() {
                Ok(Some(path))
            } else {
                Err(format!("resume_from_checkpoint: {p} is not a checkpoint folder (no trainer_state.json)"))
            }
        }
    }
}

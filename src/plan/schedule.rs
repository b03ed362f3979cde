//! Batch and schedule arithmetic: global batch in sequences and tokens, steps per epoch and in
//! all (when the dataset size is known before tokenization), warmup, and points of the
//! learning-rate schedule, with Hugging Face's formulas (transformers' `get_*_schedule_with_warmup`).

use crate::config::Config;
use crate::config::training::LrScheduler;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct BatchPlan {
    pub micro_batch_size: u64,
    pub gradient_accumulation_steps: u64,
    pub world_size: u64,
    pub global_batch_sequences: u64,
    /// Upper bound: every sequence filled to sequence_len (packing gets close).
    pub global_batch_tokens: u64,
    pub sequence_len: u64,
    pub sample_packing: bool,
    /// Replay rows in each step's global batch (`replay_ratio`); the rest are new training rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_rows_per_step: Option<u64>,
    /// Training rows after the validation split, when every dataset's row count is known and a
    /// row is one sequence (no packing, no splitting of long texts).
    pub train_sequences: Option<u64>,
    pub steps_per_epoch: Option<u64>,
    /// `max_steps`, else epochs × steps per epoch; None: known after preprocessing.
    pub total_steps: Option<u64>,
    pub warmup_steps: Option<u64>,
    pub lr_scheduler: LrScheduler,
    pub peak_learning_rate: f64,
    /// The learning rate at a few steps (start, end of warmup, quarters), when total steps are known.
    pub lr_points: Vec<LrPoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LrPoint {
    pub step: u64,
    pub learning_rate: f64,
}

/// Step counts of a run, once its training rows (after packing) are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Steps {
    pub per_epoch: u64,
    pub total: u64,
    pub warmup: u64,
}

/// Steps for `train_rows` rows: rows per step is the global batch; `max_steps`, else epochs ×
/// steps per epoch; warmup from warmup_steps, else warmup_ratio of the total.
pub fn steps(plan: &super::Plan, train_rows: usize) -> Steps {
    let b = &plan.batch;
    let new_rows = b.global_batch_sequences.saturating_sub(b.replay_rows_per_step.unwrap_or(0));
    let t = &plan.training;
    // A stream has no known epoch: its steps are max_steps.
    let per_epoch = match &plan.pretraining {
        Some(p) => p.steps.max(1),
        None => (train_rows as u64).div_ceil(new_rows.max(1)).max(1),
    };
    let total = t.max_steps.unwrap_or_else(|| ((t.num_epochs.unwrap_or(1.0) * per_epoch as f64).ceil() as u64).max(1));
    let warmup = b
        .warmup_steps
        .filter(|_| t.warmup_ratio.is_none())
        .unwrap_or_else(|| t.warmup_ratio.map_or(0, |r| (r * total as f64).ceil() as u64));
    Steps { per_epoch, total, warmup }
}

/// `rows`: training rows of all datasets when each is known and one row is one sequence.
pub fn plan(c: &Config, world_size: u64, rows: Option<u64>) -> BatchPlan {
    let t = &c.training;
    let micro = u64::from(t.micro_batch_size);
    let accum = u64::from(t.gradient_accumulation_steps);
    let sequences = micro * accum * world_size;
    // With replay, a step's new rows are the global batch less its replay rows.
    let replay_rows = t.replay_ratio.map(|r| super::forgetting::replay_rows(r, sequences));
    let new_rows = sequences.saturating_sub(replay_rows.unwrap_or(0)).max(1);
    let train_sequences = rows.map(|r| r - (r as f64 * c.data.val_set_size).ceil() as u64);
    let steps_per_epoch = train_sequences.map(|n| n.div_ceil(new_rows).max(1));
    let total_steps = t.max_steps.or_else(|| {
        let epochs = t.num_epochs?;
        Some((epochs * steps_per_epoch? as f64).ceil() as u64)
    });
    let warmup_steps = match (t.warmup_steps, t.warmup_ratio, total_steps) {
        (Some(w), _, _) => Some(w),
        (None, Some(r), Some(total)) => Some((r * total as f64).ceil() as u64),
        (None, None, _) => Some(0),
        (None, Some(_), None) => None,
    };
    let peak = t.learning_rate.unwrap_or(0.0);
    let lr_points = match (total_steps, warmup_steps) {
        (Some(total), Some(warmup)) => {
            let mut steps = vec![0, warmup.min(total), total / 4, total / 2, 3 * total / 4, total];
            steps.sort_unstable();
            steps.dedup();
            steps
                .into_iter()
                .map(|step| LrPoint { step, learning_rate: learning_rate(c, peak, step, warmup, total) })
                .collect()
        }
        _ => Vec::new(),
    };
    BatchPlan {
        micro_batch_size: micro,
        gradient_accumulation_steps: accum,
        world_size,
        global_batch_sequences: sequences,
        global_batch_tokens: sequences * u64::from(c.data.sequence_len),
        sequence_len: u64::from(c.data.sequence_len),
        sample_packing: c.data.sample_packing,
        replay_rows_per_step: replay_rows,
        train_sequences,
        steps_per_epoch,
        total_steps,
        warmup_steps,
        lr_scheduler: t.lr_scheduler,
        peak_learning_rate: peak,
        lr_points,
    }
}

/// The learning rate used for optimizer step `step` (0-based), as transformers' schedules.
pub fn learning_rate(c: &Config, peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    let floor = c.training.cosine_min_lr_ratio.unwrap_or(0.0);
    let schedule = Schedule {
        scheduler: c.training.lr_scheduler,
        min_ratio: floor,
        constant_ratio: c.training.cosine_constant_lr_ratio,
    };
    learning_rate_at(schedule, peak, step, warmup, total)
}

/// A schedule's shape: transformers' `lr_scheduler_type` with Axolotl's cosine floor and its
/// decay-then-constant variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub scheduler: LrScheduler,
    /// `cosine_min_lr_ratio` (0 when absent).
    pub min_ratio: f64,
    /// `cosine_constant_lr_ratio`: the cosine reaches `min_ratio` at this share of the steps and
    /// stays there (the rules allow it only with a cosine and a floor above 0, as Axolotl uses it).
    pub constant_ratio: Option<f64>,
}

/// transformers' schedules (`get_scheduler`), with Axolotl's cosine floor and, with a constant
/// ratio, Axolotl's `get_cosine_schedule_with_warmup_decay_constant`.
pub fn learning_rate_at(schedule: Schedule, peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    let Schedule { scheduler, min_ratio, constant_ratio } = schedule;
    // transformers' `constant` schedule has no warmup; `constant_with_warmup` has.
    if scheduler == LrScheduler::Constant {
        return peak;
    }
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    if let (LrScheduler::Cosine, Some(ratio)) = (scheduler, constant_ratio) {
        // Axolotl's lambda as written: `int(total * ratio)` truncates, the step stops there, and
        // the progress may come out negative when warmup outlasts it.
        let constant = (total as f64 * ratio) as i64;
        let current = (step as i64).min(constant);
        let progress = (current - warmup as i64) as f64 / (constant - warmup as i64).max(1) as f64;
        let cosine = (1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        return peak * (cosine.max(0.0) + min_ratio);
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match scheduler {
        LrScheduler::Constant | LrScheduler::ConstantWithWarmup => peak,
        LrScheduler::Linear => peak * (1.0 - progress).max(0.0),
        LrScheduler::Cosine => {
            let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
            peak * (min_ratio + (1.0 - min_ratio) * cosine)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_warms_up_linearly_then_decays_to_the_floor() {
        let mut c = Config::default();
        c.training.cosine_min_lr_ratio = Some(0.1);
        assert_eq!(learning_rate(&c, 1.0, 5, 10, 110), 0.5);
        assert_eq!(learning_rate(&c, 1.0, 10, 10, 110), 1.0);
        assert!((learning_rate(&c, 1.0, 60, 10, 110) - 0.55).abs() < 1e-12);
        assert!((learning_rate(&c, 1.0, 110, 10, 110) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn steps_follow_rows_batch_and_epochs() {
        let mut c = Config::default();
        c.training.num_epochs = Some(3.0);
        c.training.micro_batch_size = 4;
        c.training.gradient_accumulation_steps = 2;
        c.training.warmup_ratio = Some(0.1);
        c.data.val_set_size = 0.1;
        let b = plan(&c, 2, Some(1000));
        assert_eq!(b.train_sequences, Some(900));
        assert_eq!(b.steps_per_epoch, Some(57)); // ceil(900 / 16)
        assert_eq!(b.total_steps, Some(171));
        assert_eq!(b.warmup_steps, Some(18));
    }
}

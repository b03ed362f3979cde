//! Outputs, logging, evaluation, checkpoints and resume.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// What the run writes and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoggingConfig {
    /// Where adapters, checkpoints and logs go (relative to the working directory).
    #[serde(default = "default_output_dir")]
    pub output_dir: String,
    /// Log loss and learning rate every this many optimizer steps (the only host syncs).
    #[serde(default = "default_logging_steps")]
    #[schemars(range(min = 1))]
    pub logging_steps: u64,
    /// Evaluate every this many steps (an integer) or this fraction of all steps (below 1).
    #[serde(default)]
    pub eval_steps: Option<Interval>,
    /// Evaluate this many times per epoch (exclusive with `eval_steps`); 0 is the same as unset,
    /// as in Axolotl.
    #[serde(default)]
    pub evals_per_epoch: Option<u32>,
    /// Save a checkpoint every this many steps (an integer) or this fraction of all steps.
    #[serde(default)]
    pub save_steps: Option<Interval>,
    /// Save this many checkpoints per epoch (exclusive with `save_steps`); 0 is the same as unset,
    /// as in Axolotl.
    #[serde(default)]
    pub saves_per_epoch: Option<u32>,
    /// When checkpoints are saved, in transformers' words: `steps` (by `save_steps` or
    /// `saves_per_epoch`, which it needs), `epoch` (at the end of each epoch), `no` (never).
    /// Unset: by `save_steps` / `saves_per_epoch` when given, else never.
    #[serde(default)]
    pub save_strategy: Option<SaveStrategy>,
    /// Checkpoints hold the weights only, not the optimizer state (smaller, but they cannot be
    /// resumed: train on from one with `lora_model_dir` or as a `base_model`).
    #[serde(default)]
    pub save_only_model: bool,
    /// Keep at most this many checkpoints, deleting the oldest.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub save_total_limit: Option<u32>,
    /// Stop when validation loss has not improved for this many evaluations.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub early_stopping_patience: Option<u32>,
    /// Axolotl's generation metrics at each evaluation: every validation sample with a prompt is
    /// completed (greedy, `eval_max_new_tokens` tokens, stopping at EOS or the template's turn end)
    /// and scored against its answer as `recipe eval` scores it; logged to metrics.jsonl as
    /// `eval_sacrebleu`, `eval_chrf`, ... Needs a validation split of prompt/answer samples.
    #[serde(default)]
    pub do_causal_lm_eval: bool,
    /// The metrics `do_causal_lm_eval` computes (default: sacrebleu, ter, chrf, Axolotl's list
    /// without `comet`, which needs a neural model recipe does not have).
    #[serde(default)]
    pub eval_causal_lm_metrics: Option<Vec<CausalLmMetric>>,
    /// New tokens per validation prompt for `do_causal_lm_eval` (default 128, as Axolotl's).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub eval_max_new_tokens: Option<u64>,
    /// Stop training (keeping what was trained, as early stopping does) once the training loss
    /// has been above this value for `loss_watchdog_patience` steps in a row (Axolotl's loss
    /// watchdog). Checked when the losses are read, at each logging step.
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    pub loss_watchdog_threshold: Option<f64>,
    /// Steps in a row above `loss_watchdog_threshold` before stopping (3 when absent).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub loss_watchdog_patience: Option<u32>,
    /// Resume from a checkpoint folder, or `true` for the latest in `output_dir`.
    #[serde(default)]
    pub resume_from_checkpoint: Option<ResumeFrom>,
    /// Replace another run's outputs in `output_dir` (its weights, metrics and checkpoints are
    /// removed first); without it, such a folder is refused unless resuming (transformers' name).
    #[serde(default)]
    pub overwrite_output_dir: bool,
    /// The dtype of written model weights: a full fine-tune's model, `recipe merge` and `recipe
    /// quantize` (its dense parts). Unset: the base model's `torch_dtype`. Adapters are saved in
    /// float32 (as peft saves them) and checkpoints in the training precision, so resume is exact.
    #[serde(default)]
    pub save_dtype: Option<super::quantization::ComputeDtype>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SaveStrategy {
    Steps,
    Epoch,
    No,
}

impl SaveStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            SaveStrategy::Steps => "steps",
            SaveStrategy::Epoch => "epoch",
            SaveStrategy::No => "no",
        }
    }
}

impl LoggingConfig {
    /// Whether any checkpoint is scheduled (`save_strategy`, `save_steps`, `saves_per_epoch`).
    pub fn saves_checkpoints(&self) -> bool {
        match self.save_strategy {
            Some(SaveStrategy::No) => false,
            Some(SaveStrategy::Epoch) => true,
            Some(SaveStrategy::Steps) | None => {
                self.save_steps.is_some() || self.saves_per_epoch.is_some_and(|k| k > 0)
            }
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        super::defaults()
    }
}

fn default_output_dir() -> String {
    "./outputs".into()
}

fn default_logging_steps() -> u64 {
    1
}

/// A step count (integer ≥ 1) or a fraction of all steps (0 < x < 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Interval {
    Steps(u64),
    Fraction(f64),
}

impl JsonSchema for Interval {
    fn schema_name() -> Cow<'static, str> {
        "Interval".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A step count (integer, at least 1) or a fraction of all steps (between 0 and 1).",
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
            ]
        })
    }
}

// src/eval gives this type its names and parsing (`recipe eval --metrics` takes the same list).
/// A metric of `eval_causal_lm_metrics` (`recipe eval --metrics` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CausalLmMetric {
    /// Corpus BLEU, sacrebleu's defaults.
    Sacrebleu,
    /// chrF2, sacrebleu's defaults.
    Chrf,
    /// TER, sacrebleu's defaults.
    Ter,
    /// ROUGE-1/2/L/Lsum F1 (rouge-score), logged as eval_rouge1, ...
    Rouge,
    /// SQuAD-normalized exact match, percent.
    ExactMatch,
    /// The validation perplexity (also logged without it, from the evaluation loss).
    Perplexity,
}

/// `true` (latest checkpoint in output_dir) or a checkpoint folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ResumeFrom {
    Latest(bool),
    Path(String),
}

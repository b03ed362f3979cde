//! The training section of the plan: optimizer, precision policy, determinism, evaluation,
//! checkpointing and outputs, each resolved from the recipe so the executor defaults nothing.

use super::precision::{Precision, PrecisionPlan};
use crate::config::Config;
use crate::config::logging::{Interval, ResumeFrom};
use crate::config::training::Optimizer;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct TrainingPlan {
    /// Preference training (`rl:`) instead of supervised fine-tuning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferencePlan>,
    /// A Bradley–Terry reward model (`reward_model: true`) instead of a language model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<RewardPlan>,
    pub optimizer: OptimizerPlan,
    /// Gradient clipping by global L2 norm (0 = off).
    pub max_grad_norm: f64,
    pub seed: u64,
    /// The compute dtype, resolved once (plan/precision.rs): what the memory estimate assumes and
    /// the executor computes in.
    pub precision: PrecisionPlan,
    pub gradient_checkpointing: bool,
    /// Activation offloading (`activation_offloading: true`, `gradient_checkpointing: offload`):
    /// what moves where, on a GPU; None when off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_offloading: Option<ActivationOffloading>,
    /// How the loss meets the output head: in chunks of tokens (no full-vocabulary logits), or
    /// over whole logits where the objective needs them.
    pub loss: LossPlan,
    /// Which scaled_dot_product_attention kernel the attention can take on CUDA.
    pub attention: AttentionPlan,
    pub output_dir: String,
    pub logging_steps: u64,
    /// Rows per evaluation batch (eval_batch_size, else micro_batch_size).
    pub eval_batch_size: u64,
    /// Evaluate every N optimizer steps (resolved from eval_steps or evals_per_epoch at run time
    /// when it depends on the epoch length).
    pub eval: Option<Every>,
    pub save: Option<Every>,
    pub save_total_limit: Option<u32>,
    /// Checkpoints without the optimizer state (`save_only_model`): they cannot be resumed.
    pub save_only_model: bool,
    pub early_stopping_patience: Option<u32>,
    /// Axolotl's loss watchdog: (threshold, patience in steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_watchdog: Option<(f64, u32)>,
    /// `do_causal_lm_eval`: generated answers scored at each evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causal_lm_eval: Option<CausalLmEvalPlan>,
    pub resume_from_checkpoint: Option<ResumeFrom>,
    /// `overwrite_output_dir`: another run's outputs in output_dir are removed, not refused.
    pub overwrite_output_dir: bool,
    /// The dtype of written model weights (a full fine-tune's model, `merge`, `quantize`):
    /// `save_dtype`, else the base's `torch_dtype`.
    pub save_dtype: Precision,
    pub num_epochs: Option<f64>,
    pub max_steps: Option<u64>,
    /// Warmup as a share of the total steps, when warmup_steps is not given.
    pub warmup_ratio: Option<f64>,
    pub cosine_min_lr_ratio: f64,
    /// Cosine reaches its floor at this fraction of the steps and stays there (Axolotl's
    /// decay-then-constant schedule); None: the plain cosine.
    pub cosine_constant_lr_ratio: Option<f64>,
    /// LISA: which decoder layers train when (exec/lisa.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lisa: Option<LisaPlan>,
}

/// LISA (`lisa_n_layers`, `lisa_step_interval`), resolved against the model's layers.
#[derive(Debug, Clone, Serialize)]
pub struct LisaPlan {
    /// Decoder layers training at a time (at most the model's).
    pub n_layers: u64,
    pub step_interval: u64,
    /// The model's decoder layers.
    pub total_layers: u64,
    /// Where they are: `lisa_layers_attribute`, only `model.layers` (config rules refuse others).
    pub layers_attribute: String,
}

impl LisaPlan {
    /// The plan's line: the schedule, in Axolotl's terms.
    pub fn describe(&self) -> String {
        format!(
            "LISA: {} of {} decoder layers ({}) train at a time ({:.1}%), drawn at random without replacement at step 0, \
             again at step 1 (Axolotl's condition `global_step % {} == 0 or global_step == 1`), then every {} steps; \
             the other layers are frozen (no gradients, no update, no weight decay; their optimizer state and step \
             count kept), the embeddings, final norm and head train throughout; draws from recipe's generator \
             seeded by `seed` (numpy's distribution, not its numbers), logged at each switch and kept in checkpoints",
            self.n_layers,
            self.total_layers,
            self.layers_attribute,
            self.n_layers as f64 * 100.0 / self.total_layers.max(1) as f64,
            self.step_interval,
            self.step_interval
        )
    }
}

/// Axolotl's `eval_causal_lm_metrics` during training, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct CausalLmEvalPlan {
    pub metrics: Vec<crate::config::logging::CausalLmMetric>,
    /// Greedy, stopping at EOS or the template's turn end.
    pub max_new_tokens: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PreferencePlan {
    /// dpo, ipo, orpo or simpo.
    pub method: crate::config::training::RlMethod,
    /// dpo_beta.
    pub beta: f64,
    /// Where the reference model's log-probabilities come from (DPO, IPO).
    pub reference: ReferenceStrategy,
    /// ORPO's odds-ratio weight (`orpo_alpha`).
    pub orpo_alpha: f64,
    /// SimPO's margin (`simpo_gamma`).
    pub simpo_gamma: f64,
    /// SimPO's language-modelling weight (`cpo_alpha`).
    pub cpo_alpha: f64,
    /// DPO / IPO: WPO's weighting of each pair's loss (`dpo_use_weighting`).
    pub use_weighting: bool,
    /// KTO's weights of the desirable and undesirable answers' losses.
    pub kto_desirable_weight: f64,
    pub kto_undesirable_weight: f64,
}

impl TrainingPlan {
    /// Whether the run trains on preference pairs (`rl:` or a reward model).
    pub fn reads_pairs(&self) -> bool {
        self.preference.is_some() || self.reward.is_some()
    }
}

/// Reward-model training: a score head on the last non-padding token, trained on pairs.
#[derive(Debug, Clone, Serialize)]
pub struct RewardPlan {
    /// Weight of the (r_chosen + r_rejected)² penalty (`center_rewards_coefficient`), if any.
    pub center_rewards_coefficient: Option<f64>,
}

/// Logits of one chunk of the chunked loss, in elements: 2^24 (64 MiB in fp32), whatever the
/// vocabulary, so a chunk's matmul stays large enough to run at full speed.
pub const CHUNK_LOGIT_ELEMENTS: u64 = 1 << 24;

/// How the training loss meets the output head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LossPlan {
    /// Supervised training: the head and the cross-entropy computed together over chunks of
    /// `tokens_per_chunk` tokens, each chunk's forward and backward at once (its gradients with
    /// respect to the hidden states and the head's tensors), so one chunk's logits are alive at a
    /// time instead of the micro-batch's `tokens`. Evaluation goes by the same chunks.
    Chunked { tokens_per_chunk: u64, tokens: u64 },
    /// Supervised training whose micro-batch fits in one chunk: the plain loss over its logits.
    OneChunk { tokens: u64 },
    /// Preference training keeps the micro-batch's full logits: its losses and metrics read every
    /// position's whole distribution (log-softmax, WPO weights, KTO's entropy, mean logits).
    FullLogits { tokens: u64 },
    /// A reward model's score head: one value per token, no vocabulary-wide logits.
    ScoreHead,
}

impl LossPlan {
    /// The chunk size the executor uses, when the loss is chunked.
    pub fn tokens_per_chunk(self) -> Option<u64> {
        match self {
            LossPlan::Chunked { tokens_per_chunk, .. } => Some(tokens_per_chunk),
            _ => None,
        }
    }

    /// One line for `recipe plan`: what is computed and the logits it keeps alive (in fp32).
    pub fn describe(self, vocab: u64) -> String {
        let fp32 = |tokens: u64| super::bytes(tokens * vocab * 4);
        match self {
            LossPlan::Chunked { tokens_per_chunk, tokens } => format!(
                "head + cross-entropy in chunks of {tokens_per_chunk} tokens, forward and backward per chunk: one \
                 chunk's logits alive ({} in fp32) instead of the micro-batch's {tokens} tokens ({})",
                fp32(tokens_per_chunk),
                fp32(tokens)
            ),
            LossPlan::OneChunk { tokens } => format!(
                "head + cross-entropy over the micro-batch's {tokens} tokens at once ({} of logits in fp32; fits in one \
                 chunk of {} elements)",
                fp32(tokens),
                super::group(CHUNK_LOGIT_ELEMENTS)
            ),
            LossPlan::FullLogits { tokens } => format!(
                "full logits of the micro-batch's {tokens} sequence tokens ({} in fp32): preference losses read every \
                 position's whole distribution",
                fp32(tokens)
            ),
            LossPlan::ScoreHead => "score head: one value per token, no vocabulary-wide logits".into(),
        }
    }
}

/// How attention runs (model/llama.rs `attend`), by what the CUDA kernels of
/// scaled_dot_product_attention accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AttentionPlan {
    /// Unpacked rows: causal attention without a mask, grouped-query heads as they are
    /// (`enable_gqa`): the flash kernel.
    Flash { heads: u64, kv_heads: u64 },
    /// Packed rows: a block-diagonal causal mask, which the flash kernel does not take; the
    /// memory-efficient kernel takes it with as many key/value heads as query heads, so grouped
    /// heads are expanded first (their keys and values then take `heads` heads of activations).
    MemoryEfficient { heads: u64, kv_heads: u64 },
    /// Gemma 2's soft-capped scores, which SDPA cannot cap: eager attention as transformers runs
    /// it (model/gemma.rs), materialising every head's scores, grouped key/value heads expanded.
    Eager { heads: u64, kv_heads: u64 },
    /// Concatenated pretraining rows (`pretraining_sample_concatenation`): the pad after each text is
    /// hidden from later tokens, so SDPA takes a mask: the memory-efficient kernel, key/value heads
    /// expanded.
    PadMasked { heads: u64, kv_heads: u64 },
    /// Gemma 3 with sequences longer than its sliding window: the sliding layers take a window
    /// mask, so SDPA runs the memory-efficient kernel with key/value heads expanded.
    Windowed { heads: u64, kv_heads: u64, window: u64 },
}

impl AttentionPlan {
    /// Key/value heads expanded to the query heads before attention.
    pub fn expands_kv(self) -> bool {
        match self {
            AttentionPlan::MemoryEfficient { heads, kv_heads }
            | AttentionPlan::PadMasked { heads, kv_heads }
            | AttentionPlan::Eager { heads, kv_heads, .. }
            | AttentionPlan::Windowed { heads, kv_heads, .. } => heads != kv_heads,
            AttentionPlan::Flash { .. } => false,
        }
    }

    pub fn describe(self) -> String {
        match self {
            AttentionPlan::Flash { heads, kv_heads } if heads != kv_heads => format!(
                "scaled_dot_product_attention, causal without a mask: flash kernel on CUDA, {heads} query heads over \
                 {kv_heads} key/value heads (enable_gqa)"
            ),
            AttentionPlan::Flash { .. } => {
                "scaled_dot_product_attention, causal without a mask: flash kernel on CUDA".into()
            }
            AttentionPlan::PadMasked { heads, kv_heads } => format!(
                "scaled_dot_product_attention with a mask hiding the pad between concatenated texts (as \
                 transformers' attention_mask 0): memory-efficient kernel on CUDA{}",
                if heads != kv_heads {
                    format!(", key/value heads expanded from {kv_heads} to {heads}")
                } else {
                    String::new()
                }
            ),
            AttentionPlan::MemoryEfficient { heads, kv_heads } if heads != kv_heads => format!(
                "packed rows: flash attention per sample (varlen, {heads} query heads over {kv_heads} key/value \
                 heads as they are) on CUDA with compute capability 8.0+ in bf16/fp16 and head size ≤ 256; else \
                 scaled_dot_product_attention with the block-diagonal mask: memory-efficient kernel on CUDA, \
                 key/value heads expanded from {kv_heads} to {heads} (no kernel but math takes a mask with grouped \
                 heads; the memory estimate counts this fallback)"
            ),
            AttentionPlan::MemoryEfficient { .. } => "packed rows: flash attention per sample (varlen) on CUDA with \
                 compute capability 8.0+ in bf16/fp16 and head size ≤ 256; else scaled_dot_product_attention with \
                 the block-diagonal mask: memory-efficient kernel on CUDA"
                .into(),
            AttentionPlan::Eager { heads, kv_heads } => format!(
                "eager attention (soft-capped scores, which no SDPA kernel computes): every head's scores \
                 are materialised and kept for the backward pass{}",
                if heads != kv_heads {
                    format!(", key/value heads expanded from {kv_heads} to {heads}")
                } else {
                    String::new()
                }
            ),
            AttentionPlan::Windowed { heads, kv_heads, window } => format!(
                "scaled_dot_product_attention with a {window}-position sliding-window mask on the sliding layers \
                 (and on packed rows): memory-efficient kernel on CUDA{}",
                if heads != kv_heads {
                    format!(", key/value heads expanded from {kv_heads} to {heads}")
                } else {
                    String::new()
                }
            ),
        }
    }
}

/// The attention path of `c` on `arch`.
/// Activation offloading as planned: which key asked for it. On a GPU the checkpointed layer
/// inputs live in host memory between a layer's forward pass and its recomputation (the memory
/// estimate moves their bytes to the host figure); on CPU nothing moves.
#[derive(Debug, Clone, Serialize)]
pub struct ActivationOffloading {
    /// `activation_offloading: true` or `gradient_checkpointing: offload`.
    pub requested_by: &'static str,
}

/// `activation_offloading: true`, or Axolotl's older `gradient_checkpointing: offload`; None when
/// off (rules.rs refuses it without gradient checkpointing, as Axolotl does).
pub fn activation_offloading(c: &Config) -> Option<ActivationOffloading> {
    let t = &c.training;
    let requested_by = if t.activation_offloading {
        "activation_offloading: true"
    } else if t.gradient_checkpointing == crate::config::training::Checkpointing::Offload {
        "gradient_checkpointing: offload"
    } else {
        return None;
    };
    Some(ActivationOffloading { requested_by })
}

pub fn attention_plan(c: &Config, arch: &super::arch::Architecture) -> AttentionPlan {
    let (heads, kv_heads) = (arch.num_attention_heads, arch.num_key_value_heads);
    if let Some(g) = &arch.gemma {
        if g.attn_logit_softcapping.is_some() {
            return AttentionPlan::Eager { heads, kv_heads };
        }
        let slides = (g.global_layers.len() as u64) < arch.num_layers;
        if slides && g.sliding_window < u64::from(c.data.sequence_len) {
            return AttentionPlan::Windowed { heads, kv_heads, window: g.sliding_window };
        }
    }
    if c.data.pretraining_dataset.is_some() && c.data.pretraining_sample_concatenation == Some(true) {
        AttentionPlan::PadMasked { heads, kv_heads }
    } else if c.data.sample_packing {
        AttentionPlan::MemoryEfficient { heads, kv_heads }
    } else {
        AttentionPlan::Flash { heads, kv_heads }
    }
}

/// The loss path of `c` on a model of `vocab` tokens.
pub fn loss_plan(c: &Config, vocab: u64) -> LossPlan {
    let t = &c.training;
    if t.reward_model {
        return LossPlan::ScoreHead;
    }
    // Prompt tuning's virtual tokens go through the head too.
    let virtual_tokens = match c.adapter.adapter {
        Some(crate::config::adapter::AdapterKind::PromptTuning) => u64::from(c.adapter.num_virtual_tokens.unwrap_or(0)),
        _ => 0,
    };
    let micro = u64::from(t.micro_batch_size) * (u64::from(c.data.sequence_len) + virtual_tokens);
    if t.rl.is_some() {
        // Pairs put both sequences through the model (KTO's rows are single answers).
        let sequences = if t.rl == Some(crate::config::training::RlMethod::Kto) { 1 } else { 2 };
        return LossPlan::FullLogits { tokens: sequences * micro };
    }
    let tokens_per_chunk = (CHUNK_LOGIT_ELEMENTS / vocab.max(1)).max(1);
    if micro > tokens_per_chunk {
        LossPlan::Chunked { tokens_per_chunk, tokens: micro }
    } else {
        LossPlan::OneChunk { tokens: micro }
    }
}

/// The reference model of preference training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceStrategy {
    /// A pass per step through the same weights with the adapter switched off.
    AdaptersOff,
    /// Computed once for every pair before training (`precompute_ref_log_probs`).
    Precomputed,
}

#[derive(Debug, Clone, Serialize)]
pub struct OptimizerPlan {
    /// The recipe's name for it.
    pub name: Optimizer,
    /// What runs.
    pub implementation: String,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

/// A schedule for evaluation or saving.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Every {
    Steps(u64),
    /// A fraction of the total steps (eval_steps: 0.25).
    FractionOfTotal(f64),
    PerEpoch(u32),
}

impl Every {
    /// The step interval, once the total and per-epoch step counts are known.
    pub fn interval(self, total_steps: u64, steps_per_epoch: u64) -> u64 {
        match self {
            Every::Steps(n) => n.max(1),
            Every::FractionOfTotal(f) => ((f * total_steps as f64).ceil() as u64).max(1),
            Every::PerEpoch(k) => (steps_per_epoch / u64::from(k.max(1))).max(1),
        }
    }
}

fn every(steps: Option<Interval>, per_epoch: Option<u32>) -> Option<Every> {
    match (steps, per_epoch) {
        (Some(Interval::Steps(n)), _) => Some(Every::Steps(n)),
        (Some(Interval::Fraction(f)), _) => Some(Every::FractionOfTotal(f)),
        (None, Some(k)) if k > 0 => Some(Every::PerEpoch(k)),
        (None, _) => None,
    }
}

/// `base_dtype`: the base model's `torch_dtype` (config.json), what written weights default to.
/// `arch`: the model (the chunked loss's chunk size follows from its vocabulary, the attention
/// kernel from its heads).
pub fn plan(c: &Config, precision: PrecisionPlan, arch: &super::arch::Architecture) -> TrainingPlan {
    let base_dtype = arch.dtype.as_str();
    let t = &c.training;
    let l = &c.logging;
    let implementation = match t.optimizer {
        Optimizer::AdamwTorch => "AdamW, 32-bit states (recipe's, as torch.optim.AdamW)",
        Optimizer::PagedAdamw32bit => "AdamW, 32-bit states (as adamw_torch: recipe needs no paging)",
        Optimizer::AdamwTorchFused => {
            "AdamW, 32-bit states, libtorch's fused kernel (_fused_adamw_, as torch.optim.AdamW(fused=True))"
        }
        Optimizer::Adamw8bit | Optimizer::AdamwBnb8bit | Optimizer::PagedAdamw8bit => {
            "AdamW, blockwise 8-bit states (bitsandbytes' dynamic map, blocks of 256; tensors under 4,096 \
             elements keep 32-bit states; paged_* needs no paging here)"
        }
        Optimizer::AdamwTorch8bit => {
            "AdamW, blockwise 8-bit states (torchao's AdamW8bit: dynamic maps, an fp32 scale per 256 values; \
             tensors under 4,096 elements or not a multiple of 256 keep full-precision states)"
        }
        Optimizer::AdamwTorch4bit => {
            "AdamW, blockwise 4-bit states (torchao's AdamW4bit: 4-bit dynamic map for exp_avg, linear map for \
             exp_avg_sq, an fp32 scale per 256 values; tensors under 4,096 elements or not a multiple of 256 keep \
             full-precision states)"
        }
        Optimizer::Sgd => {
            "SGD (torch.optim.SGD as transformers' Trainer builds it: no momentum, weight decay added to the \
             gradient; no state; betas and eps unused)"
        }
        Optimizer::Adafactor => {
            "Adafactor (transformers' Adafactor as the Trainer builds it: scale_parameter and relative_step off, \
             no first moment, eps (1e-30, 1e-3), clip threshold 1, decay rate -0.8; factored second moments for \
             matrices; betas and eps unused)"
        }
        Optimizer::Lion32bit | Optimizer::PagedLion32bit => {
            "Lion, 32-bit state (bitsandbytes' Lion: betas (adam_beta1, adam_beta2), decoupled weight decay, one \
             momentum; eps unused; paged_* needs no paging here)"
        }
        Optimizer::Lion8bit | Optimizer::PagedLion8bit => {
            "Lion, blockwise 8-bit state (bitsandbytes' Lion: its momentum in the signed dynamic map, blocks of \
             256; tensors under 4,096 elements keep a 32-bit one; betas (adam_beta1, adam_beta2), decoupled weight \
             decay; eps unused; paged_* needs no paging here)"
        }
        Optimizer::Muon => {
            "Muon (Axolotl's, Moonlight's formulation: hidden matrices take Nesterov momentum 0.95 orthogonalized \
             by 5 Newton-Schulz steps in bf16, lr scaled by 0.2·sqrt(max(rows, cols)); embedding, head and \
             modules_to_save take Muon's own AdamW (betas, eps); weight decay on both; 1-D parameters (norms, \
             biases) are in neither group, so they stay as loaded, as in Axolotl)"
        }
    };
    TrainingPlan {
        preference: t.rl.map(|rl| PreferencePlan {
            method: rl,
            beta: t.dpo_beta,
            reference: if t.precompute_ref_log_probs {
                ReferenceStrategy::Precomputed
            } else {
                ReferenceStrategy::AdaptersOff
            },
            orpo_alpha: t.orpo_alpha.unwrap_or(0.1),
            simpo_gamma: t.simpo_gamma.unwrap_or(0.5),
            cpo_alpha: t.cpo_alpha.unwrap_or(1.0),
            use_weighting: t.dpo_use_weighting,
            kto_desirable_weight: t.kto_desirable_weight.unwrap_or(1.0),
            kto_undesirable_weight: t.kto_undesirable_weight.unwrap_or(1.0),
        }),
        reward: t.reward_model.then_some(RewardPlan { center_rewards_coefficient: t.center_rewards_coefficient }),
        optimizer: OptimizerPlan {
            name: t.optimizer,
            implementation: implementation.into(),
            beta1: t.adam_beta1,
            beta2: t.adam_beta2,
            epsilon: t.adam_epsilon,
            weight_decay: t.weight_decay,
        },
        max_grad_norm: t.max_grad_norm,
        seed: t.seed,
        precision,
        gradient_checkpointing: super::shard::gradient_checkpointing(c),
        activation_offloading: activation_offloading(c),
        loss: loss_plan(c, arch.vocab_size),
        attention: attention_plan(c, arch),
        output_dir: l.output_dir.clone(),
        logging_steps: l.logging_steps.max(1),
        eval_batch_size: u64::from(t.eval_batch_size.unwrap_or(t.micro_batch_size).max(1)),
        eval: if c.data.val_set_size > 0.0 { every(l.eval_steps, l.evals_per_epoch) } else { None },
        save: match l.save_strategy {
            Some(crate::config::logging::SaveStrategy::No) => None,
            Some(crate::config::logging::SaveStrategy::Epoch) => Some(Every::PerEpoch(1)),
            Some(crate::config::logging::SaveStrategy::Steps) | None => every(l.save_steps, l.saves_per_epoch),
        },
        save_total_limit: l.save_total_limit,
        save_only_model: l.save_only_model,
        early_stopping_patience: l.early_stopping_patience,
        loss_watchdog: l.loss_watchdog_threshold.map(|t| (t, l.loss_watchdog_patience.unwrap_or(3))),
        lisa: match (c.unfrozen.lisa_n_layers, c.unfrozen.lisa_step_interval) {
            (Some(n), Some(interval)) => Some(LisaPlan {
                n_layers: u64::from(n).min(arch.num_layers),
                step_interval: u64::from(interval).max(1),
                total_layers: arch.num_layers,
                layers_attribute: c.unfrozen.lisa_layers_attribute.clone().unwrap_or_else(|| "model.layers".into()),
            }),
            _ => None,
        },
        causal_lm_eval: l.do_causal_lm_eval.then(|| {
            use crate::config::logging::CausalLmMetric;
            CausalLmEvalPlan {
                metrics: l
                    .eval_causal_lm_metrics
                    .clone()
                    .unwrap_or_else(|| vec![CausalLmMetric::Sacrebleu, CausalLmMetric::Ter, CausalLmMetric::Chrf]),
                max_new_tokens: l.eval_max_new_tokens.unwrap_or(128),
            }
        }),
        resume_from_checkpoint: l.resume_from_checkpoint.clone(),
        overwrite_output_dir: l.overwrite_output_dir,
        save_dtype: l.save_dtype.map(Precision::from).unwrap_or_else(|| Precision::from_torch_dtype(base_dtype)),
        num_epochs: t.num_epochs,
        max_steps: t.max_steps,
        warmup_ratio: if t.warmup_steps.is_some() { None } else { t.warmup_ratio },
        cosine_min_lr_ratio: t.cosine_min_lr_ratio.unwrap_or(0.0),
        cosine_constant_lr_ratio: t.cosine_constant_lr_ratio,
    }
}

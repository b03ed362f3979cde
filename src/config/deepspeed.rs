//! DeepSpeed's JSON config, as `deepspeed: ds_config.json` names it (Axolotl's key): the typed
//! subset recipe reads, and the table of DeepSpeed options recipe recognises but does not
//! implement.
//!
//! What it means to recipe: `zero_optimization.stage` picks the sharding strategy (0 DDP, 1
//! optimizer states sharded, 2 gradients too, 3 parameters too) and `offload_*` what lives in host
//! memory. The batch, clipping, precision, optimizer and scheduler values are the recipe's: DeepSpeed
//! writes them as `"auto"` (taken from the recipe), and an explicit value must agree with the
//! recipe (config/rules.rs). Communication tuning knobs that leave the numbers unchanged are
//! accepted and listed by the plan with the reason. The file is read, with positions, by
//! recipe/deepspeed.rs; this module holds only types, so config does not depend on the reader.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `"auto"` (the recipe's value) or an explicit value, which must agree with the recipe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Auto<T> {
    /// The recipe's value.
    Auto(AutoWord),
    /// An explicit value.
    Value(T),
}

impl<T: Copy> Auto<T> {
    /// The explicit value, if one is written.
    pub fn value(self) -> Option<T> {
        match self {
            Auto::Auto(_) => None,
            Auto::Value(v) => Some(v),
        }
    }
}

/// `auto` takes the recipe's value; otherwise write the value itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoWord {
    Auto,
}

/// A DeepSpeed config file (the keys recipe reads; see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "DeepSpeed config", deny_unknown_fields)]
pub struct DeepSpeedConfig {
    /// ZeRO: what is sharded across ranks and what is offloaded to host memory.
    #[serde(default)]
    pub zero_optimization: ZeroConfig,
    /// Sequences per GPU per forward/backward pass: `auto` or the recipe's `micro_batch_size`.
    #[serde(default)]
    pub train_micro_batch_size_per_gpu: Option<Auto<u32>>,
    /// Micro batches per optimizer step: `auto` or the recipe's `gradient_accumulation_steps`.
    #[serde(default)]
    pub gradient_accumulation_steps: Option<Auto<u32>>,
    /// Sequences per optimizer step over all ranks: `auto` or micro batch × accumulation × world
    /// size.
    #[serde(default)]
    pub train_batch_size: Option<Auto<u64>>,
    /// Global gradient-norm clipping: `auto` or the recipe's `max_grad_norm`.
    #[serde(default)]
    pub gradient_clipping: Option<Auto<f64>>,
    /// bfloat16 mixed precision: `enabled` is `auto` or agrees with the recipe's `bf16`.
    #[serde(default)]
    pub bf16: Option<Bf16Section>,
    /// float16 mixed precision with loss scaling: `enabled` is `auto` or agrees with the recipe's
    /// `fp16`; the loss-scaler settings must be recipe's own when float16 is on.
    #[serde(default)]
    pub fp16: Option<Fp16Section>,
    /// The optimizer; it must be the recipe's (32-bit AdamW), with `auto` or the recipe's values.
    #[serde(default)]
    pub optimizer: Option<OptimizerSection>,
    /// The learning-rate schedule; it must be the recipe's `lr_scheduler` with linear warmup.
    #[serde(default)]
    pub scheduler: Option<SchedulerSection>,
    /// DeepSpeed's timing printout; no effect on what recipe computes.
    #[serde(default)]
    pub wall_clock_breakdown: Option<bool>,
    /// How often DeepSpeed prints progress; no effect on what recipe computes (`logging_steps` sets
    /// recipe's).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub steps_per_print: Option<u64>,
    /// Lets ZeRO run an optimizer DeepSpeed has not tested; recipe always runs its own AdamW, so no
    /// effect.
    #[serde(default)]
    pub zero_allow_untested_optimizer: Option<bool>,
    /// `true` replaces the optimizer with DeepSpeed's CPU Adam under offload, which recipe does not
    /// have; `false` (recipe's own optimizer) is what recipe does.
    #[serde(default)]
    pub zero_force_ds_cpu_optimizer: Option<bool>,
    /// DeepSpeed's activation checkpointing; none of its options is built (use the recipe's
    /// `gradient_checkpointing`).
    #[serde(default)]
    pub activation_checkpointing: Option<Empty>,
}

/// A section none of whose keys recipe implements: each written key is refused by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(deny_unknown_fields)]
pub struct Empty {}

/// `zero_optimization`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(deny_unknown_fields)]
pub struct ZeroConfig {
    /// 0: DDP; 1: optimizer states sharded; 2: gradients and optimizer states sharded
    /// (`shard_grad_op`); 3: parameters too (`full_shard`). 0 when absent, as DeepSpeed.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3))]
    pub stage: Option<u8>,
    /// Keep optimizer states (and the fp32 trainable weights they update) in host memory; stages
    /// 1–3.
    #[serde(default)]
    pub offload_optimizer: Option<Offload>,
    /// Keep sharded parameters in host memory between uses; stage 3 only.
    #[serde(default)]
    pub offload_param: Option<Offload>,
    /// Overlap gradient reduction with the backward pass: timing only, same numbers.
    #[serde(default)]
    pub overlap_comm: Option<bool>,
    /// Copy gradients into one contiguous buffer: memory layout only, same numbers.
    #[serde(default)]
    pub contiguous_gradients: Option<bool>,
    /// Elements per optimizer sub-step under stage 3: granularity only, same numbers.
    #[serde(default)]
    pub sub_group_size: Option<Auto<f64>>,
    /// Elements reduced at a time: bucket size only, same numbers.
    #[serde(default)]
    pub reduce_bucket_size: Option<Auto<f64>>,
    /// Elements gathered at a time: bucket size only, same numbers.
    #[serde(default)]
    pub allgather_bucket_size: Option<Auto<f64>>,
    /// Gather updated parameters with all-gather rather than broadcasts: same numbers.
    #[serde(default)]
    pub allgather_partitions: Option<bool>,
    /// Reduce gradients with reduce-scatter rather than all-reduce: same numbers.
    #[serde(default)]
    pub reduce_scatter: Option<bool>,
    /// Stage 1/2 gradient partition order under offload: same numbers.
    #[serde(default)]
    pub round_robin_gradients: Option<bool>,
    /// Elements prefetched ahead under stage 3: timing only, same numbers.
    #[serde(default)]
    pub stage3_prefetch_bucket_size: Option<Auto<f64>>,
    /// Same as `stage3_prefetch_bucket_size`.
    #[serde(default)]
    pub prefetch_bucket_size: Option<Auto<f64>>,
    /// Parameters smaller than this stay unsharded under stage 3: memory only, same numbers.
    #[serde(default)]
    pub stage3_param_persistence_threshold: Option<Auto<f64>>,
    /// Same as `stage3_param_persistence_threshold`.
    #[serde(default)]
    pub param_persistence_threshold: Option<Auto<f64>>,
    /// Gathered parameters kept alive under stage 3: memory only, same numbers.
    #[serde(default)]
    pub stage3_max_live_parameters: Option<Auto<f64>>,
    /// Same as `stage3_max_live_parameters`.
    #[serde(default)]
    pub max_live_parameters: Option<Auto<f64>>,
    /// How soon a released parameter is reused under stage 3: memory only, same numbers.
    #[serde(default)]
    pub stage3_max_reuse_distance: Option<Auto<f64>>,
    /// Same as `stage3_max_reuse_distance`.
    #[serde(default)]
    pub max_reuse_distance: Option<Auto<f64>>,
    /// Save the gathered 16-bit model: recipe always writes the whole model (`true`); `false`
    /// (sharded checkpoints only) is not built.
    #[serde(default)]
    pub stage3_gather_16bit_weights_on_model_save: Option<bool>,
    /// Same as `stage3_gather_16bit_weights_on_model_save`.
    #[serde(default)]
    pub gather_16bit_weights_on_model_save: Option<bool>,
}

/// `offload_optimizer` / `offload_param`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(deny_unknown_fields)]
pub struct Offload {
    /// `cpu` (host memory) or `none`; `nvme` is not built.
    pub device: OffloadDevice,
    /// Page-locked host memory for faster copies.
    #[serde(default)]
    pub pin_memory: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OffloadDevice {
    /// No offload.
    None,
    /// Host memory.
    Cpu,
    /// An NVMe drive (DeepSpeed's ZeRO-Infinity); not built.
    Nvme,
}

/// `bf16`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(deny_unknown_fields)]
pub struct Bf16Section {
    /// `auto`, or true / false agreeing with the recipe's `bf16`.
    #[serde(default)]
    pub enabled: Option<Auto<bool>>,
}

/// `fp16`: the switch and DeepSpeed's loss scaler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(deny_unknown_fields)]
pub struct Fp16Section {
    /// `auto`, or true / false agreeing with the recipe's `fp16`.
    #[serde(default)]
    pub enabled: Option<Auto<bool>>,
    /// torch autocast instead of a float16 model; recipe autocasts.
    #[serde(default)]
    pub auto_cast: Option<bool>,
    /// 0: dynamic loss scaling (recipe's); another value is a fixed scale.
    #[serde(default)]
    pub loss_scale: Option<f64>,
    /// The first dynamic scale is 2^this (recipe's: 16).
    #[serde(default)]
    pub initial_scale_power: Option<u32>,
    /// Steps without overflow before the scale grows (recipe's: 2000).
    #[serde(default)]
    pub loss_scale_window: Option<u64>,
    /// Overflows tolerated before the scale shrinks (recipe's: 1).
    #[serde(default)]
    pub hysteresis: Option<u32>,
    /// Hysteresis over consecutive overflows only.
    #[serde(default)]
    pub consecutive_hysteresis: Option<bool>,
    /// The smallest dynamic scale (recipe has none).
    #[serde(default)]
    pub min_loss_scale: Option<f64>,
}

/// `optimizer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(deny_unknown_fields)]
pub struct OptimizerSection {
    /// DeepSpeed's optimizer name: `AdamW` or `Adam` (AdamW unless `adam_w_mode: false`) are
    /// recipe's 32-bit AdamW.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub params: OptimizerParams,
}

/// `optimizer.params`: `auto` or the recipe's values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(deny_unknown_fields)]
pub struct OptimizerParams {
    /// `learning_rate`.
    #[serde(default)]
    pub lr: Option<Auto<f64>>,
    /// `[adam_beta1, adam_beta2]`.
    #[serde(default)]
    pub betas: Option<Auto<[f64; 2]>>,
    /// `adam_epsilon`.
    #[serde(default)]
    pub eps: Option<Auto<f64>>,
    /// `weight_decay`.
    #[serde(default)]
    pub weight_decay: Option<Auto<f64>>,
    /// Decoupled weight decay (AdamW); `false` (Adam's L2 penalty) is not built.
    #[serde(default)]
    pub adam_w_mode: Option<bool>,
    /// Use torch's Adam kernel rather than DeepSpeed's: the same update.
    #[serde(default)]
    pub torch_adam: Option<bool>,
}

/// `scheduler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(deny_unknown_fields)]
pub struct SchedulerSection {
    /// `WarmupDecayLR` (recipe's `linear`), `WarmupCosineLR` (`cosine`) or `WarmupLR`
    /// (`constant_with_warmup`).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub params: SchedulerParams,
}

/// `scheduler.params`: `auto` or the recipe's values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(deny_unknown_fields)]
pub struct SchedulerParams {
    /// The learning rate warmup starts from: `auto` or 0.
    #[serde(default)]
    pub warmup_min_lr: Option<Auto<f64>>,
    /// The peak learning rate: `auto` or `learning_rate`.
    #[serde(default)]
    pub warmup_max_lr: Option<Auto<f64>>,
    /// Warmup steps: `auto` or the plan's warmup steps.
    #[serde(default)]
    pub warmup_num_steps: Option<Auto<f64>>,
    /// All steps: `auto` or the plan's total steps.
    #[serde(default)]
    pub total_num_steps: Option<Auto<f64>>,
    /// The warmup curve: recipe's is `linear` (DeepSpeed's default, `log`, is not built).
    #[serde(default)]
    pub warmup_type: Option<WarmupType>,
    /// WarmupCosineLR's start as a fraction of the peak: `auto` or 0.
    #[serde(default)]
    pub warmup_min_ratio: Option<Auto<f64>>,
    /// WarmupCosineLR's floor as a fraction of the peak: `auto` or `cosine_min_lr_ratio`.
    #[serde(default)]
    pub cos_min_ratio: Option<Auto<f64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WarmupType {
    /// Linear warmup (recipe's).
    Linear,
    /// Logarithmic warmup (DeepSpeed's default); not built.
    Log,
}

/// Recipe's float16 loss scaler (exec/loss_scale.rs, torch's GradScaler): the first scale is
/// 2^16 and it doubles after 2000 steps without overflow. A DeepSpeed config's `fp16` section
/// must say the same when float16 is on.
pub const RECIPE_INITIAL_SCALE_POWER: u32 = 16;
pub const RECIPE_LOSS_SCALE_WINDOW: u64 = 2000;

/// A ZeRO stage, resolved (serialized as its number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroStage {
    /// Plain data parallelism.
    Zero0,
    /// Optimizer states sharded.
    Zero1,
    /// Gradients and optimizer states sharded.
    Zero2,
    /// Parameters, gradients and optimizer states sharded.
    Zero3,
}

impl ZeroStage {
    pub fn number(self) -> u8 {
        self as u8
    }
}

impl Serialize for ZeroStage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.number())
    }
}

impl DeepSpeedConfig {
    pub fn stage(&self) -> ZeroStage {
        match self.zero_optimization.stage.unwrap_or(0) {
            0 => ZeroStage::Zero0,
            1 => ZeroStage::Zero1,
            2 => ZeroStage::Zero2,
            _ => ZeroStage::Zero3,
        }
    }

    /// Optimizer states offloaded to host memory, with their `pin_memory`.
    pub fn offload_optimizer(&self) -> Option<bool> {
        offloaded(self.zero_optimization.offload_optimizer)
    }

    /// Parameters offloaded to host memory, with their `pin_memory`.
    pub fn offload_param(&self) -> Option<bool> {
        offloaded(self.zero_optimization.offload_param)
    }

    /// `bf16.enabled` / `fp16.enabled` when written as a value (not `auto`).
    pub fn bf16_enabled(&self) -> Option<bool> {
        self.bf16.and_then(|s| s.enabled).and_then(Auto::value)
    }

    pub fn fp16_enabled(&self) -> Option<bool> {
        self.fp16.and_then(|s| s.enabled).and_then(Auto::value)
    }

    /// The tuning knobs written in the file that recipe accepts because they leave the numbers
    /// unchanged: (key path, why). The plan lists them.
    pub fn accepted_knobs(&self) -> Vec<(&'static str, &'static str)> {
        let z = &self.zero_optimization;
        const TIMING: &str = "timing only: the same numbers";
        const BUCKETS: &str = "bucket and prefetch sizes: the same numbers";
        const MEMORY: &str = "what stays resident: the same numbers";
        const LOG: &str = "DeepSpeed's own printout: recipe logs by logging_steps";
        let written = [
            ("zero_optimization.overlap_comm", z.overlap_comm.is_some(), TIMING),
            ("zero_optimization.contiguous_gradients", z.contiguous_gradients.is_some(), MEMORY),
            ("zero_optimization.sub_group_size", z.sub_group_size.is_some(), BUCKETS),
            ("zero_optimization.reduce_bucket_size", z.reduce_bucket_size.is_some(), BUCKETS),
            ("zero_optimization.allgather_bucket_size", z.allgather_bucket_size.is_some(), BUCKETS),
            ("zero_optimization.allgather_partitions", z.allgather_partitions.is_some(), TIMING),
            ("zero_optimization.reduce_scatter", z.reduce_scatter.is_some(), TIMING),
            ("zero_optimization.round_robin_gradients", z.round_robin_gradients.is_some(), TIMING),
            ("zero_optimization.stage3_prefetch_bucket_size", z.stage3_prefetch_bucket_size.is_some(), BUCKETS),
            ("zero_optimization.prefetch_bucket_size", z.prefetch_bucket_size.is_some(), BUCKETS),
            (
                "zero_optimization.stage3_param_persistence_threshold",
                z.stage3_param_persistence_threshold.is_some(),
                MEMORY,
            ),
            ("zero_optimization.param_persistence_threshold", z.param_persistence_threshold.is_some(), MEMORY),
            ("zero_optimization.stage3_max_live_parameters", z.stage3_max_live_parameters.is_some(), MEMORY),
            ("zero_optimization.max_live_parameters", z.max_live_parameters.is_some(), MEMORY),
            ("zero_optimization.stage3_max_reuse_distance", z.stage3_max_reuse_distance.is_some(), MEMORY),
            ("zero_optimization.max_reuse_distance", z.max_reuse_distance.is_some(), MEMORY),
            (
                "zero_optimization.stage3_gather_16bit_weights_on_model_save",
                z.stage3_gather_16bit_weights_on_model_save == Some(true),
                "recipe always saves the whole model",
            ),
            (
                "zero_optimization.gather_16bit_weights_on_model_save",
                z.gather_16bit_weights_on_model_save == Some(true),
                "recipe always saves the whole model",
            ),
            ("wall_clock_breakdown", self.wall_clock_breakdown.is_some(), LOG),
            ("steps_per_print", self.steps_per_print.is_some(), LOG),
            (
                "zero_allow_untested_optimizer",
                self.zero_allow_untested_optimizer.is_some(),
                "recipe runs its own AdamW in every stage",
            ),
            (
                "zero_force_ds_cpu_optimizer",
                self.zero_force_ds_cpu_optimizer == Some(false),
                "recipe runs its own AdamW in every stage",
            ),
        ];
        written.into_iter().filter(|w| w.1).map(|w| (w.0, w.2)).collect()
    }
}

fn offloaded(o: Option<Offload>) -> Option<bool> {
    o.filter(|o| o.device != OffloadDevice::None).map(|o| o.pin_memory.unwrap_or(false))
}

/// A DeepSpeed option recipe recognises but does not implement: refused by name at its key unless
/// its value is empty or `false`.
#[derive(Debug, Clone, Copy)]
pub struct DeepSpeedKey {
    /// Dotted path in the JSON.
    pub path: &'static str,
    /// What it is, for the message.
    pub what: &'static str,
    /// The recipe's way to the same end, if any.
    pub alternative: Option<&'static str>,
}

const fn key(path: &'static str, what: &'static str, alternative: Option<&'static str>) -> DeepSpeedKey {
    DeepSpeedKey { path, what, alternative }
}

const CKPT: Option<&str> = Some("use `gradient_checkpointing: true` in the recipe");
const TRACKING: Option<&str> = Some("use the recipe's tracking keys (use_tensorboard, use_mlflow, wandb_*)");
const NVME: &str = "an NVMe offload setting, ZeRO-Infinity";

/// DeepSpeed options recipe knows by name and does not implement.
pub static DEEPSPEED_KEYS: &[DeepSpeedKey] = &[
    key("activation_checkpointing.partition_activations", "activation partitioning across ranks", CKPT),
    key("activation_checkpointing.cpu_checkpointing", "activation checkpoints in host memory", CKPT),
    key("activation_checkpointing.contiguous_memory_optimization", "contiguous activation checkpoints", CKPT),
    key("activation_checkpointing.number_checkpoints", "a fixed number of activation checkpoints", CKPT),
    key("activation_checkpointing.synchronize_checkpoint_boundary", "synchronized activation checkpoints", CKPT),
    key("activation_checkpointing.profile", "activation checkpoint profiling", CKPT),
    key("amp", "NVIDIA apex mixed precision", Some("use the recipe's `bf16` / `fp16`")),
    key("aio", "asynchronous NVMe I/O", None),
    key("autotuning", "DeepSpeed's autotuner", None),
    key("checkpoint", "DeepSpeed's checkpoint engine", None),
    key("communication_data_type", "a reduced-precision gradient reduction", None),
    key("comms_logger", "collective logging", None),
    key("compile", "torch.compile of the engine", Some("use `torch_compile` in the recipe")),
    key("compression_training", "compression-aware training", None),
    key("csv_monitor", "CSV monitoring", TRACKING),
    key("curriculum_learning", "curriculum learning", None),
    key("data_efficiency", "data sampling and routing", None),
    key("data_types", "gradient accumulation in another dtype", None),
    key("dump_state", "an engine state dump", None),
    key("elasticity", "elastic training", None),
    key("flops_profiler", "the FLOPs profiler", None),
    key("gradient_predivide_factor", "gradient pre-division", None),
    key("hybrid_engine", "the RLHF hybrid engine", None),
    key("memory_breakdown", "memory breakdown printouts", None),
    key("nebula", "Nebula checkpointing", None),
    key("pipeline", "pipeline parallelism", None),
    key("prescale_gradients", "gradient pre-scaling", None),
    key("quantize_training", "quantization-aware training", None),
    key("sequence_parallel_size", "sequence parallelism", None),
    key("sparse_attention", "sparse attention", None),
    key("sparse_gradients", "sparse gradients", None),
    key("tensor_parallel", "tensor parallelism", None),
    key("tensorboard", "DeepSpeed's TensorBoard writer", TRACKING),
    key("wandb", "DeepSpeed's W&B writer", TRACKING),
    key("weight_quantization", "weight quantization", None),
    key(
        "zero_optimization.cpu_offload",
        "the old offload switch",
        Some("write `offload_optimizer: {\"device\": \"cpu\"}`"),
    ),
    key(
        "zero_optimization.cpu_offload_params",
        "the old parameter offload switch",
        Some("write `offload_param: {\"device\": \"cpu\"}`"),
    ),
    key(
        "zero_optimization.cpu_offload_use_pin_memory",
        "the old pinned offload switch",
        Some("write `pin_memory` under `offload_optimizer`"),
    ),
    key("zero_optimization.elastic_checkpoint", "elastic checkpoints", None),
    key(
        "zero_optimization.ignore_unused_parameters",
        "ZeRO's unused-parameter switch",
        Some("use `ddp_find_unused_parameters` in the recipe"),
    ),
    key("zero_optimization.legacy_stage1", "the old stage-1 implementation", None),
    key("zero_optimization.load_from_fp32_weights", "fp32 checkpoint reloading", None),
    key("zero_optimization.memory_efficient_linear", "ZeRO-3's memory-efficient linear", None),
    key("zero_optimization.mics_hierarchical_params_gather", "MiCS hierarchical gathers", None),
    key("zero_optimization.mics_shard_size", "MiCS sharding", None),
    key("zero_optimization.offload_optimizer.buffer_count", NVME, None),
    key("zero_optimization.offload_optimizer.fast_init", NVME, None),
    key("zero_optimization.offload_optimizer.nvme_path", NVME, None),
    key("zero_optimization.offload_optimizer.pipeline_read", NVME, None),
    key("zero_optimization.offload_optimizer.pipeline_write", NVME, None),
    key("zero_optimization.offload_optimizer.ratio", "partial optimizer offload", None),
    key("zero_optimization.offload_param.buffer_count", NVME, None),
    key("zero_optimization.offload_param.buffer_size", NVME, None),
    key("zero_optimization.offload_param.max_in_cpu", NVME, None),
    key("zero_optimization.offload_param.nvme_path", NVME, None),
    key("zero_optimization.stage3_module_granularity_threshold", "ZeRO-3 module leaf marking", None),
    key("zero_optimization.zero_hpz_partition_size", "ZeRO++ hierarchical partitioning", None),
    key("zero_optimization.zero_quantized_gradients", "ZeRO++ quantized gradients", None),
    key("zero_optimization.zero_quantized_nontrainable_weights", "ZeRO++ quantized frozen weights", None),
    key("zero_optimization.zero_quantized_weights", "ZeRO++ quantized weights", None),
    key("zero_optimization.zeropp_loco_param", "ZeRO++ LoCo", None),
];

/// The table entry for a dotted path.
pub fn lookup(path: &str) -> Option<&'static DeepSpeedKey> {
    DEEPSPEED_KEYS.iter().find(|k| k.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_or_value_reads_both() {
        let a: Auto<u32> = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(a.value(), None);
        let v: Auto<u32> = serde_json::from_str("4").unwrap();
        assert_eq!(v.value(), Some(4));
        assert!(serde_json::from_str::<Auto<u32>>("\"four\"").is_err());
    }

    #[cfg(feature = "exec")]
    #[test]
    fn the_loss_scaler_is_the_executors() {
        use crate::exec::loss_scale::{GROWTH_INTERVAL, INIT_SCALE};
        assert_eq!(INIT_SCALE, 2f64.powi(RECIPE_INITIAL_SCALE_POWER as i32));
        assert_eq!(GROWTH_INTERVAL, RECIPE_LOSS_SCALE_WINDOW);
    }

    #[test]
    fn refused_keys_are_not_typed_keys() {
        let schema = serde_json::to_value(schemars::schema_for!(DeepSpeedConfig)).unwrap();
        for k in DEEPSPEED_KEYS {
            assert!(!schema.to_string().contains(&format!("\"{}\"", k.path.rsplit('.').next().unwrap())), "{}", k.path);
        }
    }
}

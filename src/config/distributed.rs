//! Multi-GPU layout: DDP options and sharded training, asked for with FSDP's keys or with a
//! DeepSpeed config file (its contents: config/deepspeed.rs).

use super::deepspeed::{DeepSpeedConfig, ZeroStage};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Data-parallel and sharded training. World size comes from the launcher (torchrun/SLURM
/// variables or `recipe run --nproc-per-node`), not from the recipe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DistributedConfig {
    /// Sharded training options (Axolotl / accelerate names). Empty: DDP when world size > 1.
    #[serde(default)]
    pub fsdp: Vec<FsdpOption>,
    /// Details of sharded training. As in Axolotl, `fsdp_config` alone (without `fsdp`) turns
    /// sharded training on, with the strategy its settings name (full sharding by default).
    #[serde(default)]
    pub fsdp_config: FsdpConfig,
    /// FSDP generation (1 or 2), as Axolotl's top-level key; `fsdp_config.fsdp_version` is the same.
    #[serde(default)]
    #[schemars(range(min = 1, max = 2))]
    pub fsdp_version: Option<u32>,
    /// Seconds the rendezvous and each collective may wait for the other ranks before the run
    /// fails (1800 when absent, as torch's default); at most a week.
    #[serde(default)]
    #[schemars(range(min = 1, max = 604800))]
    pub ddp_timeout: Option<u64>,
    /// Gradients are all-reduced in flat buckets of this many MiB (25 when absent, as DDP).
    #[serde(default)]
    #[schemars(range(min = 1, max = 65536))]
    pub ddp_bucket_cap_mb: Option<u32>,
    /// Broadcast buffers from rank 0 at each step (Llama-family models have none to sync).
    #[serde(default)]
    pub ddp_broadcast_buffers: Option<bool>,
    /// Tolerate trainable parameters that get no gradient in a step (summed as zero); false: such a
    /// parameter is an error naming it, as DDP's default.
    #[serde(default)]
    pub ddp_find_unused_parameters: Option<bool>,
    /// A DeepSpeed config file (JSON; path relative to this recipe), as Axolotl's
    /// `deepspeed_configs/zero2.json`: its ZeRO stage picks the sharding (0 DDP, 1 optimizer states
    /// sharded, 2 `shard_grad_op`, 3 `full_shard`) and its offload settings what lives in host
    /// memory; batch, clipping, precision, optimizer and scheduler values are `auto` or agree with
    /// this recipe. Excludes `fsdp` / `fsdp_config`.
    #[serde(default)]
    pub deepspeed: Option<String>,
    /// The file `deepspeed` names, read and checked by the recipe loader (not a recipe key).
    #[serde(skip)]
    pub deepspeed_config: Option<DeepSpeedConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FsdpOption {
    /// Shard parameters, gradients and optimizer states (ZeRO-3).
    FullShard,
    /// Shard gradients and optimizer states (ZeRO-2).
    ShardGradOp,
    /// Full sharding within a node, replication across nodes.
    HybridShard,
    /// Keep sharded parameters, their gradients and the optimizer states in host memory between
    /// uses (FSDP's CPUOffload); the optimizer steps on the host.
    Offload,
    /// Wrap each decoder layer as one shard unit.
    AutoWrap,
}

impl FsdpOption {
    /// The recipe's name for it, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            FsdpOption::FullShard => "full_shard",
            FsdpOption::ShardGradOp => "shard_grad_op",
            FsdpOption::HybridShard => "hybrid_shard",
            FsdpOption::Offload => "offload",
            FsdpOption::AutoWrap => "auto_wrap",
        }
    }
}

/// FSDP details, with accelerate's `fsdp_` prefixed names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FsdpConfig {
    /// FSDP generation (1 or 2); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2))]
    pub fsdp_version: Option<u32>,
    /// Keep sharded parameters, their gradients and the optimizer states in host memory between
    /// uses; the optimizer steps on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_offload_params: Option<bool>,
    /// Broadcast rank 0's weights at start instead of loading on every rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_sync_module_states: Option<bool>,
    /// Load weights on rank 0 only, then shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_cpu_ram_efficient_loading: Option<bool>,
    /// Keep original parameter objects (needed to mix frozen and trained parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_use_orig_params: Option<bool>,
    /// Throttle all-gathers to bound memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_limit_all_gathers: Option<bool>,
    /// How shard units are chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_auto_wrap_policy: Option<AutoWrapPolicy>,
    /// The decoder layer class wrapped as a unit (`LlamaDecoderLayer`, `MistralDecoderLayer`,
    /// `Qwen2DecoderLayer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_transformer_layer_cls_to_wrap: Option<String>,
    /// How checkpoints are written: one full state dict or one shard per rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_state_dict_type: Option<StateDictType>,
    /// The sharding strategy, when not given in `fsdp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_sharding_strategy: Option<ShardingStrategy>,
    /// Free gathered parameters after the forward pass (FSDP2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_reshard_after_forward: Option<bool>,
    /// Recompute each wrapped layer in the backward pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_activation_checkpointing: Option<bool>,
    /// When the next unit's parameters are gathered in the backward pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_backward_prefetch: Option<BackwardPrefetch>,
    /// Gather the next unit's parameters during the forward pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_forward_prefetch: Option<bool>,
    // FSDP2's names (Axolotl's current examples), each the same setting as its `fsdp_` twin.
    /// Same as `fsdp_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2))]
    pub version: Option<u32>,
    /// Same as `fsdp_offload_params`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_params: Option<bool>,
    /// Pin the host memory of offloaded parameters and gradients on CUDA (true when absent, as
    /// FSDP2's CPUOffloadPolicy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_offload_pin_memory: Option<bool>,
    /// Same as `fsdp_sync_module_states`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_module_states: Option<bool>,
    /// Same as `fsdp_cpu_ram_efficient_loading`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ram_efficient_loading: Option<bool>,
    /// Same as `fsdp_use_orig_params`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_orig_params: Option<bool>,
    /// Same as `fsdp_auto_wrap_policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_wrap_policy: Option<AutoWrapPolicy>,
    /// Same as `fsdp_transformer_layer_cls_to_wrap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformer_layer_cls_to_wrap: Option<String>,
    /// The smallest module wrapped under SIZE_BASED_WRAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_num_params: Option<u64>,
    /// Same as `fsdp_state_dict_type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dict_type: Option<StateDictType>,
    /// How the final model is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_state_dict_type: Option<StateDictType>,
    /// Same as `fsdp_sharding_strategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding_strategy: Option<ShardingStrategy>,
    /// Same as `fsdp_reshard_after_forward`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshard_after_forward: Option<bool>,
    /// Same as `fsdp_activation_checkpointing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_checkpointing: Option<bool>,
    /// FSDP2's mixed-precision policy (e.g. `bf16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixed_precision_policy: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BackwardPrefetch {
    BackwardPre,
    BackwardPost,
    NoPrefetch,
}

impl FsdpConfig {
    /// Settings written in both spellings (`fsdp_offload_params` and `offload_params`): each pair
    /// is one setting, so a recipe may write it once.
    pub fn written_twice(&self) -> Vec<(&'static str, &'static str)> {
        let pairs = [
            ("fsdp_version", "version", self.fsdp_version.is_some(), self.version.is_some()),
            (
                "fsdp_offload_params",
                "offload_params",
                self.fsdp_offload_params.is_some(),
                self.offload_params.is_some(),
            ),
            (
                "fsdp_sync_module_states",
                "sync_module_states",
                self.fsdp_sync_module_states.is_some(),
                self.sync_module_states.is_some(),
            ),
            (
                "fsdp_cpu_ram_efficient_loading",
                "cpu_ram_efficient_loading",
                self.fsdp_cpu_ram_efficient_loading.is_some(),
                self.cpu_ram_efficient_loading.is_some(),
            ),
            (
                "fsdp_use_orig_params",
                "use_orig_params",
                self.fsdp_use_orig_params.is_some(),
                self.use_orig_params.is_some(),
            ),
            (
                "fsdp_auto_wrap_policy",
                "auto_wrap_policy",
                self.fsdp_auto_wrap_policy.is_some(),
                self.auto_wrap_policy.is_some(),
            ),
            (
                "fsdp_transformer_layer_cls_to_wrap",
                "transformer_layer_cls_to_wrap",
                self.fsdp_transformer_layer_cls_to_wrap.is_some(),
                self.transformer_layer_cls_to_wrap.is_some(),
            ),
            (
                "fsdp_state_dict_type",
                "state_dict_type",
                self.fsdp_state_dict_type.is_some(),
                self.state_dict_type.is_some(),
            ),
            (
                "fsdp_sharding_strategy",
                "sharding_strategy",
                self.fsdp_sharding_strategy.is_some(),
                self.sharding_strategy.is_some(),
            ),
            (
                "fsdp_reshard_after_forward",
                "reshard_after_forward",
                self.fsdp_reshard_after_forward.is_some(),
                self.reshard_after_forward.is_some(),
            ),
            (
                "fsdp_activation_checkpointing",
                "activation_checkpointing",
                self.fsdp_activation_checkpointing.is_some(),
                self.activation_checkpointing.is_some(),
            ),
        ];
        pairs.into_iter().filter(|p| p.2 && p.3).map(|p| (p.0, p.1)).collect()
    }
}

impl DistributedConfig {
    /// `state_dict_type: SHARDED_STATE_DICT` (either spelling): checkpoints in per-rank shards.
    pub fn sharded_checkpoints(&self) -> bool {
        let f = &self.fsdp_config;
        !self.sharding().is_empty()
            && f.fsdp_state_dict_type.or(f.state_dict_type) == Some(StateDictType::ShardedStateDict)
    }

    /// The ZeRO stage of the DeepSpeed config, when the recipe names one.
    pub fn zero_stage(&self) -> Option<ZeroStage> {
        self.deepspeed_config.as_ref().map(DeepSpeedConfig::stage)
    }

    /// Whether sharded training is asked for, by FSDP's keys or a DeepSpeed stage 1–3.
    pub fn shards(&self) -> bool {
        !self.sharding().is_empty() || self.zero_stage().is_some_and(|s| s != ZeroStage::Zero0)
    }

    /// Sharded-training settings `recipe run` does not build, as (key, what it asks for): `plan`
    /// lays the recipe out, `validate` warns at the key and `run` refuses it.
    pub fn not_built(&self) -> Vec<(&'static str, &'static str)> {
        let f = &self.fsdp_config;
        let sharding = self.sharding();
        if sharding.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let strategies = [FsdpOption::FullShard, FsdpOption::ShardGradOp, FsdpOption::HybridShard];
        if sharding.contains(&FsdpOption::Offload) && !sharding.iter().any(|o| strategies.contains(o)) {
            let key = if self.fsdp.contains(&FsdpOption::Offload) {
                "fsdp"
            } else if f.fsdp_offload_params.is_some() {
                "fsdp_config.fsdp_offload_params"
            } else {
                "fsdp_config.offload_params"
            };
            out.push((key, "offload without sharding (NO_SHARD; recipe offloads the chunks of sharded training)"));
        }
        let either = |a: Option<&'static str>, b: Option<&'static str>| a.or(b);
        let policy = either(
            f.fsdp_auto_wrap_policy.map(|_| "fsdp_config.fsdp_auto_wrap_policy"),
            f.auto_wrap_policy.map(|_| "fsdp_config.auto_wrap_policy"),
        );
        if f.fsdp_auto_wrap_policy.or(f.auto_wrap_policy) == Some(AutoWrapPolicy::SizeBasedWrap) {
            out.push((
                policy.unwrap_or("fsdp_config"),
                "SIZE_BASED_WRAP (recipe's shard units are the decoder layers and the root, TRANSFORMER_BASED_WRAP)",
            ));
        }
        if matches!(f.fsdp_backward_prefetch, Some(BackwardPrefetch::BackwardPre | BackwardPrefetch::BackwardPost)) {
            out.push(("fsdp_config.fsdp_backward_prefetch", "prefetching the next unit in the backward pass"));
        }
        if f.fsdp_forward_prefetch == Some(true) {
            out.push(("fsdp_config.fsdp_forward_prefetch", "prefetching the next unit in the forward pass"));
        }
        for (key, value) in [
            ("fsdp_config.fsdp_state_dict_type", f.fsdp_state_dict_type),
            ("fsdp_config.state_dict_type", f.state_dict_type),
        ] {
            if value == Some(StateDictType::LocalStateDict) {
                out.push((key, "LOCAL_STATE_DICT checkpoints (recipe writes FULL_STATE_DICT or SHARDED_STATE_DICT)"));
            }
        }
        if matches!(f.final_state_dict_type, Some(StateDictType::ShardedStateDict | StateDictType::LocalStateDict)) {
            out.push((
                "fsdp_config.final_state_dict_type",
                "final outputs in per-rank shards (recipe writes them whole, to load in transformers / peft)",
            ));
        }
        // Settings whose other value recipe does not do (it always does what `true` asks).
        for (prefixed, plain, value, what) in [
            (
                "fsdp_config.fsdp_sync_module_states",
                "fsdp_config.sync_module_states",
                f.fsdp_sync_module_states.or(f.sync_module_states),
                "ranks starting from their own weights (recipe starts every rank from rank 0's, as `true` asks)",
            ),
            (
                "fsdp_config.fsdp_limit_all_gathers",
                "fsdp_config.limit_all_gathers",
                f.fsdp_limit_all_gathers,
                "all-gathers without a limit (recipe gathers one unit at a time, as `true` asks)",
            ),
        ] {
            if value == Some(false) {
                let written_prefixed = prefixed.ends_with("limit_all_gathers") || f.fsdp_sync_module_states.is_some();
                out.push((if written_prefixed { prefixed } else { plain }, what));
            }
        }
        if f.mixed_precision_policy.is_some() {
            out.push((
                "fsdp_config.mixed_precision_policy",
                "FSDP's own mixed-precision policy (recipe's precision comes from bf16 / fp16)",
            ));
        }
        out
    }

    /// The sharding the recipe asks for with FSDP's keys (a DeepSpeed config's is
    /// [`Self::zero_stage`]): the `fsdp` list, else (as Axolotl, where `fsdp_config`
    /// alone turns FSDP on) the strategy `fsdp_config` names: its sharding strategy, else
    /// `reshard_after_forward: false` for shard_grad_op, else full sharding (accelerate's and
    /// FSDP2's default); `offload_params` and a wrap policy add `offload` / `auto_wrap`. Empty: no
    /// sharding. `offload_params: true` adds `offload` to an `fsdp` list too, as in Axolotl.
    pub fn sharding(&self) -> Vec<FsdpOption> {
        let f = &self.fsdp_config;
        let offload = f.fsdp_offload_params.or(f.offload_params) == Some(true);
        if !self.fsdp.is_empty() {
            let mut options = self.fsdp.clone();
            if offload && !options.contains(&FsdpOption::Offload) {
                options.push(FsdpOption::Offload);
            }
            return options;
        }
        if *f == FsdpConfig::default() {
            return Vec::new();
        }
        let strategy = match f.fsdp_sharding_strategy.or(f.sharding_strategy) {
            Some(ShardingStrategy::FullShard) => Some(FsdpOption::FullShard),
            Some(ShardingStrategy::ShardGradOp) => Some(FsdpOption::ShardGradOp),
            Some(ShardingStrategy::HybridShard) => Some(FsdpOption::HybridShard),
            Some(ShardingStrategy::NoShard) => None,
            None if f.fsdp_reshard_after_forward.or(f.reshard_after_forward) == Some(false) => {
                Some(FsdpOption::ShardGradOp)
            }
            None => Some(FsdpOption::FullShard),
        };
        let mut options: Vec<FsdpOption> = strategy.into_iter().collect();
        if offload {
            options.push(FsdpOption::Offload);
        }
        if f.fsdp_auto_wrap_policy.or(f.auto_wrap_policy).is_some() {
            options.push(FsdpOption::AutoWrap);
        }
        options
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AutoWrapPolicy {
    TransformerBasedWrap,
    SizeBasedWrap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StateDictType {
    FullStateDict,
    LocalStateDict,
    ShardedStateDict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShardingStrategy {
    FullShard,
    ShardGradOp,
    HybridShard,
    NoShard,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsdp_option_names_are_their_serialized_names() {
        use FsdpOption::*;
        for o in [FullShard, ShardGradOp, HybridShard, Offload, AutoWrap] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str(), "{o:?}");
        }
    }
}

//! Multi-GPU layout: DDP options and sharded (FSDP-style) training.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Data-parallel and sharded training. World size comes from the launcher (torchrun/SLURM
/// variables or `recipe run --nproc-per-node`), not from the recipe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DistributedConfig {
    /// Sharded training options (Axolotl / accelerate names). Empty: DDP when world size > 1.
    #[serde(default)]
    pub fsdp: Vec<FsdpOption>,
    /// Details of sharded training.
    #[serde(default)]
    pub fsdp_config: FsdpConfig,
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
    /// Keep sharded parameters on the CPU.
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
    #[serde(default)]
    #[schemars(range(min = 1, max = 2))]
    pub fsdp_version: Option<u32>,
    /// Keep parameters on the CPU between uses.
    #[serde(default)]
    pub fsdp_offload_params: Option<bool>,
    /// Broadcast rank 0's weights at start instead of loading on every rank.
    #[serde(default)]
    pub fsdp_sync_module_states: Option<bool>,
    /// Load weights on rank 0 only, then shard.
    #[serde(default)]
    pub fsdp_cpu_ram_efficient_loading: Option<bool>,
    /// Keep original parameter objects (needed to mix frozen and trained parameters).
    #[serde(default)]
    pub fsdp_use_orig_params: Option<bool>,
    /// Throttle all-gathers to bound memory.
    #[serde(default)]
    pub fsdp_limit_all_gathers: Option<bool>,
    /// How shard units are chosen.
    #[serde(default)]
    pub fsdp_auto_wrap_policy: Option<AutoWrapPolicy>,
    /// The decoder layer class wrapped as a unit (`LlamaDecoderLayer`, `MistralDecoderLayer`,
    /// `Qwen2DecoderLayer`).
    #[serde(default)]
    pub fsdp_transformer_layer_cls_to_wrap: Option<String>,
    /// How checkpoints are written: one full state dict or one shard per rank.
    #[serde(default)]
    pub fsdp_state_dict_type: Option<StateDictType>,
    /// The sharding strategy, when not given in `fsdp`.
    #[serde(default)]
    pub fsdp_sharding_strategy: Option<ShardingStrategy>,
    /// Free gathered parameters after the forward pass (FSDP2).
    #[serde(default)]
    pub fsdp_reshard_after_forward: Option<bool>,
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

//! The multi-GPU layout: strategy, which shard of the parameters, gradients and optimizer states
//! each rank holds, and the bytes moved by collectives per optimizer step.
//!
//! Strategies (the recipe's `fsdp` list picks them, as in Axolotl / accelerate, or the ZeRO stage
//! of a `deepspeed:` config: 0 `ddp`, 1 `shard_optimizer`, 2 `shard_grad_op`, 3 `full_shard`):
//! - `single`: one process.
//! - `ddp`: every rank holds everything; gradients are all-reduced once per optimizer step.
//! - `shard_optimizer` (ZeRO-1): optimizer states sharded; gradients all-reduced, each rank updates
//!   its shard of the trainable weights, and the updated shards are all-gathered.
//! - `shard_grad_op` (ZeRO-2): gradients and optimizer states sharded; parameters replicated.
//! - `full_shard` (ZeRO-3): parameters too; each unit is gathered for its forward and backward.
//! - `hybrid_shard`: full sharding within a node, replication across nodes.
//!
//! Shard units follow FSDP's auto wrap of decoder layers: one unit per decoder layer and a root
//! unit (embeddings, final norm, lm_head). Each unit's parameters are flattened and padded to a
//! multiple of the shard group size; the rank at index k of its group holds elements
//! [k × shard, (k + 1) × shard) of every unit.
//!
//! Bytes are the payload of each collective per rank (what a ring moves is about 2(n-1)/n times
//! that for all-reduce, (n-1)/n for gather and scatter).

use super::adapter::{AdapterMethod, AdapterPlan};
use super::arch::Architecture;
use super::precision::Precision;
use super::quantize::{self, QuantizationPlan};
use crate::config::Config;
use crate::config::deepspeed::{DeepSpeedConfig, ZeroStage};
use crate::config::distributed::FsdpOption;
use crate::config::training::Switch;
use crate::recipe::check::Locator;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Single,
    Ddp,
    ShardOptimizer,
    ShardGradOp,
    FullShard,
    HybridShard,
}

impl Strategy {
    pub fn shards_gradients_and_optimizer(self) -> bool {
        matches!(self, Strategy::ShardGradOp | Strategy::FullShard | Strategy::HybridShard)
    }

    pub fn shards_parameters(self) -> bool {
        matches!(self, Strategy::FullShard | Strategy::HybridShard)
    }

    /// Optimizer states sharded: every strategy that shards gradients, and ZeRO-1.
    pub fn shards_optimizer(self) -> bool {
        self == Strategy::ShardOptimizer || self.shards_gradients_and_optimizer()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    pub world_size: u64,
    pub nodes: u64,
    pub processes_per_node: u64,
    pub strategy: Strategy,
    /// The recipe's `fsdp` list (with what `fsdp_config` adds).
    pub fsdp: Vec<FsdpOption>,
    /// Full sharding: a layer's parameters are released after its forward pass and gathered
    /// again for its backward pass, which recomputes the layer (`reshard_after_forward`, true
    /// unless the recipe says false).
    pub reshard_after_forward: bool,
    /// Settings the executor does not build, as (key, what it asks for); `recipe run` refuses
    /// a recipe with any.
    pub not_built: Vec<(String, String)>,
    /// `state_dict_type: SHARDED_STATE_DICT`: each rank writes its chunks of a checkpoint (and rank 0
    /// an index); final outputs stay whole.
    pub sharded_checkpoints: bool,
    /// `transformer_layer_cls_to_wrap` as written (either spelling): `recipe run` checks that it
    /// names the model's decoder layer, which is what its units wrap.
    pub wrapped_class: Option<String>,
    /// `cpu_ram_efficient_loading`: under full sharding each rank loads only its chunks of the
    /// base, one tensor whole at a time.
    pub cpu_ram_efficient_loading: bool,
    /// Ranks that split one copy of the sharded state (world size, or one node for hybrid).
    pub shard_group_size: u64,
    /// What sharded training keeps in host memory between uses (`fsdp: [.., offload]`,
    /// `offload_params`, DeepSpeed's `offload_optimizer` / `offload_param`); left out of the
    /// JSON when nothing is offloaded.
    #[serde(skip_serializing_if = "HostOffload::none")]
    pub offload: HostOffload,
    pub units: Vec<Unit>,
    pub ranks: Vec<RankShard>,
    pub per_step: Collectives,
    /// How data-parallel ranks talk (Axolotl's `ddp_*` keys, resolved).
    pub ddp: DdpOptions,
    /// The DeepSpeed config the strategy comes from, when the recipe names one (filled in by
    /// [`deepspeed`], which knows where each value is written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deepspeed: Option<DeepSpeedLayout>,
}

/// What a `deepspeed:` config contributes to the layout.
#[derive(Debug, Clone, Serialize)]
pub struct DeepSpeedLayout {
    /// The file, as the recipe names it.
    pub file: String,
    pub stage: ZeroStage,
    /// Where the stage is written (`zero2.json:3:14`); `default` when the file leaves it out (0).
    pub stage_origin: String,
    /// Optimizer states in host memory (`offload_optimizer.device: cpu`).
    pub offload_optimizer: Option<Offloaded>,
    /// Parameters in host memory between uses (`offload_param.device: cpu`, stage 3).
    pub offload_param: Option<Offloaded>,
    /// Settings accepted because they leave the numbers unchanged.
    pub accepted: Vec<AcceptedSetting>,
}

/// What lives in host memory between uses, as FSDP's CPUOffload and ZeRO-Offload keep it: a
/// unit's chunks are copied to the compute device just before its all-gather, its gradient chunks
/// copied back after its reduce-scatter, and the optimizer steps on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HostOffload {
    /// The trainable chunks (the fp32 weights the optimizer updates), their summed gradients and
    /// the optimizer states: fsdp's offload, DeepSpeed's `offload_optimizer`, and `offload_param`
    /// (a trainable chunk is its parameter's only sharded copy, so the optimizer follows it).
    pub trainable: bool,
    /// The frozen chunks (an adapter's base, packed when quantized), under full sharding: fsdp's
    /// offload and DeepSpeed's `offload_param`.
    pub frozen: bool,
    /// Page-locked host memory (where the compute device is CUDA): `cpu_offload_pin_memory`
    /// (true when absent, as FSDP2's CPUOffloadPolicy) or DeepSpeed's `pin_memory`.
    pub pin_memory: bool,
}

impl HostOffload {
    pub fn any(self) -> bool {
        self.trainable || self.frozen
    }

    fn none(&self) -> bool {
        !self.any()
    }
}

/// The offload the recipe asks for, resolved for `strategy` (nothing without sharding).
pub fn host_offload(c: &Config, strategy: Strategy) -> HostOffload {
    if !strategy.shards_optimizer() {
        return HostOffload::default();
    }
    if let Some(ds) = &c.distributed.deepspeed_config {
        let (optimizer, param) = (ds.offload_optimizer(), ds.offload_param().filter(|_| strategy.shards_parameters()));
        return HostOffload {
            trainable: optimizer.is_some() || param.is_some(),
            frozen: param.is_some(),
            pin_memory: optimizer.unwrap_or(false) || param.unwrap_or(false),
        };
    }
    if !c.distributed.sharding().contains(&FsdpOption::Offload) {
        return HostOffload::default();
    }
    HostOffload {
        trainable: true,
        frozen: strategy.shards_parameters(),
        pin_memory: c.distributed.fsdp_config.cpu_offload_pin_memory.unwrap_or(true),
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Offloaded {
    /// Page-locked host memory (`pin_memory`).
    pub pin_memory: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AcceptedSetting {
    pub key: String,
    pub why: String,
}

/// The DeepSpeed part of the layout, with where its stage is written.
pub fn deepspeed(c: &Config, at: &Locator) -> Option<DeepSpeedLayout> {
    let ds = c.distributed.deepspeed_config.as_ref()?;
    Some(DeepSpeedLayout {
        file: c.distributed.deepspeed.clone().unwrap_or_default(),
        stage: ds.stage(),
        stage_origin: at.origin("deepspeed.zero_optimization.stage"),
        offload_optimizer: ds.offload_optimizer().map(|pin_memory| Offloaded { pin_memory }),
        offload_param: ds.offload_param().map(|pin_memory| Offloaded { pin_memory }),
        accepted: ds
            .accepted_knobs()
            .into_iter()
            .map(|(key, why)| AcceptedSetting { key: key.to_string(), why: why.to_string() })
            .chain(loss_scaler_settings(c, ds))
            .collect(),
    })
}

/// The `fp16` section's loss-scaler settings: with float16 off they do nothing (in DeepSpeed too);
/// with it on, rules have checked they are recipe's own scaler.
fn loss_scaler_settings(c: &Config, ds: &DeepSpeedConfig) -> Vec<AcceptedSetting> {
    let Some(f) = &ds.fp16 else {
        return Vec::new();
    };
    let fp16_on = ds.fp16_enabled().unwrap_or(c.training.fp16 == Switch::On);
    let why = if fp16_on { "recipe's own loss scaler (torch's GradScaler)" } else { "float16 is off: no loss scaling" };
    let written = [
        ("auto_cast", f.auto_cast.is_some()),
        ("loss_scale", f.loss_scale.is_some()),
        ("initial_scale_power", f.initial_scale_power.is_some()),
        ("loss_scale_window", f.loss_scale_window.is_some()),
        ("hysteresis", f.hysteresis.is_some()),
        ("consecutive_hysteresis", f.consecutive_hysteresis.is_some()),
        ("min_loss_scale", f.min_loss_scale.is_some()),
    ];
    written
        .into_iter()
        .filter(|w| w.1)
        .map(|(key, _)| AcceptedSetting { key: format!("fp16.{key}"), why: why.to_string() })
        .collect()
}

/// Data-parallel communication, resolved from Axolotl's `ddp_*` keys.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DdpOptions {
    /// Gradients are all-reduced in flat buckets of this many MiB (`ddp_bucket_cap_mb`, 25).
    pub bucket_cap_mb: u32,
    /// Seconds the rendezvous and each collective may wait for the other ranks (`ddp_timeout`,
    /// 1800 as torch's default).
    pub timeout_secs: u64,
    /// A trainable parameter without a gradient in a step is summed as zero instead of being an
    /// error (`ddp_find_unused_parameters`).
    pub find_unused_parameters: bool,
}

/// One shard unit: a decoder layer, or the root (embeddings, final norm, lm_head).
#[derive(Debug, Clone, Serialize)]
pub struct Unit {
    pub name: String,
    pub parameters: u64,
    pub trainable: u64,
    /// Elements each rank holds of this unit's flat parameter (padded), when parameters are sharded.
    pub shard_elements: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RankShard {
    pub rank: u64,
    pub node: u64,
    pub local_rank: u64,
    /// Index within the shard group: this rank holds elements [index × shard, (index + 1) × shard)
    /// of every unit's flat parameter.
    pub shard_index: u64,
    /// Parameter elements resident on this rank (all of them unless parameters are sharded).
    pub parameters: u64,
    /// Trainable elements whose gradient and optimizer state live on this rank.
    pub gradients: u64,
    pub optimizer_elements: u64,
}

/// Payload bytes per rank per optimizer step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Collectives {
    pub all_reduce: u64,
    pub all_gather: u64,
    pub reduce_scatter: u64,
}

/// Bytes of a gradient and of a trainable parameter: recipe keeps trainable weights in fp32.
pub const TRAINABLE_BYTES: u64 = 4;

pub fn strategy(c: &Config, world_size: u64) -> Strategy {
    let fsdp = &c.distributed.sharding();
    if world_size <= 1 {
        Strategy::Single
    } else if let Some(stage) = c.distributed.zero_stage() {
        match stage {
            ZeroStage::Zero0 => Strategy::Ddp,
            ZeroStage::Zero1 => Strategy::ShardOptimizer,
            ZeroStage::Zero2 => Strategy::ShardGradOp,
            ZeroStage::Zero3 => Strategy::FullShard,
        }
    } else if fsdp.contains(&FsdpOption::HybridShard) {
        Strategy::HybridShard
    } else if fsdp.contains(&FsdpOption::FullShard) {
        Strategy::FullShard
    } else if fsdp.contains(&FsdpOption::ShardGradOp) {
        Strategy::ShardGradOp
    } else {
        Strategy::Ddp
    }
}

/// `reshard_after_forward` in either spelling; true when absent, as FSDP2's default.
pub fn reshard_after_forward(c: &Config) -> bool {
    let f = &c.distributed.fsdp_config;
    f.fsdp_reshard_after_forward.or(f.reshard_after_forward).unwrap_or(true)
}

/// Whether training recomputes each layer in its backward pass: gradient checkpointing, or full
/// sharding, whose layers give their parameters back after the forward pass.
pub fn recomputes_layers(c: &Config, world_size: u64) -> bool {
    gradient_checkpointing(c) || (strategy(c, world_size).shards_parameters() && reshard_after_forward(c))
}

/// `gradient_checkpointing`, or `activation_checkpointing` in `fsdp_config` (either spelling).
pub fn gradient_checkpointing(c: &Config) -> bool {
    let f = &c.distributed.fsdp_config;
    c.training.checkpointing() || f.fsdp_activation_checkpointing.or(f.activation_checkpointing) == Some(true)
}

pub fn layout(
    c: &Config,
    arch: &Architecture,
    adapter: &AdapterPlan,
    quant: &QuantizationPlan,
    compute: Precision,
    world_size: u64,
    nodes: u64,
) -> Layout {
    // Frozen weights are gathered as stored: quantized layers stay quantized.
    let frozen_bytes_per_element = quantize::frozen_bytes_per_element(arch, quant, adapter, compute.bytes());
    let world_size = world_size.max(1);
    let nodes = nodes.clamp(1, world_size);
    let per_node = world_size.div_ceil(nodes);
    let strategy = strategy(c, world_size);
    let group = match strategy {
        Strategy::Single | Strategy::Ddp => 1,
        Strategy::HybridShard => per_node,
        Strategy::ShardOptimizer | Strategy::ShardGradOp | Strategy::FullShard => world_size,
    };
    let units = units(arch, adapter, group);
    let total_params: u64 = units.iter().map(|u| u.parameters).sum();
    let trainable: u64 = units.iter().map(|u| u.trainable).sum();
    let sharded = |n: u64| n.div_ceil(group);
    let ranks = (0..world_size)
        .map(|rank| {
            let params =
                if strategy.shards_parameters() { units.iter().map(|u| u.shard_elements).sum() } else { total_params };
            let shard: u64 = units.iter().map(|u| sharded(u.trainable)).sum();
            RankShard {
                rank,
                node: rank / per_node,
                local_rank: rank % per_node,
                shard_index: rank % group,
                parameters: params,
                gradients: if strategy.shards_gradients_and_optimizer() { shard } else { trainable },
                optimizer_elements: if strategy.shards_optimizer() { shard } else { trainable },
            }
        })
        .collect();
    let accumulation = u64::from(c.training.gradient_accumulation_steps);
    let grad_bytes = trainable * TRAINABLE_BYTES;
    let frozen = total_params - trainable;
    let gathered = (frozen as f64 * frozen_bytes_per_element) as u64 + trainable * TRAINABLE_BYTES;
    let root_bytes = units.last().map_or(0, |u| {
        ((u.parameters - u.trainable) as f64 * frozen_bytes_per_element) as u64 + u.trainable * TRAINABLE_BYTES
    });
    let per_step = match strategy {
        Strategy::Single => Collectives::default(),
        Strategy::Ddp => Collectives { all_reduce: grad_bytes, ..Collectives::default() },
        // Every rank needs the whole summed gradient only for its shard, but ZeRO-1 all-reduces
        // it (as DeepSpeed's stage 1); each rank then updates its shard and the updated trainable
        // shards are gathered back into every replica.
        Strategy::ShardOptimizer => {
            Collectives { all_reduce: grad_bytes, all_gather: trainable * TRAINABLE_BYTES, ..Collectives::default() }
        }
        Strategy::ShardGradOp => Collectives {
            reduce_scatter: grad_bytes,
            // The updated trainable shards are gathered back into every replica.
            all_gather: trainable * TRAINABLE_BYTES,
            ..Collectives::default()
        },
        Strategy::FullShard | Strategy::HybridShard => Collectives {
            // Each micro batch gathers every decoder layer for its forward and again for its
            // backward (once, when units stay gathered between the two), the root once (it
            // stays gathered from the embeddings to the head's backward pass), and
            // reduce-scatters its gradients.
            all_gather: accumulation * if reshard_after_forward(c) { 2 * gathered - root_bytes } else { gathered },
            reduce_scatter: accumulation * grad_bytes,
            // Hybrid: the gradient shards are all-reduced across nodes.
            all_reduce: if strategy == Strategy::HybridShard && nodes > 1 {
                sharded(trainable) * TRAINABLE_BYTES
            } else {
                0
            },
        },
    };
    let d = &c.distributed;
    let ddp = DdpOptions {
        bucket_cap_mb: d.ddp_bucket_cap_mb.unwrap_or(25),
        timeout_secs: d.ddp_timeout.unwrap_or(1800),
        find_unused_parameters: d.ddp_find_unused_parameters.unwrap_or(false),
    };
    Layout {
        ddp,
        world_size,
        nodes,
        processes_per_node: per_node,
        strategy,
        fsdp: c.distributed.sharding(),
        reshard_after_forward: reshard_after_forward(c),
        cpu_ram_efficient_loading: !c.distributed.sharding().is_empty()
            && c.distributed
                .fsdp_config
                .fsdp_cpu_ram_efficient_loading
                .or(c.distributed.fsdp_config.cpu_ram_efficient_loading)
                == Some(true),
        not_built: c.distributed.not_built().into_iter().map(|(k, w)| (k.to_string(), w.to_string())).collect(),
        sharded_checkpoints: c.distributed.sharded_checkpoints(),
        wrapped_class: c
            .distributed
            .fsdp_config
            .fsdp_transformer_layer_cls_to_wrap
            .clone()
            .or_else(|| c.distributed.fsdp_config.transformer_layer_cls_to_wrap.clone()),
        shard_group_size: group,
        offload: host_offload(c, strategy),
        units,
        ranks,
        per_step,
        deepspeed: None,
    }
}

fn units(arch: &Architecture, adapter: &AdapterPlan, group: u64) -> Vec<Unit> {
    let counts = arch.parameter_counts();
    let full = adapter.method == AdapterMethod::Full;
    // Adapter parameters per decoder layer (targets inside layers) and in the root (lm_head /
    // embed_tokens adapters and modules_to_save copies).
    let per_layer_adapter = adapter.per_layer_parameters(arch);
    let root_adapter = adapter.trainable_parameters.saturating_sub(per_layer_adapter * arch.num_layers);
    let unit = |name: String, parameters: u64, trainable: u64| Unit {
        name,
        parameters,
        trainable,
        shard_elements: parameters.div_ceil(group),
    };
    // `unfrozen_parameters`: only the selected tensors of each unit train.
    let selected = adapter.unfrozen.as_ref();
    let mut units: Vec<Unit> = (0..arch.num_layers)
        .map(|i| {
            let base = counts.per_layer;
            if let Some(u) = selected {
                unit(format!("layers.{i}"), base, u.per_layer[i as usize])
            } else if full {
                unit(format!("layers.{i}"), base, base)
            } else {
                unit(format!("layers.{i}"), base + per_layer_adapter, per_layer_adapter)
            }
        })
        .collect();
    let root = counts.embed_tokens + counts.final_norm + counts.lm_head;
    units.push(if let Some(u) = selected {
        unit("root".into(), root, u.trainable_parameters - u.per_layer.iter().sum::<u64>())
    } else if full {
        unit("root".into(), root, root)
    } else {
        unit("root".into(), root + root_adapter, root_adapter)
    });
    units
}

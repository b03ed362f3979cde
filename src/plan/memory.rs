//! The per-GPU memory estimate, before anything is downloaded. Formulas (bytes, per rank):
//!
//! - compute dtype c: the plan's resolved precision on a GPU with bf16 (plan/precision.rs): 2
//!   bytes for bfloat16 or float16, 4 for float32. Trainable weights (adapters, modules_to_save, or every weight when fine-tuning in
//!   full) are kept in fp32, as peft keeps adapters: 4 bytes each.
//! - base weights: frozen weights in c bytes; quantized linear layers at their quantized size
//!   (plan/quantize.rs). Full fine-tuning has no frozen base: its weights are the trainable ones.
//! - LISA (`lisa_n_layers` n of L layers): gradients 4·(embeddings + final norm + head + n·layer),
//!   the parameters with gradients at any step; optimizer states for every weight, as the draws
//!   reach every layer (torch allocates a layer's state when it is first drawn and keeps it).
//! - trainable weights 4·T, gradients 4·T, optimizer states 8·T for 32-bit AdamW, or
//!   2·T + 8·⌈T/256⌉ for blockwise 8-bit AdamW (two uint8 states, an fp32 absmax per 256; torchao's
//!   `adamw_torch_8bit` alike, its fp32 scale per 256), T + 8·⌈T/256⌉ for torchao's
//!   `adamw_torch_4bit` (two 4-bit states, an fp32 scale per 256). The few tensors that stay in
//!   full precision (under 4,096 values: norms, biases) are counted as quantized. `sgd` keeps
//!   none, Lion 4·T (one momentum; 8-bit: T + 4·⌈T/256⌉). Adafactor keeps 4·(rows + columns) per matrix and 4 per value
//!   of other tensors; Muon 4 per value of its hidden matrices (momentum) and 8 per value of the
//!   embedding and head (its AdamW), none for 1-D parameters (left out, as Axolotl does). Both are
//!   counted from the shapes in a full fine-tune of every weight, and bounded above (4·T, 8·T)
//!   otherwise.
//! - autocast copies (full fine-tuning in 16 bits): c·T, the 16-bit weights autocast keeps during
//!   the forward pass.
//! - activations per decoder layer and token, in elements: 4h (layer input, norm outputs,
//!   residual), plus 2q + 2kv (rotated queries and attention output; rotated keys and values:
//!   the unrotated ones are not kept, rotation multiplies by constant tables), or 4q with packed
//!   rows and grouped-query heads (keys and values expanded to every query head for the
//!   memory-efficient kernel, which takes the packing mask, in place of the grouped ones), plus
//!   q + kv with per-head q/k norms (their inputs), plus 4i
//!   (gate, up, SiLU(gate), product), plus r per adapted module (with DoRA also 2·out: the base
//!   and LoRA terms its magnitude rescales, kept for the magnitude's gradient); attention through
//!   scaled_dot_product_attention keeps no s×s matrix; Gemma 2's eager attention (soft-capped
//!   scores) keeps h_q·s² per row and layer, (2c + 4) bytes each (tanh output, fp32 softmax, cast). Times c bytes and b·s tokens: all L layers
//!   without gradient checkpointing; with it, the L layer inputs (h each) plus one layer recomputed.
//!   Activation offloading (`activation_offloading: true`, `gradient_checkpointing: offload`) moves
//!   the L layer inputs (L·b·s·h·c bytes) to host memory (`host_bytes`) on a GPU: the GPU keeps the
//!   recomputed layer's activations only (its input, copied back, among them). On the CPU nothing
//!   moves.
//! - prompt tuning: s counts the sequence and its virtual tokens (sequence_len + num_virtual_tokens),
//!   which go through every layer and the head like real ones. Prefix tuning's N keys and values
//!   add 2·kv·N per row and layer, plus (grouped-query heads) the keys and values expanded to the
//!   query heads over s + N positions, 2q each, for the masked attention kernel.
//! - logits and loss: b·s·V·(c + 4 + 4): the logits, their fp32 copy and its gradient (fp32
//!   compute: b·s·V·(4 + 4), the logits being fp32 already). Supervised
//!   training computes the head and the cross-entropy in chunks of n = 2^24 / V tokens
//!   (plan/training.rs, `LossPlan`) when b·s is larger: n·V·4 for one chunk's fp32 logits (their
//!   gradient is computed in their storage), plus n·V·c for the head's output when c < 4, plus the
//!   fp32 gradient of the hidden states (b·s·h·4) it fills chunk by chunk.
//! - preference training (`rl:`): b counts both sequences of each pair (2 × micro batch), and the
//!   reference pass (adapters off, no gradients) adds one layer's activations and its logits.
//! - reward models: b counts both sequences of each pair; the score head's one value per token
//!   replaces the logits (b·s·(c + 4 + 4)).
//! - dequantized weights (quantized bases): each matmul's weight dequantized to c bytes, which
//!   autograd keeps for the input's gradient until the layer's backward pass: a layer's linears
//!   times L without gradient checkpointing, times one with it (bitsandbytes' MatMul4Bit
//!   dequantizes again in its backward instead).
//! - dequantized experts (`quantize_moe_experts`): each reached expert's three weights
//!   dequantized to c bytes and kept for the backward pass, at most E·3·I·h per sparse layer,
//!   times the sparse layers without gradient checkpointing, times one with it.
//! - gathered units (parameters sharded): the largest unit in c bytes, twice (current + prefetch).
//! - allowance: 1 GiB for the CUDA context, cuBLAS workspace and kernels, plus 5% of the rest for
//!   the caching allocator's fragmentation.
//!
//! The same formulas with c = 4 and no CUDA context give the CPU figure (`cpu_total_bytes`), which
//! `recipe run` on CPU prints beside the peak the allocator measured.
//!
//! Sharded strategies divide what they shard by the shard group size (plan/shard.rs): ZeRO-1
//! (`shard_optimizer`) the optimizer states, `shard_grad_op` the gradients too, `full_shard` the
//! weights too. Offload (`fsdp: [.., offload]`, DeepSpeed's `offload_optimizer` / `offload_param`;
//! plan/shard.rs `HostOffload`) moves a rank's trainable chunks, their gradient chunks and the
//! optimizer states to host memory, and under full sharding the frozen chunks too (the gathered
//! units stay on the GPU): `host_bytes` counts them. On the CPU nothing moves.

use super::adapter::{self, AdapterMethod};
use super::arch::Architecture;
use super::precision::Precision;
use super::shard::{self, Strategy, TRAINABLE_BYTES};
use super::{group, quantize};
use crate::config::Config;
use crate::config::adapter::AdapterKind;
use crate::config::distributed::FsdpOption;
use crate::config::training::RlMethod;
use crate::config::training::{Checkpointing, Optimizer};
use serde::Serialize;

pub const GIB: u64 = 1 << 30;
/// CUDA context, cuBLAS workspace and loaded kernels.
pub const CONTEXT_BYTES: u64 = GIB;
/// Allocator fragmentation, as a fraction of everything else.
pub const FRAGMENTATION: f64 = 0.05;

#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    /// The resolved compute dtype on a GPU with bf16 (`training.precision.compute`).
    pub compute_dtype: Precision,
    pub items: Vec<MemoryItem>,
    pub activations_with_checkpointing: u64,
    pub activations_without_checkpointing: u64,
    pub total_bytes: u64,
    /// Bytes per rank kept in host memory instead (offload), not counted in `total_bytes`; 0
    /// without offload (and then left out of the JSON).
    #[serde(skip_serializing_if = "no_bytes")]
    pub host_bytes: u64,
    /// The same recipe run on CPU: everything in fp32, no CUDA context (what `recipe run
    /// --device cpu` compares its measured peak with).
    pub cpu_total_bytes: u64,
    /// The GPU size checked against (`--gpu-memory`).
    pub gpu_memory: Option<u64>,
    pub fits: Option<bool>,
    /// gpu_memory − total: negative when it does not fit.
    pub margin_bytes: Option<i64>,
    /// When it does not fit: recipe changes and the total each would give.
    pub suggestions: Vec<Suggestion>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryItem {
    pub name: &'static str,
    pub bytes: u64,
    pub formula: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Suggestion {
    pub change: String,
    pub total_bytes: u64,
    pub fits: bool,
}

fn no_bytes(n: &u64) -> bool {
    *n == 0
}

/// The estimate for one rank computing in `compute` (the plan's resolved precision), checked
/// against `gpu_memory` when given.
pub fn estimate(
    c: &Config,
    arch: &Architecture,
    compute: Precision,
    world_size: u64,
    nodes: u64,
    gpu_memory: Option<u64>,
) -> Result<MemoryEstimate, String> {
    let mut estimate = breakdown(c, arch, world_size, nodes, Target::Gpu(compute))?;
    estimate.cpu_total_bytes = breakdown(c, arch, world_size, nodes, Target::Cpu)?.total_bytes;
    if let Some(limit) = gpu_memory {
        estimate.gpu_memory = Some(limit);
        estimate.fits = Some(estimate.total_bytes <= limit);
        estimate.margin_bytes = Some(limit as i64 - estimate.total_bytes as i64);
        if estimate.total_bytes > limit {
            estimate.suggestions = suggestions(c, arch, compute, world_size, nodes, limit);
        }
    }
    Ok(estimate)
}

/// Where the estimate is for: a GPU (the recipe's precision, a CUDA context) or the CPU
/// (fp32 compute, as the executor runs there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Gpu(Precision),
    Cpu,
}

fn breakdown(
    c: &Config,
    arch: &Architecture,
    world_size: u64,
    nodes: u64,
    target: Target,
) -> Result<MemoryEstimate, String> {
    let dtype = match target {
        Target::Gpu(compute) => compute,
        Target::Cpu => Precision::Fp32,
    };
    let cb = dtype.bytes();
    let adapter = adapter::plan(c, arch)?;
    let quant = quantize::plan(c, arch);
    let counts = arch.parameter_counts();
    let full = adapter.method == AdapterMethod::Full;
    let trainable = adapter.trainable_parameters;
    let frozen_bytes = quantize::frozen_bytes(arch, &quant, &adapter, cb);
    let frozen_per_element = quantize::frozen_bytes_per_element(arch, &quant, &adapter, cb);
    let layout = shard::layout(c, arch, &adapter, &quant, dtype, world_size, nodes);
    let shard_group = layout.shard_group_size;
    let strategy = layout.strategy;
    let shard_params = |bytes: u64| if strategy.shards_parameters() { bytes.div_ceil(shard_group) } else { bytes };
    let shard_state =
        |bytes: u64| if strategy.shards_gradients_and_optimizer() { bytes.div_ceil(shard_group) } else { bytes };
    let shard_optimizer = |bytes: u64| if strategy.shards_optimizer() { bytes.div_ceil(shard_group) } else { bytes };
    // Offloaded to host memory (plan/shard.rs `HostOffload`): nothing resident on the GPU; on
    // the CPU, host and device are one memory, so nothing moves.
    let offload = if matches!(target, Target::Gpu(_)) { layout.offload } else { Default::default() };
    let mut host_bytes = 0u64;
    let mut offloaded = |moved: bool, bytes: u64| {
        if moved {
            host_bytes += bytes;
            0
        } else {
            bytes
        }
    };
    let host = |moved: bool| if moved { ", in host memory (offload)" } else { "" };
    let sharded_note =
        |applies: bool| if applies && shard_group > 1 { format!(" / {shard_group} ranks") } else { String::new() };

    let mut items = Vec::new();
    let mut push = |name: &'static str, bytes: u64, formula: String| items.push(MemoryItem { name, bytes, formula });
    if !full {
        let formula = if quant.quantized_parameters > 0 {
            format!(
                "{} {} bytes + {} other parameters × {cb} bytes",
                quant.scheme,
                group(quant.quantized_bytes),
                group(counts.total - quant.quantized_parameters)
            )
        } else {
            format!("{} parameters × {cb} bytes ({dtype})", group(counts.total))
        };
        push(
            "base weights",
            offloaded(offload.frozen, shard_params(frozen_bytes)),
            formula + &sharded_note(strategy.shards_parameters()) + host(offload.frozen),
        );
    }
    let what = if full { "weights (fp32)" } else { "adapter weights (fp32)" };
    // Fully sharded, a rank's trainable weights are its chunks; otherwise the replicas stay on
    // the device, and offload keeps the chunks the optimizer updates on the host besides.
    // A full fine-tune keeps every weight in fp32, the frozen ones of `unfrozen_parameters` too.
    let weights = if full { adapter.total_parameters } else { trainable };
    let resident = if strategy.shards_parameters() {
        offloaded(offload.trainable, shard_params(weights * TRAINABLE_BYTES))
    } else {
        // The replica stays on the device; `offloaded` counts the host copy of the chunks.
        offloaded(offload.trainable, shard_optimizer(weights * TRAINABLE_BYTES));
        weights * TRAINABLE_BYTES
    };
    let on_host = offload.trainable && strategy.shards_parameters();
    push(
        what,
        resident,
        format!("{} × 4 bytes{}{}", group(weights), sharded_note(strategy.shards_parameters()), host(on_host)),
    );
    // Offloaded, a rank's summed gradient chunks live on the host; each unit's whole gradient is
    // on the device only until its reduce-scatter (ZeRO-1 keeps whole gradients until the step).
    let gradients = if strategy.shards_gradients_and_optimizer() {
        offloaded(offload.trainable, shard_state(trainable * TRAINABLE_BYTES))
    } else {
        offloaded(offload.trainable, shard_optimizer(trainable * TRAINABLE_BYTES));
        trainable * TRAINABLE_BYTES
    };
    let on_host = offload.trainable && strategy.shards_gradients_and_optimizer();
    // LISA (never sharded, config rules): gradients exist for the embeddings, final norm and head
    // and the `lisa_n_layers` layers training at the time (a frozen layer's are dropped).
    let lisa = match (full, c.unfrozen.lisa_n_layers, c.unfrozen.lisa_step_interval) {
        (true, Some(n), Some(_)) => Some(u64::from(n).min(arch.num_layers)),
        _ => None,
    };
    let (gradients, gradient_formula) = match lisa {
        Some(n) => {
            let with_grads =
                (counts.embed_tokens + counts.final_norm + counts.lm_head + n * counts.per_layer).min(trainable);
            (
                with_grads * TRAINABLE_BYTES,
                format!(
                    "{} × 4 bytes (LISA: embeddings, final norm, head and {n} of {} decoder layers)",
                    group(with_grads),
                    arch.num_layers
                ),
            )
        }
        None => (
            gradients,
            format!(
                "{} × 4 bytes{}{}",
                group(trainable),
                sharded_note(strategy.shards_gradients_and_optimizer()),
                host(on_host)
            ),
        ),
    };
    push("gradients (fp32)", gradients, gradient_formula);
    let (optimizer_bytes, optimizer_formula) = if c.training.optimizer.eight_bit_states() {
        (2 * trainable + 8 * trainable.div_ceil(256), format!("8-bit AdamW: {} × 2 bytes + absmax", group(trainable)))
    } else if let Some(bits) = c.training.optimizer.torchao_state_bits() {
        (
            u64::from(bits) * trainable / 4 + 8 * trainable.div_ceil(256),
            format!("torchao {bits}-bit AdamW: {} × 2 × {bits}/8 bytes + scales", group(trainable)),
        )
    } else if !c.training.optimizer.is_adamw() {
        other_optimizer_state(c.training.optimizer, arch, trainable, full && adapter.unfrozen.is_none())
    } else {
        (8 * trainable, format!("AdamW: {} × 8 bytes", group(trainable)))
    };
    // LISA: states for every layer, as a run reaches them (torch allocates a layer's when it is
    // first drawn and keeps it; recipe allocates them all at the start).
    let lisa_note = if lisa.is_some() {
        " (LISA: every layer's, as the draws reach them all; recipe allocates them at the start)"
    } else {
        ""
    };
    push(
        "optimizer states",
        offloaded(offload.trainable, shard_optimizer(optimizer_bytes)),
        optimizer_formula + lisa_note + &sharded_note(strategy.shards_optimizer()) + host(offload.trainable),
    );
    if full && cb < 4 && !strategy.shards_parameters() {
        push("autocast copies", weights * cb, format!("{} × {cb} bytes", group(weights)));
    }

    // Preference training puts each pair's chosen and rejected sequences through the model.
    // A pair is two sequences; KTO's rows are single answers (their mismatched KL rows run without
    // gradients, like the reference pass).
    let pairs = matches!(c.training.rl, Some(rl) if rl != RlMethod::Kto) || c.training.reward_model;
    let sequences_per_example = if pairs { 2 } else { 1 };
    // Prompt tuning's virtual tokens lengthen every sequence; prefix tuning's add keys and values.
    let virtual_tokens = adapter.prompt.as_ref().map_or(0, |p| p.num_virtual_tokens);
    let prefix_tokens = adapter.prefix.as_ref().map_or(0, |p| p.num_virtual_tokens);
    let tokens = sequences_per_example
        * u64::from(c.training.micro_batch_size)
        * (u64::from(c.data.sequence_len) + virtual_tokens);
    let (h, i) = (arch.hidden_size, arch.intermediate_size);
    let q = arch.num_attention_heads * arch.head_dim;
    let kv = arch.num_key_value_heads * arch.head_dim;
    let adapted: Vec<_> = arch
        .layer_linears()
        .into_iter()
        .filter(|l| adapter.target_modules.iter().any(|t| t == l.short_name()))
        .collect();
    let lora_per_layer = adapter.r * adapted.len() as u64;
    // IA3 keeps, per adapted module, the tensor its vector multiplies for the vector's gradient: the
    // input of a feed-forward module, the output of the others (model/linear.rs `Ia3`).
    let ia3_per_layer: u64 = if adapter.method == AdapterMethod::Ia3 {
        adapted
            .iter()
            .map(|l| {
                if adapter.feedforward_modules.iter().any(|f| f == l.short_name()) {
                    l.in_features
                } else {
                    l.out_features
                }
            })
            .sum()
    } else {
        0
    };
    // DoRA keeps two [tokens, out] tensors per adapted module for the magnitude's gradient: the base
    // term and the LoRA term it rescales (model/linear.rs `Dora::forward`).
    let dora_per_layer = if adapter.dora { 2 * adapted.iter().map(|l| l.out_features).sum::<u64>() } else { 0 };
    // What attention keeps for the backward pass: the rotated queries and keys, the values and the
    // output (rotary embedding multiplies by constant tables, so the unrotated q and k are not
    // kept); with packed rows and grouped-query heads, the keys and values expanded to the query
    // heads for the memory-efficient kernel (model/llama.rs `attend`) instead of the grouped ones.
    // Per-head q/k norms (Qwen3, OLMo 2, Gemma 3) keep their inputs too.
    let expands = super::training::attention_plan(c, arch).expands_kv();
    let expanded_kv = if expands { 2 * q } else { 0 };
    let attention = 2 * q + if expands { 2 * q } else { 2 * kv } + if arch.qk_norm { q + kv } else { 0 };
    // Bottleneck adapters keep each adapter's input, down projection (before and after the activation)
    // and output (plan/bottleneck.rs).
    let bottleneck_per_layer = adapter.bottleneck.as_ref().map_or(0, |b| b.activations_per_token(arch));
    let adapters_per_layer = lora_per_layer + dora_per_layer + ia3_per_layer + bottleneck_per_layer;
    // A mixture of experts (all experts resident, counted in the weights): a token's feed-forward
    // activations are those of its top-k experts, each with its gathered input and weighted output,
    // plus the router's logits and probabilities.
    let feed_forward = arch
        .moe
        .as_ref()
        .map_or(4 * i, |m| m.experts_per_token * (4 * m.expert_intermediate_size + 2 * h) + 2 * m.num_experts);
    let per_token_layer = 4 * h + attention + feed_forward + adapters_per_layer;
    let layers = arch.num_layers;
    // Prefix tuning: each layer keeps each row's N prefix keys and values, and its attention takes an
    // explicit mask, so grouped-query keys and values are expanded to the query heads (unless packing
    // already counted them).
    let prefix_per_layer = if prefix_tokens > 0 {
        let rows = sequences_per_example * u64::from(c.training.micro_batch_size);
        let expanded = if kv != q && expanded_kv == 0 { 2 * q * (tokens + rows * prefix_tokens) } else { 0 };
        rows * prefix_tokens * 2 * kv + expanded
    } else {
        0
    };
    let without = layers * (tokens * per_token_layer + prefix_per_layer) * cb;
    let with = layers * tokens * h * cb + (tokens * per_token_layer + prefix_per_layer) * cb;
    let checkpointing = shard::recomputes_layers(c, world_size);
    // Activation offloading on a GPU: the checkpointed layer inputs wait in host memory; the GPU
    // keeps the recomputed layer's activations (its input, copied back, among them). On the CPU
    // the activations already live in host memory: nothing moves.
    let offloads_inputs = checkpointing && matches!(target, Target::Gpu(_)) && c.training.offloads_activations();
    let host_inputs = layers * tokens * h * cb;
    let resident = (tokens * per_token_layer + prefix_per_layer) * cb;
    push(
        "activations",
        if offloads_inputs {
            offloaded(true, host_inputs);
            resident
        } else if checkpointing {
            with
        } else {
            without
        },
        if offloads_inputs {
            format!(
                "gradient checkpointing, inputs offloaded: one layer × {tokens} × {per_token_layer} × {cb} bytes; the \
                 {layers} layer inputs ({layers} × {tokens} × {h} × {cb} bytes) in host memory (activation offloading)"
            )
        } else if checkpointing {
            let why = if shard::gradient_checkpointing(c) {
                "gradient checkpointing"
            } else {
                "full sharding recomputes each layer"
            };
            format!(
                "{why}: {layers} layers × {tokens} tokens × {h} + one layer × {tokens} × {per_token_layer}, × {cb} bytes"
            )
        } else {
            format!("{layers} layers × {tokens} tokens × {per_token_layer} elements × {cb} bytes")
        },
    );
    // Eager attention (Gemma 2's soft-capped scores) keeps every head's s×s scores per row and layer
    // for the backward pass: the tanh output and the softmax's cast in c bytes, the fp32 softmax.
    if let super::training::AttentionPlan::Eager { heads, .. } = super::training::attention_plan(c, arch) {
        let rows = sequences_per_example * u64::from(c.training.micro_batch_size);
        let s = tokens / rows.max(1);
        let kept_layers = if checkpointing { 1 } else { layers };
        push(
            "attention scores (eager)",
            kept_layers * rows * heads * s * s * (2 * cb + 4),
            format!("{kept_layers} layers × {rows} rows × {heads} heads × {s}² scores × (2 × {cb} + 4) bytes"),
        );
    }
    if c.training.reward_model {
        // The score head gives one value per token; no vocabulary-wide logits.
        push("scores and loss", tokens * (cb + 8), format!("{tokens} tokens × 1 score × ({cb} + 4 + 4) bytes"));
    } else if let Some(chunk) = super::training::loss_plan(c, arch.vocab_size).tokens_per_chunk() {
        // The chunked loss (exec/objective.rs): one chunk's fp32 logits, whose storage then holds
        // their gradient, plus the head's output in the compute dtype when that is not fp32 (cast
        // to fp32 in the forward pass, the gradient cast back in the backward pass); and the fp32
        // gradient of the hidden states, filled chunk by chunk.
        let chunk = chunk.min(tokens);
        let per_logit = if cb < 4 { cb + 4 } else { 4 };
        push(
            "logits and loss (one chunk)",
            chunk * arch.vocab_size * per_logit + tokens * h * 4,
            format!(
                "{chunk} tokens × {} vocab × {per_logit} bytes + {tokens} tokens × {h} × 4 (hidden-state gradient)",
                arch.vocab_size
            ),
        );
    } else if cb < 4 {
        push(
            "logits and loss",
            tokens * arch.vocab_size * (cb + 8),
            format!("{tokens} tokens × {} vocab × ({cb} + 4 + 4) bytes", arch.vocab_size),
        );
    } else {
        // fp32 logits need no fp32 copy: the logits, then their log-probabilities.
        push(
            "logits and loss",
            tokens * arch.vocab_size * 8,
            format!("{tokens} tokens × {} vocab × (4 + 4) bytes", arch.vocab_size),
        );
    }
    let reference_pass = matches!(c.training.rl, Some(RlMethod::Dpo | RlMethod::Ipo | RlMethod::Kto))
        && !c.training.precompute_ref_log_probs;
    if reference_pass {
        // The reference pass (adapters off, no graph) while the policy's graph is alive: one layer's
        // activations at a time and its logits with their fp32 log-softmax.
        push(
            "reference forward",
            tokens * per_token_layer * cb + tokens * arch.vocab_size * (cb + 4),
            format!(
                "{tokens} tokens × ({per_token_layer} one-layer elements × {cb} + {} vocab × ({cb} + 4)) bytes, no gradients",
                arch.vocab_size
            ),
        );
    }
    let ewc = super::forgetting::ewc_bytes(c, arch, &adapter);
    if ewc > 0 {
        push("EWC Fisher and θ0 (fp32)", ewc, format!("2 × {} elements × 4 bytes", group(ewc / 8)));
    }
    if quant.quantized_parameters > 0 {
        // Each matmul takes its weight dequantized (model/linear.rs), and autograd keeps that weight
        // for the input's gradient until the layer's backward pass: every layer's without
        // checkpointing, the recomputed layer's with it.
        let per_layer: u64 = arch.layer_linears().iter().map(|l| l.in_features * l.out_features).sum();
        let kept_layers = if checkpointing { 1 } else { layers };
        push(
            "dequantized weights",
            kept_layers * per_layer * cb,
            format!(
                "{} × {} × {cb} bytes, kept for the backward pass",
                if checkpointing { "one layer".to_string() } else { format!("{layers} layers") },
                group(per_layer)
            ),
        );
    }
    if c.quantization.qat.as_ref().is_some_and(|q| q.weight_dtype == crate::config::quantization::QatDtype::Mxfp4) {
        // mxfp4 QAT (model/qat.rs `mxfp4_linear`): each linear layer's matmul takes its input and
        // weight dequantized from MXFP4 in the compute dtype, and autograd keeps both for the
        // backward pass: every linear layer's input (q, k and v each their own; a fused projection
        // one) and weight, every layer's without checkpointing, the recomputed layer's with it; and
        // the head's. The weights' copies replace the autocast copies where those are counted.
        let per_layer: u64 = arch.layer_linears().iter().map(|l| l.in_features * l.out_features).sum();
        let inputs_per_token: u64 = arch.layer_linears().iter().map(|l| l.in_features).sum();
        let kept_layers = if checkpointing { 1 } else { layers };
        let head = arch.lm_head();
        let autocast_counted = full && cb < 4 && !strategy.shards_parameters();
        let weights = if autocast_counted { 0 } else { kept_layers * per_layer + head.in_features * head.out_features };
        let kept = if checkpointing { "one layer".to_string() } else { format!("{layers} layers") };
        push(
            "mxfp4 dequantized copies",
            (weights + kept_layers * tokens * inputs_per_token + tokens * h) * cb,
            if autocast_counted {
                format!(
                    "inputs: ({kept} × {tokens} tokens × {inputs_per_token} + lm_head {tokens} × {h}) × {cb} bytes \
                     (the weights' are the autocast copies), kept for the backward pass"
                )
            } else {
                format!(
                    "({kept} × ({} weights + {tokens} tokens × {inputs_per_token} inputs) + lm_head {} + {tokens} × {h}) \
                     × {cb} bytes, kept for the backward pass",
                    group(per_layer),
                    group(head.in_features * head.out_features),
                )
            },
        );
    }
    if let Some(moe) = arch.moe.as_ref().filter(|m| m.quantized_experts && quant.quantized_parameters > 0) {
        // quantize_moe_experts: each expert a token reaches is dequantized for its matmuls and
        // autograd keeps those weights until the layer's backward pass; at most every expert of a
        // layer (as transformers keeps the parametrization's whole dequantized tensor): every
        // sparse layer's without checkpointing, the recomputed layer's with it.
        let per_layer = moe.num_experts * 3 * arch.hidden_size * moe.expert_intermediate_size;
        let sparse = moe.sparse_layers(layers);
        let kept = if checkpointing { 1 } else { sparse };
        push(
            "dequantized experts",
            kept * per_layer * cb,
            format!(
                "{} × {} experts × {} × {cb} bytes, kept for the backward pass",
                if checkpointing { "one layer".to_string() } else { format!("{sparse} sparse layers") },
                moe.num_experts,
                group(3 * arch.hidden_size * moe.expert_intermediate_size)
            ),
        );
    }
    if strategy.shards_parameters() {
        // Gathered as stored: quantized weights stay quantized.
        let largest = layout.units.iter().map(|u| u.parameters).max().unwrap_or(0);
        let per_element = if full { cb as f64 } else { frozen_per_element };
        push(
            "gathered units",
            (2.0 * largest as f64 * per_element) as u64,
            format!("2 × {} parameters × {per_element:.3} bytes", group(largest)),
        );
    }
    let subtotal: u64 = items.iter().map(|i| i.bytes).sum();
    let fragmentation = (subtotal as f64 * FRAGMENTATION) as u64;
    items.push(match target {
        Target::Gpu(_) => MemoryItem {
            name: "CUDA context and allocator",
            bytes: CONTEXT_BYTES + fragmentation,
            formula: format!("1 GiB context + {:.0}% fragmentation", FRAGMENTATION * 100.0),
        },
        Target::Cpu => MemoryItem {
            name: "allocator",
            bytes: fragmentation,
            formula: format!("{:.0}% fragmentation", FRAGMENTATION * 100.0),
        },
    });
    let total_bytes = items.iter().map(|i| i.bytes).sum();
    Ok(MemoryEstimate {
        compute_dtype: dtype,
        items,
        activations_with_checkpointing: with,
        activations_without_checkpointing: without,
        total_bytes,
        host_bytes,
        cpu_total_bytes: 0,
        gpu_memory: None,
        fits: None,
        margin_bytes: None,
        suggestions: Vec::new(),
    })
}

/// Recipe changes that lower the estimate, each with the total it gives.
fn suggestions(
    c: &Config,
    arch: &Architecture,
    compute: Precision,
    world_size: u64,
    nodes: u64,
    limit: u64,
) -> Vec<Suggestion> {
    let total =
        |c: &Config, world: u64| breakdown(c, arch, world, nodes, Target::Gpu(compute)).map(|e| e.total_bytes).ok();
    let mut out = Vec::new();
    let mut add = |change: String, bytes: Option<u64>| {
        if let Some(total_bytes) = bytes {
            out.push(Suggestion { change, total_bytes, fits: total_bytes <= limit });
        }
    };
    let mut cumulative = c.clone();
    if !c.training.checkpointing() {
        cumulative.training.gradient_checkpointing = Checkpointing::On;
        add("gradient_checkpointing: true".into(), total(&cumulative, world_size));
    }
    if c.training.micro_batch_size > 1 {
        let mut smaller = cumulative.clone();
        smaller.training.micro_batch_size = 1;
        smaller.training.gradient_accumulation_steps *= c.training.micro_batch_size;
        add(
            format!(
                "micro_batch_size: 1, gradient_accumulation_steps: {} (same global batch){}",
                smaller.training.gradient_accumulation_steps,
                if c.training.checkpointing() { "" } else { ", with gradient checkpointing" }
            ),
            total(&smaller, world_size),
        );
    }
    // IA3's optimizer states are a few kilobytes: 8-bit states would save nothing worth naming.
    if matches!(c.adapter.adapter, Some(AdapterKind::Lora | AdapterKind::Qlora))
        && !c.training.optimizer.eight_bit_states()
        && c.training.optimizer.torchao_state_bits().is_none()
    {
        let mut states = cumulative.clone();
        states.training.optimizer = Optimizer::Adamw8bit;
        add("optimizer: adamw_8bit (8-bit optimizer states)".into(), total(&states, world_size));
    }
    if !c.quantization.load_in_4bit && matches!(c.adapter.adapter, Some(AdapterKind::Ia3 | AdapterKind::Bottleneck)) {
        // IA3 stays IA3 (bottleneck adapters stay themselves) over a 4-bit base: their trainable state is small.
        let method = if c.adapter.adapter == Some(AdapterKind::Ia3) { "IA3" } else { "bottleneck adapters" };
        let mut four_bit = cumulative.clone();
        four_bit.quantization.load_in_8bit = false;
        four_bit.quantization.load_in_4bit = true;
        add(
            format!("load_in_4bit: true ({method} on a 4-bit base, with gradient checkpointing)"),
            total(&four_bit, world_size),
        );
    } else if !c.quantization.load_in_4bit && c.adapter.adapter.is_none_or(AdapterKind::is_lora) {
        // Prompt and prefix tuning on a quantized base are not built, so QLoRA is no drop-in for them.
        let mut qlora = cumulative.clone();
        qlora.quantization.load_in_8bit = false;
        qlora.quantization.load_in_4bit = true;
        qlora.adapter.adapter = Some(AdapterKind::Qlora);
        if c.adapter.adapter.is_none() {
            qlora.adapter.lora_target_linear = true;
            qlora.adapter.lora_r = 16;
        }
        qlora.training.optimizer = Optimizer::PagedAdamw8bit;
        add(
            "adapter: qlora, load_in_4bit: true, optimizer: paged_adamw_8bit (with gradient checkpointing)".into(),
            total(&qlora, world_size),
        );
    }
    // Sharded training of bottleneck adapters (config/rules/bottleneck.rs) and of a mixture of
    // experts (plan/moe.rs) is refused: nothing to suggest.
    if c.adapter.adapter == Some(AdapterKind::Bottleneck) || arch.moe.is_some() {
        return out;
    }
    let mut sharded = cumulative.clone();
    // A DeepSpeed config keeps its own stage (fsdp cannot join it).
    let deepspeed = sharded.distributed.zero_stage();
    if sharded.distributed.sharding().is_empty() && deepspeed.is_none() {
        sharded.distributed.fsdp = vec![FsdpOption::FullShard, FsdpOption::AutoWrap];
    }
    let fits_with = [2u64, 4, 8, 16, 32, 64]
        .into_iter()
        .filter(|&n| n > world_size)
        .find_map(|n| total(&sharded, n).filter(|&t| t <= limit).map(|t| (n, t)));
    if let Some((n, bytes)) = fits_with {
        let zero = deepspeed.map(|s| format!(" with the DeepSpeed config's ZeRO stage {}", s.number()));
        let how = match (shard::strategy(&sharded, n), zero) {
            (Strategy::Ddp, _) => "".to_string(),
            (_, Some(zero)) => zero,
            (_, None) => " with fsdp: [full_shard, auto_wrap]".to_string(),
        };
        add(format!("{n} GPUs{how} (with gradient checkpointing)"), Some(bytes));
    }
    out
}

/// Parses `24GiB`, `24GB`, `80G`, `24576MiB` or a byte count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|ch: char| !(ch.is_ascii_digit() || ch == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a size such as 24GiB or 80GB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => GIB as f64,
        "tib" => GIB as f64 * 1024.0,
        other => return Err(format!("`{text}`: unknown unit `{other}`; use GiB, GB, MiB or MB")),
    };
    Ok((value * scale) as u64)
}

/// Optimizer-state bytes of `sgd`, `adafactor`, Lion and Muon, with the formula; `whole_model`: a
/// full fine-tune of every weight, whose shapes the architecture gives.
fn other_optimizer_state(
    optimizer: Optimizer,
    arch: &Architecture,
    trainable: u64,
    whole_model: bool,
) -> (u64, String) {
    let t = group(trainable);
    let counts = arch.parameter_counts();
    // Hidden matrices (decoder linears' weights; a mixture's experts excluded) and the embedding
    // and head matrices.
    let linears = arch.layer_linears();
    let hidden_values: u64 = arch.num_layers * linears.iter().map(|l| l.in_features * l.out_features).sum::<u64>();
    let hidden_sides: u64 = arch.num_layers * linears.iter().map(|l| l.in_features + l.out_features).sum::<u64>();
    let heads = if counts.lm_head > 0 { 2 } else { 1 };
    let table_values = counts.embed_tokens + counts.lm_head;
    let table_sides = heads * (arch.vocab_size + arch.hidden_size);
    match optimizer {
        Optimizer::Sgd => (0, "SGD: no state".into()),
        Optimizer::Lion32bit | Optimizer::PagedLion32bit => (4 * trainable, format!("Lion: {t} × 4 bytes")),
        Optimizer::Lion8bit | Optimizer::PagedLion8bit => {
            (trainable + 4 * trainable.div_ceil(256), format!("8-bit Lion: {t} × 1 byte + absmax"))
        }
        Optimizer::Adafactor if whole_model => {
            let rest = trainable - hidden_values - table_values;
            (
                4 * (hidden_sides + table_sides + rest),
                format!(
                    "Adafactor: (rows + columns of {} matrices + {} other values) × 4 bytes",
                    arch.num_layers * linears.len() as u64 + heads,
                    group(rest)
                ),
            )
        }
        Optimizer::Adafactor => (4 * trainable, format!("Adafactor: at most {t} × 4 bytes (factored for matrices)")),
        Optimizer::Muon if whole_model => (
            4 * hidden_values + 8 * table_values,
            format!(
                "Muon: {} hidden-matrix values × 4 bytes + {} embedding and head values × 8 bytes",
                group(hidden_values),
                group(table_values)
            ),
        ),
        Optimizer::Muon => (8 * trainable, format!("Muon: at most {t} × 8 bytes")),
        _ => (8 * trainable, format!("AdamW: {t} × 8 bytes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_size("24GiB").unwrap(), 24 * GIB);
        assert_eq!(parse_size("80GB").unwrap(), 80_000_000_000);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert!(parse_size("lots").is_err());
    }
}

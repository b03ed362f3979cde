//! Axolotl's performance settings that leave the math unchanged: the attention implementation,
//! Liger and Cut Cross-Entropy kernels, fused LoRA / attention / MLP kernels, `torch_compile` and its
//! arguments, reentrant checkpointing, column pruning.
//! recipe accepts them so Axolotl's configs carry over, runs its own kernels for the same math,
//! and the plan says, for each one written, what recipe does instead (plan/kernels.rs).

use super::training::Switch;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Kernel and compilation requests (Axolotl's names). None changes a result: recipe computes the
/// same math with its own kernels, and `recipe plan` shows which.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KernelConfig {
    /// The attention implementation asked for. recipe always runs attention through libtorch's
    /// scaled_dot_product_attention (flash or memory-efficient kernels on CUDA, math on CPU): the
    /// same math as each of these; the plan names the kernel and warns where the request names
    /// another algorithm (`eager`, `flex_attention`).
    #[serde(default)]
    pub attn_implementation: Option<AttnImplementation>,
    /// Axolotl's older switch for `attn_implementation: flash_attention_2`.
    #[serde(default)]
    pub flash_attention: bool,
    /// Axolotl's older switch for `attn_implementation: sdpa`.
    #[serde(default)]
    pub sdp_attention: bool,
    /// Axolotl's older switch for `attn_implementation: xformers`.
    #[serde(default)]
    pub xformers_attention: bool,
    /// Axolotl's older switch for `attn_implementation: flex_attention`.
    #[serde(default)]
    pub flex_attention: bool,
    /// Axolotl's older switch for `attn_implementation: eager`.
    #[serde(default)]
    pub eager_attention: bool,
    /// Arguments of transformers' gradient checkpointing. recipe recomputes each decoder layer in
    /// the backward pass without torch.utils.checkpoint, so reentrant or not, the gradients are
    /// the same.
    #[serde(default)]
    pub gradient_checkpointing_kwargs: Option<CheckpointingKwargs>,
    /// transformers' Trainer drops dataset columns the model does not take; recipe's batches hold
    /// only token ids, labels and positions, so there is nothing to remove either way.
    #[serde(default)]
    pub remove_unused_columns: Option<bool>,
    /// Axolotl plugins. The Liger and Cut Cross-Entropy plugins are kernels for the same math and
    /// are accepted (their `liger_*` / `cut_cross_entropy` switches say which parts); plugins that
    /// change the training or the product are refused by name.
    #[serde(default)]
    pub plugins: Vec<Plugin>,
    /// Liger's fused rotary embedding; recipe applies rotary embeddings with libtorch ops.
    #[serde(default)]
    pub liger_rope: bool,
    /// Liger's fused RMSNorm; recipe's RMSNorm is libtorch ops in fp32.
    #[serde(default)]
    pub liger_rms_norm: bool,
    /// Liger's fused gated RMSNorm (models that have one).
    #[serde(default)]
    pub liger_rms_norm_gated: bool,
    /// Liger's fused SwiGLU / GeGLU feed-forward activation.
    #[serde(default)]
    pub liger_glu_activation: bool,
    /// Liger's fused SwiGLU (older name of `liger_glu_activation`).
    #[serde(default)]
    pub liger_swiglu: bool,
    /// Liger's fused LayerNorm (recipe's model families use RMSNorm only).
    #[serde(default)]
    pub liger_layer_norm: bool,
    /// Liger's cross-entropy kernel.
    #[serde(default)]
    pub liger_cross_entropy: bool,
    /// Liger's fused head + cross-entropy, which avoids full-vocabulary logits.
    #[serde(default)]
    pub liger_fused_linear_cross_entropy: bool,
    /// Cut Cross-Entropy: head + cross-entropy without full-vocabulary logits.
    #[serde(default)]
    pub cut_cross_entropy: bool,
    /// Compile the model with torch.compile (true, false or auto); recipe runs libtorch's kernels
    /// without compiling.
    #[serde(default)]
    pub torch_compile: Option<Switch>,
    /// torch.compile's mode when `torch_compile` is on; recipe does not compile, in any mode.
    #[serde(default)]
    pub torch_compile_mode: Option<CompileMode>,
    /// Arguments Axolotl hands to torch.compile for flex_attention; recipe runs no flex_attention
    /// and compiles nothing.
    #[serde(default)]
    pub flex_attn_compile_kwargs: Option<FlexCompileKwargs>,
    /// Axolotl's fused RMSNorm + rotary Triton kernel for the q/k path of Qwen3-family attention;
    /// recipe applies the q/k norms and the rotation with libtorch ops (the same math).
    #[serde(default)]
    pub fused_attn_kernel: Option<bool>,
    /// xformers' fused SwiGLU for the feed-forward block (Axolotl: full fine-tuning only); recipe
    /// computes gate/up projections and SwiGLU with libtorch ops (the same math).
    #[serde(default)]
    pub flash_attn_fuse_mlp: Option<bool>,
    /// Axolotl's fused LoRA autograd function and Triton activation kernel for the feed-forward
    /// block; recipe's LoRA layers compute the same x·Wᵀ + s·(x·Aᵀ)·Bᵀ with libtorch ops.
    #[serde(default)]
    pub lora_mlp_kernel: Option<bool>,
    /// Axolotl's fused LoRA autograd function for the q/k/v projections (same math, see
    /// `lora_mlp_kernel`).
    #[serde(default)]
    pub lora_qkv_kernel: Option<bool>,
    /// Axolotl's fused LoRA autograd function for the attention output projection (same math).
    #[serde(default)]
    pub lora_o_kernel: Option<bool>,
    /// Axolotl's fused LoRA autograd function for embedding layers (same math).
    #[serde(default)]
    pub lora_embedding_kernel: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttnImplementation {
    /// transformers' plain matmul + softmax attention.
    Eager,
    /// torch's scaled_dot_product_attention.
    Sdpa,
    /// The flash-attn package, version 2.
    #[serde(rename = "flash_attention_2")]
    FlashAttention2,
    /// The flash-attn package, version 3 (Hopper).
    #[serde(rename = "flash_attention_3")]
    FlashAttention3,
    /// torch's flex_attention.
    FlexAttention,
    /// xformers' memory-efficient attention.
    Xformers,
}

impl AttnImplementation {
    /// The name as written in a recipe (its serialized form).
    pub fn as_str(self) -> &'static str {
        match self {
            AttnImplementation::Eager => "eager",
            AttnImplementation::Sdpa => "sdpa",
            AttnImplementation::FlashAttention2 => "flash_attention_2",
            AttnImplementation::FlashAttention3 => "flash_attention_3",
            AttnImplementation::FlexAttention => "flex_attention",
            AttnImplementation::Xformers => "xformers",
        }
    }
}

/// torch.compile's modes (Axolotl's `torch_compile_mode` takes the first three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CompileMode {
    Default,
    ReduceOverhead,
    MaxAutotune,
    MaxAutotuneNoCudagraphs,
}

impl CompileMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CompileMode::Default => "default",
            CompileMode::ReduceOverhead => "reduce-overhead",
            CompileMode::MaxAutotune => "max-autotune",
            CompileMode::MaxAutotuneNoCudagraphs => "max-autotune-no-cudagraphs",
        }
    }
}

/// `flex_attn_compile_kwargs`: torch.compile's arguments as Axolotl's configs write them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FlexCompileKwargs {
    /// Compile for dynamic shapes.
    #[serde(default)]
    pub dynamic: Option<bool>,
    /// The compile mode.
    #[serde(default)]
    pub mode: Option<CompileMode>,
    /// Refuse graph breaks.
    #[serde(default)]
    pub fullgraph: Option<bool>,
}

/// `gradient_checkpointing_kwargs`: transformers' arguments to torch.utils.checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CheckpointingKwargs {
    /// Reentrant (true) or non-reentrant (false) checkpointing.
    #[serde(default)]
    pub use_reentrant: Option<bool>,
}

/// An Axolotl plugin recipe takes: kernels for the same math.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Plugin {
    /// Liger kernels (RMSNorm, rotary embedding, SwiGLU, fused linear cross-entropy).
    #[serde(rename = "axolotl.integrations.liger.LigerPlugin")]
    Liger,
    /// Apple's Cut Cross-Entropy (head + cross-entropy without full-vocabulary logits).
    #[serde(rename = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin")]
    CutCrossEntropy,
}

impl Plugin {
    pub fn as_str(self) -> &'static str {
        match self {
            Plugin::Liger => "axolotl.integrations.liger.LigerPlugin",
            Plugin::CutCrossEntropy => "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin",
        }
    }
}

impl KernelConfig {
    /// The attention implementation the recipe asks for, from `attn_implementation` or Axolotl's
    /// older switches, with the key that asked; None when nothing is asked.
    pub fn attention_request(&self) -> Option<(AttnImplementation, &'static str)> {
        if let Some(a) = self.attn_implementation {
            return Some((a, "attn_implementation"));
        }
        [
            (self.flash_attention, AttnImplementation::FlashAttention2, "flash_attention"),
            (self.sdp_attention, AttnImplementation::Sdpa, "sdp_attention"),
            (self.xformers_attention, AttnImplementation::Xformers, "xformers_attention"),
            (self.flex_attention, AttnImplementation::FlexAttention, "flex_attention"),
            (self.eager_attention, AttnImplementation::Eager, "eager_attention"),
        ]
        .into_iter()
        .find_map(|(on, a, key)| on.then_some((a, key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_names_are_their_serialized_names() {
        use AttnImplementation::*;
        for a in [Eager, Sdpa, FlashAttention2, FlashAttention3, FlexAttention, Xformers] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str(), "{a:?}");
        }
        use CompileMode::*;
        for m in [Default, ReduceOverhead, MaxAutotune, MaxAutotuneNoCudagraphs] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str(), "{m:?}");
        }
    }
}

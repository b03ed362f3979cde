//! What recipe runs for each kernel or compilation request an Axolotl recipe makes
//! (config/kernels.rs): the same math with recipe's own kernels, said in the plan, so a request is
//! never accepted and then silently dropped.

use crate::config::Config;
use crate::config::kernels::{AttnImplementation, Plugin};
use serde::Serialize;

/// One request and what recipe does for it.
#[derive(Debug, Clone, Serialize)]
pub struct KernelNote {
    /// The key (and value) as the recipe wrote it.
    pub request: String,
    /// What recipe runs instead, with the same result.
    pub recipe_runs: String,
}

/// The attention kernel recipe runs, whatever was asked.
pub const ATTENTION: &str = "libtorch's scaled_dot_product_attention, which picks its flash, memory-efficient or \
                             math kernel by device, dtype and mask";

/// Every request the recipe writes, in the order of config/kernels.rs.
pub fn plan(c: &Config) -> Vec<KernelNote> {
    let k = &c.kernels;
    let mut notes = Vec::new();
    let mut note = |request: String, recipe_runs: &str| {
        notes.push(KernelNote { request, recipe_runs: recipe_runs.to_string() });
    };
    if let Some((attention, key)) = k.attention_request() {
        let request = if key == "attn_implementation" {
            format!("{key}: {}", attention.as_str())
        } else {
            format!("{key}: true")
        };
        let recipe_runs = match attention {
            AttnImplementation::Eager | AttnImplementation::FlexAttention => {
                format!("{ATTENTION} (the same attention, computed by another algorithm than the one named)")
            }
            _ => format!("{ATTENTION} (the same attention)"),
        };
        note(request, &recipe_runs);
    }
    if let Some(kwargs) = &k.gradient_checkpointing_kwargs {
        let reentrant = kwargs.use_reentrant.map_or("unset".to_string(), |r| r.to_string());
        note(
            format!("gradient_checkpointing_kwargs: use_reentrant {reentrant}"),
            "each decoder layer recomputed in the backward pass by recipe itself (no torch.utils.checkpoint): the \
             same gradients either way",
        );
    }
    if let Some(remove) = k.remove_unused_columns {
        note(
            format!("remove_unused_columns: {remove}"),
            "batches of token ids, labels and positions only: there are no other columns to keep or remove",
        );
    }
    for plugin in &k.plugins {
        let what = match plugin {
            Plugin::Liger => "recipe's own kernels for the parts the liger_* switches name (lines below)",
            Plugin::CutCrossEntropy => "recipe's own head and cross-entropy (the cut_cross_entropy line below)",
        };
        note(format!("plugins: {}", plugin.as_str()), what);
    }
    let switches = [
        (k.liger_rope, "liger_rope", "rotary embeddings with libtorch ops (the same rotation)"),
        (k.liger_rms_norm, "liger_rms_norm", "RMSNorm with libtorch ops in fp32 (the same normalisation)"),
        (
            k.liger_rms_norm_gated,
            "liger_rms_norm_gated",
            "no gated RMSNorm in recipe's model families: nothing to replace",
        ),
        (k.liger_glu_activation, "liger_glu_activation", "SwiGLU with libtorch ops (the same activation)"),
        (k.liger_swiglu, "liger_swiglu", "SwiGLU with libtorch ops (the same activation)"),
        (
            k.liger_layer_norm,
            "liger_layer_norm",
            "no LayerNorm in recipe's model families (RMSNorm only): nothing to replace",
        ),
        (k.liger_cross_entropy, "liger_cross_entropy", "libtorch's cross-entropy (the same loss)"),
        (
            k.liger_fused_linear_cross_entropy,
            "liger_fused_linear_cross_entropy",
            "recipe's head and cross-entropy (the same loss; the plan's loss line says how the logits are kept)",
        ),
        (
            k.cut_cross_entropy || k.plugins.contains(&Plugin::CutCrossEntropy),
            "cut_cross_entropy",
            "recipe's head and cross-entropy (the same loss; the plan's loss line says how the logits are kept)",
        ),
    ];
    for (on, key, what) in switches {
        if on {
            note(format!("{key}: true"), what);
        }
    }
    let lora = c.adapter.adapter.is_some_and(|a| a.is_lora());
    let lora_kernels = [
        (k.lora_mlp_kernel, "lora_mlp_kernel", "gate/up/down projections and their SwiGLU"),
        (k.lora_qkv_kernel, "lora_qkv_kernel", "q/k/v projections"),
        (k.lora_o_kernel, "lora_o_kernel", "attention output projection"),
        (k.lora_embedding_kernel, "lora_embedding_kernel", "embedding"),
    ];
    for (asked, key, part) in lora_kernels {
        let Some(on) = asked else { continue };
        let what = match (on, lora) {
            (true, true) => format!(
                "recipe's LoRA layers for the {part}: x·Wᵀ + s·(x·Aᵀ)·Bᵀ with libtorch ops (the same math as \
                 Axolotl's fused autograd function and Triton kernels)"
            ),
            (true, false) => "no LoRA layers in this recipe: nothing to replace".to_string(),
            (false, _) => "recipe's own LoRA layers, as asked (no fused kernel)".to_string(),
        };
        note(format!("{key}: {on}"), &what);
    }
    if let Some(on) = k.fused_attn_kernel {
        note(
            format!("fused_attn_kernel: {on}"),
            if on {
                "the q/k RMSNorm (in the families that have one) and the rotary embedding with libtorch ops (the \
                 same math as Axolotl's fused RMSNorm + RoPE Triton kernel)"
            } else {
                "the q/k norms and rotary embedding with libtorch ops, as asked (no fused kernel)"
            },
        );
    }
    if let Some(on) = k.flash_attn_fuse_mlp {
        note(
            format!("flash_attn_fuse_mlp: {on}"),
            if on {
                "the feed-forward block's gate/up projections and SwiGLU with libtorch ops (the same math as \
                 xformers' fused SwiGLU)"
            } else {
                "the feed-forward block with libtorch ops, as asked (no fused kernel)"
            },
        );
    }
    if let Some(compile) = k.torch_compile {
        note(
            format!("torch_compile: {}", serde_json::to_value(compile).map(|v| v.to_string()).unwrap_or_default()),
            "libtorch's kernels without compilation (the same computation)",
        );
    }
    if let Some(mode) = k.torch_compile_mode {
        note(
            format!("torch_compile_mode: {}", mode.as_str()),
            "no compilation, so no compile mode: libtorch's kernels (the same computation)",
        );
    }
    if let Some(kwargs) = &k.flex_attn_compile_kwargs {
        let mut parts = Vec::new();
        if let Some(d) = kwargs.dynamic {
            parts.push(format!("dynamic {d}"));
        }
        if let Some(m) = kwargs.mode {
            parts.push(format!("mode {}", m.as_str()));
        }
        if let Some(f) = kwargs.fullgraph {
            parts.push(format!("fullgraph {f}"));
        }
        note(
            format!("flex_attn_compile_kwargs: {}", if parts.is_empty() { "{}".into() } else { parts.join(", ") }),
            &format!("no flex_attention to compile: {ATTENTION} (the same attention)"),
        );
    }
    notes
}

//! Sparse mixture-of-experts feed-forward blocks (Mixtral, Qwen3-MoE), as transformers 5.24
//! defines them: a router (`gate`, a bias-free [experts, hidden] weight), softmax over the experts,
//! the top-k experts per token with their probabilities (renormalised to sum to one: always for
//! Mixtral, with `norm_topk_prob` for Qwen3-MoE), each expert a SwiGLU MLP, and the Switch
//! Transformer load-balancing loss (`router_aux_loss_coef`) when `output_router_logits` asks.
//!
//! Checkpoints name every expert's linears apart, as on the Hub and as transformers 5.24 saves
//! them (it fuses them into 3-D `gate_up_proj` / `down_proj` parameters only in memory):
//! Mixtral `model.layers.N.block_sparse_moe.experts.E.w1|w3|w2`, Qwen3-MoE
//! `model.layers.N.mlp.experts.E.gate_proj|up_proj|down_proj`. This module owns the config
//! fields, the per-layer shapes and the parameter counts; model/moe.rs runs the block.

use serde::{Deserialize, Serialize};

/// What a MoE config.json adds to the Llama-family fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoeArch {
    /// Experts per sparse layer (`num_local_experts`; Qwen3-MoE's `num_experts`).
    pub num_experts: u64,
    /// Experts each token is routed to (`num_experts_per_tok`).
    pub experts_per_token: u64,
    /// Width of one expert's MLP (Mixtral: `intermediate_size`; Qwen3-MoE: `moe_intermediate_size`).
    pub expert_intermediate_size: u64,
    /// The top-k probabilities are renormalised to sum to one.
    pub normalize_top_k: bool,
    /// The load-balancing loss is added to the training loss, times `router_aux_loss_coef`
    /// (config.json `output_router_logits`, or the recipe's `model_config`).
    pub output_router_logits: bool,
    pub router_aux_loss_coef: f64,
    /// Layers with a dense MLP (`intermediate_size`) in place of the sparse block: Qwen3-MoE's
    /// `mlp_only_layers` and the layers `decoder_sparse_step` skips. Empty for Mixtral.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dense_layers: Vec<u64>,
    /// Module name of the block under a layer (`block_sparse_moe` or `mlp`).
    pub block: &'static str,
    /// An expert's gate, up and down projections, by checkpoint name.
    pub expert_linears: [&'static str; 3],
    /// Axolotl's `quantize_moe_experts`: the fused expert tensors (`gate_up_proj` [E, 2I, H],
    /// `down_proj` [E, H, I]) are stored quantized as bitsandbytes quantizes a whole 3-D
    /// parameter (the base's 4-bit or 8-bit format), and dequantized in the forward pass.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub quantized_experts: bool,
}

/// The config.json fields of a MoE family (unknown fields are ignored, as in arch.rs).
#[derive(Debug, Deserialize)]
struct RawMoe {
    #[serde(default, alias = "num_experts")]
    num_local_experts: Option<u64>,
    #[serde(default)]
    num_experts_per_tok: Option<u64>,
    #[serde(default)]
    moe_intermediate_size: Option<u64>,
    #[serde(default)]
    norm_topk_prob: Option<bool>,
    #[serde(default)]
    output_router_logits: Option<bool>,
    #[serde(default)]
    router_aux_loss_coef: Option<f64>,
    #[serde(default)]
    router_jitter_noise: Option<f64>,
    #[serde(default)]
    decoder_sparse_step: Option<u64>,
    #[serde(default)]
    mlp_only_layers: Option<Vec<u64>>,
}

/// Which MoE layout a config.json describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeKind {
    Mixtral,
    Qwen3Moe,
}

impl MoeArch {
    /// Reads the MoE fields with transformers' defaults (MixtralConfig / Qwen3MoeConfig).
    pub fn from_config_json(text: &str, kind: MoeKind, intermediate_size: u64, layers: u64) -> Result<MoeArch, String> {
        let raw: RawMoe = serde_json::from_str(text).map_err(|e| format!("config.json: {e}"))?;
        if let Some(noise) = raw.router_jitter_noise.filter(|n| *n != 0.0) {
            // Random multiplicative noise on the router's input while training: not built.
            return Err(format!(
                "unsupported-moe-jitter: config.json router_jitter_noise {noise} (random noise on the router's input \
                 while training) is not built; recipe runs Mixtral with router_jitter_noise 0"
            ));
        }
        let moe = match kind {
            MoeKind::Mixtral => MoeArch {
                num_experts: raw.num_local_experts.unwrap_or(8),
                experts_per_token: raw.num_experts_per_tok.unwrap_or(2),
                expert_intermediate_size: intermediate_size,
                normalize_top_k: true,
                output_router_logits: raw.output_router_logits.unwrap_or(false),
                router_aux_loss_coef: raw.router_aux_loss_coef.unwrap_or(0.001),
                dense_layers: Vec::new(),
                block: "block_sparse_moe",
                expert_linears: ["w1", "w3", "w2"],
                quantized_experts: false,
            },
            MoeKind::Qwen3Moe => {
                let num_experts = raw.num_local_experts.unwrap_or(128);
                let step = raw.decoder_sparse_step.unwrap_or(1);
                if step == 0 {
                    return Err("config.json: decoder_sparse_step must be positive".into());
                }
                let only = raw.mlp_only_layers.unwrap_or_default();
                // Qwen2MoeDecoderLayer: sparse unless listed in mlp_only_layers, when experts exist
                // and (layer + 1) is a multiple of decoder_sparse_step.
                let dense_layers =
                    (0..layers).filter(|l| only.contains(l) || num_experts == 0 || (l + 1) % step != 0).collect();
                MoeArch {
                    num_experts,
                    experts_per_token: raw.num_experts_per_tok.unwrap_or(8),
                    expert_intermediate_size: raw.moe_intermediate_size.unwrap_or(768),
                    normalize_top_k: raw.norm_topk_prob.unwrap_or(false),
                    output_router_logits: raw.output_router_logits.unwrap_or(false),
                    router_aux_loss_coef: raw.router_aux_loss_coef.unwrap_or(0.001),
                    dense_layers,
                    block: "mlp",
                    expert_linears: ["gate_proj", "up_proj", "down_proj"],
                    quantized_experts: false,
                }
            }
        };
        if moe.num_experts > 0 && (moe.experts_per_token == 0 || moe.experts_per_token > moe.num_experts) {
            return Err(format!(
                "config.json: num_experts_per_tok ({}) must be between 1 and the number of experts ({})",
                moe.experts_per_token, moe.num_experts
            ));
        }
        Ok(moe)
    }

    /// Whether layer `l` carries the sparse block (else a dense MLP).
    pub fn is_sparse(&self, layer: u64) -> bool {
        !self.dense_layers.contains(&layer)
    }

    /// Parameters of one sparse block: the router and every expert's three projections.
    pub fn sparse_block_parameters(&self, hidden: u64) -> u64 {
        self.num_experts * hidden + self.num_experts * 3 * hidden * self.expert_intermediate_size
    }

    /// Layers with the sparse block.
    pub fn sparse_layers(&self, layers: u64) -> u64 {
        (0..layers).filter(|l| self.is_sparse(*l)).count() as u64
    }

    /// Module path of layer `l`'s router (`model.layers.N.block_sparse_moe.gate`).
    pub fn router_name(&self, layer: u64) -> String {
        format!("model.layers.{layer}.{}.gate", self.block)
    }

    /// Module paths of expert `e`'s gate, up and down projections in layer `l`.
    pub fn expert_names(&self, layer: u64, expert: u64) -> [String; 3] {
        self.expert_linears.map(|n| format!("model.layers.{layer}.{}.experts.{expert}.{n}", self.block))
    }
}

/// A sparse block's parameters under transformers 5's in-memory names (relative to
/// `model.layers.N`), as peft's `target_parameters` matches them: the router's 2-D weight and the
/// fused 3-D expert weights ([experts, 2 · width, hidden] and [experts, hidden, width]).
pub const PEFT_PARAMETERS: [&str; 3] = ["mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"];

/// peft's match of a `target_parameters` entry against a parameter key: equal, or a dotted suffix.
pub fn target_matches(key: &str, target: &str) -> bool {
    key == target || key.strip_suffix(target).is_some_and(|head| head.ends_with('.'))
}

/// Which of layer `l`'s block parameters (indices into PEFT_PARAMETERS) `targets` name.
pub fn targeted_in_layer(targets: &[String], layer: u64) -> [bool; 3] {
    PEFT_PARAMETERS.map(|p| {
        let key = format!("model.layers.{layer}.{p}");
        targets.iter().any(|t| target_matches(&key, t))
    })
}

/// One parameter kind adapted through `lora_target_parameters`, as peft's ParamWrapper shapes it:
/// for a 3-D [E, d1, d2] parameter, lora_A [r · E, d2] and lora_B [d1, r · E] (row e·r + j of A
/// and column j·E + e of B are expert e's rank-j factors); for the router, plain LoRA.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdaptedParameter {
    /// The in-memory name under `model.layers.N` (`mlp.experts.gate_up_proj`).
    pub name: String,
    pub shape: Vec<u64>,
    /// Sparse layers where it is adapted.
    pub layers: u64,
    pub lora_a: [u64; 2],
    pub lora_b: [u64; 2],
}

impl AdaptedParameter {
    pub fn parameters(&self) -> u64 {
        self.lora_a[0] * self.lora_a[1] + self.lora_b[0] * self.lora_b[1]
    }
}

/// Resolves `lora_target_parameters` as peft 0.21 does on transformers 5.24's model: each entry
/// matches parameter keys (equal or dotted suffix). Recipe builds the router and fused experts of
/// a mixture of experts; an entry naming any other parameter is refused by name, one naming nothing
/// is an error (peft would silently adapt nothing).
pub fn target_parameters(
    c: &crate::config::Config,
    arch: &super::arch::Architecture,
) -> Result<Vec<AdaptedParameter>, String> {
    let Some(targets) = c.adapter.lora_target_parameters.as_ref().filter(|t| !t.is_empty()) else {
        return Ok(Vec::new());
    };
    let class = &arch.class;
    let Some(moe) = &arch.moe else {
        return Err(format!(
            "unsupported-lora-target-parameters: {class} has no mixture-of-experts block; recipe builds              `lora_target_parameters` on a mixture of experts' router and fused experts only; adapt linear modules              with `lora_target_modules`"
        ));
    };
    let a = &c.adapter;
    if a.lora_dropout != 0.0 {
        return Err(format!(
            "`lora_target_parameters` needs `lora_dropout: 0` (it is {}): peft's ParamWrapper adds the update to the              weight, so no dropout of the input can apply (peft stops with the same error)",
            a.lora_dropout
        ));
    }
    if a.peft_use_dora {
        return Err(
            "`lora_target_parameters` does not work with `peft_use_dora` (peft's ParamWrapper has no DoRA)".into()
        );
    }
    for t in targets {
        let last = t.rsplit('.').next().unwrap_or(t);
        let router = t == "gate.weight" || t.ends_with(".gate.weight");
        if !router && !matches!(last, "gate_up_proj" | "down_proj") {
            return Err(format!(
                "unsupported-lora-target-parameters: `{t}` names parameters recipe does not adapt through                  `lora_target_parameters`; built: a mixture of experts' router (`mlp.gate.weight`) and fused experts                  (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`); adapt linear modules with `lora_target_modules`"
            ));
        }
        let sparse = (0..arch.num_layers).filter(|l| moe.is_sparse(*l));
        let hits = sparse
            .flat_map(|l| PEFT_PARAMETERS.map(|p| format!("model.layers.{l}.{p}")))
            .any(|key| target_matches(&key, t));
        if !hits {
            return Err(format!(
                "`lora_target_parameters`: `{t}` matches no parameter of {class}; transformers 5 holds its router as                  model.layers.N.mlp.gate.weight and its experts fused as model.layers.N.mlp.experts.gate_up_proj /                  down_proj (whatever the checkpoint calls them), e.g. `experts.gate_up_proj`"
            ));
        }
    }
    let (r, e, h, i) = (u64::from(a.lora_r), moe.num_experts, arch.hidden_size, moe.expert_intermediate_size);
    // (shape, in, out, experts): peft swaps a 3-D [E, d1, d2] parameter's sides (in d2, out d1).
    let sides = [(vec![e, h], h, e, 1), (vec![e, 2 * i, h], h, 2 * i, e), (vec![e, h, i], i, h, e)];
    let mut out = Vec::new();
    for (which, (shape, fan_in, fan_out, experts)) in sides.into_iter().enumerate() {
        let layers =
            (0..arch.num_layers).filter(|l| moe.is_sparse(*l) && targeted_in_layer(targets, *l)[which]).count();
        if layers > 0 {
            out.push(AdaptedParameter {
                name: PEFT_PARAMETERS[which].to_string(),
                shape,
                layers: layers as u64,
                lora_a: [r * experts, fan_in],
                lora_b: [fan_out, r * experts],
            });
        }
    }
    Ok(out)
}

/// The plan's one-line summary of the block.
pub fn describe(moe: &MoeArch, layers: u64) -> String {
    let dense = match moe.dense_layers.len() {
        0 => String::new(),
        n => format!(" ({n} of {layers} layers dense: {:?})", moe.dense_layers),
    };
    let aux = if moe.output_router_logits {
        format!("load-balancing loss × {}", moe.router_aux_loss_coef)
    } else {
        "no load-balancing loss (output_router_logits false)".to_string()
    };
    format!(
        "mixture of experts: {} experts of width {}, top-{}{}{}; all experts resident, activations per top-k; {aux}",
        moe.num_experts,
        moe.expert_intermediate_size,
        moe.experts_per_token,
        if moe.normalize_top_k { " (weights renormalized)" } else { "" },
        dense
    )
}

/// What recipe does not do with a mixture of experts, refused by name before anything runs:
/// 8-bit bases with experts in the compute dtype (with `quantize_moe_experts` they are built; 4-bit ones are built: bitsandbytes under transformers 5.24 quantizes `nn.Linear`
/// modules only, so the router and fused 3-D experts stay in the compute dtype, as the loader keeps
/// them), sharded
/// training (not tested with experts), IA3 (peft's Mixtral defaults name the experts), LoRA target
/// modules naming the router or experts (not `nn.Linear` modules in transformers 5: peft 0.21
/// rewrites such names into `target_parameters` with its own rank and alpha patterns; recipe takes
/// `lora_target_parameters` as written instead), and `lora_target_linear` where Qwen3-MoE has
/// dense MLP layers (peft's all-linear would adapt those layers' MLPs alone).
pub fn refusals(c: &crate::config::Config, arch: &super::arch::Architecture) -> Result<(), String> {
    use crate::config::adapter::AdapterKind;
    let Some(moe) = &arch.moe else { return Ok(()) };
    let class = &arch.class;
    let q = &c.quantization;
    if q.load_in_8bit && !moe.quantized_experts {
        return Err(format!(
            "unsupported-moe-quantization: {class} is a mixture of experts; an 8-bit base (load_in_8bit) with its \
             experts in the compute dtype is not built (with `quantize_moe_experts: true` it is: attention in \
             LLM.int8, the fused experts in Axolotl's int8 parametrization; QLoRA is too: load_in_4bit)"
        ));
    }
    if moe.quantized_experts && q.load_in_4bit {
        // Each expert's share of a fused tensor must hold whole 64-element blocks, so that the
        // expert dequantizes alone exactly as its rows of the whole (model/moe.rs).
        let n = arch.hidden_size * moe.expert_intermediate_size;
        let block = super::quantize::BLOCK_SIZE;
        if n % block != 0 {
            return Err(format!(
                "unsupported-moe-quantized-experts-layout: {class}'s expert weights have hidden × width = {n} \
                 elements, not a multiple of the 4-bit block ({block}); recipe dequantizes each expert's rows of \
                 the fused tensor alone, which needs whole blocks per expert"
            ));
        }
    }
    if c.distributed.shards() {
        return Err(format!(
            "unsupported-moe-sharding: {class} is a mixture of experts; sharded training (FSDP / DeepSpeed ZeRO) is \
             not built for its experts yet; train data parallel on one or more GPUs instead"
        ));
    }
    if c.adapter.adapter == Some(AdapterKind::Ia3) {
        return Err(format!(
            "unsupported-moe-ia3: {class} is a mixture of experts; IA3 on it is not built (peft's defaults target \
             its experts, which are not linear modules in transformers 5)"
        ));
    }
    let expert_names = ["gate", "experts", "w1", "w2", "w3", "gate_proj", "up_proj", "down_proj", moe.block];
    if let Some(list) = &c.adapter.lora_target_modules
        && let Some(name) = list.names().into_iter().find(|n| {
            let short = n.rsplit('.').next().unwrap_or(n);
            expert_names.contains(&short) || n.contains(".experts.")
        })
    {
        return Err(format!(
            "unsupported-moe-lora-experts: `lora_target_modules` names `{name}`, part of {class}'s mixture-of-experts \
             block; in transformers 5 the router and experts are not linear modules (peft rewrites such names into \
             `target_parameters`, doubling rank and alpha for the fused gate/up experts, which recipe does not \
             mirror). Name them in `lora_target_parameters` (`gate.weight`, `experts.gate_up_proj`, \
             `experts.down_proj`) and keep the attention projections (q_proj, k_proj, v_proj, o_proj) here"
        ));
    }
    if c.adapter.lora_target_linear && !moe.dense_layers.is_empty() {
        return Err(format!(
            "unsupported-moe-lora-dense-layers: {class} has dense MLP layers ({:?}) beside its experts; \
             `lora_target_linear` would adapt those layers' MLPs alone, which recipe does not build; list the \
             attention projections in `lora_target_modules` instead",
            moe.dense_layers
        ));
    }
    Ok(())
}

/// The recipe's `overrides_of_model_config` (or `model_config`) over config.json: the load-balancing
/// loss's switch and weight, for a mixture of experts only.
pub fn apply_overrides(c: &crate::config::Config, arch: &mut super::arch::Architecture) -> Result<(), String> {
    if c.quantization.quantize_moe_experts {
        let class = arch.class.clone();
        let Some(moe) = arch.moe.as_mut() else {
            return Err(format!(
                "`quantize_moe_experts`: {class} has no mixture of experts, so there are no expert weights to quantize \
                 (Axolotl would quantize nothing); remove it"
            ));
        };
        moe.quantized_experts = true;
    }
    let Some(o) = c.model.config_overrides()? else { return Ok(()) };
    if o.output_router_logits.is_none() && o.router_aux_loss_coef.is_none() {
        return Ok(());
    }
    let class = arch.class.clone();
    let Some(moe) = arch.moe.as_mut() else {
        return Err(format!(
            "`model_config`: output_router_logits / router_aux_loss_coef belong to a mixture of experts; {class} has none"
        ));
    };
    if let Some(on) = o.output_router_logits {
        moe.output_router_logits = on;
    }
    if let Some(coef) = o.router_aux_loss_coef {
        moe.router_aux_loss_coef = coef;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3_moe_dense_layers_follow_mlp_only_layers_and_the_sparse_step() {
        let m = MoeArch::from_config_json(
            r#"{"num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 2, "mlp_only_layers": [3]}"#,
            MoeKind::Qwen3Moe,
            64,
            6,
        )
        .unwrap();
        // (l + 1) % 2 != 0 -> dense: 0, 2, 4; plus 3 from mlp_only_layers.
        assert_eq!(m.dense_layers, vec![0, 2, 3, 4]);
        assert_eq!(m.sparse_layers(6), 2);
        assert!(!m.normalize_top_k);
        let m = MoeArch::from_config_json(r#"{"router_jitter_noise": 0.1}"#, MoeKind::Mixtral, 64, 2).unwrap_err();
        assert!(m.starts_with("unsupported-moe-jitter"), "{m}");
    }
}

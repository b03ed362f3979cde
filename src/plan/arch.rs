//! Architectures the executor can run (the Llama family: Llama 1/2/3/3.1/3.2, Mistral, Qwen2/2.5,
//! and Qwen3 dense, which adds a per-head RMSNorm on queries and keys; Gemma 2 and Gemma 3 text,
//! whose own settings live in `Architecture::gemma`, see plan/arch_gemma.rs; Phi-3/3.5/4, with fused
//! `qkv_proj` / `gate_up_proj`, partial rotary embedding and LongRoPE; OLMo 2, with post-norms and
//! q/k norms over all heads together; the sparse mixture-of-experts families Mixtral and Qwen3-MoE,
//! whose feed-forward blocks plan/moe.rs describes),
//! read from a Hugging Face config.json, with exact parameter counts and the linear modules LoRA
//! can target. Module names are Hugging Face's, so they match peft's `target_modules`.

use super::moe::{MoeArch, MoeKind};
use serde::{Deserialize, Serialize};

/// The families `recipe run` supports, by config.json `model_type`.
pub const SUPPORTED_MODEL_TYPES: &[&str] =
    &["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2", "mixtral", "qwen3_moe"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    /// Gemma 3's text model (`gemma3_text`, `Gemma3ForCausalLM`).
    Gemma3,
    Phi3,
    Olmo2,
    Mixtral,
    #[serde(rename = "qwen3_moe")]
    Qwen3Moe,
}

/// Llama 3.1-style rope scaling (`rope_type: llama3`), linear/dynamic scaling by a factor, or
/// Phi-3's LongRoPE (`longrope`: per-frequency short and long factors).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RopeScaling {
    pub rope_type: String,
    pub factor: f64,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<u64>,
    /// LongRoPE: divisors of the inverse frequencies while every position is below
    /// original_max_position_embeddings (short) or once one is not (long).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_factor: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_factor: Option<Vec<f64>>,
    /// LongRoPE: what cos and sin are multiplied by (config value, else sqrt(1 + ln factor /
    /// ln original_max_position_embeddings), 1 when factor <= 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
}

/// rope_scaling / rope_parameters as config.json writes them (`type` is the older spelling of
/// `rope_type`; transformers 5 writes both for Phi-3).
#[derive(Debug, Deserialize)]
struct RawRopeScaling {
    #[serde(default)]
    rope_type: Option<String>,
    #[serde(default, rename = "type")]
    legacy_type: Option<String>,
    #[serde(default)]
    factor: Option<f64>,
    #[serde(default)]
    low_freq_factor: Option<f64>,
    #[serde(default)]
    high_freq_factor: Option<f64>,
    #[serde(default)]
    original_max_position_embeddings: Option<u64>,
    #[serde(default)]
    short_factor: Option<Vec<f64>>,
    #[serde(default)]
    long_factor: Option<Vec<f64>>,
    #[serde(default)]
    attention_factor: Option<f64>,
}

/// Every dimension the plan and the executor need.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Architecture {
    pub family: Family,
    /// `architectures[0]` of config.json (e.g. `LlamaForCausalLM`).
    pub class: String,
    pub num_layers: u64,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_attention_heads: u64,
    pub num_key_value_heads: u64,
    pub head_dim: u64,
    pub vocab_size: u64,
    pub max_position_embeddings: u64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// Attention window (Mistral; Qwen2 with use_sliding_window); the executor refuses sequences
    /// longer than it rather than silently attending further.
    pub sliding_window: Option<u64>,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama with `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm over each query and key head (`self_attn.q_norm` / `k_norm`, [head_dim]) after the
    /// projection and before rotary embedding (Qwen3). Left out of the JSON when false, so plans
    /// of the other families keep their shape.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm: bool,
    /// Gemma 2 / Gemma 3 text: (1+w) norms, sandwich norms, soft-capping, sliding-window layers.
    /// Absent for the Llama family.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemma: Option<super::arch_gemma::Gemma>,
    /// With `qk_norm`: one RMSNorm over all heads of q ([heads × head_dim]) and one over all of k
    /// ([kv heads × head_dim]), before the heads are split (OLMo 2).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm_all_heads: bool,
    /// q/k/v in one `self_attn.qkv_proj` (rows q, k, v) and gate/up in one `mlp.gate_up_proj`
    /// (rows gate, up), as Phi-3 stores them; LoRA adapts the fused modules.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fused_projections: bool,
    /// No norm before attention or the MLP: `post_attention_layernorm` and
    /// `post_feedforward_layernorm` normalise each sublayer's output before the residual add (OLMo 2).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub post_norms: bool,
    /// Fraction of each head's dimensions that rotary embedding turns (the first
    /// int(head_dim × factor)); absent when 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// The sparse mixture-of-experts block (Mixtral, Qwen3-MoE) in place of the dense MLP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moe: Option<super::moe::MoeArch>,
    /// config.json `torch_dtype`: the dtype the weights are stored in.
    pub dtype: String,
    /// Standard deviation transformers initialises new weights with (a reward model's `score`).
    pub initializer_range: f64,
}

/// The config.json fields we read (unknown fields are ignored: config.json has many).
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    hidden_size: u64,
    intermediate_size: u64,
    num_hidden_layers: u64,
    num_attention_heads: u64,
    #[serde(default)]
    num_key_value_heads: Option<u64>,
    #[serde(default)]
    head_dim: Option<u64>,
    vocab_size: u64,
    #[serde(default = "default_context")]
    max_position_embeddings: u64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    #[serde(default)]
    rope_scaling: Option<RawRopeScaling>,
    /// Phi-3: the pretraining context LongRoPE scales from (top level in its config.json).
    #[serde(default)]
    original_max_position_embeddings: Option<u64>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    /// Phi-3's residual dropout; recipe runs it only at 0.
    #[serde(default)]
    resid_pdrop: f64,
    #[serde(default)]
    attention_dropout: f64,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default, alias = "dtype")]
    torch_dtype: Option<String>,
    #[serde(default = "default_initializer_range")]
    initializer_range: f64,
    /// transformers 5 writes rope_theta and the scaling together here.
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    sliding_window: Option<u64>,
    /// Qwen2 applies its sliding_window only with this set.
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    #[serde(flatten)]
    scaling: Option<RawRopeScaling>,
}

fn default_context() -> u64 {
    2048
}
fn default_theta() -> f64 {
    10000.0
}
/// transformers' `PretrainedConfig` default (Llama, Mistral and Qwen2 configs all say 0.02).
fn default_initializer_range() -> f64 {
    0.02
}

fn default_eps() -> f64 {
    1e-6
}

impl Architecture {
    /// transformers' class of one decoder layer (what FSDP's `transformer_layer_cls_to_wrap` names).
    pub fn decoder_layer_class(&self) -> &'static str {
        match self.family {
            Family::Llama => "LlamaDecoderLayer",
            Family::Mistral => "MistralDecoderLayer",
            Family::Qwen2 => "Qwen2DecoderLayer",
            Family::Qwen3 => "Qwen3DecoderLayer",
            Family::Gemma2 => "Gemma2DecoderLayer",
            Family::Gemma3 => "Gemma3DecoderLayer",
            Family::Phi3 => "Phi3DecoderLayer",
            Family::Olmo2 => "Olmo2DecoderLayer",
            Family::Mixtral => "MixtralDecoderLayer",
            Family::Qwen3Moe => "Qwen3MoeDecoderLayer",
        }
    }

    /// Reads a config.json text. Errors name the field or the unsupported architecture.
    pub fn from_config_json(text: &str) -> Result<Architecture, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| format!("config.json: {e}"))?;
        let model_type = raw.model_type.clone().unwrap_or_default();
        let family = match model_type.as_str() {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma2" => Family::Gemma2,
            "gemma3_text" => Family::Gemma3,
            "phi3" => Family::Phi3,
            "olmo2" => Family::Olmo2,
            "mixtral" => Family::Mixtral,
            "qwen3_moe" => Family::Qwen3Moe,
            other => {
                return Err(format!(
                    "model_type `{other}` ({}) is not an architecture recipe can run; supported: {}",
                    raw.architectures.first().map_or("no architectures listed", String::as_str),
                    SUPPORTED_MODEL_TYPES.join(", ")
                ));
            }
        };
        if raw.num_attention_heads == 0 || raw.hidden_size == 0 || raw.num_hidden_layers == 0 {
            return Err("config.json: hidden_size, num_attention_heads and num_hidden_layers must be positive".into());
        }
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if num_key_value_heads == 0 || !raw.num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(format!(
                "config.json: num_attention_heads ({}) must be a multiple of num_key_value_heads ({num_key_value_heads})",
                raw.num_attention_heads
            ));
        }
        // Qwen3Config's head_dim defaults to 128, not hidden/heads (Qwen3-0.6B: 1024 / 16 heads, 128).
        let head_dim = match (raw.head_dim, family) {
            (Some(d), _) => d,
            (None, Family::Qwen3) => 128,
            // Gemma2Config / Gemma3TextConfig default to 256.
            (None, Family::Gemma2 | Family::Gemma3) => 256,
            (None, _) => raw.hidden_size / raw.num_attention_heads,
        };
        if head_dim == 0 {
            return Err("config.json: head_dim must be positive".into());
        }
        let qwen2 = family == Family::Qwen2;
        // Gemma reads `hidden_activation` (arch_gemma.rs); its files' `hidden_act` is unused.
        let gemma = super::arch_gemma::read(family, text)?;
        let moe = match family {
            Family::Mixtral => Some(MoeKind::Mixtral),
            Family::Qwen3Moe => Some(MoeKind::Qwen3Moe),
            _ => None,
        }
        .map(|kind| MoeArch::from_config_json(text, kind, raw.intermediate_size, raw.num_hidden_layers))
        .transpose()?;
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu" && gemma.is_none()) {
            return Err(format!("config.json: hidden_act `{act}` is not supported (the Llama family uses silu)"));
        }
        let (rope_theta, scaling, partial_rotary_factor) = match raw.rope_parameters {
            Some(p) => (
                p.rope_theta.unwrap_or(raw.rope_theta),
                p.scaling,
                p.partial_rotary_factor.or(raw.partial_rotary_factor),
            ),
            None => (raw.rope_theta, raw.rope_scaling, raw.partial_rotary_factor),
        };
        let rope_scaling = match scaling {
            Some(s) => rope_scaling(
                s,
                family == Family::Phi3,
                raw.max_position_embeddings,
                raw.original_max_position_embeddings,
            )?,
            None => None,
        };
        // Gemma 3: the global layers' rope (its local base is in `gemma`).
        let (rope_theta, rope_scaling) = match &gemma {
            Some(g) if family == Family::Gemma3 => g.global_rope.clone(),
            _ => (rope_theta, rope_scaling),
        };
        let partial_rotary_factor = match partial_rotary_factor {
            Some(f) if !(f > 0.0 && f <= 1.0) => {
                return Err(format!("config.json: partial_rotary_factor {f} must be in (0, 1]"));
            }
            Some(f) if f < 1.0 => {
                if (head_dim as f64 * f) < 2.0 {
                    return Err(format!("config.json: partial_rotary_factor {f} leaves no rotary dimensions"));
                }
                Some(f)
            }
            _ => None,
        };
        // Dropout recipe does not apply is refused rather than skipped (transformers applies these
        // while training; Phi-3's embd_pdrop it never reads).
        for (key, p) in [("resid_pdrop", raw.resid_pdrop), ("attention_dropout", raw.attention_dropout)] {
            if p != 0.0 && matches!(family, Family::Phi3 | Family::Olmo2) {
                return Err(format!(
                    "config.json: {key} {p} is not supported (recipe trains {model_type} without it); set it to 0"
                ));
            }
        }
        let sliding_window = match family {
            // Qwen2/Qwen3 keep sliding_window only with use_sliding_window (their configs' __post_init__).
            Family::Qwen2 | Family::Qwen3 | Family::Qwen3Moe if raw.use_sliding_window != Some(true) => None,
            // Gemma's window applies to its sliding layers only, with an exact mask (`gemma`).
            Family::Gemma2 | Family::Gemma3 => None,
            _ => raw.sliding_window,
        };
        Ok(Architecture {
            family,
            class: raw.architectures.first().cloned().unwrap_or_else(|| format!("{model_type}ForCausalLM")),
            num_layers: raw.num_hidden_layers,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            max_position_embeddings: raw.max_position_embeddings,
            rope_theta,
            rope_scaling,
            sliding_window,
            rms_norm_eps: raw.rms_norm_eps,
            // transformers' PretrainedConfig default is tied; Llama/Mistral/Qwen3/Phi-3/OLMo 2 and the
            // mixtures of experts say false.
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(!matches!(
                family,
                Family::Llama
                    | Family::Mistral
                    | Family::Qwen3
                    | Family::Phi3
                    | Family::Olmo2
                    | Family::Mixtral
                    | Family::Qwen3Moe
            )),
            // Qwen2 always has q/k/v bias and none on o_proj; Phi-3 and Mixtral have no biases; the
            // others (Qwen3, Qwen3-MoE, OLMo 2 included) put `attention_bias` on all four.
            qkv_bias: qwen2 || (!matches!(family, Family::Phi3 | Family::Mixtral) && raw.attention_bias),
            o_bias: !qwen2 && !matches!(family, Family::Phi3 | Family::Mixtral) && raw.attention_bias,
            // Phi-3, OLMo 2, experts and Qwen3-MoE's dense MLP have no MLP biases.
            mlp_bias: family != Family::Phi3 && family != Family::Olmo2 && moe.is_none() && raw.mlp_bias,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3 | Family::Olmo2 | Family::Qwen3Moe),
            qk_norm_all_heads: family == Family::Olmo2,
            fused_projections: family == Family::Phi3,
            post_norms: family == Family::Olmo2,
            partial_rotary_factor,
            gemma,
            moe,
            dtype: raw.torch_dtype.unwrap_or_else(|| "float32".into()),
            initializer_range: raw.initializer_range,
        })
    }

    /// The linear layers of one decoder layer, with Hugging Face names. For a mixture of experts,
    /// the attention projections only: the router and experts are not `nn.Linear` modules in
    /// transformers 5 (peft cannot target them by name), and plan/moe.rs counts them.
    pub fn layer_linears(&self) -> Vec<Linear> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        if self.fused_projections {
            return vec![
                Linear { name: "self_attn.qkv_proj", in_features: h, out_features: q + 2 * kv, bias: self.qkv_bias },
                Linear { name: "self_attn.o_proj", in_features: q, out_features: h, bias: self.o_bias },
                Linear { name: "mlp.gate_up_proj", in_features: h, out_features: 2 * i, bias: self.mlp_bias },
                Linear { name: "mlp.down_proj", in_features: i, out_features: h, bias: self.mlp_bias },
            ];
        }
        let mut out = vec![
            Linear { name: "self_attn.q_proj", in_features: h, out_features: q, bias: self.qkv_bias },
            Linear { name: "self_attn.k_proj", in_features: h, out_features: kv, bias: self.qkv_bias },
            Linear { name: "self_attn.v_proj", in_features: h, out_features: kv, bias: self.qkv_bias },
            Linear { name: "self_attn.o_proj", in_features: q, out_features: h, bias: self.o_bias },
        ];
        if self.moe.is_none() {
            out.extend([
                Linear { name: "mlp.gate_proj", in_features: h, out_features: i, bias: self.mlp_bias },
                Linear { name: "mlp.up_proj", in_features: h, out_features: i, bias: self.mlp_bias },
                Linear { name: "mlp.down_proj", in_features: i, out_features: h, bias: self.mlp_bias },
            ]);
        }
        out
    }

    /// The output head as a linear layer (its weight is embed_tokens' when tied).
    pub fn lm_head(&self) -> Linear {
        Linear { name: "lm_head", in_features: self.hidden_size, out_features: self.vocab_size, bias: false }
    }

    /// Exact parameter counts, as `sum(p.numel() for p in model.parameters())` in transformers.
    pub fn parameter_counts(&self) -> ParameterCounts {
        let embed_tokens = self.vocab_size * self.hidden_size;
        let mut linears: u64 = self.layer_linears().iter().map(Linear::parameters).sum();
        let qk_norms = match (self.qk_norm, self.qk_norm_all_heads) {
            (false, _) => 0,
            (true, false) => 2 * self.head_dim,
            (true, true) => (self.num_attention_heads + self.num_key_value_heads) * self.head_dim,
        };
        let norms = 2 * self.hidden_size + qk_norms + if self.gemma.is_some() { 2 * self.hidden_size } else { 0 };
        // A mixture of experts: `per_layer` is a sparse layer; dense layers (Qwen3-MoE) differ.
        let mut layers = self.num_layers * (linears + norms);
        if let Some(moe) = &self.moe {
            let sparse = moe.sparse_block_parameters(self.hidden_size);
            let dense = 3 * self.hidden_size * self.intermediate_size;
            let n_sparse = moe.sparse_layers(self.num_layers);
            layers += n_sparse * sparse + (self.num_layers - n_sparse) * dense;
            linears += if n_sparse > 0 { sparse } else { dense };
        }
        let per_layer = linears + norms;
        let lm_head = if self.tie_word_embeddings { 0 } else { self.lm_head().parameters() };
        let final_norm = self.hidden_size;
        ParameterCounts {
            total: embed_tokens + layers + final_norm + lm_head,
            embed_tokens,
            per_layer,
            layer_linears: linears,
            final_norm,
            lm_head,
        }
    }
}

/// One linear layer: `weight` is (out_features, in_features), as in torch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Linear {
    pub name: &'static str,
    pub in_features: u64,
    pub out_features: u64,
    pub bias: bool,
}

impl Linear {
    pub fn parameters(&self) -> u64 {
        self.in_features * self.out_features + if self.bias { self.out_features } else { 0 }
    }

    /// The short name peft matches (`q_proj`).
    pub fn short_name(&self) -> &'static str {
        self.name.rsplit('.').next().unwrap_or(self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParameterCounts {
    pub total: u64,
    pub embed_tokens: u64,
    /// One decoder layer: its linear layers and two RMSNorms (four with Qwen3's or OLMo 2's q/k
    /// norms).
    pub per_layer: u64,
    /// The linear layers of one decoder layer.
    pub layer_linears: u64,
    pub final_norm: u64,
    /// 0 when tied to embed_tokens.
    pub lm_head: u64,
}

/// The scaling config.json asks for (None for `default`). LongRoPE without `factor` takes
/// max_position_embeddings / original_max_position_embeddings, and its original context from
/// the top level when rope_scaling lacks it, as transformers does.
/// A `rope_scaling` object of config.json (or one layer type's `rope_parameters`), resolved as
/// the Llama family reads it; None for the default rope.
pub fn rope_scaling_from_json(
    value: serde_json::Value,
    max_position_embeddings: u64,
) -> Result<Option<RopeScaling>, String> {
    let raw: RawRopeScaling = serde_json::from_value(value).map_err(|e| e.to_string())?;
    rope_scaling(raw, false, max_position_embeddings, None)
}

fn rope_scaling(
    s: RawRopeScaling,
    phi3: bool,
    max_position_embeddings: u64,
    original_top_level: Option<u64>,
) -> Result<Option<RopeScaling>, String> {
    let Some(rope_type) = s.rope_type.or(s.legacy_type) else { return Ok(None) };
    // transformers' Phi-3 reads the older names `su` and `yarn` as longrope.
    let rope_type = match rope_type.as_str() {
        "su" | "yarn" if phi3 => "longrope".to_string(),
        _ => rope_type,
    };
    if rope_type == "default" {
        return Ok(None);
    }
    let longrope = rope_type == "longrope";
    let original = s.original_max_position_embeddings.or(if longrope { original_top_level } else { None });
    let factor = match (s.factor, original) {
        (Some(f), _) => f,
        (None, Some(o)) if longrope && o > 0 => max_position_embeddings as f64 / o as f64,
        _ => return Err(format!("config.json: rope scaling `{rope_type}` needs `factor`")),
    };
    if longrope && (s.short_factor.is_none() || s.long_factor.is_none() || original.is_none()) {
        return Err(
            "config.json: rope scaling `longrope` needs short_factor, long_factor and original_max_position_embeddings"
                .into(),
        );
    }
    Ok(Some(RopeScaling {
        rope_type,
        factor,
        low_freq_factor: s.low_freq_factor,
        high_freq_factor: s.high_freq_factor,
        original_max_position_embeddings: original,
        short_factor: s.short_factor,
        long_factor: s.long_factor,
        attention_factor: s.attention_factor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_architectures_are_named() {
        let err = Architecture::from_config_json(
            r#"{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "hidden_size": 8, "intermediate_size": 8,
               "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10}"#,
        )
        .unwrap_err();
        assert!(err.contains("gpt2") && err.contains("GPT2LMHeadModel") && err.contains("llama, mistral, qwen2"));
    }

    #[test]
    fn qwen3_reads_head_dim_qk_norms_and_attention_bias() {
        // Qwen3-0.6B's config.json: head_dim 128 is not 1024 / 16 = 64.
        let a = Architecture::from_config_json(
            r#"{"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024,
               "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
               "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": true,
               "attention_bias": false, "rope_theta": 1000000, "sliding_window": null, "use_sliding_window": false}"#,
        )
        .unwrap();
        assert_eq!((a.family, a.head_dim, a.qk_norm, a.qkv_bias, a.o_bias), (Family::Qwen3, 128, true, false, false));
        // transformers: 596,049,920 parameters (28 layers, tied head).
        assert_eq!(a.parameter_counts().total, 596_049_920);
        // attention_bias puts a bias on all four projections (Qwen2 has none on o_proj); untied by default.
        let a = Architecture::from_config_json(
            r#"{"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
               "num_attention_heads": 4, "vocab_size": 100, "attention_bias": true}"#,
        )
        .unwrap();
        assert_eq!((a.head_dim, a.qkv_bias, a.o_bias, a.tie_word_embeddings), (128, true, true, false));
    }

    #[test]
    fn phi3_reads_fused_projections_and_longrope_and_refuses_residual_dropout() {
        let a = Architecture::from_config_json(include_str!("models/microsoft--Phi-3.5-mini-instruct.json")).unwrap();
        let names: Vec<&str> = a.layer_linears().iter().map(|l| l.name).collect();
        assert_eq!(names, ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]);
        // No `factor` in the file: max_position_embeddings / original_max_position_embeddings.
        let s = a.rope_scaling.as_ref().unwrap();
        assert_eq!(
            (s.rope_type.as_str(), s.factor, s.original_max_position_embeddings),
            ("longrope", 32.0, Some(4096))
        );
        assert_eq!(s.short_factor.as_ref().map(Vec::len), Some(48));
        let phi3 = |extra: &str| {
            Architecture::from_config_json(&format!(
                r#"{{"model_type": "phi3", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
                   "num_attention_heads": 4, "vocab_size": 100{extra}}}"#
            ))
        };
        let err = phi3(r#", "resid_pdrop": 0.1"#).unwrap_err();
        assert!(err.contains("resid_pdrop 0.1"), "{err}");
        // transformers' Phi-3 reads the old `su` name as LongRoPE.
        let a = phi3(
            r#", "original_max_position_embeddings": 8, "max_position_embeddings": 32,
               "rope_scaling": {"type": "su", "short_factor": [1, 1, 1, 1, 1, 1, 1, 1], "long_factor": [2, 2, 2, 2, 2, 2, 2, 2]}"#,
        )
        .unwrap();
        assert_eq!(a.rope_scaling.map(|s| (s.rope_type, s.factor)), Some(("longrope".to_string(), 4.0)));
        let a = phi3(r#", "partial_rotary_factor": 0.75"#).unwrap();
        assert_eq!((a.partial_rotary_factor, a.tie_word_embeddings, a.qkv_bias), (Some(0.75), false, false));
    }

    #[test]
    fn olmo2_has_post_norms_and_q_k_norms_over_all_heads() {
        let a = Architecture::from_config_json(include_str!("models/allenai--OLMo-2-1124-7B.json")).unwrap();
        assert!(a.post_norms && a.qk_norm && a.qk_norm_all_heads && !a.fused_projections);
        // Two post-norms and q_norm / k_norm of heads × head_dim each.
        assert_eq!(a.parameter_counts().per_layer - a.parameter_counts().layer_linears, 4 * 4096);
    }
}

//! What Gemma 2 (`gemma2`, `Gemma2ForCausalLM`) and Gemma 3 text (`gemma3_text`,
//! `Gemma3ForCausalLM`) add to the Llama family's dimensions, read from config.json as
//! transformers 5.24's `Gemma2Config` / `Gemma3TextConfig` read it: the attention scale
//! (`query_pre_attn_scalar`), soft-capping of attention scores and final logits, which layers
//! attend within a sliding window (`layer_types`, or the older `sliding_window_pattern`), and
//! Gemma 3's second rope base for its sliding layers (`rope_local_base_freq`, or transformers 5's
//! per-layer-type `rope_parameters`). The model code is model/gemma.rs.

use super::arch::{Family, RopeScaling};
use serde::{Deserialize, Deserializer, Serialize};

/// Gemma's settings beyond the Llama family's (`Architecture::gemma`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gemma {
    /// Scores are scaled by `query_pre_attn_scalar^-0.5`, not `head_dim^-0.5`.
    pub query_pre_attn_scalar: f64,
    /// Gemma 2: scores become `cap · tanh(scores / cap)` before the mask and softmax, which SDPA
    /// cannot do, so these models attend eagerly (the scores are materialised). Gemma 3 never
    /// applies it (transformers' Gemma3Attention does not pass it on), so it is None there.
    pub attn_logit_softcapping: Option<f64>,
    /// Logits become `cap · tanh(logits / cap)` after the head.
    pub final_logit_softcapping: Option<f64>,
    /// Sliding layers see the keys of the last `sliding_window` positions (their own included).
    pub sliding_window: u64,
    /// The layers with global (full causal) attention; every other layer slides.
    pub global_layers: Vec<u64>,
    /// Gemma 3: the sliding layers' rope base (no scaling); the global layers use
    /// `Architecture::rope_theta` / `rope_scaling`. Gemma 2 has one rope for all layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_rope_theta: Option<f64>,
    /// Gemma 3: the global layers' rope, as read (copied into `Architecture`).
    #[serde(skip)]
    pub global_rope: (f64, Option<RopeScaling>),
}

impl Gemma {
    /// Whether layer `l` attends within the sliding window.
    pub fn is_sliding(&self, l: usize) -> bool {
        !self.global_layers.contains(&(l as u64))
    }

    /// The window `l` attends within, if it slides.
    pub fn window_of(&self, l: usize) -> Option<u64> {
        self.is_sliding(l).then_some(self.sliding_window)
    }
}

/// One line for `recipe plan`: what Gemma does beyond the Llama family.
pub fn describe(g: &Gemma, num_layers: u64) -> String {
    let cap = |c: Option<f64>| c.map_or("none".to_string(), |c| c.to_string());
    let sliding = num_layers - g.global_layers.len() as u64;
    let globals = g.global_layers.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    format!(
        "gemma: scores × {}^-0.5, soft-cap attention {} / logits {}, window {} on {sliding} of {num_layers} layers \
         (global: {}){}",
        g.query_pre_attn_scalar,
        cap(g.attn_logit_softcapping),
        cap(g.final_logit_softcapping),
        g.sliding_window,
        if globals.is_empty() { "none".to_string() } else { globals },
        g.local_rope_theta.map_or(String::new(), |t| format!(", sliding layers' rope theta {t}"))
    )
}

/// A field that may be absent (the config class's default) or `null` (None).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
struct Raw {
    num_hidden_layers: u64,
    #[serde(default)]
    query_pre_attn_scalar: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    attn_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    final_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<Option<u64>>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    sliding_window_pattern: Option<u64>,
    #[serde(default)]
    hidden_activation: Option<String>,
    #[serde(default)]
    use_bidirectional_attention: Option<bool>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_local_base_freq: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
}

/// Gemma's settings from a config.json text (None for the other families).
pub fn read(family: Family, text: &str) -> Result<Option<Gemma>, String> {
    let gemma3 = match family {
        Family::Gemma2 => false,
        Family::Gemma3 => true,
        _ => return Ok(None),
    };
    let raw: Raw = serde_json::from_str(text).map_err(|e| format!("config.json: {e}"))?;
    let activation = raw.hidden_activation.as_deref().unwrap_or("gelu_pytorch_tanh");
    if activation != "gelu_pytorch_tanh" {
        return Err(format!(
            "config.json: hidden_activation `{activation}` is not supported (Gemma's MLP is built with gelu_pytorch_tanh)"
        ));
    }
    if raw.use_bidirectional_attention == Some(true) {
        return Err("config.json: use_bidirectional_attention (an encoder such as EmbeddingGemma) is not supported: \
                    recipe trains causal language models"
            .into());
    }
    let n = raw.num_hidden_layers as usize;
    let layer_types = match raw.layer_types.clone() {
        Some(types) => types,
        None => {
            // Gemma2Config: every second layer is global; Gemma3TextConfig: every
            // `sliding_window_pattern`-th (6 by default).
            let pattern = if gemma3 { raw.sliding_window_pattern.unwrap_or(6) } else { 2 };
            if pattern == 0 {
                return Err("config.json: sliding_window_pattern must be positive".into());
            }
            (0..n)
                .map(|i| if (i as u64 + 1) % pattern != 0 { "sliding_attention" } else { "full_attention" }.into())
                .collect()
        }
    };
    if layer_types.len() != n {
        return Err(format!("config.json: layer_types has {} entries for {n} layers", layer_types.len()));
    }
    let mut global_layers = Vec::new();
    for (i, t) in layer_types.iter().enumerate() {
        match t.as_str() {
            "full_attention" => global_layers.push(i as u64),
            "sliding_attention" => {}
            other => {
                return Err(format!(
                    "config.json: layer_types[{i}] `{other}` is not sliding_attention or full_attention"
                ));
            }
        }
    }
    let sliding_window = match raw.sliding_window {
        None => 4096,
        Some(Some(w)) if w > 0 => w,
        Some(_) if global_layers.len() == n => 0,
        Some(_) => return Err("config.json: sliding_window must be a positive number when layers slide".into()),
    };
    let (local_rope_theta, global_rope) = if gemma3 {
        let (global, local) = gemma3_rope(&raw)?;
        (Some(local), global)
    } else {
        (None, (0.0, None))
    };
    Ok(Some(Gemma {
        query_pre_attn_scalar: raw.query_pre_attn_scalar.unwrap_or(256.0),
        attn_logit_softcapping: if gemma3 { None } else { raw.attn_logit_softcapping.unwrap_or(Some(50.0)) },
        final_logit_softcapping: raw.final_logit_softcapping.unwrap_or(if gemma3 { None } else { Some(30.0) }),
        sliding_window,
        global_layers,
        local_rope_theta,
        global_rope,
    }))
}

/// Gemma3TextConfig's `convert_rope_params_to_dict`: per layer type, `rope_parameters[type]`
/// (transformers 5's files), else the older `rope_theta` + `rope_scaling` (global layers) and
/// `rope_local_base_freq` (sliding layers); bases default to 1,000,000 and 10,000.
fn gemma3_rope(raw: &Raw) -> Result<((f64, Option<RopeScaling>), f64), String> {
    let of = |kind: &str| -> serde_json::Map<String, serde_json::Value> {
        raw.rope_parameters.as_ref().and_then(|p| p.get(kind)).and_then(|v| v.as_object()).cloned().unwrap_or_default()
    };
    let mut full = of("full_attention");
    if let Some(serde_json::Value::Object(scaling)) = &raw.rope_scaling {
        full.extend(scaling.clone());
    }
    let theta = |m: &serde_json::Map<String, serde_json::Value>, fallback: f64| {
        m.get("rope_theta").and_then(|v| v.as_f64()).unwrap_or(fallback)
    };
    let global_theta = theta(&full, raw.rope_theta.unwrap_or(1_000_000.0));
    let rope_type = |m: &serde_json::Map<String, serde_json::Value>| {
        m.get("rope_type").or(m.get("type")).and_then(|v| v.as_str()).unwrap_or("default").to_string()
    };
    let scaling = if rope_type(&full) == "default" {
        None
    } else {
        let mut m = full.clone();
        m.remove("rope_theta");
        super::arch::rope_scaling_from_json(serde_json::Value::Object(m), 0)
            .map_err(|e| format!("config.json: rope_parameters.full_attention: {e}"))?
    };
    let local = of("sliding_attention");
    if rope_type(&local) != "default" {
        return Err(format!(
            "config.json: rope_parameters.sliding_attention: rope_type `{}` is not supported (Gemma 3's sliding \
             layers use plain rope)",
            rope_type(&local)
        ));
    }
    let local_theta = theta(&local, raw.rope_local_base_freq.unwrap_or(10_000.0));
    Ok(((global_theta, scaling), local_theta))
}

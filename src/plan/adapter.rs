//! Adapter targets (LoRA or IA3) resolved against the architecture (or prompt and prefix tuning's
//! virtual tokens), and the exact trainable count, as peft's `get_nb_trainable_parameters()` reports
//! it for the same model and LoraConfig / IA3Config / PromptTuningConfig / PrefixTuningConfig.

use super::arch::Architecture;
use crate::config::Config;
use crate::config::adapter::{AdapterKind, PromptTuningInit};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct AdapterPlan {
    /// `lora`, `qlora`, `ia3`, `prompt_tuning`, `prefix_tuning` or `full`.
    pub method: AdapterMethod,
    /// Prompt tuning's virtual tokens (with `method: prompt_tuning`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptTuningPlan>,
    /// Prefix tuning's trained keys and values (with `method: prefix_tuning`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<PrefixTuningPlan>,
    /// Bottleneck adapters (with `method: bottleneck`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bottleneck: Option<super::bottleneck::BottleneckPlan>,
    /// Short module names adapted (`q_proj`, ...), in the architecture's order.
    pub target_modules: Vec<String>,
    /// `lora_target_parameters` as written (sorted, as peft saves `target_parameters`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub target_parameters: Vec<String>,
    /// What they adapt: a mixture of experts' router and fused expert weights, with peft's factor shapes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub adapted_parameters: Vec<super::moe::AdaptedParameter>,
    /// IA3: the targets scaled at their input (peft's `feedforward_modules`); the others scale their output.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub feedforward_modules: Vec<String>,
    /// How many module instances carry an adapter (targets × layers).
    pub adapted_modules: u64,
    pub r: u64,
    pub alpha: u64,
    /// alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub scaling: f64,
    pub rslora: bool,
    pub dora: bool,
    pub dropout: f64,
    pub modules_to_save: Vec<String>,
    /// `lora_model_dir`: a trained peft adapter the run starts from instead of a fresh one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// A full fine-tune of only some parameters (`unfrozen_parameters`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfrozen: Option<super::unfrozen::UnfrozenPlan>,
    pub trainable_parameters: u64,
    /// Parameters of the model with its adapter (peft's "all params").
    pub total_parameters: u64,
    pub trainable_percent: f64,
}

/// Prompt tuning, resolved: `num_virtual_tokens` trained embeddings [num_virtual_tokens, hidden]
/// prepended to every sequence (peft's `prompt_embeddings`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptTuningPlan {
    pub num_virtual_tokens: u64,
    pub init: PromptTuningInit,
    /// With `init: text`: the text whose token embeddings (repeated or cut to
    /// num_virtual_tokens) start the virtual tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_text: Option<String>,
}

/// Prefix tuning, resolved: for each of `num_virtual_tokens` positions, a trained key and value in
/// every layer, as peft's `prompt_embeddings` [num_virtual_tokens, layers × 2 × key_value_dim]
/// (grouped-query heads: the key/value heads' width, as peft sizes it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrefixTuningPlan {
    pub num_virtual_tokens: u64,
    /// num_key_value_heads × head_dim.
    pub key_value_dim: u64,
    /// `prefix_projection`: the keys and values are the output of peft's PrefixEncoder MLP, whose
    /// hidden layer is this wide (`encoder_hidden_size`, by default key_value_dim); absent, they
    /// are trained directly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder_hidden_size: Option<u64>,
}

/// What is trained: every weight, LoRA adapters on a dense or 4-bit base, or virtual tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterMethod {
    /// Full fine-tuning: no adapter.
    Full,
    Lora,
    /// LoRA on a 4-bit (NF4/FP4) base.
    Qlora,
    /// IA3: a learned scale per output (or, in feed-forward modules, input) feature.
    Ia3,
    /// Prompt tuning: trained virtual-token embeddings, the whole model frozen.
    #[serde(rename = "prompt_tuning")]
    PromptTuning,
    /// Prefix tuning: trained keys and values before every sequence in every layer, the model frozen.
    #[serde(rename = "prefix_tuning")]
    PrefixTuning,
    /// AdapterHub's bottleneck adapters after the attention and/or feed-forward blocks, the model frozen.
    Bottleneck,
}

impl AdapterMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterMethod::Full => "full",
            AdapterMethod::Lora => "lora",
            AdapterMethod::Qlora => "qlora",
            AdapterMethod::Ia3 => "ia3",
            AdapterMethod::PromptTuning => "prompt_tuning",
            AdapterMethod::PrefixTuning => "prefix_tuning",
            AdapterMethod::Bottleneck => "bottleneck",
        }
    }
}

impl std::fmt::Display for AdapterMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// peft's default targets for the Llama family when a recipe names none.
const DEFAULT_TARGETS: &[&str] = &["q_proj", "v_proj"];

pub fn plan(c: &Config, arch: &Architecture) -> Result<AdapterPlan, String> {
    // A reward model (transformers' `…ForSequenceClassification`) has a one-output `score` head in
    // place of the language-model head; peft's SEQ_CLS task trains it in full beside the adapter.
    let score_head = if c.training.reward_model { arch.hidden_size } else { 0 };
    let lm_head =
        if c.training.reward_model && !arch.tie_word_embeddings { arch.vocab_size * arch.hidden_size } else { 0 };
    let base_total = arch.parameter_counts().total - lm_head + score_head;
    let a = &c.adapter;
    let Some(kind) = a.adapter else {
        let mut full = AdapterPlan::without_lora(AdapterMethod::Full, base_total, base_total);
        if let Some(unfrozen) = super::unfrozen::plan(c, arch, base_total)? {
            full.trainable_parameters = unfrozen.trainable_parameters;
            full.trainable_percent = 100.0 * unfrozen.trainable_parameters as f64 / base_total as f64;
            full.unfrozen = Some(unfrozen);
        }
        return Ok(full);
    };
    if matches!(kind, AdapterKind::PromptTuning | AdapterKind::PrefixTuning) {
        return virtual_tokens(c, arch, base_total);
    }
    if kind == AdapterKind::Bottleneck {
        use super::arch::Family;
        // adapters' placement is built into the Llama family's layer (model/bottleneck.rs) only.
        if !matches!(arch.family, Family::Llama | Family::Mistral | Family::Qwen2 | Family::Qwen3) {
            return Err(format!(
                "`adapter: bottleneck` is not built for {} yet (Llama, Mistral, Qwen2 and Qwen3 are)",
                arch.class
            ));
        }
        let b = super::bottleneck::plan(c, arch);
        let trainable = b.per_layer_parameters(arch) * arch.num_layers;
        return Ok(AdapterPlan {
            bottleneck: Some(b),
            ..AdapterPlan::without_lora(AdapterMethod::Bottleneck, trainable, base_total + trainable)
        });
    }
    let modules_to_save = modules_to_save(c);
    let saved_params = saved_parameters(arch, &modules_to_save)? + score_head;
    if kind == AdapterKind::Ia3 {
        return ia3(c, arch, base_total, modules_to_save, saved_params);
    }
    let linears = arch.layer_linears();
    let short: Vec<&str> = linears.iter().map(|l| l.short_name()).collect();
    // lora_target_linear adds every linear layer to whatever lora_target_modules names; with
    // neither, peft's defaults apply.
    let mut requested: Vec<&str> = if a.lora_target_linear { short.clone() } else { Vec::new() };
    let adapted_parameters = super::moe::target_parameters(c, arch)?;
    match &a.lora_target_modules {
        Some(list) => requested.extend(list.names()),
        // peft fills in no default modules when target_parameters are given.
        None if !adapted_parameters.is_empty() => {}
        None if !a.lora_target_linear => {
            if matches!(arch.family, super::arch::Family::Phi3 | super::arch::Family::Olmo2) {
                return Err(no_peft_default(arch, "lora_target_modules"));
            }
            requested.extend(DEFAULT_TARGETS)
        }
        None => {}
    }
    let r = u64::from(a.lora_r);
    let mut targets: Vec<String> = Vec::new();
    let mut trainable = 0u64;
    let mut adapted = 0u64;
    for &name in &requested {
        let matched = linears.iter().find(|l| l.name == name || l.short_name() == name);
        match (matched, name) {
            (Some(l), _) => {
                if targets.iter().any(|t| t == l.short_name()) {
                    continue;
                }
                targets.push(l.short_name().to_string());
                let per = r * (l.in_features + l.out_features) + if a.peft_use_dora { l.out_features } else { 0 };
                trainable += per * arch.num_layers;
                adapted += arch.num_layers;
            }
            (None, "lm_head") => {
                if !targets.iter().any(|t| t == "lm_head") {
                    let l = arch.lm_head();
                    targets.push("lm_head".into());
                    trainable +=
                        r * (l.in_features + l.out_features) + if a.peft_use_dora { l.out_features } else { 0 };
                    adapted += 1;
                }
            }
            (None, "embed_tokens") => {
                if !targets.iter().any(|t| t == "embed_tokens") {
                    targets.push("embed_tokens".into());
                    // DoRA's magnitude on an embedding: one per hidden feature (peft's DoraEmbeddingLayer).
                    trainable +=
                        r * (arch.vocab_size + arch.hidden_size) + if a.peft_use_dora { arch.hidden_size } else { 0 };
                    adapted += 1;
                }
            }
            (None, other) => {
                return Err(format!(
                    "`lora_target_modules`: `{other}` is not a module of {}; its linear layers are {}, plus lm_head and embed_tokens",
                    arch.class,
                    short.join(", ")
                ));
            }
        }
    }
    // peft's embedding LoRA and a trained full copy of the embedding exclude each other.
    if targets.iter().any(|t| t == "embed_tokens") && modules_to_save.iter().any(|m| m == "embed_tokens") {
        let why = if c.adapter.lora_modules_to_save.iter().any(|m| m == "embed_tokens") {
            "`lora_modules_to_save` trains it in full"
        } else {
            "the chat template's new `tokens` train it in full (with lm_head)"
        };
        return Err(format!("`lora_target_modules`: `embed_tokens` cannot take LoRA while {why}; keep one of the two"));
    }
    trainable += adapted_parameters.iter().map(|p| p.parameters() * p.layers).sum::<u64>();
    trainable += saved_params;
    let total = base_total + trainable;
    let alpha = a.lora_alpha.map_or(2 * r, u64::from);
    let mut target_parameters =
        if adapted_parameters.is_empty() { Vec::new() } else { a.lora_target_parameters.clone().unwrap_or_default() };
    target_parameters.sort();
    target_parameters.dedup();
    let scaling = if a.peft_use_rslora { alpha as f64 / (r as f64).sqrt() } else { alpha as f64 / r as f64 };
    Ok(AdapterPlan {
        method: match kind {
            AdapterKind::Lora => AdapterMethod::Lora,
            AdapterKind::Qlora => AdapterMethod::Qlora,
            AdapterKind::Ia3 | AdapterKind::PromptTuning | AdapterKind::PrefixTuning | AdapterKind::Bottleneck => {
                unreachable!("planned by ia3(), virtual_tokens() or bottleneck::plan()")
            }
        },
        prompt: None,
        prefix: None,
        bottleneck: None,
        target_modules: targets,
        target_parameters,
        adapted_parameters,
        feedforward_modules: Vec::new(),
        adapted_modules: adapted,
        r,
        alpha,
        scaling,
        rslora: a.peft_use_rslora,
        dora: a.peft_use_dora,
        dropout: a.lora_dropout,
        modules_to_save,
        init_from: a.lora_model_dir.clone(),
        unfrozen: None,
        trainable_parameters: trainable,
        total_parameters: total,
        trainable_percent: 100.0 * trainable as f64 / total as f64,
    })
}

/// Prompt tuning (peft's PromptEmbedding: one trained row of hidden_size per virtual token) or
/// prefix tuning (peft's PrefixEncoder: a key and a value per virtual token and layer, or with
/// projection the MLP that computes them); nothing else trains.
fn virtual_tokens(c: &Config, arch: &Architecture, base_total: u64) -> Result<AdapterPlan, String> {
    let a = &c.adapter;
    let n = u64::from(a.num_virtual_tokens.ok_or("`num_virtual_tokens` is required with prompt or prefix tuning")?);
    let prefix = a.adapter == Some(AdapterKind::PrefixTuning);
    let key_value_dim = arch.num_key_value_heads * arch.head_dim;
    let width = arch.num_layers * 2 * key_value_dim;
    // peft's PrefixEncoder with projection: embedding [N, kv], Linear(kv, E) and Linear(E, width)
    // with biases; E defaults to the key/value width.
    let encoder_hidden_size =
        (prefix && a.prefix_projection == Some(true)).then(|| a.encoder_hidden_size.map_or(key_value_dim, u64::from));
    let trainable = match encoder_hidden_size {
        _ if !prefix => n * arch.hidden_size,
        None => n * width,
        Some(e) => n * key_value_dim + (key_value_dim + 1) * e + (e + 1) * width,
    };
    let total = base_total + trainable;
    Ok(AdapterPlan {
        prompt: (!prefix).then(|| PromptTuningPlan {
            num_virtual_tokens: n,
            init: a.prompt_tuning_init.unwrap_or(PromptTuningInit::Random),
            init_text: a.prompt_tuning_init_text.clone(),
        }),
        prefix: prefix.then_some(PrefixTuningPlan { num_virtual_tokens: n, key_value_dim, encoder_hidden_size }),
        ..AdapterPlan::without_lora(
            if prefix { AdapterMethod::PrefixTuning } else { AdapterMethod::PromptTuning },
            trainable,
            total,
        )
    })
}

/// modules_to_save: a trained full copy of each module; the original stays, frozen. New tokens
/// need trained embeddings and head rows, so `tokens` adds both.
fn modules_to_save(c: &Config) -> Vec<String> {
    let mut modules_to_save = c.adapter.lora_modules_to_save.clone();
    if !c.chat.tokens.is_empty() {
        for m in ["embed_tokens", "lm_head"] {
            if !modules_to_save.iter().any(|x| x == m) {
                modules_to_save.push(m.to_string());
            }
        }
    }
    modules_to_save
}

/// The parameters of the modules_to_save copies.
fn saved_parameters(arch: &Architecture, modules_to_save: &[String]) -> Result<u64, String> {
    let mut saved_params = 0u64;
    for m in modules_to_save {
        saved_params += match m.as_str() {
            "lm_head" => arch.vocab_size * arch.hidden_size,
            "embed_tokens" => arch.vocab_size * arch.hidden_size,
            "norm" => arch.hidden_size,
            other => {
                return Err(format!(
                    "`lora_modules_to_save`: `{other}` is not a module recipe can train in full; use lm_head, embed_tokens or norm"
                ));
            }
        };
    }
    Ok(saved_params)
}

/// peft's IA3 defaults for the Llama family (TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING and
/// …_FEEDFORWARD_MODULES_MAPPING in peft/utils/constants.py).
fn ia3_default_targets(arch: &Architecture) -> Result<&'static [&'static str], String> {
    use super::arch::Family;
    match arch.family {
        Family::Llama | Family::Mistral => Ok(&["k_proj", "v_proj", "down_proj"]),
        Family::Qwen2 | Family::Qwen3 | Family::Gemma2 | Family::Gemma3 => Ok(&["q_proj", "v_proj", "down_proj"]),
        Family::Phi3 | Family::Olmo2 => Err(no_peft_default(arch, "ia3_target_modules")),
        // plan/moe.rs refuses IA3 on a mixture of experts before this is asked.
        Family::Mixtral | Family::Qwen3Moe => Ok(&[]),
    }
}

/// peft 0.21 has no default target modules for Phi-3 or OLMo 2 (its tables list `phi`, not
/// `phi3`): without named targets it stops with "Please specify `target_modules`", and so does
/// the plan, naming the modules there are.
fn no_peft_default(arch: &Architecture, key: &str) -> String {
    let linears: Vec<&str> = arch.layer_linears().iter().map(|l| l.short_name()).collect();
    format!(
        "`{key}` is required for {}: peft has no default target modules for it; name some of {}",
        arch.class,
        linears.join(", ")
    )
}
const IA3_DEFAULT_FEEDFORWARD: &[&str] = &["down_proj"];

/// IA3: one vector per target, `out_features` long (`in_features` for a feed-forward module), as
/// peft's IA3Layer.update_layer shapes it.
fn ia3(
    c: &Config,
    arch: &Architecture,
    base_total: u64,
    modules_to_save: Vec<String>,
    saved_params: u64,
) -> Result<AdapterPlan, String> {
    let a = &c.adapter;
    let linears = arch.layer_linears();
    let short: Vec<&str> = linears.iter().map(|l| l.short_name()).collect();
    let resolve = |key: &str, names: Vec<&str>| -> Result<Vec<String>, String> {
        let mut out: Vec<String> = Vec::new();
        for name in names {
            let Some(l) = linears.iter().find(|l| l.name == name || l.short_name() == name) else {
                return Err(format!(
                    "`{key}`: `{name}` is not a linear layer of {}'s decoder; IA3 adapts {}",
                    arch.class,
                    short.join(", ")
                ));
            };
            if !out.iter().any(|t| t == l.short_name()) {
                out.push(l.short_name().to_string());
            }
        }
        // The architecture's order, so the plan does not depend on how the recipe lists them.
        out.sort_by_key(|t| short.iter().position(|s| s == t));
        Ok(out)
    };
    let targets = resolve(
        "ia3_target_modules",
        match &a.ia3_target_modules {
            Some(l) => l.names(),
            None => ia3_default_targets(arch)?.to_vec(),
        },
    )?;
    let feedforward = match &a.ia3_feedforward_modules {
        Some(list) => {
            let ff = resolve("ia3_feedforward_modules", list.names())?;
            if let Some(stray) = ff.iter().find(|f| !targets.contains(f)) {
                return Err(format!(
                    "`ia3_feedforward_modules`: `{stray}` is not one of the IA3 targets ({}); feed-forward modules \
                     must be a subset of the targets, as peft requires",
                    targets.join(", ")
                ));
            }
            ff
        }
        // peft's default marks down_proj, which matters only where it is a target.
        None => {
            IA3_DEFAULT_FEEDFORWARD.iter().filter(|f| targets.iter().any(|t| t == *f)).map(|f| f.to_string()).collect()
        }
    };
    let per_layer: u64 = linears
        .iter()
        .filter(|l| targets.iter().any(|t| t == l.short_name()))
        .map(|l| if feedforward.iter().any(|f| f == l.short_name()) { l.in_features } else { l.out_features })
        .sum();
    let trainable = per_layer * arch.num_layers + saved_params;
    let total = base_total + trainable;
    Ok(AdapterPlan {
        adapted_modules: targets.len() as u64 * arch.num_layers,
        target_modules: targets,
        feedforward_modules: feedforward,
        modules_to_save,
        init_from: a.lora_model_dir.clone(),
        ..AdapterPlan::without_lora(AdapterMethod::Ia3, trainable, total)
    })
}

impl AdapterPlan {
    /// A plan with no LoRA settings: full fine-tuning, or a method's own fields set over it.
    fn without_lora(method: AdapterMethod, trainable: u64, total: u64) -> AdapterPlan {
        AdapterPlan {
            method,
            prompt: None,
            prefix: None,
            bottleneck: None,
            target_modules: Vec::new(),
            target_parameters: Vec::new(),
            adapted_parameters: Vec::new(),
            feedforward_modules: Vec::new(),
            adapted_modules: 0,
            r: 0,
            alpha: 0,
            scaling: 0.0,
            rslora: false,
            dora: false,
            dropout: 0.0,
            modules_to_save: Vec::new(),
            init_from: None,
            unfrozen: None,
            trainable_parameters: trainable,
            total_parameters: total,
            trainable_percent: 100.0 * trainable as f64 / total as f64,
        }
    }

    /// Adapter parameters in one decoder layer (the rest sit in the root: embed_tokens / lm_head
    /// adapters, modules_to_save copies).
    pub fn per_layer_parameters(&self, arch: &Architecture) -> u64 {
        let bottleneck = self.bottleneck.as_ref().map_or(0, |b| b.per_layer_parameters(arch));
        let linears: u64 = arch
            .layer_linears()
            .iter()
            .filter(|l| self.target_modules.iter().any(|t| t == l.short_name()))
            .map(|l| match self.method {
                AdapterMethod::Ia3 if self.feedforward_modules.iter().any(|f| f == l.short_name()) => l.in_features,
                AdapterMethod::Ia3 => l.out_features,
                _ => self.r * (l.in_features + l.out_features) + if self.dora { l.out_features } else { 0 },
            })
            .sum();
        // The experts' and routers' factors, spread over the layers as the shard layout counts.
        let experts: u64 =
            self.adapted_parameters.iter().map(|p| p.parameters() * p.layers).sum::<u64>() / arch.num_layers.max(1);
        linears + bottleneck + experts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_are_the_serialized_names() {
        for m in [
            AdapterMethod::Full,
            AdapterMethod::Lora,
            AdapterMethod::Qlora,
            AdapterMethod::Ia3,
            AdapterMethod::PromptTuning,
            AdapterMethod::PrefixTuning,
            AdapterMethod::Bottleneck,
        ] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
    }
}

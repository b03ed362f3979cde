//! peft's on-disk adapter format: `adapter_config.json` (read and written; LoRA/DoRA and prompt
//! tuning) and the trainable tensors under peft's names in `adapter_model.safetensors`, so `PeftModel.from_pretrained` loads
//! what `recipe run` writes and `recipe generate`/`merge` load what peft writes.

use super::llama::{CausalLm, PromptInit, Trainable};
use super::weights::Checkpoint;
use serde_json::{Value, json};
use std::path::Path;
use tch::Kind;

/// The adapter (LoRA or IA3) an adapter_config.json describes.
pub struct AdapterConfig {
    pub base_model: String,
    pub trainable: Trainable,
    /// peft's SEQ_CLS task: the adapter belongs to a reward model (a `score` head).
    pub sequence_classification: bool,
}

/// Reads peft's adapter_config.json (LoRA, with or without DoRA; IA3; or prompt or prefix tuning).
pub fn read_config(dir: &Path) -> Result<AdapterConfig, String> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
    if super::bottleneck::is_adapters_config(&v) {
        let (base_model, trainable) = super::bottleneck::read_config(&path, &v)?;
        return Ok(AdapterConfig { base_model, trainable, sequence_classification: false });
    }
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    let ia3 = match field("peft_type").and_then(Value::as_str) {
        None | Some("LORA") => false,
        Some("IA3") => true,
        Some("PROMPT_TUNING" | "PREFIX_TUNING") => return read_prompt_config(&path, &v),
        Some(t) => {
            return Err(format!(
                "{}: peft_type `{t}` is not supported (LORA, IA3, PROMPT_TUNING or PREFIX_TUNING)",
                path.display()
            ));
        }
    };
    let strings = |k: &str| -> Vec<String> {
        match field(k) {
            Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        }
    };
    let targets = strings("target_modules");
    let parameters = strings("target_parameters");
    if targets.is_empty() && parameters.is_empty() {
        return Err(format!("{}: `target_modules` must list module names", path.display()));
    }
    let sequence_classification = match field("task_type").and_then(Value::as_str) {
        None | Some("CAUSAL_LM") => false,
        Some("SEQ_CLS") => true,
        Some(other) => {
            return Err(format!("{}: task_type `{other}` is not supported (CAUSAL_LM or SEQ_CLS)", path.display()));
        }
    };
    let mut modules_to_save = strings("modules_to_save");
    if sequence_classification && !modules_to_save.iter().any(|m| m == "score") {
        // peft saves a SEQ_CLS model's head whether or not the config lists it.
        modules_to_save.push("score".into());
    }
    let base_model = field("base_model_name_or_path").and_then(Value::as_str).unwrap_or_default().to_string();
    if ia3 {
        // peft's IA3 defaults apply only when the config leaves them out; a saved config lists both.
        if matches!(field("target_modules"), Some(Value::String(_)))
            || matches!(field("feedforward_modules"), Some(Value::String(_)))
        {
            return Err(format!(
                "{}: IA3 module patterns (regex strings) are not supported; list names",
                path.display()
            ));
        }
        let feedforward = strings("feedforward_modules");
        if let Some(stray) = feedforward.iter().find(|f| !targets.contains(f)) {
            return Err(format!("{}: feedforward module `{stray}` is not in target_modules", path.display()));
        }
        return Ok(AdapterConfig {
            sequence_classification,
            base_model,
            trainable: Trainable::Ia3 { targets, feedforward, modules_to_save },
        });
    }
    let r = field("r").and_then(Value::as_i64).ok_or_else(|| format!("{}: no integer `r`", path.display()))?;
    let alpha = field("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
    let rslora = field("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    Ok(AdapterConfig {
        sequence_classification,
        base_model,
        trainable: Trainable::Lora {
            targets,
            parameters,
            r,
            scaling: lora_scaling(alpha, r, rslora),
            dropout: field("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
            dora: field("use_dora").and_then(Value::as_bool).unwrap_or(false),
            modules_to_save,
        },
    })
}

/// A PROMPT_TUNING or PREFIX_TUNING config: the virtual tokens' count (their values are the saved
/// ones). Only the causal-LM task with one transformer submodule is a decoder-only model's.
fn read_prompt_config(path: &Path, v: &Value) -> Result<AdapterConfig, String> {
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    match field("task_type").and_then(Value::as_str) {
        None | Some("CAUSAL_LM") => {}
        Some(other) => {
            return Err(format!(
                "{}: prompt tuning for task_type `{other}` is not supported (CAUSAL_LM)",
                path.display()
            ));
        }
    }
    if let Some(k) = field("num_transformer_submodules").and_then(Value::as_i64).filter(|&k| k != 1) {
        return Err(format!("{}: num_transformer_submodules {k}: a decoder-only model has 1", path.display()));
    }
    let n = field("num_virtual_tokens")
        .and_then(Value::as_i64)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{}: no positive integer `num_virtual_tokens`", path.display()))?;
    // A prefix is read as its keys and values whether or not peft trained it through its
    // PrefixEncoder MLP (`prefix_projection`): peft saves the MLP's output, and reads it back so.
    let prefix = field("peft_type").and_then(Value::as_str) == Some("PREFIX_TUNING");
    Ok(AdapterConfig {
        base_model: field("base_model_name_or_path").and_then(Value::as_str).unwrap_or_default().to_string(),
        trainable: if prefix {
            Trainable::Prefix { num_virtual_tokens: n, projection: None }
        } else {
            Trainable::Prompt { num_virtual_tokens: n, init: PromptInit::Random }
        },
        sequence_classification: false,
    })
}

/// peft's adapter_config.json for prompt tuning (a PromptTuningConfig as `save_pretrained` writes
/// it); `tokenizer_name_or_path` is the base's when the text init used its tokenizer, as peft needs.
pub fn write_prompt_config(
    dir: &Path,
    base_model: &str,
    prompt: &crate::plan::adapter::PromptTuningPlan,
    arch: &crate::plan::arch::Architecture,
) -> Result<(), String> {
    let text_init = prompt.init_text.is_some();
    let config = json!({
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "inference_mode": true,
        "modules_to_save": null,
        "num_attention_heads": arch.num_attention_heads,
        "num_layers": arch.num_layers,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": prompt.num_virtual_tokens,
        "peft_type": "PROMPT_TUNING",
        "prompt_tuning_init": if text_init { "TEXT" } else { "RANDOM" },
        "prompt_tuning_init_text": prompt.init_text,
        "revision": null,
        "task_type": "CAUSAL_LM",
        "token_dim": arch.hidden_size,
        "tokenizer_kwargs": null,
        "tokenizer_name_or_path": if text_init { json!(base_model) } else { Value::Null },
    });
    let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())? + "\n";
    super::weights::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
}

/// peft's adapter_config.json for prefix tuning (a PrefixTuningConfig as `save_pretrained` writes
/// it): with grouped-query heads peft sizes the prefix by the key/value heads, so its
/// `num_attention_heads` is the key/value head count and `token_dim` their width. `projection`:
/// the MLP's hidden size when the prefix was trained through it (`prefix_projection`).
pub fn write_prefix_config(
    dir: &Path,
    base_model: &str,
    num_virtual_tokens: i64,
    projection: Option<i64>,
    arch: &crate::plan::arch::Architecture,
) -> Result<(), String> {
    let token_dim = arch.num_key_value_heads * arch.head_dim;
    let config = json!({
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "encoder_hidden_size": projection.map_or(token_dim as i64, |e| e),
        "inference_mode": true,
        "init_weights": null,
        "modules_to_save": null,
        "num_attention_heads": arch.num_key_value_heads,
        "num_layers": arch.num_layers,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": num_virtual_tokens,
        "peft_type": "PREFIX_TUNING",
        "prefix_projection": projection.is_some(),
        "revision": null,
        "task_type": "CAUSAL_LM",
        "token_dim": token_dim,
    });
    let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())? + "\n";
    super::weights::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
}

/// peft's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA.
pub fn lora_scaling(alpha: f64, r: i64, rslora: bool) -> f64 {
    if rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 }
}

/// peft's adapter_config.json for a LoRA adapter (`use_dora` for DoRA, whose magnitudes are saved
/// as `…lora_magnitude_vector`); a reward model's is peft's SEQ_CLS task, whose
/// `score` head is saved in full (peft adds it to modules_to_save).
pub fn write_config(
    dir: &Path,
    base_model: &str,
    plan: &crate::plan::adapter::AdapterPlan,
    reward_model: bool,
) -> Result<(), String> {
    let mut modules_to_save = plan.modules_to_save.clone();
    if reward_model && !modules_to_save.iter().any(|m| m == "score") {
        modules_to_save.push("score".into());
    }
    let modules_to_save = if modules_to_save.is_empty() { Value::Null } else { json!(modules_to_save) };
    let task_type = if reward_model { "SEQ_CLS" } else { "CAUSAL_LM" };
    let config = if plan.method == crate::plan::adapter::AdapterMethod::Ia3 {
        // peft's IA3Config fields.
        json!({
            "base_model_name_or_path": base_model,
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "feedforward_modules": plan.feedforward_modules,
            "inference_mode": true,
            "init_ia3_weights": true,
            "modules_to_save": modules_to_save,
            "peft_type": "IA3",
            "revision": null,
            "target_modules": plan.target_modules,
            "task_type": task_type,
        })
    } else {
        json!({
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "lora_alpha": plan.alpha,
        "lora_dropout": plan.dropout,
        "modules_to_save": modules_to_save,
        "peft_type": "LORA",
        "r": plan.r,
        "target_modules": plan.target_modules,
        // peft's key for LoRA on parameters (a mixture of experts' router and fused experts).
        "target_parameters": if plan.target_parameters.is_empty() { Value::Null } else { json!(plan.target_parameters) },
        "task_type": task_type,
        "use_dora": plan.dora,
        "use_rslora": plan.rslora,
        "revision": null,
        })
    };
    let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())? + "\n";
    super::weights::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
}

/// peft's extra tensors for an adapter: with LoRA on the head or the embedding, its base weight
/// (`save_embedding_layers`), so the adapter carries the layer it was trained against.
pub fn extra_tensors(model: &CausalLm) -> Vec<(String, tch::Tensor)> {
    let mut out = Vec::new();
    if model.embed_lora.is_some() {
        out.push((embed_base_name(), model.embed_tokens.detach()));
    }
    if model.lm_head.adapter.is_some() {
        out.push((head_base_name(), model.lm_head.weight.detach()));
    }
    out
}

fn head_base_name() -> String {
    format!("{}.base_layer.weight", super::llama::peft_prefix("lm_head"))
}

fn embed_base_name() -> String {
    format!("{}.base_layer.weight", super::llama::peft_prefix("model.embed_tokens"))
}

/// Copies every trainable tensor of `model` from `ckpt` (by the name it is saved under).
pub fn load_trainable(model: &CausalLm, ckpt: &Checkpoint) -> Result<(), String> {
    let _guard = tch::no_grad_guard();
    for p in model.trainable_params() {
        let t = ckpt.load(&p.name, &p.tensor.size(), p.tensor.kind(), p.tensor.device())?;
        let mut target = p.tensor.shallow_clone();
        target.copy_(&t);
    }
    // peft saves the base weight of a LoRA-targeted head or embedding with the adapter (its
    // embedding layers): check it matches the base this adapter is applied to.
    let (head_base, embed_base) = (head_base_name(), embed_base_name());
    for (name, w, what) in
        [(&head_base, &model.lm_head.weight, "head"), (&embed_base, &model.embed_tokens, "embedding")]
    {
        if ckpt.contains(name) {
            let saved = ckpt.load(name, &w.size(), Kind::Float, w.device())?;
            let diff = (saved - w.to_kind(Kind::Float)).abs().max().double_value(&[]);
            if diff > 1e-6 {
                return Err(format!("`{name}` differs from the base model's {what} by {diff:e}: another base?"));
            }
        }
    }
    let extra: Vec<String> = {
        let wanted: std::collections::HashSet<String> = model.trainable_params().into_iter().map(|p| p.name).collect();
        ckpt.names()
            .filter(|n| !wanted.contains(*n) && **n != *head_base && **n != *embed_base)
            .map(str::to_owned)
            .collect()
    };
    if !extra.is_empty() {
        return Err(format!(
            "the adapter has tensors this model and adapter config do not use: {}",
            extra.iter().take(5).map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

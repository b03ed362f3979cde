//! Where the base model's config.json comes from, in this order: a local folder; the Hugging Face
//! cache (HF_HUB_CACHE / HF_HOME honoured); the built-in table of well-known base models
//! (models/*.json: no network for them, and the plan says so); else the hub through hf-hub,
//! config.json alone, at the pinned revision (HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE honoured).

use super::arch::{Architecture, ParameterCounts};
use crate::config::Config;
use crate::config::location::{Location, resolve_location};
use crate::data::sources::Hub;
use crate::recipe::check::Locator;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct ModelPlan {
    /// As written in the recipe.
    pub name: String,
    /// `local`, `hub` (config.json from the HF cache) or `builtin` (offline table).
    pub source_kind: String,
    /// A sentence saying where config.json was read.
    pub config_source: String,
    pub revision: Option<String>,
    /// The model folder, when local.
    pub local_dir: Option<String>,
    pub architecture: Architecture,
    pub parameters: ParameterCounts,
    /// `tokenizer_config`: the tokenizer, when it comes from elsewhere than the base model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerSource>,
}

/// Where a tokenizer other than the base model's comes from.
#[derive(Debug, Clone, Serialize)]
pub struct TokenizerSource {
    /// As written in the recipe.
    pub name: String,
    /// The folder, when local; else `name` is a hub id whose tokenizer files are fetched.
    pub local_dir: Option<String>,
}

/// The built-in table: hub id -> config.json text.
pub const BUILTIN_MODELS: &[(&str, &str)] = &[
    ("meta-llama/Llama-2-7b-hf", include_str!("models/meta-llama--Llama-2-7b-hf.json")),
    ("meta-llama/Llama-2-13b-hf", include_str!("models/meta-llama--Llama-2-13b-hf.json")),
    ("meta-llama/Llama-2-70b-hf", include_str!("models/meta-llama--Llama-2-70b-hf.json")),
    ("huggyllama/llama-65b", include_str!("models/huggyllama--llama-65b.json")),
    ("meta-llama/Meta-Llama-3-8B", include_str!("models/meta-llama--Meta-Llama-3-8B.json")),
    ("meta-llama/Meta-Llama-3-70B", include_str!("models/meta-llama--Meta-Llama-3-70B.json")),
    ("meta-llama/Llama-3.1-8B", include_str!("models/meta-llama--Llama-3.1-8B.json")),
    ("meta-llama/Llama-3.1-70B", include_str!("models/meta-llama--Llama-3.1-70B.json")),
    ("meta-llama/Llama-3.2-1B", include_str!("models/meta-llama--Llama-3.2-1B.json")),
    ("meta-llama/Llama-3.2-3B", include_str!("models/meta-llama--Llama-3.2-3B.json")),
    ("mistralai/Mistral-7B-v0.1", include_str!("models/mistralai--Mistral-7B-v0.1.json")),
    ("Qwen/Qwen2.5-0.5B", include_str!("models/Qwen--Qwen2.5-0.5B.json")),
    ("Qwen/Qwen2.5-1.5B", include_str!("models/Qwen--Qwen2.5-1.5B.json")),
    ("Qwen/Qwen2.5-3B", include_str!("models/Qwen--Qwen2.5-3B.json")),
    ("Qwen/Qwen2.5-7B", include_str!("models/Qwen--Qwen2.5-7B.json")),
    ("Qwen/Qwen2.5-14B", include_str!("models/Qwen--Qwen2.5-14B.json")),
    ("Qwen/Qwen2.5-32B", include_str!("models/Qwen--Qwen2.5-32B.json")),
    ("Qwen/Qwen2.5-72B", include_str!("models/Qwen--Qwen2.5-72B.json")),
    ("Qwen/Qwen3-0.6B", include_str!("models/Qwen--Qwen3-0.6B.json")),
    ("Qwen/Qwen3-1.7B", include_str!("models/Qwen--Qwen3-1.7B.json")),
    ("Qwen/Qwen3-4B", include_str!("models/Qwen--Qwen3-4B.json")),
    ("Qwen/Qwen3-8B", include_str!("models/Qwen--Qwen3-8B.json")),
    ("Qwen/Qwen3-14B", include_str!("models/Qwen--Qwen3-14B.json")),
    ("Qwen/Qwen3-32B", include_str!("models/Qwen--Qwen3-32B.json")),
    ("google/gemma-2-2b", include_str!("models/google--gemma-2-2b.json")),
    ("google/gemma-2-9b", include_str!("models/google--gemma-2-9b.json")),
    ("google/gemma-3-1b-pt", include_str!("models/google--gemma-3-1b-pt.json")),
    ("google/gemma-3-1b-it", include_str!("models/google--gemma-3-1b-it.json")),
    ("microsoft/Phi-3-mini-4k-instruct", include_str!("models/microsoft--Phi-3-mini-4k-instruct.json")),
    ("microsoft/Phi-3.5-mini-instruct", include_str!("models/microsoft--Phi-3.5-mini-instruct.json")),
    ("microsoft/phi-4", include_str!("models/microsoft--phi-4.json")),
    ("allenai/OLMo-2-1124-7B", include_str!("models/allenai--OLMo-2-1124-7B.json")),
    ("mistralai/Mixtral-8x7B-v0.1", include_str!("models/mistralai--Mixtral-8x7B-v0.1.json")),
    ("Qwen/Qwen3-30B-A3B", include_str!("models/Qwen--Qwen3-30B-A3B.json")),
];

/// The built-in config.json for a hub id (Instruct/chat variants share their base's shapes
/// except where noted, so only exact ids match).
pub fn builtin(id: &str) -> Option<&'static str> {
    BUILTIN_MODELS.iter().find(|(name, _)| name.eq_ignore_ascii_case(id)).map(|(_, text)| *text)
}

pub fn resolve(c: &Config, at: &Locator) -> Result<ModelPlan, String> {
    let name = c.model.base_model.clone().ok_or("`base_model` is not set")?;
    let config_name = c.model.base_model_config.clone().unwrap_or_else(|| name.clone());
    let key = if c.model.base_model_config.is_some() { "base_model_config" } else { "base_model" };
    let base = at.base_dir(key);
    let revision = c.model.revision_of_model.clone();
    let (source_kind, config_source, local_dir, text) = match resolve_location(&config_name, &base) {
        Location::Local(dir) => {
            let file = dir.join("config.json");
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("`{key}`: cannot read {}: {e}", file.display()))?;
            ("local", format!("local folder {}", dir.display()), Some(dir.display().to_string()), text)
        }
        // The cache first, then the built-in table (no network for the models it knows), then the hub.
        Location::Hub(id) => match (cached_config(&id, revision.as_deref()), builtin(&id)) {
            (Some((file, text)), _) => ("hub", format!("Hugging Face cache {}", file.display()), None, text),
            (None, Some(text)) => (
                "builtin",
                format!("built-in table (offline: {id} is not in the Hugging Face cache; nothing downloaded)"),
                None,
                text.to_string(),
            ),
            (None, None) if offline() => {
                return Err(format!(
                    "`{key}`: {id} is not in the Hugging Face cache nor in the built-in table of {} models, and \
                     HF_HUB_OFFLINE is set; download its config.json first or use a local folder",
                    BUILTIN_MODELS.len()
                ));
            }
            (None, None) => match download_config(&id, revision.as_deref()) {
                Ok((file, text)) => {
                    ("hub", format!("Hugging Face hub, config.json cached at {}", file.display()), None, text)
                }
                Err(e) => {
                    return Err(format!(
                        "`{key}`: {id} is not in the Hugging Face cache nor in the built-in table of {} models, \
                         and fetching its config.json failed: {e}",
                        BUILTIN_MODELS.len()
                    ));
                }
            },
        },
        Location::Invalid => return Err(format!("`{key}`: `{config_name}` is neither a local folder nor a hub id")),
    };
    let mut architecture =
        Architecture::from_config_json(&text).map_err(|e| format!("`{key}` ({config_source}): {e}"))?;
    super::moe::apply_overrides(c, &mut architecture)?;
    let parameters = architecture.parameter_counts();
    let tokenizer = match &c.model.tokenizer_config {
        Some(t) if Some(t) != c.model.base_model.as_ref() => {
            Some(match resolve_location(t, &at.base_dir("tokenizer_config")) {
                Location::Local(dir) if dir.join("tokenizer.json").is_file() => {
                    TokenizerSource { name: t.clone(), local_dir: Some(dir.display().to_string()) }
                }
                Location::Local(dir) => {
                    return Err(format!("`tokenizer_config`: {} has no tokenizer.json", dir.display()));
                }
                Location::Hub(id) => TokenizerSource { name: id, local_dir: None },
                Location::Invalid => {
                    return Err(format!("`tokenizer_config`: `{t}` is neither a local folder nor a hub id"));
                }
            })
        }
        _ => None,
    };
    Ok(ModelPlan {
        tokenizer,
        name,
        source_kind: source_kind.to_string(),
        config_source,
        revision,
        local_dir,
        architecture,
        parameters,
    })
}

/// The Hugging Face hub cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
fn hub_cache() -> Option<hf_hub::Cache> {
    Hub::from_env().cache.map(hf_hub::Cache::new)
}

fn hub_repo(id: &str, revision: Option<&str>) -> hf_hub::Repo {
    hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, revision.unwrap_or("main").to_string())
}

/// config.json of `id` at `revision` from the Hugging Face cache, when present.
fn cached_config(id: &str, revision: Option<&str>) -> Option<(PathBuf, String)> {
    let file = hub_cache()?.repo(hub_repo(id, revision)).get("config.json")?;
    let text = std::fs::read_to_string(&file).ok()?;
    Some((file, text))
}

/// True when HF_HUB_OFFLINE says not to touch the network.
fn offline() -> bool {
    Hub::from_env().offline
}

fn hub_api() -> Result<hf_hub::api::sync::Api, String> {
    Hub::from_env().api()
}

/// Downloads config.json alone into the Hugging Face cache (HF_ENDPOINT and HF_TOKEN honoured).
fn download_config(id: &str, revision: Option<&str>) -> Result<(PathBuf, String), String> {
    let api = hub_api()?;
    let file = api.repo(hub_repo(id, revision)).get("config.json").map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((file, text))
}

/// The folder holding a model's files for the executor: the local folder, or the Hugging Face
/// cache snapshot after fetching config.json, the tokenizer files and the safetensors weights
/// (sharded through the index) at the pinned revision. Honours HF_HUB_OFFLINE (cache only).
pub fn model_folder(plan: &ModelPlan) -> Result<PathBuf, String> {
    fetch_folder(plan, true)
}

/// Like `model_folder` without the weights: config.json and the tokenizer files only. With
/// `tokenizer_config`, that tokenizer's folder (its tokenizer files fetched from the hub for a hub id).
pub fn tokenizer_folder(plan: &ModelPlan) -> Result<PathBuf, String> {
    match &plan.tokenizer {
        Some(TokenizerSource { local_dir: Some(dir), .. }) => Ok(PathBuf::from(dir)),
        Some(TokenizerSource { name, local_dir: None }) => fetch_tokenizer(name),
        None => fetch_folder(plan, false),
    }
}

/// The tokenizer files of hub repo `id` (main): tokenizer.json required, the rest when present.
fn fetch_tokenizer(id: &str) -> Result<PathBuf, String> {
    let repo = hub_repo(id, None);
    let fetch = |name: &str| -> Result<Option<PathBuf>, String> {
        if let Some(p) = hub_cache().and_then(|c| c.repo(repo.clone()).get(name)) {
            return Ok(Some(p));
        }
        if offline() {
            return Ok(None);
        }
        Ok(hub_api()?.repo(repo.clone()).get(name).ok())
    };
    let tokenizer = fetch("tokenizer.json")?.ok_or_else(|| {
        format!("tokenizer_config {id}: tokenizer.json is not in the Hugging Face cache and could not be fetched")
    })?;
    for name in ["tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"] {
        fetch(name)?;
    }
    Ok(tokenizer.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn fetch_folder(plan: &ModelPlan, weights: bool) -> Result<PathBuf, String> {
    if let Some(dir) = &plan.local_dir {
        return Ok(PathBuf::from(dir));
    }
    let id = &plan.name;
    let repo = hub_repo(id, plan.revision.as_deref());
    let fetch = |name: &str, required: bool| -> Result<Option<PathBuf>, String> {
        if let Some(p) = hub_cache().and_then(|c| c.repo(repo.clone()).get(name)) {
            return Ok(Some(p));
        }
        if offline() {
            return if required {
                Err(format!("{id}: {name} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"))
            } else {
                Ok(None)
            };
        }
        match hub_api()?.repo(repo.clone()).get(name) {
            Ok(p) => Ok(Some(p)),
            Err(e) if required => Err(format!("{id}: cannot fetch {name}: {e}")),
            Err(_) => Ok(None),
        }
    };
    let config = fetch("config.json", true)?.ok_or("config.json")?;
    // chat_template.jinja: where transformers 4.45+ keeps a model's template (tokenizer_default reads it first).
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        fetch(name, false)?;
    }
    if !weights {
        return Ok(config.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    match fetch("model.safetensors.index.json", false)? {
        Some(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| format!("{}: {e}", index.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
            let shards: std::collections::BTreeSet<&str> = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .into_iter()
                .flatten()
                .filter_map(|(_, f)| f.as_str())
                .collect();
            for shard in shards {
                fetch(shard, true)?;
            }
        }
        None => {
            fetch("model.safetensors", true)?;
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// For tests and tools: the architecture of a built-in model.
pub fn builtin_architecture(id: &str) -> Option<Architecture> {
    builtin(id).and_then(|t| Architecture::from_config_json(t).ok())
}

/// For tests: the architecture in a local folder.
pub fn local_architecture(dir: &Path) -> Result<Architecture, String> {
    let text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| e.to_string())?;
    Architecture::from_config_json(&text)
}

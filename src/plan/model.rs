//! Where the base model's config.json comes from: a local folder, the Hugging Face cache
//! (HF_HOME / HF_HUB_CACHE honoured, nothing downloaded), or the built-in table of well-known base
//! models (models/*.json, used offline, and the plan says so).

use super::arch::{Architecture, ParameterCounts};
use crate::config::Config;
use crate::config::location::{Location, resolve_location};
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
        Location::Hub(id) => match cached_config(&id, revision.as_deref()) {
            Some((file, text)) => ("hub", format!("Hugging Face cache {}", file.display()), None, text),
            None => match builtin(&id) {
                Some(text) => (
                    "builtin",
                    format!("built-in table (offline: {id} is not in the Hugging Face cache)"),
                    None,
                    text.to_string(),
                ),
                None => {
                    return Err(format!(
                        "`{key}`: {id} is not in the Hugging Face cache and not in the built-in table of {} models; \
                         download it first (huggingface-cli download {id} config.json) or use a local folder",
                        BUILTIN_MODELS.len()
                    ));
                }
            },
        },
        Location::Invalid => return Err(format!("`{key}`: `{config_name}` is neither a local folder nor a hub id")),
    };
    let architecture = Architecture::from_config_json(&text).map_err(|e| format!("`{key}` ({config_source}): {e}"))?;
    let parameters = architecture.parameter_counts();
    Ok(ModelPlan {
        name,
        source_kind: source_kind.to_string(),
        config_source,
        revision,
        local_dir,
        architecture,
        parameters,
    })
}

/// config.json of `id` from the Hugging Face cache layout (`models--org--name/snapshots/REV/`).
fn cached_config(id: &str, revision: Option<&str>) -> Option<(PathBuf, String)> {
    let hub = match (std::env::var_os("HF_HUB_CACHE"), std::env::var_os("HF_HOME"), std::env::var_os("HOME")) {
        (Some(cache), _, _) => PathBuf::from(cache),
        (None, Some(home), _) => PathBuf::from(home).join("hub"),
        (None, None, Some(home)) => PathBuf::from(home).join(".cache/huggingface/hub"),
        _ => return None,
    };
    let repo = hub.join(format!("models--{}", id.replace('/', "--")));
    let commit = match revision {
        Some(rev) if rev.len() == 40 => rev.to_string(),
        rev => std::fs::read_to_string(repo.join("refs").join(rev.unwrap_or("main"))).ok()?.trim().to_string(),
    };
    let file = repo.join("snapshots").join(commit).join("config.json");
    let text = std::fs::read_to_string(&file).ok()?;
    Some((file, text))
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

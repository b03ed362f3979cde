//! The data sections of the plan: the chat template (name, source, sha256 of its text) and each
//! dataset with its source, masking policy and, for local JSON / JSON Lines files, its row count.

use super::model::ModelPlan;
use crate::config::Config;
use crate::config::chat_template::ChatTemplateName;
use crate::config::datasets::{DatasetConfig, FileFormat};
use crate::config::location::{Location, resolve_location};
use crate::recipe::check::Locator;
use serde::Serialize;
use sha2::Digest;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct TemplatePlan {
    pub name: String,
    /// Where the text comes from: `templates/NAME.jinja`, a file, inline, or the tokenizer.
    pub source: String,
    /// sha256 of the template text, when it is known before the tokenizer is loaded.
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetPlan {
    pub r#type: String,
    /// `local PATH` or `hub ID@REVISION`.
    pub source: String,
    pub split: String,
    /// Which tokens carry labels.
    pub masking: String,
    /// Rows, when the source is a local JSON / JSON Lines file (counted without tokenizing).
    pub rows: Option<u64>,
    /// The dataset entry as the recipe gives it (its values are in `settings`).
    #[serde(skip)]
    pub entry: DatasetConfig,
    /// The file or folder, for local sources.
    #[serde(skip)]
    pub local_path: Option<std::path::PathBuf>,
}

pub fn chat_template(c: &Config, at: &Locator, model: &ModelPlan) -> Option<TemplatePlan> {
    let uses_chat = c.data.datasets.iter().any(|d| matches!(d, DatasetConfig::ChatTemplate(_)));
    let name = c.chat.chat_template.or(uses_chat.then_some(ChatTemplateName::TokenizerDefault))?;
    let hash = |text: &str| Some(sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect());
    let (source, sha256) = match name {
        ChatTemplateName::Jinja => {
            let text = c.chat.chat_template_jinja.clone().unwrap_or_default();
            if text.ends_with(".jinja") {
                let path = at.base_dir("chat_template_jinja").join(&text);
                let content = std::fs::read_to_string(&path).ok();
                (format!("file {}", path.display()), content.as_deref().and_then(hash))
            } else {
                ("inline chat_template_jinja".to_string(), hash(&text))
            }
        }
        ChatTemplateName::TokenizerDefault => match &model.local_dir {
            Some(dir) => {
                let path = std::path::Path::new(dir).join("tokenizer_config.json");
                let text = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v.get("chat_template").and_then(|t| t.as_str()).map(str::to_owned));
                match text {
                    Some(t) => (format!("{} (chat_template)", path.display()), hash(&t)),
                    None => (format!("{}: has no chat_template", path.display()), None),
                }
            }
            None => ("the model's tokenizer_config.json (known once downloaded)".to_string(), None),
        },
        builtin => (format!("templates/{}.jinja", builtin.as_str()), builtin.builtin_text().and_then(hash)),
    };
    Some(TemplatePlan { name: name.as_str().to_string(), source, sha256 })
}

/// How samples are made from the datasets' rows: the data section of the recipe, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct DataOptions {
    pub sequence_len: u64,
    pub sample_packing: bool,
    pub eval_sample_packing: bool,
    pub pad_to_sequence_len: bool,
    pub train_on_inputs: bool,
    pub val_set_size: f64,
    pub shuffle: bool,
    pub excess_length_strategy: crate::config::datasets::ExcessLength,
    pub exact_deduplication: bool,
    pub normalized_deduplication: bool,
    pub redact_pii: bool,
    pub skip_bad_rows: bool,
    /// Where `recipe preprocess` caches tokenized data (relative to the working directory).
    pub prepared_path: Option<String>,
    pub seed: u64,
    /// Special tokens set on the tokenizer (added when new).
    pub special_tokens: crate::config::chat_template::SpecialTokens,
    /// Tokens added to the vocabulary; the model's embeddings grow to match.
    pub added_tokens: Vec<String>,
}

pub fn options(c: &Config) -> DataOptions {
    let d = &c.data;
    DataOptions {
        sequence_len: u64::from(d.sequence_len),
        sample_packing: d.sample_packing,
        eval_sample_packing: d.eval_sample_packing.unwrap_or(d.sample_packing),
        pad_to_sequence_len: d.pad_to_sequence_len,
        train_on_inputs: d.train_on_inputs,
        val_set_size: d.val_set_size,
        shuffle: d.shuffle_merged_datasets,
        excess_length_strategy: d.excess_length_strategy,
        exact_deduplication: d.dataset_exact_deduplication,
        normalized_deduplication: d.dataset_normalized_deduplication,
        redact_pii: d.redact_pii,
        skip_bad_rows: d.skip_bad_rows,
        prepared_path: d.dataset_prepared_path.clone(),
        seed: c.training.seed,
        special_tokens: c.chat.special_tokens.clone(),
        added_tokens: c.chat.tokens.clone(),
    }
}

/// The training datasets.
pub fn datasets(c: &Config, at: &Locator) -> Vec<DatasetPlan> {
    plan_datasets(c, &c.data.datasets, "datasets", at)
}

/// The held-out test datasets (never trained on).
pub fn test_datasets(c: &Config, at: &Locator) -> Vec<DatasetPlan> {
    plan_datasets(c, &c.data.test_datasets, "test_datasets", at)
}

fn plan_datasets(c: &Config, entries: &[DatasetConfig], key: &str, at: &Locator) -> Vec<DatasetPlan> {
    entries
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let src = d.source();
            let location = resolve_location(&src.path, &at.base_dir(&format!("{key}.{i}.path")));
            let (source, rows, local_path) = match location {
                Location::Local(path) => {
                    (format!("local {}", path.display()), count_rows(&path, src.ds_type), Some(path))
                }
                Location::Hub(id) => (format!("hub {id}@{}", src.revision.as_deref().unwrap_or("main")), None, None),
                Location::Invalid => (format!("invalid {}", src.path), None, None),
            };
            let prompt = if c.data.train_on_inputs {
                "prompt and response trained"
            } else {
                "prompt masked (-100), response trained"
            };
            let masking = match d {
                DatasetConfig::Completion(_) | DatasetConfig::Pretrain(_) => "every token trained".to_string(),
                DatasetConfig::InputOutput(_) => "segments with label: true trained, others masked".to_string(),
                DatasetConfig::ChatTemplate(chat) => format!(
                    "turns of {} trained (every such turn), end-of-turn tokens: {:?}{}",
                    chat.roles_to_train.join(", "),
                    chat.train_on_eos,
                    if chat.drop_system_message { ", system turns dropped" } else { "" }
                )
                .to_lowercase(),
                _ => prompt.to_string(),
            };
            DatasetPlan {
                r#type: d.type_name().to_string(),
                source,
                split: src.split.clone(),
                masking,
                rows,
                entry: d.clone(),
                local_path,
            }
        })
        .collect()
}

/// Rows of a local JSON array or JSON Lines file; None for anything that needs tokenizing or a
/// reader recipe does not have in the planner (text, Parquet, CSV, folders).
fn count_rows(path: &Path, format: Option<FileFormat>) -> Option<u64> {
    if !path.is_file() {
        return None;
    }
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    let format = format.or(match extension {
        "json" => Some(FileFormat::Json),
        "jsonl" => Some(FileFormat::Jsonl),
        _ => None,
    })?;
    let text = std::fs::read_to_string(path).ok()?;
    // Counted only when every line is a JSON value: a broken file is the data pipeline's to report.
    let json_lines = || {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines.iter().all(|l| serde_json::from_str::<serde::de::IgnoredAny>(l).is_ok()).then_some(lines.len() as u64)
    };
    match format {
        // Axolotl's json reader takes a JSON array or JSON Lines.
        FileFormat::Json => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Array(rows)) => Some(rows.len() as u64),
            _ => json_lines(),
        },
        FileFormat::Jsonl => json_lines(),
        _ => None,
    }
}

/// Training sequences before the validation split, when known before tokenizing: every dataset's
/// rows are counted, one row is one sequence (no packing), and no dataset splits long texts.
pub fn known_sequences(c: &Config, datasets: &[DatasetPlan]) -> Option<u64> {
    let splits_texts = c.data.datasets.iter().any(|d| matches!(d, DatasetConfig::Pretrain(_)));
    if c.data.sample_packing || splits_texts {
        return None;
    }
    datasets.iter().map(|d| d.rows).sum()
}

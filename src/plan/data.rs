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
    /// The template text (None until a hub model's tokenizer_config.json is downloaded).
    #[serde(skip)]
    pub text: Option<String>,
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
    /// A chat dataset's own template, when it names one (else the recipe's applies).
    pub chat_template: Option<TemplatePlan>,
}

/// What the data pipeline gives for this recipe, measured at plan time when the data and the
/// tokenizer are local (a plan downloads nothing): hygiene counts per dataset, samples, packing
/// and the step counts they give.
#[derive(Debug, Clone, Serialize)]
pub struct MeasuredData {
    /// `prepared now` or where the cached preparation was read from.
    pub source: String,
    /// One line per dataset (rows, malformed, redacted, duplicates, over-length, samples) and
    /// mixing / test-leak notes.
    pub report: Vec<String>,
    pub train_samples: usize,
    pub validation_samples: usize,
    pub test_samples: usize,
    /// Training rows of sequence_len after packing (one per sample without packing).
    pub train_rows: usize,
    /// Real tokens / slots of the training rows.
    pub packing_efficiency: f64,
    pub steps: super::schedule::Steps,
}

pub fn chat_template(c: &Config, at: &Locator, model: &ModelPlan) -> Option<TemplatePlan> {
    let uses_chat = c.data.datasets.iter().any(|d| d.template_choice().is_some());
    let name = c.chat.chat_template.or(uses_chat.then_some(ChatTemplateName::TokenizerDefault))?;
    Some(template_plan(name, c.chat.chat_template_jinja.as_deref(), &at.base_dir("chat_template_jinja"), model))
}

/// A template's text and where it comes from, when known before the model is downloaded.
fn template_plan(name: ChatTemplateName, jinja: Option<&str>, base_dir: &Path, model: &ModelPlan) -> TemplatePlan {
    let named = |source: String, text: Option<String>| TemplatePlan {
        name: name.as_str().to_string(),
        source,
        sha256: text
            .as_deref()
            .map(|t| sha2::Sha256::digest(t.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()),
        text,
    };
    if name == ChatTemplateName::TokenizerDefault && model.local_dir.is_none() {
        return named("the model's tokenizer_config.json (known once downloaded)".into(), None);
    }
    let model_dir = model.local_dir.as_deref().map(Path::new).unwrap_or(Path::new(""));
    match crate::data::template::resolve(name, jinja, base_dir, model_dir) {
        Ok((text, source)) => named(source, Some(text)),
        Err(e) => named(e, None),
    }
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
    /// `resize_token_embeddings_to_32x`: the run checks the embedding covers len(tokenizer)
    /// rounded up to 32 (exec/mod.rs).
    pub resize_token_embeddings_to_32x: bool,
    /// End-of-turn tokens of chat datasets besides EOS (`eot_tokens`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eot_tokens: Option<Vec<String>>,
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
        resize_token_embeddings_to_32x: c.chat.resize_token_embeddings_to_32x,
        eot_tokens: c.chat.eot_tokens.clone(),
    }
}

/// The training datasets.
pub fn datasets(c: &Config, at: &Locator, model: &ModelPlan) -> Vec<DatasetPlan> {
    plan_datasets(c, &c.data.datasets, "datasets", at, model)
}

/// The held-out test datasets (never trained on).
pub fn test_datasets(c: &Config, at: &Locator, model: &ModelPlan) -> Vec<DatasetPlan> {
    plan_datasets(c, &c.data.test_datasets, "test_datasets", at, model)
}

/// The datasets scored before and after training to measure forgetting.
pub fn forgetting_datasets(c: &Config, at: &Locator, model: &ModelPlan) -> Vec<DatasetPlan> {
    plan_datasets(c, &c.data.forgetting_datasets, "forgetting_datasets", at, model)
}

/// The replay buffer's datasets (mixed into every step).
pub fn replay_datasets(c: &Config, at: &Locator, model: &ModelPlan) -> Vec<DatasetPlan> {
    plan_datasets(c, &c.data.replay_datasets, "replay_datasets", at, model)
}

/// The datasets EWC's Fisher information is estimated on.
pub fn ewc_datasets(c: &Config, at: &Locator, model: &ModelPlan) -> Vec<DatasetPlan> {
    plan_datasets(c, &c.data.ewc_datasets, "ewc_datasets", at, model)
}

fn plan_datasets(
    c: &Config,
    entries: &[DatasetConfig],
    key: &str,
    at: &Locator,
    model: &ModelPlan,
) -> Vec<DatasetPlan> {
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
                DatasetConfig::ChatTemplate(chat) => {
                    let eot = match (&c.chat.eot_tokens, chat.train_on_eot) {
                        (Some(list), on) => {
                            format!(", {} tokens: {:?}", list.join(" "), on.unwrap_or(chat.train_on_eos))
                        }
                        (None, _) => String::new(),
                    };
                    let thinking = match (&chat.field_thinking, &chat.template_thinking_key) {
                        (None, None) => String::new(),
                        (field, key) => format!(
                            ", reasoning read from `{}` as `{}`",
                            field.as_deref().unwrap_or("reasoning_content"),
                            key.as_deref().unwrap_or("reasoning_content")
                        ),
                    };
                    let text = format!(
                        "turns of {} trained (every such turn), eos tokens: {:?}{}{}",
                        chat.roles_to_train.join(", "),
                        chat.train_on_eos,
                        eot,
                        if chat.drop_system_message { ", system turns dropped" } else { "" }
                    )
                    .to_lowercase();
                    text + &thinking
                }
                DatasetConfig::Preference(_) | DatasetConfig::BradleyTerry(_) if c.training.reward_model => {
                    "preference pairs: each whole sequence (prompt + answer) scored at its last token".to_string()
                }
                DatasetConfig::Preference(_) | DatasetConfig::BradleyTerry(_) => {
                    "preference pairs: the chosen and the rejected answer scored, the prompt masked".to_string()
                }
                DatasetConfig::Pretokenized(_) => format!(
                    "input_ids and labels as the rows give them (-100 untrained), never \
                     retokenized{}",
                    if c.data.train_on_inputs { " (train_on_inputs does not apply)" } else { "" }
                ),
                DatasetConfig::StringTransform(st) => string_transform_masking(st.transform, c.training.rl),
                DatasetConfig::OrpoArgilla(_) => "preference pairs (Axolotl's ORPO argilla: every turn but the last \
                                                  rendered with the recipe's chat_template as the prompt): the chosen \
                                                  and the rejected answer scored, the prompt masked"
                    .to_string(),
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
                chat_template: d.template_choice().and_then(|(own, jinja)| {
                    own.map(|name| {
                        let base = at.base_dir(&format!("{key}.{i}.chat_template_jinja"));
                        template_plan(name, jinja, &base, model)
                    })
                }),
            }
        })
        .collect()
}

/// Rows of a local JSON array or JSON Lines file; None for anything that needs tokenizing or a
/// reader recipe does not have in the planner (text, Parquet, CSV, folders).
fn count_rows(path: &Path, format: Option<FileFormat>) -> Option<u64> {
    let format = format.or_else(|| crate::data::sources::format_of(path))?;
    if !path.is_file() || !matches!(format, FileFormat::Json | FileFormat::Jsonl) {
        return None;
    }
    // Counted only when every row reads: a broken file is the data pipeline's to report.
    let rows = crate::data::sources::read_file(path, Some(format), "text").ok()?;
    rows.bad.is_empty().then_some(rows.rows.len() as u64)
}

/// Training sequences before the validation split, when known before tokenizing: every dataset's
/// rows are counted, one row is one sequence (no packing), and no dataset splits long texts.
pub fn known_sequences(c: &Config, datasets: &[DatasetPlan]) -> Option<u64> {
    let splits_texts = c.data.datasets.iter().any(|d| matches!(d, DatasetConfig::Pretrain(_)));
    if c.data.sample_packing || splits_texts || c.data.pretraining_dataset.is_some() {
        return None;
    }
    datasets.iter().map(|d| d.rows).sum()
}

/// `pretraining_dataset`, resolved: which files are streamed, in what order, and how texts become
/// rows (Axolotl's `encode_streaming`, unpacked path).
#[derive(Debug, Clone, Serialize)]
pub struct PretrainingPlan {
    /// `local PATH`.
    pub source: String,
    /// The files read, in order (JSON Lines or text, one text per line).
    pub files: Vec<String>,
    pub split: String,
    pub text_column: String,
    /// Texts skipped at the start of every pass over the stream.
    pub skip: u64,
    /// `pretraining_sample_concatenation: true`: texts + EOS + pad concatenated into full rows.
    pub concatenate: bool,
    /// Texts tokenized together (`streaming_multipack_buffer_size`); a concatenated row never
    /// spans two chunks.
    pub chunk_texts: u64,
    /// Tokens of a concatenated row (sequence_len); an unconcatenated row holds at most
    /// `row_tokens - 2`.
    pub row_tokens: u64,
    /// Consecutive stream rows per optimizer step (the global batch): rank r's micro-batch a of
    /// a step is the (a × world + r)-th group of micro_batch_size rows, as accelerate's
    /// IterableDatasetShard deals them.
    pub rows_per_step: u64,
    /// `max_steps`: the stream's length is not known before it is read.
    pub steps: u64,
    /// The files each stream reads. One stream (every rank reads it all and keeps its micro-batches,
    /// accelerate's IterableDatasetShard) unless there are at least as many files as processes:
    /// then accelerate shards the dataset by file (datasets' `IterableDataset.shard`, contiguous
    /// groups) and rank r reads only group r, its micro-batches its own stream's consecutive rows.
    pub shards: Vec<Vec<String>>,
}

/// datasets' contiguous split of `n` shards among `k` workers: the first `n % k` get one more.
pub fn contiguous_shards(n: usize, k: usize) -> Vec<std::ops::Range<usize>> {
    (0..k)
        .map(|i| {
            let start = (n / k) * i + i.min(n % k);
            start..start + n / k + usize::from(i < n % k)
        })
        .collect()
}

/// The stream `pretraining_dataset` names (None without one). Errors: a path that is not local,
/// a file recipe cannot read a line at a time.
pub fn pretraining(
    c: &Config,
    at: &Locator,
    rows_per_step: u64,
    world_size: u64,
) -> Result<Option<PretrainingPlan>, String> {
    let Some(stream) = &c.data.pretraining_dataset else { return Ok(None) };
    let Some(entry) = stream.entries().into_iter().next() else { return Ok(None) };
    let key = match stream {
        crate::config::datasets::PretrainingDatasets::Path(_) => "pretraining_dataset".to_string(),
        crate::config::datasets::PretrainingDatasets::One(_) => "pretraining_dataset.path".to_string(),
        crate::config::datasets::PretrainingDatasets::List(_) => "pretraining_dataset.0.path".to_string(),
    };
    let Location::Local(path) = resolve_location(&entry.path, &at.base_dir(&key)) else {
        return Err(format!("pretraining_dataset `{}`: recipe streams local files only", entry.path));
    };
    let source = crate::config::datasets::DatasetSource {
        path: entry.path.clone(),
        split: entry.split.clone(),
        name: None,
        data_files: entry.data_files.clone().map(crate::config::datasets::FileList::One),
        ds_type: None,
        revision: None,
        weight: None,
        trust_remote_code: false,
    };
    let files = crate::data::sources::files(&source, Some(&path), &crate::data::sources::Hub::from_env())?;
    for f in &files {
        crate::data::stream::format_of(f)?;
    }
    let d = &c.data;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let world = world_size.max(1) as usize;
    let shards = if world > 1 && names.len() >= world {
        if entry.skip.unwrap_or(0) > 0 {
            return Err(format!(
                "pretraining_dataset: {} files over {world} processes are sharded by file, and how datasets splits \
                 `skip` among shards is not reproduced (error code unsupported-pretraining-skip-sharded); remove skip",
                names.len()
            ));
        }
        contiguous_shards(names.len(), world).into_iter().map(|r| names[r].to_vec()).collect()
    } else {
        vec![names.clone()]
    };
    Ok(Some(PretrainingPlan {
        shards,
        source: format!("local {}", path.display()),
        files: names,
        split: entry.split.clone(),
        text_column: entry.text_column.clone(),
        skip: entry.skip.unwrap_or(0),
        concatenate: d.pretraining_sample_concatenation == Some(true),
        chunk_texts: d
            .streaming_multipack_buffer_size
            .or(d.pretrain_multipack_buffer_size)
            .unwrap_or(crate::config::datasets::DEFAULT_STREAM_BUFFER),
        row_tokens: u64::from(d.sequence_len),
        rows_per_step,
        steps: c.training.max_steps.unwrap_or(0),
    }))
}

/// What an Axolotl `chatml.*` / `llama3.*` dataset is under the recipe's `rl`.
fn string_transform_masking(
    transform: crate::config::string_transforms::StringTransform,
    rl: Option<crate::config::training::RlMethod>,
) -> String {
    use crate::config::string_transforms::TransformReading;
    let module = |reading: TransformReading| {
        format!("Axolotl's {}/{}.py `{}`", reading.module(), transform.markup.as_str(), transform.fields.as_str())
    };
    match rl.and_then(TransformReading::of) {
        Some(reading @ TransformReading::Unpaired) => format!(
            "unpaired KTO rows written out as {}: the answer scored (desirable or not, by `label`), the prompt masked",
            module(reading)
        ),
        Some(reading @ TransformReading::Pairs) => format!(
            "preference pairs written out as {}: the chosen and the rejected answer scored, the prompt masked",
            module(reading)
        ),
        None => "not read under this recipe's method (an error)".to_string(),
    }
}

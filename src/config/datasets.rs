//! Where training text comes from and how each dataset's rows become prompts and labels.
//!
//! A dataset entry is a union discriminated by `type`: a format name (`alpaca`, `chat_template`,
//! ...) or, for Axolotl's user-defined prompt format, a mapping of field names and format strings.
//! The schema expresses the union as one `if type == X then <X's schema>` per format, so a
//! validator reports the errors of the format the recipe chose, not of every alternative.

use super::chat_template::ChatTemplateName;
use super::string_transforms::{STRING_TRANSFORM_TYPES, StringTransform};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Dataset mixing, splitting and sequence layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DataConfig {
    /// The training datasets, mixed into one.
    #[serde(default)]
    pub datasets: Vec<DatasetConfig>,
    /// Held-out evaluation datasets, never trained on (exclusive with `val_set_size`).
    #[serde(default)]
    pub test_datasets: Vec<DatasetConfig>,
    /// General-domain data (e.g. a slice of the pretraining text) scored before and after training to
    /// measure forgetting: the run reports its perplexity both times. Never trained on.
    #[serde(default)]
    pub forgetting_datasets: Vec<DatasetConfig>,
    /// Replay data mixed into every training step (same entry format as `datasets`; typically
    /// general-domain or original-task data), `replay_ratio` of each step's rows, reused cyclically
    /// when smaller than the training data. Its rows are labelled as their dataset type says.
    #[serde(default)]
    pub replay_datasets: Vec<DatasetConfig>,
    /// Data the EWC penalty's Fisher information is estimated on (`ewc_lambda`), once at the start:
    /// what the model should keep doing well (e.g. original-task data).
    #[serde(default)]
    pub ewc_datasets: Vec<DatasetConfig>,
    /// Folder where tokenized datasets are cached (`recipe preprocess` writes it).
    #[serde(default)]
    pub dataset_prepared_path: Option<String>,
    /// Fraction of the training rows split off for validation, in [0, 1).
    #[serde(default)]
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub val_set_size: f64,
    /// Shuffle the mixed datasets with the recipe's seed.
    #[serde(default = "default_true")]
    pub shuffle_merged_datasets: bool,
    /// Longest sequence in tokens; longer samples are truncated (or split, for pretraining text).
    #[serde(default = "default_sequence_len")]
    #[schemars(range(min = 1, max = 1048576))]
    pub sequence_len: u32,
    /// Pack several samples into each `sequence_len` row, with attention kept within each sample.
    #[serde(default)]
    pub sample_packing: bool,
    /// Pack evaluation samples too. Defaults to `sample_packing`.
    #[serde(default)]
    pub eval_sample_packing: Option<bool>,
    /// Pad every batch to `sequence_len` (steady memory use) instead of the longest sample.
    #[serde(default)]
    pub pad_to_sequence_len: bool,
    /// Compute the loss on prompt tokens too. Off: prompts get label -100.
    #[serde(default)]
    pub train_on_inputs: bool,
    /// What happens to a sample longer than `sequence_len`: `drop` it, `truncate` it, or stop
    /// with an error (`raise`). Pretraining text is split into chunks instead.
    #[serde(default)]
    pub excess_length_strategy: ExcessLength,
    /// Drop rows whose text repeats another row's exactly (Axolotl's key).
    #[serde(default)]
    pub dataset_exact_deduplication: bool,
    /// Drop rows equal to another after normalising text (case, whitespace, punctuation).
    #[serde(default)]
    pub dataset_normalized_deduplication: bool,
    /// Replace e-mail addresses, phone numbers, IP addresses and API-key-like strings with
    /// placeholders before tokenizing.
    #[serde(default)]
    pub redact_pii: bool,
    /// Skip malformed rows (counted in the report) instead of stopping at the first one.
    #[serde(default)]
    pub skip_bad_rows: bool,
    /// Axolotl's streamed pretraining text, in place of `datasets`: a path, one entry, or a list
    /// of one entry (Axolotl reads only the first). Read a chunk at a time, never whole; needs
    /// `max_steps`.
    #[serde(default)]
    pub pretraining_dataset: Option<PretrainingDatasets>,
    /// `pretraining_dataset`: `true` appends EOS and a pad token to each text and concatenates
    /// texts into `sequence_len` rows (Axolotl's `encode_streaming`); otherwise (Axolotl's
    /// default) each text is one row, truncated to `sequence_len - 2` tokens.
    #[serde(default)]
    pub pretraining_sample_concatenation: Option<bool>,
    /// `pretraining_dataset`: texts tokenized together (10000 when unset); concatenated rows never
    /// span two such chunks (the last row of a chunk is padded), as in Axolotl's batched `map`.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub streaming_multipack_buffer_size: Option<u64>,
    /// Axolotl's deprecated name of `streaming_multipack_buffer_size` (set one of the two).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub pretrain_multipack_buffer_size: Option<u64>,
    /// Axolotl's switch for streamed datasets: recipe streams `pretraining_dataset` only, so it
    /// may be `true` only beside it.
    #[serde(default)]
    pub streaming: Option<bool>,
}

/// Axolotl's `streaming_multipack_buffer_size` default.
pub const DEFAULT_STREAM_BUFFER: u64 = 10_000;

/// `pretraining_dataset`: a path, one entry, or a list of entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PretrainingDatasets {
    Path(String),
    One(PretrainingDataset),
    List(Vec<PretrainingDataset>),
}

impl PretrainingDatasets {
    /// The entries, a bare path read as `{path: PATH}`.
    pub fn entries(&self) -> Vec<PretrainingDataset> {
        match self {
            PretrainingDatasets::Path(p) => vec![PretrainingDataset::at(p)],
            PretrainingDatasets::One(d) => vec![d.clone()],
            PretrainingDatasets::List(l) => l.clone(),
        }
    }
}

/// One `pretraining_dataset` entry (Axolotl's `PretrainingDataset`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PretrainingDataset {
    /// A local file or folder of JSON Lines or text files (relative to the recipe file).
    pub path: String,
    /// The dataset configuration name (hub datasets only: refused for local files).
    #[serde(default)]
    pub name: Option<String>,
    /// The split to read (file names in a folder tell splits apart, as in `datasets`).
    #[serde(default = "default_split")]
    pub split: String,
    /// The field holding the text (JSON Lines; text files give each line as `text`).
    #[serde(default = "default_text_column")]
    pub text_column: String,
    /// `pretrain` (Axolotl's default; the only type its unpacked stream reads).
    #[serde(default = "default_pretrain_type")]
    pub r#type: String,
    /// Must be false or absent: loading a dataset never runs code.
    #[serde(default)]
    #[schemars(extend("const" = false))]
    pub trust_remote_code: bool,
    /// Files to read inside `path` (a name or a glob).
    #[serde(default)]
    pub data_files: Option<String>,
    /// Texts skipped at the start of the stream.
    #[serde(default)]
    pub skip: Option<u64>,
    /// An SFT dataset's text field, which Axolotl's stream does not read (it reads `text_column`):
    /// refused by name.
    #[serde(default)]
    pub field: Option<String>,
}

impl PretrainingDataset {
    fn at(path: &str) -> PretrainingDataset {
        PretrainingDataset {
            path: path.to_string(),
            name: None,
            split: default_split(),
            text_column: default_text_column(),
            r#type: default_pretrain_type(),
            trust_remote_code: false,
            data_files: None,
            skip: None,
            field: None,
        }
    }
}

fn default_text_column() -> String {
    "text".into()
}

fn default_pretrain_type() -> String {
    "pretrain".into()
}

/// `excess_length_strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExcessLength {
    /// Drop the sample (counted in the report).
    #[default]
    Drop,
    /// Keep its first sequence_len tokens.
    Truncate,
    /// Stop with an error naming the row.
    Raise,
}

impl Default for DataConfig {
    fn default() -> Self {
        super::defaults()
    }
}

fn default_true() -> bool {
    true
}

fn default_sequence_len() -> u32 {
    2048
}

/// Where a dataset's rows are read from (every format has these keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DatasetSource {
    /// A local file or folder (relative to the recipe file) or a Hugging Face hub dataset id.
    pub path: String,
    /// The split to read.
    #[serde(default = "default_split")]
    pub split: String,
    /// The dataset configuration name (hub datasets with several configurations).
    #[serde(default)]
    pub name: Option<String>,
    /// Files to read inside `path` (a name, a glob, or a list of them).
    #[serde(default)]
    pub data_files: Option<FileList>,
    /// The file format when it cannot be told from the extension.
    #[serde(default)]
    pub ds_type: Option<FileFormat>,
    /// Hub revision (branch, tag or commit) to read.
    #[serde(default)]
    pub revision: Option<String>,
    /// Mixing weight: this dataset's share of the mixed training set, relative to the other
    /// datasets' weights (rows are sampled with the recipe's seed, repeating when the share is larger
    /// than the dataset). Absent: every row once.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub weight: Option<f64>,
    /// Must be false or absent: loading a dataset never runs code.
    #[serde(default)]
    #[schemars(extend("const" = false))]
    pub trust_remote_code: bool,
}

fn default_split() -> String {
    "train".into()
}

/// One file name / glob or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FileList {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// A JSON array of objects, or JSON Lines.
    Json,
    /// JSON Lines.
    Jsonl,
    Parquet,
    /// Plain text (one sample per file for `completion`, split into chunks).
    Text,
    Csv,
}

/// `type: alpaca` / `alpaca_chat`: instruction, input, output (and optional system) fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AlpacaDataset {
    #[serde(flatten)]
    pub source: DatasetSource,
}

/// `type: completion` / `pretrain`: raw text, all of it trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TextDataset {
    #[serde(flatten)]
    pub source: DatasetSource,
    /// The field holding the text.
    #[serde(default = "default_text_field")]
    pub field: String,
}

fn default_text_field() -> String {
    "text".into()
}

/// `type: input_output`: a `segments` list of `{text, label}`; only `label: true` text is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct InputOutputDataset {
    #[serde(flatten)]
    pub source: DatasetSource,
}

/// `type: chat_template`: conversations rendered with a chat template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ChatDataset {
    #[serde(flatten)]
    pub source: DatasetSource,
    /// The template for this dataset; defaults to the recipe's `chat_template`.
    #[serde(default)]
    pub chat_template: Option<ChatTemplateName>,
    /// The template text (or a path to a .jinja file) when `chat_template: jinja`.
    #[serde(default)]
    pub chat_template_jinja: Option<String>,
    /// The field holding the list of messages.
    #[serde(default = "default_messages_field")]
    pub field_messages: String,
    /// The field holding tool definitions passed to the template.
    #[serde(default)]
    pub field_tools: Option<String>,
    /// How message fields map to the template's: `{role: from, content: value}` reads
    /// ShareGPT-shaped rows.
    #[serde(default)]
    pub message_property_mappings: Option<Map<String, Value>>,
    /// The message field holding the role: Axolotl's older spelling of
    /// `message_property_mappings.role`.
    #[serde(default)]
    pub message_field_role: Option<String>,
    /// The message field holding the content: Axolotl's older spelling of
    /// `message_property_mappings.content`.
    #[serde(default)]
    pub message_field_content: Option<String>,
    /// Per-message boolean field that overrides `roles_to_train` for that turn.
    #[serde(default)]
    pub message_field_training: Option<String>,
    /// Roles whose turns carry labels (every such turn, not just the last).
    #[serde(default = "default_roles_to_train")]
    pub roles_to_train: Vec<String>,
    /// Which EOS tokens after the turns are trained.
    #[serde(default)]
    pub train_on_eos: TrainOnEos,
    /// Which `eot_tokens` after the turns are trained (default: as `train_on_eos`).
    #[serde(default)]
    pub train_on_eot: Option<TrainOnEos>,
    /// Role aliases: `{assistant: [gpt, model], user: [human]}`.
    #[serde(default)]
    pub roles: Option<Map<String, Value>>,
    /// Drop system turns from the rows before rendering.
    #[serde(default)]
    pub drop_system_message: bool,
    /// The message field holding a turn's reasoning (default `reasoning_content`); the template
    /// sees it as `template_thinking_key`.
    #[serde(default)]
    pub field_thinking: Option<String>,
    /// The message key the chat template reads a turn's reasoning from (default
    /// `reasoning_content`; gpt-oss's template reads `thinking`).
    #[serde(default)]
    pub template_thinking_key: Option<String>,
}

fn default_messages_field() -> String {
    "messages".into()
}

impl ChatDataset {
    /// The message field `key` (`role` or `content`) is read from: `message_property_mappings`,
    /// else the older `message_field_role` / `message_field_content`, else `key` itself.
    pub fn message_field(&self, key: &str) -> String {
        let legacy = match key {
            "role" => self.message_field_role.as_deref(),
            "content" => self.message_field_content.as_deref(),
            _ => None,
        };
        self.message_property_mappings
            .as_ref()
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .or(legacy)
            .unwrap_or(key)
            .to_string()
    }
}

fn default_roles_to_train() -> Vec<String> {
    vec!["assistant".into()]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrainOnEos {
    /// Every end-of-turn token of the conversation.
    All,
    /// The end-of-turn token of each trained turn.
    #[default]
    Turn,
    /// Only the conversation's last end-of-turn token.
    Last,
    /// None.
    None,
}

/// `type: chat_template.default` (Axolotl's name), for preference training (`rl:`): each row is
/// a prompt (a message list or a string) with a chosen and a rejected answer (a message, a message
/// list or a string), rendered with the chat template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PreferenceDataset {
    #[serde(flatten)]
    pub source: DatasetSource,
    /// The template for this dataset; defaults to the recipe's `chat_template`.
    #[serde(default)]
    pub chat_template: Option<ChatTemplateName>,
    /// The template text (or a path to a .jinja file) when `chat_template: jinja`.
    #[serde(default)]
    pub chat_template_jinja: Option<String>,
    /// The field holding the prompt: a message list (or a string).
    #[serde(default = "default_messages_field")]
    pub field_messages: String,
    /// The field holding the preferred answer.
    #[serde(default = "default_chosen_field")]
    pub field_chosen: String,
    /// The field holding the dispreferred answer.
    #[serde(default = "default_rejected_field")]
    pub field_rejected: String,
    /// How message fields map to the template's: `{role: from, content: value}` reads
    /// ShareGPT-shaped rows.
    #[serde(default)]
    pub message_property_mappings: Option<Map<String, Value>>,
    /// Role aliases: `{assistant: [gpt, model], user: [human]}` (each replaces that role's default
    /// aliases: user ← human, user; assistant ← gpt, assistant; system; tool).
    #[serde(default)]
    pub roles: Option<Map<String, Value>>,
}

/// `type: bradley_terry.chat_template` (Axolotl's reward-model format): single-turn rows with an
/// optional `system`, the user's `input`, and the `chosen` and `rejected` assistant answers (strings),
/// each rendered with the chat template as a whole conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct BradleyTerryDataset {
    #[serde(flatten)]
    pub source: DatasetSource,
    /// The template for this dataset; defaults to the recipe's `chat_template`.
    #[serde(default)]
    pub chat_template: Option<ChatTemplateName>,
    /// The template text (or a path to a .jinja file) when `chat_template: jinja`.
    #[serde(default)]
    pub chat_template_jinja: Option<String>,
}

/// Axolotl's `chatml.*` / `llama3.*` types (see [`super::string_transforms`]): the row's prompt and
/// answers written out in ChatML or Llama-3 turns by a fixed text template per `type`, as
/// Axolotl's `prompt_strategies/kto` (`rl: kto`: one answer and a `label`) or
/// `prompt_strategies/dpo` (`rl: dpo|ipo|simpo`: a chosen and a rejected answer) do. Which of the two
/// the rows are is the recipe's `rl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct StringTransformDataset {
    #[serde(flatten)]
    pub source: DatasetSource,
    /// Which of Axolotl's types (set from `type`).
    #[serde(skip)]
    #[schemars(skip)]
    pub transform: StringTransform,
}

/// `type: chat_template.argilla` (Axolotl's only ORPO type, `prompt_strategies/orpo/chat_template.py`,
/// `rl: orpo` only): rows with `chosen` and `rejected` message lists (user and assistant turns
/// alternating, read by position), an optional `system` and an optional `prompt` string (then every
/// user turn's text). The prompt is every turn but the last, rendered with the recipe's
/// `chat_template` and the generation prompt; each answer is what the last assistant turn of
/// `chosen` / `rejected` adds after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct OrpoArgillaDataset {
    #[serde(flatten)]
    pub source: DatasetSource,
}

fn default_chosen_field() -> String {
    "chosen".into()
}

fn default_rejected_field() -> String {
    "rejected".into()
}

/// Axolotl's user-defined prompt format: `type:` is this mapping instead of a name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct UserDefinedFormat {
    /// A fixed system prompt.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// How the system prompt is written; `{system}` is replaced.
    #[serde(default)]
    pub system_format: Option<String>,
    /// The field holding a per-row system prompt.
    #[serde(default)]
    pub field_system: Option<String>,
    /// The field holding the instruction.
    #[serde(default)]
    pub field_instruction: Option<String>,
    /// The field holding the optional input.
    #[serde(default)]
    pub field_input: Option<String>,
    /// The field holding the response (the trained part).
    #[serde(default)]
    pub field_output: Option<String>,
    /// The prompt when the row has an input; `{instruction}` and `{input}` are replaced.
    #[serde(default)]
    pub format: Option<String>,
    /// The prompt when the row has no input; `{instruction}` is replaced.
    #[serde(default)]
    pub no_input_format: Option<String>,
}

/// `type: {field_instruction: ..., format: ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct UserDefinedDataset {
    #[serde(flatten)]
    pub source: DatasetSource,
    /// The prompt format: field names and format strings.
    #[serde(rename = "type")]
    pub format: UserDefinedFormat,
}

/// A dataset entry without `type` (or with `type:` left empty): Axolotl's pre-tokenized rows, each
/// holding `input_ids`, `attention_mask` (all ones) and `labels` (-100 or a token id), lists of
/// equal length, used as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PretokenizedDataset {
    #[serde(flatten)]
    pub source: DatasetSource,
    /// The keys of other formats that turn rows into tokens (`field_messages`, `chat_template`,
    /// `roles_to_train`, ...), as written: each is refused by name (rule
    /// `pretokenized-formatting-key`), since pre-tokenized rows are not formatted.
    #[serde(flatten)]
    #[schemars(skip)]
    pub formatting: Map<String, Value>,
}

/// The keys of recipe's other dataset formats that act on formatting, which a pre-tokenized entry
/// refuses by name (the schema lets them through so the rule can say why).
pub const FORMATTING_KEYS: &[&str] = &[
    "chat_template",
    "chat_template_jinja",
    "drop_system_message",
    "field",
    "field_chosen",
    "field_messages",
    "field_rejected",
    "field_thinking",
    "field_tools",
    "message_field_content",
    "message_field_role",
    "message_field_training",
    "message_property_mappings",
    "roles",
    "roles_to_train",
    "template_thinking_key",
    "train_on_eos",
    "train_on_eot",
];

/// One dataset of `datasets` / `test_datasets`.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetConfig {
    Alpaca(AlpacaDataset),
    AlpacaChat(AlpacaDataset),
    Completion(TextDataset),
    Pretrain(TextDataset),
    ChatTemplate(ChatDataset),
    InputOutput(InputOutputDataset),
    /// `chat_template.default`.
    Preference(PreferenceDataset),
    /// `bradley_terry.chat_template`.
    BradleyTerry(BradleyTerryDataset),
    /// One of Axolotl's `chatml.*` / `llama3.*` types (`chatml.ultra`, `llama3.argilla`, ...): KTO's
    /// unpaired rows or DPO's pairs, by `rl`.
    StringTransform(StringTransformDataset),
    /// `chat_template.argilla` (ORPO).
    OrpoArgilla(OrpoArgillaDataset),
    /// A mapping `type:` (Axolotl's user-defined format).
    UserDefined(UserDefinedDataset),
    /// No `type`: pre-tokenized rows (`input_ids`, `attention_mask`, `labels`).
    Pretokenized(PretokenizedDataset),
}

/// The named formats, in schema order: (`type`, schema definition name, what it means).
const DATASET_TYPES: &[(&str, &str, &str)] = &[
    ("alpaca", "AlpacaDataset", "instruction / input / output rows in the Alpaca prompt"),
    ("alpaca_chat", "AlpacaChatDataset", "instruction / input / output rows in the alpaca_chat prompt"),
    ("completion", "CompletionDataset", "raw text, all of it trained on"),
    ("pretrain", "PretrainDataset", "raw text split into sequence_len chunks"),
    ("chat_template", "ChatTemplateDataset", "conversations rendered with a chat template"),
    ("input_output", "InputOutputDataset", "segments with a per-segment `label`"),
    (
        "chat_template.default",
        "PreferenceDataset",
        "preference pairs for `rl:` and reward models: a prompt, a chosen and a rejected answer",
    ),
    (
        "bradley_terry.chat_template",
        "BradleyTerryDataset",
        "reward-model pairs: system (optional), input, chosen and rejected strings",
    ),
    (
        "chat_template.argilla",
        "OrpoArgillaDataset",
        "ORPO pairs (rl: orpo): chosen and rejected message lists, system and prompt optional, rendered with the \
         recipe's chat_template",
    ),
];

impl DatasetConfig {
    pub fn source(&self) -> &DatasetSource {
        match self {
            DatasetConfig::Alpaca(d) | DatasetConfig::AlpacaChat(d) => &d.source,
            DatasetConfig::Completion(d) | DatasetConfig::Pretrain(d) => &d.source,
            DatasetConfig::ChatTemplate(d) => &d.source,
            DatasetConfig::InputOutput(d) => &d.source,
            DatasetConfig::Preference(d) => &d.source,
            DatasetConfig::BradleyTerry(d) => &d.source,
            DatasetConfig::StringTransform(d) => &d.source,
            DatasetConfig::OrpoArgilla(d) => &d.source,
            DatasetConfig::UserDefined(d) => &d.source,
            DatasetConfig::Pretokenized(d) => &d.source,
        }
    }

    /// For formats rendered with a chat template (`chat_template`, `chat_template.default`): the
    /// dataset's own template name and jinja text or file, if any (else the recipe's applies).
    pub fn template_choice(&self) -> Option<(Option<ChatTemplateName>, Option<&str>)> {
        match self {
            DatasetConfig::ChatTemplate(d) => Some((d.chat_template, d.chat_template_jinja.as_deref())),
            DatasetConfig::Preference(d) => Some((d.chat_template, d.chat_template_jinja.as_deref())),
            DatasetConfig::BradleyTerry(d) => Some((d.chat_template, d.chat_template_jinja.as_deref())),
            _ => None,
        }
    }

    /// Whether the rows are preference data (pairs for `rl:` and reward models; KTO's unpaired rows).
    pub fn holds_pairs(&self) -> bool {
        matches!(
            self,
            DatasetConfig::Preference(_)
                | DatasetConfig::BradleyTerry(_)
                | DatasetConfig::StringTransform(_)
                | DatasetConfig::OrpoArgilla(_)
        )
    }

    /// The `type` as written (`user_defined` for the mapping form, `pre-tokenized` without one).
    pub fn type_name(&self) -> &'static str {
        match self {
            DatasetConfig::Alpaca(_) => "alpaca",
            DatasetConfig::AlpacaChat(_) => "alpaca_chat",
            DatasetConfig::Completion(_) => "completion",
            DatasetConfig::Pretrain(_) => "pretrain",
            DatasetConfig::ChatTemplate(_) => "chat_template",
            DatasetConfig::InputOutput(_) => "input_output",
            DatasetConfig::Preference(_) => "chat_template.default",
            DatasetConfig::BradleyTerry(_) => "bradley_terry.chat_template",
            DatasetConfig::StringTransform(d) => d.transform.type_name(),
            DatasetConfig::OrpoArgilla(_) => "chat_template.argilla",
            DatasetConfig::UserDefined(_) => "user_defined",
            DatasetConfig::Pretokenized(_) => "pre-tokenized",
        }
    }
}

/// `type` first, then the format's own keys (a user-defined format's `type` is its mapping; a
/// pre-tokenized dataset has none).
impl Serialize for DatasetConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let fields = match self {
            DatasetConfig::Alpaca(d) | DatasetConfig::AlpacaChat(d) => serde_json::to_value(d),
            DatasetConfig::Completion(d) | DatasetConfig::Pretrain(d) => serde_json::to_value(d),
            DatasetConfig::ChatTemplate(d) => serde_json::to_value(d),
            DatasetConfig::InputOutput(d) => serde_json::to_value(d),
            DatasetConfig::Preference(d) => serde_json::to_value(d),
            DatasetConfig::BradleyTerry(d) => serde_json::to_value(d),
            DatasetConfig::StringTransform(d) => serde_json::to_value(d),
            DatasetConfig::OrpoArgilla(d) => serde_json::to_value(d),
            DatasetConfig::UserDefined(d) => return d.serialize(serializer),
            // No `type`: that is what makes it pre-tokenized.
            DatasetConfig::Pretokenized(d) => return d.serialize(serializer),
        }
        .map_err(S::Error::custom)?;
        let mut map = Map::new();
        map.insert("type".into(), Value::String(self.type_name().into()));
        if let Value::Object(fields) = fields {
            map.extend(fields);
        }
        map.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for DatasetConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        fn parse<T: serde::de::DeserializeOwned, E: Error>(map: Map<String, Value>) -> Result<T, E> {
            serde_json::from_value(Value::Object(map)).map_err(E::custom)
        }
        let mut map = Map::<String, Value>::deserialize(deserializer)?;
        let name = match map.get("type") {
            // As Axolotl: `type` absent or empty (YAML's `type:`) loads pre-tokenized rows.
            None | Some(Value::Null) => {
                map.remove("type");
                return parse(map).map(DatasetConfig::Pretokenized);
            }
            Some(Value::Object(_)) => return parse(map).map(DatasetConfig::UserDefined),
            Some(Value::String(name)) => name.clone(),
            Some(other) => return Err(D::Error::custom(format!("`type` must be a name or a mapping, found {other}"))),
        };
        map.remove("type");
        Ok(match name.as_str() {
            "alpaca" => DatasetConfig::Alpaca(parse(map)?),
            "alpaca_chat" => DatasetConfig::AlpacaChat(parse(map)?),
            "completion" => DatasetConfig::Completion(parse(map)?),
            "pretrain" => DatasetConfig::Pretrain(parse(map)?),
            "chat_template" => DatasetConfig::ChatTemplate(parse(map)?),
            "input_output" => DatasetConfig::InputOutput(parse(map)?),
            "chat_template.default" => DatasetConfig::Preference(parse(map)?),
            "bradley_terry.chat_template" => DatasetConfig::BradleyTerry(parse(map)?),
            "chat_template.argilla" => DatasetConfig::OrpoArgilla(parse(map)?),
            other => match StringTransform::from_type(other) {
                Some(transform) => DatasetConfig::StringTransform(StringTransformDataset { transform, ..parse(map)? }),
                None => return Err(D::Error::custom(format!("unknown dataset type `{other}`"))),
            },
        })
    }
}

impl JsonSchema for DatasetConfig {
    fn schema_name() -> Cow<'static, str> {
        "Dataset".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let user_defined_type = generator.subschema_for::<UserDefinedFormat>();
        let mut all_of = Vec::new();
        let string_types = STRING_TRANSFORM_TYPES.iter().map(|&(tag, markup, fields, help)| {
            // `chatml.argilla_chat` -> `StringTransformChatmlArgillaChat`.
            let camel: String = [markup.as_str(), fields.as_str()]
                .iter()
                .flat_map(|part| part.split('_'))
                .map(|w| w[..1].to_uppercase() + &w[1..])
                .collect();
            (tag, format!("StringTransform{camel}"), help)
        });
        let types = DATASET_TYPES.iter().map(|&(tag, def, help)| (tag, def.to_string(), help)).chain(string_types);
        for (tag, def_name, help) in types.collect::<Vec<_>>() {
            let mut schema = match tag {
                "alpaca" | "alpaca_chat" => AlpacaDataset::json_schema(generator),
                "completion" | "pretrain" => TextDataset::json_schema(generator),
                "chat_template" => ChatDataset::json_schema(generator),
                "chat_template.default" => PreferenceDataset::json_schema(generator),
                "bradley_terry.chat_template" => BradleyTerryDataset::json_schema(generator),
                "chat_template.argilla" => OrpoArgillaDataset::json_schema(generator),
                name if StringTransform::from_type(name).is_some() => StringTransformDataset::json_schema(generator),
                _ => InputOutputDataset::json_schema(generator),
            };
            if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                props.insert("type".into(), serde_json::json!({"const": tag, "description": help}));
            }
            if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
                required.push(Value::String("type".into()));
            }
            schema.insert("title".into(), Value::String(format!("type: {tag}")));
            generator.definitions_mut().insert(def_name.clone(), schema.to_value());
            all_of.push(serde_json::json!({
                "if": {"properties": {"type": {"const": tag}}, "required": ["type"]},
                "then": {"$ref": format!("#/$defs/{def_name}")},
            }));
        }
        let names: Vec<&str> = DATASET_TYPES
            .iter()
            .map(|(tag, _, _)| *tag)
            .chain(STRING_TRANSFORM_TYPES.iter().map(|(tag, ..)| *tag))
            .collect();
        let mut pretokenized = PretokenizedDataset::json_schema(generator);
        if let Some(props) = pretokenized.get_mut("properties").and_then(Value::as_object_mut) {
            for key in FORMATTING_KEYS {
                props.insert(
                    (*key).into(),
                    serde_json::json!({"description": "Refused without `type`: pre-tokenized rows are not formatted."}),
                );
            }
        }
        pretokenized.insert("title".into(), Value::String("no type: pre-tokenized rows".into()));
        pretokenized.insert(
            "description".into(),
            Value::String(
                "Pre-tokenized rows (Axolotl's dataset without `type`): each row holds `input_ids`, `attention_mask` \
                 (all ones) and `labels` (-100 or a token id), lists of equal length, used as they are."
                    .into(),
            ),
        );
        generator.definitions_mut().insert("PretokenizedDataset".into(), pretokenized.to_value());
        all_of.push(serde_json::json!({
            "if": {"not": {"required": ["type"]}},
            "then": {"$ref": "#/$defs/PretokenizedDataset"},
        }));
        let user_defined = UserDefinedDataset::json_schema(generator);
        generator.definitions_mut().insert("UserDefinedDataset".into(), user_defined.to_value());
        all_of.push(serde_json::json!({
            "if": {"properties": {"type": {"type": "object"}}, "required": ["type"]},
            "then": {"$ref": "#/$defs/UserDefinedDataset"},
        }));
        json_schema!({
            "description": "One dataset: where its rows are and, through `type`, how they become prompts and labels (without `type`: rows already tokenized).",
            "type": "object",
            "required": ["path"],
            "properties": {
                "path": {"type": "string", "description": "A local file or folder (relative to the recipe file) or a Hugging Face hub dataset id."},
                "type": {
                    "description": "The row format: a format name, or a mapping for Axolotl's user-defined prompt format. Absent or empty: pre-tokenized rows (`input_ids`, `attention_mask`, `labels`).",
                    "anyOf": [{"enum": names}, user_defined_type],
                },
            },
            "allOf": all_of,
        })
    }
}

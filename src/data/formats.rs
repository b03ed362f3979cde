//! Dataset formats: one row (a JSON object) into what the tokenizer sees, with which parts carry
//! labels. Each format follows Axolotl's prompt strategy of the same name:
//!
//! - `alpaca` / `alpaca_chat` / user-defined: a prompt (masked unless `train_on_inputs`) and a
//!   response (trained); tokenized together, the prompt's own token count masked; BOS and EOS added.
//! - `completion` / `pretrain`: raw text, every token trained; BOS/EOS added; long texts become
//!   consecutive `sequence_len` chunks.
//! - `input_output`: `segments` of `{text, label}`, each tokenized on its own without special tokens
//!   (put BOS/EOS in the text where wanted), trained where `label: true` (or `train_on_inputs`).
//! - `chat_template`: a message list, rendered and masked by `chat`.
//! - `chat_template.default` (preference training): a prompt and a chosen and a rejected answer,
//!   each a string or messages, normalised to `{role, content}` here; `preference` renders them.
//! - no `type` (Axolotl's pre-tokenized rows): `input_ids`, `attention_mask` and `labels` read as
//!   they are (checked: equal lengths, a mask of ones, labels -100 or a token id, ids inside the
//!   vocabulary), never retokenized.
//! - `chat_template.argilla` (ORPO): the conversation of `chosen` but its last answer as prompt
//!   messages, the last messages of `chosen` / `rejected` as the answers (Axolotl's ORPO parser).
//! - Axolotl's `chatml.*` / `llama3.*` types: `string_transforms` writes them out as strings.

use super::{IGNORE, Sample, Tokenizer};
use crate::config::datasets::{DatasetConfig, PreferenceDataset, UserDefinedFormat};
use crate::config::training::RlMethod;
use serde_json::Value;

/// A row in the shape the tokenizer needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Formatted {
    PromptResponse {
        prompt: String,
        response: String,
    },
    Text(String),
    Segments(Vec<(String, bool)>),
    /// The whole row: the chat module reads messages, tools and per-message fields from it.
    Chat(Value),
    Preference(Preference),
    /// Pre-tokenized: the row's `input_ids` and `labels`, as they are.
    Tokens(Sample),
}

impl Formatted {
    /// Every text of the row, in order (for redaction): for chat rows, the message contents
    /// (`content_key`, or ShareGPT's `value`), not roles, names or ids.
    pub fn texts_mut(&mut self, content_key: &str) -> Vec<&mut String> {
        match self {
            Formatted::PromptResponse { prompt, response } => vec![prompt, response],
            Formatted::Text(t) => vec![t],
            Formatted::Segments(s) => s.iter_mut().map(|(t, _)| t).collect(),
            Formatted::Chat(row) => message_texts(row, &[content_key, "value"]),
            // Token ids hold no text to redact (a rule refuses redact_pii beside such a dataset).
            Formatted::Tokens(_) => Vec::new(),
            Formatted::Preference(p) => {
                let Preference { prompt, chosen, rejected, .. } = p;
                [prompt, chosen, rejected]
                    .into_iter()
                    .flat_map(|v| match v {
                        Value::String(s) => vec![s],
                        other => message_texts(other, &["content"]),
                    })
                    .collect()
            }
        }
    }

    /// The row's content as one string, for deduplication.
    pub fn key(&self) -> String {
        match self {
            Formatted::PromptResponse { prompt, response } => format!("{prompt}\u{1f}{response}"),
            Formatted::Text(t) => t.clone(),
            Formatted::Segments(s) => s.iter().map(|(t, l)| format!("{l}\u{1f}{t}")).collect::<Vec<_>>().join("\u{1e}"),
            Formatted::Chat(v) => v.to_string(),
            Formatted::Tokens(s) => format!("{:?}\u{1f}{:?}", s.input_ids, s.labels),
            Formatted::Preference(p) => {
                format!("{}\u{1f}{}\u{1f}{}\u{1f}{:?}", p.prompt, p.chosen, p.rejected, p.desirable)
            }
        }
    }
}

/// The strings held under one of `keys` anywhere in a JSON value (message contents in a row).
fn message_texts<'a>(value: &'a mut Value, keys: &[&str]) -> Vec<&'a mut String> {
    match value {
        Value::Array(items) => items.iter_mut().flat_map(|v| message_texts(v, keys)).collect(),
        Value::Object(map) => map
            .iter_mut()
            .flat_map(|(k, v)| {
                if keys.contains(&k.as_str())
                    && let Value::String(s) = v
                {
                    return vec![s];
                }
                message_texts(v, keys)
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn string_field<'a>(row: &'a Value, field: &str) -> Result<&'a str, String> {
    match row.get(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(format!("field `{field}` is missing")),
        Some(other) => Err(format!("field `{field}` must be a string, found {}", kind(other))),
    }
}

fn optional_field<'a>(row: &'a Value, field: &str) -> Result<&'a str, String> {
    match row.get(field) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("field `{field}` must be a string, found {}", kind(other))),
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// One row of `entry`'s format; `rl` (the recipe's preference method) chooses what Axolotl's
/// `chatml.*` / `llama3.*` types read. Errors name the field.
pub fn format_row(entry: &DatasetConfig, row: &Value, rl: Option<RlMethod>) -> Result<Formatted, String> {
    if !row.is_object() {
        return Err(format!("a row must be a mapping, found {}", kind(row)));
    }
    match entry {
        DatasetConfig::Completion(t) | DatasetConfig::Pretrain(t) => {
            Ok(Formatted::Text(string_field(row, &t.field)?.to_string()))
        }
        DatasetConfig::Alpaca(_) | DatasetConfig::AlpacaChat(_) => {
            let chat = matches!(entry, DatasetConfig::AlpacaChat(_));
            let prompt = alpaca_prompt(
                string_field(row, "instruction")?,
                optional_field(row, "input")?,
                optional_field(row, "system")?,
                chat,
            );
            Ok(Formatted::PromptResponse { prompt, response: string_field(row, "output")?.to_string() })
        }
        DatasetConfig::UserDefined(u) => user_defined(&u.format, row),
        DatasetConfig::InputOutput(_) => {
            let segments = match row.get("segments") {
                Some(Value::Array(s)) => s,
                None | Some(Value::Null) => return Err("field `segments` is missing".into()),
                Some(other) => return Err(format!("field `segments` must be a list, found {}", kind(other))),
            };
            segments
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let text = string_field(s, "text").map_err(|e| format!("segments[{i}]: {e}"))?;
                    let label = match s.get("label") {
                        Some(Value::Bool(b)) => *b,
                        None | Some(Value::Null) => return Err(format!("segments[{i}]: field `label` is missing")),
                        Some(other) => {
                            return Err(format!(
                                "segments[{i}]: field `label` must be true or false, found {}",
                                kind(other)
                            ));
                        }
                    };
                    Ok((text.to_string(), label))
                })
                .collect::<Result<_, _>>()
                .map(Formatted::Segments)
        }
        DatasetConfig::ChatTemplate(c) => match row.get(&c.field_messages) {
            Some(Value::Array(_)) => Ok(Formatted::Chat(row.clone())),
            None | Some(Value::Null) => Err(format!("field `{}` is missing", c.field_messages)),
            Some(other) => {
                Err(format!("field `{}` must be a list of messages, found {}", c.field_messages, kind(other)))
            }
        },
        DatasetConfig::Preference(p) => {
            let axolotl = matches!(rl, Some(RlMethod::Dpo | RlMethod::Ipo | RlMethod::Simpo));
            parse_preference(row, p, axolotl).map(Formatted::Preference)
        }
        DatasetConfig::BradleyTerry(_) => parse_bradley_terry(row).map(Formatted::Preference),
        DatasetConfig::StringTransform(d) => super::string_transforms::format_row(row, d.transform, rl),
        DatasetConfig::OrpoArgilla(_) => parse_orpo_argilla(row).map(Formatted::Preference),
        DatasetConfig::Pretokenized(_) => parse_pretokenized(row).map(Formatted::Tokens),
    }
}

/// Reads a pre-tokenized row (Axolotl's dataset without `type`): `input_ids`, `attention_mask`
/// and `labels`, lists of integers of equal length; the mask all ones (recipe builds the masks of
/// packed and padded rows itself, so a 0 would be read and not acted on); labels -100 or a token
/// id; `position_ids`, when the row has them, 0, 1, 2, ... (the positions recipe gives every
/// sample). Other fields are not read (as the trainer drops columns the model does not take).
pub fn parse_pretokenized(row: &Value) -> Result<Sample, String> {
    let ints = |field: &str| -> Result<Option<Vec<i64>>, String> {
        let list = match row.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(list)) => list,
            Some(other) => return Err(format!("field `{field}` must be a list of integers, found {}", kind(other))),
        };
        list.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_i64().ok_or_else(|| format!("{field}[{i}] must be an integer, found {}", describe_value(v)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    let required = |field: &str| -> Result<Vec<i64>, String> {
        ints(field)?.ok_or_else(|| {
            format!(
                "field `{field}` is missing (a dataset without `type` holds pre-tokenized rows: input_ids, \
                 attention_mask and labels)"
            )
        })
    };
    let input_ids = required("input_ids")?;
    let attention_mask = required("attention_mask")?;
    let labels = required("labels")?;
    for (field, len) in [("attention_mask", attention_mask.len()), ("labels", labels.len())] {
        if len != input_ids.len() {
            return Err(format!("`{field}` holds {len} values, `input_ids` {}: they must be as long", input_ids.len()));
        }
    }
    if let Some(i) = attention_mask.iter().position(|&m| m != 1) {
        return Err(format!(
            "attention_mask[{i}] is {}: recipe attends to every token of a pre-tokenized row (packing and \
             batching build their own masks), so the mask must be all ones; remove the masked tokens from the row",
            attention_mask[i]
        ));
    }
    if let Some(i) = input_ids.iter().position(|&t| t < 0) {
        return Err(format!("input_ids[{i}] is {}, not a token id", input_ids[i]));
    }
    if let Some(i) = labels.iter().position(|&l| l < 0 && l != IGNORE) {
        return Err(format!("labels[{i}] is {}: a label is a token id, or -100 for no loss", labels[i]));
    }
    if let Some(positions) = ints("position_ids")?
        && !positions.iter().copied().eq(0..input_ids.len() as i64)
    {
        return Err(
            "`position_ids` is not 0, 1, 2, ... up to the row's length: recipe numbers every sample's positions \
             from 0 itself; remove position_ids"
                .into(),
        );
    }
    Ok(Sample { input_ids, labels })
}

/// A pre-tokenized sample's ids and labels against the embedding's rows (`vocab`: the model's
/// vocabulary, or the tokenizer's when it is larger, as the run resizes the embedding).
pub fn check_vocabulary(s: &Sample, vocab: usize) -> Result<(), String> {
    for (field, ids) in [("input_ids", &s.input_ids), ("labels", &s.labels)] {
        if let Some(i) = ids.iter().position(|&t| t != IGNORE && t >= vocab as i64) {
            return Err(format!("{field}[{i}] is {}, outside the vocabulary (token ids 0 to {})", ids[i], vocab - 1));
        }
    }
    Ok(())
}

/// A JSON value in an error: its kind, and the value itself when short.
fn describe_value(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("{n}"),
        other => kind(other).to_string(),
    }
}

/// Axolotl's alpaca prompts (`alpaca`, and `alpaca_chat`'s USER/ASSISTANT form).
pub fn alpaca_prompt(instruction: &str, input: &str, system: &str, chat: bool) -> String {
    if chat {
        let user = if input.is_empty() { instruction.to_string() } else { format!("{instruction}\n{input}") };
        return format!(
            "{}USER: {user}\nASSISTANT:",
            if system.is_empty() { String::new() } else { format!("{system}\n") }
        );
    }
    let preamble = if !system.is_empty() {
        system.to_string()
    } else if input.is_empty() {
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
            .to_string()
    } else {
        "Below is an instruction that describes a task, paired with an input that provides further context. \
         Write a response that appropriately completes the request."
            .to_string()
    };
    if input.is_empty() {
        format!("{preamble}\n\n### Instruction:\n{instruction}\n\n### Response:\n")
    } else {
        format!("{preamble}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
    }
}

/// Axolotl's user-defined format: `{instruction}`, `{input}` and `{system}` placeholders.
fn user_defined(f: &UserDefinedFormat, row: &Value) -> Result<Formatted, String> {
    let field = |name: &Option<String>, default: &str| name.clone().unwrap_or_else(|| default.to_string());
    let instruction = string_field(row, &field(&f.field_instruction, "instruction"))?;
    let input = optional_field(row, &field(&f.field_input, "input"))?;
    let output = string_field(row, &field(&f.field_output, "output"))?;
    let system = match &f.field_system {
        Some(name) => optional_field(row, name)?.to_string(),
        None => f.system_prompt.clone().unwrap_or_default(),
    };
    let system = if system.is_empty() {
        String::new()
    } else {
        f.system_format.as_deref().unwrap_or("{system}").replace("{system}", &system)
    };
    let body = if input.is_empty() {
        f.no_input_format
            .as_deref()
            .or(f.format.as_deref())
            .unwrap_or("{instruction}")
            .replace("{instruction}", instruction)
    } else {
        f.format
            .as_deref()
            .unwrap_or("{instruction} {input}")
            .replace("{instruction}", instruction)
            .replace("{input}", input)
    };
    Ok(Formatted::PromptResponse { prompt: format!("{system}{body}"), response: output.to_string() })
}

/// Tokenizes a non-chat row into samples (several for long pretraining text).
pub fn tokenize(f: &Formatted, tok: &Tokenizer, seq_len: usize, train_on_inputs: bool) -> Result<Vec<Sample>, String> {
    Ok(match f {
        Formatted::Tokens(s) => vec![s.clone()],
        Formatted::Text(text) => {
            let mut ids: Vec<i64> = tok.bos().into_iter().collect();
            ids.extend(tok.encode(text)?);
            ids.extend(tok.eos());
            ids.chunks(seq_len.max(1)).map(|c| Sample { input_ids: c.to_vec(), labels: c.to_vec() }).collect()
        }
        Formatted::PromptResponse { prompt, response } => {
            // As Axolotl: prompt + response tokenized together, as many tokens masked as the prompt
            // alone gives (a SentencePiece tokenizer would add a word boundary to a separately
            // tokenized response).
            let mut input_ids: Vec<i64> = tok.bos().into_iter().collect();
            let prompt_len = input_ids.len() + tok.encode(prompt)?.len();
            input_ids.extend(tok.encode(&format!("{prompt}{response}"))?);
            input_ids.extend(tok.eos());
            let mut labels = input_ids.clone();
            if !train_on_inputs {
                let masked = prompt_len.min(labels.len());
                labels[..masked].fill(IGNORE);
            }
            vec![Sample { input_ids, labels }]
        }
        Formatted::Segments(segments) => {
            let (mut input_ids, mut labels) = (Vec::new(), Vec::new());
            for (text, trained) in segments {
                let ids = tok.encode(text)?;
                if *trained || train_on_inputs {
                    labels.extend(&ids);
                } else {
                    labels.extend(std::iter::repeat_n(IGNORE, ids.len()));
                }
                input_ids.extend(ids);
            }
            vec![Sample { input_ids, labels }]
        }
        Formatted::Chat(_) => return Err("chat rows are tokenized by the chat module".into()),
        Formatted::Preference(_) => return Err("preference pairs are tokenized by the preference module".into()),
    })
}

/// A preference pair: the prompt and the chosen / rejected answers, each plain text or messages;
/// or, for KTO's unpaired rows, the prompt with one answer (`chosen`, `rejected` null) and whether
/// it is desirable.
#[derive(Debug, Clone, PartialEq)]
pub struct Preference {
    pub prompt: Value,
    pub chosen: Value,
    pub rejected: Value,
    /// KTO's label of an unpaired row (None for pairs).
    pub desirable: Option<bool>,
}

/// Reads a preference row: the prompt (`field_messages`: a message list or a string) and the
/// chosen / rejected answers (a string, a message or a message list). Messages are read through
/// `message_property_mappings` (ShareGPT's from/value also accepted) and normalised to
/// `{role, content}`. Errors name the field. `axolotl`: as Axolotl's `dpo/chat_template.py`
/// `default` reads it (rl: dpo, ipo, simpo): a string prompt is a user message, an answer list
/// stands for its last message, and the three may have any of these shapes; otherwise the rows are
/// TRL's, all strings or all messages.
pub fn parse_preference(row: &Value, d: &PreferenceDataset, axolotl: bool) -> Result<Preference, String> {
    let mapped = |key: &str| {
        d.message_property_mappings.as_ref().and_then(|m| m.get(key)).and_then(Value::as_str).unwrap_or(key).to_string()
    };
    // The message field holding the role, with the role aliases; the field holding the content.
    let role = (mapped("role"), role_aliases(d.roles.as_ref())?);
    let content = mapped("content");
    let field = d.field_messages.as_str();
    let prompt = match row.get(field) {
        Some(Value::String(s)) if axolotl => serde_json::json!([{"role": "user", "content": s}]),
        Some(p @ Value::String(_)) => p.clone(),
        Some(p @ Value::Array(_)) => messages(p, field, &role, &content)?,
        None | Some(Value::Null) => return Err(format!("field `{field}` (the prompt) is missing")),
        Some(other) => {
            return Err(format!("field `{field}` must be a string or a message list, found {}", kind(other)));
        }
    };
    let answer = |field: &str| -> Result<Value, String> {
        match row.get(field) {
            Some(v @ Value::String(_)) => Ok(v.clone()),
            Some(Value::Array(list)) if axolotl && !list.is_empty() => {
                messages(&Value::Array(list[list.len() - 1..].to_vec()), field, &role, &content)
            }
            Some(v @ Value::Array(_)) => messages(v, field, &role, &content),
            Some(v @ Value::Object(_)) => messages(&Value::Array(vec![v.clone()]), field, &role, &content),
            None | Some(Value::Null) => Err(format!("field `{field}` is missing")),
            Some(other) => {
                Err(format!("field `{field}` must be a string, a message or a message list, found {}", kind(other)))
            }
        }
    };
    let (chosen, rejected) = (answer(&d.field_chosen)?, answer(&d.field_rejected)?);
    if !axolotl && (prompt.is_string() != chosen.is_string() || chosen.is_string() != rejected.is_string()) {
        return Err(format!(
            "`{field}`, `{}` and `{}` must all be strings or all be messages",
            d.field_chosen, d.field_rejected
        ));
    }
    if chosen == rejected {
        return Err(format!("`{}` and `{}` are the same", d.field_chosen, d.field_rejected));
    }
    Ok(Preference { prompt, chosen, rejected, desirable: None })
}

/// Reads a row of Axolotl's `bradley_terry.chat_template`: an optional `system`, the user's
/// `input`, and the `chosen` and `rejected` answers (strings), as a pair whose prompt is the system
/// and user messages and whose answers are assistant messages.
pub fn parse_bradley_terry(row: &Value) -> Result<Preference, String> {
    let string = |field: &str, required: bool| -> Result<Option<String>, String> {
        match row.get(field) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            None | Some(Value::Null) if !required => Ok(None),
            None | Some(Value::Null) => Err(format!("field `{field}` is missing")),
            Some(other) => Err(format!("field `{field}` must be a string, found {}", kind(other))),
        }
    };
    let mut prompt = Vec::new();
    if let Some(system) = string("system", false)?.filter(|s| !s.is_empty()) {
        prompt.push(serde_json::json!({"role": "system", "content": system}));
    }
    let input = string("input", true)?.unwrap_or_default();
    prompt.push(serde_json::json!({"role": "user", "content": input}));
    let answer = |field: &str| -> Result<Value, String> {
        let text = string(field, true)?.unwrap_or_default();
        Ok(serde_json::json!([{"role": "assistant", "content": text}]))
    };
    let (chosen, rejected) = (answer("chosen")?, answer("rejected")?);
    if chosen == rejected {
        return Err("`chosen` and `rejected` are the same".into());
    }
    Ok(Preference { prompt: Value::Array(prompt), chosen, rejected, desirable: None })
}

/// Reads a row of Axolotl's ORPO `chat_template.argilla` as its `ORPODatasetParsingStrategy` does:
/// the prompt is the optional `system` (when not empty), then per user/assistant turn pair of
/// `chosen` the user's text (the row's `prompt` string instead, when the row has one) and, but for
/// the last pair, the assistant's; the answers are the last messages of `chosen` and `rejected`, as
/// assistant turns. Messages are read by position (their roles are not read), as in Axolotl; an odd
/// number of `chosen` messages is a bad row (Axolotl asserts).
pub fn parse_orpo_argilla(row: &Value) -> Result<Preference, String> {
    let list = |field: &str| -> Result<&Vec<Value>, String> {
        match row.get(field) {
            Some(Value::Array(list)) if !list.is_empty() => Ok(list),
            Some(Value::Array(_)) => Err(format!("field `{field}` is an empty list")),
            None | Some(Value::Null) => Err(format!("field `{field}` is missing")),
            Some(other) => Err(format!("field `{field}` must be a list of messages, found {}", kind(other))),
        }
    };
    let content = |field: &str, list: &[Value], i: usize| -> Result<String, String> {
        match list[i].get("content") {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(format!("{field}[{i}]: no `content` string")),
            Some(other) => Err(format!("{field}[{i}].content must be a string, found {}", kind(other))),
        }
    };
    let (chosen, rejected) = (list("chosen")?, list("rejected")?);
    if chosen.len() % 2 != 0 {
        return Err(format!(
            "field `chosen` has {} messages, not user and assistant turns in pairs (Axolotl: invalid number of turns)",
            chosen.len()
        ));
    }
    let user_text = match row.get("prompt") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(format!("field `prompt` must be a string, found {}", kind(other))),
    };
    let mut prompt = Vec::new();
    match row.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => prompt.push(serde_json::json!({"role": "system", "content": s})),
        Some(other) => return Err(format!("field `system` must be a string, found {}", kind(other))),
    }
    let turns = chosen.len() / 2;
    for i in 0..turns {
        let user = match &user_text {
            Some(text) => text.clone(),
            None => content("chosen", chosen, 2 * i)?,
        };
        prompt.push(serde_json::json!({"role": "user", "content": user}));
        if i + 1 < turns {
            prompt.push(serde_json::json!({"role": "assistant", "content": content("chosen", chosen, 2 * i + 1)?}));
        }
    }
    let answer = |field: &str, list: &[Value]| -> Result<Value, String> {
        Ok(serde_json::json!([{"role": "assistant", "content": content(field, list, list.len() - 1)?}]))
    };
    let (chosen, rejected) = (answer("chosen", chosen)?, answer("rejected", rejected)?);
    if chosen == rejected {
        return Err("the last messages of `chosen` and `rejected` are the same".into());
    }
    Ok(Preference { prompt: Value::Array(prompt), chosen, rejected, desirable: None })
}

/// Normalises a message list to `{role, content}` (ShareGPT's from/value and human/gpt accepted).
/// (role the template sees, the names a dataset may use for it): Axolotl's defaults, each role
/// a dataset's `roles` names replaced by its aliases.
type RoleAliases = Vec<(String, Vec<String>)>;

fn role_aliases(roles: Option<&serde_json::Map<String, Value>>) -> Result<RoleAliases, String> {
    let mut table: RoleAliases = [
        ("user", &["human", "user"][..]),
        ("assistant", &["gpt", "assistant"][..]),
        ("system", &["system"][..]),
        ("tool", &["tool"][..]),
    ]
    .iter()
    .map(|(r, a)| (r.to_string(), a.iter().map(|s| s.to_string()).collect()))
    .collect();
    for (role, names) in roles.into_iter().flatten() {
        let names: Vec<String> = match names {
            Value::String(a) => vec![a.clone()],
            Value::Array(list) if list.iter().all(Value::is_string) => {
                list.iter().filter_map(|a| a.as_str().map(str::to_owned)).collect()
            }
            _ => return Err(format!("roles.{role}: expected a name or a list of names")),
        };
        table.retain(|(r, _)| r != role);
        table.push((role.clone(), names));
    }
    Ok(table)
}

fn messages(list: &Value, field: &str, role: &(String, RoleAliases), content_key: &str) -> Result<Value, String> {
    let (role_key, aliases) = (role.0.as_str(), &role.1);
    let items = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if items.is_empty() {
        return Err(format!("field `{field}` is an empty list"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let get = |a: &str, b: &str| m.get(a).or_else(|| m.get(b)).and_then(Value::as_str);
            let role =
                get(role_key, "from").ok_or_else(|| format!("{field}[{i}]: no `{role_key}` (or `from`) string"))?;
            let content = get(content_key, "value")
                .ok_or_else(|| format!("{field}[{i}]: no `{content_key}` (or `value`) string"))?;
            let role = aliases.iter().find(|(_, names)| names.iter().any(|n| n == role)).map_or(role, |(r, _)| r);
            Ok(serde_json::json!({"role": role, "content": content}))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Value::Array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_output_needs_boolean_labels() {
        let entry: DatasetConfig = serde_json::from_value(json!({"path": "x.jsonl", "type": "input_output"})).unwrap();
        let ok = format_row(
            &entry,
            &json!({"segments": [{"text": "Q: ", "label": false}, {"text": "A", "label": true}]}),
            None,
        );
        assert_eq!(ok.unwrap(), Formatted::Segments(vec![("Q: ".into(), false), ("A".into(), true)]));
        let bad = format_row(&entry, &json!({"segments": [{"text": "Q", "label": "yes"}]}), None).unwrap_err();
        assert_eq!(bad, "segments[0]: field `label` must be true or false, found a string");
    }

    #[test]
    fn no_type_reads_pre_tokenized_rows() {
        for entry in [json!({"path": "x.jsonl"}), json!({"path": "x.jsonl", "type": null})] {
            let entry: DatasetConfig = serde_json::from_value(entry).unwrap();
            assert!(matches!(entry, DatasetConfig::Pretokenized(_)), "{entry:?}");
            let row = json!({"input_ids": [1, 5, 6], "attention_mask": [1, 1, 1], "labels": [-100, 5, 6], "id": "a"});
            let sample = Sample { input_ids: vec![1, 5, 6], labels: vec![IGNORE, 5, 6] };
            assert_eq!(format_row(&entry, &row, None).unwrap(), Formatted::Tokens(sample));
        }
        let bad = json!({"input_ids": [1, 5.5], "attention_mask": [1, 1], "labels": [1, 5]});
        assert_eq!(parse_pretokenized(&bad).unwrap_err(), "input_ids[1] must be an integer, found 5.5");
    }

    #[test]
    fn user_defined_fills_its_format() {
        let entry: DatasetConfig = serde_json::from_value(json!({"path": "x.jsonl", "type": {
            "field_instruction": "q", "field_output": "a", "format": "[INST] {instruction} {input} [/INST]",
            "no_input_format": "[INST] {instruction} [/INST]", "system_prompt": "Be brief.", "system_format": "<<{system}>> "
        }}))
        .unwrap();
        let f = format_row(&entry, &json!({"q": "Hi", "a": "Hello"}), None).unwrap();
        assert_eq!(
            f,
            Formatted::PromptResponse { prompt: "<<Be brief.>> [INST] Hi [/INST]".into(), response: "Hello".into() }
        );
        assert_eq!(format_row(&entry, &json!({"q": "Hi"}), None).unwrap_err(), "field `a` is missing");
    }

    #[test]
    fn redaction_reaches_message_contents_only() {
        let mut row = Formatted::Chat(json!({"id": "a1b2c3", "messages": [
            {"role": "user", "content": "mail ann@example.com", "tool_call_id": "call_9"},
            {"from": "gpt", "value": "ok"}
        ]}));
        let texts: Vec<String> = row.texts_mut("content").into_iter().map(|t| t.clone()).collect();
        assert_eq!(texts, ["mail ann@example.com", "ok"]);
    }

    #[test]
    fn preference_rows_in_both_shapes() {
        let entry = |extra: Value| -> PreferenceDataset {
            let mut d = json!({"path": "x.jsonl"});
            d.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value(d).unwrap()
        };
        let flat = entry(json!({"field_messages": "prompt"}));
        let pair = parse_preference(&json!({"prompt": "2+2?", "chosen": "4", "rejected": "5"}), &flat, false).unwrap();
        assert_eq!(pair.chosen, json!("4"));
        let sharegpt = entry(json!({"field_messages": "conversations"}));
        let pair = parse_preference(
            &json!({
                "conversations": [{"from": "human", "value": "2+2?"}],
                "chosen": {"from": "gpt", "value": "4"},
                "rejected": {"from": "gpt", "value": "5"}
            }),
            &sharegpt,
            false,
        )
        .unwrap();
        assert_eq!(pair.prompt, json!([{"role": "user", "content": "2+2?"}]));
        assert_eq!(pair.rejected, json!([{"role": "assistant", "content": "5"}]));
        let mapped = entry(json!({"message_property_mappings": {"role": "speaker", "content": "text"}}));
        let pair = parse_preference(
            &json!({"messages": [{"speaker": "user", "text": "hi"}], "chosen": [{"speaker": "assistant", "text": "hello"}],
                    "rejected": [{"speaker": "assistant", "text": "go away"}]}),
            &mapped, false,
        )
        .unwrap();
        assert_eq!(pair.chosen, json!([{"role": "assistant", "content": "hello"}]));
        // `roles` renames a dataset's role names (Axolotl's `chat_template.default` key).
        let renamed = entry(json!({"roles": {"assistant": ["model", "bot"], "user": "customer"}}));
        let pair = parse_preference(
            &json!({"messages": [{"role": "customer", "content": "hi"}], "chosen": [{"role": "bot", "content": "hello"}],
                    "rejected": [{"role": "model", "content": "no"}]}),
            &renamed, false,
        )
        .unwrap();
        assert_eq!(pair.prompt, json!([{"role": "user", "content": "hi"}]));
        assert_eq!(pair.chosen, json!([{"role": "assistant", "content": "hello"}]));
        assert_eq!(pair.rejected, json!([{"role": "assistant", "content": "no"}]));
        let bad = entry(json!({"roles": {"assistant": 3}}));
        assert_eq!(
            parse_preference(&json!({"prompt": "x", "chosen": "a", "rejected": "b"}), &bad, false).unwrap_err(),
            "roles.assistant: expected a name or a list of names"
        );
        assert_eq!(
            parse_preference(&json!({"prompt": "x", "chosen": "a"}), &flat, false).unwrap_err(),
            "field `rejected` is missing"
        );
        assert_eq!(
            parse_preference(&json!({"prompt": "x", "chosen": "a", "rejected": "a"}), &flat, false).unwrap_err(),
            "`chosen` and `rejected` are the same"
        );
        assert_eq!(
            parse_preference(
                &json!({"messages": [{"role": "user", "content": "x"}], "chosen": "a", "rejected": "b"}),
                &mapped,
                false
            )
            .unwrap_err(),
            "messages[0]: no `speaker` (or `from`) string"
        );
        assert_eq!(
            parse_preference(
                &json!({"prompt": "x", "chosen": {"role": "assistant", "content": "a"}, "rejected": "b"}),
                &flat,
                false
            )
            .unwrap_err(),
            "`prompt`, `chosen` and `rejected` must all be strings or all be messages"
        );
        // As Axolotl's dpo `default` reads rows: a string prompt is a user message, an answer list its
        // last message, any mix of shapes (UltraFeedback: a string prompt, answers as conversations).
        let ultrafeedback = json!({
            "prompt": "Hi there",
            "chosen": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello friend"}],
            "rejected": [{"role": "user"}, {"role": "assistant", "content": "Go away"}]
        });
        let pair = parse_preference(&ultrafeedback, &flat, true).unwrap();
        assert_eq!(pair.prompt, json!([{"role": "user", "content": "Hi there"}]));
        assert_eq!(pair.chosen, json!([{"role": "assistant", "content": "Hello friend"}]));
        assert_eq!(pair.rejected, json!([{"role": "assistant", "content": "Go away"}]));
        assert!(parse_preference(&ultrafeedback, &flat, false).is_err(), "TRL's rows are all strings or all messages");
    }
}

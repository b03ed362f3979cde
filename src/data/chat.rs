//! Chat datasets: a row's messages rendered with the chat template, tokenized, and labelled so that
//! exactly the trained turns carry loss (Axolotl's `chat_template` dataset type).
//!
//! A row holds a list of messages (`field_messages`, default `messages`); each message's role and
//! content are read through `message_property_mappings` (ShareGPT rows: `{role: from, content:
//! value}`) and the role through `roles` aliases (default: `human`/`user` → user, `gpt`/`assistant`
//! → assistant, `system`, `tool`). Messages of a role in `roles_to_train` (default `assistant`)
//! are trained, every one of them, not only the last; a message's own `training` field
//! (`message_field_training`) overrides that.
//!
//! **Finding the turns.** The conversation is rendered once. To find where message i's content
//! landed, it is rendered again with only that content replaced by a sentinel: the two texts
//! differ exactly where the template put the content (after whatever `trim` it applies). This
//! works for templates that look ahead (`loop.last`, a system message folded into the first user
//! turn) and never guesses: a content the template renders twice or transforms is an error for a
//! trained message, not a silently wrong mask. The rendered text is then tokenized once with byte
//! offsets; a token is trained when it overlaps a trained content (transformers' rule for
//! `return_assistant_tokens_mask`).
//!
//! **End of turn.** `train_on_eos` labels the EOS token that follows a turn's content before the
//! next message's content: `turn` after every trained turn, `last` after the final trained turn,
//! `all` after every turn, `none`. `eot_tokens` name other end-of-turn tokens (`<|eot_id|>`),
//! labelled the same way by `train_on_eot` (default: `train_on_eos`); as in Axolotl, EOS and EOT
//! are looked for separately, and EOS among the EOT tokens with two different policies is an
//! error. For a trained turn the tokens between its content and a labelled end-of-turn token are
//! labelled too (Llama-2's ` </s>` is `▁` + `</s>`; the model must learn to emit both). Axolotl
//! labels only the token itself there.
//!
//! Two options exist only to reproduce labels of Axolotl's legacy strategies (tests/masking.rs):
//! `train_trailing_text` (its `llama2_chat` labels the `<s>` its separator leaves after the last
//! answer) and [`Tokenization::PerMessage`] (its old `sharegpt` tokenized each turn on its own).

use super::template::{ChatTemplate, SpecialTokenStrings};
use super::{IGNORE, Sample};
use std::path::Path;

/// Which end-of-turn tokens carry loss (Axolotl's `train_on_eos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainOnEos {
    /// After every trained turn.
    #[default]
    Turn,
    /// Only after the final trained turn.
    Last,
    /// After every turn, trained or not.
    All,
    /// Never.
    None,
}

/// How the rendered conversation becomes tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tokenization {
    /// Tokenize the rendered conversation as one text (as transformers' `apply_chat_template` and
    /// Axolotl's `chat_template` do); special-token text in it is a special token.
    #[default]
    Whole,
    /// Axolotl's legacy `sharegpt` tokenization: each message's rendered turn (cut where rendering
    /// the first k messages ends) is tokenized on its own, so a SentencePiece tokenizer adds its
    /// word-boundary prefix to each; special-token text stays text; BOS goes before the first turn
    /// and EOS after each trained turn. Only for reproducing datasets prepared that way; needs a
    /// template whose rendering of the first k messages is a prefix of the whole rendering.
    PerMessage,
}

/// How a chat dataset's rows are read and labelled. `Default` is Axolotl's `chat_template` default.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatOptions {
    /// The row field holding the list of messages.
    pub field_messages: String,
    /// The message field holding the role (`message_property_mappings.role`).
    pub role_field: String,
    /// The message field holding the content (`message_property_mappings.content`).
    pub content_field: String,
    /// Role aliases: (role the template sees, names a dataset may use for it).
    pub roles: Vec<(String, Vec<String>)>,
    /// Roles whose turns carry loss (names or aliases).
    pub roles_to_train: Vec<String>,
    /// Which EOS tokens after the turns carry loss.
    pub train_on_eos: TrainOnEos,
    /// End-of-turn tokens besides EOS (each must be a single token); `None`: EOS alone.
    pub eot_tokens: Option<Vec<String>>,
    /// Which `eot_tokens` after the turns carry loss; `None`: as `train_on_eos`.
    pub train_on_eot: Option<TrainOnEos>,
    /// Drop a leading system message.
    pub drop_system_message: bool,
    /// A per-message boolean field that overrides `roles_to_train` for that message.
    pub message_field_training: Option<String>,
    /// A row field whose text becomes a leading system message when the messages have none.
    pub field_system: Option<String>,
    /// A row field with the tool definitions passed to the template as `tools`.
    pub field_tools: Option<String>,
    /// Also label everything the template renders after the final message's end-of-turn token,
    /// when the final message is trained (Axolotl's legacy `llama2_chat` did).
    pub train_trailing_text: bool,
    pub tokenization: Tokenization,
    /// The message field holding a turn's reasoning and the key the template reads it from
    /// (Axolotl's `field_thinking` / `template_thinking_key`, both `reasoning_content` by default).
    pub thinking: (String, String),
}

impl Default for ChatOptions {
    fn default() -> ChatOptions {
        let roles = [
            ("user", &["human", "user"][..]),
            ("assistant", &["gpt", "assistant"][..]),
            ("system", &["system"][..]),
            ("tool", &["tool"][..]),
        ];
        ChatOptions {
            field_messages: "messages".into(),
            role_field: "role".into(),
            content_field: "content".into(),
            roles: roles.iter().map(|(r, a)| (r.to_string(), a.iter().map(|s| s.to_string()).collect())).collect(),
            roles_to_train: vec!["assistant".into()],
            train_on_eos: TrainOnEos::Turn,
            eot_tokens: None,
            train_on_eot: None,
            drop_system_message: false,
            message_field_training: Some("training".into()),
            field_system: Some("system".into()),
            field_tools: Some("tools".into()),
            train_trailing_text: false,
            tokenization: Tokenization::Whole,
            thinking: ("reasoning_content".into(), "reasoning_content".into()),
        }
    }
}

impl ChatOptions {
    /// ShareGPT rows: `conversations: [{from, value}]`, with the default role aliases.
    pub fn sharegpt() -> ChatOptions {
        ChatOptions {
            field_messages: "conversations".into(),
            role_field: "from".into(),
            content_field: "value".into(),
            ..ChatOptions::default()
        }
    }

    /// The role a dataset name maps to, if any.
    pub fn canonical_role(&self, name: &str) -> Option<&str> {
        self.roles.iter().find(|(_, aliases)| aliases.iter().any(|a| a == name)).map(|(r, _)| r.as_str())
    }

    fn trains_role(&self, role: &str) -> bool {
        self.roles_to_train.iter().any(|r| r == role || self.canonical_role(r) == Some(role))
    }

    /// Reads a row into the messages the template sees and which of them are trained. Errors name
    /// the field and the message index.
    pub fn conversation(&self, row: &serde_json::Value) -> Result<Conversation, String> {
        let list = row
            .get(&self.field_messages)
            .ok_or_else(|| format!("field `{}` is missing", self.field_messages))?
            .as_array()
            .ok_or_else(|| format!("field `{}` is not a list of messages", self.field_messages))?;
        let mut messages = Vec::with_capacity(list.len() + 1);
        let mut train = Vec::with_capacity(list.len() + 1);
        for (i, m) in list.iter().enumerate() {
            let at = |what: String| format!("{}[{i}]: {what}", self.field_messages);
            let obj = m.as_object().ok_or_else(|| at(format!("not an object (found {})", kind(m))))?;
            let role_name = match obj.get(&self.role_field) {
                Some(serde_json::Value::String(s)) => s.as_str(),
                Some(other) => {
                    return Err(at(format!("field `{}` is not a string (found {})", self.role_field, kind(other))));
                }
                None => return Err(at(format!("field `{}` is missing", self.role_field))),
            };
            let role = self.canonical_role(role_name).ok_or_else(|| {
                let known: Vec<&str> = self.roles.iter().flat_map(|(_, a)| a.iter().map(String::as_str)).collect();
                at(format!("unknown role `{role_name}` (known: {}; map others with `roles:`)", known.join(", ")))
            })?;
            let content = match obj.get(&self.content_field) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                None | Some(serde_json::Value::Null) if obj.contains_key("tool_calls") => None,
                Some(other) => {
                    return Err(at(format!("field `{}` is not a string (found {})", self.content_field, kind(other))));
                }
                None => return Err(at(format!("field `{}` is missing", self.content_field))),
            };
            let mut trained = self.trains_role(role);
            if let Some(field) = &self.message_field_training {
                match obj.get(field) {
                    None | Some(serde_json::Value::Null) => {}
                    Some(serde_json::Value::Bool(b)) => trained = *b,
                    Some(other) => return Err(at(format!("field `{field}` is not a boolean (found {})", kind(other)))),
                }
            }
            if trained && content.is_none() {
                return Err(at(
                    "a trained message without text content (tool calls only) cannot be labelled yet".into()
                ));
            }
            let mut out = serde_json::Map::new();
            out.insert("role".into(), role.into());
            if let Some(c) = content {
                out.insert("content".into(), c.into());
            }
            let (thinking_field, thinking_key) = &self.thinking;
            for (k, v) in obj {
                let mapped = *k == self.role_field || *k == self.content_field;
                let training_field = self.message_field_training.as_deref() == Some(k.as_str());
                if !mapped && !training_field && k != "role" && k != "content" && k != thinking_field {
                    out.insert(k.clone(), v.clone());
                }
            }
            // The reasoning goes in last so that it wins over a field already named like the key.
            if let Some(reasoning) = obj.get(thinking_field).filter(|v| !v.is_null()) {
                out.insert(thinking_key.clone(), reasoning.clone());
            }
            messages.push(serde_json::Value::Object(out));
            train.push(trained);
        }
        if let Some(field) = &self.field_system {
            let first_is_system = messages.first().is_some_and(|m| m["role"] == "system");
            match row.get(field) {
                Some(serde_json::Value::String(s)) if !first_is_system => {
                    messages.insert(0, serde_json::json!({"role": "system", "content": s}));
                    train.insert(0, self.trains_role("system"));
                }
                Some(serde_json::Value::String(_)) | Some(serde_json::Value::Null) | None => {}
                Some(other) => return Err(format!("field `{field}` is not a string (found {})", kind(other))),
            }
        }
        if self.drop_system_message && messages.first().is_some_and(|m| m["role"] == "system") {
            messages.remove(0);
            train.remove(0);
        }
        if messages.is_empty() {
            return Err(format!("field `{}` has no messages", self.field_messages));
        }
        let tools = match self.field_tools.as_ref().and_then(|f| row.get(f).map(|v| (f, v))) {
            None | Some((_, serde_json::Value::Null)) => None,
            Some((_, v @ serde_json::Value::Array(_))) => Some(v.clone()),
            Some((f, serde_json::Value::String(s))) => Some(
                serde_json::from_str(s)
                    .map_err(|e| format!("field `{f}` is a string but not JSON tool definitions: {e}"))?,
            ),
            Some((f, other)) => return Err(format!("field `{f}` is not a list of tools (found {})", kind(other))),
        };
        Ok(Conversation { messages, train, tools })
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A row's messages as the template sees them (`role`, `content`, and any other fields), which are
/// trained, and the row's tools.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub messages: Vec<serde_json::Value>,
    pub train: Vec<bool>,
    pub tools: Option<serde_json::Value>,
}

/// Token ids and each token's byte range in the text.
pub type Encoded = (Vec<i64>, Vec<(usize, usize)>);

/// What chat tokenization needs from a tokenizer: byte offsets, and the BOS/EOS ids.
pub trait ChatEncoder {
    /// Token ids of `text` and each token's byte range in it, without special tokens added. Text
    /// of special tokens in `text` is encoded as those tokens, unless `specials_as_text`.
    fn encode_offsets(&self, text: &str, specials_as_text: bool) -> Result<Encoded, String>;
    /// The id of a token given by its text, when it is one token of the vocabulary.
    fn token_id(&self, token: &str) -> Option<i64>;
    /// BOS, when the tokenizer adds one to a text.
    fn bos_id(&self) -> Option<i64>;
    fn eos_id(&self) -> Option<i64>;
}

/// A `tokenizers` tokenizer with its special tokens (as `SpecialTokenStrings::from_model_dir` resolves them), for chat
/// tokenization.
pub struct ChatTokenizer {
    inner: tokenizers::Tokenizer,
    plain: tokenizers::Tokenizer,
    bos: Option<i64>,
    eos: Option<i64>,
    add_bos: bool,
    special: SpecialTokenStrings,
}

impl ChatTokenizer {
    /// A model folder's tokenizer.json with its special tokens, BOS added when the tokenizer adds
    /// one (as `Tokenizer::load` decides it).
    pub fn load(dir: &Path) -> Result<ChatTokenizer, String> {
        let special = SpecialTokenStrings::from_model_dir(dir)?;
        let add_bos = super::Tokenizer::load(dir)?.bos().is_some();
        ChatTokenizer::from_file(&dir.join("tokenizer.json"), special, add_bos)
    }

    /// A tokenizer.json with the given special tokens.
    pub fn from_file(
        tokenizer_json: &Path,
        special: SpecialTokenStrings,
        add_bos: bool,
    ) -> Result<ChatTokenizer, String> {
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| format!("{}: {e}", tokenizer_json.display()))?;
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        let id = |t: &Option<String>| t.as_deref().and_then(|t| inner.token_to_id(t)).map(i64::from);
        let (bos, eos) = (id(&special.bos_token), id(&special.eos_token));
        Ok(ChatTokenizer { inner, plain, bos, eos, add_bos, special })
    }

    /// The special tokens as text, for the template.
    pub fn special_tokens(&self) -> &SpecialTokenStrings {
        &self.special
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner.decode(&ids, false).unwrap_or_default()
    }
}

impl ChatEncoder for ChatTokenizer {
    fn encode_offsets(&self, text: &str, specials_as_text: bool) -> Result<Encoded, String> {
        let tok = if specials_as_text { &self.plain } else { &self.inner };
        let enc = tok.encode(text, false).map_err(|e| format!("cannot tokenize: {e}"))?;
        Ok((enc.get_ids().iter().map(|&i| i64::from(i)).collect(), enc.get_offsets().to_vec()))
    }

    fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    fn bos_id(&self) -> Option<i64> {
        self.bos.filter(|_| self.add_bos)
    }

    fn eos_id(&self) -> Option<i64> {
        self.eos
    }
}

/// Tokenizes one dataset row: [`ChatOptions::conversation`], then [`tokenize_conversation`].
pub fn tokenize_row(
    row: &serde_json::Value,
    options: &ChatOptions,
    template: &ChatTemplate,
    special: &SpecialTokenStrings,
    tok: &dyn ChatEncoder,
) -> Result<Sample, String> {
    let conversation = options.conversation(row)?;
    tokenize_conversation(&conversation, options, template, special, tok)
}

// Private-use characters around a marker no template or tokenizer changes.
const SENTINEL: &str = "\u{E000}recipe-content-sentinel\u{E001}";

/// Renders a conversation and labels its trained turns (see the module docs).
pub fn tokenize_conversation(
    conv: &Conversation,
    options: &ChatOptions,
    template: &ChatTemplate,
    special: &SpecialTokenStrings,
    tok: &dyn ChatEncoder,
) -> Result<Sample, String> {
    let n = conv.messages.len();
    let render = |msgs: &[serde_json::Value]| -> Result<String, String> {
        template.render(msgs, conv.tools.as_ref(), false, special).map_err(String::from)
    };
    let text = render(&conv.messages)?;

    // Where each message's content is in `text`.
    let mut spans: Vec<Option<(usize, usize)>> = Vec::with_capacity(n);
    for i in 0..n {
        if conv.messages[i].get("content").is_none() {
            spans.push(None);
            continue;
        }
        let mut probe = conv.messages.clone();
        probe[i]["content"] = SENTINEL.into();
        let span = match render(&probe) {
            Ok(other) => content_span(&text, &other)
                .ok_or("the template leaves it out, renders it more than once or changes it".to_string()),
            Err(e) => Err(format!("rendering it with a placeholder content fails: {e}")),
        };
        if let Err(why) = &span
            && conv.train[i]
        {
            return Err(format!(
                "message {i} ({}): cannot locate its content in the rendered conversation ({why}), so its labels cannot be set",
                conv.messages[i]["role"].as_str().unwrap_or("?")
            ));
        }
        let span = span.ok();
        spans.push(span);
    }

    // Tokens with their byte ranges in `text`.
    let (input_ids, offsets) = match options.tokenization {
        Tokenization::Whole => tok.encode_offsets(&text, false)?,
        Tokenization::PerMessage => per_message_tokens(conv, &text, &render, tok)?,
    };

    // End-of-turn markers, each with its policy: the EOT tokens (when named), then EOS.
    let eos: Vec<i64> = tok.eos_id().into_iter().collect();
    let mut markers: Vec<(Vec<i64>, TrainOnEos)> = Vec::new();
    if let Some(list) = &options.eot_tokens {
        let ids: Vec<i64> = list
            .iter()
            .map(|t| tok.token_id(t).ok_or_else(|| format!("eot token `{t}` is not a single token of the tokenizer")))
            .collect::<Result<_, _>>()?;
        let on_eot = options.train_on_eot.unwrap_or(options.train_on_eos);
        if eos.iter().any(|e| ids.contains(e)) && on_eot != options.train_on_eos {
            return Err(format!(
                "the EOS token is among eot_tokens, but train_on_eos ({:?}) and train_on_eot ({on_eot:?}) differ",
                options.train_on_eos
            )
            .to_lowercase());
        }
        markers.push((ids, on_eot));
    }
    markers.push((eos, options.train_on_eos));

    let mut labels = vec![IGNORE; input_ids.len()];
    let mut label = |k: usize| labels[k] = input_ids[k];
    let located: Vec<(usize, (usize, usize))> =
        spans.iter().enumerate().filter_map(|(i, s)| s.map(|s| (i, s))).collect();
    let last_trained = located.iter().rev().find(|(i, _)| conv.train[*i]).map(|(i, _)| *i);
    let mut trailing_from = None;
    for &(i, (start, end)) in &located {
        if conv.train[i] && start < end {
            for (k, &(a, b)) in offsets.iter().enumerate() {
                if a < end && b > start {
                    label(k);
                }
            }
        }
        // Each kind of end-of-turn token: the first one after the content, before the next content.
        let next = located.iter().map(|(_, (s, _))| *s).filter(|&s| s >= end && s > start).min().unwrap_or(text.len());
        let mut turn_end = None;
        for (ids, policy) in &markers {
            let at = (0..offsets.len())
                .find(|&k| offsets[k].0 >= end && offsets[k].0 <= next && ids.contains(&input_ids[k]));
            let wanted = match policy {
                TrainOnEos::Turn => conv.train[i],
                TrainOnEos::All => true,
                TrainOnEos::Last => Some(i) == last_trained,
                TrainOnEos::None => false,
            };
            if let Some(k) = at.filter(|_| wanted) {
                if conv.train[i] {
                    // the turn's tail: everything between the content and its end-of-turn token
                    for (j, &(a, _)) in offsets.iter().enumerate().take(k + 1) {
                        if a >= end {
                            label(j);
                        }
                    }
                }
                label(k);
            }
            turn_end = turn_end.max(at);
        }
        if i == n - 1 && conv.train[i] {
            trailing_from = Some(match turn_end {
                Some(k) => k + 1,
                None => offsets.iter().position(|&(a, _)| a >= end).unwrap_or(offsets.len()),
            });
        }
    }
    if let Some(from) = trailing_from.filter(|_| options.train_trailing_text) {
        for k in from..input_ids.len() {
            label(k);
        }
    }
    Ok(Sample { input_ids, labels })
}

/// The byte range where `full` and `other` differ, when `other` holds exactly the sentinel there.
fn content_span(full: &str, other: &str) -> Option<(usize, usize)> {
    let (a, b) = (full.as_bytes(), other.as_bytes());
    let mut p = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    while !full.is_char_boundary(p) {
        p -= 1;
    }
    let max_s = (a.len() - p).min(b.len() - p);
    let mut s = a.iter().rev().zip(b.iter().rev()).take(max_s).take_while(|(x, y)| x == y).count();
    while !full.is_char_boundary(a.len() - s) || !other.is_char_boundary(b.len() - s) {
        s -= 1;
    }
    (&other[p..b.len() - s] == SENTINEL).then_some((p, a.len() - s))
}

/// Axolotl's legacy per-turn tokenization (see [`Tokenization::PerMessage`]).
fn per_message_tokens(
    conv: &Conversation,
    text: &str,
    render: &dyn Fn(&[serde_json::Value]) -> Result<String, String>,
    tok: &dyn ChatEncoder,
) -> Result<Encoded, String> {
    let n = conv.messages.len();
    // cuts[i]: where message i's turn ends; before the first, what the template renders for no
    // messages (a default system prompt), when that is how the conversation starts.
    let preamble = render(&[]).ok().filter(|p| text.starts_with(p.as_str())).map_or(0, |p| p.len());
    let mut cuts = vec![preamble];
    for i in 0..n {
        let end = if i + 1 == n {
            text.len()
        } else {
            let prefix = render(&conv.messages[..=i])?;
            if !text.starts_with(&prefix) {
                return Err(format!(
                    "per-message tokenization: rendering the first {} messages is not a prefix of rendering them all",
                    i + 1
                ));
            }
            prefix.len()
        };
        cuts.push(end.max(*cuts.last().unwrap()));
    }
    let mut ids: Vec<i64> = Vec::new();
    let mut offsets = Vec::new();
    if let Some(bos) = tok.bos_id() {
        ids.push(bos);
        offsets.push((0, 0));
    }
    let pieces: Vec<(Option<usize>, usize, usize)> =
        std::iter::once((None, 0, cuts[0])).chain((0..n).map(|i| (Some(i), cuts[i], cuts[i + 1]))).collect();
    for (message, from, to) in pieces {
        if from < to {
            let (piece_ids, piece_offsets) = tok.encode_offsets(&text[from..to], true)?;
            ids.extend(piece_ids);
            offsets.extend(piece_offsets.into_iter().map(|(a, b)| (a + from, b + from)));
        }
        if message.is_some_and(|i| conv.train[i]) {
            let eos = tok.eos_id().ok_or("per-message tokenization needs an EOS token")?;
            ids.push(eos);
            offsets.push((to, to));
        }
    }
    Ok((ids, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_span_finds_the_difference() {
        let full = "<u>hello</u><a>héllo</a>";
        let other = format!("<u>hello</u><a>{SENTINEL}</a>");
        assert_eq!(content_span(full, &other), Some((15, 21)));
        // the same text twice: the sentinel region holds more than the sentinel
        let other = format!("<u>{SENTINEL}</u><a>{SENTINEL}</a>");
        assert_eq!(content_span("<u>x</u><a>x</a>", &other), None);
        // an empty content
        let other = format!("<u></u><a>{SENTINEL}</a>");
        assert_eq!(content_span("<u></u><a></a>", &other), Some((10, 10)));
    }
}

//! Preference pairs for `rl:` recipes (`type: chat_template.default`, Axolotl's `chatml.*` /
//! `llama3.*` string types, ORPO's `chat_template.argilla`) and reward models: rows go through the
//! same read / format / hygiene stages as supervised data, then each pair becomes texts and is
//! tokenized as the method's TRL trainer does it (`Tokenization`):
//!
//! - `chat_template.default` message rows under DPO, IPO, SimPO become texts as Axolotl's
//!   `dpo/chat_template.py` `default` makes them (`axolotl_default_texts`), which the trainer then
//!   reads as text rows; under KTO and ORPO they are TRL's conversational rows (`render_row`);
//! - DPO, IPO, KTO (TRL 1.16's DPOTrainer / KTOTrainer): the prompt and prompt + answer are
//!   tokenized whole and the answer starts where their tokens part, so no token boundary is forced
//!   at the join. Conversational rows: the prompt rendered with the generation prompt and each full
//!   conversation (the template writes the turn markers and any BOS / EOS; nothing is added). Text
//!   rows: `tokenizer(text)` (BOS when the tokenizer adds one), each answer ending with EOS's text
//!   unless it already does;
//! - ORPO, SimPO (TRL's ORPOTrainer / CPOTrainer, Axolotl's trainers for them): conversational rows
//!   become texts first (the answer is the text its conversation adds after the prompt); the
//!   answer's tokens are those of prompt + answer after the prompt's; BOS before the prompt and EOS
//!   after each answer where missing;
//! - a reward model's sequences are tokenized in one piece (TRL's RewardTrainer);
//! - a pair longer than `sequence_len` (prompt + the longer answer) is dropped, truncated (answers
//!   cut, the prompt kept) or refused, per `excess_length_strategy`;
//! - a pair with an empty answer, or the same chosen and rejected answer, is a bad row (refused with
//!   its place, or skipped and counted under `skip_bad_rows`).
//!
//! Datasets mix (weights), shuffle and split like supervised samples; test pairs are removed from
//! training. `recipe preview` and `recipe preprocess` check and show the pairs; `recipe run` trains on
//! them (exec/objective.rs, `Preference`).

use super::{Counts, DatasetPlan, Formatted, Tokenizer, dataset_template, formatted_rows, mix, template};
use crate::config::datasets::{DatasetConfig, ExcessLength};
use crate::config::training::RlMethod;
use crate::plan::Plan;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde_json::Value;
use std::path::Path;

/// One tokenized preference pair and the texts it came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pair {
    /// File and line/row.
    pub origin: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// The prompt's ids before the chosen answer, and before the rejected one unless
    /// `rejected_prompt_ids` says otherwise.
    pub prompt_ids: Vec<i64>,
    pub chosen_ids: Vec<i64>,
    /// The prompt's ids before the rejected answer where they differ from those before the chosen
    /// one: KTO, ORPO and SimPO split each answer from its prompt on its own, and a token merged
    /// across the join in one sequence only moves one boundary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_prompt_ids: Option<Vec<i64>>,
    pub rejected_ids: Vec<i64>,
    /// KTO's unpaired rows: the one answer (in `chosen`; `rejected` empty) and whether it is
    /// desirable. None for pairs.
    pub desirable: Option<bool>,
}

impl Pair {
    /// The prompt's ids before the rejected answer.
    pub fn rejected_prompt(&self) -> &[i64] {
        self.rejected_prompt_ids.as_deref().unwrap_or(&self.prompt_ids)
    }

    /// Tokens of the longer of prompt + chosen and prompt + rejected.
    pub fn len(&self) -> usize {
        (self.prompt_ids.len() + self.chosen_ids.len()).max(self.rejected_prompt().len() + self.rejected_ids.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Training, validation and test pairs, and what preparing them did.
#[derive(Debug, Clone, Default)]
pub struct PreparedPairs {
    pub train: Vec<Pair>,
    pub validation: Vec<Pair>,
    pub test: Vec<Pair>,
    pub report: Vec<String>,
}

/// Prepares every dataset of an `rl:` plan as preference pairs.
pub fn prepare(plan: &Plan, tok: &Tokenizer, tokenizer_dir: &Path) -> Result<PreparedPairs, String> {
    let mut report = Vec::new();
    let mut per_dataset = Vec::new();
    for (i, d) in plan.datasets.iter().enumerate() {
        let (pairs, counts) = dataset_pairs(d, plan, tok, tokenizer_dir).map_err(|e| format!("datasets[{i}]: {e}"))?;
        report.push(super::describe("datasets", i, d, &counts).replace(" samples", " pairs"));
        per_dataset.push((pairs, d.entry.source().weight));
    }
    let mut test = Vec::new();
    for (i, d) in plan.test_datasets.iter().enumerate() {
        let (pairs, counts) =
            dataset_pairs(d, plan, tok, tokenizer_dir).map_err(|e| format!("test_datasets[{i}]: {e}"))?;
        report.push(super::describe("test_datasets", i, d, &counts).replace(" samples", " pairs"));
        test.extend(pairs);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(plan.data.seed);
    let mut pairs = mix(per_dataset, &mut rng, &mut report);
    if !test.is_empty() {
        let key = |p: &Pair| {
            (
                p.prompt_ids.clone(),
                p.chosen_ids.clone(),
                p.rejected_prompt_ids.clone(),
                p.rejected_ids.clone(),
                p.desirable,
            )
        };
        let held: std::collections::HashSet<_> = test.iter().map(key).collect();
        let before = pairs.len();
        pairs.retain(|p| !held.contains(&key(p)));
        if pairs.len() < before {
            report.push(format!("removed {} training pairs that also appear in test_datasets", before - pairs.len()));
        }
    }
    if pairs.is_empty() {
        return Err(format!("the datasets give no preference pair ({})", report.join("; ")));
    }
    if plan.data.shuffle {
        pairs.shuffle(&mut rng);
    }
    let val = plan.data.val_set_size;
    let n_val = if val <= 0.0 { 0 } else { (pairs.len() as f64 * val).ceil() as usize };
    if n_val >= pairs.len() {
        return Err(format!("val_set_size {val} leaves no training pair out of {}", pairs.len()));
    }
    let validation = pairs.split_off(pairs.len() - n_val);
    Ok(PreparedPairs { train: pairs, validation, test, report })
}

fn dataset_pairs(
    d: &DatasetPlan,
    plan: &Plan,
    tok: &Tokenizer,
    tokenizer_dir: &Path,
) -> Result<(Vec<Pair>, Counts), String> {
    let own_template = match &d.entry {
        DatasetConfig::Preference(entry) => entry.chat_template,
        DatasetConfig::BradleyTerry(entry) => entry.chat_template,
        // Axolotl's string types write their turns out; ORPO's argilla renders with the recipe's
        // `chat_template` (Axolotl reads no dataset-level template for it).
        DatasetConfig::StringTransform(_) | DatasetConfig::OrpoArgilla(_) => None,
        _ => {
            return Err(format!("type `{}` holds no preference pairs; use type: chat_template.default", d.r#type));
        }
    };
    let method = plan.training.preference.as_ref().map(|p| p.method);
    let tokenization = match method {
        _ if plan.training.reward.is_some() => Tokenization::Whole,
        Some(RlMethod::Orpo | RlMethod::Simpo) => Tokenization::PromptThenAnswer,
        Some(RlMethod::Kto) => Tokenization::Joint { shared_prompt: false },
        _ => Tokenization::Joint { shared_prompt: true },
    };
    // Under the methods that read Axolotl's prompt_strategies/dpo, `chat_template.default` is its
    // `default` transform (every row has a message prompt by then: formats.rs); under the others
    // (and for reward models) message rows are TRL's conversational rows.
    let axolotl_default = matches!(d.entry, DatasetConfig::Preference(_))
        && tokenization != Tokenization::Whole
        && matches!(method, Some(RlMethod::Dpo | RlMethod::Ipo | RlMethod::Simpo));
    let mut c = Counts::default();
    let formatted = formatted_rows(d, plan, None, &mut c)?;
    let needs_template = formatted.iter().any(|(_, f)| matches!(f, Formatted::Preference(p) if p.prompt.is_array()));
    let template = if needs_template { Some(dataset_template(d, own_template, plan, tokenizer_dir)?) } else { None };
    let rendered: Vec<Result<(Pair, Option<String>), String>> = formatted
        .par_iter()
        .map(|(origin, f)| {
            let Formatted::Preference(p) = f else { unreachable!("preference datasets format to pairs") };
            let rendered = match &template {
                Some((template, special)) if p.prompt.is_array() => match tokenization {
                    Tokenization::Whole => render_sequences(template, special, p)?,
                    _ if axolotl_default => axolotl_default_texts(template, special, p)?,
                    _ => render_row(template, special, p, tokenization == Tokenization::PromptThenAnswer)?,
                },
                _ => Rendered {
                    prompt: text(&p.prompt),
                    chosen: text(&p.chosen),
                    rejected: if p.desirable.is_some() { String::new() } else { text(&p.rejected) },
                    conversation: None,
                },
            };
            // A pair must be able to teach something: two answers, and different ones; an unpaired
            // row, its one answer. A reward model's sequences are judged by their answers' words.
            let conversation_words = (tokenization == Tokenization::Whole && p.prompt.is_array())
                .then(|| (answer_text(&p.chosen), answer_text(&p.rejected)));
            let (chosen_words, rejected_words) = conversation_words
                .as_ref()
                .map_or((rendered.chosen.as_str(), rendered.rejected.as_str()), |(c, r)| (c.as_str(), r.as_str()));
            if p.desirable.is_some() {
                if chosen_words.trim().is_empty() {
                    return Err("the answer is empty".into());
                }
            } else if chosen_words.trim().is_empty() || rejected_words.trim().is_empty() {
                let which = if chosen_words.trim().is_empty() { "chosen" } else { "rejected" };
                return Err(format!("the {which} answer is empty"));
            } else if rendered.chosen == rendered.rejected {
                return Err("the chosen and the rejected answer are the same".into());
            }
            let ids = match tokenization {
                Tokenization::Joint { shared_prompt } => {
                    tokenize_joint(tok, &rendered, p.desirable.is_some(), shared_prompt)?
                }
                Tokenization::PromptThenAnswer => tokenize_prompt_then_answer(tok, &rendered)?,
                Tokenization::Whole => tokenize_whole(tok, &rendered, p.prompt.is_string())?,
            };
            let Rendered { prompt, chosen, rejected, .. } = rendered;
            let pair = Pair {
                origin: origin.clone(),
                prompt,
                chosen,
                rejected,
                prompt_ids: ids.prompt,
                chosen_ids: ids.chosen,
                rejected_prompt_ids: ids.rejected_prompt,
                rejected_ids: ids.rejected,
                desirable: p.desirable,
            };
            let left_out =
                ids.prompt_end_left_out.map(|ids| format!("{:?}, ids {ids:?}", tok.decode_with_special(&ids)));
            Ok((pair, left_out))
        })
        .zip(formatted.par_iter())
        .map(|(pair, (origin, _))| pair.map_err(|e| format!("{origin}: {e}")))
        .collect();
    let mut cut_prompts = Vec::new();
    let seq_len = plan.data.sequence_len as usize;
    let mut pairs = Vec::with_capacity(rendered.len());
    for pair in rendered {
        let mut pair = match pair {
            Ok((pair, left_out)) => {
                if let Some(left_out) = left_out {
                    cut_prompts.push((pair.origin.clone(), left_out));
                }
                pair
            }
            Err(e) if plan.data.skip_bad_rows => {
                c.bad_rows += 1;
                tracing::debug!("skipped {e}");
                continue;
            }
            Err(e) => return Err(format!("{e} (set skip_bad_rows: true to skip such rows)")),
        };
        if pair.len() > seq_len {
            match plan.data.excess_length_strategy {
                ExcessLength::Drop => {
                    c.dropped_long += 1;
                    continue;
                }
                ExcessLength::Truncate if pair.prompt_ids.len().max(pair.rejected_prompt().len()) < seq_len => {
                    let rejected_room = seq_len - pair.rejected_prompt().len();
                    pair.chosen_ids.truncate(seq_len - pair.prompt_ids.len());
                    pair.rejected_ids.truncate(rejected_room);
                    c.truncated += 1;
                }
                ExcessLength::Truncate => {
                    c.dropped_long += 1;
                    continue;
                }
                ExcessLength::Raise => {
                    return Err(format!(
                        "{}: {} tokens, longer than sequence_len {seq_len} (excess_length_strategy: raise)",
                        pair.origin,
                        pair.len()
                    ));
                }
            }
        }
        pairs.push(pair);
    }
    if let Some((origin, left_out)) = cut_prompts.first() {
        // TRL warns once; the count says how often.
        c.notes.push(format!(
            "in {} of {} rows the tokenized prompt is not a prefix of the tokenized prompt + answer (the template \
             renders the prompt alone differently, or tokens merge across the join): as TRL does, the answer starts \
             where they part and the prompt's end is left out (first: {origin}, {left_out})",
            cut_prompts.len(),
            formatted.len()
        ));
    }
    c.samples = pairs.len();
    Ok((pairs, c))
}

/// A string field as written; message lists never reach here without a template.
fn text(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
}

/// An answer's words: the string, or the contents of its messages.
fn answer_text(answer: &Value) -> String {
    match answer {
        Value::Array(list) => list.iter().map(|m| text(m.get("content").unwrap_or(&Value::Null))).collect(),
        other => text(other),
    }
}

/// The prompt's messages followed by the answer, rendered whole (no generation prompt).
fn render_conversation(
    template: &template::ChatTemplate,
    special: &template::SpecialTokenStrings,
    prompt: &Value,
    answer: &Value,
) -> Result<String, String> {
    let mut messages: Vec<Value> = prompt.as_array().cloned().unwrap_or_default();
    match answer {
        Value::Array(list) => messages.extend(list.iter().cloned()),
        Value::String(s) => messages.push(serde_json::json!({"role": "assistant", "content": s})),
        other => messages.push(other.clone()),
    }
    template.render(&messages, None, false, special).map_err(String::from)
}

/// How a method's TRL trainer turns a row's texts into token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tokenization {
    /// DPO, IPO, KTO (TRL 1.16's DPOTrainer / KTOTrainer `_prepare_dataset`): the prompt and prompt +
    /// answer tokenized whole; the answer starts where their tokens part (for both answers of a
    /// pair at once in DPO's case).
    Joint { shared_prompt: bool },
    /// ORPO, SimPO (TRL's ORPOTrainer / CPOTrainer `tokenize_row`, on texts): prompt + answer
    /// tokenized whole, the answer from the prompt's token count on (one earlier when the prompt's
    /// last token merged), BOS and EOS added where missing.
    PromptThenAnswer,
    /// A reward model (TRL's RewardTrainer): each sequence tokenized in one piece.
    Whole,
}

/// A row's texts: what `recipe preview` shows (the prompt, and each answer as the text it adds),
/// and for message rows the renders TRL tokenizes.
struct Rendered {
    prompt: String,
    chosen: String,
    rejected: String,
    /// TRL's conversational rows: the prompt with the generation prompt, and prompt + chosen /
    /// rejected rendered whole (rejected empty for an unpaired row). None for rows the trainer reads
    /// as texts.
    conversation: Option<[String; 3]>,
}

/// A message row as TRL's conversational rows: the prompt shown is the part of the
/// generation-prompt render that the full conversations share (TRL's `apply_chat_template`: some
/// templates render a prompt alone differently), each answer the rest of its conversation. Where
/// the trainer works on these texts (`to_text`: ORPO), a prompt must end with a user or tool turn:
/// TRL continues a final assistant message and refuses a final system one.
fn render_row(
    template: &template::ChatTemplate,
    special: &template::SpecialTokenStrings,
    p: &super::formats::Preference,
    to_text: bool,
) -> Result<Rendered, String> {
    let messages = p.prompt.as_array().map_or(&[][..], Vec::as_slice);
    let last_role = messages.last().and_then(|m| m.get("role")).and_then(Value::as_str).unwrap_or("user");
    if to_text && !matches!(last_role, "user" | "tool") {
        return Err(format!(
            "the prompt ends with a `{last_role}` message; TRL's trainer for this method renders such a prompt \
             otherwise (it continues a final assistant message and refuses a final system one): end the prompt \
             with a user or tool message"
        ));
    }
    let prompt = template.render(messages, None, true, special).map_err(String::from)?;
    let chosen = render_conversation(template, special, &p.prompt, &p.chosen)?;
    let rejected = if p.desirable.is_some() {
        String::new()
    } else {
        render_conversation(template, special, &p.prompt, &p.rejected)?
    };
    let mut shared = common_prefix(&prompt, &chosen);
    if p.desirable.is_none() {
        shared = shared.min(common_prefix(&prompt, &rejected));
    }
    Ok(Rendered {
        prompt: prompt[..shared].to_string(),
        chosen: chosen[shared..].to_string(),
        rejected: rejected.get(shared..).unwrap_or_default().to_string(),
        conversation: (!to_text).then(|| [prompt, chosen, rejected]),
    })
}

/// A reward model's two sequences: the prompt's messages followed by each answer, rendered whole;
/// no prompt of their own.
fn render_sequences(
    template: &template::ChatTemplate,
    special: &template::SpecialTokenStrings,
    p: &super::formats::Preference,
) -> Result<Rendered, String> {
    Ok(Rendered {
        prompt: String::new(),
        chosen: render_conversation(template, special, &p.prompt, &p.chosen)?,
        rejected: render_conversation(template, special, &p.prompt, &p.rejected)?,
        conversation: None,
    })
}

/// Axolotl's `prompt_strategies/dpo/chat_template.py` `default`, which hands TRL texts: the prompt
/// rendered with the generation prompt; each answer (a string is an assistant message, a list its
/// last message) rendered after a placeholder user turn, cut from where its content first appears,
/// trailing whitespace removed. The trainer then tokenizes them as text rows (BOS from the
/// tokenizer, EOS's text after each answer).
fn axolotl_default_texts(
    template: &template::ChatTemplate,
    special: &template::SpecialTokenStrings,
    p: &super::formats::Preference,
) -> Result<Rendered, String> {
    let messages = p.prompt.as_array().map_or(&[][..], Vec::as_slice);
    let prompt = template.render(messages, None, true, special).map_err(String::from)?;
    let answer = |which: &str, v: &Value| -> Result<String, String> {
        let message = match v {
            Value::String(s) => serde_json::json!({"role": "assistant", "content": s}),
            Value::Array(list) => list.last().cloned().unwrap_or(Value::Null),
            other => other.clone(),
        };
        let content = text(message.get("content").unwrap_or(&Value::Null));
        if content.trim().is_empty() {
            return Err(format!("the {which} answer is empty"));
        }
        let placeholder = serde_json::json!({"role": "user", "content": "[[dummy_message]]"});
        let rendered = template.render(&[placeholder, message], None, false, special).map_err(String::from)?;
        let at = rendered.find(&content).ok_or_else(|| {
            format!(
                "template `{}` does not write the {which} answer's text as given, so Axolotl's chat_template.default \
                 cannot cut the answer out of its render",
                template.name()
            )
        })?;
        Ok(rendered[at..].trim_end().to_string())
    };
    Ok(Rendered {
        prompt,
        chosen: answer("chosen", &p.chosen)?,
        rejected: answer("rejected", &p.rejected)?,
        conversation: None,
    })
}

/// Bytes two strings share from their start, ending on a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices().zip(b.chars()).find(|((_, x), y)| x != y).map_or(a.len().min(b.len()), |((i, _), _)| i)
}

/// Tokens two id lists share from their start (TRL's `common_prefix_length`).
fn common_prefix_length(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Text rows end each answer with EOS, which TRL's trainers cannot do without one.
const NO_EOS: &str = "the tokenizer has no EOS token, which TRL's trainer appends to every answer of a text row; set \
                      special_tokens.eos_token";

/// A pair's token ids, and the prompt's end left out when its tokens were not a prefix of the whole.
struct PairIds {
    prompt: Vec<i64>,
    chosen: Vec<i64>,
    /// Where the prompt before the rejected answer differs from the one before the chosen answer.
    rejected_prompt: Option<Vec<i64>>,
    rejected: Vec<i64>,
    prompt_end_left_out: Option<Vec<i64>>,
}

/// TRL 1.16's DPOTrainer and KTOTrainer: message rows tokenize the prompt's generation-prompt
/// render and each full conversation (the template writes every special token; no EOS is added);
/// text rows tokenize `prompt` and `prompt + answer` as `tokenizer(text)` does (BOS when the
/// tokenizer adds one), the answer ending with EOS's text unless it already does. An answer starts
/// at the tokens the prompt shares with its sequence (`common_prefix_length`); DPO starts both at
/// the fewer, KTO (which unpairs first) each at its own.
fn tokenize_joint(tok: &Tokenizer, r: &Rendered, unpaired: bool, shared_prompt: bool) -> Result<PairIds, String> {
    let (prompt, chosen, rejected) = match &r.conversation {
        Some([prompt, chosen, rejected]) => {
            (tok.encode(prompt)?, tok.encode(chosen)?, if unpaired { Vec::new() } else { tok.encode(rejected)? })
        }
        None => {
            let eos = tok.eos_text().ok_or(NO_EOS)?;
            let whole = |answer: &str| {
                let end = if answer.ends_with(&eos) { "" } else { eos.as_str() };
                tok.encode_with_special(&format!("{}{answer}{end}", r.prompt))
            };
            let rejected = if unpaired { Vec::new() } else { whole(&r.rejected)? };
            (tok.encode_with_special(&r.prompt)?, whole(&r.chosen)?, rejected)
        }
    };
    let mut chosen_start = common_prefix_length(&prompt, &chosen);
    let mut rejected_start = if unpaired { chosen_start } else { common_prefix_length(&prompt, &rejected) };
    if shared_prompt {
        chosen_start = chosen_start.min(rejected_start);
        rejected_start = chosen_start;
    }
    let kept = chosen_start.min(rejected_start);
    Ok(PairIds {
        prompt_end_left_out: (kept < prompt.len()).then(|| prompt[kept..].to_vec()),
        prompt: prompt[..chosen_start].to_vec(),
        chosen: chosen[chosen_start..].to_vec(),
        rejected_prompt: (rejected_start != chosen_start).then(|| prompt[..rejected_start].to_vec()),
        rejected: rejected.get(rejected_start..).unwrap_or_default().to_vec(),
    })
}

/// TRL's ORPOTrainer / CPOTrainer `tokenize_row` (message rows are texts by then, as its
/// `maybe_apply_chat_template` makes them): the prompt and prompt + answer tokenized without special
/// tokens; an answer starts after the prompt's token count, or one token earlier when the prompt's
/// last token merged with the answer's first (`build_tokenized_answer`); BOS goes before the prompt
/// and EOS after each answer where missing.
fn tokenize_prompt_then_answer(tok: &Tokenizer, r: &Rendered) -> Result<PairIds, String> {
    let prompt = tok.encode(&r.prompt)?;
    let split = |answer: &str| -> Result<(Vec<i64>, Vec<i64>), String> {
        let mut full = tok.encode(&format!("{}{answer}", r.prompt))?;
        if full.len() < prompt.len() {
            return Err(format!(
                "prompt + answer tokenizes to fewer tokens ({}) than the prompt alone ({}) (TRL: \"Prompt input ids \
                 and answer input ids should have the same length.\")",
                full.len(),
                prompt.len()
            ));
        }
        let mut start = prompt.len();
        if full.get(..start) != Some(&prompt[..]) {
            start = start.saturating_sub(1);
        }
        let answer = full.split_off(start);
        Ok((full, answer))
    };
    let ((chosen_prompt, mut chosen), (rejected_prompt, mut rejected)) = (split(&r.chosen)?, split(&r.rejected)?);
    let differing = chosen_prompt.iter().zip(&rejected_prompt).filter(|(a, b)| a != b).count();
    if differing > 1 || chosen_prompt.len().abs_diff(rejected_prompt.len()) > 1 {
        return Err(
            "chosen and rejected prompt tokens differ by more than the last token (TRL: \"Chosen and rejected \
                    prompt_input_ids might only differ on the last token due to tokenizer merge ops.\")"
                .into(),
        );
    }
    let with_bos = |mut prompt: Vec<i64>| {
        if let Some(bos) = tok.bos_token_id()
            && prompt.first() != Some(&bos)
        {
            prompt.insert(0, bos);
        }
        prompt
    };
    let (chosen_prompt, rejected_prompt) = (with_bos(chosen_prompt), with_bos(rejected_prompt));
    let eos = tok.eos().ok_or(NO_EOS)?;
    for answer in [&mut chosen, &mut rejected] {
        if answer.last() != Some(&eos) {
            answer.push(eos);
        }
    }
    Ok(PairIds {
        rejected_prompt: (rejected_prompt != chosen_prompt).then_some(rejected_prompt),
        prompt: chosen_prompt,
        chosen,
        rejected,
        prompt_end_left_out: None,
    })
}

/// TRL's RewardTrainer: each sequence (prompt + answer) tokenized in one piece, so no token
/// boundary is forced between them; text rows get BOS before and EOS after it, conversations are
/// taken as the template renders them.
fn tokenize_whole(tok: &Tokenizer, r: &Rendered, text_row: bool) -> Result<PairIds, String> {
    let sequence = |answer: &str| -> Result<Vec<i64>, String> {
        let mut ids = tok.encode(&format!("{}{answer}", r.prompt))?;
        if text_row && ids.last().copied() != tok.eos() {
            ids.extend(tok.eos());
        }
        Ok(ids)
    };
    let prompt = if text_row { tok.bos().into_iter().collect() } else { Vec::new() };
    Ok(PairIds {
        prompt,
        chosen: sequence(&r.chosen)?,
        rejected_prompt: None,
        rejected: sequence(&r.rejected)?,
        prompt_end_left_out: None,
    })
}

//! Preference pairs for `rl:` recipes (`type: chat_template.default`, Axolotl's `chatml.*` /
//! `llama3.*` string types, ORPO's `chat_template.argilla`): rows go through the same
//! read / format / hygiene stages as supervised data, then each pair is rendered and tokenized
//! as TRL's DPO trainer does:
//!
//! - message rows: the prompt rendered with the generation prompt; each answer is the text the
//!   full conversation (prompt + answer) adds after that prompt, so the template's turn markers are
//!   where a model will see them;
//! - string rows: prompt and answers as written, the prompt after BOS when the tokenizer adds one
//!   (as recipe's supervised formats do; TRL adds no BOS for decoder-only models);
//! - each answer ends with EOS; a pair longer than `sequence_len` (prompt + the longer answer) is
//!   dropped, truncated (answers cut, the prompt kept) or refused, per `excess_length_strategy`;
//! - a pair with an empty answer, or the same chosen and rejected answer, is a bad row (refused with
//!   its place, or skipped and counted under `skip_bad_rows`).
//!
//! Datasets mix (weights), shuffle and split like supervised samples; test pairs are removed from
//! training. `recipe preview` and `recipe preprocess` check and show the pairs; `recipe run` trains on
//! them (exec/objective.rs, `Preference`).

use super::{Counts, DatasetPlan, Formatted, Tokenizer, dataset_template, formatted_rows, mix, template};
use crate::config::datasets::{DatasetConfig, ExcessLength};
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
    pub prompt_ids: Vec<i64>,
    pub chosen_ids: Vec<i64>,
    pub rejected_ids: Vec<i64>,
    /// KTO's unpaired rows: the one answer (in `chosen`; `rejected` empty) and whether it is
    /// desirable. None for pairs.
    pub desirable: Option<bool>,
}

impl Pair {
    /// Tokens of the longer of prompt + chosen and prompt + rejected.
    pub fn len(&self) -> usize {
        self.prompt_ids.len() + self.chosen_ids.len().max(self.rejected_ids.len())
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
        let key = |p: &Pair| (p.prompt_ids.clone(), p.chosen_ids.clone(), p.rejected_ids.clone(), p.desirable);
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
    // TRL's RewardTrainer renders conversations as they are and appends EOS to plain text only;
    // its DPO-style trainers end every answer with EOS.
    let reward = plan.training.reward.is_some();
    let mut c = Counts::default();
    let formatted = formatted_rows(d, plan, None, &mut c)?;
    let needs_template = formatted.iter().any(|(_, f)| matches!(f, Formatted::Preference(p) if p.prompt.is_array()));
    let template = if needs_template { Some(dataset_template(d, own_template, plan, tokenizer_dir)?) } else { None };
    let rendered: Vec<Result<Pair, String>> = formatted
        .par_iter()
        .map(|(origin, f)| -> Result<Pair, String> {
            let Formatted::Preference(p) = f else { unreachable!("preference datasets format to pairs") };
            let (prompt, chosen, rejected) = match &template {
                // A reward model's sequences are whole conversations, rendered as such.
                Some((template, special)) if p.prompt.is_array() && reward => {
                    let full = |answer: &Value| {
                        let content = answer_text(answer);
                        render_conversation(template, special, &p.prompt, answer).map(|text| (text, content))
                    };
                    let ((chosen, chosen_content), (rejected, rejected_content)) =
                        (full(&p.chosen)?, full(&p.rejected)?);
                    if chosen_content.trim().is_empty() || rejected_content.trim().is_empty() {
                        let which = if chosen_content.trim().is_empty() { "chosen" } else { "rejected" };
                        return Err(format!("the {which} answer is empty"));
                    }
                    (String::new(), chosen, rejected)
                }
                Some((template, special)) if p.prompt.is_array() => {
                    let prompt = render(template, special, &p.prompt, None)?;
                    (
                        prompt.clone(),
                        render(template, special, &p.prompt, Some((&p.chosen, &prompt)))?,
                        render(template, special, &p.prompt, Some((&p.rejected, &prompt)))?,
                    )
                }
                _ if p.desirable.is_some() => (text(&p.prompt), text(&p.chosen), String::new()),
                _ => (text(&p.prompt), text(&p.chosen), text(&p.rejected)),
            };
            // A pair must be able to teach something: two answers, and different ones; an unpaired
            // row, its one answer.
            if p.desirable.is_some() {
                if chosen.trim().is_empty() {
                    return Err("the answer is empty".into());
                }
            } else if chosen.trim().is_empty() || rejected.trim().is_empty() {
                let which = if chosen.trim().is_empty() { "chosen" } else { "rejected" };
                return Err(format!("the {which} answer is empty"));
            } else if chosen == rejected {
                return Err("the chosen and the rejected answer are the same".into());
            }
            let mut prompt_ids: Vec<i64> =
                if p.prompt.is_string() { tok.bos().into_iter().collect() } else { Vec::new() };
            // A reward model reads whole sequences: like TRL's RewardTrainer, each is tokenized in
            // one piece (prompt and answer together), so no token boundary is forced between them.
            let eos_after = !reward || p.prompt.is_string();
            if !reward {
                prompt_ids.extend(tok.encode(&prompt)?);
            }
            let answer = |t: &str| -> Result<Vec<i64>, String> {
                let mut ids = if reward { tok.encode(&format!("{prompt}{t}"))? } else { tok.encode(t)? };
                // EOS once, as TRL appends it to answers that do not already end with it.
                if eos_after && ids.last().copied() != tok.eos() {
                    ids.extend(tok.eos());
                }
                Ok(ids)
            };
            let chosen_ids = answer(&chosen)?;
            let rejected_ids = if p.desirable.is_some() { Vec::new() } else { answer(&rejected)? };
            Ok(Pair {
                origin: origin.clone(),
                prompt,
                chosen,
                rejected,
                prompt_ids,
                chosen_ids,
                rejected_ids,
                desirable: p.desirable,
            })
        })
        .zip(formatted.par_iter())
        .map(|(pair, (origin, _))| pair.map_err(|e| format!("{origin}: {e}")))
        .collect();
    let seq_len = plan.data.sequence_len as usize;
    let mut pairs = Vec::with_capacity(rendered.len());
    for pair in rendered {
        let mut pair = match pair {
            Ok(pair) => pair,
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
                ExcessLength::Truncate if pair.prompt_ids.len() < seq_len => {
                    let room = seq_len - pair.prompt_ids.len();
                    pair.chosen_ids.truncate(room);
                    pair.rejected_ids.truncate(room.min(pair.rejected_ids.len()));
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

/// The prompt with the generation prompt, or, given an answer and that rendered prompt, the text
/// the whole conversation adds after the prompt.
fn render(
    template: &template::ChatTemplate,
    special: &template::SpecialTokenStrings,
    prompt: &Value,
    answer: Option<(&Value, &str)>,
) -> Result<String, String> {
    let messages: Vec<Value> = prompt.as_array().cloned().unwrap_or_default();
    let Some((answer, rendered_prompt)) = answer else {
        return template.render(&messages, None, true, special).map_err(String::from);
    };
    let full = render_conversation(template, special, prompt, answer)?;
    full.strip_prefix(rendered_prompt).map(str::to_owned).ok_or_else(|| {
        format!(
            "template `{}` renders the prompt differently once an answer follows, so the answer cannot be \
             split off (the prompt with the generation prompt is not a prefix of prompt + answer)",
            template.name()
        )
    })
}

//! Rows of Axolotl's `chatml.*` / `llama3.*` types (config: `config::string_transforms`): the
//! prompt and the answers written out as strings in ChatML or Llama-3 turns, exactly as Axolotl's
//! transforms write them (goldens: tests/kto_formats.rs for `prompt_strategies/kto`,
//! tests/preference_formats.rs for `prompt_strategies/dpo`):
//!
//! - the prompt: an optional system turn (when `system` is a non-empty string), the user's turn, and
//!   the assistant's header;
//! - each answer: its text and the end of the assistant's turn (`<|im_end|>` / `<|eot_id|>`).
//!
//! `rl: kto` reads one answer and a `label` per row; `rl: dpo|ipo|simpo` a chosen and a rejected
//! answer. The strings then go through the preference module's string rows (BOS before the prompt
//! when the tokenizer adds one, EOS after each answer once).

use super::formats::{Formatted, Preference, kind};
use crate::config::string_transforms::{StringTransform, TransformFields, TransformReading, TurnMarkup};
use crate::config::training::RlMethod;
use serde_json::Value;

/// One row of a string-transform type, read as `rl` reads it.
pub fn format_row(row: &Value, transform: StringTransform, rl: Option<RlMethod>) -> Result<Formatted, String> {
    let reading = rl.and_then(TransformReading::of).ok_or_else(|| {
        format!(
            "type `{}` is read under rl: kto (unpaired rows) or rl: dpo, ipo or simpo (pairs) only",
            transform.type_name()
        )
    })?;
    match reading {
        TransformReading::Unpaired => unpaired_row(row, transform),
        TransformReading::Pairs => pair_row(row, transform),
    }
    .map(Formatted::Preference)
}

/// A string field (`None` when absent or null).
fn string(row: &Value, field: &str) -> Result<Option<String>, String> {
    match row.get(field) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        None | Some(Value::Null) => Ok(None),
        Some(other) => Err(format!("field `{field}` must be a string, found {}", kind(other))),
    }
}

fn required(row: &Value, field: &str) -> Result<String, String> {
    string(row, field)?.ok_or_else(|| format!("field `{field}` is missing"))
}

/// `system` when it is a non-empty string (Axolotl: `if "system" in sample and sample["system"]`).
fn system(row: &Value) -> Result<Option<String>, String> {
    Ok(string(row, "system")?.filter(|s| !s.is_empty()))
}

/// The `content` of message `i` of the list in `field` (Axolotl: `sample[field][i]["content"]`).
fn message(row: &Value, field: &str, i: usize) -> Result<String, String> {
    let list = match row.get(field) {
        Some(Value::Array(list)) => list,
        None | Some(Value::Null) => return Err(format!("field `{field}` is missing")),
        Some(other) => return Err(format!("field `{field}` must be a list of messages, found {}", kind(other))),
    };
    let Some(m) = list.get(i) else {
        return Err(format!("field `{field}` must list the user's and the assistant's messages (has {})", list.len()));
    };
    match m.get("content") {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(format!("field `{field}[{i}].content` is missing")),
        Some(other) => Err(format!("field `{field}[{i}].content` must be a string, found {}", kind(other))),
    }
}

/// The prompt (system turn, user turn, assistant header) and an answer's ending, in `markup`.
fn prompt(markup: TurnMarkup, system: Option<&str>, user: &str) -> String {
    match markup {
        TurnMarkup::Chatml => {
            let system = system.map(|s| format!("<|im_start|>system\n{s}<|im_end|>\n")).unwrap_or_default();
            format!("{system}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
        }
        TurnMarkup::Llama3 => {
            let header = |role: &str| format!("<|start_header_id|>{role}<|end_header_id|>\n\n");
            let system = system.map(|s| format!("{}{s}<|eot_id|>", header("system"))).unwrap_or_default();
            format!("{system}{}{user}<|eot_id|>{}", header("user"), header("assistant"))
        }
    }
}

fn answer(markup: TurnMarkup, text: &str) -> String {
    match markup {
        TurnMarkup::Chatml => format!("{text}<|im_end|>"),
        TurnMarkup::Llama3 => format!("{text}<|eot_id|>"),
    }
}

fn not_defined(transform: StringTransform, reading: TransformReading) -> String {
    format!(
        "Axolotl's {}/{}.py has no `{}` ({} reads {})",
        reading.module(),
        transform.markup.as_str(),
        transform.fields.as_str(),
        reading.methods(),
        StringTransform::names_for(transform.markup, reading).join(", ")
    )
}

/// A row as Axolotl's `prompt_strategies/kto` reads it: the prompt and the one answer written out,
/// and the boolean `label`.
pub fn unpaired_row(row: &Value, transform: StringTransform) -> Result<Preference, String> {
    if !transform.defined_for(TransformReading::Unpaired) {
        return Err(not_defined(transform, TransformReading::Unpaired));
    }
    let (system, user, text) = match transform.fields {
        TransformFields::ArgillaChat => (None, message(row, "completion", 0)?, message(row, "completion", 1)?),
        fields => {
            let user_field = match fields {
                TransformFields::Argilla => "instruction",
                TransformFields::Intel => "question",
                _ => "prompt",
            };
            (system(row)?, required(row, user_field)?, required(row, "completion")?)
        }
    };
    let desirable = match row.get("label") {
        Some(Value::Bool(b)) => *b,
        None | Some(Value::Null) => return Err("field `label` is missing".into()),
        Some(other) => return Err(format!("field `label` must be true or false, found {}", kind(other))),
    };
    Ok(Preference {
        prompt: Value::String(prompt(transform.markup, system.as_deref(), &user)),
        chosen: Value::String(answer(transform.markup, &text)),
        rejected: Value::Null,
        desirable: Some(desirable),
    })
}

/// A row as Axolotl's `prompt_strategies/dpo` reads it: the prompt and the chosen and rejected
/// answers written out.
pub fn pair_row(row: &Value, transform: StringTransform) -> Result<Preference, String> {
    if !transform.defined_for(TransformReading::Pairs) {
        return Err(not_defined(transform, TransformReading::Pairs));
    }
    // `default` picks each field by which key the row has (present, even if null, as in Python).
    let has = |key: &str| row.get(key).is_some();
    let (system, user, chosen, rejected) = match transform.fields {
        TransformFields::ArgillaChat => {
            (None, message(row, "chosen", 0)?, message(row, "chosen", 1)?, message(row, "rejected", 1)?)
        }
        TransformFields::Ultra => {
            (system(row)?, required(row, "prompt")?, message(row, "chosen", 1)?, message(row, "rejected", 1)?)
        }
        fields => {
            let user_field = match fields {
                TransformFields::Icr => "input",
                TransformFields::Intel => "question",
                TransformFields::PromptPairs => "prompt",
                _ => ["prompt", "input", "question"].into_iter().find(|k| has(k)).unwrap_or("instruction"),
            };
            let (chosen_field, rejected_field) = match fields {
                TransformFields::Default => (
                    if has("chosen") { "chosen" } else { "chosen_response" },
                    if has("rejected") { "rejected" } else { "rejected_response" },
                ),
                _ => ("chosen", "rejected"),
            };
            (system(row)?, required(row, user_field)?, required(row, chosen_field)?, required(row, rejected_field)?)
        }
    };
    Ok(Preference {
        prompt: Value::String(prompt(transform.markup, system.as_deref(), &user)),
        chosen: Value::String(answer(transform.markup, &chosen)),
        rejected: Value::String(answer(transform.markup, &rejected)),
        desirable: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(name: &str) -> StringTransform {
        StringTransform::from_type(name).unwrap()
    }

    #[test]
    fn a_type_outside_its_methods_module_is_an_error_naming_it() {
        let row = json!({"prompt": "Hi", "chosen": "A", "rejected": "B", "completion": "A", "label": true});
        let e = unpaired_row(&row, t("chatml.icr")).unwrap_err();
        assert!(e.contains("prompt_strategies/kto/chatml.py has no `icr`"), "{e}");
        let e = pair_row(&row, t("llama3.argilla")).unwrap_err();
        assert!(e.contains("prompt_strategies/dpo/llama3.py has no `argilla`"), "{e}");
        let e = format_row(&row, t("chatml.ultra"), Some(RlMethod::Orpo)).unwrap_err();
        assert!(e.contains("rl: kto"), "{e}");
    }

    #[test]
    fn pair_rows_name_the_missing_or_mistyped_field() {
        let e = pair_row(&json!({"prompt": "Hi", "chosen": "A"}), t("chatml.prompt_pairs")).unwrap_err();
        assert_eq!(e, "field `rejected` is missing");
        let e = pair_row(&json!({"prompt": "Hi", "chosen": ["A"], "rejected": "B"}), t("chatml.intel")).unwrap_err();
        assert_eq!(e, "field `question` is missing");
        let e = pair_row(&json!({"prompt": "Hi", "chosen": [{"content": "Hi"}], "rejected": []}), t("chatml.ultra"))
            .unwrap_err();
        assert!(e.contains("field `chosen` must list the user's and the assistant's messages"), "{e}");
        let e = pair_row(&json!({"prompt": null, "chosen": "A", "rejected": "B"}), t("llama3.default")).unwrap_err();
        assert_eq!(e, "field `prompt` is missing");
    }
}

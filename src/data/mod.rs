//! The data pipeline's seam with the executor: a plan's datasets in, tokenized samples with their
//! labels out (split into training and validation), then packed or padded into rows by
//! `packing`. Labels are aligned with `input_ids` (transformers' convention: the model shifts);
//! -100 marks tokens that carry no loss.
//!
//! Built so far: local plain-text files, JSON arrays and JSON Lines; `completion` / `pretrain`
//! (text, long texts split into sequence_len chunks) and `alpaca` / `alpaca_chat`. The other
//! formats, chat templates, hub datasets and hygiene are the data-pipeline issue; they plug in here
//! and are refused by name until then.

pub mod packing;
pub mod tokenizer;

use crate::config::datasets::{DatasetConfig, FileFormat};
use crate::plan::Plan;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use std::path::Path;
pub use tokenizer::Tokenizer;

/// -100: the label of a token that carries no loss.
pub const IGNORE: i64 = -100;

/// One tokenized sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
}

impl Sample {
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
    }
}

/// Training and validation samples, and what preparing them did.
pub struct Prepared {
    pub train: Vec<Sample>,
    pub validation: Vec<Sample>,
    pub report: Vec<String>,
}

/// Reads, formats and tokenizes every dataset of the plan, then splits off validation
/// (shuffled with the recipe's seed).
pub fn prepare(plan: &Plan, tok: &Tokenizer) -> Result<Prepared, String> {
    let seq_len = plan.batch.sequence_len as usize;
    let mut samples = Vec::new();
    let mut report = Vec::new();
    for (i, d) in plan.datasets.iter().enumerate() {
        let path = d.local_path.as_deref().ok_or_else(|| {
            format!("datasets[{i}]: {} — hub datasets are not readable by the executor yet", d.source)
        })?;
        let before = samples.len();
        let mut truncated = 0;
        read_dataset(&d.entry, path, tok, seq_len, plan.training.train_on_inputs, &mut samples, &mut truncated)
            .map_err(|e| format!("datasets[{i}] ({}): {e}", path.display()))?;
        report.push(format!(
            "datasets[{i}] {} ({}): {} samples{}",
            d.r#type,
            path.display(),
            samples.len() - before,
            if truncated > 0 { format!(", {truncated} truncated to sequence_len {seq_len}") } else { String::new() }
        ));
    }
    let empty = samples.iter().filter(|s| s.trained_tokens() == 0).count();
    samples.retain(|s| s.trained_tokens() > 0);
    if empty > 0 {
        report.push(format!("dropped {empty} samples with no trained tokens"));
    }
    if samples.is_empty() {
        return Err("the datasets give no sample with a trained token".into());
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(plan.training.seed);
    samples.shuffle(&mut rng);
    let val = plan.training.val_set_size;
    let n_val = if val <= 0.0 {
        0
    } else if val < 1.0 {
        (samples.len() as f64 * val).ceil() as usize
    } else {
        val as usize
    };
    if n_val >= samples.len() {
        return Err(format!("val_set_size {val} leaves no training sample out of {}", samples.len()));
    }
    let validation = samples.split_off(samples.len() - n_val);
    Ok(Prepared { train: samples, validation, report })
}

fn read_dataset(
    entry: &DatasetConfig,
    path: &Path,
    tok: &Tokenizer,
    seq_len: usize,
    train_on_inputs: bool,
    out: &mut Vec<Sample>,
    truncated: &mut usize,
) -> Result<(), String> {
    let format = entry.source().ds_type.or_else(|| guess_format(path)).unwrap_or(FileFormat::Json);
    match entry {
        DatasetConfig::Completion(t) | DatasetConfig::Pretrain(t) => {
            let texts: Vec<String> = match format {
                FileFormat::Text => vec![std::fs::read_to_string(path).map_err(|e| e.to_string())?],
                _ => read_rows(path, format)?
                    .into_iter()
                    .map(|(at, row)| field_text(&row, &t.field).map_err(|e| format!("{at}: {e}")))
                    .collect::<Result<_, _>>()?,
            };
            for text in texts.iter().filter(|t| !t.trim().is_empty()) {
                let mut ids = tok.bos().into_iter().collect::<Vec<_>>();
                ids.extend(tok.encode(text)?);
                ids.extend(tok.eos());
                // Long texts become consecutive sequence_len chunks, every token trained.
                for chunk in ids.chunks(seq_len) {
                    out.push(Sample { input_ids: chunk.to_vec(), labels: chunk.to_vec() });
                }
            }
        }
        DatasetConfig::Alpaca(_) | DatasetConfig::AlpacaChat(_) => {
            let chat = matches!(entry, DatasetConfig::AlpacaChat(_));
            for (at, row) in read_rows(path, format)? {
                let get = |k: &str| row.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
                let instruction = row
                    .get("instruction")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("{at}: field `instruction` is missing or not a string"))?;
                let output = row
                    .get("output")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("{at}: field `output` is missing or not a string"))?;
                let prompt = alpaca_prompt(instruction, &get("input"), &get("system"), chat);
                // As Axolotl: tokenize prompt + response together, mask as many tokens as the
                // prompt alone gives (a SentencePiece tokenizer would add a word boundary to a
                // separately tokenized response).
                let mut input_ids: Vec<i64> = tok.bos().into_iter().collect();
                let prompt_len = input_ids.len() + tok.encode(&prompt)?.len();
                input_ids.extend(tok.encode(&format!("{prompt}{output}"))?);
                input_ids.extend(tok.eos());
                let mut labels = input_ids.clone();
                if !train_on_inputs {
                    labels[..prompt_len].fill(IGNORE);
                }
                if input_ids.len() > seq_len {
                    input_ids.truncate(seq_len);
                    labels.truncate(seq_len);
                    *truncated += 1;
                }
                out.push(Sample { input_ids, labels });
            }
        }
        other => {
            return Err(format!(
                "dataset type `{}` is not supported by the executor yet (built: completion, pretrain, alpaca, alpaca_chat)",
                other.type_name()
            ));
        }
    }
    Ok(())
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

fn guess_format(path: &Path) -> Option<FileFormat> {
    match path.extension()?.to_str()? {
        "json" => Some(FileFormat::Json),
        "jsonl" => Some(FileFormat::Jsonl),
        "txt" | "text" | "md" => Some(FileFormat::Text),
        "parquet" => Some(FileFormat::Parquet),
        "csv" => Some(FileFormat::Csv),
        _ => None,
    }
}

fn field_text(row: &serde_json::Value, field: &str) -> Result<String, String> {
    row.get(field)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("field `{field}` is missing or not a string"))
}

/// Rows of a JSON array or JSON Lines file, each with where it is (`row N` / `line N`).
fn read_rows(path: &Path, format: FileFormat) -> Result<Vec<(String, serde_json::Value)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let lines = || -> Result<Vec<(String, serde_json::Value)>, String> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| {
                serde_json::from_str(l)
                    .map(|v| (format!("line {}", n + 1), v))
                    .map_err(|e| format!("line {}: not valid JSON: {e}", n + 1))
            })
            .collect()
    };
    match format {
        FileFormat::Json if text.trim_start().starts_with('[') => {
            let rows: Vec<serde_json::Value> =
                serde_json::from_str(&text).map_err(|e| format!("not a valid JSON array: {e}"))?;
            Ok(rows.into_iter().enumerate().map(|(i, v)| (format!("row {i}"), v)).collect())
        }
        FileFormat::Json | FileFormat::Jsonl => lines(),
        other => Err(format!("{other:?} files are not readable by the executor yet (the data-pipeline issue)")),
    }
}

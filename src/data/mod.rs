//! The data pipeline: a plan's datasets in, tokenized samples with their labels out. Stages, in
//! order, each counting what it changed for the report:
//!
//! 1. read rows (`sources`: local files, folders, globs, hub snapshots; every row keeps its file
//!    and line/row for errors),
//! 2. format them (`formats`; a malformed row is an error naming file, row and field, or is
//!    skipped and counted with `skip_bad_rows`),
//! 3. hygiene (`hygiene`): PII redaction, exact / normalised deduplication,
//! 4. tokenize with labels, in parallel (`formats::tokenize`, `chat` for conversations); a dataset
//!    without `type` holds pre-tokenized rows, read as they are in stage 2 (their ids checked
//!    against the vocabulary there, so a bad one is named or skipped like any malformed row),
//! 5. over-length samples dropped / truncated / refused; samples with no trained token dropped,
//! 6. mix the datasets (weights), shuffle with the seed, split off validation; test datasets go
//!    through the same stages and any training sample equal to a test sample is removed.
//!
//! Preference pairs (`rl:` recipes) take stages 1 to 3 and 6 too (`preference`).
//!
//! Labels are aligned with `input_ids` (transformers' convention: the model shifts); -100 marks
//! tokens that carry no loss. `packing` turns samples into rows.

pub mod cache;
pub mod chat;
pub mod formats;
pub mod hygiene;
pub mod packing;
pub mod preference;
pub mod replay;
pub mod sources;
pub mod stream;
pub mod string_transforms;
pub mod template;
pub mod tokenizer;

use crate::config::chat_template::ChatTemplateName;
use crate::config::datasets::{DatasetConfig, ExcessLength};
use crate::plan::Plan;
use crate::plan::data::DatasetPlan;
use formats::Formatted;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use std::path::Path;
pub use tokenizer::Tokenizer;

/// -100: the label of a token that carries no loss.
pub const IGNORE: i64 = -100;

/// One tokenized sample.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sample {
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
}

impl Sample {
    /// Tokens whose next-token prediction carries a loss (the first token never does).
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
    }
}

/// Training, validation and test samples, and what preparing them did.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub train: Vec<Sample>,
    pub validation: Vec<Sample>,
    pub test: Vec<Sample>,
    /// `forgetting_datasets`: scored before and after training, never trained on.
    pub forgetting: Vec<Sample>,
    /// `replay_datasets`: mixed into every training step (`replay_ratio`).
    pub replay: Vec<Sample>,
    /// `ewc_datasets`: EWC's Fisher information is estimated on them.
    pub ewc: Vec<Sample>,
    pub report: Vec<String>,
}

/// Counts of one dataset's journey through the stages.
#[derive(Debug, Clone, Default)]
struct Counts {
    rows: usize,
    bad_rows: usize,
    redactions: usize,
    duplicates: usize,
    samples: usize,
    dropped_long: usize,
    truncated: usize,
    dropped_untrained: usize,
    notes: Vec<String>,
}

/// The prepared data: from the cache in `dataset_prepared_path` when its key matches, else
/// prepared now (and cached when a path is set). Returns where it came from.
pub fn load_or_prepare(plan: &Plan, tok: &Tokenizer, tokenizer_dir: &Path) -> Result<(Prepared, String), String> {
    let Some(root) = &plan.data.prepared_path else {
        return Ok((prepare(plan, tok, tokenizer_dir)?, "prepared now".into()));
    };
    let key = cache::key(plan, tokenizer_dir)?;
    let dir = cache::folder(Path::new(root), &key);
    if dir.join("report.json").is_file() {
        return Ok((cache::load(&dir)?, format!("reused from {}", dir.display())));
    }
    let prepared = prepare(plan, tok, tokenizer_dir)?;
    cache::save(&dir, &prepared)?;
    Ok((prepared, format!("prepared now, cached in {}", dir.display())))
}

/// The data statistics a plan shows, when every dataset and the tokenizer are local files (a
/// plan downloads nothing; None otherwise, and for preference recipes). `recipe plan` shows an
/// error here as a warning and plans on. Reads a matching
/// cache in `dataset_prepared_path` if there is one, else prepares now without writing it.
pub fn measure(plan: &Plan) -> Result<Option<crate::plan::data::MeasuredData>, String> {
    // A stream is read as training goes, never ahead of it.
    if plan.pretraining.is_some() {
        return Ok(None);
    }
    let all_local = plan
        .datasets
        .iter()
        .chain(&plan.test_datasets)
        .chain(&plan.forgetting_datasets)
        .chain(plan.replay.iter().flat_map(|r| &r.datasets))
        .chain(plan.ewc.iter().flat_map(|e| &e.datasets))
        .all(|d| d.local_path.is_some());
    let Some(dir) = plan.model.local_dir.as_deref().filter(|_| all_local && !plan.training.reads_pairs()) else {
        return Ok(None);
    };
    let dir = Path::new(dir);
    if !dir.join("tokenizer.json").is_file() {
        return Ok(None);
    }
    let mut tok = Tokenizer::load(dir)?;
    tok.add(&plan.data.special_tokens, &plan.data.added_tokens)?;
    let cached = match &plan.data.prepared_path {
        Some(root) => {
            Some(cache::folder(Path::new(root), &cache::key(plan, dir)?)).filter(|f| f.join("report.json").is_file())
        }
        None => None,
    };
    let (prepared, source) = match cached {
        Some(folder) => (cache::load(&folder)?, format!("read from {}", folder.display())),
        None => (prepare(plan, &tok, dir)?, "prepared now, not cached".to_string()),
    };
    let seq_len = plan.batch.sequence_len as usize;
    let rows = if plan.data.sample_packing {
        packing::pack(&prepared.train, seq_len)
    } else {
        packing::unpacked(&prepared.train, seq_len)
    };
    Ok(Some(crate::plan::data::MeasuredData {
        source,
        report: prepared.report,
        train_samples: prepared.train.len(),
        validation_samples: prepared.validation.len(),
        test_samples: prepared.test.len(),
        train_rows: rows.len(),
        packing_efficiency: packing::efficiency(&rows, seq_len),
        steps: crate::plan::schedule::steps(plan, rows.len()),
    }))
}

/// Prepares every dataset of the plan (`tokenizer_dir` holds the tokenizer files, for a
/// `tokenizer_default` chat template and the special-token strings templates print).
pub fn prepare(plan: &Plan, tok: &Tokenizer, tokenizer_dir: &Path) -> Result<Prepared, String> {
    let opts = &plan.data;
    let mut report = Vec::new();
    let mut per_dataset = Vec::new();
    for (i, d) in plan.datasets.iter().enumerate() {
        let (samples, counts) =
            dataset_samples(d, plan, tok, tokenizer_dir).map_err(|e| format!("datasets[{i}]: {e}"))?;
        report.push(describe("datasets", i, d, &counts));
        per_dataset.push((samples, d.entry.source().weight));
    }
    // Sets that are scored, never trained on: their samples in one list.
    let mut held_out = |key: &str, list: &[DatasetPlan]| -> Result<Vec<Sample>, String> {
        let mut all = Vec::new();
        for (i, d) in list.iter().enumerate() {
            let (samples, counts) =
                dataset_samples(d, plan, tok, tokenizer_dir).map_err(|e| format!("{key}[{i}]: {e}"))?;
            report.push(describe(key, i, d, &counts));
            all.extend(samples);
        }
        Ok(all)
    };
    let test = held_out("test_datasets", &plan.test_datasets)?;
    let forgetting = held_out("forgetting_datasets", &plan.forgetting_datasets)?;
    let replay = match &plan.replay {
        Some(r) => held_out("replay_datasets", &r.datasets)?,
        None => Vec::new(),
    };
    if plan.replay.is_some() && replay.is_empty() {
        return Err("replay_datasets give no sample with a trained token".into());
    }
    let ewc = match &plan.ewc {
        Some(e) => held_out("ewc_datasets", &e.datasets)?,
        None => Vec::new(),
    };
    if plan.ewc.is_some() && ewc.is_empty() {
        return Err("ewc_datasets give no sample with a trained token".into());
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let mut samples = mix(per_dataset, &mut rng, &mut report);
    if !test.is_empty() {
        let held: std::collections::HashSet<&Vec<i64>> = test.iter().map(|s| &s.input_ids).collect();
        let before = samples.len();
        samples.retain(|s| !held.contains(&s.input_ids));
        if samples.len() < before {
            report
                .push(format!("removed {} training samples that also appear in test_datasets", before - samples.len()));
        }
    }
    if samples.is_empty() {
        return Err(format!("the datasets give no sample with a trained token ({})", report.join("; ")));
    }
    if opts.shuffle {
        samples.shuffle(&mut rng);
    }
    let val = opts.val_set_size;
    let n_val = if val <= 0.0 { 0 } else { (samples.len() as f64 * val).ceil() as usize };
    if n_val >= samples.len() {
        return Err(format!("val_set_size {val} leaves no training sample out of {}", samples.len()));
    }
    let validation = samples.split_off(samples.len() - n_val);
    Ok(Prepared { train: samples, validation, test, forgetting, replay, ewc, report })
}

fn describe(key: &str, i: usize, d: &DatasetPlan, c: &Counts) -> String {
    let mut parts = vec![format!("{} rows", c.rows)];
    let mut note = |n: usize, what: &str| {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    };
    note(c.bad_rows, "malformed rows skipped");
    note(c.redactions, "PII strings redacted");
    note(c.duplicates, "duplicates dropped");
    note(c.dropped_long, "over-length samples dropped");
    note(c.truncated, "over-length samples truncated");
    note(c.dropped_untrained, "samples without trained tokens dropped");
    let mut line = format!("{key}[{i}] {} ({}): {} -> {} samples", d.r#type, d.source, parts.join(", "), c.samples);
    for n in &c.notes {
        line.push_str(&format!("; warning: {n}"));
    }
    line
}

/// Mixes datasets: all rows once, or, where weights are given, each dataset's share of the total
/// (whole copies, then a seeded subset of the remainder).
fn mix<T: Clone>(
    per_dataset: Vec<(Vec<T>, Option<f64>)>,
    rng: &mut rand_chacha::ChaCha8Rng,
    report: &mut Vec<String>,
) -> Vec<T> {
    if per_dataset.iter().all(|(_, w)| w.is_none()) {
        return per_dataset.into_iter().flat_map(|(s, _)| s).collect();
    }
    let total: usize = per_dataset.iter().map(|(s, _)| s.len()).sum();
    let weight_sum: f64 = per_dataset.iter().map(|(_, w)| w.unwrap_or(1.0)).sum::<f64>().max(f64::MIN_POSITIVE);
    let mut out = Vec::new();
    for (i, (samples, w)) in per_dataset.into_iter().enumerate() {
        if samples.is_empty() {
            continue;
        }
        let target = (total as f64 * w.unwrap_or(1.0) / weight_sum).round() as usize;
        for _ in 0..target / samples.len() {
            out.extend(samples.iter().cloned());
        }
        let mut rest: Vec<&T> = samples.iter().collect();
        rest.shuffle(rng);
        out.extend(rest.into_iter().take(target % samples.len()).cloned());
        report.push(format!("mixing: datasets[{i}] gives {target} of {total} samples ({} available)", samples.len()));
    }
    out
}

/// A chat dataset's template (its own, else the recipe's, else the tokenizer's), options and the
/// special-token strings the template prints.
pub struct ChatSetup {
    pub template: template::ChatTemplate,
    pub options: chat::ChatOptions,
    pub special: template::SpecialTokenStrings,
}

pub fn chat_setup(d: &DatasetPlan, plan: &Plan, tokenizer_dir: &Path) -> Result<Option<ChatSetup>, String> {
    let DatasetConfig::ChatTemplate(c) = &d.entry else { return Ok(None) };
    let (template, special) = dataset_template(d, c.chat_template, plan, tokenizer_dir)?;
    let mut options = chat::ChatOptions { field_messages: c.field_messages.clone(), ..chat::ChatOptions::default() };
    options.role_field = c.message_field("role");
    options.content_field = c.message_field("content");
    if let Some(roles) = &c.roles {
        for (role, aliases) in roles {
            let aliases: Vec<String> = match aliases {
                serde_json::Value::String(a) => vec![a.clone()],
                serde_json::Value::Array(list) => list.iter().filter_map(|a| a.as_str().map(str::to_owned)).collect(),
                _ => return Err(format!("roles.{role}: expected a name or a list of names")),
            };
            options.roles.retain(|(r, _)| r != role);
            options.roles.push((role.clone(), aliases));
        }
    }
    options.roles_to_train = c.roles_to_train.clone();
    fn policy(p: crate::config::datasets::TrainOnEos) -> chat::TrainOnEos {
        match p {
            crate::config::datasets::TrainOnEos::All => chat::TrainOnEos::All,
            crate::config::datasets::TrainOnEos::Turn => chat::TrainOnEos::Turn,
            crate::config::datasets::TrainOnEos::Last => chat::TrainOnEos::Last,
            crate::config::datasets::TrainOnEos::None => chat::TrainOnEos::None,
        }
    }
    options.train_on_eos = policy(c.train_on_eos);
    options.train_on_eot = c.train_on_eot.map(policy);
    options.eot_tokens = plan.data.eot_tokens.clone();
    options.drop_system_message = c.drop_system_message;
    options.message_field_training = c.message_field_training.clone();
    options.field_tools = c.field_tools.clone();
    if let Some(field) = &c.field_thinking {
        options.thinking.0 = field.clone();
    }
    if let Some(key) = &c.template_thinking_key {
        options.thinking.1 = key.clone();
    }
    Ok(Some(ChatSetup { template, options, special }))
}

/// The template a dataset renders with (its own, else the recipe's, else the tokenizer's) and the
/// special-token strings it prints (the tokenizer's, overridden by the recipe's special_tokens).
pub fn dataset_template(
    d: &DatasetPlan,
    own: Option<ChatTemplateName>,
    plan: &Plan,
    tokenizer_dir: &Path,
) -> Result<(template::ChatTemplate, template::SpecialTokenStrings), String> {
    let planned = d.chat_template.as_ref().or(plan.chat_template.as_ref());
    let (text, name) = match planned.and_then(|t| t.text.clone().map(|text| (text, t.name.clone()))) {
        Some(found) => found,
        // Known only now (a hub model's tokenizer_config.json), or no template named at all.
        None => {
            let name = own.or(plan_template_name(plan)).unwrap_or(ChatTemplateName::TokenizerDefault);
            let (text, _) = template::resolve(name, None, tokenizer_dir, tokenizer_dir)?;
            (text, name.as_str().to_string())
        }
    };
    let template =
        template::ChatTemplate::new(&text, &name).map_err(String::from)?.with_fixed_date(template::FixedDate::today());
    let mut special = template::SpecialTokenStrings::from_model_dir(tokenizer_dir)?;
    let s = &plan.data.special_tokens;
    for (slot, value) in [
        (&mut special.bos_token, &s.bos_token),
        (&mut special.eos_token, &s.eos_token),
        (&mut special.pad_token, &s.pad_token),
        (&mut special.unk_token, &s.unk_token),
    ] {
        if value.is_some() {
            slot.clone_from(value);
        }
    }
    Ok((template, special))
}

fn plan_template_name(plan: &Plan) -> Option<ChatTemplateName> {
    let name = plan.chat_template.as_ref()?.name.clone();
    serde_json::from_value(serde_json::Value::String(name)).ok()
}

/// Stages 1 to 3 of one dataset: rows read, formatted (bad rows refused or skipped) and cleaned,
/// each with its origin (file and line/row). `vocab`: the embedding's rows, which pre-tokenized
/// ids must stay below.
fn formatted_rows(
    d: &DatasetPlan,
    plan: &Plan,
    vocab: Option<usize>,
    c: &mut Counts,
) -> Result<Vec<(String, Formatted)>, String> {
    let opts = &plan.data;
    let field = match &d.entry {
        DatasetConfig::Completion(t) | DatasetConfig::Pretrain(t) => t.field.as_str(),
        _ => "text",
    };
    let read = sources::read_rows(d.entry.source(), d.local_path.as_deref(), field, &sources::Hub::from_env())?;
    c.rows = read.rows.len() + read.bad.len();
    if let Some(first) = read.bad.first() {
        if !opts.skip_bad_rows {
            return Err(format!("{first} (set skip_bad_rows: true to skip such rows)"));
        }
        c.bad_rows += read.bad.len();
    }
    let mut formatted: Vec<(String, Formatted)> = Vec::with_capacity(read.rows.len());
    let rl = plan.training.preference.as_ref().map(|p| p.method);
    // Axolotl trains on rows that hold these three as they are, whatever `type` says
    // (`_is_dataset_already_tokenized` comes first): a typed dataset of such rows would be read
    // otherwise here, so it is refused.
    let typed_sft = !matches!(d.entry, DatasetConfig::Pretokenized(_)) && !d.entry.holds_pairs();
    for row in read.rows {
        let origin = row.origin.to_string();
        if typed_sft && ["input_ids", "attention_mask", "labels"].iter().all(|k| row.value.get(k).is_some()) {
            return Err(format!(
                "{origin}: the row holds input_ids, attention_mask and labels, which Axolotl trains on as they are, \
                 ignoring `type: {}`; remove `type` to train on them so, or remove those fields",
                d.entry.type_name()
            ));
        }
        let row = formats::format_row(&d.entry, &row.value, rl).and_then(|f| match (&f, vocab) {
            (Formatted::Tokens(s), Some(vocab)) => formats::check_vocabulary(s, vocab).map(|()| f),
            _ => Ok(f),
        });
        match row {
            Ok(f) => formatted.push((origin, f)),
            Err(e) if opts.skip_bad_rows => {
                c.bad_rows += 1;
                tracing::debug!("skipped {origin}: {e}");
            }
            Err(e) => return Err(format!("{origin}: {e} (set skip_bad_rows: true to skip such rows)")),
        }
    }
    if opts.redact_pii {
        let content_key = match &d.entry {
            DatasetConfig::ChatTemplate(c) => c.message_field("content"),
            _ => "content".to_string(),
        };
        for (_, f) in &mut formatted {
            for text in f.texts_mut(&content_key) {
                c.redactions += hygiene::redact(text);
            }
        }
    }
    if opts.exact_deduplication || opts.normalized_deduplication {
        let keys: Vec<String> = formatted.iter().map(|(_, f)| f.key()).collect();
        let keep = hygiene::dedup(&keys, opts.normalized_deduplication);
        c.duplicates = formatted.len() - keep.len();
        let mut keep = keep.into_iter().peekable();
        formatted =
            formatted.into_iter().enumerate().filter(|(i, _)| keep.next_if_eq(i).is_some()).map(|(_, f)| f).collect();
    }
    Ok(formatted)
}

/// The rows of the embedding a run trains with: the model's vocabulary, or the tokenizer's when
/// it is larger (the run grows the embedding to it).
pub fn embedding_rows(plan: &Plan, tok: &Tokenizer) -> usize {
    (plan.model.architecture.vocab_size as usize).max(tok.vocab_size())
}

/// One dataset through stages 1 to 5.
fn dataset_samples(
    d: &DatasetPlan,
    plan: &Plan,
    tok: &Tokenizer,
    tokenizer_dir: &Path,
) -> Result<(Vec<Sample>, Counts), String> {
    let opts = &plan.data;
    let chat = chat_setup(d, plan, tokenizer_dir)?;
    let mut notes = Vec::new();
    if let Some(c) = &chat
        && c.options.train_on_eos != chat::TrainOnEos::None
        && let Some(eos) = &c.special.eos_token
    {
        // A template that never prints the EOS token leaves the model nothing that ends a turn.
        let probe = [
            serde_json::json!({"role": "user", "content": "a"}),
            serde_json::json!({"role": "assistant", "content": "b"}),
        ];
        if c.template.render(&probe, None, false, &c.special).is_ok_and(|t| !t.contains(eos.as_str())) {
            notes.push(format!(
                "template `{}` never prints the EOS token `{eos}`, so no end-of-turn token is trained; set \
                 special_tokens.eos_token to the template's turn end",
                c.template.name()
            ));
        }
    }
    let mut c = Counts { notes, ..Counts::default() };
    let vocab = embedding_rows(plan, tok);
    let formatted = formatted_rows(d, plan, Some(vocab), &mut c)?;
    let seq_len = opts.sequence_len as usize;
    let tokenized: Vec<(String, Vec<Sample>)> = formatted
        .par_iter()
        .map(|(origin, f)| {
            let samples = match (f, &chat) {
                (Formatted::Chat(row), Some(c)) => {
                    chat::tokenize_row(row, &c.options, &c.template, &c.special, tok).map(|s| vec![s])
                }
                _ => formats::tokenize(f, tok, seq_len, opts.train_on_inputs),
            };
            samples.map(|s| (origin.clone(), s)).map_err(|e| format!("{origin}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let splits_text = matches!(d.entry, DatasetConfig::Completion(_) | DatasetConfig::Pretrain(_));
    let mut samples = Vec::new();
    for (origin, group) in tokenized {
        for mut s in group {
            if s.input_ids.len() > seq_len && !splits_text {
                match opts.excess_length_strategy {
                    ExcessLength::Drop => {
                        c.dropped_long += 1;
                        continue;
                    }
                    ExcessLength::Truncate => {
                        s.input_ids.truncate(seq_len);
                        s.labels.truncate(seq_len);
                        c.truncated += 1;
                    }
                    ExcessLength::Raise => {
                        return Err(format!(
                            "{origin}: {} tokens, longer than sequence_len {seq_len} (excess_length_strategy: raise)",
                            s.input_ids.len()
                        ));
                    }
                }
            }
            if s.trained_tokens() == 0 {
                c.dropped_untrained += 1;
                continue;
            }
            samples.push(s);
        }
    }
    c.samples = samples.len();
    Ok((samples, c))
}

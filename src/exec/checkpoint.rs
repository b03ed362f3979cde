//! Checkpoints and final outputs. A checkpoint folder `checkpoint-STEP` holds the trainable
//! weights in the format the ecosystem loads (peft adapter, or a Hugging Face model folder), the
//! optimizer state and `trainer_state.json` (step, early-stopping state, data fingerprint). It is
//! written under a temporary name and renamed, so a crash or a full disk never leaves a half
//! checkpoint that resume would pick up; older ones beyond save_total_limit are removed after.

use crate::model::adapter;
use crate::model::llama::{CausalLm, Trainable};
use crate::model::weights::{self, Deferred};
use crate::plan::Plan;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub global_step: u64,
    pub total_steps: u64,
    pub best_eval_loss: Option<f64>,
    pub evals_without_improvement: u32,
    pub seed: u64,
    /// Training rows and their token count: resume refuses a checkpoint made on other data.
    pub train_rows: usize,
    pub train_tokens: usize,
    /// A digest of every training row's token and label ids (hex): resume refuses other data even
    /// of the same size. Absent in checkpoints of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_digest: Option<String>,
    /// fp16 runs: the loss scaler's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<super::loss_scale::LossScaler>,
    /// LISA: the decoder layers training at this step (exec/lisa.rs), so a resumed run goes on
    /// with them until the next switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lisa_layers: Option<Vec<usize>>,
}

/// Tokenizer and generation files copied next to saved weights.
const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
];

/// Writes the model's weights as peft or transformers would: adapter_model.safetensors +
/// adapter_config.json for an adapter, LoRA or IA3 (float32, as peft saves adapters), model.safetensors + config.json
/// for full fine-tuning (in `kind`: the save dtype for final outputs, the training precision for
/// checkpoints); plus the tokenizer files. `pad_id` is the padding token a reward model's config
/// records (transformers finds each sequence's last token by it).
pub fn write_weights(dir: &Path, model: &CausalLm, run: &RunFiles, kind: Kind) -> Result<(), String> {
    write_model_files(dir, model, run, kind, true)
}

/// `write_weights` without the weights: the configs and tokenizer files (a checkpoint whose
/// weights are in per-rank shards, exec/shard.rs).
pub fn write_model_files(
    dir: &Path,
    model: &CausalLm,
    run: &RunFiles,
    kind: Kind,
    with_weights: bool,
) -> Result<(), String> {
    let RunFiles { plan, base_dir, tokenizer_dir, pad_id, tokenizer } = *run;
    match &model.trainable {
        Trainable::Lora { .. } | Trainable::Ia3 { .. } => {
            if with_weights {
                let mut tensors: Vec<(String, Tensor)> =
                    model.trainable_params().into_iter().map(|p| (p.name, p.tensor.detach())).collect();
                tensors.extend(adapter::extra_tensors(model));
                weights::save(&dir.join("adapter_model.safetensors"), &tensors)?;
            }
            adapter::write_config(dir, &base_name(plan, base_dir), &plan.adapter, model.score.is_some())?;
        }
        Trainable::Prompt { .. } => {
            let tensors: Vec<(String, Tensor)> =
                model.trainable_params().into_iter().map(|p| (p.name, p.tensor.detach())).collect();
            weights::save(&dir.join("adapter_model.safetensors"), &tensors)?;
            let prompt =
                plan.adapter.prompt.as_ref().ok_or("a prompt-tuned model from a plan without prompt tuning")?;
            adapter::write_prompt_config(dir, &base_name(plan, base_dir), prompt, &model.arch)?;
        }
        Trainable::Bottleneck(spec) => {
            if with_weights {
                let tensors: Vec<(String, Tensor)> =
                    model.trainable_params().into_iter().map(|p| (p.name, p.tensor.detach())).collect();
                weights::save(&dir.join(crate::model::bottleneck::WEIGHTS_FILE), &tensors)?;
            }
            crate::model::bottleneck::write_config(dir, &base_name(plan, base_dir), spec, &model.arch)?;
        }
        Trainable::Prefix { num_virtual_tokens, projection } => {
            // peft saves the keys and values; with projection, the MLP's output.
            let prefix = tch::no_grad(|| model.prefix_values()).ok_or("a prefix-tuned model without a prefix")?;
            weights::save(&dir.join("adapter_model.safetensors"), &[("prompt_embeddings".to_string(), prefix)])?;
            if projection.is_some() {
                // The MLP itself, which resume (and only resume) reads back.
                let tensors: Vec<(String, Tensor)> =
                    model.trainable_params().into_iter().map(|p| (p.name, p.tensor.detach())).collect();
                weights::save(&dir.join(crate::model::prefix::ENCODER_FILE), &tensors)?;
            }
            let base = base_name(plan, base_dir);
            adapter::write_prefix_config(dir, &base, *num_virtual_tokens, *projection, &model.arch)?;
        }
        Trainable::Everything | Trainable::Nothing => {
            if with_weights {
                let tensors: Vec<Deferred> = model
                    .base_params()
                    .into_iter()
                    .map(|p| Deferred::ready(p.name, p.tensor.detach()).cast(kind))
                    .collect();
                weights::save_deferred(&dir.join("model.safetensors"), tensors)?;
            }
            write_model_config(dir, base_dir, model, kind, false, Some(pad_id))?;
        }
    }
    copy_side_files(base_dir, tokenizer_dir, dir)?;
    // The run's tokenizer (added tokens, special tokens set, or tokenizer_config): the base's lacks
    // them (load the base with `resize_token_embeddings(len(tokenizer))` before applying the adapter).
    tokenizer.map_or(Ok(()), |tok| tok.save(dir))
}

/// Writes a set of output files complete or not at all: `write` fills a temporary folder, which
/// then becomes `dest` (renamed, when `dest` is new or empty) or whose files are renamed into
/// `dest` one by one, weights last (when `dest` holds other files, as a run's output folder does).
/// A crash or a full disk while writing leaves the previous outputs, never a truncated set.
pub fn publish(dest: &Path, write: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), String> {
    let dest = std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf());
    let fresh = std::fs::read_dir(&dest).map_or(true, |mut d| d.next().is_none());
    let staging = match (fresh, dest.parent(), dest.file_name()) {
        (true, Some(parent), Some(name)) => parent.join(format!(".{}.partial", name.to_string_lossy())),
        _ => dest.join(".outputs.partial"),
    };
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| io(&staging, e))?;
    let result = write(&staging).and_then(|()| {
        if staging.parent() != Some(dest.as_path()) {
            let _ = std::fs::remove_dir(&dest);
            return std::fs::rename(&staging, &dest).map_err(|e| io(&dest, e));
        }
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&staging).map_err(|e| io(&staging, e))?.flatten().map(|e| e.path()).collect();
        files.sort_by_key(|f| (f.extension().is_some_and(|e| e == "safetensors"), f.clone()));
        for f in files {
            let to = dest.join(f.file_name().unwrap_or_default());
            std::fs::rename(&f, &to).map_err(|e| io(&to, e))?;
        }
        std::fs::remove_dir(&staging).map_err(|e| io(&staging, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// What a finished or interrupted run leaves in its output folder (its `recipe_run.json` too, which
/// alone, from a run that stopped before writing anything, does not make the folder another run's).
const RUN_OUTPUTS: &[&str] = &[
    "metrics.jsonl",
    "adapter_model.safetensors",
    "adapter.safetensors",
    "model.safetensors",
    "loss_curve.svg",
    "adapter_config.json",
];

/// The record of the run an output folder belongs to: its resolved plan and its training data's digest.
pub const RUN_RECORD: &str = "recipe_run.json";

/// Writes `recipe_run.json` in `output_dir`: the resolved plan (every setting and where it came
/// from) and the digest of the training rows, so a folder says which run made it.
pub fn write_run_record(output_dir: &Path, plan: &Plan, data_digest: &str) -> Result<(), String> {
    let record = serde_json::json!({
        "recipe": plan.recipe,
        "data_digest": data_digest,
        "plan": plan,
    });
    let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())? + "\n";
    weights::write_atomic(&output_dir.join(RUN_RECORD), text.as_bytes())
}

/// `path` made absolute with symlinks resolved, for a folder that may not exist yet (its nearest
/// existing ancestor is resolved).
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return absolute,
        }
    }
    let mut out = std::fs::canonicalize(existing).unwrap_or_else(|_| existing.to_path_buf());
    out.extend(rest.iter().rev());
    out
}

/// Checks `output_dir` before a run writes anything (main process): never the base model's folder or
/// a dataset's (or inside them); another run's outputs there are refused unless this run resumes
/// them or `overwrite_output_dir` asks to replace them, in which case they are removed first, so
/// pruning and resume only ever see this run's checkpoints.
pub fn prepare_output_dir(plan: &Plan, output_dir: &Path, base_dir: &Path, resuming: bool) -> Result<(), String> {
    let out = resolved(output_dir);
    let mut protected = vec![("the base model's folder", resolved(base_dir))];
    let replay = plan.replay.iter().flat_map(|r| &r.datasets);
    let ewc = plan.ewc.iter().flat_map(|e| &e.datasets);
    for d in plan.datasets.iter().chain(&plan.test_datasets).chain(&plan.forgetting_datasets).chain(replay).chain(ewc) {
        if let Some(p) = &d.local_path {
            // A dataset folder and everything in it; a dataset file itself (its neighbours are not data).
            let p = resolved(Path::new(p));
            protected.push((if p.is_dir() { "a dataset's folder" } else { "a dataset file" }, p));
        }
    }
    for (what, folder) in protected {
        if out.starts_with(&folder) {
            return Err(format!(
                "output_dir {} is {what} ({}) or inside it: the run would write over its files; choose another \
                 output_dir",
                output_dir.display(),
                folder.display()
            ));
        }
    }
    if resuming {
        return Ok(());
    }
    let mut found: Vec<String> =
        RUN_OUTPUTS.iter().filter(|f| output_dir.join(f).exists()).map(|f| f.to_string()).collect();
    let checkpoints = list(output_dir);
    if !checkpoints.is_empty() {
        found.push(format!("{} checkpoint folder(s)", checkpoints.len()));
    }
    if found.is_empty() {
        return Ok(());
    }
    if !plan.training.overwrite_output_dir {
        return Err(format!(
            "output_dir {} holds another run's outputs ({}); set resume_from_checkpoint: true to continue that run, \
             overwrite_output_dir: true to replace its outputs, or choose another output_dir",
            output_dir.display(),
            found.join(", ")
        ));
    }
    tracing::warn!(
        "overwrite_output_dir: removing the previous run's outputs in {} ({})",
        output_dir.display(),
        found.join(", ")
    );
    for f in RUN_OUTPUTS.iter().chain([&RUN_RECORD]) {
        let path = output_dir.join(f);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    for (_, dir) in checkpoints {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Copies config.json from the base, recording the weights' dtype, the vocabulary size (tokens may have
/// been added) and an untied head when the merged model has its own. A reward model becomes
/// transformers' `…ForSequenceClassification` with one label and the padding token it pools by.
pub fn write_model_config(
    dir: &Path,
    base_dir: &Path,
    model: &CausalLm,
    kind: Kind,
    untie: bool,
    pad_id: Option<i64>,
) -> Result<(), String> {
    let vocab_size = model.arch.vocab_size;
    let src = base_dir.join("config.json");
    let text = std::fs::read_to_string(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", src.display()))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("torch_dtype");
        o.insert("dtype".into(), weights::torch_dtype_name(kind).into());
        o.remove("quantization_config");
        o.insert("vocab_size".into(), vocab_size.into());
        if untie {
            o.insert("tie_word_embeddings".into(), false.into());
        }
        if model.score.is_some() {
            let class = &model.arch.class;
            let family = class.strip_suffix("ForCausalLM").or_else(|| class.strip_suffix("ForSequenceClassification"));
            let family = family.ok_or_else(|| format!("{}: a reward model of class `{class}`", src.display()))?;
            o.insert("architectures".into(), serde_json::json!([format!("{family}ForSequenceClassification")]));
            o.insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
            o.insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
            if let Some(pad) = pad_id {
                o.insert("pad_token_id".into(), pad.into());
            }
        }
    }
    let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())? + "\n";
    weights::write_atomic(&dir.join("config.json"), text.as_bytes())
}

/// Copies the tokenizer files from `tokenizer_dir` and the generation config from `base_dir`.
pub fn copy_side_files(base_dir: &Path, tokenizer_dir: &Path, to: &Path) -> Result<(), String> {
    for name in SIDE_FILES {
        let from = if *name == "generation_config.json" { base_dir } else { tokenizer_dir };
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name)).map_err(|e| format!("{}: {e}", to.join(name).display()))?;
        }
    }
    Ok(())
}

/// What adapter_config.json names as the base: the hub id, or the local folder.
fn base_name(plan: &Plan, base_dir: &Path) -> String {
    if plan.model.source_kind == "local" {
        std::fs::canonicalize(base_dir).unwrap_or(base_dir.to_path_buf()).display().to_string()
    } else {
        plan.model.name.clone()
    }
}

/// What a run's weight folders are written with, besides the weights.
pub struct RunFiles<'a> {
    pub plan: &'a Plan,
    /// The base model's folder (its config and generation config are copied).
    pub base_dir: &'a Path,
    /// Where the tokenizer files come from (the base's folder, or tokenizer_config's).
    pub tokenizer_dir: &'a Path,
    /// The padding token a reward model's config records.
    pub pad_id: i64,
    /// The run's tokenizer when it differs from the base's.
    pub tokenizer: Option<&'a crate::data::Tokenizer>,
}

/// Saves `checkpoint-STEP` atomically, then prunes beyond `keep`. Without an optimizer state
/// (`save_only_model`) the checkpoint holds the weights and trainer state only; with EWC it also
/// holds the penalty's Fisher information and anchor (`ewc.safetensors`).
/// Where checkpoint-`step` is written before it is published. A sharded checkpoint's ranks
/// write their shards into it first (`Staged::Shards`).
pub fn staging_dir(output_dir: &Path, step: u64) -> PathBuf {
    output_dir.join(format!(".checkpoint-{step}.partial"))
}

/// What a checkpoint's weights and optimizer state are.
pub enum Staged<'a> {
    /// Whole tensors, written here: the trainable weights from the model and this state.
    Whole(Option<&'a [(String, Tensor)]>),
    /// Per-rank shards the ranks already wrote into the staging folder (exec/shard.rs).
    Shards,
    /// A sharded full fine-tune's whole weights, each assembled as it is written (exec/shard.rs
    /// `stream_weights`), and this optimizer state.
    Streamed(Vec<Deferred<'a>>, Option<&'a [(String, Tensor)]>),
}

pub fn save(
    output_dir: &Path,
    model: &CausalLm,
    staged: Staged,
    ewc_state: Option<&[(String, Tensor)]>,
    state: &TrainerState,
    run: &RunFiles,
    keep: Option<u32>,
) -> Result<PathBuf, String> {
    let name = format!("checkpoint-{}", state.global_step);
    let final_dir = output_dir.join(&name);
    let tmp = staging_dir(output_dir, state.global_step);
    let whole = matches!(staged, Staged::Whole(_));
    let (optimizer_state, streamed) = match staged {
        Staged::Whole(optimizer_state) => {
            let _ = std::fs::remove_dir_all(&tmp);
            (optimizer_state, None)
        }
        Staged::Streamed(weights, optimizer_state) => {
            let _ = std::fs::remove_dir_all(&tmp);
            (optimizer_state, Some(weights))
        }
        Staged::Shards => (None, None),
    };
    let written = (|| {
        std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        write_model_files(&tmp, model, run, Kind::Float, whole)?;
        if let Some(weights) = streamed {
            weights::save_deferred(&tmp.join("model.safetensors"), weights)?;
        }
        if let Some(optimizer_state) = optimizer_state {
            weights::save(&tmp.join("optimizer.safetensors"), optimizer_state)?;
        }
        // EWC's Fisher information and anchor: a resumed run applies the same penalty.
        if let Some(ewc_state) = ewc_state {
            weights::save(&tmp.join(super::ewc::FILE), ewc_state)?;
        }
        let text = serde_json::to_string_pretty(state).map_err(|e| e.to_string())? + "\n";
        weights::write_atomic(&tmp.join("trainer_state.json"), text.as_bytes())?;
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir).map_err(|e| format!("{}: {e}", final_dir.display()))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        let kept = latest(output_dir).map_or("none".into(), |p| p.display().to_string());
        return Err(format!("saving {name} failed ({e}); the last complete checkpoint is kept: {kept}"));
    }
    if let Some(keep) = keep {
        let mut all = list(output_dir);
        while all.len() > keep.max(1) as usize {
            let (_, oldest) = all.remove(0);
            let _ = std::fs::remove_dir_all(oldest);
        }
    }
    Ok(final_dir)
}

/// Complete checkpoints in `output_dir`, oldest first.
pub fn list(output_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(output_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().join("trainer_state.json").is_file().then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

pub fn latest(output_dir: &Path) -> Option<PathBuf> {
    list(output_dir).pop().map(|(_, p)| p)
}

pub fn read_state(dir: &Path) -> Result<TrainerState, String> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The trainable tensors a resumed run reads from checkpoint `dir`: the weights file, or for
/// prefix tuning with projection the MLP (the adapter file holds only its output).
pub fn resume_weights_file(dir: &Path) -> PathBuf {
    let encoder = dir.join(crate::model::prefix::ENCODER_FILE);
    if encoder.is_file() { encoder } else { weights_file(dir) }
}

/// The trainable-weights file of a checkpoint or output folder.
pub fn weights_file(dir: &Path) -> PathBuf {
    let adapter = crate::model::bottleneck::weights_path(dir);
    if adapter.is_file() { adapter } else { dir.join("model.safetensors") }
}

#[cfg(test)]
mod tests {
    use super::publish;

    #[test]
    fn published_outputs_are_complete_or_absent() {
        let dir = tempfile::tempdir().unwrap();
        // A new folder: nothing appears when writing fails half-way.
        let fresh = dir.path().join("merged");
        let failed = publish(&fresh, |d| {
            std::fs::write(d.join("config.json"), "{}").unwrap();
            Err("disk full".into())
        });
        assert_eq!(failed.unwrap_err(), "disk full");
        assert!(!fresh.exists());
        publish(&fresh, |d| std::fs::write(d.join("model.safetensors"), "new").map_err(|e| e.to_string())).unwrap();
        assert_eq!(std::fs::read_to_string(fresh.join("model.safetensors")).unwrap(), "new");
        // A folder with other files (a run's output folder): the old outputs stay when writing fails.
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("metrics.jsonl"), "m").unwrap();
        std::fs::write(out.join("adapter_model.safetensors"), "old").unwrap();
        let failed = publish(&out, |d| {
            std::fs::write(d.join("adapter_model.safetensors"), "half").unwrap();
            Err("interrupted".into())
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(out.join("adapter_model.safetensors")).unwrap(), "old");
        publish(&out, |d| std::fs::write(d.join("adapter_model.safetensors"), "new").map_err(|e| e.to_string()))
            .unwrap();
        assert_eq!(std::fs::read_to_string(out.join("adapter_model.safetensors")).unwrap(), "new");
        let mut names: Vec<String> =
            std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["adapter_model.safetensors", "metrics.jsonl"], "no staging folder left");
    }
}

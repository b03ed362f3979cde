//! The prepared-data cache (`dataset_prepared_path`): `recipe preprocess` writes tokenized,
//! masked samples under a key that hashes everything they depend on (the data files' bytes, the
//! tokenizer files, the chat template, the data options and datasets entries, the pipeline
//! version), and `recipe run` reuses them while the key matches. Any change gives a new key, so a
//! stale cache is never read.

use super::{Prepared, Sample};
use crate::plan::Plan;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Bumped whenever the pipeline's output for the same inputs changes.
const PIPELINE_VERSION: &str = "recipe-data-4";

/// The cache key for this plan's data with the tokenizer in `tokenizer_dir`.
pub fn key(plan: &Plan, tokenizer_dir: &Path) -> Result<String, String> {
    let mut h = Sha256::new();
    h.update(PIPELINE_VERSION);
    h.update(serde_json::to_string(&plan.data).map_err(|e| e.to_string())?);
    let none = Vec::new();
    let replay = plan.replay.as_ref().map_or(&none, |r| &r.datasets);
    let ewc = plan.ewc.as_ref().map_or(&none, |e| &e.datasets);
    for (label, list) in [
        ("train", &plan.datasets),
        ("test", &plan.test_datasets),
        ("forgetting", &plan.forgetting_datasets),
        ("replay", replay),
        ("ewc", ewc),
    ] {
        for d in list {
            h.update(label);
            h.update(serde_json::to_string(&d.entry).map_err(|e| e.to_string())?);
            if let Some(path) = &d.local_path {
                hash_path(&mut h, path)?;
            } else {
                h.update(&d.source);
            }
        }
    }
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"] {
        if let Ok(bytes) = std::fs::read(tokenizer_dir.join(name)) {
            h.update(name);
            h.update(&bytes);
        }
    }
    // Chat templates: the recipe's and each dataset's (a tokenizer_default one is in the
    // tokenizer files above).
    let templates = plan.chat_template.iter().chain(
        plan.datasets
            .iter()
            .chain(&plan.test_datasets)
            .chain(&plan.forgetting_datasets)
            .chain(replay)
            .chain(ewc)
            .filter_map(|d| d.chat_template.as_ref()),
    );
    for t in templates {
        h.update(t.text.as_deref().unwrap_or(&t.name));
    }
    for name in ["chat_template.jinja"] {
        if let Ok(bytes) = std::fs::read(tokenizer_dir.join(name)) {
            h.update(&bytes);
        }
    }
    Ok(h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect())
}

fn hash_path(h: &mut Sha256, path: &Path) -> Result<(), String> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            h.update(p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            hash_path(h, &p)?;
        }
        Ok(())
    } else {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        h.update(&bytes);
        Ok(())
    }
}

/// The folder for `key` under `prepared_path`.
pub fn folder(prepared_path: &Path, key: &str) -> PathBuf {
    prepared_path.join(key)
}

/// Writes the samples (flat int32 tokens and labels with offsets, per split, in safetensors) and
/// the report; the folder appears complete or not at all (written aside, then renamed). Ranks of
/// one run may write the same folder at once: each writes aside under its own name, and a folder
/// another rank completed first is kept (its content is the same).
pub fn save(dir: &Path, prepared: &Prepared) -> Result<(), String> {
    let parent = dir.parent().ok_or("the cache folder has no parent")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    if dir.join("report.json").is_file() {
        return Ok(()); // another rank of this run wrote it first
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let tmp = dir.with_extension(format!("partial-{}-{}", host.trim(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    for (name, samples) in [
        ("train", &prepared.train),
        ("validation", &prepared.validation),
        ("test", &prepared.test),
        ("forgetting", &prepared.forgetting),
        ("replay", &prepared.replay),
        ("ewc", &prepared.ewc),
    ] {
        let (ids, labels, offsets) = flatten(samples);
        let bytes = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let offsets_bytes: Vec<u8> = offsets.iter().flat_map(|x| x.to_le_bytes()).collect();
        let (ids, labels) = (bytes(&ids), bytes(&labels));
        let tensors = vec![
            ("input_ids", view(safetensors::Dtype::I32, ids.len() / 4, &ids)?),
            ("labels", view(safetensors::Dtype::I32, labels.len() / 4, &labels)?),
            ("offsets", view(safetensors::Dtype::I64, offsets.len(), &offsets_bytes)?),
        ];
        let data = safetensors::tensor::serialize(tensors, None).map_err(|e| e.to_string())?;
        std::fs::write(tmp.join(format!("{name}.safetensors")), data).map_err(|e| format!("{}: {e}", tmp.display()))?;
    }
    let report = serde_json::to_string_pretty(&prepared.report).map_err(|e| e.to_string())? + "\n";
    std::fs::write(tmp.join("report.json"), report).map_err(|e| format!("{}: {e}", tmp.display()))?;
    if dir.exists() && !dir.join("report.json").is_file() {
        let _ = std::fs::remove_dir_all(dir); // an incomplete folder of an older format
    }
    match std::fs::rename(&tmp, dir) {
        Err(_) if dir.join("report.json").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        other => other.map_err(|e| format!("{}: {e}", dir.display())),
    }
}

fn view(dtype: safetensors::Dtype, len: usize, data: &[u8]) -> Result<safetensors::tensor::TensorView<'_>, String> {
    safetensors::tensor::TensorView::new(dtype, vec![len], data).map_err(|e| e.to_string())
}

fn flatten(samples: &[Sample]) -> (Vec<i32>, Vec<i32>, Vec<i64>) {
    let mut offsets = vec![0i64];
    let (mut ids, mut labels) = (Vec::new(), Vec::new());
    for s in samples {
        ids.extend(s.input_ids.iter().map(|&x| x as i32));
        labels.extend(s.labels.iter().map(|&x| x as i32));
        offsets.push(ids.len() as i64);
    }
    (ids, labels, offsets)
}

/// Reads a cache folder written by `save`.
pub fn load(dir: &Path) -> Result<Prepared, String> {
    let mut prepared = Prepared::default();
    for name in ["train", "validation", "test", "forgetting", "replay", "ewc"] {
        let path = dir.join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let get =
            |n: &str| st.tensor(n).map(|t| t.data().to_vec()).map_err(|e| format!("{}: {n}: {e}", path.display()));
        let i32s = |b: Vec<u8>| {
            b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect::<Vec<_>>()
        };
        let ids = i32s(get("input_ids")?);
        let labels = i32s(get("labels")?);
        let offsets: Vec<usize> = get("offsets")?
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as usize)
            .collect();
        let samples = offsets
            .windows(2)
            .map(|w| {
                let (a, b) = (w[0], w[1]);
                if a > b || b > ids.len() || b > labels.len() {
                    return Err(format!("{}: corrupt offsets", path.display()));
                }
                Ok(Sample { input_ids: ids[a..b].to_vec(), labels: labels[a..b].to_vec() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        match name {
            "train" => prepared.train = samples,
            "validation" => prepared.validation = samples,
            "test" => prepared.test = samples,
            "forgetting" => prepared.forgetting = samples,
            "replay" => prepared.replay = samples,
            _ => prepared.ewc = samples,
        }
    }
    let report = dir.join("report.json");
    prepared.report =
        std::fs::read_to_string(&report).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_samples() {
        let dir = tempfile::tempdir().unwrap();
        let s = |ids: Vec<i64>, labels: Vec<i64>| Sample { input_ids: ids, labels };
        let prepared = Prepared {
            train: vec![s(vec![1, 2, 3], vec![-100, 2, 3]), s(vec![4], vec![4])],
            validation: vec![s(vec![5, 6], vec![5, -100])],
            test: vec![],
            forgetting: vec![],
            replay: vec![],
            ewc: vec![],
            report: vec!["a".into()],
        };
        let folder = dir.path().join("k");
        save(&folder, &prepared).unwrap();
        let back = load(&folder).unwrap();
        assert_eq!(back.train, prepared.train);
        assert_eq!(back.validation, prepared.validation);
        assert!(back.test.is_empty());
        assert_eq!(back.report, prepared.report);
    }
}

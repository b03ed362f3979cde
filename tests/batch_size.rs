//! Axolotl's deprecated `batch_size`: alone it gives gradient_accumulation_steps =
//! batch_size / micro_batch_size (Axolotl's normalize_config), shown in the plan with where it came
//! from; beside gradient_accumulation_steps, below micro_batch_size or not a multiple of it, it is
//! refused (the last by name: Axolotl would count steps by a batch it does not run).

mod common;

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("recipe.yaml");
    let text = format!(
        "base_model: {}\ndatasets:\n  - path: {}\n    type: completion\n    ds_type: text\nnum_epochs: 1\n\
         learning_rate: 1.0e-3\noutput_dir: {}\n{extra}",
        root().join("models/stories260k").display(),
        root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
        dir.join("out").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn output(args: &[&str], path: &Path) -> (Option<i32>, String) {
    let out = common::recipe_command().args(args).arg(path).output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn batch_size_gives_the_accumulation_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = output(&["plan"], &write(dir.path(), "micro_batch_size: 2\nbatch_size: 8\n"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("batch      2 × 4 accumulation × 1 ranks = 8 sequences"), "{out}");
    assert!(out.contains("accumulation 4 = batch_size 8"), "{out}");
    assert!(out.contains("gradient_accumulation_steps       4  <- batch_size / micro_batch_size"), "{out}");
}

#[test]
fn batch_size_beside_accumulation_or_off_the_micro_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, rule) in [
        ("micro_batch_size: 2\nbatch_size: 8\ngradient_accumulation_steps: 2\n", "batch-size-with-accumulation"),
        ("micro_batch_size: 4\nbatch_size: 2\n", "batch-size-below-micro-batch"),
        ("micro_batch_size: 4\nbatch_size: 10\n", "unsupported-batch-size-remainder"),
    ] {
        let (code, out) = output(&["validate"], &write(dir.path(), extra));
        assert_eq!(code, Some(1), "{rule}: {out}");
        assert!(out.contains(rule), "expected {rule}: {out}");
    }
}

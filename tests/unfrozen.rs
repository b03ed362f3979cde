//! `unfrozen_parameters` (a full fine-tune of the parameters Axolotl's patterns select) end to end
//! on stories260k: after one step without clipping or weight decay, every selected tensor (or
//! selected rows) equals the full fine-tune's after its one step — AdamW's first step of an element
//! depends only on that element's gradient, which freezing the others does not change — and every
//! other value is the base model's, bit for bit; the plan's trainable count is the size of the
//! tensors that moved, and the optimizer holds state for them alone. Bad patterns are errors at
//! their list item.
#![cfg(feature = "exec")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A one-step full fine-tune of stories260k in `dir` (constant learning rate from step 0, no
/// clipping, no weight decay), with `extra` lines appended.
fn write_recipe(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "base_model: {model}\n\
         datasets:\n  - path: {data}\n    type: completion\n    ds_type: text\n\
         val_set_size: 0.1\nsequence_len: 128\nsample_packing: true\nmicro_batch_size: 4\n\
         lr_scheduler: constant\nwarmup_steps: 0\nlearning_rate: 1.0e-3\nmax_grad_norm: 0\nweight_decay: 0\n\
         max_steps: 1\nlogging_steps: 1\nseed: 7\noutput_dir: {out}\n{extra}",
        model = root().join("models/stories260k").display(),
        data = root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
        out = dir.join("out").display(),
    );
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(recipe: &Path) -> String {
    let out = common::recipe_command().arg("run").arg(recipe).args(["--device", "cpu"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn weights(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

const SELECTION: &str = "unfrozen_parameters:\n  - ^model.layers.[0-2].mlp.*\n  - \
                         ^model.embed_tokens.weight$[:100]\n  - model.norm\n";

#[test]
fn a_partial_full_fine_tune_moves_exactly_the_selected_values_as_the_full_one_does() {
    let full_dir = tempfile::tempdir().unwrap();
    let part_dir = tempfile::tempdir().unwrap();
    run(&write_recipe(full_dir.path(), ""));
    let part_recipe = write_recipe(part_dir.path(), SELECTION);
    let stdout = run(&part_recipe);

    let base = weights(&root().join("models/stories260k/model.safetensors"));
    let full = weights(&full_dir.path().join("out/model.safetensors"));
    let part = weights(&part_dir.path().join("out/model.safetensors"));
    let selected = |name: &str| {
        let layer = name.strip_prefix("model.layers.").and_then(|r| r.split('.').next()?.parse::<u32>().ok());
        (layer.is_some_and(|l| l <= 2) && name.contains(".mlp.")) || name == "model.norm.weight"
    };
    let mut moved = 0i64;
    for (name, p) in &part {
        let b = &base[name];
        if name == "model.embed_tokens.weight" {
            // Rows 0..100 train as in the full fine-tune; the rest are the base's.
            assert_eq!(p.narrow(0, 100, p.size()[0] - 100), b.narrow(0, 100, b.size()[0] - 100), "frozen rows moved");
            let diff = (p.narrow(0, 0, 100) - full[name].narrow(0, 0, 100)).abs().max().double_value(&[]);
            assert!(diff <= 1e-7, "embedding rows 0..100 differ from the full fine-tune's by {diff:e}");
            assert_ne!(p.narrow(0, 0, 100), b.narrow(0, 0, 100), "selected rows did not move");
            moved += p.numel() as i64;
        } else if selected(name) {
            let diff = (p - &full[name]).abs().max().double_value(&[]);
            assert!(diff <= 1e-7, "{name} differs from the full fine-tune's by {diff:e}");
            assert_ne!(p, b, "{name} is selected but did not move");
            moved += p.numel() as i64;
        } else {
            assert_eq!(p, b, "{name} is frozen but moved");
        }
    }

    // The plan counts what moved; the optimizer holds 8 bytes of state per trained value.
    let plan = common::recipe_command().arg("plan").arg(&part_recipe).arg("--json").output().unwrap();
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["adapter"]["trainable_parameters"].as_i64(), Some(moved));
    assert_eq!(plan["adapter"]["unfrozen"]["patterns"][1]["rows"]["end"].as_i64(), Some(100));
    let state_kib = moved as f64 * 8.0 / 1024.0;
    let state_line = stdout.lines().find(|l| l.starts_with("optimizer")).expect("optimizer line");
    assert!(
        state_line.contains(&format!("{:.2} KiB", state_kib))
            || state_line.contains(&format!("{:.2} MiB", state_kib / 1024.0)),
        "optimizer state is not {state_kib:.2} KiB: {state_line}"
    );
}

#[test]
fn bad_patterns_are_errors_at_their_item_and_an_unmatched_one_at_plan_time() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), "unfrozen_parameters:\n  - \"model.(layers\"\n  - lm_head[9:2]\n");
    let out = common::recipe_command().arg("validate").arg(&recipe).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("recipe.yaml:20:5: error[unfrozen-parameter-pattern]"), "{text}");
    assert!(text.contains("recipe.yaml:21:5: error[unfrozen-parameter-pattern]"), "{text}");
    assert!(text.contains("end must be greater than its start"), "{text}");

    let recipe = write_recipe(dir.path(), "adapter: lora\nunfrozen_parameters:\n  - lm_head\n");
    let out = common::recipe_command().arg("validate").arg(&recipe).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("error[unsupported-unfrozen-parameters-with-adapter]"), "{text}");

    // stories260k ties its head, so transformers lists no lm_head parameter to match.
    let recipe = write_recipe(dir.path(), "unfrozen_parameters:\n  - lm_head\n");
    let out = common::recipe_command().arg("run").arg(&recipe).args(["--device", "cpu"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("`lm_head` matches no parameter of LlamaForCausalLM (its head is tied"), "{text}");
}

//! Injected failures at every executor entry point (`run`, `generate`, `score`, `merge`,
//! `quantize`): a truncated or unreadable weights file, weights of the wrong shape, an adapter
//! that does not fit its base, a device that is not there. Each must end with an error message
//! that names the problem and exit code 1 or 2, never a panic (exit code 101) or an abort.
#![cfg(feature = "exec")]

mod common;

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of the bundled model that `damage` then breaks.
fn model_copy(dir: &Path, name: &str, damage: impl FnOnce(&Path)) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(root().join("models/stories260k")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    damage(&to);
    to
}

fn recipe_for(dir: &Path, base: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "base_model: {}\ndatasets:\n  - path: {}\n    type: completion\n    ds_type: text\nval_set_size: 0\n\
         sequence_len: 64\nmicro_batch_size: 2\nmax_steps: 1\nlearning_rate: 1.0e-4\nlora_r: 4\nlora_alpha: 8\n\
         lora_target_linear: true\noutput_dir: {}\n{extra}",
        base.display(),
        root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
        dir.join(format!("out-{}", base.file_name().unwrap().to_string_lossy())).display(),
    );
    let path = dir.join(format!("{}.yaml", base.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `recipe ARGS` and asserts it failed cleanly with a message containing `expected`.
fn fails_cleanly(args: &[&std::ffi::OsStr], expected: &str) {
    let out = common::recipe_command().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(
        matches!(code, Some(1 | 2)),
        "recipe {args:?}: exit {code:?} (a panic exits 101, an abort has no code)\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "recipe {args:?} panicked:\n{stderr}");
    assert!(stderr.contains(expected), "recipe {args:?}: expected `{expected}` in:\n{stderr}");
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn broken_weights_fail_with_a_message_at_every_entry_point() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = model_copy(dir.path(), "truncated", |m| {
        let path = m.join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    });
    let unreadable = model_copy(dir.path(), "unreadable", |m| {
        let path = m.join("model.safetensors");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
    });
    let reshaped = model_copy(dir.path(), "reshaped", |m| {
        let path = m.join("config.json");
        let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["intermediate_size"] = 180.into();
        std::fs::write(&path, config.to_string()).unwrap();
    });
    let cases = [
        (&truncated, "not a safetensors file"),
        (&unreadable, "model.safetensors"),
        (&reshaped, "has shape [172, 64] in the checkpoint, the model expects [180, 64]"),
    ];
    for (model, expected) in cases {
        let model_os = model.as_os_str();
        fails_cleanly(&[os("generate"), model_os, os("--prompt"), os("Once"), os("--device"), os("cpu")], expected);
        fails_cleanly(&[os("score"), model_os, os("--text"), os("Once"), os("--device"), os("cpu")], expected);
        let recipe = recipe_for(dir.path(), model, "adapter: lora\n");
        fails_cleanly(&[os("run"), recipe.as_os_str(), os("--device"), os("cpu")], expected);
        let qlora = recipe_for(dir.path(), model, "adapter: qlora\nload_in_4bit: true\n");
        fails_cleanly(&[os("quantize"), qlora.as_os_str(), os("--output"), dir.path().join("q").as_os_str()], expected);
        // An adapter whose base is the broken model.
        let adapter = dir.path().join(format!("adapter-{}", model.file_name().unwrap().to_string_lossy()));
        std::fs::create_dir_all(&adapter).unwrap();
        let config = serde_json::json!({
            "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
            "base_model_name_or_path": model, "task_type": "CAUSAL_LM",
        });
        std::fs::write(adapter.join("adapter_config.json"), config.to_string()).unwrap();
        std::fs::copy(model.join("tokenizer.json"), adapter.join("tokenizer.json")).unwrap();
        fails_cleanly(&[os("merge"), adapter.as_os_str(), os("--output"), dir.path().join("m").as_os_str()], expected);
    }
    assert!(!dir.path().join("m").exists() && !dir.path().join("q").exists(), "failed outputs left folders");
}

#[test]
fn adapters_that_do_not_fit_their_base_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let base = root().join("models/stories260k");
    let config = serde_json::json!({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
        "base_model_name_or_path": base, "task_type": "CAUSAL_LM",
    });
    std::fs::write(adapter.join("adapter_config.json"), config.to_string()).unwrap();
    // No weights file at all.
    fails_cleanly(
        &[os("generate"), adapter.as_os_str(), os("--prompt"), os("Once"), os("--device"), os("cpu")],
        "adapter_model.safetensors",
    );
    // Rank 8 tensors for an r: 4 config.
    let a = tch::Tensor::zeros([8, 64], (tch::Kind::Float, tch::Device::Cpu));
    let b = tch::Tensor::zeros([64, 8], (tch::Kind::Float, tch::Device::Cpu));
    let mut tensors = Vec::new();
    for l in 0..5 {
        let p = format!("base_model.model.model.layers.{l}.self_attn.q_proj");
        tensors.push((format!("{p}.lora_A.weight"), a.shallow_clone()));
        tensors.push((format!("{p}.lora_B.weight"), b.shallow_clone()));
    }
    recipe::model::weights::save(&adapter.join("adapter_model.safetensors"), &tensors).unwrap();
    fails_cleanly(
        &[os("merge"), adapter.as_os_str(), os("--output"), dir.path().join("m").as_os_str()],
        "shape [8, 64]",
    );
    assert!(!dir.path().join("m").exists(), "a failed merge left a folder");
}

#[test]
fn devices_that_are_not_there_fail_with_a_message() {
    let model = root().join("models/stories260k");
    for device in ["tpu", "cuda:7", "cuda:x"] {
        fails_cleanly(
            &[os("generate"), model.as_os_str(), os("--prompt"), os("Once"), os("--device"), os(device)],
            device,
        );
        fails_cleanly(&[os("score"), model.as_os_str(), os("--text"), os("Once"), os("--device"), os(device)], device);
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe_for(dir.path(), &model, "adapter: lora\n");
    fails_cleanly(&[os("run"), recipe.as_os_str(), os("--device"), os("cuda:7")], "cuda:7");
}

/// `resize_token_embeddings_to_32x`: stories260k's 512 rows already cover its tokenizer rounded up
/// to 32, so the run trains as without the key; two added tokens (514) would need 30 padding rows
/// Axolotl draws at random: refused before anything is trained or written.
#[test]
fn resize_to_32x_trains_when_nothing_is_padded_and_refuses_random_padding_rows() {
    let dir = tempfile::tempdir().unwrap();
    let base = root().join("models/stories260k");
    let path = recipe_for(dir.path(), &base, "adapter: lora\nresize_token_embeddings_to_32x: true\n");
    let out = common::recipe_command().arg("plan").arg(&path).output().unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && plan.contains("resize_token_embeddings_to_32x: the run checks"), "{plan}");
    let out = common::recipe_command()
        .args([os("run"), path.as_os_str(), os("--device"), os("cpu"), os("--no-progress")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("512 embedding rows cover the tokenizer's 512 tokens"), "{text}");

    let padded = dir.path().join("padded");
    std::fs::create_dir_all(&padded).unwrap();
    let path =
        recipe_for(&padded, &base, "adapter: lora\nresize_token_embeddings_to_32x: true\ntokens: [\"<a>\", \"<b>\"]\n");
    let args = [os("run"), path.as_os_str(), os("--device"), os("cpu"), os("--no-progress")];
    fails_cleanly(&args, "would grow the embedding from 514 rows (the tokenizer's 514 tokens) to 544");
    let out = padded.join("out-stories260k");
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(), "nothing is written");
}

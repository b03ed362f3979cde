//! `recipe run` end to end with the real binary on the bundled stories260k: it trains (validation
//! loss drops), writes peft outputs, metrics and the loss curve; the same recipe and seed give the
//! same losses; a run killed with SIGKILL after a checkpoint and resumed repeats the uninterrupted
//! run's per-step losses; a diverging run stops at the step where the loss broke; generate samples
//! from the output folder; gradient checkpointing lowers peak memory; a terminal shows the progress
//! bar (loss, lr, tokens/s, ETA) with log lines printed above it.
#![cfg(feature = "exec")]

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small LoRA recipe on stories260k in `dir`, with `extra` lines appended.
fn write_recipe(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "base_model: {model}\nadapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true\n\
         datasets:\n  - path: {data}\n    type: completion\n    ds_type: text\n\
         val_set_size: 0.1\nsequence_len: 128\nsample_packing: true\nmicro_batch_size: 4\n\
         lr_scheduler: cosine\nwarmup_steps: 2\nlogging_steps: 4\nseed: 7\n\
         output_dir: {out}\n{extra}",
        model = root().join("models/stories260k").display(),
        data = root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
        out = dir.join("out").display(),
    );
    let lr = if extra.contains("learning_rate:") { "" } else { "learning_rate: 2.0e-3\n" };
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, format!("{text}{lr}")).unwrap();
    path
}

fn recipe() -> Command {
    common::recipe_command()
}

fn run_ok(recipe_path: &Path, args: &[&str]) -> String {
    let out = recipe().arg("run").arg(recipe_path).args(["--device", "cpu"]).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("out/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn step_losses(records: &[Value]) -> Vec<(u64, f64)> {
    records.iter().filter_map(|r| Some((r.get("step")?.as_u64()?, r.get("loss")?.as_f64()?))).collect()
}

fn eval_losses(records: &[Value]) -> Vec<f64> {
    records.iter().filter_map(|r| r.get("eval_loss")?.as_f64()).collect()
}

#[test]
fn run_trains_and_writes_peft_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 16\neval_steps: 8\n");
    let out = recipe().arg("run").arg(&path).args(["--device", "cpu"]).env("RECIPE_LOG", "info").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed:\n{stdout}\n{stderr}");
    // Output to a pipe carries no colour codes.
    assert!(!stdout.contains('\u{1b}') && !stderr.contains('\u{1b}') && stderr.contains("INFO"), "{stderr}");
    assert!(stdout.contains("steps      16 of 16"), "{stdout}");
    assert!(stdout.contains("memory     training peak ") && stdout.contains("the plan's CPU estimate"), "{stdout}");
    let records = metrics(dir.path());
    let losses = step_losses(&records);
    assert_eq!(losses.iter().map(|l| l.0).collect::<Vec<_>>(), (1..=16).collect::<Vec<_>>());
    assert!(losses.iter().all(|l| l.1.is_finite()));
    let evals = eval_losses(&records);
    assert_eq!(evals.len(), 3, "before, at step 8 and at step 16: {records:?}");
    assert!(evals[2] < evals[0] - 0.3, "validation loss should drop: {evals:?}");
    let out = dir.path().join("out");
    for f in ["adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "loss_curve.svg"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 7);

    let generated = recipe()
        .args(["generate"])
        .arg(&out)
        .args(["--prompt", "ROMEO:", "--max-new-tokens", "12", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let text = String::from_utf8_lossy(&generated.stdout);
    assert!(text.starts_with("ROMEO:") && text.trim().len() > "ROMEO:".len(), "{text}");
}

#[test]
fn same_seed_same_losses_and_sigkill_resume_repeats_them() {
    let extra = "max_steps: 40\nsave_steps: 4\nlora_dropout: 0.1\n";
    // Uninterrupted, twice: identical losses (dropout included: its randomness is seeded per step).
    let a = tempfile::tempdir().unwrap();
    run_ok(&write_recipe(a.path(), extra), &[]);
    let reference = step_losses(&metrics(a.path()));
    assert_eq!(reference.len(), 40);
    let again = tempfile::tempdir().unwrap();
    run_ok(&write_recipe(again.path(), extra), &[]);
    assert_eq!(step_losses(&metrics(again.path())), reference, "same recipe and seed must give the same losses");

    // Killed with SIGKILL once a checkpoint exists, then resumed.
    let b = tempfile::tempdir().unwrap();
    let path = write_recipe(b.path(), extra);
    let mut child = recipe().arg("run").arg(&path).args(["--device", "cpu", "--no-progress"]).spawn().unwrap();
    let first = b.path().join("out/checkpoint-8/trainer_state.json");
    let start = std::time::Instant::now();
    while !first.is_file() {
        assert!(start.elapsed().as_secs() < 120, "no checkpoint appeared");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = step_losses(&metrics(b.path())).len();
    assert!(killed_at < 40, "the run was not interrupted");
    let stdout = run_ok(&path, &["--set", "resume_from_checkpoint=true"]);
    assert!(stdout.contains("resumed    from"), "{stdout}");
    let resumed = step_losses(&metrics(b.path()));
    assert_eq!(resumed.len(), 40, "{resumed:?}");
    for ((step, want), (_, got)) in reference.iter().zip(&resumed) {
        assert!((want - got).abs() <= 1e-6, "step {step}: {got} after resume, {want} uninterrupted");
    }
}

#[test]
fn a_diverging_run_stops_and_names_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(
        dir.path(),
        "max_steps: 80\nmax_grad_norm: 0\nlearning_rate: 1.0\nweight_decay: 10\nsave_steps: 2\n",
    );
    let out = recipe().arg("run").arg(&path).args(["--device", "cpu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("became") && stderr.contains("at step"), "{stderr}");
    // Every checkpoint left behind holds finite weights and the message names the last one.
    let kept = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .count();
    assert!(kept >= 1 && stderr.contains("the last good checkpoint is"), "{stderr}");
    assert!(!dir.path().join("out/adapter_model.safetensors").exists(), "no final output from a broken run");
}

#[test]
fn clean_stop_saves_a_checkpoint_to_resume_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 8\nsave_steps: 100\n");
    let stdout = run_ok(&path, &["--stop-after", "3"]);
    assert!(stdout.contains("stopped    at step 3"), "{stdout}");
    assert!(dir.path().join("out/checkpoint-3/adapter_model.safetensors").is_file());
    let stdout = run_ok(&path, &["--set", "resume_from_checkpoint=true"]);
    assert!(stdout.contains("steps      8 of 8"), "{stdout}");
}

#[test]
fn ctrl_c_saves_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 400\nsave_steps: 1000\n");
    let child = recipe()
        .arg("run")
        .arg(&path)
        .args(["--device", "cpu"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("out/metrics.jsonl");
    let start = std::time::Instant::now();
    // Wait for the first logged steps, then press Ctrl-C once.
    while std::fs::read_to_string(&metrics).map_or(true, |t| !t.contains("\"loss\"")) {
        assert!(start.elapsed().as_secs() < 120, "no step was logged");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("stopped    at step") && stdout.contains("resume_from_checkpoint"), "{stdout}");
    let step: u64 =
        stdout.split("stopped    at step ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(step < 400);
    assert!(dir.path().join(format!("out/checkpoint-{step}/trainer_state.json")).is_file());
}

/// Peak resident memory of a child process (ru_maxrss of wait4), in KiB.
#[allow(clippy::zombie_processes)] // reaped by wait4 below
fn peak_rss_kib(mut cmd: Command) -> i64 {
    let child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is a plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "run failed");
    usage.ru_maxrss
}

#[test]
fn gradient_checkpointing_lowers_peak_memory() {
    // A deeper random model: 16 layers, hidden 128, 8 rows of 512 tokens.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("deep");
    common::random_llama(
        &model,
        &serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
            "intermediate_size": 344, "num_hidden_layers": 16, "num_attention_heads": 4, "num_key_value_heads": 4,
            "vocab_size": 512, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
            "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"
        }),
    );
    let recipe_text = |checkpointing: bool, out: &str, seq: usize, rows: usize| {
        format!(
            "base_model: {}\nadapter: lora\nlora_target_linear: true\ndatasets:\n  - path: {}\n    type: completion\n    ds_type: text\n\
             val_set_size: 0\nsequence_len: {seq}\nmicro_batch_size: {rows}\nmax_steps: 1\nlearning_rate: 1.0e-4\n\
             gradient_checkpointing: {checkpointing}\noutput_dir: {}\n",
            model.display(),
            root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
            dir.path().join(out).display()
        )
    };
    // Peak RSS above a baseline run with negligible activations (libraries, model, data), with
    // large allocations returned to the system on free so RSS follows live memory.
    let mut peaks = Vec::new();
    for (checkpointing, name, seq, rows) in
        [(false, "baseline", 16, 1), (false, "plain", 512, 8), (true, "checkpointed", 512, 8)]
    {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, recipe_text(checkpointing, name, seq, rows)).unwrap();
        let mut cmd = recipe();
        cmd.env("MALLOC_MMAP_THRESHOLD_", "65536").env("MALLOC_TRIM_THRESHOLD_", "0");
        cmd.arg("run").arg(&path).args(["--device", "cpu", "--no-progress"]);
        peaks.push(peak_rss_kib(cmd));
    }
    let (plain, checkpointed) = (peaks[1] - peaks[0], peaks[2] - peaks[0]);
    eprintln!("activation peak above baseline: {plain} KiB without, {checkpointed} KiB with gradient checkpointing");
    assert!(
        (checkpointed as f64) < 0.6 * plain as f64,
        "gradient checkpointing should cut activation memory: {plain} KiB without, {checkpointed} KiB with"
    );
}

#[test]
fn added_tokens_grow_the_vocabulary_and_train_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(
        dir.path(),
        "max_steps: 2\nsave_steps: 1\ntokens: [\"<|scene|>\"]\nspecial_tokens:\n  pad_token: \"<pad>\"\n",
    );
    run_ok(&path, &[]);
    let out = dir.path().join("out");
    // Every checkpoint carries the run's tokenizer, so it loads on its own (514 rows, not the base's 512).
    let generated = recipe()
        .arg("generate")
        .arg(out.join("checkpoint-1"))
        .args(["--prompt", "<|scene|> The king", "--max-new-tokens", "4", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let adapter =
        recipe::model::weights::Checkpoint::open_files(&out, &[out.join("adapter_model.safetensors")]).unwrap();
    // 512 + <pad> + <|scene|>, both the embedding copy and the head copy.
    assert_eq!(adapter.shape("base_model.model.model.embed_tokens.weight"), Some(&[514i64, 64][..]));
    assert_eq!(adapter.shape("base_model.model.lm_head.weight"), Some(&[514i64, 64][..]));
    let tokenizer = std::fs::read_to_string(out.join("tokenizer.json")).unwrap();
    assert!(tokenizer.contains("<|scene|>") && tokenizer.contains("<pad>"));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    let saved: Vec<&str> = config["modules_to_save"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(saved, ["embed_tokens", "lm_head"]);
}

#[test]
fn a_chat_recipe_trains_and_generates_through_its_template() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "base_model: {}\nadapter: lora\nlora_target_linear: true\nchat_template: chatml\nspecial_tokens:\n  eos_token: \"<|im_end|>\"\n\
         datasets:\n  - path: {}\n    type: chat_template\nsequence_len: 256\nmicro_batch_size: 2\nmax_steps: 2\n\
         learning_rate: 1.0e-3\noutput_dir: {}\n",
        root().join("models/stories260k").display(),
        root().join("tests/fixtures/pipeline/chat.jsonl").display(),
        dir.path().join("out").display()
    );
    let path = dir.path().join("chat.yaml");
    std::fs::write(&path, text).unwrap();
    run_ok(&path, &[]);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(config["eos_token"], "<|im_end|>");
    let out = recipe()
        .arg("generate")
        .arg(&path)
        .args(["--prompt", "Colour of grass?", "--max-new-tokens", "6", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn lora_model_dir_continues_a_trained_ia3_adapter() {
    // IA3 over the same small recipe: its vectors start at ones (the base model).
    let ia3 = |dir: &Path, extra: &str| {
        let path = write_recipe(dir, &format!("learning_rate: 3.0e-2\n{extra}"));
        let text = std::fs::read_to_string(&path).unwrap();
        let text =
            text.replace("adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true\n", "adapter: ia3\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    let first = tempfile::tempdir().unwrap();
    run_ok(&ia3(first.path(), "max_steps: 4\n"), &[]);
    let first_evals = eval_losses(&metrics(first.path()));
    let (base_eval, trained_eval) = (first_evals[0], *first_evals.last().unwrap());
    let adapter = first.path().join("out");
    let second = tempfile::tempdir().unwrap();
    let path = ia3(second.path(), &format!("max_steps: 1\nlora_model_dir: {}\n", adapter.display()));
    let plan = recipe().arg("plan").arg(&path).output().unwrap();
    assert!(String::from_utf8_lossy(&plan.stdout).contains("starts from the trained adapter"));
    run_ok(&path, &[]);
    // Before its first step the run scores the validation split with the loaded vectors.
    let start = eval_losses(&metrics(second.path()))[0];
    assert!((start - trained_eval).abs() <= 1e-5 * trained_eval, "{start} vs the trained adapter's {trained_eval}");
    assert!((start - base_eval).abs() > 1e-4, "the loaded vectors should differ from ones: {start} vs {base_eval}");
    eprintln!(
        "IA3 continued: validation loss {start} at step 0; the adapter's own {trained_eval}; the base's {base_eval}"
    );
    // Other targets than the adapter's are refused, naming both.
    let other = recipe()
        .arg("run")
        .arg(&path)
        .args(["--device", "cpu", "--set", "ia3_target_modules=[q_proj, v_proj, down_proj]"])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("the IA3 adapter scales [down_proj, k_proj, v_proj]")
            && stderr.contains("the recipe asks [down_proj, q_proj, v_proj]"),
        "{stderr}"
    );
    // A LoRA recipe does not continue an IA3 adapter.
    let lora = write_recipe(second.path(), &format!("max_steps: 1\nlora_model_dir: {}\n", adapter.display()));
    let out = recipe().arg("run").arg(&lora).args(["--device", "cpu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the adapter is IA3, the recipe asks LoRA"), "{stderr}");
}

#[test]
fn a_prefix_trained_through_its_projection_resumes_with_its_mlp() {
    // peft's adapter file holds the MLP's output only; the checkpoint keeps the MLP beside it
    // (prefix_encoder.safetensors), so a resumed run repeats the uninterrupted run's losses.
    let prefix = |dir: &Path| {
        let path = write_recipe(
            dir,
            "max_steps: 6\nsave_steps: 100\nlearning_rate: 1.0e-2\nnum_virtual_tokens: 4\n\
             prefix_projection: true\nencoder_hidden_size: 8\ngradient_checkpointing: true\n",
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text
            .replace("adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true\n", "adapter: prefix_tuning\n")
            .replace("sample_packing: true", "sample_packing: false")
            .replace("logging_steps: 4", "logging_steps: 1");
        std::fs::write(&path, text).unwrap();
        path
    };
    let whole = tempfile::tempdir().unwrap();
    run_ok(&prefix(whole.path()), &[]);
    let want = step_losses(&metrics(whole.path()));
    let split = tempfile::tempdir().unwrap();
    let path = prefix(split.path());
    run_ok(&path, &["--stop-after", "3"]);
    assert!(split.path().join("out/checkpoint-3/prefix_encoder.safetensors").is_file());
    run_ok(&path, &["--set", "resume_from_checkpoint=true"]);
    let got = step_losses(&metrics(split.path()));
    let after = |l: &[(u64, f64)]| l.iter().filter(|(s, _)| *s > 3).copied().collect::<Vec<_>>();
    let (want, got) = (after(&want), after(&got));
    assert_eq!(want.len(), 3, "{want:?}");
    for ((s, a), (_, b)) in want.iter().zip(&got) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "step {s}: {b} resumed vs {a} uninterrupted");
    }
}

#[test]
fn a_sharded_setting_not_built_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(
        dir.path(),
        "max_steps: 1\nfsdp: [full_shard, auto_wrap]\nfsdp_config:\n  fsdp_forward_prefetch: true\n",
    );
    let out = recipe().arg("run").arg(&path).args(["--device", "cpu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning[sharding-setting-not-built]"), "{stderr}");
    assert!(
        stderr.contains("error[run]: fsdp_config.fsdp_forward_prefetch: prefetching the next unit in the forward pass"),
        "{stderr}"
    );
    assert!(!dir.path().join("out").exists(), "refused before writing anything");
}

#[test]
fn epochs_schedule_evaluations_and_keep_the_newest_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    // 10% of the chunks for validation; micro batch 4 and no accumulation: steps per epoch follow the rows.
    let path = write_recipe(dir.path(), "num_epochs: 2\nevals_per_epoch: 2\nsaves_per_epoch: 1\nsave_total_limit: 1\n");
    let stdout = run_ok(&path, &["--set", "micro_batch_size=32"]);
    let records = metrics(dir.path());
    let steps = step_losses(&records).len() as u64;
    let per_epoch = steps / 2;
    assert!(steps >= 4 && steps.is_multiple_of(2), "{stdout}");
    // Evaluations: before training, then every per_epoch / 2 steps (the last step included).
    let evals = records.iter().filter(|r| r.get("eval_loss").is_some()).count() as u64;
    assert_eq!(evals, 1 + steps / (per_epoch / 2), "{records:?}");
    // One checkpoint kept: the newest (saved at the end of epoch 2).
    let kept: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(kept, vec![format!("checkpoint-{steps}")]);
}

#[test]
fn accumulation_equals_one_big_batch() {
    // 2 rows × 2 accumulation steps and 4 rows × 1 see the same rows per optimizer step.
    let losses = |micro: &str, accum: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = write_recipe(dir.path(), "max_steps: 6\n");
        run_ok(
            &path,
            &["--set", &format!("micro_batch_size={micro}"), "--set", &format!("gradient_accumulation_steps={accum}")],
        );
        step_losses(&metrics(dir.path()))
    };
    let (split, whole) = (losses("2", "2"), losses("4", "1"));
    assert_eq!(split.len(), 6);
    for ((step, a), (_, b)) in split.iter().zip(&whole) {
        assert!((a - b).abs() < 1e-5, "step {step}: {a} accumulated vs {b} in one batch");
    }
}

#[test]
fn early_stopping_ends_a_run_whose_validation_loss_stops_improving() {
    let dir = tempfile::tempdir().unwrap();
    // A learning rate far too high: the validation loss gets worse and patience 1 stops the run.
    let path = write_recipe(
        dir.path(),
        "max_steps: 200\neval_steps: 2\nearly_stopping_patience: 1\nlearning_rate: 0.5\nmax_grad_norm: 0\n",
    );
    let stdout = run_ok(&path, &[]);
    assert!(stdout.contains("stopped    early: validation loss has not improved for 1 evaluations"), "{stdout}");
    assert!(step_losses(&metrics(dir.path())).len() < 200);
}

#[test]
fn a_failed_save_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 8\nsave_steps: 4\n");
    // Something in the way of checkpoint-8's temporary folder: the save fails as on a full disk.
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    std::fs::write(dir.path().join("out/.checkpoint-8.partial"), b"in the way").unwrap();
    let out = recipe().arg("run").arg(&path).args(["--device", "cpu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("saving checkpoint-8 failed") && stderr.contains("checkpoint-4"), "{stderr}");
    assert!(dir.path().join("out/checkpoint-4/adapter_model.safetensors").is_file());
    assert!(!dir.path().join("out/checkpoint-8").exists());
}

#[test]
fn a_terminal_shows_a_progress_bar_with_loss_lr_throughput_and_eta() {
    // `script` (util-linux) runs the binary on a pseudo-terminal, so the bar draws as for a user.
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 24\n");
    let binary = assert_cmd::cargo::cargo_bin("recipe");
    let command = format!(
        "NO_COLOR=1 OMP_NUM_THREADS=1 RECIPE_LOG=info '{}' run '{}' --device cpu",
        binary.display(),
        path.display()
    );
    let out = Command::new("script").args(["-qec", &command, "/dev/null"]).output().expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let frames: Vec<&str> = text.split(['\r', '\n']).filter(|l| l.contains("/24 steps")).collect();
    let full = frames
        .iter()
        .find(|f| f.contains("loss ") && f.contains(" lr ") && f.contains(" tok/s") && f.contains(" < "))
        .unwrap_or_else(|| panic!("no frame with loss, lr, tokens/s and ETA among {frames:?}"));
    eprintln!("a progress frame: {}", full.trim());
    // Log lines print above the bar (the bar's line cleared first), not into it.
    assert!(text.contains("\u{1b}[2K INFO train step=4"), "{text}");
    assert!(text.contains("val loss   before ") && !text.contains("after -"), "{text}");
}

#[test]
fn random_weights_train_a_shape_that_has_only_a_config() {
    // What the GPU check does for a Llama-2-13B shape: config.json and a tokenizer, no weights.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("shape-only");
    std::fs::create_dir_all(&model).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("models/stories260k/config.json")).unwrap()).unwrap();
    config["num_hidden_layers"] = 3.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(root().join("models/stories260k").join(f), model.join(f)).unwrap();
    }
    let path = write_recipe(dir.path(), &format!("max_steps: 2\nbase_model: {}\n", model.display()));
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        &format!("base_model: {}\n", root().join("models/stories260k").display()),
        "",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let out = recipe().arg("run").arg(&path).args(["--device", "cpu", "--no-progress"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("model.safetensors"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = run_ok(&path, &["--no-progress", "--random-weights"]);
    assert!(stdout.contains("steps      2 of 2"), "{stdout}");
}

#[test]
fn an_output_dir_holding_another_run_is_refused_unless_resumed_or_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 2\nsave_steps: 1\n");
    run_ok(&path, &[]);
    let out = dir.path().join("out");
    assert!(out.join("checkpoint-2").is_dir());
    // The folder records which run made it: the resolved plan and the training data's digest, the
    // same digest its checkpoints carry for resume.
    let record: Value = serde_json::from_str(&std::fs::read_to_string(out.join("recipe_run.json")).unwrap()).unwrap();
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint-2/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(record["data_digest"], state["data_digest"]);
    assert_eq!(record["data_digest"].as_str().unwrap().len(), 16);
    assert_eq!(record["plan"]["training"]["max_steps"], 2);
    // A second run (another learning rate) into the same folder: refused, nothing touched.
    let before = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let second =
        recipe().arg("run").arg(&path).args(["--device", "cpu", "--set", "learning_rate=1.0e-3"]).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("holds another run's outputs") && stderr.contains("overwrite_output_dir: true"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(out.join("adapter_model.safetensors")).unwrap(), before);
    // Told to overwrite: the old run's checkpoints go first, so only this run's remain.
    run_ok(&path, &["--set", "learning_rate=1.0e-3", "--set", "max_steps=1", "--set", "overwrite_output_dir=true"]);
    let checkpoints: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(checkpoints, ["checkpoint-1"]);
    assert_eq!(step_losses(&metrics(dir.path())).len(), 1, "metrics.jsonl holds this run's steps only");
}

#[test]
fn an_output_dir_inside_the_base_model_or_a_dataset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 1\n");
    let dataset = root().join("data/shakespeare/tinyshakespeare-excerpt.txt");
    for target in [root().join("models/stories260k"), dataset.clone()] {
        let out = recipe()
            .arg("run")
            .arg(&path)
            .args(["--device", "cpu", "--set", &format!("output_dir={}", target.display())])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("or inside it: the run would write over its files"), "{stderr}");
        assert!(!target.join("adapter_model.safetensors").exists());
    }
    assert!(dataset.is_file(), "the dataset is untouched");
    // Beside a dataset file (not inside a dataset folder) is fine.
    let beside = tempfile::tempdir().unwrap();
    std::fs::copy(&dataset, beside.path().join("data.txt")).unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&dataset.display().to_string(), &beside.path().join("data.txt").display().to_string());
    std::fs::write(&path, text).unwrap();
    run_ok(&path, &["--set", &format!("output_dir={}", beside.path().join("out").display())]);
}

#[test]
fn resuming_with_nothing_to_resume_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 1\nresume_from_checkpoint: true\n");
    let out = recipe().arg("run").arg(&path).args(["--device", "cpu"]).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no checkpoint: training starts fresh"), "{stderr}");
}

#[test]
fn lora_model_dir_continues_a_trained_adapter_and_refuses_another_shape() {
    let first = tempfile::tempdir().unwrap();
    run_ok(&write_recipe(first.path(), "max_steps: 4\n"), &[]);
    let trained_eval = *eval_losses(&metrics(first.path())).last().unwrap();
    let adapter = first.path().join("out");
    let second = tempfile::tempdir().unwrap();
    let path = write_recipe(second.path(), &format!("max_steps: 1\nlora_model_dir: {}\n", adapter.display()));
    run_ok(&path, &[]);
    // Before its first step the run scores the validation split with the trained adapter, not a fresh one.
    let start = eval_losses(&metrics(second.path()))[0];
    assert!((start - trained_eval).abs() <= 1e-5 * trained_eval, "{start} vs the trained adapter's {trained_eval}");
    let other = recipe().arg("run").arg(&path).args(["--device", "cpu", "--set", "lora_r=8"]).output().unwrap();
    assert_eq!(other.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(stderr.contains("the adapter has r=4") && stderr.contains("the recipe asks r=8"), "{stderr}");
    // A plain LoRA adapter is not continued as DoRA (it has no magnitudes to load).
    let dora =
        recipe().arg("run").arg(&path).args(["--device", "cpu", "--set", "peft_use_dora=true"]).output().unwrap();
    assert_eq!(dora.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&dora.stderr);
    assert!(stderr.contains("the adapter is plain LoRA, the recipe asks DoRA"), "{stderr}");
}

#[test]
fn tokenizer_config_supplies_the_runs_tokenizer_and_its_outputs_carry_it() {
    let dir = tempfile::tempdir().unwrap();
    // Another tokenizer folder: the base's vocabulary with a chat template the base lacks.
    let tok = dir.path().join("tok");
    std::fs::create_dir(&tok).unwrap();
    let base = root().join("models/stories260k");
    for f in ["tokenizer.json", "special_tokens_map.json"] {
        std::fs::copy(base.join(f), tok.join(f)).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("tokenizer_config.json")).unwrap()).unwrap();
    let template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}";
    config["chat_template"] = Value::from(template);
    std::fs::write(tok.join("tokenizer_config.json"), config.to_string()).unwrap();
    let text = format!(
        "base_model: {}\ntokenizer_config: {}\nadapter: lora\nlora_target_linear: true\nchat_template: tokenizer_default\n\
         datasets:\n  - path: {}\n    type: chat_template\nsequence_len: 256\nmicro_batch_size: 2\nmax_steps: 1\n\
         learning_rate: 1.0e-3\noutput_dir: {}\n",
        base.display(),
        tok.display(),
        root().join("tests/fixtures/pipeline/chat.jsonl").display(),
        dir.path().join("out").display()
    );
    let path = dir.path().join("chat.yaml");
    std::fs::write(&path, &text).unwrap();

    let plan = recipe().arg("plan").arg(&path).output().unwrap();
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success() && plan_text.contains(&tok.display().to_string()), "{plan_text}");
    // The rows are rendered with the other folder's template.
    let preview = recipe().arg("preview").arg(&path).args(["-n", "1"]).output().unwrap();
    let shown = String::from_utf8_lossy(&preview.stdout);
    assert!(preview.status.success() && shown.contains("### user: Colour of grass?"), "{shown}");
    run_ok(&path, &[]);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(written["chat_template"], template, "the outputs carry the run's tokenizer");

    // Without tokenizer_config the base has no template to default to: the key is what made the run work.
    std::fs::write(&path, text.replace(&format!("tokenizer_config: {}\n", tok.display()), "")).unwrap();
    let without = recipe().arg("preview").arg(&path).output().unwrap();
    assert!(!without.status.success(), "{}", String::from_utf8_lossy(&without.stdout));
}

#[test]
fn save_only_model_checkpoints_hold_weights_and_refuse_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 2\nsave_steps: 1\nsave_only_model: true\n");
    run_ok(&path, &[]);
    let checkpoint = dir.path().join("out/checkpoint-1");
    assert!(checkpoint.join("adapter_model.safetensors").is_file() && checkpoint.join("trainer_state.json").is_file());
    assert!(!checkpoint.join("optimizer.safetensors").exists(), "weights only");
    let resumed = recipe()
        .arg("run")
        .arg(&path)
        .args(["--device", "cpu", "--set", "resume_from_checkpoint=true", "--set", "max_steps=3"])
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&resumed.stdout), String::from_utf8_lossy(&resumed.stderr));
    assert!(!resumed.status.success() && said.contains("save_only_model: true"), "{said}");
}

#[test]
fn no_host_sync_inside_a_step_for_lora_and_full_fine_tuning() {
    // Every device-to-host read goes through exec/host_sync.rs, which counts them per optimizer
    // step: none in a step that only trains, one (the pending losses) in a logging step. Full
    // fine-tuning with bitsandbytes' 8-bit AdamW: its embedding gets 8-bit states (32,768 values).
    for method in ["LoRA", "full", "full, 8-bit AdamW"] {
        let dir = tempfile::tempdir().unwrap();
        let extra = if method.ends_with("8-bit AdamW") { "optimizer: adamw_bnb_8bit\n" } else { "" };
        let path = write_recipe(dir.path(), &format!("max_steps: 8\neval_steps: 8\nsave_steps: 4\n{extra}"));
        if method.starts_with("full") {
            let text = std::fs::read_to_string(&path).unwrap();
            let kept: Vec<&str> =
                text.lines().filter(|l| !(l.starts_with("adapter") || l.starts_with("lora_"))).collect();
            std::fs::write(&path, kept.join("\n")).unwrap();
        }
        let stdout = run_ok(&path, &["--no-progress", "--set", "logging_steps=3"]);
        let line = stdout.lines().find(|l| l.starts_with("host syncs ")).expect("host syncs line");
        eprintln!("{method}: {line}");
        assert!(line.starts_with("host syncs 0 per non-logging step, 1 per logging step, up to "), "{method}: {line}");
        // A checkpoint's tensors are read from the device one by one, and counted.
        let saving = line.split(", ").find(|p| p.contains("in a step that saves")).expect("a saving step");
        let numbers: Vec<u64> = saving.split([' ', '(']).filter_map(|w| w.parse().ok()).collect();
        let tensors = std::fs::read_dir(dir.path().join("out/checkpoint-4"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            .map(|e| {
                recipe::model::weights::Checkpoint::open_files(dir.path(), &[e.path()]).unwrap().names().count() as u64
            })
            .sum::<u64>();
        assert!(
            numbers.len() == 2 && numbers[1] == tensors && numbers[0] > numbers[1],
            "{method}: {saving} (the checkpoint holds {tensors} tensors)"
        );
    }
}

#[test]
fn the_loss_watchdog_stops_a_run_whose_loss_stays_above_its_threshold() {
    // Axolotl's loss_watchdog_threshold: stories260k starts near 4.4, so a threshold of 1.0 trips
    // after `patience` steps in a row (losses are read at each logging step).
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 40\nloss_watchdog_threshold: 1.0\nloss_watchdog_patience: 3\n");
    let stdout = run_ok(&path, &["--set", "logging_steps=1"]);
    assert!(
        stdout.contains("stopped    early: the training loss was above loss_watchdog_threshold (1) for 3 steps"),
        "{stdout}"
    );
    assert_eq!(step_losses(&metrics(dir.path())).len(), 3, "stopped at the third step");
    assert!(dir.path().join("out/adapter_model.safetensors").is_file(), "what was trained is kept");
    // A loss that stays below it does not stop the run.
    let calm = tempfile::tempdir().unwrap();
    let path = write_recipe(calm.path(), "max_steps: 6\nloss_watchdog_threshold: 100.0\n");
    let stdout = run_ok(&path, &[]);
    assert!(!stdout.contains("stopped    early"), "{stdout}");
}

#[test]
fn forgetting_datasets_are_scored_before_and_after_training() {
    // General-domain text the run never trains on: its perplexity before and after training.
    let dir = tempfile::tempdir().unwrap();
    let general = dir.path().join("general.txt");
    std::fs::write(&general, "Once upon a time there was a little girl named Lily. She liked to play in the park with her dog. One day the sun was hot and they went home to drink water.\n").unwrap();
    let path = write_recipe(
        dir.path(),
        &format!(
            "max_steps: 8\nforgetting_datasets:\n  - path: {}\n    type: completion\n    ds_type: text\n",
            general.display()
        ),
    );
    let plan = recipe().arg("plan").arg(&path).output().unwrap();
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("forgetting completion"),
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );
    let stdout = run_ok(&path, &[]);
    let line = stdout.lines().find(|l| l.starts_with("forgetting perplexity")).expect("a forgetting line");
    let numbers: Vec<f64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(numbers.len(), 2, "{line}");
    assert!(numbers.iter().all(|p| p.is_finite() && *p > 1.0) && numbers[0] != numbers[1], "{line}");
    let last = metrics(dir.path()).into_iter().rev().find(|r| r.get("forgetting_perplexity").is_some()).unwrap();
    assert!((last["forgetting_perplexity"].as_f64().unwrap() - numbers[1]).abs() < 0.01, "{last}");
    assert!((last["forgetting_perplexity_before"].as_f64().unwrap() - numbers[0]).abs() < 0.01, "{last}");
}

/// peft's own LoRA and DoRA folders for stories260k (random non-zero weights, so each changes the
/// text), served together over one base by `--adapter`.
const LORA: &str = "tests/golden/lora/stories260k_all_linear";
const DORA: &str = "tests/golden/lora/stories260k_dora";
const BASE: &str = "models/stories260k";

/// `recipe generate` from the package root: (exit code, stdout, stderr).
fn generate(args: &[&str]) -> (i32, String, String) {
    let out = recipe()
        .current_dir(root())
        .arg("generate")
        .args(args)
        .args(["--max-new-tokens", "16", "--device", "cpu"])
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The single-target generation of `prompt` from `target` (the command as it was before adapters
/// could be named), plus `extra` flags.
fn generate_one(target: &str, prompt: &str, extra: &[&str]) -> String {
    let (code, stdout, stderr) = generate(&[&[target, "--prompt", prompt], extra].concat());
    assert_eq!(code, 0, "{stderr}");
    stdout
}

#[test]
fn several_adapters_over_one_base_equal_their_single_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.jsonl");
    // The two adapters alternate; a row without `adapter` takes --use's (here the default: the base).
    let rows = [
        ("Once upon a time", Some("lora")),
        ("Once upon a time", Some("dora")),
        ("The cat sat", Some("lora")),
        ("The cat sat", Some("dora")),
        ("Lily went", None),
        ("Lily went", Some("base")),
        ("Lily went", Some("lora")),
    ];
    let lines: Vec<String> = rows
        .iter()
        .map(|(p, a)| match a {
            Some(a) => serde_json::json!({"prompt": p, "adapter": a}).to_string(),
            None => serde_json::json!({"prompt": p}).to_string(),
        })
        .collect();
    std::fs::write(&file, lines.join("\n\n") + "\n").unwrap();
    let adapters = [format!("lora={LORA}"), format!("dora={DORA}")];
    let (code, stdout, stderr) = generate(&[
        BASE,
        "--adapter",
        &adapters[0],
        "--adapter",
        &adapters[1],
        "--prompts-file",
        file.to_str().unwrap(),
        "--batch-size",
        "2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    // Each adapter (and the base) becomes active once, by a switch that is timed.
    assert_eq!(stderr.matches("switched in").count(), 3, "{stderr}");
    let outputs: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(outputs.len(), rows.len(), "{stdout}");
    let mut by_adapter = std::collections::HashMap::new();
    for ((prompt, adapter), out) in rows.iter().zip(&outputs) {
        let adapter = adapter.unwrap_or("base");
        assert_eq!(out["prompt"], *prompt);
        assert_eq!(out["adapter"], adapter);
        let completion = out["completion"].as_str().unwrap();
        // Each equals a run of the adapter folder alone (or of the base alone).
        let single = match adapter {
            "lora" => LORA,
            "dora" => DORA,
            _ => BASE,
        };
        assert_eq!(format!("{prompt}{completion}\n"), generate_one(single, prompt, &[]), "{adapter}: {prompt}");
        by_adapter.insert((adapter, *prompt), completion.to_string());
    }
    // The adapters change the text, each in its own way.
    let once = |a| &by_adapter[&(a, "Once upon a time")];
    assert_ne!(once("lora"), once("dora"));
    assert_ne!(by_adapter[&("lora", "Lily went")], by_adapter[&("base", "Lily went")]);

    // One prompt: --use picks the adapter; `--use base` is the base alone, also under an
    // adapter folder's own adapter (`default`).
    let base_text = generate_one(BASE, "Once upon a time", &[]);
    let named = ["--adapter", &adapters[0], "--adapter", &adapters[1]];
    let (code, dora_text, stderr) =
        generate(&[&[BASE, "--prompt", "Once upon a time", "--use", "dora"], &named[..]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("adapter `dora` active: switched in"), "{stderr}");
    assert_eq!(dora_text, generate_one(DORA, "Once upon a time", &[]));
    assert_eq!(generate_one(BASE, "Once upon a time", &[&named[..], &["--use", "base"]].concat()), base_text);
    assert_eq!(generate_one(LORA, "Once upon a time", &["--use", "base"]), base_text);
    let (code, beside, stderr) =
        generate(&[LORA, "--prompt", "Once upon a time", "--adapter", &adapters[1], "--use", "default"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(beside, generate_one(LORA, "Once upon a time", &[]));
}

#[test]
fn multi_adapter_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let unknown = write(
        "unknown.jsonl",
        "{\"prompt\": \"a\", \"adapter\": \"lora\"}\n{\"prompt\": \"b\", \"adapter\": \"dorra\"}\n",
    );
    let malformed = write("malformed.jsonl", "{\"prompt\": \"a\"}\n\n{\"prompt\": \"b\", \n");
    let misspelt = write("misspelt.jsonl", "{\"prompt\": \"a\", \"adaptor\": \"dora\"}\n");
    let empty = write("empty.jsonl", "\n");
    let (lora, dora) = (format!("lora={LORA}"), format!("dora={DORA}"));
    let qwen3 = "qwen=tests/golden/lora/qwen3_all_linear".to_string();
    let (twice, own) = (format!("lora={DORA}"), format!("default={DORA}"));
    let both = ["--adapter", lora.as_str(), "--adapter", dora.as_str()];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("--use names no given adapter", [&[BASE, "--prompt", "a", "--use", "lorra"], &both[..]].concat()),
        ("duplicate --adapter names", [&[BASE, "--prompt", "a", "--adapter", &twice], &both[..]].concat()),
        ("unknown adapter in the prompts file", [&[BASE, "--prompts-file", &unknown], &both[..]].concat()),
        ("malformed prompts line", [&[BASE, "--prompts-file", &malformed], &both[..]].concat()),
        ("unknown field in the prompts file", [&[BASE, "--prompts-file", &misspelt], &both[..]].concat()),
        ("no prompts", vec![BASE, "--prompts-file", &empty]),
        ("adapter of another base", vec![BASE, "--prompt", "a", "--adapter", &qwen3]),
        ("adapter folder that is not one", vec![BASE, "--prompt", "a", "--adapter", "none=tests/golden"]),
        ("`default` under an adapter target", vec![LORA, "--prompt", "a", "--adapter", &own]),
        ("`base` as a name", vec![BASE, "--prompt", "a", "--adapter", "base=tests/golden"]),
        ("not NAME=DIR", vec![BASE, "--prompt", "a", "--adapter", "lora"]),
    ];
    let mut report = String::new();
    for (what, args) in cases {
        let (code, stdout, stderr) = generate(&args);
        assert!(stdout.is_empty(), "{what}: {stdout}");
        let stderr = stderr.replace(dir.path().to_str().unwrap(), "TMP");
        // clap's usage lines after its one-line error are not ours to pin.
        let first = stderr.lines().next().unwrap_or_default();
        report.push_str(&format!("{what}: exit {code}\n  {first}\n"));
    }
    insta::assert_snapshot!("multi_adapter_mistakes", report);
}

#[test]
fn switching_adapters_moves_no_base_weight() {
    use recipe::model::llama::{CausalLm, Inputs};
    use tch::{Device, Kind, Tensor};
    let loaded = recipe::exec::load_trained(&root().join(BASE), None, Device::Cpu, None, Some(Kind::Float)).unwrap();
    let mut served = recipe::model::serving::Adapters::new(loaded.model, "default");
    assert_eq!(served.active(), None);
    served.attach("lora", &root().join(LORA)).unwrap();
    served.attach("dora", &root().join(DORA)).unwrap();
    assert_eq!(served.names(), ["dora", "lora"]);
    let ids = Tensor::from_slice(&[1i64, 403, 407, 261, 378, 289]).unsqueeze(0);
    let positions = Tensor::arange(6, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let logits = |m: &CausalLm| {
        let _guard = tch::no_grad_guard();
        m.logits(&Inputs { input_ids: &ids, position_ids: &positions, segment_ids: None, varlen: None })
    };
    // Every base tensor stays where it is (same storage, same values) through the switches.
    let base: Vec<(String, usize, Tensor)> = served
        .model
        .base_params()
        .into_iter()
        .map(|p| (p.name, p.tensor.data_ptr() as usize, p.tensor.copy()))
        .collect();
    let base_logits = logits(&served.model);
    let mut seen = Vec::new();
    for name in [Some("lora"), Some("dora"), None, Some("lora"), Some("dora")] {
        served.set_adapter(name).unwrap();
        assert_eq!(served.active(), name);
        seen.push(logits(&served.model));
        for ((n, ptr, value), now) in base.iter().zip(served.model.base_params()) {
            assert_eq!(now.tensor.data_ptr() as usize, *ptr, "{n} moved");
            common::assert_identical(n, &now.tensor, value, "before switching");
        }
    }
    // Each adapter gives its own logits, the same each time it is active, equal to loading its
    // folder alone; none is the base's.
    common::assert_identical("lora again", &seen[3], &seen[0], "lora first");
    common::assert_identical("dora again", &seen[4], &seen[1], "dora first");
    common::assert_identical("base", &seen[2], &base_logits, "before any adapter");
    let alone = common::load_peft_folder(&root().join(LORA), Kind::Float);
    common::assert_identical("lora served", &seen[0], &logits(&alone), "lora alone");
    let alone = common::load_peft_folder(&root().join(DORA), Kind::Float);
    common::assert_identical("dora served", &seen[1], &logits(&alone), "dora alone");
    assert!(seen[0].not_equal_tensor(&seen[2]).any().int64_value(&[]) == 1);
    // An unknown name is an error and leaves the active adapter as it was.
    assert!(served.set_adapter(Some("lorra")).unwrap_err().contains("no adapter named `lorra`"));
    assert_eq!(served.active(), Some("dora"));
}

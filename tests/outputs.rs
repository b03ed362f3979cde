//! Outputs the ecosystem loads. Short LoRA and full fine-tunes of stories260k with the real
//! binary, then: the adapter folder reloaded by recipe gives the logits the run ended with; `recipe
//! merge` writes a Hugging Face folder whose logits equal base + adapter (1e-4); the full fine-tune
//! folder reloads; a DoRA adapter saves its magnitudes under peft's names and merges likewise; so do
//! an IA3 adapter (on a dense and on a 4-bit base) and LoRA (and DoRA) on embed_tokens; a prompt- or
//! prefix-tuning adapter saves peft's `prompt_embeddings` (through the projection MLP: its output)
//! and is refused by `recipe merge`. The
//! folders and recipe's logits are left in CARGO_TARGET_TMPDIR/outputs-check
//! for scripts/reference/check_outputs.py, which loads them with peft and transformers.
#![cfg(feature = "exec")]

use assert_cmd::cargo::CommandCargoExt;
use recipe::exec::load_trained;
use recipe::model::llama::Inputs;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("outputs-check")
}

fn train(dir: &Path, method: &str) -> PathBuf {
    let adapter = match method {
        "lora" => "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n",
        "lora_head" => "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_modules: [q_proj, v_proj, lm_head]\n",
        "dora" => {
            "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_dropout: 0.1\nlora_target_linear: true\npeft_use_dora: true\n"
        }
        "prompt_tuning" => {
            "adapter: prompt_tuning\nnum_virtual_tokens: 8\nprompt_tuning_init: text\nprompt_tuning_init_text: \"ROMEO:\"\n"
        }
        "prefix_tuning" => "adapter: prefix_tuning\nnum_virtual_tokens: 6\n",
        "prefix_projection" => {
            "adapter: prefix_tuning\nnum_virtual_tokens: 6\nprefix_projection: true\nencoder_hidden_size: 16\n\
             gradient_checkpointing: true\n"
        }
        "lora_dora_embed" => {
            "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_modules: [embed_tokens, q_proj, v_proj]\n\
             peft_use_dora: true\n"
        }
        "ia3" => "adapter: ia3\n",
        "ia3_4bit" => {
            "adapter: ia3\nload_in_4bit: true\nbnb_4bit_quant_type: nf4\nbnb_4bit_use_double_quant: true\n\
             bnb_4bit_compute_dtype: float32\n"
        }
        "lora_embed" => {
            "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_modules: [embed_tokens, q_proj, v_proj]\n"
        }
        _ => "",
    };
    // Prompt and prefix tuning's virtual tokens open each row: their rows are not packed.
    let packing = !matches!(method, "prompt_tuning" | "prefix_tuning" | "prefix_projection");
    let text = format!(
        "base_model: {}\n{adapter}datasets:\n  - path: {}\n    type: completion\n    ds_type: text\n\
         val_set_size: 0\nsequence_len: 128\nsample_packing: {packing}\nmicro_batch_size: 4\nmax_steps: 6\n\
         learning_rate: 3.0e-3\nlogging_steps: 6\nseed: 3\noutput_dir: {}\n",
        root().join("models/stories260k").display(),
        root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
        dir.display()
    );
    let recipe_path = dir.with_extension("yaml");
    std::fs::write(&recipe_path, text).unwrap();
    let out = Command::cargo_bin("recipe")
        .unwrap()
        .env("OMP_NUM_THREADS", "1")
        .env("RECIPE_LOG", "warn")
        .arg("run")
        .arg(&recipe_path)
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    recipe_path
}

fn input_ids() -> Tensor {
    // Two rows from the tokenizer's range, fixed.
    let ids: Vec<i64> = (0..64).map(|i| (i * 37 + 11) % 500 + 3).collect();
    Tensor::from_slice(&ids).view([2, 32])
}

fn logits_of(dir: &Path) -> Tensor {
    logits_over(dir, None)
}

/// The logits of `dir`'s model, its base quantized as `quantize` says.
fn logits_over(dir: &Path, quantize: Option<recipe::model::llama::Quantize>) -> Tensor {
    let loaded = load_trained(dir, None, Device::Cpu, quantize, Some(Kind::Float)).unwrap();
    let ids = input_ids();
    let positions = Tensor::arange(32, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([2, 32], false);
    tch::no_grad(|| {
        loaded.model.logits(&Inputs { input_ids: &ids, position_ids: &positions, segment_ids: None, varlen: None })
    })
}

fn save_logits(dir: &Path, logits: &Tensor) {
    Tensor::write_safetensors(
        &[("input_ids", input_ids()), ("logits", logits.shallow_clone())],
        dir.join("recipe_logits.safetensors"),
    )
    .unwrap();
}

fn fresh(case: &str) -> PathBuf {
    let dir = check_dir().join(case);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    dir
}

/// `recipe merge RECIPE [ARGS] --output DEST`, which must succeed.
fn merge(recipe_path: &Path, args: &[&str], dest: &Path) {
    let out = Command::cargo_bin("recipe")
        .unwrap()
        .arg("merge")
        .arg(recipe_path)
        .args(args)
        .arg("--output")
        .arg(dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn lora_output_reloads_and_merges_exactly() {
    let lora = fresh("lora");
    let recipe_path = train(&lora, "lora");
    let adapted = logits_of(&lora);
    let base = logits_of(&root().join("models/stories260k"));
    let moved = (&adapted - &base).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "training should have changed the adapter's logits ({moved:e})");
    save_logits(&lora, &adapted);

    let merged = fresh("merged");
    merge(&recipe_path, &[], &merged);
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(merged.join(f).is_file(), "merged folder lacks {f}");
    }
    let merged_logits = logits_of(&merged);
    let diff = (&merged_logits - &adapted).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "merged logits differ from base + adapter by {diff:e}");
    save_logits(&merged, &adapted);

    // save_dtype: bfloat16 merges as peft does over a bf16 base: W in bf16, W + B·A·s in fp32, rounded once.
    let bf16 = fresh("merged-bf16");
    merge(&recipe_path, &["--set", "save_dtype=bfloat16"], &bf16);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bf16.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    let written: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(bf16.join("model.safetensors")).unwrap().into_iter().collect();
    assert!(written.values().all(|t| t.kind() == Kind::BFloat16), "every merged weight is bfloat16");
    let base: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(root().join("models/stories260k/model.safetensors")).unwrap().into_iter().collect();
    let adapter: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(lora.join("adapter_model.safetensors")).unwrap().into_iter().collect();
    let name = "model.layers.0.self_attn.q_proj";
    let (a, b) = (
        &adapter[&format!("base_model.model.{name}.lora_A.weight")],
        &adapter[&format!("base_model.model.{name}.lora_B.weight")],
    );
    let expected = (base[&format!("{name}.weight")].to_kind(Kind::BFloat16).to_kind(Kind::Float) + b.matmul(a) * 2.0)
        .to_kind(Kind::BFloat16);
    assert!(written[&format!("{name}.weight")].equal(&expected), "bf16 merge of {name}");
}

#[test]
fn dora_output_reloads_and_merges_exactly() {
    // DoRA (with dropout, so training takes peft's recomputed-base path): the adapter folder says
    // use_dora and holds a trained magnitude per output row under peft's key; reloaded and merged,
    // it gives the logits the run ended with.
    let dir = fresh("lora_dora");
    let recipe_path = train(&dir, "dora");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["use_dora"], true, "adapter_config.json: use_dora");
    let saved: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("adapter_model.safetensors")).unwrap().into_iter().collect();
    assert_eq!(
        saved.keys().filter(|k| k.ends_with(".lora_magnitude_vector")).count(),
        5 * 7,
        "one magnitude per linear"
    );
    let name = "model.layers.0.self_attn.q_proj";
    let magnitude = &saved[&format!("base_model.model.{name}.lora_magnitude_vector")];
    let base: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(root().join("models/stories260k/model.safetensors")).unwrap().into_iter().collect();
    // The magnitude starts at ||W|| per row (B = 0) and is trained away from it.
    let start = base[&format!("{name}.weight")].to_kind(Kind::Float).norm_scalaropt_dim(2.0, [1i64], false);
    let moved = (magnitude - start).abs().max().double_value(&[]);
    assert!(moved > 1e-4, "the magnitude of {name} did not train ({moved:e})");

    let adapted = logits_of(&dir);
    let plain = logits_of(&root().join("models/stories260k"));
    let moved = (&adapted - &plain).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "training should have changed the adapter's logits ({moved:e})");
    save_logits(&dir, &adapted);

    let merged = fresh("merged_dora");
    merge(&recipe_path, &[], &merged);
    let diff = (&logits_of(&merged) - &adapted).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "merged DoRA logits differ from base + adapter by {diff:e}");
    save_logits(&merged, &adapted);
}

#[test]
fn prompt_tuning_output_reloads_and_is_not_merged() {
    // The adapter folder is peft's PROMPT_TUNING: one `prompt_embeddings` [8, 64]; reloaded, the
    // model's logits cover the 8 virtual positions and the 32 real ones (as peft's do).
    let dir = fresh("prompt_tuning");
    let recipe_path = train(&dir, "prompt_tuning");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "PROMPT_TUNING");
    assert_eq!(config["num_virtual_tokens"], 8);
    assert_eq!(config["token_dim"], 64);
    assert_eq!(config["prompt_tuning_init"], "TEXT");
    let saved: Vec<(String, Tensor)> = Tensor::read_safetensors(dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].0, "prompt_embeddings");
    assert_eq!(saved[0].1.size(), [8, 64]);

    let adapted = logits_of(&dir);
    assert_eq!(adapted.size(), [2, 40, 512], "virtual and real positions");
    let plain = logits_of(&root().join("models/stories260k"));
    let moved = (adapted.narrow(1, 8, 32) - &plain).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "the virtual tokens should change the real positions' logits ({moved:e})");
    save_logits(&dir, &adapted);

    // `recipe generate` on the adapter folder: the virtual tokens go before the prompt.
    let generated = Command::cargo_bin("recipe")
        .unwrap()
        .arg("generate")
        .arg(&dir)
        .args(["--prompt", "ROMEO:", "--max-new-tokens", "8", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let text = String::from_utf8_lossy(&generated.stdout);
    assert!(text.starts_with("ROMEO:") && text.trim().len() > "ROMEO:".len(), "{text}");

    let out = Command::cargo_bin("recipe")
        .unwrap()
        .arg("merge")
        .arg(&recipe_path)
        .arg("--output")
        .arg(fresh("merged_prompt_tuning"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("prompt-tuning adapter") && stderr.contains("cannot be merged"),
        "{stderr}"
    );
}

#[test]
fn prefix_tuning_output_reloads_and_is_not_merged() {
    // peft's PREFIX_TUNING: `prompt_embeddings` [6, 5 layers × 2 × 32] (the 4 key/value heads' width).
    let dir = fresh("prefix_tuning");
    let recipe_path = train(&dir, "prefix_tuning");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "PREFIX_TUNING");
    assert_eq!((config["num_attention_heads"].as_u64(), config["token_dim"].as_u64()), (Some(4), Some(32)));
    let saved: Vec<(String, Tensor)> = Tensor::read_safetensors(dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!((saved[0].0.as_str(), saved[0].1.size()), ("prompt_embeddings", vec![6, 320]));

    let adapted = logits_of(&dir);
    let plain = logits_of(&root().join("models/stories260k"));
    let moved = (&adapted - &plain).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "the prefix should change the logits ({moved:e})");
    save_logits(&dir, &adapted);

    let out = Command::cargo_bin("recipe")
        .unwrap()
        .arg("merge")
        .arg(&recipe_path)
        .arg("--output")
        .arg(fresh("merged_prefix_tuning"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("prefix-tuning adapter") && stderr.contains("cannot be merged"),
        "{stderr}"
    );
}

#[test]
fn prefix_projection_output_is_the_mlp_s_keys_and_values() {
    // Trained through peft's PrefixEncoder MLP (with gradient checkpointing): the adapter holds the
    // MLP's output as peft saves it, the config says prefix_projection; the MLP sits beside it.
    let dir = fresh("prefix_projection");
    train(&dir, "prefix_projection");
    let config = json_of(&dir.join("adapter_config.json"));
    assert_eq!((config["prefix_projection"].as_bool(), config["encoder_hidden_size"].as_u64()), (Some(true), Some(16)));
    let saved = saved_tensors(&dir);
    assert_eq!(saved.len(), 1);
    assert_eq!(saved["prompt_embeddings"].size(), vec![6, 320]);
    let encoder: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("prefix_encoder.safetensors")).unwrap().into_iter().collect();
    let shapes = |k: &str| encoder[&format!("prompt_encoder.default.{k}")].size();
    assert_eq!(
        [shapes("embedding.weight"), shapes("transform.0.weight"), shapes("transform.2.weight")],
        [vec![6, 32], vec![16, 32], vec![320, 16]]
    );
    let adapted = logits_of(&dir);
    let plain = logits_of(&root().join("models/stories260k"));
    let moved = (&adapted - &plain).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "the prefix should change the logits ({moved:e})");
    save_logits(&dir, &adapted);
}

#[test]
fn dora_embedding_output_reloads_and_merges_exactly() {
    let dir = fresh("lora_dora_embed");
    let recipe_path = train(&dir, "lora_dora_embed");
    let config = json_of(&dir.join("adapter_config.json"));
    assert_eq!(config["use_dora"], true);
    let saved = saved_tensors(&dir);
    let magnitude = &saved["base_model.model.model.embed_tokens.lora_magnitude_vector"];
    assert_eq!(magnitude.size(), vec![64], "peft's DoRA embedding magnitude: one per hidden feature");
    let adapted = logits_of(&dir);
    let plain = logits_of(&root().join("models/stories260k"));
    let moved = (&adapted - &plain).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "training should have changed the adapter's logits ({moved:e})");
    save_logits(&dir, &adapted);
    let merged = fresh("merged_dora_embed");
    merge(&recipe_path, &[], &merged);
    let diff = (&logits_of(&merged) - &adapted).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "merged DoRA-embedding logits differ from base + adapter by {diff:e}");
    save_logits(&merged, &adapted);
}

#[test]
fn full_fine_tune_output_is_a_model_folder() {
    let full = fresh("full");
    train(&full, "full");
    for f in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert!(full.join(f).is_file(), "full output lacks {f}");
    }
    let logits = logits_of(&full);
    let base = logits_of(&root().join("models/stories260k"));
    assert!((&logits - &base).abs().max().double_value(&[]) > 1e-3, "full fine-tuning should change the model");
    save_logits(&full, &logits);
}

#[test]
fn quantized_folders_for_the_python_check() {
    for (case, keys) in [
        // fp32 compute, as recipe computes on the CPU (the default, bf16, is for CUDA).
        (
            "quantized4",
            "adapter: qlora\nload_in_4bit: true\nbnb_4bit_use_double_quant: true\nbnb_4bit_compute_dtype: float32\n",
        ),
        ("quantized8", "adapter: lora\nload_in_8bit: true\n"),
    ] {
        let dir = fresh(case);
        let recipe_path = dir.with_extension("yaml");
        let text = format!(
            "base_model: {}\n{keys}datasets:\n  - path: {}\n    type: completion\n    ds_type: text\nmax_steps: 1\n\
             learning_rate: 1.0e-4\noutput_dir: {}\n",
            root().join("models/stories260k").display(),
            root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
            dir.with_extension("out").display()
        );
        std::fs::write(&recipe_path, text).unwrap();
        let out = Command::cargo_bin("recipe")
            .unwrap()
            .arg("quantize")
            .arg(&recipe_path)
            .arg("--output")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let logits = logits_of(&dir);
        let base = logits_of(&root().join("models/stories260k"));
        let moved = (&logits - &base).abs().max().double_value(&[]);
        assert!(moved > 1e-4, "{case}: quantization should change the logits ({moved:e})");
        save_logits(&dir, &logits);
    }
}

#[test]
fn lora_on_the_tied_head_reloads_and_merges_untied() {
    let dir = fresh("lora_head");
    let recipe_path = train(&dir, "lora_head");
    let weights =
        recipe::model::weights::Checkpoint::open_files(&dir, &[dir.join("adapter_model.safetensors")]).unwrap();
    assert!(weights.contains("base_model.model.lm_head.lora_A.weight"));
    let adapted = logits_of(&dir);
    save_logits(&dir, &adapted);
    let merged = dir.with_extension("merged");
    let _ = std::fs::remove_dir_all(&merged);
    merge(&recipe_path, &[], &merged);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["tie_word_embeddings"], false, "a head with its own update is saved untied");
    let diff = (&logits_of(&merged) - &adapted).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "merged logits differ by {diff:e}");
}

#[test]
fn reward_model_folders_for_the_python_check() {
    for (case, adapter) in
        [("reward_lora", "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n"), ("reward_full", "")]
    {
        let dir = fresh(case);
        let recipe_path = dir.with_extension("yaml");
        let text = format!(
            "base_model: {}\n{adapter}reward_model: true\ndatasets:\n  - path: {}\n    type: chat_template.default\n    \
             field_messages: prompt\nsequence_len: 256\nmicro_batch_size: 8\nmax_steps: 4\nlearning_rate: 1.0e-3\n\
             seed: 3\noutput_dir: {}\n",
            root().join("models/stories260k").display(),
            root().join("data/preference/shakespeare-continuations.jsonl").display(),
            dir.display()
        );
        std::fs::write(&recipe_path, text).unwrap();
        let out = Command::cargo_bin("recipe")
            .unwrap()
            .env("OMP_NUM_THREADS", "1")
            .env("RECIPE_LOG", "warn")
            .arg("run")
            .arg(&recipe_path)
            .args(["--device", "cpu"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // Each row's reward, as transformers' …ForSequenceClassification reads it: [B, 1].
        let loaded = load_trained(&dir, None, Device::Cpu, None, Some(Kind::Float)).unwrap();
        let ids = input_ids();
        let rows: Vec<Vec<i64>> = (0..2).map(|r| Vec::<i64>::try_from(ids.get(r)).unwrap()).collect();
        let scores = recipe::exec::score_sequences(&loaded, &rows).unwrap();
        save_logits(&dir, &Tensor::from_slice(&scores).to_kind(Kind::Float).view([2, 1]));
    }
}

fn saved_tensors(dir: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("adapter_model.safetensors")).unwrap().into_iter().collect()
}

fn json_of(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn ia3_output_reloads_and_merges_exactly() {
    // peft's defaults for Llama: k_proj and v_proj scale their output, down_proj its input.
    let dir = fresh("ia3");
    let recipe_path = train(&dir, "ia3");
    let config = json_of(&dir.join("adapter_config.json"));
    assert_eq!(config["peft_type"], "IA3");
    assert_eq!(config["feedforward_modules"], serde_json::json!(["down_proj"]));
    let saved = saved_tensors(&dir);
    assert_eq!(saved.len(), 5 * 3, "one vector per target and layer: {:?}", saved.keys());
    let k = &saved["base_model.model.model.layers.0.self_attn.k_proj.ia3_l"];
    let down = &saved["base_model.model.model.layers.0.mlp.down_proj.ia3_l"];
    assert_eq!((k.size(), down.size()), (vec![32, 1], vec![1, 172]), "peft's shapes: [out, 1] and [1, in]");
    let moved = (down - 1.0).abs().max().double_value(&[]);
    assert!(moved > 1e-4, "the down_proj vector did not train away from ones ({moved:e})");

    let adapted = logits_of(&dir);
    let plain = logits_of(&root().join("models/stories260k"));
    let moved = (&adapted - &plain).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "training should have changed the adapter's logits ({moved:e})");
    save_logits(&dir, &adapted);

    let merged = fresh("merged_ia3");
    merge(&recipe_path, &[], &merged);
    let diff = (&logits_of(&merged) - &adapted).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "merged IA3 logits differ from base + adapter by {diff:e}");
    save_logits(&merged, &adapted);
}

#[test]
fn ia3_on_a_4bit_base_trains_and_merges() {
    use recipe::model::llama::{FourBit, Quantize};
    let dir = fresh("ia3_4bit");
    let recipe_path = train(&dir, "ia3_4bit");
    assert_eq!(saved_tensors(&dir).len(), 5 * 3);
    let nf4 = Quantize::FourBit(FourBit {
        quant_type: recipe::model::nf4::QuantType::Nf4,
        double_quant: true,
        blocksize: 64,
    });
    let adapted = logits_over(&dir, Some(nf4));
    let merged = fresh("merged_ia3_4bit");
    merge(&recipe_path, &[], &merged);
    // The merge dequantizes the base (as peft's merge of a 4-bit layer does) and scales it.
    let diff = (&logits_of(&merged) - &adapted).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "merged IA3 (4-bit base) logits differ from base + adapter by {diff:e}");
}

#[test]
fn embedding_lora_output_reloads_and_merges_exactly() {
    let dir = fresh("lora_embed");
    let recipe_path = train(&dir, "lora_embed");
    let saved = saved_tensors(&dir);
    let (a, b) = (
        &saved["base_model.model.model.embed_tokens.lora_embedding_A"],
        &saved["base_model.model.model.embed_tokens.lora_embedding_B"],
    );
    assert_eq!((a.size(), b.size()), (vec![8, 512], vec![64, 8]), "peft's shapes: A [r, vocab], B [hidden, r]");
    // peft saves the embedding's base with it (save_embedding_layers).
    assert!(saved.contains_key("base_model.model.model.embed_tokens.base_layer.weight"));
    assert!(a.abs().max().double_value(&[]) > 0.0, "A starts at zero and must have trained");

    let adapted = logits_of(&dir);
    let plain = logits_of(&root().join("models/stories260k"));
    let moved = (&adapted - &plain).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "training should have changed the adapter's logits ({moved:e})");
    save_logits(&dir, &adapted);

    // stories260k ties its head to the embedding; the update changes the lookup only, so the merged
    // folder keeps the original head apart.
    let merged = fresh("merged_embed");
    merge(&recipe_path, &[], &merged);
    assert_eq!(json_of(&merged.join("config.json"))["tie_word_embeddings"], false);
    let diff = (&logits_of(&merged) - &adapted).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "merged embedding-LoRA logits differ from base + adapter by {diff:e}");
    save_logits(&merged, &adapted);
}

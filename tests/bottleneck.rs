//! Bottleneck adapters against AdapterHub's `adapters` 1.3.0: for the same base, adapter weights
//! (loaded from the adapter.safetensors adapters itself saved) and batch, the loss, logits and every
//! trainable gradient match the goldens of scripts/reference/bottleneck_goldens.py (logits within
//! 1e-4, loss 1e-5, gradients 1e-4 relative), houlsby and pfeiffer, on stories260k and on random
//! Llama / Mistral / Qwen2 / Qwen3 configs, with and without gradient checkpointing, and over an NF4
//! base against adapters over bitsandbytes; the plan's
//! trainable counts equal adapters'. End to end with the real binary: short runs of stories260k
//! write adapters' format, reload with the run's logits, generate, and are refused by `recipe merge`;
//! the folders, recipe's logits and greedy text are left in CARGO_TARGET_TMPDIR/bottleneck-check for
//! scripts/reference/check_bottleneck_outputs.py, which loads them with adapters.
#![cfg(feature = "exec")]

mod common;

use assert_cmd::cargo::CommandCargoExt;
use recipe::config::Config;
use recipe::config::adapter::{AdapterKind, BottleneckArchitecture};
use recipe::exec::load_trained;
use recipe::model::llama::{CausalLm, FourBit, Inputs, LoadOptions, Quantize, Trainable};
use recipe::model::weights::Checkpoint;
use recipe::model::{adapter, bottleneck};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A golden case's adapter folder over its base (the folder as adapters saved it).
fn load_folder(dir: &Path, trainable: Option<Trainable>) -> CausalLm {
    let cfg = adapter::read_config(dir).unwrap();
    let base = root().join(&cfg.base_model);
    let arch =
        recipe::plan::arch::Architecture::from_config_json(&std::fs::read_to_string(base.join("config.json")).unwrap())
            .unwrap();
    let with_adapter = trainable.is_none();
    // The goldens' BitsAndBytesConfig for an `_nf4` case: NF4, double quant, blocksize 64, fp32 compute.
    let nf4 = FourBit { quant_type: recipe::model::nf4::QuantType::Nf4, double_quant: true, blocksize: 64 };
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: trainable.unwrap_or(cfg.trainable),
        quantize: dir.to_string_lossy().ends_with("_nf4").then_some(Quantize::FourBit(nf4)),
        score_head: false,
    };
    let model = CausalLm::load(&arch, &Checkpoint::open(&base).unwrap(), &opts).unwrap();
    if with_adapter {
        let weights = Checkpoint::open_files(dir, &[bottleneck::weights_path(dir)]).unwrap();
        adapter::load_trainable(&model, &weights).unwrap();
    }
    model
}

fn golden_dir(case: &str) -> PathBuf {
    root().join("tests/golden/bottleneck").join(case)
}

fn goldens(case: &str) -> (HashMap<String, Tensor>, Tensor) {
    let g: HashMap<String, Tensor> =
        Tensor::read_safetensors(golden_dir(case).join("expected.safetensors")).unwrap().into_iter().collect();
    let (b, t) = (g["input_ids"].size()[0], g["input_ids"].size()[1]);
    let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
    (g, positions)
}

fn check(case: &str, checkpointing: bool) {
    let model = load_folder(&golden_dir(case), None);
    let (g, positions) = goldens(case);
    common::assert_matches_parity_golden(case, &model, &g, &positions, checkpointing);
}

#[test]
fn houlsby_logits_and_gradients_match_adapters() {
    check("stories260k_houlsby", false);
    check("llama_untied_houlsby", false);
    check("qwen2_houlsby", false);
}

#[test]
fn pfeiffer_logits_and_gradients_match_adapters() {
    check("stories260k_pfeiffer", false);
    check("mistral_pfeiffer", false);
    check("qwen3_pfeiffer", false);
}

#[test]
fn pfeiffer_over_a_4bit_base_matches_adapters_over_bitsandbytes() {
    check("stories260k_pfeiffer_nf4", false);
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    check("stories260k_houlsby", true);
    check("qwen3_pfeiffer", true);
}

#[test]
fn switching_adapters_off_gives_the_base_model() {
    for case in ["stories260k_houlsby", "qwen3_pfeiffer"] {
        let model = load_folder(&golden_dir(case), None);
        let base = load_folder(&golden_dir(case), Some(Trainable::Nothing));
        let (g, positions) = goldens(case);
        let inputs = Inputs { input_ids: &g["input_ids"], position_ids: &positions, segment_ids: None, varlen: None };
        let off = tch::no_grad(|| model.without_adapters(|| model.logits(&inputs)));
        let plain = tch::no_grad(|| base.logits(&inputs));
        assert!(off.equal(&plain), "{case}: adapters off differs from the base");
        let on = tch::no_grad(|| model.logits(&inputs));
        assert!((on - plain).abs().max().double_value(&[]) > 1e-3, "{case}: the adapter changes nothing");
    }
}

#[test]
fn bottleneck_adapters_switch_over_one_base() {
    // Multi-adapter serving: a houlsby and a pfeiffer adapter over one stories260k base.
    use recipe::model::serving::Adapters;
    let (g, positions) = goldens("stories260k_houlsby");
    let inputs = Inputs { input_ids: &g["input_ids"], position_ids: &positions, segment_ids: None, varlen: None };
    let logits = |m: &CausalLm| tch::no_grad(|| m.logits(&inputs));
    let want_h = logits(&load_folder(&golden_dir("stories260k_houlsby"), None));
    let want_p = logits(&load_folder(&golden_dir("stories260k_pfeiffer"), None));
    let base = load_folder(&golden_dir("stories260k_houlsby"), Some(Trainable::Nothing));
    let plain = logits(&base);
    let mut adapters = Adapters::new(base, "base");
    adapters.attach("h", &golden_dir("stories260k_houlsby")).unwrap();
    adapters.attach("p", &golden_dir("stories260k_pfeiffer")).unwrap();
    for (name, want) in [("h", &want_h), ("p", &want_p), ("h", &want_h)] {
        adapters.set_adapter(Some(name)).unwrap();
        assert!(logits(&adapters.model).equal(want), "{name}: switched-in logits differ from the folder alone");
    }
    adapters.set_adapter(None).unwrap();
    assert!(logits(&adapters.model).equal(&plain), "the base alone");
}

#[test]
fn trainable_counts_equal_adapters() {
    let path = root().join("tests/golden/bottleneck_trainable.json");
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    let golden_cases = ["stories260k_houlsby", "stories260k_pfeiffer", "qwen3_pfeiffer"];
    let mut rows: Vec<(String, recipe::plan::arch::Architecture, serde_json::Value)> = cases
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["model"].as_str().unwrap();
            let arch = recipe::plan::model::builtin_architecture(name).unwrap();
            (name.to_string(), arch, c.clone())
        })
        .collect();
    for case in golden_cases {
        let c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(golden_dir(case).join("case.json")).unwrap()).unwrap();
        let base = root().join(c["base_model"].as_str().unwrap());
        let arch = recipe::plan::model::local_architecture(&base).unwrap();
        let row = serde_json::json!({"adapter_config": c["adapter_config"], "config": c["config"],
                                     "trainable": c["trainable_params"]});
        rows.push((case.to_string(), arch, row));
    }
    for (name, arch, c) in rows {
        let mut config = Config::default();
        config.adapter.adapter = Some(AdapterKind::Bottleneck);
        config.adapter.adapter_config = Some(match c["adapter_config"].as_str().unwrap() {
            "houlsby" => BottleneckArchitecture::Houlsby,
            _ => BottleneckArchitecture::Pfeiffer,
        });
        config.adapter.adapter_reduction_factor = c["config"]["reduction_factor"].as_f64();
        config.adapter.adapter_non_linearity = c["config"]["non_linearity"].as_str().map(str::to_string);
        let plan = recipe::plan::adapter::plan(&config, &arch).unwrap();
        assert_eq!(plan.trainable_parameters, c["trainable"].as_u64().unwrap(), "{name}: trainable");
        if let Some(all) = c["all"].as_u64() {
            assert_eq!(plan.total_parameters, all, "{name}: all params");
        }
        eprintln!("{name} {}: {} trainable", c["adapter_config"], plan.trainable_parameters);
        checked += 1;
    }
    assert_eq!(checked, 8);
}

// ---- end to end with the binary ----

fn check_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bottleneck-check")
}

fn fresh(case: &str) -> PathBuf {
    let dir = check_dir().join(case);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    dir
}

fn train(dir: &Path, adapter: &str) -> PathBuf {
    let text = format!(
        "base_model: {}\n{adapter}datasets:\n  - path: {}\n    type: completion\n    ds_type: text\n\
         val_set_size: 0\nsequence_len: 128\nsample_packing: true\nmicro_batch_size: 4\nmax_steps: 6\n\
         learning_rate: 1.0e-3\nlogging_steps: 6\nseed: 3\noutput_dir: {}\n",
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
    let ids: Vec<i64> = (0..64).map(|i| (i * 37 + 11) % 500 + 3).collect();
    Tensor::from_slice(&ids).view([2, 32])
}

fn logits_of(dir: &Path) -> Tensor {
    let loaded = load_trained(dir, None, Device::Cpu, None, Some(Kind::Float)).unwrap();
    let ids = input_ids();
    let positions = Tensor::arange(32, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([2, 32], false);
    tch::no_grad(|| {
        loaded.model.logits(&Inputs { input_ids: &ids, position_ids: &positions, segment_ids: None, varlen: None })
    })
}

const PROMPT: &str = "ROMEO:";
const NEW_TOKENS: &str = "12";

fn end_to_end(case: &str, adapter_keys: &str, mh_adapter: bool, tensors: usize) {
    let dir = fresh(case);
    let recipe_path = train(&dir, adapter_keys);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["name"], "bottleneck");
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["config"]["mh_adapter"], mh_adapter);
    assert!(!dir.join("adapter_model.safetensors").exists(), "adapters' file name only");
    let saved: Vec<(String, Tensor)> = Tensor::read_safetensors(dir.join("adapter.safetensors")).unwrap();
    assert_eq!(saved.len(), tensors);
    assert!(saved.iter().any(|(n, _)| n == "model.layers.4.output_adapters.adapters.bottleneck.adapter_up.bias"));

    let adapted = logits_of(&dir);
    let plain = logits_of(&root().join("models/stories260k"));
    let moved = (&adapted - &plain).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "training should have changed the logits ({moved:e})");
    Tensor::write_safetensors(
        &[("input_ids", input_ids()), ("logits", adapted.shallow_clone())],
        dir.join("recipe_logits.safetensors"),
    )
    .unwrap();

    // Greedy text from the adapter folder, for the adapters-side check.
    let generated = Command::cargo_bin("recipe")
        .unwrap()
        .arg("generate")
        .arg(&dir)
        .args(["--prompt", PROMPT, "--max-new-tokens", NEW_TOKENS, "--temperature", "0", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let text = String::from_utf8_lossy(&generated.stdout).trim_end_matches('\n').to_string();
    assert!(text.starts_with(PROMPT) && text.len() > PROMPT.len(), "{text}");
    let record =
        serde_json::json!({"prompt": PROMPT, "max_new_tokens": NEW_TOKENS.parse::<u32>().unwrap(), "text": text});
    std::fs::write(dir.join("recipe_generate.json"), serde_json::to_string_pretty(&record).unwrap()).unwrap();

    let out = Command::cargo_bin("recipe")
        .unwrap()
        .arg("merge")
        .arg(&recipe_path)
        .arg("--output")
        .arg(dir.with_extension("merged"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bottleneck adapter must not merge");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bottleneck adapter") && err.contains("cannot be merged"), "{err}");
}

#[test]
fn houlsby_run_writes_adapters_format_generates_and_refuses_merge() {
    // 5 layers × 2 adapters × 4 tensors.
    end_to_end("houlsby", "adapter: bottleneck\nadapter_config: houlsby\n", true, 40);
}

#[test]
fn pfeiffer_run_writes_adapters_format_generates_and_refuses_merge() {
    end_to_end("pfeiffer", "adapter: bottleneck\nadapter_config: pfeiffer\nadapter_reduction_factor: 8\n", false, 20);
}

#[test]
fn bottleneck_trains_over_a_4bit_base() {
    // The adapters sit beside the layers, so a quantized base changes nothing about them.
    let dir = fresh("pfeiffer_nf4");
    train(&dir, "adapter: bottleneck\nload_in_4bit: true\nbnb_4bit_quant_type: nf4\nbnb_4bit_compute_dtype: float32\n");
    let saved: Vec<(String, Tensor)> = Tensor::read_safetensors(dir.join("adapter.safetensors")).unwrap();
    assert_eq!(saved.len(), 20);
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"loss\""), "{metrics}");
}

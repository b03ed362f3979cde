//! Every recipe key acts or is refused: each top-level key of the schema is read somewhere past the
//! configuration (plan, data, executor, model, tracking, CLI), or is on the explicit list below of keys
//! that only the recipe language, `validate` or `plan` use, with the reason. A new key with no reader
//! fails this test until it gets one or a reason here.

use std::path::{Path, PathBuf};

/// Keys with no reader past the configuration, and why that is right.
const NOT_READ_PAST_CONFIG: &[(&str, &str)] = &[
    ("recipe_version", "recipe language: the loader checks the version"),
    ("preset", "recipe language: the loader merges the preset"),
    ("extends", "recipe language: the loader merges the extended recipe"),
    ("num_labels", "must be 1, and only with reward_model (rules.rs): the score head has one output"),
    ("tokenizer_type", "validated class name; the tokenizer itself is read from tokenizer.json"),
    ("trust_remote_code", "must be false (schema const): a recipe never runs code"),
    ("lora_fan_in_fan_out", "must be false (schema const): Llama-family weights are (out, in)"),
    ("fsdp_version", "checked against fsdp_config's version (rules.rs); FSDP 1 and 2 run the same sharding"),
    ("attn_implementation", "read by KernelConfig::attention_request (config/kernels.rs), which the plan calls"),
    ("flash_attention", "read by KernelConfig::attention_request (config/kernels.rs), which the plan calls"),
    ("sdp_attention", "read by KernelConfig::attention_request (config/kernels.rs), which the plan calls"),
    ("xformers_attention", "read by KernelConfig::attention_request (config/kernels.rs), which the plan calls"),
    ("flex_attention", "read by KernelConfig::attention_request (config/kernels.rs), which the plan calls"),
    ("eager_attention", "read by KernelConfig::attention_request (config/kernels.rs), which the plan calls"),
    ("ddp_broadcast_buffers", "Llama-family models have no buffers to broadcast"),
    ("use_tensorboard", "read by TrackingConfig's switches (config/tracking.rs), which the plan calls"),
    ("use_mlflow", "read by TrackingConfig's switches (config/tracking.rs), which the plan calls"),
    ("use_wandb", "read by TrackingConfig's switches (config/tracking.rs), which the plan calls"),
    ("use_otel_metrics", "read by TrackingConfig's switches (config/tracking.rs), which the plan calls"),
    ("wandb_mode", "read by TrackingConfig's switches; online is refused by name"),
    ("wandb_log_model", "only false / absent validate: model artifacts are refused by name"),
    ("model_config", "read by ModelConfig::config_overrides (config/model.rs), which the plan calls"),
    ("overrides_of_model_config", "read by ModelConfig::config_overrides (config/model.rs), which the plan calls"),
    ("streaming", "true only beside pretraining_dataset (rules.rs), which is always streamed; `datasets` never are"),
];

fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_key_has_a_reader_or_a_reason() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut code = String::new();
    for dir in ["plan", "data", "exec", "model", "track", "cli"] {
        sources(&root.join(dir), &mut code);
    }
    code.push_str(&std::fs::read_to_string(root.join("launch.rs")).unwrap());
    let keys = recipe::config::schema::top_level_keys();
    assert!(keys.len() > 100, "the schema's keys: {}", keys.len());
    let mut unread = Vec::new();
    for key in &keys {
        let pattern = regex::Regex::new(&format!(r"\.{}\b", regex::escape(key))).unwrap();
        let read = pattern.is_match(&code);
        let excused = NOT_READ_PAST_CONFIG.iter().any(|(k, _)| k == key);
        assert!(!(read && excused), "`{key}` is read past the configuration now: take it off NOT_READ_PAST_CONFIG");
        if !read && !excused {
            unread.push(*key);
        }
    }
    assert!(
        unread.is_empty(),
        "keys no part of recipe reads (give them a reader, refuse them, or a reason): {unread:?}"
    );
    for (key, _) in NOT_READ_PAST_CONFIG {
        assert!(keys.contains(key), "`{key}` is no longer a key: take it off NOT_READ_PAST_CONFIG");
    }
}

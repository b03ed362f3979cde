//! Parameter counts against transformers and trainable counts against peft. The goldens come from
//! scripts/reference/param_counts.py (transformers + peft on the meta device; versions inside): LoRA,
//! DoRA, prompt and prefix tuning.

use recipe::config::Config;
use recipe::config::adapter::{AdapterKind, ModuleList};
use recipe::plan::{adapter, arch::Architecture, model};
use serde_json::Value;

fn golden(name: &str) -> Value {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn architecture(name: &str) -> Architecture {
    if name == "stories260k" {
        model::local_architecture(std::path::Path::new("models/stories260k")).unwrap()
    } else {
        model::builtin_architecture(name).unwrap_or_else(|| panic!("{name} is not in the built-in table"))
    }
}

#[test]
fn parameter_counts_equal_transformers_for_every_builtin_model() {
    let golden = golden("param_counts.json");
    let table = golden.as_object().unwrap();
    assert_eq!(table.len(), model::BUILTIN_MODELS.len() + 1, "every built-in model has a reference count");
    for (name, want) in table {
        let counts = architecture(name).parameter_counts();
        assert_eq!(counts.total, want["total"].as_u64().unwrap(), "{name}: total");
        assert_eq!(counts.embed_tokens, want["embed_tokens"].as_u64().unwrap(), "{name}: embed_tokens");
        assert_eq!(counts.lm_head, want["lm_head"].as_u64().unwrap(), "{name}: lm_head");
        assert_eq!(counts.per_layer, want["per_layer"].as_u64().unwrap(), "{name}: per layer");
    }
}

#[test]
fn trainable_counts_equal_peft() {
    let cases = golden("peft_trainable.json");
    for case in cases.as_array().unwrap() {
        let name = case["model"].as_str().unwrap();
        let arch = architecture(name);
        let mut config = Config::default();
        config.adapter.adapter = Some(AdapterKind::Lora);
        config.adapter.lora_r = case["r"].as_u64().unwrap() as u32;
        config.adapter.lora_alpha = Some(case["lora_alpha"].as_u64().unwrap() as u32);
        let targets = case["target_modules"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string());
        config.adapter.lora_target_modules = Some(ModuleList::Many(targets.collect()));
        config.adapter.peft_use_dora = case["use_dora"].as_bool().unwrap();
        if let Some(save) = case["modules_to_save"].as_array() {
            config.adapter.lora_modules_to_save = save.iter().map(|m| m.as_str().unwrap().to_string()).collect();
        }
        let plan = adapter::plan(&config, &arch).unwrap();
        let dora = if config.adapter.peft_use_dora { " (DoRA)" } else { "" };
        assert_eq!(plan.trainable_parameters, case["trainable"].as_u64().unwrap(), "{name}{dora}: trainable");
        assert_eq!(plan.total_parameters, case["all"].as_u64().unwrap(), "{name}{dora}: all params");
    }
}

#[test]
fn prompt_and_prefix_tuning_trainable_counts_equal_peft() {
    let cases = golden("peft_prompt_trainable.json");
    for case in cases.as_array().unwrap() {
        let name = case["model"].as_str().unwrap();
        let mut config = Config::default();
        config.adapter.adapter = Some(match case["method"].as_str().unwrap() {
            "prompt_tuning" => AdapterKind::PromptTuning,
            "prefix_tuning" => AdapterKind::PrefixTuning,
            other => panic!("method {other}"),
        });
        config.adapter.num_virtual_tokens = Some(case["num_virtual_tokens"].as_u64().unwrap() as u32);
        // Prefix tuning through peft's PrefixEncoder MLP, at its default or a given hidden size.
        config.adapter.prefix_projection = case["prefix_projection"].as_bool();
        config.adapter.encoder_hidden_size = case["encoder_hidden_size"].as_u64().map(|e| e as u32);
        let plan = adapter::plan(&config, &architecture(name)).unwrap();
        assert_eq!(
            plan.trainable_parameters,
            case["trainable"].as_u64().unwrap(),
            "{name} {}: trainable",
            case["method"]
        );
        assert_eq!(plan.total_parameters, case["all"].as_u64().unwrap(), "{name} {}: all params", case["method"]);
    }
}

#[test]
fn ia3_trainable_counts_and_default_modules_equal_peft() {
    let cases = golden("peft_ia3_trainable.json");
    let names = |v: &Value| -> Option<Vec<String>> {
        v.as_array().map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
    };
    for case in cases.as_array().unwrap() {
        let name = case["model"].as_str().unwrap();
        let arch = architecture(name);
        let mut config = Config::default();
        config.adapter.adapter = Some(AdapterKind::Ia3);
        config.adapter.ia3_target_modules = names(&case["target_modules"]).map(ModuleList::Many);
        config.adapter.ia3_feedforward_modules = names(&case["feedforward_modules"]).map(ModuleList::Many);
        let plan = adapter::plan(&config, &arch).unwrap();
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        // With no modules named, peft's defaults for the architecture.
        assert_eq!(sorted(plan.target_modules.clone()), names(&case["resolved_target_modules"]).unwrap(), "{name}");
        assert_eq!(
            sorted(plan.feedforward_modules.clone()),
            names(&case["resolved_feedforward_modules"]).unwrap(),
            "{name}: feedforward modules"
        );
        assert_eq!(plan.trainable_parameters, case["trainable"].as_u64().unwrap(), "{name} (IA3): trainable");
        assert_eq!(plan.total_parameters, case["all"].as_u64().unwrap(), "{name} (IA3): all params");
    }
}

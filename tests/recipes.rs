//! Every recipe in recipes/ (recursively) starts with the schema modeline, validates without
//! errors, and resolves to the snapshotted settings (the `--show-settings` of ruff, per recipe).
//! Axolotl's own example configs validate or fail only with `unsupported-*` rules; Axolotl's
//! kernel requests and FSDP2 settings are accepted and the plan says what recipe does for them.

mod common;

#[test]
fn every_recipe_validates_and_its_resolved_settings_are_snapshotted() {
    let files = common::recipe_files("recipes");
    assert!(files.len() >= 7, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let depth = path.components().count() - 2;
        let modeline = format!("# yaml-language-server: $schema={}schema/recipe.schema.json", "../".repeat(depth + 1));
        assert_eq!(text.lines().next(), Some(modeline.as_str()), "{} must start with the modeline", path.display());
        let loaded = recipe::recipe::load(&path, &[]);
        assert!(!loaded.has_errors(), "{}:\n{}", path.display(), common::rendered(&loaded));
        let name = common::snapshot_name(&path, "recipes/");
        insta::assert_snapshot!(format!("{name}__diagnostics"), common::rendered(&loaded));
        insta::assert_json_snapshot!(format!("{name}__settings"), loaded.config.unwrap());
    }
}

#[test]
fn axolotl_examples_validate_or_fail_only_with_named_unsupported_features() {
    for path in common::recipe_files("tests/fixtures/axolotl") {
        let loaded = recipe::recipe::load(&path, &[]);
        for d in loaded.diagnostics.iter().filter(|d| d.is_error()) {
            assert!(d.rule.starts_with("unsupported-"), "{}: {}", path.display(), common::rendered(&loaded));
        }
        let name = common::snapshot_name(&path, "tests/fixtures/");
        insta::assert_snapshot!(format!("{name}__diagnostics"), common::rendered(&loaded));
    }
}

fn load_text(dir: &std::path::Path, text: &str) -> recipe::recipe::Loaded {
    let path = dir.join("r.yaml");
    std::fs::write(&path, text).unwrap();
    recipe::recipe::load(&path, &[])
}

fn base(extra: &str) -> String {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    format!(
        "base_model: {}\nadapter: lora\nlora_target_linear: true\ndatasets:\n  - path: {}\n    type: completion\n\
         learning_rate: 1.0e-3\nmax_steps: 1\noutput_dir: out\n{extra}",
        root.join("models/stories260k").display(),
        root.join("data/shakespeare/tinyshakespeare-excerpt.txt").display()
    )
}

#[test]
fn kernel_requests_are_accepted_and_the_plan_says_what_recipe_runs() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load_text(
        dir.path(),
        &base(
            "plugins:\n  - axolotl.integrations.liger.LigerPlugin\n  - axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin\n\
             liger_rope: true\nliger_rms_norm: true\nliger_glu_activation: true\nliger_fused_linear_cross_entropy: true\n\
             attn_implementation: flash_attention_2\ngradient_checkpointing: true\n\
             gradient_checkpointing_kwargs:\n  use_reentrant: false\nremove_unused_columns: false\ntorch_compile: auto\n\
             lora_mlp_kernel: true\nlora_qkv_kernel: true\nlora_o_kernel: false\n\
             fused_attn_kernel: true\ntorch_compile_mode: max-autotune\n\
             flex_attn_compile_kwargs:\n  dynamic: false\n  mode: max-autotune-no-cudagraphs\n",
        ),
    );
    assert!(!loaded.has_errors(), "{}", common::rendered(&loaded));
    assert!(!rules(&loaded, false).contains(&"compile-mode-without-compile"), "{}", common::rendered(&loaded));
    let plan = recipe::plan::compile(&loaded, Default::default()).unwrap();
    let text = recipe::plan::render_text(&plan);
    for request in [
        "attn_implementation: flash_attention_2 → libtorch's scaled_dot_product_attention",
        "gradient_checkpointing_kwargs: use_reentrant false → ",
        "remove_unused_columns: false → ",
        "plugins: axolotl.integrations.liger.LigerPlugin → ",
        "plugins: axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin → ",
        "liger_rope: true → rotary embeddings with libtorch ops",
        "liger_rms_norm: true → RMSNorm",
        "liger_glu_activation: true → SwiGLU",
        "liger_fused_linear_cross_entropy: true → recipe's head and cross-entropy",
        "cut_cross_entropy: true → recipe's head and cross-entropy",
        "torch_compile: \"auto\" → ",
        "lora_mlp_kernel: true → recipe's LoRA layers for the gate/up/down projections and their SwiGLU",
        "lora_qkv_kernel: true → recipe's LoRA layers for the q/k/v projections",
        "lora_o_kernel: false → recipe's own LoRA layers, as asked",
        "fused_attn_kernel: true → the q/k RMSNorm (in the families that have one) and the rotary embedding",
        "torch_compile_mode: max-autotune → no compilation",
        "flex_attn_compile_kwargs: dynamic false, mode max-autotune-no-cudagraphs → no flex_attention to compile",
    ] {
        assert!(text.contains(request), "{request:?} not in the plan:\n{text}");
    }
    // Without LoRA layers the plan says there is nothing to replace.
    let full = load_text(
        dir.path(),
        &base("lora_mlp_kernel: true\n").replace("adapter: lora\nlora_target_linear: true\n", ""),
    );
    let text = recipe::plan::render_text(&recipe::plan::compile(&full, Default::default()).unwrap());
    assert!(text.contains("lora_mlp_kernel: true → no LoRA layers in this recipe: nothing to replace"), "{text}");
    // xformers' fused MLP: a full fine-tune's request the plan answers; beside LoRA refused, as Axolotl does.
    let fused = base("flash_attn_fuse_mlp: true\n").replace("adapter: lora\nlora_target_linear: true\n", "");
    let fused = load_text(dir.path(), &fused);
    let text = recipe::plan::render_text(&recipe::plan::compile(&fused, Default::default()).unwrap());
    assert!(
        text.contains("flash_attn_fuse_mlp: true → the feed-forward block's gate/up projections and SwiGLU"),
        "{text}"
    );
    let with_lora = load_text(dir.path(), &base("flash_attn_fuse_mlp: true\n"));
    assert_eq!(rules(&with_lora, true), ["fused-mlp-with-lora"], "{}", common::rendered(&with_lora));
    // A compile mode without compiling: Axolotl does not read it; said, as a warning.
    let mode = load_text(dir.path(), &base("torch_compile_mode: reduce-overhead\n"));
    assert!(rules(&mode, false).contains(&"compile-mode-without-compile"), "{}", common::rendered(&mode));
    let unknown = load_text(dir.path(), &base("flex_attn_compile_kwargs:\n  backend: eager\n"));
    assert!(unknown.has_errors(), "an unknown compile argument is an error");
    // Another algorithm than the one named: said, as a warning.
    let eager = load_text(dir.path(), &base("eager_attention: true\n"));
    let warning = eager.diagnostics.iter().find(|d| d.rule == "attention-kernel").expect("a warning");
    assert!(!warning.is_error() && warning.message.contains("eager"), "{}", warning.message);
    // Plugins that change the training, and kernels from the hub (code), are refused by name.
    let refused = load_text(dir.path(), &base("plugins: [axolotl.integrations.diffusion.DiffusionPlugin]\n"));
    let rules: Vec<&str> = refused.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.rule).collect();
    assert_eq!(rules, ["unsupported-axolotl-value"], "{}", common::rendered(&refused));
    let hub = load_text(dir.path(), &base("attn_implementation: kernels-community/vllm-flash-attn3\n"));
    let rules: Vec<&str> = hub.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.rule).collect();
    assert_eq!(rules, ["unsupported-remote-code"], "{}", common::rendered(&hub));
    let remote = load_text(dir.path(), &base("trust_remote_code: true\n"));
    let rules: Vec<&str> = remote.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.rule).collect();
    assert_eq!(rules, ["unsupported-remote-code"], "{}", common::rendered(&remote));
}

#[test]
fn fsdp_config_alone_asks_for_sharding_in_either_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let fsdp2 = concat!(
        "fsdp_version: 2\nfsdp_config:\n  offload_params: false\n  state_dict_type: FULL_STATE_DICT\n",
        "  auto_wrap_policy: TRANSFORMER_BASED_WRAP\n  transformer_layer_cls_to_wrap: LlamaDecoderLayer\n",
        "  reshard_after_forward: true\n  activation_checkpointing: true\n"
    );
    let fsdp1 = concat!(
        "fsdp:\nfsdp_config:\n  fsdp_offload_params: true\n  fsdp_sharding_strategy: SHARD_GRAD_OP\n",
        "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n"
    );
    for (extra, expected) in [(fsdp2, "[full_shard, auto_wrap]"), (fsdp1, "[shard_grad_op, offload, auto_wrap]")] {
        let loaded = load_text(dir.path(), &base(extra));
        assert!(!loaded.has_errors(), "{}", common::rendered(&loaded));
        // Offload is built: no warning; the plan says what lives in host memory.
        let warned = loaded.diagnostics.iter().any(|d| d.rule == "sharding-setting-not-built");
        assert!(!warned, "{}", common::rendered(&loaded));
        let options = recipe::plan::PlanOptions { world_size: 2, ..Default::default() };
        let plan = recipe::plan::compile(&loaded, options).unwrap();
        let text = recipe::plan::render_text(&plan);
        assert!(text.contains(&format!("fsdp: {expected}: ")), "{text}");
        assert_eq!(plan.layout.offload.any(), expected.contains("offload"), "{text}");
        // shard_grad_op keeps the frozen weights replicated on the device; the trainable chunks go.
        assert!(!plan.layout.offload.frozen);
    }
    let twice = load_text(dir.path(), &base("fsdp_config:\n  fsdp_offload_params: true\n  offload_params: true\n"));
    assert!(twice.diagnostics.iter().any(|d| d.rule == "fsdp-config-twice"), "{}", common::rendered(&twice));
    let versions = load_text(dir.path(), &base("fsdp_version: 2\nfsdp_config:\n  fsdp_version: 1\n"));
    assert!(versions.diagnostics.iter().any(|d| d.rule == "fsdp-version-disagrees"), "{}", common::rendered(&versions));
}

/// The rules of the errors (and warnings) a recipe gets, in order.
fn rules(loaded: &recipe::recipe::Loaded, errors: bool) -> Vec<&'static str> {
    loaded.diagnostics.iter().filter(|d| d.is_error() == errors).map(|d| d.rule).collect()
}

#[test]
fn axolotl_spellings_are_read_as_axolotl_reads_them_or_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let full = base("").replace("adapter: lora\nlora_target_linear: true\n", "");
    // LoRA keys left in a full fine-tune (Axolotl ignores them): a warning.
    let leftover = load_text(dir.path(), &format!("{full}lora_r: 8\n"));
    assert!(rules(&leftover, true).is_empty(), "{}", common::rendered(&leftover));
    assert!(rules(&leftover, false).contains(&"lora-without-adapter"), "{}", common::rendered(&leftover));
    // ...but an adapter to start from cannot be left unused.
    let start = load_text(dir.path(), &format!("{full}lora_model_dir: {}\n", dir.path().display()));
    assert_eq!(rules(&start, true), ["lora-without-adapter"], "{}", common::rendered(&start));
    // evals_per_epoch: 0 is unset, as Axolotl reads it.
    let zero = load_text(dir.path(), &base("evals_per_epoch: 0\nsaves_per_epoch: 0\n"));
    assert!(rules(&zero, true).is_empty(), "{}", common::rendered(&zero));
    let plan = recipe::plan::compile(&zero, Default::default()).unwrap();
    assert!(plan.training.eval.is_none() && plan.training.save.is_none());
    // save_strategy as transformers reads it; cosine_constant_lr_ratio: 0 is Axolotl's "off".
    for (extra, save) in [
        ("save_strategy: epoch\ncosine_constant_lr_ratio: 0\n", Some("PerEpoch(1)")),
        ("save_strategy: no\n", None),
        ("save_strategy: steps\nsave_steps: 5\n", Some("Steps(5)")),
    ] {
        let loaded = load_text(dir.path(), &base(extra));
        assert!(rules(&loaded, true).is_empty(), "{extra}: {}", common::rendered(&loaded));
        let plan = recipe::plan::compile(&loaded, Default::default()).unwrap();
        assert_eq!(plan.training.save.map(|e| format!("{e:?}")).as_deref(), save, "{extra}");
    }
    for (extra, rule) in [
        ("save_strategy: steps\n", "save-strategy-mismatch"),
        ("save_strategy: no\nsave_steps: 5\n", "save-strategy-mismatch"),
        ("save_strategy: best\n", "unsupported-axolotl-value"),
        ("gradient_checkpointing: offload_disk\n", "unsupported-axolotl-value"),
        ("gradient_checkpointing: true\nactivation_offloading: disk\n", "unsupported-axolotl-value"),
        ("activation_offloading: true\n", "activation-offloading-without-checkpointing"),
        ("gradient_checkpointing: offload\nactivation_offloading: false\n", "activation-offloading-disagrees"),
        ("model_type: Gemma3ForConditionalGeneration\n", "unsupported-architecture"),
        ("optimizer: rmsprop\n", "unsupported-axolotl-value"),
        (
            "optimizer: lion_8bit\nfsdp_version: 2\nfsdp_config:\n  reshard_after_forward: true\n",
            "unsupported-optimizer-sharded",
        ),
        (
            "optimizer: muon\nfsdp_version: 2\nfsdp_config:\n  reshard_after_forward: true\n",
            "unsupported-optimizer-sharded",
        ),
        (
            "optimizer: adafactor\nfsdp_version: 2\nfsdp_config:\n  reshard_after_forward: true\n",
            "unsupported-optimizer-sharded",
        ),
        ("cosine_constant_lr_ratio: 0.8\n", "cosine-constant-without-floor"),
        (
            "cosine_constant_lr_ratio: 0.8\ncosine_min_lr_ratio: 0.1\nlr_scheduler: linear\n",
            "cosine-constant-without-floor",
        ),
        ("optimizer: ao_adamw_fp8\n", "unsupported-axolotl-value"),
        // The LLM Compressor plugin's block, and Axolotl's streamed SFT data with its buffer size:
        // each refused by name once.
        ("llmcompressor:\n  save_compressed: true\n", "unsupported-axolotl-key"),
        ("streaming: true\nstreaming_multipack_buffer_size: 100\n", "unsupported-streaming-datasets"),
    ] {
        let loaded = load_text(dir.path(), &base(extra));
        assert_eq!(rules(&loaded, true), [rule], "{extra}: {}", common::rendered(&loaded));
    }
    // torchao's low-bit AdamW under transformers' names (exec/optim_torchao.rs).
    for (name, bits) in [("adamw_torch_8bit", 8u8), ("adamw_torch_4bit", 4)] {
        let loaded = load_text(dir.path(), &base(&format!("optimizer: {name}\n")));
        assert!(rules(&loaded, true).is_empty(), "{name}: {}", common::rendered(&loaded));
        let plan = recipe::plan::compile(&loaded, Default::default()).unwrap();
        assert_eq!(plan.training.optimizer.name.as_str(), name);
        assert_eq!(plan.training.optimizer.name.torchao_state_bits(), Some(bits));
        assert!(plan.training.optimizer.implementation.contains("torchao"), "{name}");
        // The memory model: a byte (8-bit) or half a byte (4-bit) per value and moment, an fp32 scale per 256.
        let t = plan.adapter.trainable_parameters;
        let states = plan.memory.items.iter().find(|i| i.name == "optimizer states").unwrap();
        assert_eq!(states.bytes, 2 * t * u64::from(bits) / 8 + 8 * t.div_ceil(256), "{name}: {}", states.formula);
    }
    // SGD, Adafactor, Lion and Muon (exec/optim_more.rs): named in the plan, their states in the memory model.
    for (name, per_value) in [("sgd", 0u64), ("lion_32bit", 4), ("paged_lion_32bit", 4), ("adafactor", 0), ("muon", 0)]
    {
        // A full fine-tune: the memory model counts from the shapes.
        let loaded = load_text(dir.path(), &format!("{full}optimizer: {name}\n"));
        assert!(rules(&loaded, true).is_empty(), "{name}: {}", common::rendered(&loaded));
        let plan = recipe::plan::compile(&loaded, Default::default()).unwrap();
        assert_eq!(plan.training.optimizer.name.as_str(), name);
        let t = plan.adapter.trainable_parameters;
        let states = plan.memory.items.iter().find(|i| i.name == "optimizer states").unwrap();
        eprintln!("{name}: optimizer states {} bytes for {t} trainable ({})", states.bytes, states.formula);
        if per_value > 0 || name == "sgd" {
            assert_eq!(states.bytes, per_value * t, "{name}: {}", states.formula);
        } else {
            // Factored (Adafactor) or split into groups (Muon): less than AdamW's 8 bytes a value.
            assert!(states.bytes > 0 && states.bytes < 8 * t, "{name}: {} ({})", states.bytes, states.formula);
        }
    }
    // 8-bit Lion: one byte a value and an fp32 absmax per 256.
    let lion8 = load_text(dir.path(), &format!("{full}optimizer: paged_lion_8bit\n"));
    assert!(rules(&lion8, true).is_empty(), "{}", common::rendered(&lion8));
    let plan = recipe::plan::compile(&lion8, Default::default()).unwrap();
    let t = plan.adapter.trainable_parameters;
    let states = plan.memory.items.iter().find(|i| i.name == "optimizer states").unwrap();
    assert_eq!(states.bytes, t + 4 * t.div_ceil(256), "{}", states.formula);
    // Muon's AdamW group: Axolotl passes the betas only when both are written.
    let muon = load_text(dir.path(), &format!("{full}optimizer: muon\n"));
    assert!(rules(&muon, false).contains(&"muon-betas-default"), "{}", common::rendered(&muon));
    let muon = load_text(dir.path(), &format!("{full}optimizer: muon\nadam_beta1: 0.95\nadam_beta2: 0.95\n"));
    assert!(!rules(&muon, false).contains(&"muon-betas-default"), "{}", common::rendered(&muon));
    // Axolotl's decay-then-constant cosine: with a cosine and a floor it shapes the schedule.
    let constant = load_text(dir.path(), &base("cosine_constant_lr_ratio: 0.5\ncosine_min_lr_ratio: 0.1\n"));
    assert!(rules(&constant, true).is_empty(), "{}", common::rendered(&constant));
    let plan = recipe::plan::compile(&constant, Default::default()).unwrap();
    assert_eq!(plan.training.cosine_constant_lr_ratio, Some(0.5));
    // message_field_role / message_field_content: Axolotl's older spelling of message_property_mappings.
    let chat = |extra: &str| base("").replace("type: completion", &format!("type: chat_template\n{extra}"));
    let legacy = load_text(dir.path(), &chat("    message_field_role: from\n    message_field_content: value\n"));
    assert!(rules(&legacy, true).is_empty(), "{}", common::rendered(&legacy));
    let recipe::config::datasets::DatasetConfig::ChatTemplate(d) = &legacy.config.as_ref().unwrap().data.datasets[0]
    else {
        panic!("a chat dataset")
    };
    assert_eq!((d.message_field("role"), d.message_field("content")), ("from".into(), "value".into()));
    let both = load_text(
        dir.path(),
        &chat("    message_field_role: from\n    message_property_mappings:\n      role: speaker\n"),
    );
    assert_eq!(rules(&both, true), ["message-field-conflict"], "{}", common::rendered(&both));
    let variant = load_text(dir.path(), &base("").replace("type: completion", "type: alpaca:chat"));
    assert_eq!(rules(&variant, true), ["unsupported-axolotl-value"], "{}", common::rendered(&variant));
    // A hub stream with Axolotl's default shuffle: each refused by name (local streams are built,
    // tests/pretrain.rs), without a second error about `datasets`.
    let stream = format!(
        "base_model: {}\npretraining_dataset:\n  - path: a/b\nlearning_rate: 1.0e-3\nmax_steps: 1\n",
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/stories260k").display()
    );
    let loaded = load_text(dir.path(), &stream);
    let mut refused = rules(&loaded, true);
    refused.sort();
    assert_eq!(
        refused,
        ["unsupported-pretraining-hub", "unsupported-pretraining-shuffle"],
        "{}",
        common::rendered(&loaded)
    );
}

/// `rl_beta` and `bfloat16`, Axolotl's names for recipe's `dpo_beta` (ORPO's `orpo_alpha`) and
/// `bf16: true`: folded in, shown with their origin, and an error beside recipe's own spelling;
/// `lora_fan_in_fan_out: true`, which peft turns off on every layer recipe adapts, refused by name.
#[test]
fn axolotl_names_of_beta_and_bf16_are_folded_into_recipes_settings() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let kto = std::fs::read_to_string(root.join("recipes/demo/stories260k-kto.yaml"))
        .unwrap()
        .replace("../../", &format!("{}/", root.display()));
    let setting = |plan: &recipe::plan::Plan, key: &str| {
        let s = plan.settings.iter().find(|s| s.key == key).unwrap_or_else(|| panic!("{key} in the settings"));
        (s.value.clone(), s.origin.clone())
    };
    let loaded = load_text(dir.path(), &kto.replace("dpo_beta: 0.1", "rl_beta: 0.5"));
    assert!(rules(&loaded, true).is_empty(), "{}", common::rendered(&loaded));
    let plan = recipe::plan::compile(&loaded, Default::default()).unwrap();
    assert_eq!(plan.training.preference.as_ref().unwrap().beta, 0.5);
    let (value, origin) = setting(&plan, "dpo_beta");
    assert_eq!(value, serde_json::json!(0.5));
    assert!(origin.starts_with("rl_beta (") && origin.contains("r.yaml"), "{origin}");
    // Under ORPO, Axolotl hands rl_beta to TRL's ORPO beta: recipe's orpo_alpha.
    let orpo = load_text(dir.path(), &kto.replace("dpo_beta: 0.1", "rl_beta: 0.3").replace("rl: kto", "rl: orpo"));
    assert!(rules(&orpo, true).is_empty(), "{}", common::rendered(&orpo));
    let plan = recipe::plan::compile(&orpo, Default::default()).unwrap();
    assert_eq!(plan.training.preference.as_ref().unwrap().orpo_alpha, 0.3);
    assert!(setting(&plan, "orpo_alpha").1.starts_with("rl_beta ("));
    for (text, rule) in [
        (kto.replace("dpo_beta: 0.1", "dpo_beta: 0.1\nrl_beta: 0.5"), "setting-written-twice"),
        (base("rl_beta: 0.5\n"), "rl-key-without-method"),
        (base("bfloat16: true\nbf16: false\n"), "precision-exclusive"),
    ] {
        let loaded = load_text(dir.path(), &text);
        assert_eq!(rules(&loaded, true), [rule], "{}", common::rendered(&loaded));
    }
    let fan = load_text(dir.path(), &base("lora_fan_in_fan_out: true\n"));
    assert_eq!(rules(&fan, true), ["unsupported-axolotl-value"], "{}", common::rendered(&fan));
    // bfloat16: true is bf16: true, beside `bf16: auto` too (Axolotl: `bf16 or bfloat16`).
    let auto = load_text(dir.path(), &base("bfloat16: true\nbf16: auto\n"));
    assert_eq!(auto.config.as_ref().unwrap().training.bf16, recipe::config::training::Switch::On);
    // bfloat16: true is bf16: true.
    let bf16 = load_text(dir.path(), &base("bfloat16: true\n"));
    assert!(rules(&bf16, true).is_empty(), "{}", common::rendered(&bf16));
    assert_eq!(bf16.config.as_ref().unwrap().training.bf16, recipe::config::training::Switch::On);
    let plan = recipe::plan::compile(&bf16, Default::default()).unwrap();
    assert!(setting(&plan, "bf16").1.starts_with("bfloat16 ("), "{:?}", setting(&plan, "bf16"));
}

#[test]
fn every_axolotl_chat_template_name_is_built_in() {
    // Axolotl's ChatTemplate enum (src/axolotl/utils/schemas/enums.py @067b021c).
    let axolotl = "alpaca chatml mistral_v1 mistral_v2v3 mistral_v3_tekken mistral_v7_tekken gemma cohere llama3 \
                   llama3_2_vision llama4 phi_3 phi_35 deepseek_v2 deepseek_v3 jamba jinja qwen_25 qwen3 qwen3_5 \
                   falcon_h1 nemotron_h tokenizer_default exaone exaone4 metharme pixtral llava qwen2_vl gemma3 \
                   gemma3n gemma4 gemma4_unified command_a command_a_tool_use command_a_rag aya";
    for name in axolotl.split_whitespace() {
        let parsed: Result<recipe::config::chat_template::ChatTemplateName, _> =
            serde_json::from_value(serde_json::json!(name));
        assert!(parsed.is_ok(), "chat_template: {name}");
    }
}

#[test]
fn axolotl_keys_that_would_do_nothing_here_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, rule) in [
        ("fsdp_version: 2\n", "fsdp-version-without-fsdp"),
        ("eot_tokens: [\"</s>\"]\n", "eot-tokens-without-chat"),
        ("save_only_model: true\n", "save-only-model-without-saves"),
    ] {
        let loaded = load_text(dir.path(), &base(extra));
        assert_eq!(rules(&loaded, true), [rule], "{extra}: {}", common::rendered(&loaded));
    }
    let chat = base("").replace("type: completion", "type: chat_template\n    train_on_eot: all");
    let loaded = load_text(dir.path(), &chat);
    assert_eq!(rules(&loaded, true), ["train-on-eot-without-eot-tokens"], "{}", common::rendered(&loaded));
    let with_tokens = load_text(dir.path(), &format!("{chat}eot_tokens: [\"</s>\"]\n"));
    assert!(rules(&with_tokens, true).is_empty(), "{}", common::rendered(&with_tokens));
}

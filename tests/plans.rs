//! Snapshot tests of the compiled plan (text and JSON, with the measured data statistics where the
//! data is local) for every recipe in recipes/ (recursively),
//! and the plan's counts against the published figures.

mod common;

/// Plans must not depend on the machine's Hugging Face cache: point it nowhere, once, before any
/// test of this binary compiles (hub models then come from the built-in table, as offline).
fn without_hf_cache() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: runs once, while every other test of this binary waits on the Once before reading
    // the environment.
    ONCE.call_once(|| unsafe { std::env::set_var("HF_HUB_CACHE", "/nonexistent-recipe-test-cache") });
}

fn compile(path: &std::path::Path, overrides: &[String]) -> Result<recipe::plan::Plan, String> {
    without_hf_cache();
    let loaded = recipe::recipe::load(path, overrides);
    assert!(!loaded.has_errors(), "{}", common::rendered(&loaded));
    recipe::plan::compile(&loaded, recipe::plan::PlanOptions::default())
}

#[test]
fn every_recipe_compiles_and_its_plan_is_snapshotted() {
    for path in common::recipe_files("recipes") {
        let mut plan = compile(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // As `recipe plan` does: data statistics where the data and tokenizer are local.
        plan.measured_data = recipe::data::measure(&plan).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = common::snapshot_name(&path, "recipes/");
        insta::assert_snapshot!(format!("{name}__plan_text"), recipe::plan::render_text(&plan));
        insta::assert_json_snapshot!(format!("{name}__plan_json"), plan);
    }
}

#[test]
fn llama2_13b_qlora_counts_match_peft() {
    // The figures peft's print_trainable_parameters() reports for Llama-2-13B, r=32, all linear.
    let plan = compile(std::path::Path::new("recipes/llama2-13b-qlora.yaml"), &[]).unwrap();
    assert_eq!(plan.model.parameters.total, 13_015_864_320);
    assert_eq!(plan.adapter.trainable_parameters, 125_173_760);
}

#[test]
fn unknown_target_modules_are_errors_that_list_the_real_ones() {
    let err = compile(
        std::path::Path::new("recipes/llama2-7b-lora.yaml"),
        &["lora_target_modules=[q_proj, query_key_value]".to_string()],
    )
    .unwrap_err();
    assert!(err.contains("`query_key_value` is not a module of LlamaForCausalLM"), "{err}");
    assert!(err.contains("gate_proj"), "{err}");
}

#[test]
fn a_sequence_longer_than_the_sliding_window_is_an_error_at_sequence_len() {
    // Mistral-7B attends within a 4,096-token window; sliding-window attention is not built.
    let mistral = std::path::Path::new("recipes/mistral-7b-qlora.yaml");
    let err = compile(mistral, &["sequence_len=8192".to_string()]).unwrap_err();
    assert!(
        err.starts_with("`sequence_len` (--set sequence_len=8192): 8192 is longer than the sliding window"),
        "{err}"
    );
    assert!(err.contains("(4096)") && err.contains("at most 4096"), "{err}");
    // Written in a file: the error names its line and column.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.yaml");
    let text = std::fs::read_to_string(mistral).unwrap().replace("sequence_len: 2048", "sequence_len: 8192");
    std::fs::write(&path, text).unwrap();
    let err = compile(&path, &[]).unwrap_err();
    assert!(err.starts_with(&format!("`sequence_len` ({}:20:15): 8192", path.display())), "{err}");
    // Within the window it plans.
    compile(mistral, &["sequence_len=4096".to_string()]).unwrap();
}

#[test]
fn deepspeed_zero_stages_are_laid_out_with_their_origin_and_per_rank_memory() {
    // Axolotl's own DeepSpeed configs on four ranks: ZeRO-1 shards the optimizer states, ZeRO-2
    // the gradients too (its optimizer states offloaded), ZeRO-3 the parameters too.
    without_hf_cache();
    let options = recipe::plan::PlanOptions { world_size: 4, ..recipe::plan::PlanOptions::default() };
    for file in ["zero1", "zero2", "zero3_bf16_cpuoffload_all"] {
        let set = format!("deepspeed=tests/fixtures/deepspeed/{file}.json");
        let loaded = recipe::recipe::load(std::path::Path::new("recipes/qwen3-0.6b-lora.yaml"), &[set]);
        assert!(!loaded.has_errors(), "{}", common::rendered(&loaded));
        let plan = recipe::plan::compile(&loaded, options).unwrap();
        insta::assert_snapshot!(format!("deepspeed_{file}__plan_text"), recipe::plan::render_text(&plan));
    }
}

#[test]
fn deepspeed_train_batch_size_must_be_this_launchs_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("ds.json");
    std::fs::write(&json, "{\"zero_optimization\": {\"stage\": 0},\n \"train_batch_size\": 8}\n").unwrap();
    let set =
        |k: &str| vec![format!("deepspeed={}", json.display()), k.to_string(), "gradient_accumulation_steps=1".into()];
    let recipe = std::path::Path::new("recipes/qwen3-0.6b-lora.yaml");
    let four = recipe::plan::PlanOptions { world_size: 4, ..recipe::plan::PlanOptions::default() };
    without_hf_cache();
    // Micro 2 × accumulation 1 × 4 ranks = 8 (the origin is where the value is written).
    let loaded = recipe::recipe::load(recipe, &set("micro_batch_size=2"));
    assert!(!loaded.has_errors(), "{}", common::rendered(&loaded));
    let plan = recipe::plan::compile(&loaded, four).unwrap();
    assert_eq!(plan.layout.strategy, recipe::plan::shard::Strategy::Ddp);
    let two = recipe::plan::PlanOptions { world_size: 2, ..four };
    let err = recipe::plan::compile(&loaded, two).unwrap_err();
    assert!(err.starts_with(&format!("`deepspeed.train_batch_size` ({}:2:22) is 8", json.display())), "{err}");
    assert!(err.contains("micro_batch_size 2 × gradient_accumulation_steps 1 × 2 rank(s) = 4"), "{err}");
}

#[test]
fn embed_tokens_cannot_take_lora_and_be_trained_in_full() {
    let overrides =
        ["lora_target_modules=[embed_tokens, q_proj]".to_string(), "lora_modules_to_save=[embed_tokens]".to_string()];
    let err = compile(std::path::Path::new("recipes/demo/stories260k-lora.yaml"), &overrides).unwrap_err();
    assert!(err.contains("`embed_tokens` cannot take LoRA while `lora_modules_to_save` trains it in full"), "{err}");
}

#[test]
fn ia3_targets_are_resolved_against_the_architecture() {
    let demo = std::path::Path::new("recipes/demo/stories260k-ia3.yaml");
    // A module the decoder does not have is an error naming the key and the real ones.
    let err =
        compile(demo, &["ia3_target_modules=[k_proj, lm_head]".to_string(), "ia3_feedforward_modules=[]".to_string()])
            .unwrap_err();
    assert!(
        err.contains("`ia3_target_modules`: `lm_head` is not a linear layer") && err.contains("down_proj"),
        "{err}"
    );
    // Without feedforward modules named, peft's default (down_proj) applies where it is a target.
    let plan = compile(
        demo,
        &["ia3_target_modules=[q_proj, up_proj]".to_string(), "ia3_feedforward_modules=null".to_string()],
    )
    .unwrap();
    assert_eq!(plan.adapter.target_modules, ["q_proj", "up_proj"]);
    assert!(plan.adapter.feedforward_modules.is_empty());
    // 5 layers × (q_proj's 64 outputs + up_proj's 172 outputs).
    assert_eq!(plan.adapter.trainable_parameters, 5 * (64 + 172));
}

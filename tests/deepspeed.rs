//! Axolotl's own DeepSpeed configs (tests/fixtures/deepspeed, copied from Axolotl's
//! `deepspeed_configs/` at 067b021c) under a recipe: each either plans with the strategy its ZeRO
//! stage maps to, or is refused by name at the JSON key recipe does not implement. The outcome per
//! file is snapshotted.

mod common;

#[test]
fn axolotl_deepspeed_configs_validate_or_are_refused_by_name() {
    // SAFETY: set before any plan reads the environment; no other test in this binary.
    unsafe { std::env::set_var("HF_HUB_CACHE", "/nonexistent-recipe-test-cache") };
    let mut files: Vec<_> = std::fs::read_dir("tests/fixtures/deepspeed")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 8, "{files:?}");
    let options = recipe::plan::PlanOptions { world_size: 4, ..recipe::plan::PlanOptions::default() };
    let mut table = String::new();
    for file in files {
        let set = format!("deepspeed={}", file.display());
        let loaded = recipe::recipe::load(std::path::Path::new("recipes/qwen3-0.6b-lora.yaml"), &[set]);
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
        let outcome = if errors.is_empty() {
            let plan = recipe::plan::compile(&loaded, options).unwrap();
            let ds = plan.layout.deepspeed.as_ref().unwrap();
            let offload: Vec<&str> = [("optimizer states", ds.offload_optimizer), ("parameters", ds.offload_param)]
                .into_iter()
                .filter_map(|(what, o)| o.map(|_| what))
                .collect();
            format!(
                "valid: ZeRO stage {} -> {:?}{}",
                ds.stage.number(),
                plan.layout.strategy,
                if offload.is_empty() { String::new() } else { format!(", offload: {}", offload.join(" and ")) }
            )
        } else {
            for d in &errors {
                assert!(d.rule.starts_with("unsupported-"), "{name}: not refused by name: {d:?}");
            }
            let keys: Vec<String> = errors
                .iter()
                .map(|d| format!("{} at {}", d.key_path.clone().unwrap_or_default(), location(&loaded, d)))
                .collect();
            format!("refused by name: {}", keys.join("; "))
        };
        table.push_str(&format!("{name:<36} {outcome}\n"));
    }
    insta::assert_snapshot!("axolotl_deepspeed_configs", table);
}

fn location(loaded: &recipe::recipe::Loaded, d: &recipe::recipe::diagnostic::Diagnostic) -> String {
    d.primary.as_ref().map(|l| loaded.sources.location(l.span)).unwrap_or_default()
}

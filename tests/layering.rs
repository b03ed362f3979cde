//! Precedence, lowest first: defaults, presets, extended recipe, this recipe, --set; and every
//! resolved value remembers where it came from.

use recipe::recipe::check::Locator;
use std::path::Path;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn layers_apply_in_order_and_keep_their_origin() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "base.yaml",
        "base_model: meta-llama/Llama-2-7b-hf\nlora_r: 32\nlora_alpha: 64\nmicro_batch_size: 2\n\
         datasets: [{path: a/b, type: alpaca}]\nspecial_tokens: {pad_token: '<pad>'}\n",
    );
    let top = write(
        dir.path(),
        "top.yaml",
        "extends: base.yaml\npreset: lora\nlora_r: 64\nlora_alpha: 128\nspecial_tokens: {bos_token: '<s>'}\n",
    );
    let loaded = recipe::recipe::load(&top, &["micro_batch_size=8".into()]);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let c = loaded.config.as_ref().unwrap();
    assert_eq!(c.adapter.lora_r, 64, "this recipe beats the extended one and the preset");
    assert_eq!(c.training.micro_batch_size, 8, "--set beats everything");
    assert_eq!(c.training.learning_rate, Some(2e-4), "the preset fills what no file sets");
    assert_eq!(c.training.adam_beta2, 0.999, "the default fills the rest");
    assert_eq!(c.chat.special_tokens.pad_token.as_deref(), Some("<pad>"), "mappings merge key by key");
    assert_eq!(c.chat.special_tokens.bos_token.as_deref(), Some("<s>"));

    let at = Locator { tree: loaded.tree.as_ref().unwrap(), sources: &loaded.sources, deepspeed: None };
    let top_name = top.display().to_string();
    assert_eq!(at.origin("lora_r"), format!("{top_name}:3:9"));
    assert!(at.origin("base_model").ends_with("base.yaml:1:13"), "{}", at.origin("base_model"));
    assert_eq!(at.origin("learning_rate"), "preset lora");
    assert_eq!(at.origin("micro_batch_size"), "--set micro_batch_size=8");
    assert_eq!(at.origin("adam_beta2"), "default");
}

#[test]
fn an_empty_key_resets_to_the_default_and_alternatives_replace_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let top = write(
        dir.path(),
        "r.yaml",
        "preset: lora\nbase_model: a/b\nlora_dropout:\nwarmup_steps: 5\ndatasets: [{path: a/b, type: alpaca}]\n",
    );
    let loaded = recipe::recipe::load(&top, &[]);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let c = loaded.config.unwrap();
    assert_eq!(c.adapter.lora_dropout, 0.0, "null means unset, so the type's default applies");
    assert_eq!(c.training.warmup_steps, Some(5));
    assert_eq!(c.training.warmup_ratio, None, "the recipe's warmup_steps replaces the preset's warmup_ratio");
}

#[test]
fn extends_cycles_and_missing_bases_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", "extends: b.yaml\nbase_model: a/b\n");
    let b = write(dir.path(), "b.yaml", "extends: a.yaml\n");
    let loaded = recipe::recipe::load(&b, &[]);
    assert!(loaded.diagnostics.iter().any(|d| d.rule == "extends-cycle"), "{:?}", loaded.diagnostics);
    let c = write(dir.path(), "c.yaml", "extends: nope.yaml\n");
    let loaded = recipe::recipe::load(&c, &[]);
    let d = loaded.diagnostics.iter().find(|d| d.rule == "io").expect("missing base reported");
    assert!(d.primary.is_some(), "pointed at the extends value");
}

#[test]
fn inert_axolotl_keys_are_accepted_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let top = write(
        dir.path(),
        "r.yaml",
        "preset: lora\nbase_model: a/b\ndatasets: [{path: a/b, type: alpaca}]\nstrict: false\n\
         group_by_length: false\ndebug:\nlocal_rank:\ntorch_compile_backend:\nwandb_watch:\nhub_model_id:\n",
    );
    let loaded = recipe::recipe::load(&top, &[]);
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    assert_eq!(loaded.ignored_keys.len(), 7);
}

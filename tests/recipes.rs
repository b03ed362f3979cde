//! Every recipe in recipes/ (recursively) starts with the schema modeline, validates without
//! errors, and resolves to the snapshotted settings (the `--show-settings` of ruff, per recipe).

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
            assert_eq!(d.rule, "unsupported-axolotl-key", "{}: {}", path.display(), common::rendered(&loaded));
            assert!(d.message.contains("is an Axolotl option that recipe does not support"));
        }
        let name = common::snapshot_name(&path, "tests/fixtures/");
        insta::assert_snapshot!(format!("{name}__diagnostics"), common::rendered(&loaded));
    }
}

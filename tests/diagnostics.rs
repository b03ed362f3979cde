//! Snapshot tests of the diagnostics for every bad recipe in tests/fixtures/invalid (recursively):
//! typo, wrong type, out of range, missing required key, conflicting keys, unsupported Axolotl key,
//! YAML syntax error, alias bomb, and more. Each must fail, and print exactly as snapshotted.

mod common;

#[test]
fn every_invalid_fixture_fails_with_located_diagnostics() {
    let files = common::recipe_files("tests/fixtures/invalid");
    assert!(files.len() >= 15, "fixtures missing: {files:?}");
    for path in files {
        // Run in the package root so printed paths are stable.
        let loaded = recipe::recipe::load(&path, &[]);
        assert!(loaded.has_errors(), "{} should be invalid", path.display());
        for d in loaded.diagnostics.iter().filter(|d| d.is_error()) {
            assert!(
                d.primary.is_some() || d.file.is_some(),
                "{}: diagnostic without a location: {d:?}",
                path.display()
            );
        }
        let name = common::snapshot_name(&path, "tests/fixtures/");
        insta::assert_snapshot!(format!("{name}__text"), common::rendered(&loaded));
        let json: Vec<_> =
            loaded.diagnostics.iter().map(|d| recipe::recipe::diagnostic::to_json(d, &loaded.sources)).collect();
        insta::assert_json_snapshot!(format!("{name}__json"), json);
    }
}

#[test]
fn overrides_are_located_in_the_set_argument() {
    let loaded = recipe::recipe::load(
        std::path::Path::new("recipes/llama2-7b-lora.yaml"),
        &["lora_r=-3".to_string(), "lora_dropoutt=0.1".to_string(), "datasets.4.path=x".to_string()],
    );
    insta::assert_snapshot!("overrides__text", common::rendered(&loaded));
}

#[test]
fn no_input_panics() {
    // Every prefix of a real recipe, and deterministic byte flips of it, must give diagnostics,
    // never a panic.
    let text = std::fs::read("recipes/llama3-8b-lora-chat.yaml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.yaml");
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut variants: Vec<Vec<u8>> = (0..text.len()).step_by(7).map(|n| text[..n].to_vec()).collect();
    for _ in 0..300 {
        let mut v = text.clone();
        for _ in 0..3 {
            let i = (next() as usize) % v.len();
            let alphabet = b"-:[]{}&*!|>'\"#% \n\t0a\xff";
            v[i] = alphabet[(next() as usize) % alphabet.len()];
        }
        variants.push(v);
    }
    for v in variants {
        std::fs::write(&path, &v).unwrap();
        let loaded = recipe::recipe::load(&path, &[]);
        let _ = common::rendered(&loaded);
    }
}

//! The recipe loader and the planner never panic: byte mutations of every recipe in recipes/ and
//! random YAML trees over the schema's keys (thousands of cases; `FUZZ_CASES` scales them, as
//! scripts/fuzz-loader.sh does for a longer run) each end in diagnostics or a plan — and a recipe that
//! loads without errors compiles to a plan or an error message. An input that panics is written to
//! the test's temporary folder and named in the failure.

mod common;

use std::path::Path;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn cases() -> usize {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

/// Loads (and, when valid, plans) `text` written to `path`; a panic fails with the input kept.
fn check(path: &Path, text: &[u8], what: &str) {
    std::fs::write(path, text).unwrap();
    let outcome = std::panic::catch_unwind(|| {
        let loaded = recipe::recipe::load(path, &[]);
        let _ = common::rendered(&loaded);
        if !loaded.has_errors() {
            PLANNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(plan) = recipe::plan::compile(&loaded, recipe::plan::PlanOptions::default()) {
                let _ = recipe::plan::render_text(&plan);
            }
        }
    });
    if outcome.is_err() {
        let kept = path.with_extension("panic.yaml");
        std::fs::write(&kept, text).unwrap();
        panic!("{what}: the loader or planner panicked on the input kept in {}", kept.display());
    }
}

/// Inputs that loaded without errors and went on to the planner.
static PLANNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

const PUNCTUATION: &[u8] = b"-:[]{}&*!|>'\"#%@`,? \n\t0123456789.eE+aZ_\\\xff\xc3";

#[test]
fn mutated_recipes_never_panic() {
    // SAFETY: this test binary runs this one test that touches the environment; no hub access.
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.yaml");
    let recipes = common::recipe_files("recipes");
    assert!(recipes.len() >= 10);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let per_recipe = cases() / recipes.len() + 1;
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for file in &recipes {
        // Local paths made absolute, so mutations that stay valid get as far as the planner.
        let original = std::fs::read_to_string(file)
            .unwrap()
            .replace("../../models/", &format!("{}/models/", root.display()))
            .replace("../../data/", &format!("{}/data/", root.display()))
            .into_bytes();
        for case in 0..per_recipe {
            let mut text = original.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(text.len() + 1);
                match rng.below(4) {
                    0 if at < text.len() => {
                        text.remove(at);
                    }
                    1 => text.insert(at, PUNCTUATION[rng.below(PUNCTUATION.len())]),
                    2 if at < text.len() => text[at] = PUNCTUATION[rng.below(PUNCTUATION.len())],
                    _ => {
                        // A line copied elsewhere: duplicate keys, wrong nesting.
                        let lines: Vec<&[u8]> = original.split(|&b| b == b'\n').collect();
                        let line = lines[rng.below(lines.len())].to_vec();
                        let at = at.min(text.len());
                        text.splice(at..at, line.into_iter().chain([b'\n']));
                    }
                }
            }
            check(&path, &text, &format!("{} mutation {case}", file.display()));
        }
    }
    let planned = PLANNED.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{} mutated recipes, {planned} of them (with the random trees) planned", per_recipe * recipes.len());
    assert!(planned > 0, "no mutation reached the planner");
}

/// A random YAML value: scalars of every type, lists and maps, nested a few levels.
fn value(rng: &mut Rng, keys: &[&str], depth: usize) -> String {
    match rng.below(if depth > 2 { 6 } else { 8 }) {
        0 => "true".into(),
        1 => format!("{}", rng.next() as i64 % 100_000),
        2 => format!("{:e}", (rng.next() % 1000) as f64 / 7.0 - 50.0),
        3 => "null".into(),
        4 => format!("\"{}\"", keys[rng.below(keys.len())]),
        5 => ["nan", "-.inf", "0x1F", "'~'", "\"\"", "[]", "{}", "*a", "!!python/object x"][rng.below(9)].into(),
        6 => {
            let items: Vec<String> = (0..rng.below(4)).map(|_| value(rng, keys, depth + 1)).collect();
            format!("[{}]", items.join(", "))
        }
        _ => {
            let items: Vec<String> = (0..rng.below(4))
                .map(|_| format!("{}: {}", keys[rng.below(keys.len())], value(rng, keys, depth + 1)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

#[test]
fn random_trees_over_the_schemas_keys_never_panic() {
    // SAFETY: see above (this binary's tests only set the same value).
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.yaml");
    let mut keys = recipe::config::schema::top_level_keys();
    keys.extend(["type", "path", "field_messages", "chosen", "role", "content", "split", "fsdp_config", "x"]);
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for case in 0..cases() {
        let mut text = String::new();
        if rng.below(2) == 0 {
            text.push_str(&format!("base_model: {}/models/stories260k\n", env!("CARGO_MANIFEST_DIR")));
        }
        for _ in 0..1 + rng.below(12) {
            text.push_str(&format!("{}: {}\n", keys[rng.below(keys.len())], value(&mut rng, &keys, 0)));
        }
        check(&path, text.as_bytes(), &format!("random tree {case}"));
    }
}

//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Every *.yaml / *.yml under `dir`, recursively, sorted, as paths relative to the package root.
pub fn recipe_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(Path::new(dir), &mut out);
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
}

/// Diagnostics of one file as plain text, the way `recipe validate` prints them.
pub fn rendered(loaded: &recipe::recipe::Loaded) -> String {
    recipe::recipe::diagnostic::render_text(&loaded.diagnostics, &loaded.sources, false)
}

/// A snapshot name from a path: `tests/fixtures/invalid/typo.yaml` -> `invalid__typo`.
pub fn snapshot_name(path: &Path, strip: &str) -> String {
    let rel = path.strip_prefix(strip).unwrap_or(path);
    rel.with_extension("").to_string_lossy().replace(['/', '\\'], "__")
}

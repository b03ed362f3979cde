//! Where a model, dataset or file named in a recipe lives: a local path (relative to the recipe
//! file that names it) or a Hugging Face hub id. Shared by the rules (paths must exist) and the
//! plan (where config.json and the data come from).

use std::path::{Path, PathBuf};

/// Where a model or dataset named in a recipe lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local file or folder (resolved against the recipe's folder).
    Local(PathBuf),
    /// A Hugging Face hub id (`owner/name` or `name`).
    Hub(String),
    /// Neither.
    Invalid,
}

/// Local when written as a path (`./x`, `../x`, `/x`, `~/x`) or when it exists relative to
/// `base`; otherwise a hub id if it has the form of one.
pub fn resolve_location(value: &str, base: &Path) -> Location {
    let path_like =
        value.starts_with("./") || value.starts_with("../") || value.starts_with('/') || value.starts_with("~/");
    let resolved = if let Some(home_relative) = value.strip_prefix("~/") {
        std::env::var_os("HOME").map_or_else(|| PathBuf::from(value), |h| PathBuf::from(h).join(home_relative))
    } else {
        normalize(&base.join(value))
    };
    if path_like || resolved.exists() {
        return Location::Local(resolved);
    }
    let valid_part = |p: &str| {
        !p.is_empty()
            && !p.starts_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let parts: Vec<&str> = value.split('/').collect();
    if (1..=2).contains(&parts.len()) && parts.iter().all(|p| valid_part(p)) && value.len() <= 96 {
        Location::Hub(value.to_string())
    } else {
        Location::Invalid
    }
}

/// Removes `.` and folds `..` lexically (the path may not exist, so no canonicalize).
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_tell_paths_from_hub_ids() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(
            resolve_location("meta-llama/Llama-2-13b-hf", base),
            Location::Hub("meta-llama/Llama-2-13b-hf".into())
        );
        assert_eq!(resolve_location("src", base), Location::Local(base.join("src")));
        assert_eq!(resolve_location("./nope", base), Location::Local(base.join("./nope")));
        assert_eq!(resolve_location("a/b/c", base), Location::Invalid);
        assert_eq!(resolve_location("has space/x", base), Location::Invalid);
    }
}

//! From recipe text to a typed, validated Config, with the origin of every value.
//!
//! Layers, lowest first: presets (`preset:`), the extended recipe (`extends:`, recursively), this
//! recipe, `--set key.path=value` overrides. Mappings merge key by key; any other value (lists
//! included) is replaced whole by a higher layer. Each value keeps the span it was written at, so
//! its origin (preset, file:line, --set) is known to the plan; an absent value is a default.

pub mod check;
pub mod deepspeed;
pub mod diagnostic;
pub mod presets;
pub mod source;
pub mod yaml;

use crate::config::Config;
use diagnostic::Diagnostic;
use source::{SourceId, SourceKind, Sources, Span};
use std::path::{Path, PathBuf};
use yaml::{Entry, Node, Value};

/// Largest recipe file read (recipes are a few KiB).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Longest `extends:` chain.
pub const MAX_EXTENDS_DEPTH: usize = 16;

/// A loaded recipe: its texts, the layered tree, and the typed config when it is valid.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub sources: Sources,
    /// The layered tree, nulls and inert Axolotl keys removed; spans say where each value came from.
    pub tree: Option<Node>,
    pub config: Option<Config>,
    pub diagnostics: Vec<Diagnostic>,
    /// Axolotl keys accepted because their value has no effect (shown by `recipe plan`).
    pub ignored_keys: Vec<String>,
    /// The DeepSpeed config file's tree (`deepspeed:`), for the plan's provenance.
    pub deepspeed: Option<Node>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// True when a file could not be read or an override is malformed (exit code 2 rather than 1).
    pub fn usage_failed(&self) -> bool {
        self.diagnostics.iter().any(|d| d.rule == IO_RULE || d.rule == SET_SYNTAX_RULE)
    }
}

pub const IO_RULE: &str = "io";
pub const SET_SYNTAX_RULE: &str = "set-syntax";

/// Loads, layers and checks one recipe file.
pub fn load(path: &Path, overrides: &[String]) -> Loaded {
    let mut loader = Loader { sources: Sources::default(), diagnostics: Vec::new() };
    let layered = loader.layered(path, overrides);
    let deepspeed = layered.as_ref().and_then(|tree| loader.deepspeed_file(tree));
    let mut loaded = Loaded {
        path: path.to_path_buf(),
        sources: loader.sources,
        tree: None,
        config: None,
        diagnostics: loader.diagnostics,
        ignored_keys: Vec::new(),
        deepspeed: None,
    };
    if let Some(tree) = layered {
        let checked = check::check(tree, deepspeed, &loaded.sources);
        loaded.diagnostics.extend(checked.diagnostics);
        loaded.tree = Some(checked.tree);
        loaded.config = checked.config;
        loaded.ignored_keys = checked.ignored_keys;
        loaded.deepspeed = checked.deepspeed;
    }
    loaded.diagnostics.sort_by_key(|d| (d.position(), d.severity));
    loaded
}

struct Loader {
    sources: Sources,
    diagnostics: Vec<Diagnostic>,
}

impl Loader {
    fn layered(&mut self, path: &Path, overrides: &[String]) -> Option<Node> {
        let mut chain = Vec::new();
        let mut user = self.file_with_extends(path, None, &mut chain)?;
        for arg in overrides {
            self.apply_override(&mut user, arg);
        }
        let presets = self.presets(&user);
        presets.into_iter().chain(std::iter::once(user)).reduce(merge_layers)
    }

    /// Reads a recipe file and, beneath it, the chain of files it extends.
    fn file_with_extends(
        &mut self,
        path: &Path,
        referenced_at: Option<Span>,
        chain: &mut Vec<PathBuf>,
    ) -> Option<Node> {
        let root = self.read_recipe(path, referenced_at)?;
        let Some(entry) = root.get("extends") else {
            return Some(root);
        };
        let span = entry.value.span;
        let Some(relative) = entry.value.as_str() else {
            // The schema reports the wrong type.
            return Some(root);
        };
        let target = path.parent().unwrap_or(Path::new("")).join(relative);
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        chain.push(canonical);
        if let Ok(target_canonical) = std::fs::canonicalize(&target)
            && chain.contains(&target_canonical)
        {
            self.diagnostics.push(
                Diagnostic::error(
                    "extends-cycle",
                    format!("`extends` cycle: {} is already being loaded", target.display()),
                )
                .at(span, "extends a recipe that extends this one")
                .key("extends"),
            );
            return Some(root);
        }
        if chain.len() > MAX_EXTENDS_DEPTH {
            self.diagnostics.push(
                Diagnostic::error("extends-depth", format!("`extends` chain longer than {MAX_EXTENDS_DEPTH} files"))
                    .at(span, "one extension too many")
                    .key("extends"),
            );
            return Some(root);
        }
        let base = self.file_with_extends(&target, Some(span), chain);
        chain.pop();
        Some(match base {
            Some(base) => merge_layers(base, root),
            None => root,
        })
    }

    /// The DeepSpeed config file the layered recipe names, parsed with positions (JSON is YAML).
    /// Relative to the recipe file that names it (to the working directory for `--set`).
    fn deepspeed_file(&mut self, tree: &Node) -> Option<Node> {
        let entry = tree.get(deepspeed::KEY)?;
        let relative = entry.value.as_str()?;
        let span = entry.value.span;
        let base = self.sources.get(span.source).path().and_then(Path::parent).unwrap_or(Path::new(""));
        let path = crate::config::location::normalize(&base.join(relative));
        if !path.exists() {
            self.diagnostics.push(
                Diagnostic::error("path-not-found", format!("`deepspeed`: {} does not exist", path.display()))
                    .at(span, "no such file")
                    .key(deepspeed::KEY)
                    .help("the path is relative to the recipe file; Axolotl's are relative to its repository root"),
            );
            return None;
        }
        let id = self.read_file(&path, Some((span, deepspeed::KEY)))?;
        self.parse_root(id, "a DeepSpeed config", "`\"zero_optimization\"`")
    }

    fn read_recipe(&mut self, path: &Path, referenced_at: Option<Span>) -> Option<Node> {
        let id = self.read_file(path, referenced_at.map(|span| (span, "extends")))?;
        self.parse_root(id, "a recipe", "`base_model:`")
    }

    /// Reads a text file into the sources, bounded in size; `referenced_at` is the key that names it.
    fn read_file(&mut self, path: &Path, referenced_at: Option<(Span, &str)>) -> Option<SourceId> {
        let fail = |message: String, rule: &'static str| {
            let d = Diagnostic::error(rule, message);
            match referenced_at {
                Some((span, key)) => d.at(span, "referenced here").key(key),
                None => d.in_file(path),
            }
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                self.diagnostics.push(fail(format!("cannot read {}: {e}", path.display()), IO_RULE));
                return None;
            }
        };
        if meta.is_dir() {
            self.diagnostics.push(fail(format!("{} is a directory, not a recipe file", path.display()), IO_RULE));
            return None;
        }
        if meta.len() > MAX_FILE_BYTES {
            self.diagnostics.push(fail(
                format!("{} is {} bytes; a recipe may be at most {MAX_FILE_BYTES} bytes", path.display(), meta.len()),
                "file-too-large",
            ));
            return None;
        }
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.diagnostics.push(fail(format!("cannot read {}: {e}", path.display()), IO_RULE));
                return None;
            }
        };
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let before = &e.as_bytes()[..at];
                let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                self.diagnostics.push(fail(
                    format!("{} is not UTF-8 text (invalid byte at line {line}, byte offset {at})", path.display()),
                    "not-utf8",
                ));
                return None;
            }
        };
        Some(self.sources.add(SourceKind::File(path.to_path_buf()), text))
    }

    /// Parses a whole source that must hold a mapping (`what`, keys such as `example`).
    fn parse_root(&mut self, id: SourceId, what: &str, example: &str) -> Option<Node> {
        let text = self.sources.get(id).text.clone();
        match yaml::parse(&text, id, 0) {
            Err(e) => {
                let mut d = Diagnostic::error(e.rule, e.message).at(e.span, "here");
                if let Some(first) = e.related {
                    d = d.also(first, "first defined here");
                }
                self.diagnostics.push(d);
                None
            }
            Ok(None) => {
                self.diagnostics.push(
                    Diagnostic::error(
                        "empty-recipe",
                        format!("the file is empty; {what} is a mapping of keys such as {example}"),
                    )
                    .at(Span::new(id, 0, 0), "empty"),
                );
                None
            }
            Ok(Some(node)) if node.as_map().is_some() => Some(node),
            Ok(Some(node)) if node.is_null() => {
                self.diagnostics.push(
                    Diagnostic::error(
                        "empty-recipe",
                        format!("the file holds no keys; {what} is a mapping of keys such as {example}"),
                    )
                    .at(Span::new(id, 0, 0), "empty"),
                );
                None
            }
            Ok(Some(node)) => {
                self.diagnostics.push(
                    Diagnostic::error(
                        "not-a-mapping",
                        format!("{what} is a mapping of keys, but this document is a {}", node.kind_name()),
                    )
                    .at(node.span, "expected `key: value` lines")
                    .expected("mapping")
                    .found(node.kind_name()),
                );
                None
            }
        }
    }

    /// The preset layers named by the recipe's `preset:` key, in order.
    fn presets(&mut self, user: &Node) -> Vec<Node> {
        let Some(entry) = user.get("preset") else {
            return Vec::new();
        };
        let named: Vec<String> = match &entry.value.value {
            Value::String(s) => vec![s.clone()],
            Value::Seq(items) => items.iter().filter_map(|item| item.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(), // wrong types are reported by the schema
        };
        let mut layers = Vec::new();
        for name in named {
            let Some(preset) = presets::find(&name) else {
                // The schema's enum reports unknown names with the list; nothing to layer.
                continue;
            };
            let id = self.sources.add(SourceKind::Preset(name.clone()), preset.yaml.to_owned());
            if let Some(node) = self.parse_root(id, "a preset", "`base_model:`") {
                layers.push(node);
            }
        }
        layers
    }

    /// Applies one `--set key.path=value` to the recipe tree.
    fn apply_override(&mut self, tree: &mut Node, arg: &str) {
        let id = self.sources.add(SourceKind::Override, arg.to_owned());
        let Some(eq) = arg.find('=') else {
            self.diagnostics.push(
                Diagnostic::error(SET_SYNTAX_RULE, format!("`--set {arg}` has no `=`; write --set key.path=value"))
                    .at(Span::new(id, 0, arg.len()), "expected key.path=value"),
            );
            return;
        };
        let path_text = &arg[..eq];
        let value = match yaml::parse(&arg[eq + 1..], id, eq + 1) {
            Ok(Some(node)) => node,
            Ok(None) => Node::new(Value::Null, Span::new(id, eq + 1, arg.len())),
            Err(e) => {
                self.diagnostics.push(Diagnostic::error(e.rule, e.message).at(e.span, "in this value"));
                return;
            }
        };
        let segments = match parse_key_path(path_text) {
            Some(segments) => segments,
            None => {
                self.diagnostics.push(
                    Diagnostic::error(
                        SET_SYNTAX_RULE,
                        format!("`{path_text}` is not a key path; write e.g. lora_r or datasets.0.path"),
                    )
                    .at(Span::new(id, 0, eq), "bad key path"),
                );
                return;
            }
        };
        let key_span = Span::new(id, 0, eq);
        let mut node = tree;
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let shown = segments[..=i].join(".");
            match (&mut node.value, segment.parse::<usize>()) {
                (Value::Seq(items), Ok(index)) => {
                    let len = items.len();
                    if index >= len {
                        self.diagnostics.push(
                            Diagnostic::error(
                                "set-index",
                                format!("`{shown}`: the list has {len} entries, so index {index} does not exist"),
                            )
                            .at(key_span, "index out of range"),
                        );
                        return;
                    }
                    if last {
                        items[index] = value;
                        return;
                    }
                    node = &mut items[index];
                }
                (Value::Map(entries), _) => {
                    let pos = match entries.iter().position(|e| e.key == *segment) {
                        Some(pos) => pos,
                        None => {
                            entries.push(Entry {
                                key: segment.clone(),
                                key_span,
                                value: Node::new(Value::Map(Vec::new()), key_span),
                            });
                            entries.len() - 1
                        }
                    };
                    if last {
                        entries[pos].key_span = key_span;
                        entries[pos].value = value;
                        return;
                    }
                    let child = &mut entries[pos].value;
                    if child.is_null() {
                        *child = Node::new(Value::Map(Vec::new()), key_span);
                    }
                    node = child;
                }
                (other, _) => {
                    let kind = other.kind_name();
                    self.diagnostics.push(
                        Diagnostic::error("set-path", format!("`{shown}`: cannot set a key inside a {kind}"))
                            .at(key_span, "this path goes through a value that is not a mapping or list"),
                    );
                    return;
                }
            }
        }
    }
}

/// `datasets.0.path` or `datasets[0].path` -> ["datasets", "0", "path"].
fn parse_key_path(text: &str) -> Option<Vec<String>> {
    let normalized = text.replace('[', ".").replace(']', "");
    let segments: Vec<String> = normalized.split('.').map(str::to_owned).collect();
    if segments.iter().any(|s| s.is_empty() || s.chars().any(char::is_whitespace)) {
        return None;
    }
    Some(segments)
}

/// Pairs of keys that say the same thing two ways: a layer that sets one replaces the other from
/// the layers below (a recipe's `warmup_steps` overrides its preset's `warmup_ratio`).
const ALTERNATIVE_KEYS: &[(&str, &str)] = &[
    ("warmup_steps", "warmup_ratio"),
    ("eval_steps", "evals_per_epoch"),
    ("save_steps", "saves_per_epoch"),
    ("num_epochs", "max_steps"),
];

/// Merges one recipe layer over another (see [`merge`]), honouring [`ALTERNATIVE_KEYS`].
pub fn merge_layers(mut lower: Node, upper: Node) -> Node {
    if let (Some(base), Some(over)) = (lower.as_map_mut(), upper.as_map()) {
        for (a, b) in ALTERNATIVE_KEYS {
            let sets = |k: &str| over.iter().any(|e| e.key == k && !e.value.is_null());
            if sets(a) && !sets(b) {
                base.retain(|e| e.key != *b);
            } else if sets(b) && !sets(a) {
                base.retain(|e| e.key != *a);
            }
        }
    }
    merge(lower, upper)
}

/// Merges `upper` over `lower`: mappings key by key, anything else replaced.
pub fn merge(lower: Node, upper: Node) -> Node {
    match (lower.value, upper.value) {
        (Value::Map(mut base), Value::Map(over)) => {
            for entry in over {
                match base.iter().position(|e| e.key == entry.key) {
                    Some(pos) => {
                        let old = std::mem::replace(&mut base[pos].value, Node::new(Value::Null, entry.key_span));
                        base[pos].value = merge(old, entry.value);
                        base[pos].key_span = entry.key_span;
                    }
                    None => base.push(entry),
                }
            }
            Node::new(Value::Map(base), upper.span)
        }
        (_, value) => Node::new(value, upper.span),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_accept_dots_and_brackets() {
        assert_eq!(parse_key_path("datasets[0].path").unwrap(), ["datasets", "0", "path"]);
        assert_eq!(parse_key_path("lora_r").unwrap(), ["lora_r"]);
        assert!(parse_key_path("a..b").is_none());
    }
}

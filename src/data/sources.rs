//! One reader for every dataset source a recipe can name: a local file, a local folder, or a
//! Hugging Face hub dataset (from the HF cache, else fetched with hf-hub). Every row comes out as a
//! JSON object with its [`Origin`] (file, 0-based row, 1-based line where the format has lines), so
//! later stages can point at the exact row of a malformed sample.
//!
//! Formats (from `ds_type`, else the file extension):
//! - `json`: an array of objects, or JSON Lines when the file is not an array (Axolotl reads
//!   both). Rows of an array know their line too (where the element starts).
//! - `jsonl`: one object per non-empty line.
//! - `csv`: RFC 4180 (quoted fields with commas, doubled quotes, newlines inside quotes; CRLF or
//!   LF); the header row gives the keys, every value is a string.
//! - `parquet`: every row through the parquet record API; lists become arrays and structs / maps
//!   objects (a `messages` list of `{role, content}` comes out as it reads in Python).
//! - `text` (.txt, .text, .md): the whole file is one row `{text_field: content}` (the schema's
//!   "one sample per file"; HF's text loader makes a row per line instead).
//!
//! Which files a folder or a hub repo gives, in this order: `data_files` (names or globs relative
//! to the folder / repo root, `**` crossing folders; each must match something); else every data
//! file (recursively, hidden files and folders skipped, `.md` only when named), narrowed to the
//! `name/` subfolder when `name` is set, then to the files whose path names the split (HF's split
//! keywords: `train`/`training`, `validation`/`valid`/`val`/`dev`, `test`/`testing`/`eval`...;
//! `data/train-00000-of-00002.parquet`, `train.jsonl`, `test/x.csv`). When no file names any
//! split, all of them are the `train` split (as HF's folder loader does); another split is an
//! error. A local folder follows the same rules as a hub snapshot, so a downloaded repo reads alike.
//!
//! Hub datasets: the snapshot in the HF cache (HF_HUB_CACHE, else HF_HOME/hub, else
//! ~/.cache/huggingface/hub; `datasets--ORG--NAME/snapshots/COMMIT/...`, the commit from
//! `refs/REVISION` or `revision` itself when it is a commit hash) when it holds the chosen files
//! (every shard of a `-NNNNN-of-NNNNN` set); else the file list from the hub API and the files
//! through hf-hub into the cache (HF_ENDPOINT, HF_TOKEN honoured). HF_HUB_OFFLINE: cache only.
//!
//! Errors name the file (and line / row); no input makes this module panic (parquet decoding is
//! additionally guarded, as the parquet crate asserts on some corrupt files).

use crate::config::datasets::{DatasetSource, FileFormat, FileList};
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a row came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// 0-based index of the row in its file.
    pub row: usize,
    /// 1-based line where the row starts (JSON, JSON Lines, CSV).
    pub line: Option<usize>,
}

impl fmt::Display for Origin {
    /// `FILE:LINE` (as compilers and editors write it) when the row has a line, else `FILE row N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file.display()),
            None => write!(f, "{} row {}", self.file.display(), self.row),
        }
    }
}

/// One row: a JSON object and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    pub origin: Origin,
    pub value: Value,
}

/// A row that could not be read (not JSON, not an object, wrong CSV field count).
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub origin: Origin,
    pub error: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.error)
    }
}

/// The rows of a source, and the malformed rows that were left out (for `skip_bad_rows`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    pub rows: Vec<RawRow>,
    pub bad: Vec<BadRow>,
}

impl Rows {
    /// The rows, or an error naming the first malformed one (and how many there are).
    pub fn strict(self) -> Result<Vec<RawRow>, String> {
        match self.bad.first() {
            None => Ok(self.rows),
            Some(first) if self.bad.len() == 1 => Err(first.to_string()),
            Some(first) => Err(format!("{first} (and {} more malformed rows)", self.bad.len() - 1)),
        }
    }
}

/// How to reach the Hugging Face hub: the cache folder, offline or not, endpoint and token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hub {
    /// The hub cache folder (`None`: no HOME, HF_HOME nor HF_HUB_CACHE).
    pub cache: Option<PathBuf>,
    /// HF_HUB_OFFLINE: the cache alone.
    pub offline: bool,
    /// HF_ENDPOINT.
    pub endpoint: Option<String>,
    /// HF_TOKEN.
    pub token: Option<String>,
}

impl Hub {
    /// From HF_HUB_CACHE / HF_HOME / HOME, HF_HUB_OFFLINE, HF_ENDPOINT and HF_TOKEN.
    pub fn from_env() -> Hub {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache = match (std::env::var_os("HF_HUB_CACHE"), std::env::var_os("HF_HOME"), std::env::var_os("HOME")) {
            (Some(cache), _, _) => Some(PathBuf::from(cache)),
            (None, Some(home), _) => Some(PathBuf::from(home).join("hub")),
            (None, None, Some(home)) => Some(PathBuf::from(home).join(".cache/huggingface/hub")),
            _ => None,
        };
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Hub { cache, offline, endpoint: var("HF_ENDPOINT"), token: var("HF_TOKEN") }
    }

    /// The hf-hub client for this cache, endpoint and token.
    pub fn api(&self) -> Result<hf_hub::api::sync::Api, String> {
        let cache = self.cache.as_ref().ok_or("no Hugging Face cache folder (set HF_HOME)")?;
        let mut builder =
            hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.clone())).with_progress(false);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if let Some(token) = &self.token {
            builder = builder.with_token(Some(token.clone()));
        }
        builder.build().map_err(|e| e.to_string())
    }
}

/// Every row of a dataset source, strict: the first malformed row is an error. `local_path` is the
/// plan's resolved local file or folder (`None`: `source.path` is a hub id); `text_field` is the
/// key plain-text files are read into. The hub is reached as the environment says.
pub fn read(source: &DatasetSource, local_path: Option<&Path>, text_field: &str) -> Result<Vec<RawRow>, String> {
    read_rows(source, local_path, text_field, &Hub::from_env())?.strict()
}

/// Every row of a dataset source, malformed rows set apart; errors only for what spoils a whole
/// file (unreadable, not UTF-8, a broken JSON array or parquet file, an unterminated CSV quote).
pub fn read_rows(
    source: &DatasetSource,
    local_path: Option<&Path>,
    text_field: &str,
    hub: &Hub,
) -> Result<Rows, String> {
    let mut out = Rows::default();
    for file in files(source, local_path, hub)? {
        read_file_into(&file, source.ds_type, text_field, &mut out)?;
    }
    Ok(out)
}

/// The files a source reads, in reading order (see the module docs for how they are chosen).
pub fn files(source: &DatasetSource, local_path: Option<&Path>, hub: &Hub) -> Result<Vec<PathBuf>, String> {
    match local_path {
        Some(path) => local_files(source, path),
        None => hub_files(source, hub),
    }
}

/// The rows of one file (`format` None: told from the extension), malformed rows set apart.
pub fn read_file(path: &Path, format: Option<FileFormat>, text_field: &str) -> Result<Rows, String> {
    let mut out = Rows::default();
    read_file_into(path, format, text_field, &mut out)?;
    Ok(out)
}

/// The format a file name says (`.json .jsonl .parquet .csv .txt .text .md`).
pub fn format_of(path: &Path) -> Option<FileFormat> {
    format_of_extension(&path.extension()?.to_str()?.to_ascii_lowercase())
}

fn format_of_extension(extension: &str) -> Option<FileFormat> {
    match extension {
        "json" => Some(FileFormat::Json),
        "jsonl" | "ndjson" => Some(FileFormat::Jsonl),
        "parquet" => Some(FileFormat::Parquet),
        "csv" => Some(FileFormat::Csv),
        "txt" | "text" | "md" => Some(FileFormat::Text),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Choosing files

fn local_files(source: &DatasetSource, path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_file() && source.data_files.is_none() {
        return Ok(vec![path.to_path_buf()]);
    }
    // `data_files` next to a file: globs relative to the file's folder.
    let dir = if meta.is_file() { path.parent().unwrap_or(Path::new(".")) } else { path };
    let listing = walk(dir)?;
    let chosen = choose(&listing, source, &format!("folder {}", dir.display()))?;
    Ok(chosen.iter().map(|rel| dir.join(rel)).collect())
}

/// Files under `root`, relative and `/`-separated, sorted; hidden files and folders skipped.
fn walk(root: &Path) -> Result<Vec<String>, String> {
    fn visit(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<String>) -> Result<(), String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            // Following links (hub snapshots are links into blobs/), depth-bounded against cycles.
            match std::fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => out.push(rel),
                Ok(m) if m.is_dir() && depth < 16 => visit(&entry.path(), &rel, depth + 1, out)?,
                _ => {}
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    visit(root, "", 0, &mut out)?;
    out.sort();
    Ok(out)
}

/// HF's split keywords.
fn split_keywords(split: &str) -> Vec<String> {
    let split = split.to_ascii_lowercase();
    let words: &[&str] = match split.as_str() {
        "train" => &["train", "training"],
        "validation" => &["validation", "valid", "val", "dev"],
        "test" => &["test", "testing", "eval", "evaluation"],
        _ => &[],
    };
    let mut out: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    if out.is_empty() {
        out.push(split);
    }
    out
}

/// Whether a path names one of the keywords as a word (delimited by anything but a letter).
fn names_any(path: &str, keywords: &[String]) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.split(|c: char| !c.is_ascii_alphabetic()).any(|word| keywords.iter().any(|k| k == word))
}

fn same_family(a: FileFormat, b: FileFormat) -> bool {
    let json = |f| matches!(f, FileFormat::Json | FileFormat::Jsonl);
    a == b || (json(a) && json(b))
}

/// Picks files out of a listing (relative paths) as the module docs say.
fn choose(listing: &[String], source: &DatasetSource, place: &str) -> Result<Vec<String>, String> {
    if let Some(data_files) = &source.data_files {
        let patterns: Vec<&String> = match data_files {
            FileList::One(p) => vec![p],
            FileList::Many(ps) => ps.iter().collect(),
        };
        if patterns.is_empty() {
            return Err(format!("data_files is an empty list ({place})"));
        }
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let mut chosen: Vec<String> = Vec::new();
        for raw in patterns {
            let pattern = raw.trim_start_matches("./");
            let glob = glob::Pattern::new(pattern).map_err(|e| format!("data_files `{raw}`: not a valid glob: {e}"))?;
            let matched: Vec<&String> = listing.iter().filter(|f| glob.matches_with(f, options)).collect();
            if matched.is_empty() {
                return Err(format!("data_files `{raw}` matches no file in {place}"));
            }
            for f in matched {
                if !chosen.contains(f) {
                    chosen.push(f.clone());
                }
            }
        }
        return Ok(chosen);
    }
    let mut candidates: Vec<&String> = listing
        .iter()
        .filter(|f| {
            let format = Path::new(f.as_str())
                .extension()
                .and_then(|e| e.to_str())
                .and_then(|e| format_of_extension(&e.to_ascii_lowercase()));
            let is_markdown = f.to_ascii_lowercase().ends_with(".md");
            match (source.ds_type, format) {
                (Some(wanted), Some(found)) => {
                    same_family(wanted, found) && (wanted == FileFormat::Text || !is_markdown)
                }
                (None, Some(_)) => !is_markdown,
                (_, None) => false,
            }
        })
        .collect();
    if candidates.is_empty() {
        let shown: Vec<&str> = listing.iter().take(8).map(String::as_str).collect();
        return Err(format!(
            "no data file ({}) in {place}{}",
            match source.ds_type {
                Some(t) => format!("{t:?} as ds_type says").to_lowercase(),
                None => ".json, .jsonl, .parquet, .csv, .txt".to_string(),
            },
            if shown.is_empty() { String::new() } else { format!(" (it has: {})", shown.join(", ")) }
        ));
    }
    if let Some(name) = &source.name {
        let prefix = format!("{name}/");
        if candidates.iter().any(|f| f.starts_with(&prefix)) {
            candidates.retain(|f| f.starts_with(&prefix));
        } else if name != "default" {
            return Err(format!(
                "configuration `name: {name}`: {place} has no folder {name}/ with data files; pick its files with data_files"
            ));
        }
    }
    let wanted = split_keywords(&source.split);
    let in_split: Vec<&String> = candidates.iter().copied().filter(|f| names_any(f, &wanted)).collect();
    if !in_split.is_empty() {
        return Ok(in_split.into_iter().cloned().collect());
    }
    let any_split: Vec<String> = ["train", "validation", "test"].iter().flat_map(|s| split_keywords(s)).collect();
    if source.split.eq_ignore_ascii_case("train") && !candidates.iter().any(|f| names_any(f, &any_split)) {
        return Ok(candidates.into_iter().cloned().collect());
    }
    let shown: Vec<&str> = candidates.iter().take(8).map(|s| s.as_str()).collect();
    Err(format!(
        "no file of split `{}` in {place} (data files: {}); name them with data_files",
        source.split,
        shown.join(", ")
    ))
}

/// Shards `NAME-00001-of-00003.EXT` that the chosen set lacks (a partly downloaded snapshot).
fn missing_shards(chosen: &[String]) -> Vec<String> {
    let re = regex::Regex::new(r"^(.*)-(\d{5})-of-(\d{5})(\.[^/]*)$").expect("a valid regex");
    let mut missing = Vec::new();
    for f in chosen {
        let Some(c) = re.captures(f) else { continue };
        let Ok(total) = c[3].parse::<usize>() else { continue };
        for i in 0..total.min(100_000) {
            let name = format!("{}-{i:05}-of-{}{}", &c[1], &c[3], &c[4]);
            if !chosen.contains(&name) && !missing.contains(&name) {
                missing.push(name);
            }
        }
    }
    missing
}

fn valid_hub_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    (1..=2).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with(['.', '-'])
                && !p.contains("..")
                && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// The snapshot folder of a cached hub dataset at `revision`, when present.
fn cached_snapshot(cache: &Path, id: &str, revision: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("datasets--{}", id.replace('/', "--")));
    let is_commit = |s: &str| s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit(revision) {
        revision.to_string()
    } else {
        if revision.split('/').any(|p| p.is_empty() || p == "..") {
            return None;
        }
        std::fs::read_to_string(repo.join("refs").join(revision)).ok()?.trim().to_string()
    };
    if !is_commit(&commit) {
        return None;
    }
    let snapshot = repo.join("snapshots").join(commit);
    snapshot.is_dir().then_some(snapshot)
}

fn hub_files(source: &DatasetSource, hub: &Hub) -> Result<Vec<PathBuf>, String> {
    let id = source.path.as_str();
    if !valid_hub_id(id) {
        return Err(format!("`{id}` is neither a local file or folder nor a hub dataset id"));
    }
    let revision = source.revision.as_deref().unwrap_or("main");
    let what = format!("hub dataset {id}@{revision}");
    let cache = hub.cache.as_deref();
    if let Some(snapshot) = cache.and_then(|c| cached_snapshot(c, id, revision)) {
        let place = format!("{what} (Hugging Face cache {})", snapshot.display());
        let listing = walk(&snapshot)?;
        match choose(&listing, source, &place) {
            Ok(chosen) => {
                let missing = missing_shards(&chosen);
                if missing.is_empty() {
                    return Ok(chosen.iter().map(|f| snapshot.join(f)).collect());
                }
                if hub.offline {
                    return Err(format!(
                        "{place}: shards missing from the cache ({}), and HF_HUB_OFFLINE is set",
                        missing.join(", ")
                    ));
                }
            }
            Err(e) if hub.offline => return Err(format!("{e}; HF_HUB_OFFLINE is set, so only the cache was read")),
            Err(_) => {}
        }
    }
    if hub.offline {
        return Err(format!(
            "{what} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; download it first \
             (hf download --repo-type dataset {id}) or use a local path",
            cache.map_or("none: set HF_HOME".to_string(), |c| c.display().to_string())
        ));
    }
    let api = hub.api().map_err(|e| format!("{what}: {e}"))?;
    let repo = hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Dataset, revision.to_string());
    let info = api.repo(repo.clone()).info().map_err(|e| format!("{what}: cannot list its files: {e}"))?;
    let mut listing: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|f| !f.split('/').any(|p| p.starts_with('.') || p.is_empty()))
        .collect();
    listing.sort();
    let chosen = choose(&listing, source, &what)?;
    chosen.iter().map(|f| api.repo(repo.clone()).get(f).map_err(|e| format!("{what}: cannot fetch {f}: {e}"))).collect()
}

// ---------------------------------------------------------------------------------------------
// Reading files

fn read_file_into(path: &Path, format: Option<FileFormat>, text_field: &str, out: &mut Rows) -> Result<(), String> {
    let format = format.or_else(|| format_of(path)).ok_or_else(|| {
        format!(
            "{}: cannot tell the format from the file name; set ds_type (json, jsonl, parquet, csv, text)",
            path.display()
        )
    })?;
    match format {
        FileFormat::Json | FileFormat::Jsonl => json_rows(path, &read_text(path)?, format, out),
        FileFormat::Csv => csv_rows(path, &read_text(path)?, out),
        FileFormat::Text => {
            let text = read_text(path)?;
            let mut value = Map::new();
            value.insert(text_field.to_string(), Value::String(text));
            out.rows.push(RawRow { origin: origin(path, 0, None), value: Value::Object(value) });
            Ok(())
        }
        FileFormat::Parquet => parquet_rows(path, out),
    }
}

fn origin(path: &Path, row: usize, line: Option<usize>) -> Origin {
    Origin { file: path.to_path_buf(), row, line }
}

/// The file as UTF-8 text, without a byte order mark.
fn read_text(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        format!("{}:{line}: not UTF-8 text (bad byte at offset {at})", path.display())
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// serde_json's error as (line, column, message without its ` at line L column C`).
fn json_error(e: &serde_json::Error) -> (usize, usize, String) {
    let message = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    (e.line(), e.column(), message.strip_suffix(&suffix).unwrap_or(&message).to_string())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn json_rows(path: &Path, text: &str, format: FileFormat, out: &mut Rows) -> Result<(), String> {
    if format == FileFormat::Json && text.trim_start().starts_with('[') {
        let rows = match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(rows)) => rows,
            Ok(_) => return Err(format!("{}: expected a JSON array of objects", path.display())),
            Err(e) => {
                let (line, column, message) = json_error(&e);
                return Err(format!("{}:{line}:{column}: not valid JSON: {message}", path.display()));
            }
        };
        let lines = array_element_lines(text);
        for (i, value) in rows.into_iter().enumerate() {
            let at = origin(path, i, lines.get(i).copied());
            push_object(at, value, out);
        }
        return Ok(());
    }
    let mut row = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = origin(path, row, Some(n + 1));
        row += 1;
        match serde_json::from_str::<Value>(line) {
            Ok(value) => push_object(at, value, out),
            Err(e) => {
                // A pretty-printed single object is neither rows nor JSON Lines: say so once.
                if format == FileFormat::Json
                    && out.bad.is_empty()
                    && matches!(serde_json::from_str::<Value>(text), Ok(Value::Object(_)))
                {
                    return Err(format!(
                        "{}: one JSON object, not rows: expected an array of objects or one object per line (JSON Lines)",
                        path.display()
                    ));
                }
                let (_, column, message) = json_error(&e);
                let error = format!("not valid JSON (column {column}): {message}");
                out.bad.push(BadRow { origin: at, error });
            }
        }
    }
    Ok(())
}

fn push_object(at: Origin, value: Value, out: &mut Rows) {
    if value.is_object() {
        out.rows.push(RawRow { origin: at, value });
    } else {
        out.bad.push(BadRow { origin: at, error: format!("a row must be a JSON object, found {}", kind(&value)) });
    }
}

/// The 1-based line where each element of a (valid) top-level JSON array starts.
fn array_element_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let Some(open) = text.find('[') else { return lines };
    let mut line = 1 + text[..open].bytes().filter(|&b| b == b'\n').count();
    let (mut depth, mut in_string, mut escaped, mut expecting) = (0usize, false, false, true);
    for b in text[open + 1..].bytes() {
        if b == b'\n' {
            line += 1;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        if depth == 0 && b == b']' {
            break;
        }
        if depth == 0 && expecting {
            lines.push(line);
            expecting = false;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => expecting = true,
            _ => {}
        }
    }
    lines
}

/// CSV records, each with the line it starts on; an unterminated quote is an error.
fn parse_csv(text: &str) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut records = Vec::new();
    let mut record: Vec<String> = Vec::new();
    let mut field = String::new();
    let (mut in_quotes, mut quoted, mut closed, mut started) = (false, false, false, false);
    let (mut line, mut record_line, mut quote_line) = (1usize, 1usize, 1usize);
    let mut chars = text.chars().peekable();
    let mut end_record = |record: &mut Vec<String>, field: &mut String, quoted: bool, record_line: usize| {
        record.push(std::mem::take(field));
        let blank = record.len() == 1 && record[0].is_empty() && !quoted;
        let done = std::mem::take(record);
        if !blank {
            records.push((record_line, done));
        }
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    in_quotes = false;
                    closed = true;
                }
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                record.push(std::mem::take(&mut field));
                (quoted, closed, started) = (false, false, false);
            }
            '\n' | '\r' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                end_record(&mut record, &mut field, quoted, record_line);
                (quoted, closed, started) = (false, false, false);
                line += 1;
                record_line = line;
            }
            '"' if !started && !closed => {
                (in_quotes, quoted) = (true, true);
                quote_line = line;
            }
            ' ' | '\t' if closed => {}
            _ if closed => {
                return Err(format!(
                    "{line}: text after a closing quote (quote the whole field, doubling the quotes inside it)"
                ));
            }
            _ => {
                started = true;
                field.push(c);
            }
        }
    }
    if in_quotes {
        return Err(format!("{quote_line}: a quoted field is never closed"));
    }
    if !record.is_empty() || !field.is_empty() || quoted {
        end_record(&mut record, &mut field, quoted, record_line);
    }
    Ok(records)
}

fn csv_rows(path: &Path, text: &str, out: &mut Rows) -> Result<(), String> {
    let records = parse_csv(text).map_err(|e| format!("{}:{e}", path.display()))?;
    let mut records = records.into_iter();
    let Some((header_line, header)) = records.next() else { return Ok(()) };
    for (i, key) in header.iter().enumerate() {
        if header[..i].contains(key) {
            return Err(format!("{}:{header_line}: the header names column `{key}` twice", path.display()));
        }
    }
    for (row, (line, fields)) in records.enumerate() {
        let at = origin(path, row, Some(line));
        if fields.len() != header.len() {
            out.bad.push(BadRow {
                origin: at,
                error: format!("{} fields, the header has {}", fields.len(), header.len()),
            });
            continue;
        }
        let value = header.iter().cloned().zip(fields.into_iter().map(Value::String)).collect::<Map<_, _>>();
        out.rows.push(RawRow { origin: at, value: Value::Object(value) });
    }
    Ok(())
}

fn parquet_rows(path: &Path, out: &mut Rows) -> Result<(), String> {
    use parquet::file::reader::SerializedFileReader;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The parquet crate asserts (panics) on some corrupt files: keep that an error naming the file.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<Vec<RawRow>, String> {
        let reader = SerializedFileReader::new(file)
            .map_err(|e| format!("{}: not a readable parquet file: {e}", path.display()))?;
        let mut rows = Vec::new();
        for (i, row) in reader.into_iter().enumerate() {
            let row = row.map_err(|e| format!("{} row {i}: {e}", path.display()))?;
            let value = row.get_column_iter().map(|(k, f)| (k.clone(), field_json(f))).collect::<Map<_, _>>();
            rows.push(RawRow { origin: origin(path, i, None), value: Value::Object(value) });
        }
        Ok(rows)
    }));
    match result {
        Ok(Ok(rows)) => {
            out.rows.extend(rows);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the parquet reader gave up".into());
            Err(format!("{}: not a readable parquet file: {why}", path.display()))
        }
    }
}

/// A parquet value as JSON: lists to arrays, structs and maps to objects, bytes to a string
/// (UTF-8 text as is, other bytes in base64), dates, times and decimals as their text.
fn field_json(field: &parquet::record::Field) -> Value {
    use parquet::record::Field;
    let float = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float16(n) => float(f64::from(*n)),
        Field::Float(n) => float(f64::from(*n)),
        Field::Double(n) => float(*n),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::String(base64(b.data())),
        },
        Field::Group(row) => Value::Object(row.get_column_iter().map(|(k, f)| (k.clone(), field_json(f))).collect()),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_json).collect()),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match field_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, field_json(v))
                })
                .collect(),
        ),
        Field::Decimal(_)
        | Field::Date(_)
        | Field::TimeMillis(_)
        | Field::TimeMicros(_)
        | Field::TimestampMillis(_)
        | Field::TimestampMicros(_) => Value::String(field.to_string()),
    }
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_records_keep_quotes_commas_and_newlines() {
        let records = parse_csv("a,b\r\n\"x, y\",\"say \"\"hi\"\"\"\n\n\"l1\nl2\",z").unwrap();
        assert_eq!(
            records,
            vec![
                (1, vec!["a".into(), "b".into()]),
                (2, vec!["x, y".into(), "say \"hi\"".into()]),
                (4, vec!["l1\nl2".into(), "z".into()]),
            ]
        );
        assert_eq!(parse_csv("a\n\"open").unwrap_err(), "2: a quoted field is never closed");
        assert!(parse_csv("\"a\"b").unwrap_err().starts_with("1: text after a closing quote"));
        assert_eq!(parse_csv("").unwrap(), vec![]);
        assert_eq!(parse_csv("a,\n").unwrap(), vec![(1, vec!["a".to_string(), String::new()])]);
    }

    #[test]
    fn array_elements_know_their_lines() {
        let text = "[\n {\"a\": \"[,]\\\"\"},\n\n {\"b\": [1, {\"c\": 2}]}, 3\n]";
        assert_eq!(array_element_lines(text), vec![2, 4, 4]);
        assert_eq!(array_element_lines("[]"), Vec::<usize>::new());
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (input, expected) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn splits_are_words_of_the_path() {
        let train = split_keywords("train");
        assert!(names_any("data/train-00000-of-00001.parquet", &train));
        assert!(names_any("train1.jsonl", &train));
        assert!(!names_any("pretrain_notes.jsonl", &train));
        assert!(names_any("dev.jsonl", &split_keywords("validation")));
        assert_eq!(
            missing_shards(&["d/train-00000-of-00002.parquet".into()]),
            vec!["d/train-00001-of-00002.parquet".to_string()]
        );
    }
}

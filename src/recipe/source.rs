//! The texts a recipe is assembled from (recipe files, built-in presets, `--set` arguments) and
//! positions inside them. Every value of a layered recipe points back into one of these, which is
//! how diagnostics find their line and how the plan tells where a value came from.

use serde::Serialize;
use std::path::{Path, PathBuf};

/// Index of a text in a [`Sources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SourceId(pub usize);

/// A byte range in one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub source: SourceId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(source: SourceId, start: usize, end: usize) -> Span {
        Span { source, start, end }
    }

    /// From the start of `self` to the end of `other` (same source).
    pub fn to(self, other: Span) -> Span {
        Span { end: other.end.max(self.start), ..self }
    }
}

/// What kind of text a source is: it decides how provenance is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A recipe file on disk.
    File(PathBuf),
    /// A built-in preset, by name.
    Preset(String),
    /// One `--set key=value` argument (its text is the whole argument).
    Override,
}

#[derive(Debug, Clone)]
pub struct Source {
    pub kind: SourceKind,
    pub text: String,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
}

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LineCol {
    pub line: usize,
    pub column: usize,
}

impl Source {
    /// The name diagnostics print: the path as given, `preset:NAME` or `--set`.
    pub fn name(&self) -> String {
        match &self.kind {
            SourceKind::File(p) => p.display().to_string(),
            SourceKind::Preset(name) => format!("<preset {name}>"),
            SourceKind::Override => "<--set>".to_string(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match &self.kind {
            SourceKind::File(p) => Some(p),
            _ => None,
        }
    }

    pub fn line_col(&self, byte: usize) -> LineCol {
        let byte = byte.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= byte) - 1;
        let start = self.line_starts[line];
        let column = self.text[start..byte].chars().count() + 1;
        LineCol { line: line + 1, column }
    }
}

/// All texts of one `validate`/`plan` invocation.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    sources: Vec<Source>,
}

impl Sources {
    pub fn add(&mut self, kind: SourceKind, text: String) -> SourceId {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        self.sources.push(Source { kind, text, line_starts });
        SourceId(self.sources.len() - 1)
    }

    pub fn get(&self, id: SourceId) -> &Source {
        &self.sources[id.0]
    }

    /// `file:line:col` of a span's start.
    pub fn location(&self, span: Span) -> String {
        let source = self.get(span.source);
        let lc = source.line_col(span.start);
        format!("{}:{}:{}", source.name(), lc.line, lc.column)
    }

    /// Where a value came from, for the plan's provenance column.
    pub fn origin(&self, span: Span) -> String {
        let source = self.get(span.source);
        match &source.kind {
            SourceKind::File(_) => self.location(span),
            SourceKind::Preset(name) => format!("preset {name}"),
            SourceKind::Override => format!("--set {}", source.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let mut s = Sources::default();
        let id = s.add(SourceKind::File("r.yaml".into()), "a: é\nbb: 2\n".into());
        let src = s.get(id);
        assert_eq!(src.line_col(0), LineCol { line: 1, column: 1 });
        assert_eq!(src.line_col(3), LineCol { line: 1, column: 4 });
        let b = "a: é\n".len();
        assert_eq!(src.line_col(b + 4), LineCol { line: 2, column: 5 });
        assert_eq!(s.location(Span::new(id, b, b + 2)), "r.yaml:2:1");
    }
}

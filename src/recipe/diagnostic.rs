//! Diagnostics a user can cause, and their two renderings: text for people (`file:line:col:
//! message`, the source line with a caret, then key path, expected, found and a did-you-mean) and
//! JSON for machines. The excerpt is drawn by annotate-snippets.

use super::source::{Sources, Span};
use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A span with a short note drawn under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub span: Span,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable identifier of the check (`unknown-key`, `type`, `qlora-needs-4bit`, ...).
    pub rule: &'static str,
    pub message: String,
    /// Dotted key path (`datasets[0].type`), when the problem is at a key.
    pub key_path: Option<String>,
    pub primary: Option<Label>,
    /// Further keys the problem involves (cross-field rules point at each of them).
    pub related: Vec<Label>,
    pub expected: Option<String>,
    pub found: Option<String>,
    /// A replacement to try (`lora_r` for `lora_rr`).
    pub suggestion: Option<String>,
    pub help: Option<String>,
    /// The file, when there is no span (unreadable or non-UTF-8 files).
    pub file: Option<PathBuf>,
}

impl Diagnostic {
    pub fn error(rule: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            rule,
            message: message.into(),
            key_path: None,
            primary: None,
            related: Vec::new(),
            expected: None,
            found: None,
            suggestion: None,
            help: None,
            file: None,
        }
    }

    pub fn warning(rule: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(rule, message) }
    }

    pub fn at(mut self, span: Span, note: impl Into<String>) -> Self {
        self.primary = Some(Label { span, note: note.into() });
        self
    }

    pub fn also(mut self, span: Span, note: impl Into<String>) -> Self {
        self.related.push(Label { span, note: note.into() });
        self
    }

    pub fn key(mut self, path: impl Into<String>) -> Self {
        self.key_path = Some(path.into());
        self
    }

    pub fn expected(mut self, what: impl Into<String>) -> Self {
        self.expected = Some(what.into());
        self
    }

    pub fn found(mut self, what: impl Into<String>) -> Self {
        self.found = Some(what.into());
        self
    }

    pub fn suggest(mut self, what: Option<String>) -> Self {
        self.suggestion = what;
        self
    }

    pub fn help(mut self, text: impl Into<String>) -> Self {
        self.help = Some(text.into());
        self
    }

    pub fn in_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Sort key: file order, then position.
    pub fn position(&self) -> (usize, usize) {
        self.primary.as_ref().map_or((usize::MAX, 0), |l| (l.span.source.0, l.span.start))
    }
}

/// A key path for people: `["datasets", "0", "type"]` -> `datasets[0].type`.
pub fn key_path<S: AsRef<str>>(segments: impl IntoIterator<Item = S>) -> String {
    let mut out = String::new();
    for s in segments {
        let s = s.as_ref();
        if s.parse::<usize>().is_ok() {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    out
}

/// `did you mean` from a set of candidates, by Jaro-Winkler similarity.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_owned())
}

/// Renders diagnostics for a terminal (`styled`) or plain text.
pub fn render_text(diagnostics: &[Diagnostic], sources: &Sources, styled: bool) -> String {
    let renderer = if styled { Renderer::styled() } else { Renderer::plain() };
    let mut out = String::new();
    for d in diagnostics {
        let severity = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let location = match (&d.primary, &d.file) {
            (Some(label), _) => format!("{}: ", sources.location(label.span)),
            (None, Some(file)) => format!("{}: ", file.display()),
            (None, None) => String::new(),
        };
        out.push_str(&format!("{location}{severity}[{}]: {}\n", d.rule, d.message));
        let level = match d.severity {
            Severity::Error => Level::ERROR,
            Severity::Warning => Level::WARNING,
        };
        if let Some(primary) = &d.primary {
            let mut groups = Vec::new();
            let source = sources.get(primary.span.source);
            let name = source.name();
            let mut snippet = Snippet::source(source.text.as_str()).path(name.as_str()).annotation(
                AnnotationKind::Primary.span(primary.span.start..primary.span.end).label(primary.note.as_str()),
            );
            let mut elsewhere = Vec::new();
            for label in &d.related {
                if label.span.source == primary.span.source {
                    snippet = snippet.annotation(
                        AnnotationKind::Context.span(label.span.start..label.span.end).label(label.note.as_str()),
                    );
                } else {
                    elsewhere.push(label);
                }
            }
            let mut group = Group::with_level(level.clone()).element(snippet);
            for label in elsewhere {
                let other = sources.get(label.span.source);
                group = group.element(Snippet::source(other.text.as_str()).path(other.name()).annotation(
                    AnnotationKind::Context.span(label.span.start..label.span.end).label(label.note.as_str()),
                ));
            }
            groups.push(group);
            out.push_str(&renderer.render(&groups));
            out.push('\n');
        }
        let mut note = |name: &str, value: &Option<String>| {
            if let Some(v) = value {
                out.push_str(&format!("  = {name}: {v}\n"));
            }
        };
        note("key", &d.key_path);
        note("expected", &d.expected);
        note("found", &d.found);
        note("help", &d.suggestion.as_ref().map(|s| format!("did you mean `{s}`?")));
        note("help", &d.help);
        out.push('\n');
    }
    out
}

/// The JSON form of one diagnostic (`recipe validate --format json`).
#[derive(Debug, Serialize)]
pub struct JsonDiagnostic {
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub end_line: Option<usize>,
    pub end_column: Option<usize>,
    pub severity: Severity,
    pub rule: &'static str,
    pub key_path: Option<String>,
    pub message: String,
    pub expected: Option<String>,
    pub found: Option<String>,
    pub suggestion: Option<String>,
    pub help: Option<String>,
    pub related: Vec<JsonLabel>,
}

#[derive(Debug, Serialize)]
pub struct JsonLabel {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub note: String,
}

pub fn to_json(d: &Diagnostic, sources: &Sources) -> JsonDiagnostic {
    let (file, start, end) = match &d.primary {
        Some(label) => {
            let source = sources.get(label.span.source);
            (Some(source.name()), Some(source.line_col(label.span.start)), Some(source.line_col(label.span.end)))
        }
        None => (d.file.as_ref().map(|f| f.display().to_string()), None, None),
    };
    JsonDiagnostic {
        file,
        line: start.map(|p| p.line),
        column: start.map(|p| p.column),
        end_line: end.map(|p| p.line),
        end_column: end.map(|p| p.column),
        severity: d.severity,
        rule: d.rule,
        key_path: d.key_path.clone(),
        message: d.message.clone(),
        expected: d.expected.clone(),
        found: d.found.clone(),
        suggestion: d.suggestion.clone(),
        help: d.help.clone(),
        related: d
            .related
            .iter()
            .map(|l| {
                let source = sources.get(l.span.source);
                let lc = source.line_col(l.span.start);
                JsonLabel { file: source.name(), line: lc.line, column: lc.column, note: l.note.clone() }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_find_near_names_only() {
        let keys = ["lora_r", "lora_alpha", "sample_packing", "sequence_len"];
        assert_eq!(did_you_mean("lora_rr", keys).as_deref(), Some("lora_r"));
        assert_eq!(did_you_mean("sample_pakcing", keys).as_deref(), Some("sample_packing"));
        assert_eq!(did_you_mean("zzz", keys), None);
    }
}

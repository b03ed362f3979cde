//! YAML text -> a tree that keeps the position of every key and value.
//!
//! Built on saphyr-parser's event stream, so the bounds are ours: one document per recipe, a cap
//! on nesting depth and on the nodes that aliases may expand to (a "billion laughs" document fails
//! fast), duplicate keys are errors (YAML forbids them; PyYAML silently keeps the last), and only
//! the YAML 1.2 core schema's tags are accepted (a recipe never constructs objects).
//!
//! Plain scalars resolve by the YAML 1.2 core schema (`yes`/`no` stay strings, `2e-4` is a float),
//! plus one YAML 1.1 form PyYAML reads and Axolotl's configs write: a decimal integer grouped with
//! underscores (`sequence_len: 500_000` is 500000).

use super::source::{SourceId, Span};
use saphyr_parser::{Event, Parser, ScalarStyle, Span as YamlSpan};
use std::collections::HashMap;

/// Deepest nesting of mappings and sequences a recipe may use.
pub const MAX_DEPTH: usize = 64;
/// Most nodes one document may hold once aliases are expanded.
pub const MAX_NODES: usize = 100_000;

/// A value with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` pair of a mapping; keys are always strings in a recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_span: Span,
    pub value: Node,
}

/// A located YAML problem.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub span: Span,
    /// A second place the problem involves (the first definition of a duplicate key).
    pub related: Option<Span>,
    pub message: String,
    pub rule: &'static str,
}

impl YamlError {
    fn new(rule: &'static str, span: Span, message: impl Into<String>) -> YamlError {
        YamlError { span, related: None, message: message.into(), rule }
    }
}

impl Node {
    pub fn new(value: Value, span: Span) -> Node {
        Node { value, span }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    pub fn as_map(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Vec<Entry>> {
        match &mut self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The entry for `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.as_map()?.iter().find(|e| e.key == key)
    }

    /// Number of nodes in this subtree (used to bound alias expansion).
    pub fn size(&self) -> usize {
        1 + match &self.value {
            Value::Seq(items) => items.iter().map(Node::size).sum(),
            Value::Map(entries) => entries.iter().map(|e| e.value.size()).sum(),
            _ => 0,
        }
    }

    /// A short human description of the value's kind, for "found ..." messages.
    pub fn kind_name(&self) -> &'static str {
        self.value.kind_name()
    }

    /// Converts to JSON, the form the schema validator and serde read.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(entries.iter().map(|e| (e.key.clone(), e.value.to_json())).collect()),
        }
    }
}

impl Value {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "number",
            Value::String(_) => "string",
            Value::Seq(_) => "list",
            Value::Map(_) => "mapping",
        }
    }
}

/// Parses one YAML document. `offset` shifts every span (used for `--set key=value`, where the value
/// starts after the `=`).
pub fn parse(text: &str, source: SourceId, offset: usize) -> Result<Option<Node>, YamlError> {
    let mut builder = Builder {
        text,
        source,
        offset,
        char_to_byte: CharToByte::new(text),
        anchors: HashMap::new(),
        nodes: 0,
        inserted: Vec::new(),
    };
    let error = match builder.document() {
        Ok(node) => return Ok(node),
        Err(e) => e,
    };
    // PyYAML's safe_load (what Axolotl reads recipes with) accepts a flow collection whose later
    // lines sit at or left of its block's indentation (Axolotl's examples/llama-3/
    // sparse-finetuning.yaml closes `targets: [` at the key's column), which YAML forbids and
    // saphyr refuses. Such lines are indented past the block and the text parsed again; spans
    // are mapped back to the text as written. Anything else keeps the first error.
    if error.rule != "yaml-syntax" {
        return Err(error);
    }
    let Some((indented, inserted)) = indent_flow_continuations(text) else { return Err(error) };
    let mut again = Builder {
        text: &indented,
        source,
        offset,
        char_to_byte: CharToByte::new(&indented),
        anchors: HashMap::new(),
        nodes: 0,
        inserted,
    };
    again.document().map_err(|_| error)
}

/// The text with every line inside a multi-line flow collection (outside quotes) indented past
/// the indentation of the block the collection opened in, and where spaces were inserted
/// (byte offset in `text`, count); None when no line needed it.
fn indent_flow_continuations(text: &str) -> Option<(String, Vec<(usize, usize)>)> {
    let mut out = String::with_capacity(text.len() + 64);
    let mut inserted = Vec::new();
    let (mut depth, mut block_indent) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    // Whether the next significant character starts a value (so a quote or bracket opens one).
    let mut value_next = true;
    let mut line_start = 0usize;
    for line in text.split_inclusive('\n') {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if depth > 0 && quote.is_none() && !line.trim().is_empty() && indent <= block_indent {
            let add = block_indent + 1 - indent;
            inserted.push((line_start, add));
            out.extend(std::iter::repeat_n(' ', add));
        }
        out.push_str(line);
        // A block line starts with a key, an entry or a value; inside a flow the state carries on.
        if depth == 0 {
            value_next = true;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            let ends_token = |n: Option<char>| n.is_none_or(char::is_whitespace);
            if let Some(q) = quote {
                match (q, c) {
                    ('\'', '\'') if next == Some('\'') => i += 1,
                    ('"', '\\') => i += 1,
                    (q, c) if q == c => quote = None,
                    _ => {}
                }
                i += 1;
                continue;
            }
            match c {
                '#' if i == 0 || chars[i - 1].is_whitespace() => break,
                c if c.is_whitespace() => {}
                '\'' | '"' if value_next => {
                    quote = Some(c);
                    value_next = false;
                }
                '[' | '{' if value_next || depth > 0 => {
                    if depth == 0 {
                        // The block's indentation: the line's, past any `- ` of sequence entries.
                        let body = line.trim_start_matches([' ', '-']);
                        block_indent = line.len() - body.len();
                    }
                    depth += 1;
                    value_next = true;
                }
                ']' | '}' if depth > 0 => {
                    depth -= 1;
                    value_next = false;
                }
                ',' if depth > 0 => value_next = true,
                ':' if ends_token(next) || depth > 0 => value_next = true,
                '-' if depth == 0 && value_next && ends_token(next) => {}
                _ => value_next = false,
            }
            i += 1;
        }
        line_start += line.len();
    }
    (!inserted.is_empty()).then_some((out, inserted))
}

/// saphyr reports character indexes; diagnostics need byte offsets.
struct CharToByte {
    /// Byte offset of each character, only when the text is not pure ASCII.
    offsets: Option<Vec<usize>>,
    len: usize,
}

impl CharToByte {
    fn new(text: &str) -> Self {
        let offsets = (!text.is_ascii()).then(|| text.char_indices().map(|(b, _)| b).collect());
        CharToByte { offsets, len: text.len() }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.offsets {
            None => char_index.min(self.len),
            Some(offsets) => offsets.get(char_index).copied().unwrap_or(self.len),
        }
    }
}

struct Builder<'a> {
    text: &'a str,
    source: SourceId,
    offset: usize,
    char_to_byte: CharToByte,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    /// Spaces `indent_flow_continuations` inserted (offset in the text as written, count): spans
    /// of the parsed text map back through them.
    inserted: Vec<(usize, usize)>,
}

type Events<'a> = Parser<'a, saphyr_parser::StrInput<'a>>;

impl<'a> Builder<'a> {
    fn span(&self, span: &YamlSpan) -> Span {
        let start = self.written(self.char_to_byte.byte(span.start.index())) + self.offset;
        let end = self.written(self.char_to_byte.byte(span.end.index())) + self.offset;
        Span::new(self.source, start, end.max(start))
    }

    fn point(&self, char_index: usize) -> Span {
        let at = self.written(self.char_to_byte.byte(char_index)) + self.offset;
        Span::new(self.source, at, at)
    }

    /// A byte offset of the parsed text as an offset of the text as written.
    fn written(&self, at: usize) -> usize {
        let mut shift = 0;
        for &(orig, count) in &self.inserted {
            let parsed = orig + shift;
            if at < parsed {
                break;
            }
            if at < parsed + count {
                return orig;
            }
            shift += count;
        }
        at - shift
    }

    fn next(&self, events: &mut Events<'a>) -> Result<(Event<'a>, YamlSpan), YamlError> {
        match events.next_event() {
            Some(Ok(pair)) => Ok(pair),
            Some(Err(e)) => Err(YamlError::new(
                "yaml-syntax",
                self.point(e.marker().index()),
                format!("YAML syntax error: {}", e.info()),
            )),
            None => Err(YamlError::new(
                "yaml-syntax",
                self.point(self.text.chars().count()),
                "YAML syntax error: unexpected end of input",
            )),
        }
    }

    fn document(&mut self) -> Result<Option<Node>, YamlError> {
        let mut events = Parser::new_from_str(self.text);
        let mut root = None;
        loop {
            let (event, span) = self.next(&mut events)?;
            match event {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(root),
                Event::DocumentStart(_) => {
                    if root.is_some() {
                        return Err(YamlError::new(
                            "yaml-multiple-documents",
                            self.span(&span),
                            "a recipe is a single YAML document; found a second `---` document",
                        ));
                    }
                    let (first, first_span) = self.next(&mut events)?;
                    if matches!(first, Event::DocumentEnd) {
                        root = Some(Node::new(Value::Null, self.span(&first_span)));
                        continue;
                    }
                    root = Some(self.node(&mut events, first, first_span, 0)?);
                }
                _ => {
                    root = Some(self.node(&mut events, event, span, 0)?);
                }
            }
        }
    }

    fn count(&mut self, n: usize, span: Span) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(YamlError::new(
                "yaml-too-large",
                span,
                format!(
                    "the document expands to more than {MAX_NODES} values (alias expansion?); \
                     a recipe is far smaller: is this a \"billion laughs\" document?"
                ),
            ));
        }
        Ok(())
    }

    /// Remembers a node under its anchor (0: none) for later aliases.
    fn anchored(&mut self, anchor: usize, node: Node) -> Node {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        node
    }

    fn node(
        &mut self,
        events: &mut Events<'a>,
        event: Event<'a>,
        yspan: YamlSpan,
        depth: usize,
    ) -> Result<Node, YamlError> {
        let span = self.span(&yspan);
        if depth > MAX_DEPTH {
            return Err(YamlError::new("yaml-too-deep", span, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        match event {
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| YamlError::new("yaml-syntax", span, "alias to an unknown anchor"))?;
                self.count(node.size(), span)?;
                // The alias stands where it is written, so point there, not at the anchor.
                Ok(Node { span, ..node })
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, span)?;
                let value = resolve_scalar(&text, style, tag.as_deref(), span)?;
                Ok(self.anchored(anchor, Node::new(value, span)))
            }
            Event::SequenceStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq", span)?;
                self.count(1, span)?;
                let mut items = Vec::new();
                let end = loop {
                    let (ev, sp) = self.next(events)?;
                    if matches!(ev, Event::SequenceEnd) {
                        break self.span(&sp);
                    }
                    items.push(self.node(events, ev, sp, depth + 1)?);
                };
                Ok(self.anchored(anchor, Node::new(Value::Seq(items), span.to(end))))
            }
            Event::MappingStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map", span)?;
                self.count(1, span)?;
                let mut entries: Vec<Entry> = Vec::new();
                let end = loop {
                    let (ev, sp) = self.next(events)?;
                    if matches!(ev, Event::MappingEnd) {
                        break self.span(&sp);
                    }
                    let key_node = self.node(events, ev, sp, depth + 1)?;
                    let key = match &key_node.value {
                        Value::String(s) => s.clone(),
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Null => {
                            return Err(YamlError::new("yaml-key", key_node.span, "empty mapping key"));
                        }
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(YamlError::new(
                                "yaml-key",
                                key_node.span,
                                "mapping keys must be plain names, not lists or mappings",
                            ));
                        }
                    };
                    if key == "<<" {
                        return Err(YamlError::new(
                            "yaml-merge-key",
                            key_node.span,
                            "YAML merge keys (`<<`) are not supported; use `extends:` to \
                                      build on another recipe",
                        ));
                    }
                    let (ev, sp) = self.next(events)?;
                    let value = self.node(events, ev, sp, depth + 1)?;
                    if let Some(first) = entries.iter().find(|e| e.key == key) {
                        return Err(YamlError {
                            related: Some(first.key_span),
                            span: key_node.span,
                            message: format!("duplicate key `{key}`: YAML keys must be unique"),
                            rule: "yaml-duplicate-key",
                        });
                    }
                    entries.push(Entry { key, key_span: key_node.span, value });
                };
                Ok(self.anchored(anchor, Node::new(Value::Map(entries), span.to(end))))
            }
            other => Err(YamlError::new("yaml-syntax", span, format!("YAML syntax error: unexpected {other:?}"))),
        }
    }
}

fn check_collection_tag(tag: Option<&saphyr_parser::Tag>, expected: &str, span: Span) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(t) if t.is_yaml_core_schema() && t.suffix == expected => Ok(()),
        Some(t) => Err(unsupported_tag(t, span)),
    }
}

fn unsupported_tag(tag: &saphyr_parser::Tag, span: Span) -> YamlError {
    YamlError::new(
        "yaml-tag",
        span,
        format!(
            "YAML tag `{}{}` is not allowed: a recipe holds plain data only (YAML 1.2 core tags \
             `!!str`, `!!int`, `!!float`, `!!bool`, `!!null`)",
            tag.handle, tag.suffix
        ),
    )
}

fn resolve_scalar(
    text: &str,
    style: ScalarStyle,
    tag: Option<&saphyr_parser::Tag>,
    span: Span,
) -> Result<Value, YamlError> {
    if let Some(tag) = tag {
        if !tag.is_yaml_core_schema() {
            return Err(unsupported_tag(tag, span));
        }
        let bad = || YamlError::new("yaml-tag", span, format!("`{text}` is not a valid `!!{}`", tag.suffix));
        return match tag.suffix.as_str() {
            "str" => Ok(Value::String(text.to_owned())),
            "null" => Ok(Value::Null),
            "bool" => resolve_plain(text).filter(|v| matches!(v, Value::Bool(_))).ok_or_else(bad),
            "int" => resolve_plain(text).filter(|v| matches!(v, Value::Int(_))).ok_or_else(bad),
            "float" => match resolve_plain(text) {
                Some(Value::Float(f)) => Ok(Value::Float(f)),
                Some(Value::Int(i)) => Ok(Value::Float(i as f64)),
                _ => Err(bad()),
            },
            _ => Err(unsupported_tag(tag, span)),
        };
    }
    if style != ScalarStyle::Plain {
        return Ok(Value::String(text.to_owned()));
    }
    Ok(resolve_plain(text).unwrap_or_else(|| Value::String(text.to_owned())))
}

/// YAML 1.2 core schema resolution of a plain scalar; `None` means "a string".
fn resolve_plain(text: &str) -> Option<Value> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Some(Value::Float(f64::INFINITY));
        }
        "-.inf" | "-.Inf" | "-.INF" => return Some(Value::Float(f64::NEG_INFINITY)),
        ".nan" | ".NaN" | ".NAN" => return Some(Value::Float(f64::NAN)),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok().map(Value::Int);
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return i64::from_str_radix(oct, 8).ok().map(Value::Int);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // Too large for i64: keep it a float so "absurd number" checks still see it.
        return Some(
            text.parse::<i64>()
                .map(Value::Int)
                .unwrap_or_else(|_| Value::Float(text.parse::<f64>().unwrap_or(f64::INFINITY))),
        );
    }
    if is_core_float(digits) {
        return text.parse::<f64>().ok().map(Value::Float);
    }
    // PyYAML's YAML 1.1 decimal int `[-+]?[1-9][0-9_]*`, here only where an underscore makes it
    // differ from the core schema.
    if digits.starts_with(|c: char| matches!(c, '1'..='9'))
        && digits.contains('_')
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return resolve_plain(&text.replace('_', ""));
    }
    None
}

/// `( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_core_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.first() == Some(&b'.') {
        i = 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Option<Node>, YamlError> {
        parse(text, SourceId(0), 0)
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let root = p("a: 2e-4\nb: yes\nc: 0x10\nd:\ne: '1'\nf: 3\ng: -1.5\nh: .5\n").unwrap().unwrap();
        let v = |k: &str| root.get(k).unwrap().value.value.clone();
        assert_eq!(v("a"), Value::Float(2e-4));
        assert_eq!(v("b"), Value::String("yes".into()));
        assert_eq!(v("c"), Value::Int(16));
        assert_eq!(v("d"), Value::Null);
        assert_eq!(v("e"), Value::String("1".into()));
        assert_eq!(v("f"), Value::Int(3));
        assert_eq!(v("g"), Value::Float(-1.5));
        assert_eq!(v("h"), Value::Float(0.5));
    }

    #[test]
    fn underscore_grouped_integers_read_as_pyyaml_reads_them() {
        let root = p("a: 500_000\nb: -1_0\nc: _1\nd: 0_1\ne: 1_0.5\nf: '2_000'\n").unwrap().unwrap();
        let v = |k: &str| root.get(k).unwrap().value.value.clone();
        assert_eq!(v("a"), Value::Int(500_000));
        assert_eq!(v("b"), Value::Int(-10));
        assert_eq!(v("c"), Value::String("_1".into()));
        assert_eq!(v("d"), Value::String("0_1".into()), "PyYAML reads a leading 0 as octal: left a string");
        assert_eq!(v("e"), Value::String("1_0.5".into()));
        assert_eq!(v("f"), Value::String("2_000".into()));
    }

    #[test]
    fn spans_are_byte_offsets_even_after_unicode() {
        let text = "name: \"héllo wörld\"\nlora_r: 8\n";
        let root = p(text).unwrap().unwrap();
        let e = root.get("lora_r").unwrap();
        assert_eq!(&text[e.key_span.start..e.key_span.end], "lora_r");
        assert_eq!(&text[e.value.span.start..e.value.span.end], "8");
    }

    #[test]
    fn a_flow_sequence_closed_at_its_keys_indentation_parses_as_pyyaml_reads_it() {
        // The shape of Axolotl's examples/llama-3/sparse-finetuning.yaml.
        let text = "recipe:\n  mods:\n    targets: [\n      're:.*q_proj.weight',\n      \"b]#\",\n    ]\n    \
                    after: [1,\n  2]\n    x: 'it''s [' # [\nlast: {a: [1,\n2]}\ntail: 3\n";
        let mut strict = Builder {
            text,
            source: SourceId(0),
            offset: 0,
            char_to_byte: CharToByte::new(text),
            anchors: HashMap::new(),
            nodes: 0,
            inserted: Vec::new(),
        };
        assert_eq!(strict.document().unwrap_err().rule, "yaml-syntax", "saphyr alone refuses this shape");
        let root = p(text).unwrap().unwrap();
        let mods = root.get("recipe").unwrap().value.get("mods").unwrap();
        let targets = mods.value.get("targets").unwrap();
        assert_eq!(targets.value.to_json(), serde_json::json!(["re:.*q_proj.weight", "b]#"]));
        assert_eq!(mods.value.get("after").unwrap().value.to_json(), serde_json::json!([1, 2]));
        assert_eq!(mods.value.get("x").unwrap().value.to_json(), serde_json::json!("it's ["));
        assert_eq!(root.get("last").unwrap().value.to_json(), serde_json::json!({"a": [1, 2]}));
        // Spans point into the text as written.
        let items = match &targets.value.value {
            Value::Seq(items) => items,
            _ => unreachable!(),
        };
        assert_eq!(&text[items[0].span.start..items[0].span.end], "'re:.*q_proj.weight'");
        let tail = root.get("tail").unwrap();
        assert_eq!(&text[tail.key_span.start..tail.key_span.end], "tail");
        assert_eq!(&text[tail.value.span.start..tail.value.span.end], "3");
        // A real error keeps its first message and place.
        let err = p("a: [1,\n]\nb: : :\n").unwrap_err();
        assert_eq!(err.rule, "yaml-syntax");
    }

    #[test]
    fn alias_bomb_fails_fast() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let err = p(&text).unwrap_err();
        assert_eq!(err.rule, "yaml-too-large");
    }

    #[test]
    fn duplicate_keys_and_python_tags_are_errors() {
        assert_eq!(p("a: 1\na: 2\n").unwrap_err().rule, "yaml-duplicate-key");
        assert_eq!(p("a: !!python/object:os.system x\n").unwrap_err().rule, "yaml-tag");
        assert_eq!(p("a: 1\n---\nb: 2\n").unwrap_err().rule, "yaml-multiple-documents");
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let text = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(p(&text).unwrap_err().rule, "yaml-too-deep");
    }
}

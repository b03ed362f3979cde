//! Chat templates: Jinja text rendered the way transformers' `apply_chat_template` renders it, so
//! that the same messages give the same bytes.
//!
//! transformers compiles a template in `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True, extensions=[AssistantTracker, loopcontrols])` (jinja2's default
//! `keep_trailing_newline=False`: one trailing newline of the template is dropped), overrides the
//! `tojson` filter (`json.dumps` with `ensure_ascii=False` and its `indent` / `separators` /
//! `sort_keys` arguments), and adds the globals `raise_exception(message)` and
//! `strftime_now(format)`. It renders with `messages`, `tools`, `documents`,
//! `add_generation_prompt` and the tokenizer's named special tokens (`bos_token`, `eos_token`, ...)
//! in the context, after dropping the `None`-valued keys of every message and aliasing the reasoning
//! fields (`reasoning_content` / `thinking` / `reasoning`).
//!
//! Here the same on minijinja: its sandbox (no filesystem, no `include` of other files, a
//! recursion limit; no code can run), `trim_blocks` + `lstrip_blocks`, loop controls, Python's
//! string and dict methods (minijinja-contrib's `pycompat`), and these transformers pieces
//! re-implemented:
//! - `{{ value }}` prints what Python's `str()` prints: `None`, `True`/`False`, floats as `repr`,
//!   lists and dicts in Python's repr (`['a', 1]`, `{'k': None}`); undefined prints nothing;
//! - `tojson` is Python's `json.dumps` byte for byte (separators, indentation, float repr,
//!   `ensure_ascii`, `sort_keys`);
//! - `raise_exception(msg)` fails the render with `msg` (see [`TemplateError::raised`]);
//! - `strftime_now(fmt)` formats the current UTC time (Python uses local time), or a pinned one
//!   ([`ChatTemplate::with_fixed_date`]) for reproducible renders;
//! - `{% generation %}...{% endgeneration %}` (transformers' assistant-mask tag) renders its body.
//!
//! tests/templates.rs checks every template of the project against goldens written by
//! scripts/reference/template_goldens.py with transformers' own `render_jinja_template`.

use crate::config::chat_template::ChatTemplateName;
use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

const TEMPLATE_KEY: &str = "chat_template";

/// The tokenizer's named special tokens as text, as transformers passes them to a template
/// (`special_tokens_map`: only those the tokenizer has).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokenStrings {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub sep_token: Option<String>,
    pub pad_token: Option<String>,
    pub cls_token: Option<String>,
    pub mask_token: Option<String>,
}

impl SpecialTokenStrings {
    /// Reads the named special tokens of a tokenizer_config.json: a string, or an `AddedToken`
    /// object `{"content": ...}` as older files write them.
    pub fn from_tokenizer_config(config: &serde_json::Value) -> SpecialTokenStrings {
        let get = |k: &str| -> Option<String> {
            let v = config.get(k)?;
            v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str())).map(str::to_owned)
        };
        SpecialTokenStrings {
            bos_token: get("bos_token"),
            eos_token: get("eos_token"),
            unk_token: get("unk_token"),
            sep_token: get("sep_token"),
            pad_token: get("pad_token"),
            cls_token: get("cls_token"),
            mask_token: get("mask_token"),
        }
    }

    /// The special tokens of a model folder's tokenizer as transformers resolves them
    /// (tokenizer_config.json, special_tokens_map.json, the class's defaults: the same texts the
    /// tokenizer's ids come from, see `tokenizer::special_token_texts`); none without those files.
    pub fn from_model_dir(dir: &Path) -> Result<SpecialTokenStrings, String> {
        let (_, named) = super::tokenizer::special_token_texts(dir)?;
        Ok(SpecialTokenStrings::from_tokenizer_config(&serde_json::Value::Object(named)))
    }

    /// Fills a missing BOS with `<s>` and a missing EOS with `</s>` (the Llama/Mistral tokens).
    pub fn or_llama_defaults(mut self) -> SpecialTokenStrings {
        self.bos_token.get_or_insert_with(|| "<s>".into());
        self.eos_token.get_or_insert_with(|| "</s>".into());
        self
    }

    fn entries(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("unk_token", &self.unk_token),
            ("sep_token", &self.sep_token),
            ("pad_token", &self.pad_token),
            ("cls_token", &self.cls_token),
            ("mask_token", &self.mask_token),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }
}

/// A pinned wall-clock time for `strftime_now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedDate {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl FixedDate {
    /// Now, in UTC: pin it once per run so every row renders with the same date.
    pub fn today() -> FixedDate {
        now_utc()
    }
}

/// Why a render failed. `Display` gives `chat template `NAME`: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// The template's name (as given to [`ChatTemplate::new`]).
    pub template: String,
    /// What went wrong (for `raise_exception`, the template's own message).
    pub message: String,
    raised: bool,
}

impl TemplateError {
    /// The message of the template's own `raise_exception(...)` call, if that is what failed.
    pub fn raised(&self) -> Option<&str> {
        self.raised.then_some(self.message.as_str())
    }
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chat template `{}`: {}", self.template, self.message)
    }
}

impl std::error::Error for TemplateError {}

impl From<TemplateError> for String {
    fn from(e: TemplateError) -> String {
        e.to_string()
    }
}

/// Marks an error as the template's own `raise_exception(...)`.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    name: String,
    source: Arc<str>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `name` names the template in errors. A syntax error is an `Err` with its
    /// line.
    pub fn new(source: &str, name: &str) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        // A template is data from a recipe or a model folder: its rendering is bounded.
        env.set_fuel(Some(RENDER_FUEL));
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            let mut s = String::new();
            py_str(value, &mut s);
            out.write_str(&s).map_err(|_| Error::new(ErrorKind::WriteFailure, "cannot write the output"))
        });
        env.add_filter("tojson", tojson_filter);
        env.add_filter("string", |v: Value| {
            let mut s = String::new();
            py_str(&v, &mut s);
            s
        });
        env.add_filter("round", round_filter);
        // jinja2's wordcount: the number of `\w+` runs.
        env.add_filter("wordcount", |s: String| {
            let word = |c: char| c.is_alphanumeric() || c == '_';
            s.split(|c: char| !word(c)).filter(|w| !w.is_empty()).count()
        });
        env.add_function("raise_exception", |message: Value| -> Result<Value, Error> {
            let mut text = String::new();
            py_str(&message, &mut text);
            Err(Error::new(ErrorKind::InvalidOperation, text.clone()).with_source(Raised(text)))
        });
        env.add_function("strftime_now", strftime_function(None));
        env.add_test("none", |v: Value| v.is_none() || v.downcast_object_ref::<PyNone>().is_some());
        let prepared = rewrite_generation_tags(source);
        env.add_template_owned(TEMPLATE_KEY, prepared).map_err(|e| TemplateError {
            template: name.to_string(),
            message: describe(&e),
            raised: false,
        })?;
        Ok(ChatTemplate { env, name: name.to_string(), source: Arc::from(source) })
    }

    /// Pins the clock `strftime_now` reads (for reproducible renders and tests).
    pub fn with_fixed_date(mut self, date: FixedDate) -> ChatTemplate {
        self.env.add_function("strftime_now", strftime_function(Some(date)));
        self
    }

    /// The template's name, as given to [`ChatTemplate::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The template text, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` (JSON objects) as transformers' `apply_chat_template(messages,
    /// tools=tools, add_generation_prompt=..., tokenize=False)` does with these special tokens.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
        special: &SpecialTokenStrings,
    ) -> Result<String, TemplateError> {
        let err = |message: String| TemplateError { template: self.name.clone(), message, raised: false };
        let mut prepared = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let obj = m.as_object().ok_or_else(|| err(format!("message {i} is not a JSON object")))?;
            prepared.push(normalize_message(obj));
        }
        let mut ctx = std::collections::BTreeMap::<&str, Value>::new();
        for (k, v) in special.entries() {
            ctx.insert(k, Value::from(v));
        }
        ctx.insert("messages", Value::from_serialize(&prepared));
        ctx.insert("tools", tools.map(Value::from_serialize).unwrap_or_else(py_none));
        ctx.insert("documents", py_none());
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        let template = self.env.get_template(TEMPLATE_KEY).map_err(|e| err(describe(&e)))?;
        let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| template.render(&ctx)))
            .map_err(|_| err("the template engine panicked".into()))?;
        rendered.map_err(|e| match raised_message(&e) {
            Some(message) => TemplateError { template: self.name.clone(), message, raised: true },
            None => err(describe(&e)),
        })
    }
}

/// Python's `None` as transformers passes it for `tools` and `documents` when there are none: it
/// tests as `none` and is false, but unlike minijinja's none (an empty sequence) iterating it is
/// an error, as in Python (a template that loops over `tools` unguarded fails in both).
#[derive(Debug)]
struct PyNone;

impl minijinja::value::Object for PyNone {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Plain
    }

    fn is_true(self: &Arc<Self>) -> bool {
        false
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("None")
    }
}

fn py_none() -> Value {
    Value::from_object(PyNone)
}

/// transformers' message preparation: keys whose value is null are dropped
/// (`_normalize_chat_messages`), and a message's reasoning, under any of its names, is also
/// given as `thinking` and `reasoning_content` (`_alias_reasoning_fields`).
fn normalize_message(m: &serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    let mut out: serde_json::Map<String, serde_json::Value> =
        m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
    let reasoning = ["reasoning_content", "thinking", "reasoning"].iter().find_map(|k| out.get(*k).cloned());
    if let Some(r) = reasoning {
        let mut aliased = serde_json::Map::new();
        aliased.insert("thinking".into(), r.clone());
        for (k, v) in out {
            aliased.insert(k, v);
        }
        aliased.insert("reasoning_content".into(), r);
        out = aliased;
    }
    serde_json::Value::Object(out)
}

fn raised_message(e: &Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Raised>() {
            return Some(r.0.clone());
        }
        cur = err.source();
    }
    None
}

/// Template instructions one render may run: chat templates take thousands per conversation; a
/// template looping without bound stops here instead of running for minutes.
pub const RENDER_FUEL: u64 = 20_000_000;

/// The widest `tojson` indent a template may ask for (json.dumps takes any).
const MAX_TOJSON_INDENT: i64 = 64;

fn describe(e: &Error) -> String {
    if e.kind() == ErrorKind::OutOfFuel {
        return format!(
            "rendering stopped after {RENDER_FUEL} template instructions (recipe's limit): the template loops \
             far more than a chat template needs"
        );
    }
    let mut s = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        let _ = write!(s, " (line {line})");
    }
    s
}

/// `{% generation %}` / `{% endgeneration %}` (transformers' AssistantTracker tag, which renders
/// its body) become `{% if true %}` / `{% endif %}` with the same whitespace control, so they
/// render the same.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = split_marker_front(inner);
        let (body, trail) = split_marker_back(body);
        let word = body.trim();
        let replacement = match word {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                let _ = write!(out, "{{%{lead} {r} {trail}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn split_marker_front(s: &str) -> (&str, &str) {
    match s.chars().next() {
        Some(c @ ('-' | '+')) => (&s[..c.len_utf8()], &s[c.len_utf8()..]),
        _ => ("", s),
    }
}

fn split_marker_back(s: &str) -> (&str, &str) {
    match s.chars().last() {
        Some(c @ ('-' | '+')) => (&s[..s.len() - c.len_utf8()], &s[s.len() - c.len_utf8()..]),
        _ => (s, ""),
    }
}

// ---------------------------------------------------------------------------------------------
// Python's str() and repr() of template values

/// Python's `str(value)` (what jinja2 prints for `{{ value }}`).
fn py_str(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::String => out.push_str(v.as_str().unwrap_or_default()),
        _ => py_repr(v, out),
    }
}

/// Python's `repr(value)`.
fn py_repr(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => {
            if v.is_integer() {
                let _ = write!(out, "{v}");
            } else {
                match f64::try_from(v.clone()) {
                    Ok(f) => out.push_str(&py_float_repr(f, false)),
                    Err(_) => {
                        let _ = write!(out, "{v}");
                    }
                }
            }
        }
        ValueKind::String => py_str_repr(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq => {
            out.push('[');
            if let Ok(iter) = v.try_iter() {
                for (i, item) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&item, out);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(iter) = v.try_iter() {
                for (i, key) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&key, out);
                    out.push_str(": ");
                    py_repr(&v.get_item(&key).unwrap_or_default(), out);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn py_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `repr(float)` (shortest round-trip digits; scientific below 1e-4 and from 1e16), or
/// with `json` set, what `json.dumps` writes (`NaN`, `Infinity`).
fn py_float_repr(f: f64, json: bool) -> String {
    if f.is_nan() {
        return if json { "NaN" } else { "nan" }.into();
    }
    if f.is_infinite() {
        let s = if json { "Infinity" } else { "inf" };
        return if f < 0.0 { format!("-{s}") } else { s.into() };
    }
    // Shortest round-trip digits and the decimal exponent, from Rust's `{:e}` ("d.ddde±x").
    let sci = format!("{:e}", f);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        if exp >= 0 {
            let int_len = (exp + 1) as usize;
            if digits.len() <= int_len {
                format!("{sign}{}{}.0", digits, "0".repeat(int_len - digits.len()))
            } else {
                format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            let _ = n;
            format!("{sign}0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        }
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// jinja2's `round(value, precision=0, method='common')`: Python's `round` (ties to even, on the
/// exact binary value), or `ceil` / `floor`; integers stay integers with `common`.
fn round_filter(value: Value, precision: Option<i32>, method: Option<String>) -> Result<Value, Error> {
    let precision = precision.unwrap_or(0);
    let method = method.as_deref().unwrap_or("common");
    if !matches!(method, "common" | "ceil" | "floor") {
        return Err(Error::new(ErrorKind::InvalidOperation, "method must be common, ceil or floor"));
    }
    if value.is_integer() && method == "common" {
        return Ok(value);
    }
    let f = f64::try_from(value)?;
    let scale = 10f64.powi(precision);
    let rounded = match method {
        "ceil" => (f * scale).ceil() / scale,
        "floor" => (f * scale).floor() / scale,
        // Rust's fixed-precision formatting rounds the exact binary value, ties to even, like
        // Python's round()
        _ if precision >= 0 => format!("{:.*}", precision as usize, f).parse().unwrap_or(f),
        _ => (f / 10f64.powi(-precision)).round_ties_even() * 10f64.powi(-precision),
    };
    Ok(Value::from(rounded))
}

// ---------------------------------------------------------------------------------------------
// tojson: Python's json.dumps

struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn tojson_filter(value: Value, args: Rest<Value>) -> Result<Value, Error> {
    // json.dumps-style arguments: positional (ensure_ascii, indent, separators, sort_keys) or named.
    let mut positional: Vec<Value> = args.0;
    let kwargs = match positional.last() {
        Some(last) if last.is_kwargs() => Kwargs::try_from(positional.pop().unwrap())?,
        _ => Kwargs::from_iter(std::iter::empty::<(&str, Value)>()),
    };
    if positional.len() > 4 {
        return Err(Error::new(ErrorKind::TooManyArguments, "tojson takes at most 4 positional arguments"));
    }
    let mut positional = positional.into_iter();
    let (ensure_ascii, indent, separators, sort_keys) =
        (positional.next(), positional.next(), positional.next(), positional.next());
    let pick = |positional: Option<Value>, name: &str| -> Result<Option<Value>, Error> {
        let named: Option<Value> = kwargs.get(name)?;
        Ok(named.or(positional))
    };
    let ensure_ascii = pick(ensure_ascii, "ensure_ascii")?.map(|v| v.is_true()).unwrap_or(false);
    let indent = match pick(indent, "indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string")
            })?;
            if n > MAX_TOJSON_INDENT {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: indent {n} is over recipe's limit of {MAX_TOJSON_INDENT}"),
                ));
            }
            Some(" ".repeat(n.max(0) as usize))
        }
    };
    let (item_sep, key_sep) = match pick(separators, "separators")? {
        Some(v) if !(v.is_none() || v.is_undefined()) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                    (a.as_str().unwrap().to_string(), b.as_str().unwrap().to_string())
                }
                _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
            }
        }
        _ => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
    };
    let sort_keys = pick(sort_keys, "sort_keys")?.map(|v| v.is_true()).unwrap_or(false);
    kwargs.assert_all_used()?;
    let opts = JsonOptions { ensure_ascii, indent, item_sep, key_sep, sort_keys };
    let mut out = String::new();
    json_dump(&value, &opts, 0, &mut out, 0)?;
    Ok(Value::from(out))
}

fn json_dump(v: &Value, o: &JsonOptions, level: usize, out: &mut String, depth: usize) -> Result<(), Error> {
    if depth > 256 {
        return Err(Error::new(ErrorKind::InvalidOperation, "tojson: nesting too deep"));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined => {
            return Err(Error::new(ErrorKind::InvalidOperation, "Object of type Undefined is not JSON serializable"));
        }
        ValueKind::None => out.push_str("null"),
        _ if v.downcast_object_ref::<PyNone>().is_some() => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                let _ = write!(out, "{v}");
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&py_float_repr(f, true));
            }
        }
        ValueKind::String => json_string(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                json_dump(item, o, level + 1, out, depth + 1)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let value = v.get_item(&key)?;
                let k = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                    ValueKind::None => "null".into(),
                    ValueKind::Bool => if key.is_true() { "true" } else { "false" }.into(),
                    ValueKind::Number if !key.is_integer() => py_float_repr(f64::try_from(key.clone())?, true),
                    ValueKind::Number => key.to_string(),
                    other => {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            format!("keys must be str, int, float, bool or None, not {other}"),
                        ));
                    }
                };
                entries.push((k, value));
            }
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                json_string(k, o.ensure_ascii, out);
                out.push_str(&o.key_sep);
                json_dump(value, o, level + 1, out, depth + 1)?;
            }
            newline(out, level);
            out.push('}');
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {other} is not JSON serializable"),
            ));
        }
    }
    Ok(())
}

fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------------
// strftime_now

fn strftime_function(
    fixed: Option<FixedDate>,
) -> impl Fn(&State, String) -> Result<String, Error> + Send + Sync + 'static {
    move |_state: &State, format: String| Ok(strftime(&format, fixed.unwrap_or_else(now_utc)))
}

fn now_utc() -> FixedDate {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    FixedDate {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem % 3600 / 60) as u32,
        second: (rem % 60) as u32,
    }
}

/// Days since 1970-01-01 -> (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y as i64 - 1 } else { y as i64 };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// C's strftime (the C locale) for the common directives; `%-d` style (glibc: no padding) too.
fn strftime(format: &str, t: FixedDate) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = days_from_civil(t.year, t.month, t.day);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3)
    let yday = days - days_from_civil(t.year, 1, 1) + 1;
    let month_name = MONTHS[(t.month.clamp(1, 12) - 1) as usize];
    let hour12 = if t.hour.is_multiple_of(12) { 12 } else { t.hour % 12 };
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let num = |out: &mut String, v: i64, width: usize| {
            if no_pad {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:0width$}");
            }
        };
        match chars.next() {
            Some('d') => num(&mut out, t.day as i64, 2),
            Some('e') => {
                let _ = write!(out, "{:>2}", t.day);
            }
            Some('m') => num(&mut out, t.month as i64, 2),
            Some('Y') => {
                let _ = write!(out, "{}", t.year);
            }
            Some('y') => num(&mut out, (t.year as i64).rem_euclid(100), 2),
            Some('H') => num(&mut out, t.hour as i64, 2),
            Some('I') => num(&mut out, hour12 as i64, 2),
            Some('M') => num(&mut out, t.minute as i64, 2),
            Some('S') => num(&mut out, t.second as i64, 2),
            Some('j') => num(&mut out, yday, 3),
            Some('p') => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('u') => {
                let _ = write!(out, "{}", weekday + 1);
            }
            Some('w') => {
                let _ = write!(out, "{}", (weekday + 1) % 7);
            }
            Some('F') => {
                let _ = write!(out, "{}-{:02}-{:02}", t.year, t.month, t.day);
            }
            Some('T') => {
                let _ = write!(out, "{:02}:{:02}:{:02}", t.hour, t.minute, t.second);
            }
            Some('D') => {
                let _ = write!(out, "{:02}/{:02}/{:02}", t.month, t.day, t.year.rem_euclid(100));
            }
            Some('Z') | Some('z') => {}
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Finding a template by name

/// The template text a recipe selects, and where it came from (for the plan and errors):
/// - a built-in name: templates/NAME.jinja (compiled into the binary);
/// - `tokenizer_default`: the model folder's `chat_template.jinja` when it has one (transformers
///   prefers it), else the `chat_template` of its tokenizer_config.json (a string, or the
///   `[{name, template}]` list, of which the entry named `default`);
/// - `jinja`: `inline_or_path` is the template itself when it holds `{{` or `{%`, else a path to
///   a template file, relative to `base_dir` (the recipe's folder).
pub fn resolve(
    name: ChatTemplateName,
    inline_or_path: Option<&str>,
    base_dir: &Path,
    model_dir: &Path,
) -> Result<(String, String), String> {
    if let Some(text) = name.builtin_text() {
        return Ok((text.to_string(), format!("built-in `{}` (templates/{}.jinja)", name.as_str(), name.as_str())));
    }
    match name {
        ChatTemplateName::Jinja => {
            let given = inline_or_path
                .filter(|s| !s.trim().is_empty())
                .ok_or("`chat_template: jinja` needs the template in `chat_template_jinja`")?;
            if given.contains("{{") || given.contains("{%") {
                return Ok((given.to_string(), "chat_template_jinja (inline)".into()));
            }
            let path = base_dir.join(given);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!("chat_template_jinja: `{given}` is neither a template (no `{{{{` or `{{%`) nor a readable file ({}: {e})", path.display())
            })?;
            Ok((text, format!("chat_template_jinja file {}", path.display())))
        }
        _ => {
            let file = model_dir.join("chat_template.jinja");
            if file.is_file() {
                let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
                return Ok((text, format!("tokenizer default ({})", file.display())));
            }
            let path = model_dir.join("tokenizer_config.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("`chat_template: tokenizer_default` reads {}: {e}", path.display()))?;
            let config: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
            let template = config_chat_template(&config)
                .map_err(|e| format!("`chat_template: tokenizer_default`: {} {e}", path.display()))?;
            Ok((template, format!("tokenizer default ({} `chat_template`)", path.display())))
        }
    }
}

/// The `chat_template` of a tokenizer_config.json: a string, or a list of `{name, template}` of
/// which the one named `default`.
pub fn config_chat_template(config: &serde_json::Value) -> Result<String, String> {
    match config.get("chat_template") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template").and_then(|t| t.as_str()))
            .map(str::to_owned)
            .ok_or_else(|| {
                let names: Vec<&str> = list.iter().filter_map(|t| t.get("name").and_then(|n| n.as_str())).collect();
                format!("has a list of chat templates ({}) and none named `default`", names.join(", "))
            }),
        Some(_) => Err("has a `chat_template` that is neither a string nor a list".into()),
        None => Err("has no `chat_template`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (22.5, "22.5"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (123456789.125, "123456789.125"),
            (-0.0, "-0.0"),
            (1.5e300, "1.5e+300"),
        ] {
            assert_eq!(py_float_repr(f, false), s, "{f}");
        }
        assert_eq!(py_float_repr(f64::NAN, true), "NaN");
        assert_eq!(py_float_repr(f64::NEG_INFINITY, true), "-Infinity");
    }

    #[test]
    fn strftime_matches_c() {
        let t = FixedDate { year: 2025, month: 3, day: 9, hour: 14, minute: 5, second: 7 };
        assert_eq!(strftime("%d %b %Y", t), "09 Mar 2025");
        assert_eq!(strftime("%A %B %-d, %y %I:%M:%S %p %j %%", t), "Sunday March 9, 25 02:05:07 PM 068 %");
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn generation_tags_render_their_body() {
        assert_eq!(rewrite_generation_tags("a{%- generation -%}b{% endgeneration %}"), "a{%- if true -%}b{% endif %}");
        let t = ChatTemplate::new(
            "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
            "t",
        )
        .unwrap();
        let out = t
            .render(&[serde_json::json!({"role": "user", "content": "hi"})], None, false, &Default::default())
            .unwrap();
        assert_eq!(out, "hi");
    }

    #[test]
    fn python_values_print_as_python() {
        let t = ChatTemplate::new("", "t").unwrap();
        let env_out = t.env.render_str(
            "{{ none }} {{ true }} {{ x }} {{ 1.5 }} {{ x | tojson }} {{ x | tojson(indent=2) }}",
            minijinja::context! { x => serde_json::json!({"a": [1, "it's", null, true, 2.0], "b": {}}) },
        );
        assert_eq!(
            env_out.unwrap(),
            "None True {'a': [1, \"it's\", None, True, 2.0], 'b': {}} 1.5 {\"a\": [1, \"it's\", null, true, 2.0], \"b\": {}} {\n  \"a\": [\n    1,\n    \"it's\",\n    null,\n    true,\n    2.0\n  ],\n  \"b\": {}\n}"
        );
    }

    #[test]
    fn errors_name_the_template() {
        let e = ChatTemplate::new("{% if %}", "broken").unwrap_err();
        assert!(e.to_string().starts_with("chat template `broken`: syntax error"), "{e}");
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "strict").unwrap();
        let e = t.render(&[], None, false, &Default::default()).unwrap_err();
        assert_eq!(e.raised(), Some("no system role"));
        assert_eq!(e.to_string(), "chat template `strict`: no system role");
    }

    #[test]
    fn unbounded_templates_stop_at_the_limit_with_a_named_error() {
        let looping = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(looping, "loops").unwrap();
        let started = std::time::Instant::now();
        let e = t.render(&[], None, false, &Default::default()).unwrap_err();
        assert!(e.to_string().starts_with("chat template `loops`: rendering stopped after"), "{e}");
        assert!(started.elapsed().as_secs() < 60, "the limit must stop it long before minutes pass");
        let wide = ChatTemplate::new("{{ messages | tojson(indent=100000000) }}", "wide").unwrap();
        let e = wide.render(&[], None, false, &Default::default()).unwrap_err();
        assert!(e.to_string().contains("indent 100000000 is over recipe's limit"), "{e}");
    }

    #[test]
    fn templates_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn no_filesystem_access() {
        let t = ChatTemplate::new("{% include '/etc/passwd' %}", "t").unwrap();
        assert!(t.render(&[], None, false, &Default::default()).is_err());
    }

    #[test]
    fn absent_tools_are_python_none() {
        let special = SpecialTokenStrings::default();
        let t = ChatTemplate::new(
            "[{{ tools }}|{{ tools is none }}|{{ tools is not none }}|{{ not tools }}|{{ tools | tojson }}]",
            "t",
        )
        .unwrap();
        assert_eq!(t.render(&[], None, false, &special).unwrap(), "[None|True|False|True|null]");
        let t = ChatTemplate::new("{% for t in tools %}x{% endfor %}", "t").unwrap();
        assert!(t.render(&[], None, false, &special).is_err(), "iterating None fails, as in Python");
        let tools = serde_json::json!([{"name": "f"}]);
        assert_eq!(t.render(&[], Some(&tools), false, &special).unwrap(), "x");
    }
}

//! Chat templates render byte for byte what transformers' `apply_chat_template` renders.
//!
//! The goldens in tests/golden/templates/*.json were written by
//! scripts/reference/template_goldens.py with transformers' own `render_jinja_template` (its
//! versions are in each file): every template of ../shared/assets/chat-templates/hf (copied into
//! tests/golden/templates/sources/, MIT, see the NOTICE there) and every built-in template, each on
//! the same conversations (two turns, system + multi-turn, unicode, a tool call with `tools`, and
//! generation prompts). A case is either the exact text or the error the template raised; for
//! `raise_exception` errors the message must be the same too.

use recipe::config::chat_template::ChatTemplateName;
use recipe::data::template::{ChatTemplate, FixedDate, SpecialTokenStrings, config_chat_template, resolve};
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/templates")
}

fn fixed_date(iso: &str) -> FixedDate {
    // "2025-03-09T10:30:00"
    let n = |r: std::ops::Range<usize>| iso[r].parse::<u32>().unwrap();
    FixedDate {
        year: iso[0..4].parse().unwrap(),
        month: n(5..7),
        day: n(8..10),
        hour: n(11..13),
        minute: n(14..16),
        second: n(17..19),
    }
}

fn template_text(golden: &serde_json::Value) -> String {
    let source = &golden["source"];
    if let Some(file) = source.get("file").and_then(|f| f.as_str()) {
        std::fs::read_to_string(golden_dir().join(file)).unwrap()
    } else if let Some(file) = source.get("tokenizer_config").and_then(|f| f.as_str()) {
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(golden_dir().join(file)).unwrap()).unwrap();
        config_chat_template(&config).unwrap()
    } else {
        let name = source["builtin"].as_str().unwrap();
        let parsed: ChatTemplateName = serde_json::from_value(serde_json::json!(name)).unwrap();
        parsed.builtin_text().unwrap().to_string()
    }
}

fn special_tokens(golden: &serde_json::Value) -> SpecialTokenStrings {
    SpecialTokenStrings::from_tokenizer_config(&golden["special_tokens"])
}

#[test]
fn every_template_matches_transformers_byte_for_byte() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 31, "expected a golden per template, found {}", files.len());
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in &files {
        let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let name = golden["template"].as_str().unwrap();
        let template = match ChatTemplate::new(&template_text(&golden), name) {
            Ok(t) => t.with_fixed_date(fixed_date(golden["fixed_now"].as_str().unwrap())),
            Err(e) => {
                failures.push(format!("{name}: does not compile: {e}"));
                continue;
            }
        };
        let special = special_tokens(&golden);
        for case in golden["cases"].as_array().unwrap() {
            let case_name = case["name"].as_str().unwrap();
            let messages = case["messages"].as_array().unwrap();
            let tools = case.get("tools");
            let add_generation_prompt = case["add_generation_prompt"].as_bool().unwrap();
            let got = template.render(messages, tools, add_generation_prompt, &special);
            checked += 1;
            match (case.get("text").and_then(|t| t.as_str()), got) {
                (Some(want), Ok(got)) if want == got => {}
                (Some(want), Ok(got)) => {
                    failures.push(format!("{name}/{case_name}: rendered\n{got:?}\nwant\n{want:?}"))
                }
                (Some(_), Err(e)) => failures.push(format!("{name}/{case_name}: error {e}, want a text")),
                (None, Ok(got)) => failures.push(format!(
                    "{name}/{case_name}: rendered {got:?}, want the error {}",
                    case["error"].as_str().unwrap()
                )),
                (None, Err(e)) => {
                    let want = case["error"].as_str().unwrap();
                    if case["error_kind"] == "raise_exception" && e.raised() != Some(want) {
                        failures.push(format!("{name}/{case_name}: error {e}, want raise_exception({want:?})"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} renders differ:\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn resolve_finds_builtin_tokenizer_default_and_jinja() {
    let dir = tempfile::tempdir().unwrap();
    let (text, from) = resolve(ChatTemplateName::Chatml, None, dir.path(), dir.path()).unwrap();
    assert!(text.contains("<|im_start|>") && from.contains("chatml"), "{from}");

    // tokenizer_default: a string, the list form, and chat_template.jinja taking priority
    let config = dir.path().join("tokenizer_config.json");
    std::fs::write(&config, r#"{"chat_template": "{{ 'one' }}"}"#).unwrap();
    assert_eq!(resolve(ChatTemplateName::TokenizerDefault, None, dir.path(), dir.path()).unwrap().0, "{{ 'one' }}");
    std::fs::write(
        &config,
        r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ 'D' }}"}]}"#,
    )
    .unwrap();
    assert_eq!(resolve(ChatTemplateName::TokenizerDefault, None, dir.path(), dir.path()).unwrap().0, "{{ 'D' }}");
    std::fs::write(&config, r#"{"chat_template": [{"name": "tool_use", "template": "T"}]}"#).unwrap();
    let e = resolve(ChatTemplateName::TokenizerDefault, None, dir.path(), dir.path()).unwrap_err();
    assert!(e.contains("none named `default`") && e.contains("tool_use"), "{e}");
    std::fs::write(&config, r#"{"bos_token": "<s>"}"#).unwrap();
    let e = resolve(ChatTemplateName::TokenizerDefault, None, dir.path(), dir.path()).unwrap_err();
    assert!(e.contains("has no `chat_template`"), "{e}");
    std::fs::write(dir.path().join("chat_template.jinja"), "{{ 'file' }}").unwrap();
    let (text, from) = resolve(ChatTemplateName::TokenizerDefault, None, dir.path(), dir.path()).unwrap();
    assert_eq!(text, "{{ 'file' }}");
    assert!(from.contains("chat_template.jinja"), "{from}");

    // jinja: inline text, or a path relative to the recipe's folder
    let (text, _) =
        resolve(ChatTemplateName::Jinja, Some("{{ messages[0].content }}"), dir.path(), dir.path()).unwrap();
    assert_eq!(text, "{{ messages[0].content }}");
    std::fs::write(dir.path().join("mine.jinja"), "{% for m in messages %}{{ m.content }}{% endfor %}").unwrap();
    let (text, from) = resolve(ChatTemplateName::Jinja, Some("mine.jinja"), dir.path(), dir.path()).unwrap();
    assert!(text.starts_with("{% for") && from.contains("mine.jinja"), "{from}");
    let e = resolve(ChatTemplateName::Jinja, Some("missing.jinja"), dir.path(), dir.path()).unwrap_err();
    assert!(e.contains("missing.jinja"), "{e}");
    assert!(resolve(ChatTemplateName::Jinja, None, dir.path(), dir.path()).is_err());
}

#[test]
fn hostile_templates_fail_cleanly() {
    let special = SpecialTokenStrings::default().or_llama_defaults();
    let msgs = [serde_json::json!({"role": "user", "content": "hi"})];
    for (src, what) in [
        ("{% include 'x.jinja' %}", "include"),
        ("{% import '/etc/passwd' as p %}", "import"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "unbounded recursion"),
        ("{{ messages.__class__.__mro__ }}", "dunder access"),
        ("{{ messages.append(1) }}", "mutation"),
        ("{{ ''.join }}{{ x.y.z }}", "attribute of undefined"),
        ("{{ messages | tojson(indent='a', separators=3) }}", "bad tojson arguments"),
    ] {
        let result = ChatTemplate::new(src, what).and_then(|t| t.render(&msgs, None, false, &special));
        if let Ok(out) = &result {
            // dunder lookups are undefined in minijinja, which prints nothing
            assert!(out.is_empty() || !out.contains("class"), "{what}: {out:?}");
        }
    }
    // not a message object
    let t = ChatTemplate::new("{{ messages }}", "t").unwrap();
    let e = t.render(&[serde_json::json!("text")], None, false, &special).unwrap_err();
    assert!(e.to_string().contains("message 0 is not a JSON object"), "{e}");
}

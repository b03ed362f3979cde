//! Chat datasets tokenized with exact loss masks.
//!
//! Goldens: tests/golden/masking/ holds Axolotl's ShareGPT fixture conversation and the input_ids /
//! labels Axolotl produced for it under the Llama-2 tokenizer (Apache-2.0, see the NOTICE there):
//! - `conversation.tokenized_llama2chat.json`: its legacy `llama2_chat` strategy (padded to 4096);
//! - `conversation.tokenized.json`: its legacy `sharegpt` strategy with FastChat's `vicuna_v1.1`.
//!
//! Both are reproduced with a chat template (tests/golden/masking/*.jinja) and `ChatOptions`.
//! They use the Llama-2 tokenizer kept for tests in tests/fixtures/llama2-tokenizer (Llama 2
//! Community License, see the NOTICE there).
//!
//! The other tests use the bundled stories260k tokenizer.

use recipe::data::chat::{ChatEncoder, ChatOptions, ChatTokenizer, Tokenization, TrainOnEos, tokenize_row};
use recipe::data::template::{ChatTemplate, SpecialTokenStrings};
use recipe::data::{IGNORE, Sample};
use serde_json::json;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Axolotl's test tokenizer set-up: Llama-2 with bos `<s>`, eos `</s>`, unk `<unk>`, BOS added.
fn llama2_tokenizer() -> ChatTokenizer {
    let path = root().join("tests/fixtures/llama2-tokenizer/tokenizer.json");
    let special = SpecialTokenStrings {
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        unk_token: Some("<unk>".into()),
        ..Default::default()
    };
    ChatTokenizer::from_file(&path, special, true).unwrap()
}

fn masking_template(file: &str) -> ChatTemplate {
    let path = root().join("tests/golden/masking").join(file);
    ChatTemplate::new(&std::fs::read_to_string(&path).unwrap(), file).unwrap()
}

/// Compares with a golden; `input_ids` past the sample are padding (attention 0) with label -100.
fn assert_golden(sample: &Sample, golden: &serde_json::Value, tok: &ChatTokenizer) {
    let ids: Vec<i64> = serde_json::from_value(golden["input_ids"].clone()).unwrap();
    let labels: Vec<i64> = serde_json::from_value(golden["labels"].clone()).unwrap();
    let attention: Vec<bool> = golden["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap_or(v.as_i64() == Some(1)))
        .collect();
    let n = attention.iter().filter(|&&a| a).count();
    assert!(attention[..n].iter().all(|&a| a), "the golden's padding is not at the end");
    assert_eq!(sample.input_ids.len(), n, "token count");
    if let Some(k) = (0..n).find(|&k| sample.input_ids[k] != ids[k]) {
        panic!(
            "input_ids differ first at {k}: {:?} vs golden {:?}\ncontext: {:?}",
            &sample.input_ids[k.saturating_sub(3)..(k + 5).min(n)],
            &ids[k.saturating_sub(3)..(k + 5).min(n)],
            tok.decode(&sample.input_ids[k.saturating_sub(10)..(k + 5).min(n)])
        );
    }
    if let Some(k) = (0..n).find(|&k| sample.labels[k] != labels[k]) {
        panic!(
            "labels differ first at {k} (token {:?}): {} vs golden {}",
            tok.decode(&ids[k..k + 1]),
            sample.labels[k],
            labels[k]
        );
    }
    assert!(labels[n..].iter().all(|&l| l == IGNORE), "padding is not masked");
}

/// The options that reproduce Axolotl's legacy `llama2_chat` labels.
fn llama2chat_options() -> ChatOptions {
    ChatOptions { train_on_eos: TrainOnEos::Turn, train_trailing_text: true, ..ChatOptions::sharegpt() }
}

#[test]
fn axolotl_llama2_chat_golden() {
    let tok = llama2_tokenizer();
    let row = read_json(&root().join("tests/golden/masking/conversation.json"));
    let golden = read_json(&root().join("tests/golden/masking/conversation.tokenized_llama2chat.json"));
    let template = masking_template("llama2_chat.jinja");
    let sample = tokenize_row(&row, &llama2chat_options(), &template, tok.special_tokens(), &tok).unwrap();
    assert_golden(&sample, &golden, &tok);

    // Without the legacy option only the trailing `<s>` (the separator's, after the last answer)
    // loses its label: every answer and its ` </s>` stay trained.
    let plain = ChatOptions { train_trailing_text: false, ..llama2chat_options() };
    let sample2 = tokenize_row(&row, &plain, &template, tok.special_tokens(), &tok).unwrap();
    let differ: Vec<usize> = (0..sample.labels.len()).filter(|&k| sample.labels[k] != sample2.labels[k]).collect();
    assert_eq!(differ, vec![sample.labels.len() - 1]);
    assert_eq!(sample.input_ids.last(), Some(&1));
}

#[test]
fn axolotl_sharegpt_vicuna_golden() {
    let tok = llama2_tokenizer();
    let row = read_json(&root().join("tests/golden/masking/conversation.json"));
    let golden = read_json(&root().join("tests/golden/masking/conversation.tokenized.json"));
    let template = masking_template("vicuna_v1.1.jinja");
    let options = ChatOptions { tokenization: Tokenization::PerMessage, ..ChatOptions::sharegpt() };
    let sample = tokenize_row(&row, &options, &template, tok.special_tokens(), &tok).unwrap();
    assert_golden(&sample, &golden, &tok);
}

// ---------------------------------------------------------------------------------------------
// Options, on the bundled tokenizer

const SIMPLE: &str = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}\n{% endfor %}\
                      {% if add_generation_prompt %}<assistant>{% endif %}";

fn stories() -> ChatTokenizer {
    ChatTokenizer::load(&root().join("models/stories260k")).unwrap()
}

/// The trained stretches of a sample, decoded.
fn trained(sample: &Sample, tok: &ChatTokenizer) -> Vec<String> {
    let mut out = Vec::new();
    let mut run: Vec<i64> = Vec::new();
    for (&id, &l) in sample.input_ids.iter().zip(&sample.labels) {
        if l == IGNORE {
            if !run.is_empty() {
                out.push(tok.decode(&run));
                run.clear();
            }
        } else {
            assert_eq!(l, id, "a label is its own input id");
            run.push(id);
        }
    }
    if !run.is_empty() {
        out.push(tok.decode(&run));
    }
    out
}

fn conversation() -> serde_json::Value {
    json!({"messages": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Once upon a time"},
        {"role": "assistant", "content": "there was a cat."},
        {"role": "user", "content": "What did the cat do?"},
        {"role": "assistant", "content": "It sat in the sun."},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "It slept."}
    ]})
}

fn run(row: &serde_json::Value, options: &ChatOptions) -> Result<Sample, String> {
    let tok = stories();
    let template = ChatTemplate::new(SIMPLE, "simple").unwrap();
    tokenize_row(row, options, &template, tok.special_tokens(), &tok)
}

#[test]
fn every_assistant_turn_is_trained_with_its_eos() {
    let tok = stories();
    let sample = run(&conversation(), &ChatOptions::default()).unwrap();
    assert_eq!(sample.input_ids.len(), sample.labels.len());
    assert_eq!(trained(&sample, &tok), ["there was a cat.</s>", "It sat in the sun.</s>", "It slept.</s>"]);
    // the same tokens as tokenizing the rendered text
    let text = ChatTemplate::new(SIMPLE, "simple")
        .unwrap()
        .render(conversation()["messages"].as_array().unwrap(), None, false, tok.special_tokens())
        .unwrap();
    assert_eq!(sample.input_ids, tok.encode_offsets(&text, false).unwrap().0);
    assert_eq!(sample.input_ids[0], 1, "the template's BOS");
}

#[test]
fn train_on_eos_variants() {
    let tok = stories();
    let with = |train_on_eos| {
        trained(&run(&conversation(), &ChatOptions { train_on_eos, ..Default::default() }).unwrap(), &tok)
    };
    assert_eq!(with(TrainOnEos::None), ["there was a cat.", "It sat in the sun.", "It slept."]);
    assert_eq!(with(TrainOnEos::Last), ["there was a cat.", "It sat in the sun.", "It slept.</s>"]);
    assert_eq!(with(TrainOnEos::Turn), ["there was a cat.</s>", "It sat in the sun.</s>", "It slept.</s>"]);
    // all: the EOS after the system and user turns too (only the token, not their content)
    assert_eq!(
        with(TrainOnEos::All),
        ["</s>", "</s>", "there was a cat.</s>", "</s>", "It sat in the sun.</s>", "</s>", "It slept.</s>"]
    );
    // eot_tokens names another end-of-turn token, none of which is here: EOS still follows train_on_eos
    // (Axolotl looks for the two kinds separately).
    let options = ChatOptions { eot_tokens: Some(vec!["<unk>".into()]), ..Default::default() };
    assert_eq!(
        trained(&run(&conversation(), &options).unwrap(), &tok),
        ["there was a cat.</s>", "It sat in the sun.</s>", "It slept.</s>"]
    );
    let options = ChatOptions {
        eot_tokens: Some(vec!["<unk>".into()]),
        train_on_eos: TrainOnEos::None,
        train_on_eot: Some(TrainOnEos::All),
        ..Default::default()
    };
    assert_eq!(
        trained(&run(&conversation(), &options).unwrap(), &tok),
        ["there was a cat.", "It sat in the sun.", "It slept."]
    );
    // EOS named as an end-of-turn token follows one policy: two different ones are an error.
    let options = ChatOptions {
        eot_tokens: Some(vec!["</s>".into()]),
        train_on_eot: Some(TrainOnEos::Last),
        ..Default::default()
    };
    assert!(run(&conversation(), &options).unwrap_err().contains("differ"));
    let options =
        ChatOptions { eot_tokens: Some(vec!["</s>".into()]), train_on_eos: TrainOnEos::Last, ..Default::default() };
    assert_eq!(
        trained(&run(&conversation(), &options).unwrap(), &tok),
        ["there was a cat.", "It sat in the sun.", "It slept.</s>"]
    );
    let options = ChatOptions { eot_tokens: Some(vec!["not a token".into()]), ..Default::default() };
    assert!(run(&conversation(), &options).unwrap_err().contains("not a single token"));
}

#[test]
fn roles_to_train_and_per_message_training() {
    let tok = stories();
    let options = ChatOptions { roles_to_train: vec!["user".into(), "assistant".into()], ..Default::default() };
    assert_eq!(
        trained(&run(&conversation(), &options).unwrap(), &tok),
        [
            "Once upon a time</s>",
            "there was a cat.</s>",
            "What did the cat do?</s>",
            "It sat in the sun.</s>",
            "And then?</s>",
            "It slept.</s>"
        ]
    );
    // aliases work in roles_to_train too
    let options =
        ChatOptions { roles_to_train: vec!["human".into()], train_on_eos: TrainOnEos::None, ..Default::default() };
    assert_eq!(
        trained(&run(&conversation(), &options).unwrap(), &tok),
        ["Once upon a time", "What did the cat do?", "And then?"]
    );
    // a message's own `training` field wins over its role
    let mut row = conversation();
    row["messages"][4]["training"] = json!(false);
    row["messages"][1]["training"] = json!(true);
    assert_eq!(
        trained(&run(&row, &ChatOptions::default()).unwrap(), &tok),
        ["Once upon a time</s>", "there was a cat.</s>", "It slept.</s>"]
    );
    let options = ChatOptions { message_field_training: Some("train_me".into()), ..Default::default() };
    assert_eq!(
        trained(&run(&row, &options).unwrap(), &tok),
        ["there was a cat.</s>", "It sat in the sun.</s>", "It slept.</s>"]
    );
    // no trained role at all: no labels
    let options = ChatOptions { roles_to_train: vec![], ..Default::default() };
    assert!(run(&conversation(), &options).unwrap().labels.iter().all(|&l| l == IGNORE));
}

#[test]
fn sharegpt_mapping_and_system_handling() {
    let tok = stories();
    let row = json!({"conversations": [
        {"from": "system", "value": "Be kind."},
        {"from": "human", "value": "Once upon a time"},
        {"from": "gpt", "value": "there was a cat."},
        {"from": "user", "value": "What did the cat do?"},
        {"from": "assistant", "value": "It slept."}
    ]});
    let sharegpt = run(&row, &ChatOptions::sharegpt()).unwrap();
    let openai = run(&json!({"messages": conversation()["messages"].as_array().unwrap()[..3].iter()
        .chain(&[json!({"role": "user", "content": "What did the cat do?"}), json!({"role": "assistant", "content": "It slept."})])
        .cloned().collect::<Vec<_>>()}), &ChatOptions::default()).unwrap();
    assert_eq!(sharegpt, openai, "ShareGPT rows give what the same OpenAI-style rows give");
    assert_eq!(trained(&sharegpt, &tok), ["there was a cat.</s>", "It slept.</s>"]);

    // drop_system_message removes the leading system turn before rendering
    let dropped = run(&row, &ChatOptions { drop_system_message: true, ..ChatOptions::sharegpt() }).unwrap();
    assert!(!tok.decode(&dropped.input_ids).contains("Be kind."));
    assert!(tok.decode(&sharegpt.input_ids).contains("<system>Be kind."));
    assert_eq!(trained(&dropped, &tok), ["there was a cat.</s>", "It slept.</s>"]);

    // a row-level `system` field becomes the system message when the messages have none
    let row = json!({"system": "Be brief.", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]});
    assert!(tok.decode(&run(&row, &ChatOptions::default()).unwrap().input_ids).contains("<system>Be brief.</s>"));

    // custom role aliases
    let row = json!({"messages": [{"role": "prompter", "content": "Hi"}, {"role": "bot", "content": "Hello."}]});
    let options = ChatOptions {
        roles: vec![("user".into(), vec!["prompter".into()]), ("assistant".into(), vec!["bot".into()])],
        ..Default::default()
    };
    let sample = run(&row, &options).unwrap();
    // (a legacy SentencePiece tokenizer puts a word boundary after each special token: "</s> \n")
    let text = tok.decode(&sample.input_ids);
    assert!(text.contains("<user>Hi</s>") && text.contains("<assistant>Hello.</s>"), "{text:?}");
    assert_eq!(trained(&sample, &tok), ["Hello.</s>"]);
}

#[test]
fn every_builtin_template_labels_exactly_the_assistant_turns() {
    use recipe::config::chat_template::ChatTemplateName;
    let tok = stories();
    let names = recipe::config::schema::schema()["$defs"]["ChatTemplateName"]["enum"].clone();
    let row = json!({"messages": [
        {"role": "user", "content": "Once upon a time"},
        {"role": "assistant", "content": "there was a cat."},
        {"role": "user", "content": "What did the cat do?"},
        {"role": "assistant", "content": "It sat in the sun."}
    ]});
    let mut checked = 0;
    for name in names.as_array().unwrap().iter().filter_map(|n| n.as_str()) {
        let parsed: ChatTemplateName = serde_json::from_value(json!(name)).unwrap();
        let Some(text) = parsed.builtin_text() else { continue };
        let template = ChatTemplate::new(text, name).unwrap();
        let sample = tokenize_row(&row, &ChatOptions::default(), &template, tok.special_tokens(), &tok)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let runs = trained(&sample, &tok);
        assert_eq!(runs.len(), 2, "{name}: {runs:?}");
        for (run, answer) in runs.iter().zip(["there was a cat.", "It sat in the sun."]) {
            // the answer, then at most the end of turn (`</s>` where the template writes EOS)
            let rest = run.strip_prefix(answer).unwrap_or_else(|| panic!("{name}: trained {run:?}"));
            assert!(rest.is_empty() || rest.trim_start() == "</s>", "{name}: trained {run:?}");
        }
        checked += 1;
    }
    assert!(checked >= 13);
}

#[test]
fn non_ascii_content_is_located_by_bytes() {
    let tok = stories();
    let row = json!({"messages": [
        {"role": "user", "content": "日本語で？ 😀"},
        {"role": "assistant", "content": "Café ☕ naïve — «ok»"},
        {"role": "user", "content": "Straße"},
        {"role": "assistant", "content": "👍🏽 fine"}
    ]});
    let sample = run(&row, &ChatOptions::default()).unwrap();
    assert_eq!(trained(&sample, &tok), ["Café ☕ naïve — «ok»</s>", "👍🏽 fine</s>"]);
}

#[test]
fn content_the_template_trims_is_still_found() {
    let tok = stories();
    let template = ChatTemplate::new(
        "{% for m in messages %}[{{ m.role }}] {{ m.content | trim }}{{ eos_token }}{% endfor %}",
        "trimming",
    )
    .unwrap();
    // the assistant's content equals text in the template ("user", "a"): found by position, not by search
    let row = json!({"messages": [
        {"role": "user", "content": "  a  "},
        {"role": "assistant", "content": " user "},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "a"}
    ]});
    let sample = tokenize_row(&row, &ChatOptions::default(), &template, tok.special_tokens(), &tok).unwrap();
    // (the first trained token is "▁user": the space before the content is part of it, and
    // decoding drops a leading word boundary)
    assert_eq!(trained(&sample, &tok), ["user</s>", "a</s>"]);
}

#[test]
fn malformed_rows_name_the_field_and_message() {
    let cases = [
        (json!({"conversation": []}), "field `messages` is missing"),
        (json!({"messages": "hi"}), "field `messages` is not a list of messages"),
        (json!({"messages": []}), "field `messages` has no messages"),
        (
            json!({"messages": [{"role": "user", "content": "hi"}, "oops"]}),
            "messages[1]: not an object (found a string)",
        ),
        (json!({"messages": [{"content": "hi"}]}), "messages[0]: field `role` is missing"),
        (
            json!({"messages": [{"role": 3, "content": "hi"}]}),
            "messages[0]: field `role` is not a string (found a number)",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}),
            "messages[1]: unknown role `robot`",
        ),
        (json!({"messages": [{"role": "user"}]}), "messages[0]: field `content` is missing"),
        (
            json!({"messages": [{"role": "user", "content": ["a"]}]}),
            "messages[0]: field `content` is not a string (found a list)",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi", "training": "yes"}]}),
            "messages[0]: field `training` is not a boolean",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]}),
            "messages[1]: a trained message without text content",
        ),
        (json!({"messages": [{"role": "user", "content": "hi"}], "tools": 5}), "field `tools` is not a list of tools"),
        (json!({"messages": [{"role": "user", "content": "hi"}], "system": 5}), "field `system` is not a string"),
    ];
    for (row, want) in cases {
        let err = run(&row, &ChatOptions::default()).unwrap_err();
        assert!(err.contains(want), "{row}: got {err:?}, want {want:?}");
    }
    let err = run(&json!({"conversations": [{"from": "human"}]}), &ChatOptions::sharegpt()).unwrap_err();
    assert!(err.contains("conversations[0]: field `value` is missing"), "{err}");
    // a template error names the template
    let tok = stories();
    let template = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "strict").unwrap();
    let err =
        tokenize_row(&conversation(), &ChatOptions::default(), &template, tok.special_tokens(), &tok).unwrap_err();
    assert_eq!(err, "chat template `strict`: roles must alternate");
    // a trained message the template leaves out cannot be labelled
    let template =
        ChatTemplate::new("{% for m in messages if m.role != 'assistant' %}{{ m.content }}{% endfor %}", "drops")
            .unwrap();
    let err =
        tokenize_row(&conversation(), &ChatOptions::default(), &template, tok.special_tokens(), &tok).unwrap_err();
    assert!(err.contains("message 2 (assistant): cannot locate its content"), "{err}");
}

#[test]
fn per_message_tokenization_cuts_at_turns() {
    let tok = stories();
    let options = ChatOptions { tokenization: Tokenization::PerMessage, ..Default::default() };
    let template = ChatTemplate::new(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}",
        "plain",
    )
    .unwrap();
    let row = json!({"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}]});
    let sample = tokenize_row(&row, &options, &template, tok.special_tokens(), &tok).unwrap();
    // BOS, then each turn on its own; the template's `</s>` stays text and a real EOS follows
    assert_eq!(sample.input_ids[0], 1);
    let eos = sample.input_ids.iter().filter(|&&i| i == 2).count();
    assert_eq!(eos, 2);
    assert_eq!(trained(&sample, &tok).len(), 2);
    for t in trained(&sample, &tok) {
        assert!(t.ends_with("</s></s>"), "{t:?}: the text `</s>` then the EOS token");
    }
    // a template that re-renders earlier turns differently cannot be cut per message
    let template = ChatTemplate::new(
        "{% for m in messages %}{% if loop.last %}!{% endif %}{{ m.content }}{% endfor %}",
        "lookahead",
    )
    .unwrap();
    let err = tokenize_row(&row, &options, &template, tok.special_tokens(), &tok).unwrap_err();
    assert!(err.contains("not a prefix"), "{err}");
}

#[test]
fn eot_tokens_and_eos_are_trained_each_by_their_own_policy() {
    // A template ending each turn with `<unk>` (the end-of-turn token here) and the whole
    // conversation with EOS, as Llama-3's <|eot_id|> and <|end_of_text|>.
    let text =
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<unk>{% endfor %}{{ eos_token }}";
    let tok = stories();
    let template = ChatTemplate::new(text, "eot").unwrap();
    let run = |options: &ChatOptions| tokenize_row(&conversation(), options, &template, tok.special_tokens(), &tok);
    // Without eot_tokens only the final EOS ends a turn, and only the last turn's.
    assert_eq!(
        trained(&run(&ChatOptions::default()).unwrap(), &tok),
        ["there was a cat.", "It sat in the sun.", "It slept.<unk></s>"]
    );
    let eot = ChatOptions { eot_tokens: Some(vec!["<unk>".into()]), ..Default::default() };
    assert_eq!(
        trained(&run(&eot).unwrap(), &tok),
        ["there was a cat.<unk>", "It sat in the sun.<unk>", "It slept.<unk></s>"]
    );
    // train_on_eot defaults to train_on_eos; set apart, each follows its own.
    let eos_off = ChatOptions { train_on_eos: TrainOnEos::None, train_on_eot: Some(TrainOnEos::Turn), ..eot.clone() };
    assert_eq!(
        trained(&run(&eos_off).unwrap(), &tok),
        ["there was a cat.<unk>", "It sat in the sun.<unk>", "It slept.<unk>"]
    );
}

/// Axolotl's `field_thinking` / `template_thinking_key`: the turn's reasoning is read from the
/// named message field and handed to the template under the named key (both `reasoning_content`
/// by default), and the trained span is still exactly the content.
#[test]
fn reasoning_is_read_from_field_thinking_under_template_thinking_key() {
    const THINKING: &str = "{% for m in messages %}<{{ m.role }}>{% if m.cot is defined %}[{{ m.cot }}]{% endif %}\
{% if m.reasoning_content is defined %}({{ m.reasoning_content }}){% endif %}{{ m.content }}{{ eos_token }}{% endfor %}";
    let tok = stories();
    let template = ChatTemplate::new(THINKING, "thinking").unwrap();
    let row = json!({"messages": [
        {"role": "user", "content": "Once upon a time"},
        {"role": "assistant", "content": "there was a cat.", "why": "cats", "reasoning_content": "old"}
    ]});
    let render = |options: &ChatOptions| {
        let conversation = options.conversation(&row).unwrap();
        template.render(&conversation.messages, None, false, tok.special_tokens()).unwrap()
    };
    // default: reasoning_content reaches the template as reasoning_content
    assert!(render(&ChatOptions::default()).contains("(old)there was a cat."));
    // field_thinking: why, template_thinking_key: cot -> only `cot` carries the reasoning
    let options = ChatOptions { thinking: ("why".into(), "cot".into()), ..ChatOptions::default() };
    let text = render(&options);
    assert!(text.contains("[cats](old)there was a cat."), "{text}");
    let sample = tokenize_row(&row, &options, &template, tok.special_tokens(), &tok).unwrap();
    assert_eq!(trained(&sample, &tok), ["there was a cat.</s>"]);
    // a field named like the key is replaced by the mapped reasoning
    let options = ChatOptions { thinking: ("why".into(), "reasoning_content".into()), ..ChatOptions::default() };
    assert!(render(&options).contains("(cats)there was a cat."));
}

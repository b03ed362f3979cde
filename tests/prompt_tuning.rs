//! Prompt- and prefix-tuning parity with peft (PROMPT_TUNING / PREFIX_TUNING, CAUSAL_LM): for the
//! same base, prompt embeddings or prefix keys and values (loaded from peft's own
//! adapter_model.safetensors) and batch, the logits of every real position, the loss and the
//! trained tensor's gradient match the goldens written by
//! scripts/reference/prompt_tuning_goldens.py (gradient within 1e-4 relative), with and without
//! gradient checkpointing and chunked loss; peft's TEXT init gives the same embeddings from
//! recipe's tokenizer; greedy generation (with the KV cache) equals greedy decoding through peft's
//! forward (peft 0.21.2's own `generate` re-injects the virtual tokens at every step under
//! transformers 5.24: see the golden script); the loop counts each row's
//! first label (predicted by the last virtual token) as peft's loss does.
#![cfg(feature = "exec")]

mod common;

use recipe::data::Tokenizer;
use recipe::data::packing::{self, Row};
use recipe::exec::objective::{self, DeviceBatch, Objective, Supervised};
use recipe::model::generate::{Sampling, generate};
use recipe::model::llama::{CausalLm, Inputs, LoadOptions, PromptInit, Trainable};
use recipe::model::weights::Checkpoint;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load_case(case: &str) -> (CausalLm, HashMap<String, Tensor>) {
    let method = if case.ends_with("_prefix") { "prefix_tuning" } else { "prompt_tuning" };
    let dir = root().join("tests/golden").join(method).join(case);
    let model = common::load_peft_folder(&dir, Kind::Float);
    let g = Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
    (model, g)
}

fn check(case: &str, checkpointing: bool, tokens_per_chunk: Option<i64>) {
    let (model, g) = load_case(case);
    let (ids, labels, mask) = (&g["input_ids"], &g["labels"], &g["attention_mask"]);
    let (b, t) = (ids.size()[0], ids.size()[1]);
    // Prompt tuning's virtual positions come first in its logits; prefix tuning's are only keys.
    let n = model.virtual_tokens();
    assert_eq!(model.position_offset(), g["init.prompt_embeddings"].size()[0], "{case}: virtual tokens");
    let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
    let inputs = Inputs { input_ids: ids, position_ids: &positions, segment_ids: None, varlen: None };

    // Logits of the virtual and real positions; padding (mask 0, right-padded) differs by design:
    // recipe does not mask padding queries, which nothing reads.
    let logits = tch::no_grad(|| model.logits(&inputs));
    assert_eq!(logits.size(), g["logits"].size(), "{case}: logits shape");
    let keep = Tensor::cat(&[Tensor::ones([b, n], (Kind::Int64, Device::Cpu)), mask.shallow_clone()], 1)
        .to_kind(Kind::Bool)
        .unsqueeze(-1);
    let d = ((&logits - &g["logits"]).abs() * keep.to_kind(Kind::Float)).max().double_value(&[]);
    assert!(d < 1e-4, "{case}: logits differ by {d:e}");

    // peft's loss: the mean over every label != -100 it shifts in; behind prompt tuning's virtual
    // tokens the first label is included (the last virtual token predicts it).
    let shifted = if n > 0 { labels.shallow_clone() } else { labels.narrow(1, 1, t - 1) };
    let counted = shifted.ne(-100).sum(Kind::Int64).int64_value(&[]) as f64;
    let objective = Supervised { tokens_per_chunk, virtual_tokens: n };
    let loss = objective::forward_backward(
        &model,
        &objective,
        &DeviceBatch::new(&inputs, labels),
        counted,
        checkpointing,
        &|_| {},
    )
    .loss
        / counted;
    let dl = (loss.double_value(&[]) - g["loss"].double_value(&[])).abs();
    assert!(dl < 1e-5, "{case}: loss differs by {dl:e}");

    let params = model.trainable_params();
    assert_eq!(params.len(), 1, "{case}: one trainable tensor");
    assert_eq!(params[0].name, "prompt_embeddings");
    // A prefix peft trained through its projection MLP has the MLP's gradients, not the prefix's.
    let Some(expected) = g.get("grad.prompt_embeddings") else {
        eprintln!("{case}: logits {d:e}, loss {dl:e} (no gradient golden)");
        return;
    };
    let got = params[0].tensor.grad();
    let rel = (&got - expected).abs().max().double_value(&[]) / expected.abs().max().double_value(&[]);
    assert!(rel < 1e-4, "{case}: gradient differs by {rel:e} (relative)");
    eprintln!(
        "{case} (checkpointing {checkpointing}, chunk {tokens_per_chunk:?}): logits {d:e}, loss {dl:e}, \
         relative gradient {rel:e}"
    );
}

#[test]
fn text_init_on_stories260k_matches_peft() {
    check("stories260k_text", false, None);
    check("stories260k_text", true, Some(5));
}

#[test]
fn random_init_on_untied_gqa_llama_matches_peft() {
    check("llama_gqa_untied_random", false, None);
    check("llama_gqa_untied_random", true, None);
}

#[test]
fn prefix_tuning_on_stories260k_matches_peft() {
    check("stories260k_prefix", false, None);
    check("stories260k_prefix", false, Some(5));
}

#[test]
fn prefix_tuning_with_gradient_checkpointing_matches_peft() {
    // The recomputed layers get their prefix keys and values back: the same loss and gradient.
    check("stories260k_prefix", true, None);
    check("llama_gqa_untied_prefix", true, Some(5));
}

#[test]
fn prefix_tuning_with_grouped_query_heads_matches_peft() {
    check("llama_gqa_untied_prefix", false, None);
}

/// A prefix trained through peft's PrefixEncoder MLP (`prefix_projection`): recipe's MLP, given
/// peft's initial tensors, gives peft's logits, loss and every MLP tensor's gradient, with and
/// without gradient checkpointing; its keys and values are the `prompt_embeddings` peft saved.
fn check_projection(case: &str, checkpointing: bool) {
    let dir = root().join("tests/golden/prefix_tuning").join(case);
    let g: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    let case_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    assert_eq!(config["prefix_projection"], true);
    let n = config["num_virtual_tokens"].as_i64().unwrap();
    let hidden = config["encoder_hidden_size"].as_i64().unwrap();
    let base = root().join(case_json["base_model"].as_str().unwrap());
    let arch =
        recipe::plan::arch::Architecture::from_config_json(&std::fs::read_to_string(base.join("config.json")).unwrap())
            .unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: Trainable::Prefix { num_virtual_tokens: n, projection: Some(hidden) },
        quantize: None,
        score_head: false,
    };
    let model = CausalLm::load(&arch, &Checkpoint::open(&base).unwrap(), &opts).unwrap();
    let params = model.trainable_params();
    let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "prompt_encoder.default.embedding.weight",
            "prompt_encoder.default.transform.0.weight",
            "prompt_encoder.default.transform.0.bias",
            "prompt_encoder.default.transform.2.weight",
            "prompt_encoder.default.transform.2.bias"
        ],
        "{case}: peft's parameter names"
    );
    // The trainable count peft reports.
    let count: i64 = params.iter().map(|p| p.tensor.numel() as i64).sum();
    assert_eq!(count, case_json["trainable_params"].as_i64().unwrap(), "{case}: trainable parameters");
    tch::no_grad(|| {
        for p in &params {
            let mut t = p.tensor.shallow_clone();
            t.copy_(&g[&format!("init.{}", p.name)]);
        }
    });
    // What peft saved is the MLP's output.
    let saved: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("adapter_model.safetensors")).unwrap().into_iter().collect();
    let values = tch::no_grad(|| model.prefix_values().unwrap());
    let dv = (&values - &saved["prompt_embeddings"]).abs().max().double_value(&[]);
    assert!(dv < 1e-5, "{case}: the MLP's keys and values differ from peft's saved ones by {dv:e}");

    let (ids, labels, mask) = (&g["input_ids"], &g["labels"], &g["attention_mask"]);
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).expand([b, t], false);
    let inputs = Inputs { input_ids: ids, position_ids: &positions, segment_ids: None, varlen: None };
    let logits = tch::no_grad(|| model.logits(&inputs));
    let keep = mask.to_kind(Kind::Float).unsqueeze(-1);
    let d = ((&logits - &g["logits"]).abs() * keep).max().double_value(&[]);
    assert!(d < 1e-4, "{case}: logits differ by {d:e}");
    let counted = labels.narrow(1, 1, t - 1).ne(-100).sum(Kind::Int64).int64_value(&[]) as f64;
    let objective = Supervised { tokens_per_chunk: None, virtual_tokens: 0 };
    let loss = objective::forward_backward(
        &model,
        &objective,
        &DeviceBatch::new(&inputs, labels),
        counted,
        checkpointing,
        &|_| {},
    )
    .loss
        / counted;
    let dl = (loss.double_value(&[]) - g["loss"].double_value(&[])).abs();
    assert!(dl < 1e-5, "{case}: loss differs by {dl:e}");
    let mut worst = 0f64;
    for p in &params {
        let expected = &g[&format!("grad.{}", p.name)];
        let rel = (p.tensor.grad() - expected).abs().max().double_value(&[]) / expected.abs().max().double_value(&[]);
        assert!(rel < 1e-4, "{case}: gradient of {} differs by {rel:e} (relative)", p.name);
        worst = worst.max(rel);
    }
    eprintln!(
        "{case} (projection, checkpointing {checkpointing}): logits {d:e}, loss {dl:e}, worst relative gradient \
         {worst:e}, saved keys and values {dv:e}, {count} trainable"
    );
}

#[test]
fn prefix_projection_on_stories260k_trains_as_peft() {
    check_projection("stories260k_projection_prefix", false);
    check_projection("stories260k_projection_prefix", true);
}

#[test]
fn prefix_projection_with_grouped_query_heads_trains_as_peft() {
    check_projection("llama_gqa_untied_projection_prefix", false);
    check_projection("llama_gqa_untied_projection_prefix", true);
}

#[test]
fn a_prefix_peft_trained_through_its_projection_loads_as_keys_and_values() {
    check("stories260k_projection_prefix", false, None);
    check("llama_gqa_untied_projection_prefix", false, None);
}

#[test]
fn prefix_greedy_generation_equals_greedy_decoding_through_peft_s_forward() {
    let (model, g) = load_case("stories260k_prefix");
    let prompt = Vec::<i64>::try_from(&g["greedy_prompt"]).unwrap();
    let want = Vec::<i64>::try_from(&g["greedy_ids"]).unwrap();
    let s = Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens: want.len() - prompt.len(), seed: 0 };
    assert_eq!(generate(&model, &prompt, None, s), want[prompt.len()..], "greedy ids");
    let prompts = vec![prompt.clone(), prompt[..4].to_vec()];
    let batched = recipe::model::generate::generate_batch(&model, &prompts, &[], s);
    for (p, got) in prompts.iter().zip(&batched) {
        assert_eq!(got, &generate(&model, p, None, s), "row of {} tokens", p.len());
    }
}

#[test]
fn text_init_embeddings_equal_peft_s() {
    let (_, g) = load_case("stories260k_text");
    let base = root().join("models/stories260k");
    let tok = Tokenizer::load(&base).unwrap();
    let n = g["init.prompt_embeddings"].size()[0] as usize;
    let ids = recipe::exec::prompt_init_ids(&tok, "Once upon a time", n).unwrap();
    let arch =
        recipe::plan::arch::Architecture::from_config_json(&std::fs::read_to_string(base.join("config.json")).unwrap())
            .unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: Trainable::Prompt { num_virtual_tokens: n as i64, init: PromptInit::Tokens(ids) },
        quantize: None,
        score_head: false,
    };
    let model = CausalLm::load(&arch, &Checkpoint::open(&base).unwrap(), &opts).unwrap();
    let d = (model.prompt.as_ref().unwrap() - &g["init.prompt_embeddings"]).abs().max().double_value(&[]);
    assert_eq!(d, 0.0, "text init differs from peft's");
}

#[test]
fn greedy_generation_equals_greedy_decoding_through_peft_s_forward() {
    let (model, g) = load_case("stories260k_text");
    let prompt = Vec::<i64>::try_from(&g["greedy_prompt"]).unwrap();
    let want = Vec::<i64>::try_from(&g["greedy_ids"]).unwrap();
    let new = want.len() - prompt.len();
    let got = generate(&model, &prompt, None, Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens: new, seed: 0 });
    assert_eq!(got, want[prompt.len()..], "greedy ids");
}

#[test]
fn units_count_each_row_s_first_label_behind_virtual_tokens() {
    let row = |labels: Vec<i64>| Row {
        input_ids: vec![5; labels.len()],
        position_ids: (0..labels.len() as i64).collect(),
        segment_ids: vec![1; labels.len()],
        labels,
    };
    let (a, b) = (row(vec![1, 7, 8, -100]), row(vec![-100, -100, 9]));
    let batch = packing::collate(&[&a, &b], 0, None);
    assert_eq!(Supervised::WHOLE.units(&batch), 3);
    assert_eq!(Supervised { tokens_per_chunk: None, virtual_tokens: 4 }.units(&batch), 4);
}

#[test]
fn batched_generation_and_per_sample_losses_follow_the_virtual_tokens() {
    let (model, g) = load_case("stories260k_text");
    // Left-padded batches put the virtual tokens before the padding: each row decodes as it would alone.
    let prompt = Vec::<i64>::try_from(&g["greedy_prompt"]).unwrap();
    let prompts = vec![prompt.clone(), prompt[..4].to_vec(), prompt[..7].to_vec()];
    let s = Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens: 6, seed: 0 };
    let batched = recipe::model::generate::generate_batch(&model, &prompts, &[], s);
    for (p, got) in prompts.iter().zip(&batched) {
        assert_eq!(got, &generate(&model, p, None, s), "row of {} tokens", p.len());
    }

    // `recipe eval`'s per-sample loss counts the first label behind the virtual tokens, as training does.
    let ids = g["input_ids"].get(0);
    let labels = g["labels"].get(0);
    let sample = recipe::data::Sample {
        input_ids: Vec::<i64>::try_from(&ids).unwrap(),
        labels: Vec::<i64>::try_from(&labels).unwrap(),
    };
    let (sum, count) = recipe::exec::eval::nll(&model, std::slice::from_ref(&sample), 1)[0];
    let t = ids.size()[0];
    let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let (ids, labels) = (ids.unsqueeze(0), labels.unsqueeze(0));
    let inputs = Inputs { input_ids: &ids, position_ids: &positions, segment_ids: None, varlen: None };
    let objective = Supervised { tokens_per_chunk: None, virtual_tokens: model.virtual_tokens() };
    let want = objective::loss_sum_no_grad(&model, &objective, &DeviceBatch::new(&inputs, &labels)).loss;
    assert_eq!(count, sample.labels.iter().filter(|&&l| l != -100).count() as u64);
    assert!((sum - want.double_value(&[])).abs() < 1e-3, "{sum} vs {}", want.double_value(&[]));
}

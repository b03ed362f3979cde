//! The model side of `recipe eval`: a tokenized sample split into its prompt and reference answer,
//! completions by batched generation with the key/value cache, and the negative log-likelihood of
//! each sample's trained tokens (perplexity). The metrics themselves are `crate::eval`; the command
//! is `crate::cli::eval`.

use crate::data::{IGNORE, Sample, Tokenizer};
use crate::model::generate::{Sampling, generate_batch};
use crate::model::llama::{CausalLm, Inputs};
use tch::{Kind, Tensor};

/// A sample as generation metrics see it: the prompt as trained (everything before the first
/// trained token) and the answer (the first run of trained tokens: the first assistant turn of a
/// conversation).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptAnswer {
    pub prompt: Vec<i64>,
    pub answer: Vec<i64>,
}

/// Splits `s` into prompt and answer; None when it has no prompt (every token trained, as in
/// completion text, or only a BOS before the first trained token).
pub fn prompt_answer(s: &Sample, bos: Option<i64>) -> Option<PromptAnswer> {
    let first = s.labels.iter().position(|&l| l != IGNORE)?;
    let prompt = &s.input_ids[..first];
    if prompt.is_empty() || (prompt.len() == 1 && Some(prompt[0]) == bos) {
        return None;
    }
    let end = s.labels[first..].iter().position(|&l| l == IGNORE).map_or(s.labels.len(), |n| first + n);
    Some(PromptAnswer { prompt: prompt.to_vec(), answer: s.input_ids[first..end].to_vec() })
}

/// The ids generation stops at: EOS, and the special tokens that end the trained answers (a chat
/// template's turn end, `<|im_end|>` or `<|eot_id|>`, which `decode` drops).
pub fn stop_ids(tok: &Tokenizer, answers: &[&[i64]]) -> Vec<i64> {
    let mut stop: Vec<i64> = tok.eos().into_iter().collect();
    for answer in answers {
        if let Some(&last) = answer.last()
            && !stop.contains(&last)
            && tok.decode(&[last]).is_empty()
            && !tok.decode_with_special(&[last]).is_empty()
        {
            stop.push(last);
        }
    }
    stop
}

/// Completions of `prompts`, `batch_size` at a time (stop tokens kept, as `generate` keeps EOS).
pub fn complete(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    stop: &[i64],
    sampling: Sampling,
    batch_size: usize,
) -> Vec<Vec<i64>> {
    let mut out = Vec::with_capacity(prompts.len());
    for (n, chunk) in prompts.chunks(batch_size.max(1)).enumerate() {
        // Each batch its own seed, so a sampled batch does not repeat the previous one's draws.
        let s = Sampling { seed: sampling.seed.wrapping_add(n as u64), ..sampling };
        out.extend(generate_batch(model, chunk, stop, s));
    }
    out
}

/// The text of a completion: its stop token dropped, special tokens left out.
pub fn completion_text(tok: &Tokenizer, ids: &[i64], stop: &[i64]) -> String {
    let ids = match ids.last() {
        Some(last) if stop.contains(last) => &ids[..ids.len() - 1],
        _ => ids,
    };
    tok.decode(ids)
}

/// Per sample, (summed negative log-likelihood in nats, token count) of its trained tokens: the
/// tokens training puts a loss on (labels shifted, as the loss shifts them). Samples are right-padded
/// `batch_size` at a time (causal attention: padding after a token cannot change it) and cut to the
/// model's context; the head runs one row at a time, so the logits held are [T, V], not [B, T, V].
/// With prompt tuning's N virtual tokens in front, the last of them predicts the first label, as
/// in training (peft's labels: N × -100, then the sample's).
pub fn nll(model: &CausalLm, samples: &[Sample], batch_size: usize) -> Vec<(f64, u64)> {
    let _guard = tch::no_grad_guard();
    let virtual_tokens = model.virtual_tokens();
    let context = (model.arch.max_position_embeddings as i64 - model.position_offset()).max(0) as usize;
    let dev = model.device;
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(batch_size.max(1)) {
        let width = chunk.iter().map(|s| s.input_ids.len().min(context)).max().unwrap_or(0);
        if width < 2 {
            out.extend(chunk.iter().map(|_| (0.0, 0)));
            continue;
        }
        let mut ids = Vec::with_capacity(chunk.len() * width);
        for s in chunk {
            let n = s.input_ids.len().min(context);
            ids.extend(s.input_ids[..n].iter().copied().chain(std::iter::repeat_n(0, width - n)));
        }
        let b = chunk.len() as i64;
        let input_ids = Tensor::from_slice(&ids).view([b, width as i64]).to_device(dev);
        let position_ids =
            Tensor::arange(width as i64, (Kind::Int64, dev)).unsqueeze(0).expand([b, width as i64], false);
        let hidden = model.hidden_states(
            &Inputs { input_ids: &input_ids, position_ids: &position_ids, segment_ids: None, varlen: None },
            false,
        );
        for (r, s) in chunk.iter().enumerate() {
            let n = s.input_ids.len().min(context);
            // Position i predicts label i + 1; with virtual tokens, hidden position N - 1 + i predicts label i.
            let first = if virtual_tokens > 0 { 0 } else { 1 };
            let targets: Vec<i64> = s.labels.get(first..n).unwrap_or_default().to_vec();
            let count = targets.iter().filter(|&&t| t != IGNORE).count() as u64;
            if count == 0 {
                out.push((0.0, 0));
                continue;
            }
            let start = (virtual_tokens - 1).max(0);
            let logits = model.head(&hidden.get(r as i64).narrow(0, start, targets.len() as i64), false);
            let targets = Tensor::from_slice(&targets).to_device(dev);
            let sum = logits.cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::Sum, IGNORE, 0.0);
            out.push((sum.to_kind(Kind::Double).double_value(&[]), count));
        }
    }
    out
}

/// `do_causal_lm_eval` (Axolotl's `eval_causal_lm_metrics`): the validation samples with a prompt,
/// completed greedily at each evaluation and scored as `recipe eval` scores them.
pub struct CausalLmEval<'a> {
    tok: &'a Tokenizer,
    prompts: Vec<Vec<i64>>,
    references: Vec<String>,
    stop: Vec<i64>,
    metrics: Vec<crate::eval::Metric>,
    max_new_tokens: usize,
}

impl<'a> CausalLmEval<'a> {
    /// None when the plan does not ask for it; an error when no validation sample has a prompt.
    pub fn new(plan: &crate::plan::Plan, tok: &'a Tokenizer, validation: &[Sample]) -> Result<Option<Self>, String> {
        use crate::eval::Metric;
        let Some(p) = &plan.training.causal_lm_eval else { return Ok(None) };
        let split: Vec<PromptAnswer> = validation.iter().filter_map(|s| prompt_answer(s, tok.bos())).collect();
        if split.is_empty() {
            return Err(format!(
                "do_causal_lm_eval: none of the {} validation samples has a prompt before its trained tokens \
                 (completion text), so there is no answer to generate; use a prompt/answer dataset type",
                validation.len()
            ));
        }
        let answers: Vec<&[i64]> = split.iter().map(|pa| pa.answer.as_slice()).collect();
        let metrics = p
            .metrics
            .iter()
            .copied()
            // eval_perplexity comes with every evaluation's loss already.
            .filter(|&m| m != Metric::Perplexity)
            .collect();
        Ok(Some(CausalLmEval {
            tok,
            stop: stop_ids(tok, &answers),
            references: split.iter().map(|pa| tok.decode(&pa.answer)).collect(),
            prompts: split.into_iter().map(|pa| pa.prompt).collect(),
            metrics,
            max_new_tokens: p.max_new_tokens as usize,
        }))
    }

    /// The figures, named as metrics.jsonl records them (`eval_sacrebleu`, `eval_rouge1`, ...).
    pub fn run(&self, model: &CausalLm, batch_size: usize) -> Vec<(String, f64)> {
        let sampling = Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens: self.max_new_tokens, seed: 0 };
        let ids = complete(model, &self.prompts, &self.stop, sampling, batch_size);
        let predictions: Vec<String> = ids.iter().map(|ids| completion_text(self.tok, ids, &self.stop)).collect();
        let preds: Vec<&str> = predictions.iter().map(String::as_str).collect();
        let refs: Vec<&str> = self.references.iter().map(String::as_str).collect();
        let (corpus, _) = crate::eval::score_texts(crate::eval::TextOptions::default(), &self.metrics, &preds, &refs);
        corpus.into_iter().filter_map(|(k, v)| Some((format!("eval_{k}"), v.as_f64()?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_first_trained_token() {
        let s = Sample { input_ids: vec![1, 5, 6, 7, 8, 2, 9], labels: vec![IGNORE, IGNORE, IGNORE, 7, 8, 2, IGNORE] };
        assert_eq!(prompt_answer(&s, Some(1)), Some(PromptAnswer { prompt: vec![1, 5, 6], answer: vec![7, 8, 2] }));
        let text = Sample { input_ids: vec![1, 5, 6], labels: vec![1, 5, 6] };
        assert_eq!(prompt_answer(&text, Some(1)), None);
        let bos_only = Sample { input_ids: vec![1, 5, 6], labels: vec![IGNORE, 5, 6] };
        assert_eq!(prompt_answer(&bos_only, Some(1)), None);
    }
}

//! Sampling from a causal LM: greedy, or temperature with nucleus (top-p) filtering, seeded.
//! Each step reruns the whole sequence (no key/value cache): simple and exact, and fast enough
//! for the short samples `recipe run` and `recipe generate` print.

use super::llama::{CausalLm, Inputs};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
}

/// Continues `prompt` (token ids), stopping at `eos` or after `max_new_tokens`; returns the new ids.
pub fn generate(model: &CausalLm, prompt: &[i64], eos: Option<i64>, s: Sampling) -> Vec<i64> {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(s.seed as i64);
    let context = model.arch.max_position_embeddings as usize;
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..s.max_new_tokens {
        if ids.len() >= context {
            break;
        }
        let window = &ids[ids.len().saturating_sub(context)..];
        let input = Tensor::from_slice(window).unsqueeze(0).to_device(model.device);
        let positions = Tensor::arange(window.len() as i64, (Kind::Int64, model.device)).unsqueeze(0);
        let logits = model.logits(&Inputs { input_ids: &input, position_ids: &positions, segment_ids: None });
        let last = logits.select(1, window.len() as i64 - 1).squeeze_dim(0);
        let next = if s.temperature <= 0.0 { last.argmax(-1, false) } else { sample(&last, s.temperature, s.top_p) };
        let next = next.int64_value(&[]);
        ids.push(next);
        out.push(next);
        if Some(next) == eos {
            break;
        }
    }
    out
}

fn sample(logits: &Tensor, temperature: f64, top_p: f64) -> Tensor {
    let probs = (logits / temperature).softmax(-1, Kind::Float);
    let (sorted, order) = probs.sort(-1, true);
    let cumulative = sorted.cumsum(-1, Kind::Float);
    // Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    let drop = (&cumulative - &sorted).gt(top_p);
    let kept = sorted.masked_fill(&drop, 0.0);
    let choice = kept.multinomial(1, false);
    order.gather(-1, &choice, false).squeeze()
}

//! Sampling from a causal LM: greedy, or temperature with nucleus (top-p) filtering, seeded. The
//! prompt is run once and each new token then attends to the cached keys and values.

use super::llama::{CausalLm, KvCache};
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
    let mut out = Vec::new();
    if prompt.is_empty() || prompt.len() >= context {
        return out;
    }
    let mut cache = KvCache::new(model);
    let mut fed = Tensor::from_slice(prompt).unsqueeze(0).to_device(model.device);
    let mut position = 0i64;
    for _ in 0..s.max_new_tokens {
        let logits = model.logits_cached(&fed, position, &mut cache);
        position += fed.size()[1];
        let last = logits.select(1, logits.size()[1] - 1).squeeze_dim(0);
        let next = if s.temperature <= 0.0 { last.argmax(-1, false) } else { sample(&last, s.temperature, s.top_p) };
        let next = next.int64_value(&[]);
        out.push(next);
        if Some(next) == eos || prompt.len() + out.len() >= context {
            break;
        }
        fed = Tensor::from_slice(&[next]).unsqueeze(0).to_device(model.device);
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

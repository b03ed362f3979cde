//! Sampling from a causal LM: greedy, or temperature with nucleus (top-p) filtering, seeded. The
//! prompt is run once and each new token then attends to the cached keys and values. A
//! prompt-tuned model puts its virtual tokens in front of the prompt, a prefix-tuned one its keys
//! and values into the cache (`CausalLm::logits_cached`).

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
    // Prompt or prefix tuning's virtual tokens take positions of the context too.
    let context = (model.arch.max_position_embeddings as i64 - model.position_offset()).max(0) as usize;
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
    sample_rows(&logits.reshape([1, -1]), temperature, top_p).squeeze()
}

/// Continues each prompt of a batch, as `generate` does one at a time: prompts left-padded to one
/// length with an attention mask (`CausalLm::logits_cached_masked`), one shared key/value cache,
/// each row stopping at a token of `stop` (kept as its last id, as `generate` keeps EOS), after
/// `max_new_tokens`, or at the context length. Greedy rows equal `generate`'s ids; sampled rows
/// draw from one seeded generator for the batch. A prompt that is empty or fills the context gets
/// no tokens.
pub fn generate_batch(model: &CausalLm, prompts: &[Vec<i64>], stop: &[i64], s: Sampling) -> Vec<Vec<i64>> {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(s.seed as i64);
    // Prompt or prefix tuning's virtual tokens take positions of the context too.
    let context = (model.arch.max_position_embeddings as i64 - model.position_offset()).max(0) as usize;
    let mut out = vec![Vec::new(); prompts.len()];
    let rows: Vec<usize> =
        (0..prompts.len()).filter(|&i| !prompts[i].is_empty() && prompts[i].len() < context).collect();
    if rows.is_empty() || s.max_new_tokens == 0 {
        return out;
    }
    let width = rows.iter().map(|&i| prompts[i].len()).max().unwrap_or(0);
    let dev = model.device;
    let (mut ids, mut mask, mut pos) = (Vec::new(), Vec::new(), Vec::new());
    for &i in &rows {
        let pad = width - prompts[i].len();
        // Padding takes any real id (0); the mask keeps every real token from seeing it.
        ids.extend(std::iter::repeat_n(0, pad).chain(prompts[i].iter().copied()));
        mask.extend(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, prompts[i].len())));
        pos.extend((0..width).map(|j| j.saturating_sub(pad) as i64));
    }
    let b = rows.len() as i64;
    let mut fed = Tensor::from_slice(&ids).view([b, width as i64]).to_device(dev);
    let mut positions = Tensor::from_slice(&pos).view([b, width as i64]).to_device(dev);
    let mut key_mask = Tensor::from_slice(&mask).view([b, width as i64]).to_device(dev);
    let mut lengths: Vec<usize> = rows.iter().map(|&i| prompts[i].len()).collect();
    let mut done = vec![false; rows.len()];
    let mut cache = KvCache::new(model);
    for _ in 0..s.max_new_tokens {
        let last = model.logits_cached_masked(&fed, &positions, &key_mask, &mut cache);
        let next =
            if s.temperature <= 0.0 { last.argmax(-1, false) } else { sample_rows(&last, s.temperature, s.top_p) };
        let next: Vec<i64> = Vec::<i64>::try_from(next.to_device(tch::Device::Cpu)).expect("int64 token ids");
        for (k, &i) in rows.iter().enumerate() {
            if done[k] {
                continue;
            }
            out[i].push(next[k]);
            lengths[k] += 1;
            done[k] = stop.contains(&next[k]) || lengths[k] >= context;
        }
        if done.iter().all(|&d| d) {
            break;
        }
        // Finished rows keep decoding (their tokens are dropped): the batch stays one shape.
        fed = Tensor::from_slice(&next).view([b, 1]).to_device(dev);
        let step: Vec<i64> = lengths.iter().map(|&l| l as i64 - 1).collect();
        positions = Tensor::from_slice(&step).view([b, 1]).to_device(dev);
        key_mask = Tensor::cat(&[&key_mask, &Tensor::ones([b, 1], (Kind::Bool, dev))], 1);
    }
    out
}

/// `sample` over rows: logits [B, V] -> ids [B].
fn sample_rows(logits: &Tensor, temperature: f64, top_p: f64) -> Tensor {
    let probs = (logits / temperature).softmax(-1, Kind::Float);
    let (sorted, order) = probs.sort(-1, true);
    let cumulative = sorted.cumsum(-1, Kind::Float);
    // Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    let drop = (&cumulative - &sorted).gt(top_p);
    let kept = sorted.masked_fill(&drop, 0.0);
    let choice = kept.multinomial(1, false);
    order.gather(-1, &choice, false).squeeze_dim(-1)
}

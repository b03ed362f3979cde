//! Evaluation metrics in plain Rust (no libtorch): BLEU, chrF and TER equal to sacrebleu 2.6's
//! defaults, ROUGE equal to rouge-score 0.1.2 as `evaluate` calls it, SQuAD-normalized exact match,
//! and perplexity from summed token log-likelihoods. Each metric has one file; this module owns the
//! metric names (`--metrics`), and scoring a set of predictions against references into corpus
//! and per-sample figures. Goldens: `scripts/reference/eval_goldens.py`, `tests/eval_metrics.rs`.
//!
//! Scales follow the reference libraries: BLEU, chrF, TER and exact match 0..100, ROUGE 0..1.

pub mod bleu;
pub mod chrf;
pub mod exact_match;
pub mod porter;
pub mod report;
pub mod rouge;
pub mod ter;
mod text;

use serde_json::{Map, Value, json};

/// A metric `recipe eval --metrics` accepts: the recipe's `eval_causal_lm_metrics` type, one list
/// of names for both.
pub use crate::config::logging::CausalLmMetric as Metric;

impl Metric {
    pub const ALL: [Metric; 6] =
        [Metric::Sacrebleu, Metric::Chrf, Metric::Ter, Metric::Rouge, Metric::ExactMatch, Metric::Perplexity];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Sacrebleu => "sacrebleu",
            Metric::Chrf => "chrf",
            Metric::Ter => "ter",
            Metric::Rouge => "rouge",
            Metric::ExactMatch => "exact_match",
            Metric::Perplexity => "perplexity",
        }
    }

    /// Whether the metric compares generated text with the reference (perplexity scores the
    /// reference itself).
    pub fn needs_generation(self) -> bool {
        self != Metric::Perplexity
    }

    /// Parses a comma-separated list (`sacrebleu,chrf`); an unknown name is an error with the
    /// nearest known one. Duplicates are dropped; the order is kept.
    pub fn parse_list(list: &str) -> Result<Vec<Metric>, String> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let metric = Metric::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
                let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                // The closest name, or one that contains what was typed (`bleu` -> `sacrebleu`).
                let near = names
                    .iter()
                    .map(|n| (if n.contains(name) { 1.0 } else { strsim::jaro_winkler(name, n) }, *n))
                    .filter(|(s, _)| *s > 0.7)
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                let hint = near.map(|(_, n)| format!("; did you mean `{n}`?")).unwrap_or_default();
                format!("unknown metric `{name}` (known: {}){hint}", names.join(", "))
            })?;
            if !out.contains(&metric) {
                out.push(metric);
            }
        }
        if out.is_empty() {
            return Err(format!(
                "no metric named (choose from {})",
                Metric::ALL.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(out)
    }
}

/// Perplexity from the summed negative log-likelihood (nats) of `tokens` tokens: exp(mean NLL).
pub fn perplexity(nll_sum: f64, tokens: u64) -> f64 {
    if tokens == 0 { f64::NAN } else { (nll_sum / tokens as f64).exp() }
}

/// Settings of the text metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextOptions {
    /// ROUGE with rouge-score's `use_stemmer=True` (NLTK's Porter stemmer).
    pub rouge_stemmer: bool,
}

/// Corpus figures and per-sample figures of the text metrics among `metrics` (perplexity, which
/// needs the model, is left to the caller). Keys are the names `eval_results.json` uses.
pub fn score_texts(
    options: TextOptions,
    metrics: &[Metric],
    predictions: &[&str],
    references: &[&str],
) -> (Map<String, Value>, Vec<Map<String, Value>>) {
    assert_eq!(predictions.len(), references.len(), "one reference per prediction");
    let mut corpus = Map::new();
    let mut samples: Vec<Map<String, Value>> = vec![Map::new(); predictions.len()];
    for &metric in metrics {
        match metric {
            Metric::Sacrebleu => {
                corpus.insert("sacrebleu".into(), json!(bleu::corpus_bleu(predictions, references).score));
                for (s, (p, r)) in samples.iter_mut().zip(predictions.iter().zip(references)) {
                    s.insert("sacrebleu".into(), json!(bleu::sentence_bleu(p, r).score));
                }
            }
            Metric::Chrf => {
                corpus.insert("chrf".into(), json!(chrf::corpus_chrf(predictions, references)));
                for (s, (p, r)) in samples.iter_mut().zip(predictions.iter().zip(references)) {
                    s.insert("chrf".into(), json!(chrf::sentence_chrf(p, r)));
                }
            }
            Metric::Ter => {
                corpus.insert("ter".into(), json!(ter::corpus_ter(predictions, references).score));
                for (s, (p, r)) in samples.iter_mut().zip(predictions.iter().zip(references)) {
                    s.insert("ter".into(), json!(ter::sentence_ter(p, r).score));
                }
            }
            Metric::Rouge => {
                let per: Vec<rouge::Rouge> = predictions
                    .iter()
                    .zip(references)
                    .map(|(p, r)| rouge::sample_rouge(p, r, options.rouge_stemmer))
                    .collect();
                let mean = rouge::corpus_rouge(predictions, references, options.rouge_stemmer);
                for (key, value) in rouge_fields(&mean) {
                    corpus.insert(key.into(), json!(value));
                }
                for (s, r) in samples.iter_mut().zip(&per) {
                    for (key, value) in rouge_fields(r) {
                        s.insert(key.into(), json!(value));
                    }
                }
            }
            Metric::ExactMatch => {
                corpus.insert("exact_match".into(), json!(exact_match::corpus_exact_match(predictions, references)));
                for (s, (p, r)) in samples.iter_mut().zip(predictions.iter().zip(references)) {
                    s.insert("exact_match".into(), json!(exact_match::sample_exact_match(p, r)));
                }
            }
            Metric::Perplexity => {}
        }
    }
    (corpus, samples)
}

fn rouge_fields(r: &rouge::Rouge) -> [(&'static str, f64); 4] {
    [("rouge1", r.rouge1), ("rouge2", r.rouge2), ("rougeL", r.rouge_l), ("rougeLsum", r.rouge_lsum)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_metric_suggests() {
        let e = Metric::parse_list("sacrebleu,chrff").unwrap_err();
        assert!(e.contains("did you mean `chrf`"), "{e}");
        assert!(Metric::parse_list("bleu").unwrap_err().contains("did you mean `sacrebleu`"));
        assert_eq!(Metric::parse_list("ter, ter,rouge").unwrap(), [Metric::Ter, Metric::Rouge]);
        assert!((perplexity(2.0f64.ln() * 3.0, 3) - 2.0).abs() < 1e-12);
    }
}

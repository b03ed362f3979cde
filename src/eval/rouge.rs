//! ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum as rouge-score 0.1.2 computes them when the `evaluate`
//! library calls it (`RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])`: the default
//! tokenizer, no stemmer, Lsum over newline-separated sentences, one reference per sample). The
//! per-sample figure is the F1 `score(reference, prediction)` gives; the corpus figure is the mean
//! of the per-sample F1s, which `evaluate`'s default bootstrap aggregation estimates by resampling
//! (its "mid" is the median of resampled means, random without a seed). `--rouge-stemmer` turns on
//! rouge-score's `use_stemmer` (NLTK's Porter stemmer, `porter`).

use super::text::ngram_counts;
use std::collections::HashMap;

/// F1 of each ROUGE variant, 0..1.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Rouge {
    pub rouge1: f64,
    pub rouge2: f64,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    #[serde(rename = "rougeLsum")]
    pub rouge_lsum: f64,
}

/// rouge-score's default tokenizer: lowercase, then the runs of `[a-z0-9]` are the tokens; with
/// `stemmer`, tokens longer than 3 characters go through the Porter stemmer (NLTK's).
pub fn tokenize(text: &str, stemmer: bool) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(|t| if stemmer && t.len() > 3 { super::porter::stem(t) } else { t.to_string() })
        .filter(|t| !t.is_empty())
        .collect()
}

/// rouge-score's `scoring.fmeasure`.
fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 }
}

fn ngram_f1(target: &[String], prediction: &[String], n: usize) -> f64 {
    let (t, p) = (ngram_counts(target, n), ngram_counts(prediction, n));
    let overlap: u64 = t.iter().map(|(g, c)| (*c).min(p.get(g).copied().unwrap_or(0))).sum();
    let t_total: u64 = t.values().sum();
    let p_total: u64 = p.values().sum();
    let precision = overlap as f64 / p_total.max(1) as f64;
    let recall = overlap as f64 / t_total.max(1) as f64;
    fmeasure(precision, recall)
}

fn lcs_table(reference: &[String], candidate: &[String]) -> Vec<Vec<usize>> {
    let mut t = vec![vec![0usize; candidate.len() + 1]; reference.len() + 1];
    for i in 1..=reference.len() {
        for j in 1..=candidate.len() {
            t[i][j] =
                if reference[i - 1] == candidate[j - 1] { t[i - 1][j - 1] + 1 } else { t[i - 1][j].max(t[i][j - 1]) };
        }
    }
    t
}

fn lcs_f1(target: &[String], prediction: &[String]) -> f64 {
    if target.is_empty() || prediction.is_empty() {
        return 0.0;
    }
    let lcs = lcs_table(target, prediction)[target.len()][prediction.len()];
    fmeasure(lcs as f64 / prediction.len() as f64, lcs as f64 / target.len() as f64)
}

/// rouge-score's `lcs_ind`: reference indices of one longest common subsequence, read back as
/// `_backtrack_norec` does (its tie-breaking decides which one).
fn lcs_indices(reference: &[String], candidate: &[String]) -> Vec<usize> {
    let t = lcs_table(reference, candidate);
    let (mut i, mut j) = (reference.len(), candidate.len());
    let mut out = Vec::new();
    while i > 0 && j > 0 {
        if reference[i - 1] == candidate[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
        } else if t[i][j - 1] > t[i - 1][j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
    out.reverse();
    out
}

/// rouge-score's `_summary_level_lcs` (ROUGE paper, section 3.2) over tokenized sentences.
fn summary_lcs_f1(reference: &[Vec<String>], candidate: &[Vec<String>]) -> f64 {
    if reference.is_empty() || candidate.is_empty() {
        return 0.0;
    }
    let m: usize = reference.iter().map(Vec::len).sum();
    let n: usize = candidate.iter().map(Vec::len).sum();
    if m == 0 || n == 0 {
        return 0.0;
    }
    let mut counts_r: HashMap<&str, i64> = HashMap::new();
    let mut counts_c: HashMap<&str, i64> = HashMap::new();
    for t in reference.iter().flatten() {
        *counts_r.entry(t).or_insert(0) += 1;
    }
    for t in candidate.iter().flatten() {
        *counts_c.entry(t).or_insert(0) += 1;
    }
    let mut hits = 0usize;
    for r in reference {
        // The union of each candidate sentence's LCS with this reference sentence, in order.
        let mut union: Vec<usize> = candidate.iter().flat_map(|c| lcs_indices(r, c)).collect();
        union.sort_unstable();
        union.dedup();
        for t in union.into_iter().map(|i| r[i].as_str()) {
            let (c, rr) = (counts_c.entry(t).or_insert(0), counts_r.get(t).copied().unwrap_or(0));
            if *c > 0 && rr > 0 {
                hits += 1;
                *c -= 1;
                *counts_r.get_mut(t).expect("counted above") -= 1;
            }
        }
    }
    fmeasure(hits as f64 / n as f64, hits as f64 / m as f64)
}

/// Lsum's sentences: the text split at newlines, empty pieces dropped (`split_summaries=False`).
fn sentences(text: &str, stemmer: bool) -> Vec<Vec<String>> {
    text.split('\n').filter(|s| !s.is_empty()).map(|s| tokenize(s, stemmer)).collect()
}

/// rouge-score's `RougeScorer(use_stemmer=stemmer).score(target=reference, prediction)`, the F1 of
/// each variant.
pub fn sample_rouge(prediction: &str, reference: &str, stemmer: bool) -> Rouge {
    let (t, p) = (tokenize(reference, stemmer), tokenize(prediction, stemmer));
    Rouge {
        rouge1: ngram_f1(&t, &p, 1),
        rouge2: ngram_f1(&t, &p, 2),
        rouge_l: lcs_f1(&t, &p),
        rouge_lsum: summary_lcs_f1(&sentences(reference, stemmer), &sentences(prediction, stemmer)),
    }
}

/// The mean of the per-sample F1s (summed in order, then divided).
pub fn corpus_rouge(predictions: &[&str], references: &[&str], stemmer: bool) -> Rouge {
    assert_eq!(predictions.len(), references.len(), "one reference per prediction");
    if predictions.is_empty() {
        return Rouge::default();
    }
    let mut sum = Rouge::default();
    for (p, r) in predictions.iter().zip(references) {
        let s = sample_rouge(p, r, stemmer);
        sum.rouge1 += s.rouge1;
        sum.rouge2 += s.rouge2;
        sum.rouge_l += s.rouge_l;
        sum.rouge_lsum += s.rouge_lsum;
    }
    let n = predictions.len() as f64;
    Rouge { rouge1: sum.rouge1 / n, rouge2: sum.rouge2 / n, rouge_l: sum.rouge_l / n, rouge_lsum: sum.rouge_lsum / n }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_keeps_ascii_alphanumeric_runs() {
        assert_eq!(tokenize("Hello, World-42! café", false), ["hello", "world", "42", "caf"]);
        assert_eq!(tokenize("The cats were running", true), ["the", "cat", "were", "run"]);
    }

    #[test]
    fn lsum_uses_lines() {
        let r = sample_rouge("the cat\nsat down", "the cat sat\ndown", false);
        assert!(r.rouge_lsum > 0.0 && r.rouge1 == 1.0);
    }
}

//! chrF as sacrebleu 2.6 computes it with its defaults (chrF2: character n-grams up to 6, no word
//! n-grams, beta 2, whitespace removed, case kept, no epsilon smoothing, i.e. averaging over the
//! effective orders). Corpus: `corpus_chrf(hyps, [refs])`; per sample: `sentence_chrf(hyp, [ref])`.

use super::text::{ngram_counts, py_split};

const CHAR_ORDER: usize = 6;
const BETA: f64 = 2.0;

/// Per order, [hyp n-grams, ref n-grams, matches].
type Stats = [[u64; 3]; CHAR_ORDER];

fn segment_stats(hypothesis: &str, reference: &str) -> Stats {
    // Whitespace is removed before character n-grams are taken (sacrebleu's `extract_all_char_ngrams`).
    let hyp: Vec<char> = py_split(hypothesis).concat().chars().collect();
    let reference: Vec<char> = py_split(reference).concat().chars().collect();
    let mut stats = [[0u64; 3]; CHAR_ORDER];
    for (n, s) in (1..=CHAR_ORDER).zip(stats.iter_mut()) {
        let (h, r) = (ngram_counts(&hyp, n), ngram_counts(&reference, n));
        let hyp_count: u64 = h.values().sum();
        let matches: u64 = h.iter().map(|(g, c)| r.get(g).map_or(0, |rc| (*c).min(*rc))).sum();
        // sacrebleu: `hyp_count if ref_ngrams else 0`.
        *s = [if r.is_empty() { 0 } else { hyp_count }, r.values().sum(), matches];
    }
    stats
}

/// sacrebleu's `CHRF._compute_f_score` with `eps_smoothing=False`, on a 0..100 scale.
fn f_score(stats: &Stats) -> f64 {
    let factor = BETA * BETA;
    let (mut avg_prec, mut avg_rec, mut effective_order) = (0.0f64, 0.0f64, 0u32);
    for &[n_hyp, n_ref, n_match] in stats {
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += n_match as f64 / n_hyp as f64;
            avg_rec += n_match as f64 / n_ref as f64;
            effective_order += 1;
        }
    }
    if effective_order == 0 {
        avg_prec = 0.0;
        avg_rec = 0.0;
    } else {
        avg_prec /= effective_order as f64;
        avg_rec /= effective_order as f64;
    }
    if avg_prec + avg_rec != 0.0 {
        let mut score = (1.0 + factor) * avg_prec * avg_rec;
        score /= (factor * avg_prec) + avg_rec;
        100.0 * score
    } else {
        0.0
    }
}

/// sacrebleu's `corpus_chrf(hypotheses, [references])`: statistics summed over samples, one F-score.
pub fn corpus_chrf(hypotheses: &[&str], references: &[&str]) -> f64 {
    assert_eq!(hypotheses.len(), references.len(), "one reference per hypothesis");
    let mut sum = [[0u64; 3]; CHAR_ORDER];
    for (h, r) in hypotheses.iter().zip(references) {
        for (s, x) in sum.iter_mut().zip(segment_stats(h, r)) {
            for k in 0..3 {
                s[k] += x[k];
            }
        }
    }
    f_score(&sum)
}

/// sacrebleu's `sentence_chrf(hypothesis, [reference])`.
pub fn sentence_chrf(hypothesis: &str, reference: &str) -> f64 {
    f_score(&segment_stats(hypothesis, reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_is_100_and_disjoint_is_0() {
        assert!((sentence_chrf("a cat", "a cat") - 100.0).abs() < 1e-12);
        assert_eq!(sentence_chrf("xyz", "abc"), 0.0);
        assert_eq!(corpus_chrf(&[""], &[""]), 0.0);
    }
}

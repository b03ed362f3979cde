//! BLEU as sacrebleu 2.6 computes it with its defaults: the `13a` tokenizer (mteval-v13a), mixed
//! case, n-grams up to 4, `exp` smoothing (NIST's method 3). The corpus figure is
//! `corpus_bleu(hyps, [refs])`; the per-sample figure is `sentence_bleu(hyp, [ref])`, which turns on
//! effective order. Each step keeps sacrebleu's order of floating-point operations, so figures are
//! equal, not merely close.

use super::text::{py_rstrip, py_split};
use std::collections::HashMap;

const MAX_ORDER: usize = 4;

/// A BLEU score with the sufficient statistics behind it (sacrebleu's `BLEUScore`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Bleu {
    /// 0..100.
    pub score: f64,
    pub counts: [u64; MAX_ORDER],
    pub totals: [u64; MAX_ORDER],
    /// Per-order precisions, 0..100.
    pub precisions: [f64; MAX_ORDER],
    /// Brevity penalty.
    pub bp: f64,
    pub sys_len: u64,
    pub ref_len: u64,
}

/// sacrebleu's `tokenizer_13a.Tokenizer13a` (mteval-v13a's language-independent part, then the
/// Western regular expressions of `TokenizerRegexp`).
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    let chars: Vec<char> = format!(" {line} ").chars().collect();
    // ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> ' \1 '
    let mut spaced = Vec::with_capacity(chars.len() * 2);
    for c in chars {
        if matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/') {
            spaced.extend([' ', c, ' ']);
        } else {
            spaced.push(c);
        }
    }
    let digit = |c: char| c.is_ascii_digit();
    let period_comma = |c: char| c == '.' || c == ',';
    // ([^0-9])([\.,]) -> '\1 \2 '
    let a = substitute_pairs(&spaced, |x, y| !digit(x) && period_comma(y), |x, y| vec![x, ' ', y, ' ']);
    // ([\.,])([^0-9]) -> ' \1 \2'
    let b = substitute_pairs(&a, |x, y| period_comma(x) && !digit(y), |x, y| vec![' ', x, ' ', y]);
    // ([0-9])(-) -> '\1 \2 '
    let c = substitute_pairs(&b, |x, y| digit(x) && y == '-', |x, y| vec![x, ' ', y, ' ']);
    py_split(&c.into_iter().collect::<String>()).join(" ")
}

/// `re.sub` of a two-character pattern: scanning left to right, a match is replaced and the scan
/// resumes after it (matches never overlap), as Python's regex engine does.
fn substitute_pairs(
    s: &[char],
    matches: impl Fn(char, char) -> bool,
    replace: impl Fn(char, char) -> Vec<char>,
) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len() + 8);
    let mut i = 0;
    while i < s.len() {
        if i + 1 < s.len() && matches(s[i], s[i + 1]) {
            out.extend(replace(s[i], s[i + 1]));
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Word n-gram counts (orders 1..=4) of a tokenized line, and its length in words.
fn ngrams(tokenized: &str) -> (HashMap<Vec<&str>, u64>, u64) {
    let words = py_split(tokenized);
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER {
        for w in words.windows(n) {
            *counts.entry(w.to_vec()).or_insert(0) += 1;
        }
    }
    (counts, words.len() as u64)
}

/// Per-segment statistics: [hyp_len, ref_len, correct x4, total x4].
fn segment_stats(hypothesis: &str, reference: &str) -> [u64; 2 + 2 * MAX_ORDER] {
    let hyp = tokenize_13a(py_rstrip(hypothesis));
    let reference = tokenize_13a(py_rstrip(reference));
    let (ref_ngrams, ref_len) = ngrams(&reference);
    let (hyp_ngrams, hyp_len) = ngrams(&hyp);
    let mut stats = [0u64; 2 + 2 * MAX_ORDER];
    stats[0] = hyp_len;
    stats[1] = ref_len;
    for (ngram, count) in &hyp_ngrams {
        let n = ngram.len() - 1;
        stats[2 + MAX_ORDER + n] += count;
        if let Some(r) = ref_ngrams.get(ngram) {
            stats[2 + n] += (*count).min(*r);
        }
    }
    stats
}

/// sacrebleu's `my_log`: log, floored to -9999999999 at zero.
fn my_log(x: f64) -> f64 {
    if x == 0.0 { -9999999999.0 } else { x.ln() }
}

/// sacrebleu's `BLEU.compute_bleu` with `exp` smoothing.
fn compute(stats: &[u64; 2 + 2 * MAX_ORDER], effective_order: bool) -> Bleu {
    let (sys_len, ref_len) = (stats[0], stats[1]);
    let mut counts = [0u64; MAX_ORDER];
    let mut totals = [0u64; MAX_ORDER];
    counts.copy_from_slice(&stats[2..2 + MAX_ORDER]);
    totals.copy_from_slice(&stats[2 + MAX_ORDER..]);
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 { (1.0 - ref_len as f64 / sys_len as f64).exp() } else { 0.0 };
    }
    let mut precisions = [0.0f64; MAX_ORDER];
    let done = |score: f64, precisions| Bleu { score, counts, totals, precisions, bp, sys_len, ref_len };
    // sacrebleu's early stop when nothing matches (its issue #141).
    if counts.iter().all(|&c| c == 0) {
        return done(0.0, precisions);
    }
    let mut smooth_mteval = 1.0f64;
    let mut eff_order = MAX_ORDER;
    for n in 1..=MAX_ORDER {
        if totals[n - 1] == 0 {
            break;
        }
        if effective_order {
            eff_order = n;
        }
        if counts[n - 1] == 0 {
            smooth_mteval *= 2.0;
            precisions[n - 1] = 100.0 / (smooth_mteval * totals[n - 1] as f64);
        } else {
            precisions[n - 1] = 100.0 * counts[n - 1] as f64 / totals[n - 1] as f64;
        }
    }
    let log_sum = precisions[..eff_order].iter().fold(0.0, |acc, p| acc + my_log(*p));
    done(bp * (log_sum / eff_order as f64).exp(), precisions)
}

/// sacrebleu's `corpus_bleu(hypotheses, [references])` (one reference per sample).
pub fn corpus_bleu(hypotheses: &[&str], references: &[&str]) -> Bleu {
    assert_eq!(hypotheses.len(), references.len(), "one reference per hypothesis");
    let mut sum = [0u64; 2 + 2 * MAX_ORDER];
    for (h, r) in hypotheses.iter().zip(references) {
        for (s, x) in sum.iter_mut().zip(segment_stats(h, r)) {
            *s += x;
        }
    }
    compute(&sum, false)
}

/// sacrebleu's `sentence_bleu(hypothesis, [reference])`: effective order on, as sacrebleu sets it.
pub fn sentence_bleu(hypothesis: &str, reference: &str) -> Bleu {
    compute(&segment_stats(hypothesis, reference), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_as_13a() {
        assert_eq!(tokenize_13a("Hello, world. It costs $3.50-4!"), "Hello , world . It costs $ 3.50 - 4 !");
        assert_eq!(tokenize_13a("a &amp; b"), "a & b");
    }

    #[test]
    fn identical_text_scores_100() {
        let s = sentence_bleu("the cat sat on the mat", "the cat sat on the mat");
        assert!((s.score - 100.0).abs() < 1e-12);
        assert_eq!(corpus_bleu(&[""], &["a b c"]).score, 0.0);
    }
}

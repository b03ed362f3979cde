//! TER as sacrebleu 2.6 computes it with its defaults (lowercased, no normalization, punctuation
//! kept): a port of `sacrebleu/metrics/lib_ter.py`, itself Tercom's algorithm: greedy shifts of
//! matching word runs while they lower the beam-searched edit distance, with Tercom's candidate
//! filters, its order of preference between equally good shifts and its limits (shift size 10,
//! distance 50, beam 25, 1,000 candidates). sacrebleu's prefix cache of edit-distance rows only
//! saves time (every call in one sentence has the same hypothesis length, so the same band), so
//! it is left out.

use super::text::{py_rstrip, py_slice, py_split};

const MAX_SHIFT_SIZE: usize = 10;
const MAX_SHIFT_DIST: i64 = 50;
const BEAM_WIDTH: usize = 25;
const MAX_SHIFT_CANDIDATES: usize = 1000;
const INFINITY: i64 = 10_000_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Nop,
    Sub,
    Ins,
    Del,
    Undef,
}

/// A TER score (0..100, can exceed 100) with its statistics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ter {
    pub score: f64,
    pub num_edits: f64,
    pub ref_length: f64,
}

/// sacrebleu's `TercomTokenizer` with its defaults: lowercase, then whitespace squeezed.
fn tokenize(sentence: &str) -> Vec<String> {
    py_split(&sentence.to_lowercase()).into_iter().map(String::from).collect()
}

/// Edit distance between the reference and a hypothesis, searched in a band around the
/// (length-ratio) diagonal; the distance and the trace of operations (hypothesis -> reference).
fn beam_edit_distance(words_h: &[String], words_r: &[String]) -> (i64, Vec<Op>) {
    let (n_h, n_r) = (words_h.len(), words_r.len());
    let mut dist: Vec<Vec<(i64, Op)>> = vec![vec![(INFINITY, Op::Undef); n_r + 1]; n_h + 1];
    dist[0] = (0..=n_r).map(|i| (i as i64, Op::Ins)).collect();
    let length_ratio = if n_h > 0 { n_r as f64 / n_h as f64 } else { 1.0 };
    let beam_width = if (BEAM_WIDTH as f64) < length_ratio / 2.0 {
        (length_ratio / 2.0 + BEAM_WIDTH as f64).ceil() as usize
    } else {
        BEAM_WIDTH
    };
    for i in 1..=n_h {
        let pseudo_diag = (i as f64 * length_ratio).floor() as usize;
        let min_j = pseudo_diag.saturating_sub(beam_width);
        let max_j = if i == n_h { n_r + 1 } else { (n_r + 1).min(pseudo_diag + beam_width) };
        for j in min_j..max_j {
            if j == 0 {
                dist[i][0] = (dist[i - 1][0].0 + 1, Op::Del);
                continue;
            }
            let (cost_sub, op_sub) = if words_h[i - 1] == words_r[j - 1] { (0, Op::Nop) } else { (1, Op::Sub) };
            let ops = [
                (dist[i - 1][j - 1].0 + cost_sub, op_sub),
                (dist[i - 1][j].0 + 1, Op::Del),
                (dist[i][j - 1].0 + 1, Op::Ins),
            ];
            for (cost, op) in ops {
                if dist[i][j].0 > cost {
                    dist[i][j] = (cost, op);
                }
            }
        }
    }
    let mut trace = Vec::new();
    let (mut i, mut j) = (n_h, n_r);
    while i > 0 || j > 0 {
        let op = dist[i][j].1;
        trace.push(op);
        match op {
            Op::Sub | Op::Nop => {
                i -= 1;
                j -= 1;
            }
            Op::Ins => j -= 1,
            Op::Del => i -= 1,
            // Every cell on the path back is inside the band; sacrebleu raises here too.
            Op::Undef => unreachable!("TER trace left the beam at ({i}, {j})"),
        }
    }
    trace.reverse();
    (dist[n_h][n_r].0, trace)
}

/// sacrebleu's `trace_to_alignment` over the flipped trace (reference -> hypothesis): the
/// alignment (reference position -> hypothesis position, -1 before the first), and the error
/// flags of reference and hypothesis positions.
fn trace_to_alignment(trace: &[Op]) -> (Vec<i64>, Vec<u8>, Vec<u8>) {
    let (mut pos_hyp, mut pos_ref) = (-1i64, -1i64);
    let (mut align, mut ref_err, mut hyp_err) = (Vec::new(), Vec::new(), Vec::new());
    for op in trace {
        // Flipped: the edit-distance trace's deletions are insertions here and vice versa.
        match op {
            Op::Nop | Op::Sub => {
                pos_hyp += 1;
                pos_ref += 1;
                align.push(pos_hyp);
                let err = u8::from(*op == Op::Sub);
                hyp_err.push(err);
                ref_err.push(err);
            }
            Op::Del => {
                pos_hyp += 1;
                hyp_err.push(1);
            }
            Op::Ins => {
                pos_ref += 1;
                align.push(pos_hyp);
                ref_err.push(1);
            }
            Op::Undef => unreachable!("undefined operation in a TER trace"),
        }
        debug_assert_eq!(align.len() as i64, pos_ref + 1);
    }
    (align, ref_err, hyp_err)
}

/// sacrebleu's `_perform_shift`: moves words[start..start+length] to `target`.
fn perform_shift(words: &[String], start: usize, length: usize, target: usize) -> Vec<String> {
    let s = |a: usize, b: usize| py_slice(words, a, b).to_vec();
    let end = words.len();
    if target < start {
        [s(0, target), s(start, start + length), s(target, start), s(start + length, end)].concat()
    } else if target > start + length {
        [s(0, start), s(start + length, target), s(start, start + length), s(target, end)].concat()
    } else {
        [s(0, start), s(start + length, length + target), s(start, start + length), s(length + target, end)].concat()
    }
}

/// sacrebleu's `_find_shifted_pairs`: (start_h, start_r, length) of matching runs, in its order.
fn shifted_pairs(words_h: &[String], words_r: &[String]) -> Vec<(usize, usize, usize)> {
    let (n_h, n_r) = (words_h.len(), words_r.len());
    let mut pairs = Vec::new();
    for start_h in 0..n_h {
        for start_r in 0..n_r {
            if (start_r as i64 - start_h as i64).abs() > MAX_SHIFT_DIST {
                continue;
            }
            let mut length = 0;
            while words_h[start_h + length] == words_r[start_r + length] && length < MAX_SHIFT_SIZE {
                length += 1;
                pairs.push((start_h, start_r, length));
                if n_h == start_h + length || n_r == start_r + length {
                    break;
                }
            }
        }
    }
    pairs
}

/// sacrebleu's `_shift`: the best shift (gain, shifted words) and the updated candidate count.
fn best_shift(words_h: &[String], words_r: &[String], mut checked: usize) -> (i64, Vec<String>, usize) {
    let (pre_score, trace) = beam_edit_distance(words_h, words_r);
    let (align, ref_err, hyp_err) = trace_to_alignment(&trace);
    let sum = |flags: &[u8], a: usize, len: usize| py_slice(flags, a, a + len).iter().map(|&f| f as u64).sum::<u64>();
    // (gain, length, -start_h, -idx, words): compared as sacrebleu's tuples are.
    let mut best: Option<(i64, usize, i64, i64, Vec<String>)> = None;
    for (start_h, start_r, length) in shifted_pairs(words_h, words_r) {
        if sum(&hyp_err, start_h, length) == 0 || sum(&ref_err, start_r, length) == 0 {
            continue;
        }
        let aligned = align[start_r];
        if start_h as i64 <= aligned && aligned < (start_h + length) as i64 {
            continue;
        }
        let mut prev_idx = -1i64;
        for offset in -1i64..length as i64 {
            let r = start_r as i64 + offset;
            let idx = if r == -1 {
                0
            } else if (r as usize) < align.len() {
                align[r as usize] + 1
            } else {
                break;
            };
            if idx == prev_idx {
                continue;
            }
            prev_idx = idx;
            let shifted = perform_shift(words_h, start_h, length, idx as usize);
            let candidate =
                (pre_score - beam_edit_distance(&shifted, words_r).0, length, -(start_h as i64), -idx, shifted);
            checked += 1;
            if best.as_ref().is_none_or(|b| candidate > *b) {
                best = Some(candidate);
            }
        }
        if checked >= MAX_SHIFT_CANDIDATES {
            break;
        }
    }
    match best {
        None => (0, words_h.to_vec(), checked),
        Some((gain, _, _, _, shifted)) => (gain, shifted, checked),
    }
}

/// sacrebleu's `translation_edit_rate`: (edits, reference length in words).
fn translation_edit_rate(words_hyp: &[String], words_ref: &[String]) -> (i64, usize) {
    if words_ref.is_empty() {
        return (words_hyp.len() as i64, 0);
    }
    let mut shifts = 0;
    let mut input = words_hyp.to_vec();
    let mut checked = 0;
    loop {
        let (delta, shifted, now_checked) = best_shift(&input, words_ref, checked);
        checked = now_checked;
        if checked >= MAX_SHIFT_CANDIDATES || delta <= 0 {
            break;
        }
        shifts += 1;
        input = shifted;
    }
    (shifts + beam_edit_distance(&input, words_ref).0, words_ref.len())
}

/// Per-sample (edits, reference length); sacrebleu strips trailing whitespace first.
fn segment_stats(hypothesis: &str, reference: &str) -> (i64, f64) {
    let hyp = tokenize(py_rstrip(hypothesis));
    let reference = tokenize(py_rstrip(reference));
    let (edits, ref_len) = translation_edit_rate(&hyp, &reference);
    // sacrebleu averages the reference lengths over the references (a float; one here).
    (edits, ref_len as f64 / 1.0)
}

fn compute(total_edits: f64, ref_length: f64) -> Ter {
    let score = if ref_length > 0.0 {
        total_edits / ref_length
    } else if total_edits > 0.0 {
        1.0
    } else {
        0.0
    };
    Ter { score: 100.0 * score, num_edits: total_edits, ref_length }
}

/// sacrebleu's `corpus_ter(hypotheses, [references])`: edits and lengths summed, one rate.
pub fn corpus_ter(hypotheses: &[&str], references: &[&str]) -> Ter {
    assert_eq!(hypotheses.len(), references.len(), "one reference per hypothesis");
    // sacrebleu's `sum_of_lists` starts from the first statistic's type: an int for the edits,
    // and the float reference lengths are added in order.
    let (mut edits, mut length) = (0i64, 0.0f64);
    for (h, r) in hypotheses.iter().zip(references) {
        let (e, l) = segment_stats(h, r);
        edits += e;
        length += l;
    }
    compute(edits as f64, length)
}

/// sacrebleu's `sentence_ter(hypothesis, [reference])`.
pub fn sentence_ter(hypothesis: &str, reference: &str) -> Ter {
    let (e, l) = segment_stats(hypothesis, reference);
    compute(e as f64, l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shift_counts_one_edit() {
        // "b c a" -> "a b c": one shift of "a" to the front.
        assert_eq!(sentence_ter("b c a", "a b c").num_edits, 1.0);
        assert_eq!(sentence_ter("", "a b").score, 100.0);
        assert_eq!(sentence_ter("x", "").score, 100.0);
        assert_eq!(sentence_ter("", "").score, 0.0);
    }
}

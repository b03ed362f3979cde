//! Python's string primitives that the reference metrics build on, ported so the Rust metrics split,
//! strip and slice exactly as sacrebleu and rouge-score do (`str.split()`, `str.rstrip()`, slices
//! that clamp).

/// Python's `str.isspace()`: Unicode White_Space plus the ASCII separators U+001C..U+001F, which
/// Rust's `char::is_whitespace` leaves out.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` with no argument: runs of whitespace separate, no empty pieces.
pub fn py_split(s: &str) -> Vec<&str> {
    s.split(py_isspace).filter(|w| !w.is_empty()).collect()
}

/// Python's `str.rstrip()` with no argument.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_isspace)
}

/// Python's `' '.join(s.split())`: whitespace runs become one space, none at the ends.
pub fn squeeze_spaces(s: &str) -> String {
    py_split(s).join(" ")
}

/// Python's `words[start:end]` for non-negative bounds: both clamp to the length.
pub fn py_slice<T>(words: &[T], start: usize, end: usize) -> &[T] {
    let end = end.min(words.len());
    let start = start.min(end);
    &words[start..end]
}

use std::collections::HashMap;

/// Counts of the n-grams of `items`.
pub fn ngram_counts<T: std::hash::Hash + Eq>(items: &[T], n: usize) -> HashMap<&[T], u64> {
    let mut counts = HashMap::new();
    for w in items.windows(n) {
        *counts.entry(w).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_python() {
        assert_eq!(py_split("  a\u{1f}b\u{a0}c\n"), ["a", "b", "c"]);
        assert_eq!(py_rstrip("x \u{1c}\t"), "x");
        assert_eq!(py_slice(&[1, 2, 3], 2, 9), [3]);
        assert!(py_slice(&[1, 2, 3], 5, 9).is_empty());
    }
}

//! Exact match after SQuAD's answer normalization (the official SQuAD v1.1 evaluation script's
//! `normalize_answer`, which `evaluate`'s `squad` metric uses): lowercase, ASCII punctuation
//! (Python's `string.punctuation`) removed, the articles "a", "an" and "the" removed as whole
//! words, whitespace squeezed. Scored 0 or 100 per sample; the corpus figure is the mean.

use super::text::squeeze_spaces;

/// Python's `\w` in a `str` pattern, closely enough for text: letters, digits, marks' bases, `_`.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// SQuAD's `normalize_answer`.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    // re.sub(r'\b(a|an|the)\b', ' ', text): a whole word (a maximal run of word characters) that is
    // an article becomes a space.
    let mut out = String::with_capacity(no_punct.len());
    let mut word = String::new();
    for c in no_punct.chars().map(Some).chain([None]) {
        if let Some(c) = c.filter(|c| is_word_char(*c)) {
            word.push(c);
            continue;
        }
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(&word);
        }
        word.clear();
        out.extend(c);
    }
    squeeze_spaces(&out)
}

/// 100 when the normalized texts are equal, else 0.
pub fn sample_exact_match(prediction: &str, reference: &str) -> f64 {
    if normalize_answer(prediction) == normalize_answer(reference) { 100.0 } else { 0.0 }
}

/// The mean of the per-sample scores, 0..100.
pub fn corpus_exact_match(predictions: &[&str], references: &[&str]) -> f64 {
    assert_eq!(predictions.len(), references.len(), "one reference per prediction");
    if predictions.is_empty() {
        return 0.0;
    }
    let hits = predictions.iter().zip(references).filter(|(p, r)| normalize_answer(p) == normalize_answer(r)).count();
    100.0 * hits as f64 / predictions.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_as_squad() {
        assert_eq!(normalize_answer("The  Eiffel-Tower!"), "eiffeltower");
        assert_eq!(normalize_answer("an apple, a day"), "apple day");
        assert_eq!(normalize_answer("theatre"), "theatre");
        assert_eq!(sample_exact_match("Paris.", "paris"), 100.0);
    }
}

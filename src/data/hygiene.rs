//! Data hygiene before tokenization: exact and normalised-text deduplication, and PII redaction
//! (e-mail addresses, phone numbers, IP addresses, API-key-like strings become placeholders).
//! Every step counts what it changed, for the plan/preview/run reports.

use regex::Regex;
use std::collections::HashSet;
use std::sync::LazyLock;

/// Lowercase, punctuation dropped, whitespace runs collapsed: "Hello,  World!" == "hello world".
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.extend(c.to_lowercase());
        } else if c.is_whitespace() {
            space = true;
        }
    }
    out
}

/// Indices of the rows to keep: the first of each group of equal keys (exact), or of equal
/// normalised keys.
pub fn dedup(keys: &[String], normalized: bool) -> Vec<usize> {
    let mut seen = HashSet::new();
    keys.iter()
        .enumerate()
        .filter(|(_, k)| seen.insert(if normalized { normalize(k) } else { (*k).clone() }))
        .map(|(i, _)| i)
        .collect()
}

struct Pattern {
    regex: Regex,
    placeholder: &'static str,
}

static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    let p = |re: &str, placeholder| Pattern { regex: Regex::new(re).expect("valid PII pattern"), placeholder };
    vec![
        // Provider keys with known prefixes first, then long opaque tokens.
        p(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}\b", "[API_KEY]"),
        p(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", "[API_KEY]"),
        p(r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat|hf|xox[abprs])_[A-Za-z0-9_]{16,}\b", "[API_KEY]"),
        p(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b", "[EMAIL]"),
        p(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b", "[IP_ADDRESS]"),
        p(r"\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b", "[IP_ADDRESS]"),
        p(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\b\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}\b", "[PHONE]"),
        // 32+ characters mixing letters and digits with no spaces: secrets, tokens, hashes.
        p(r"\b(?:[A-Za-z]+\d|\d+[A-Za-z])[A-Za-z0-9_\-]{30,}\b", "[API_KEY]"),
    ]
});

/// Replaces PII in `text`; returns how many replacements were made.
pub fn redact(text: &mut String) -> usize {
    let mut count = 0;
    for p in PATTERNS.iter() {
        let n = p.regex.find_iter(text).count();
        if n > 0 {
            count += n;
            *text = p.regex.replace_all(text, p.placeholder).into_owned();
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_each_kind() {
        let mut t = "Mail jane.doe@example.com or call +1 415-555-0134; server 192.168.0.12; \
                     key sk-abcdefghijklmnop1234 and AKIAABCDEFGHIJKLMNOP; token ghp_abcdefghijklmnopqrstuvwxyz1234"
            .to_string();
        let n = redact(&mut t);
        assert_eq!(
            t,
            "Mail [EMAIL] or call [PHONE]; server [IP_ADDRESS]; key [API_KEY] and [API_KEY]; token [API_KEY]"
        );
        assert_eq!(n, 6);
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        let mut t = "In 1999, 3 of 4 people read 12.5 pages of Romeo and Juliet, act 2 scene 3.".to_string();
        assert_eq!(redact(&mut t), 0);
    }

    #[test]
    fn normalized_dedup_ignores_case_space_and_punctuation() {
        let keys: Vec<String> =
            ["Hello,  World!", "hello world", "Hello there", "Hello, World!"].map(String::from).to_vec();
        assert_eq!(dedup(&keys, false), vec![0, 1, 2, 3]);
        assert_eq!(dedup(&keys, true), vec![0, 2]);
        let exact: Vec<String> = ["a", "b", "a"].map(String::from).to_vec();
        assert_eq!(dedup(&exact, false), vec![0, 1]);
    }
}

//! The Porter stemmer as NLTK 3.10's `PorterStemmer()` computes it in its default mode
//! (`NLTK_EXTENSIONS`: Martin Porter's extensions plus NLTK's irregular forms and rules), which
//! rouge-score uses with `use_stemmer=True`. A port rule by rule, for the ASCII `[a-z0-9]` tokens
//! rouge-score's tokenizer gives.

/// Irregular forms NLTK maps before any rule.
const POOL: &[(&str, &str)] = &[
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

/// Consonant flags of every letter: `y` is a consonant at the start or after a vowel.
fn consonant_flags(w: &[u8]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let f = if is_vowel(c) {
            false
        } else if c == b'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(f);
    }
    flags
}

fn is_consonant(w: &[u8], i: usize) -> bool {
    consonant_flags(&w[..=i])[i]
}

/// m in [C](VC){m}[V].
fn measure(stem: &[u8]) -> usize {
    let f = consonant_flags(stem);
    f.windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(stem: &[u8]) -> bool {
    consonant_flags(stem).iter().any(|c| !c)
}

fn ends_double_consonant(w: &[u8]) -> bool {
    w.len() >= 2 && w[w.len() - 1] == w[w.len() - 2] && is_consonant(w, w.len() - 1)
}

/// *o: ends consonant-vowel-consonant, the last not w, x or y (NLTK: or a two-letter vowel-consonant word).
fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], b'w' | b'x' | b'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

type Condition<'a> = &'a dyn Fn(&[u8]) -> bool;

/// A suffix rule: suffix (`*d`: a double consonant), replacement, condition on the stem.
struct Rule<'a>(&'a str, String, Option<Condition<'a>>);

/// NLTK's `_apply_rule_list`: the first rule whose suffix matches decides (applied or not).
fn apply_rules(word: &[u8], rules: &[Rule]) -> Vec<u8> {
    for Rule(suffix, replacement, condition) in rules {
        if *suffix == "*d" && ends_double_consonant(word) {
            let stem = &word[..word.len() - 2];
            return if condition.is_none_or(|c| c(stem)) {
                [stem, replacement.as_bytes()].concat()
            } else {
                word.to_vec()
            };
        }
        if word.ends_with(suffix.as_bytes()) {
            let stem = &word[..word.len() - suffix.len()];
            return if condition.is_none_or(|c| c(stem)) {
                [stem, replacement.as_bytes()].concat()
            } else {
                word.to_vec()
            };
        }
    }
    word.to_vec()
}

fn rule<'a>(suffix: &'a str, replacement: &str, condition: Option<Condition<'a>>) -> Rule<'a> {
    Rule(suffix, replacement.to_string(), condition)
}

fn replace_suffix(word: &[u8], suffix: &str, replacement: &str) -> Vec<u8> {
    [&word[..word.len() - suffix.len()], replacement.as_bytes()].concat()
}

fn step1a(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"ies") && w.len() == 4 {
        return replace_suffix(w, "ies", "ie");
    }
    apply_rules(w, &[rule("sses", "ss", None), rule("ies", "i", None), rule("ss", "ss", None), rule("s", "", None)])
}

fn step1b(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"ied") {
        return replace_suffix(w, "ied", if w.len() == 4 { "ie" } else { "i" });
    }
    if w.ends_with(b"eed") {
        let stem = &w[..w.len() - 3];
        return if measure(stem) > 0 { [stem, b"ee"].concat() } else { w.to_vec() };
    }
    let mut intermediate = None;
    for suffix in ["ed", "ing"] {
        if w.ends_with(suffix.as_bytes()) {
            let stem = &w[..w.len() - suffix.len()];
            if contains_vowel(stem) {
                intermediate = Some(stem.to_vec());
                break;
            }
        }
    }
    let Some(stem) = intermediate else { return w.to_vec() };
    let last = *stem.last().expect("a stem with a vowel is not empty");
    let not_lsz = move |_: &[u8]| !matches!(last, b'l' | b's' | b'z');
    let m1_cvc = |s: &[u8]| measure(s) == 1 && ends_cvc(s);
    apply_rules(
        &stem,
        &[
            rule("at", "ate", None),
            rule("bl", "ble", None),
            rule("iz", "ize", None),
            Rule("*d", (last as char).to_string(), Some(&not_lsz)),
            rule("", "e", Some(&m1_cvc)),
        ],
    )
}

fn step1c(w: &[u8]) -> Vec<u8> {
    let cond = |s: &[u8]| s.len() > 1 && is_consonant(s, s.len() - 1);
    apply_rules(w, &[rule("y", "i", Some(&cond))])
}

fn positive(s: &[u8]) -> bool {
    measure(s) > 0
}

fn step2(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"alli") && positive(&w[..w.len() - 4]) {
        return step2(&replace_suffix(w, "alli", "al"));
    }
    let p: Condition = &positive;
    let word = w.to_vec();
    let logi = move |_: &[u8]| positive(&word[..word.len() - 3]);
    let rules = [
        rule("ational", "ate", Some(p)),
        rule("tional", "tion", Some(p)),
        rule("enci", "ence", Some(p)),
        rule("anci", "ance", Some(p)),
        rule("izer", "ize", Some(p)),
        rule("bli", "ble", Some(p)),
        rule("alli", "al", Some(p)),
        rule("entli", "ent", Some(p)),
        rule("eli", "e", Some(p)),
        rule("ousli", "ous", Some(p)),
        rule("ization", "ize", Some(p)),
        rule("ation", "ate", Some(p)),
        rule("ator", "ate", Some(p)),
        rule("alism", "al", Some(p)),
        rule("iveness", "ive", Some(p)),
        rule("fulness", "ful", Some(p)),
        rule("ousness", "ous", Some(p)),
        rule("aliti", "al", Some(p)),
        rule("iviti", "ive", Some(p)),
        rule("biliti", "ble", Some(p)),
        rule("fulli", "ful", Some(p)),
        rule("logi", "log", Some(&logi)),
    ];
    apply_rules(w, &rules)
}

fn step3(w: &[u8]) -> Vec<u8> {
    let p: Condition = &positive;
    apply_rules(
        w,
        &[
            rule("icate", "ic", Some(p)),
            rule("ative", "", Some(p)),
            rule("alize", "al", Some(p)),
            rule("iciti", "ic", Some(p)),
            rule("ical", "ic", Some(p)),
            rule("ful", "", Some(p)),
            rule("ness", "", Some(p)),
        ],
    )
}

fn step4(w: &[u8]) -> Vec<u8> {
    let gt1 = |s: &[u8]| measure(s) > 1;
    let ion = |s: &[u8]| measure(s) > 1 && matches!(s.last(), Some(b's' | b't'));
    let g: Condition = &gt1;
    let suffixes = ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent"];
    let mut rules: Vec<Rule> = suffixes.iter().map(|s| rule(s, "", Some(g))).collect();
    rules.push(rule("ion", "", Some(&ion)));
    rules.extend(["ou", "ism", "ate", "iti", "ous", "ive", "ize"].iter().map(|s| rule(s, "", Some(g))));
    apply_rules(w, &rules)
}

fn step5a(w: &[u8]) -> Vec<u8> {
    if let Some(stem) = w.strip_suffix(b"e") {
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    w.to_vec()
}

fn step5b(w: &[u8]) -> Vec<u8> {
    let word = w.to_vec();
    let cond = move |_: &[u8]| measure(&word[..word.len() - 1]) > 1;
    apply_rules(w, &[rule("ll", "l", Some(&cond))])
}

/// NLTK's `PorterStemmer().stem(word)` for an ASCII word; a word with other characters is
/// returned lowercased, unstemmed (rouge-score's tokens never have one).
pub fn stem(word: &str) -> String {
    let lower = word.to_lowercase();
    if !lower.is_ascii() {
        return lower;
    }
    if let Some((_, s)) = POOL.iter().find(|(w, _)| *w == lower) {
        return (*s).to_string();
    }
    if word.chars().count() <= 2 {
        return lower;
    }
    let mut w = lower.into_bytes();
    for step in [step1a, step1b, step1c, step2, step3, step4, step5a, step5b] {
        w = step(&w);
    }
    String::from_utf8(w).expect("ASCII in, ASCII out")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_as_nltk() {
        for (word, want) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("running", "run"),
            ("hopping", "hop"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("skies", "sky"),
            ("controlling", "control"),
        ] {
            assert_eq!(stem(word), want, "{word}");
        }
    }
}

"""Goldens for recipe's evaluation metrics (src/eval/): sacrebleu 2.6 (BLEU, chrF, TER with their
defaults), rouge-score 0.1.2 (as the `evaluate` library calls it, without and with its Porter
stemmer, NLTK's) and SQuAD-normalized exact match,
over fixed prediction/reference sets. Writes tests/golden/eval/metrics.json (inputs and figures);
tests/eval_metrics.rs recomputes every figure in Rust.

Versions: scripts/reference/requirements-eval.txt. Run from the repository root:
  PYTHONPATH=/root/.cache/recipe/ref-py-eval python3 -S scripts/reference/eval_goldens.py
"""
import json
import random
import re
import string
import sys
from pathlib import Path

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF, TER
from rouge_score import rouge_scorer

assert sacrebleu.__version__ == "2.6.0", sacrebleu.__version__

OUT = Path("tests/golden/eval/metrics.json")

# (prediction, reference): punctuation, numbers, unicode, empty texts, reordered words (TER shifts),
# several lines (ROUGE-Lsum), XML escapes and hyphenation (13a), articles (exact match).
MIXED = [
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("the cat is on the mat", "The cat sat on the mat."),
    ("", "An empty prediction still has a reference."),
    ("A prediction against an empty reference.", ""),
    ("", ""),
    ("Paris", "paris."),
    ("The Eiffel Tower", "Eiffel tower!"),
    ("an apple a day keeps the doctor away", "An apple a day keeps a doctor away."),
    ("It costs $3.50, or 1,000 yen (2-3 days).", "It costs $ 3.50 or 1,000 yen, 2 - 3 days."),
    ("Version 2.0.1 was released on 2024-01-15.", "Version 2.0.1 was released on 15 January 2024."),
    ("mat the on sat cat the", "the cat sat on the mat"),
    ("on the mat the cat sat", "the cat sat on the mat"),
    ("b c a", "a b c"),
    ("Café au lait, s'il vous plaît!", "Un café au lait, s'il vous plaît."),
    ("Straße und Fluß sind größer.", "Die Straße ist größer als der Fluss."),
    ("ΟΔΟΣ και σοφός άνθρωπος", "Η οδός του σοφού ανθρώπου"),
    ("東京は日本の首都です。", "日本の首都は東京です。"),
    ("Привет, мир! Как дела?", "Привет мир, как твои дела?"),
    ("I love 🍕 and 🍣!", "I love pizza 🍕 and sushi 🍣."),
    ("Line one.\nLine two is here.\nAnd three.", "Line one.\nThe second line is here.\nAnd line three."),
    ("first sentence\n\nsecond sentence", "first sentence\nsecond one\n"),
    ("Tom &amp; Jerry &lt;3 &quot;cartoons&quot;", "Tom & Jerry <3 \"cartoons\""),
    ("self-\nevident truths <skipped> remain", "self-evident truths remain"),
    ("He said: \"Don't go!\" -- then left...", "He said \"don't go\" and then he left."),
    ("e-mail me at test@example.com or call +1 (555) 010-0199", "Email me at test@example.com or call 555-010-0199."),
    ("The the the the the the.", "The cat."),
    ("cat", "cat"),
    ("cat dog", "dog cat"),
    ("   leading and trailing spaces   ", "leading and trailing spaces"),
    ("tabs\tand\u00a0no-break\u2009spaces", "tabs and no-break spaces"),
    ("42", "42"),
    ("3.14159", "3.14"),
    ("x = 2 * (y + 3) / 4", "x=2*(y+3)/4"),
    ("The answer is B.", "B"),
    ("Yes", "yes"),
    ("An answer", "answer"),
    ("over the lazy dog the quick brown fox jumps", "the quick brown fox jumps over the lazy dog"),
    ("The quick brown fox jumps over the lazy dog.", "A quick brown dog jumps over the lazy fox."),
    ("Machine translation is hard, but evaluation is harder.",
     "Evaluating machine translation is harder than translating."),
    ("Die Katze sitzt auf der Matte.", "The cat sits on the mat."),
    ("C'est la vie; c'est comme ça.", "C'est la vie, c'est comme ça !"),
    ("1. First\n2. Second\n3. Third", "1. First\n2. Second\n3. Third"),
    ("what's the time? it's 10:30 am.", "What is the time? It is 10:30 a.m."),
]

VOCAB = ("the a cat dog sat on mat and of in to is was it that for with as his her they "
         "quick brown fox jumps over lazy river bank money paper 1 2 3 , . ; !").split()


def long_pairs(seed, count):
    """Long texts (up to 120 words) from a small vocabulary: many repeated words, so TER's shift
    search meets its size, distance and candidate limits."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        n = rng.randint(20, 120)
        ref = [rng.choice(VOCAB) for _ in range(n)]
        hyp = list(ref)
        for _ in range(rng.randint(1, 12)):
            kind = rng.random()
            i = rng.randrange(len(hyp)) if hyp else 0
            if kind < 0.3 and hyp:
                hyp[i] = rng.choice(VOCAB)
            elif kind < 0.5 and hyp:
                del hyp[i]
            elif kind < 0.7:
                hyp.insert(i, rng.choice(VOCAB))
            elif len(hyp) > 12:
                # move a block of words elsewhere
                length = rng.randint(1, 8)
                block = hyp[i:i + length]
                del hyp[i:i + length]
                j = rng.randrange(len(hyp) + 1)
                hyp[j:j] = block
        pairs.append((" ".join(hyp), " ".join(ref)))
    return pairs


def multiline_pairs(seed, count):
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        def text():
            lines = []
            for _ in range(rng.randint(1, 4)):
                lines.append(" ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 9))))
            return "\n".join(lines)
        pairs.append((text(), text()))
    return pairs


def shuffled_pairs(seed, count):
    """The reference's words in another order: TER's shifts do the work."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        ref = [rng.choice(VOCAB) for _ in range(rng.randint(3, 40))]
        hyp = list(ref)
        rng.shuffle(hyp)
        pairs.append((" ".join(hyp), " ".join(ref)))
    return pairs


MORPHOLOGY = ("running runs ran runner happily happiness happy skies sky relational relate "
              "generalization generalize controlling controlled agreed agreement hopping hoped "
              "conditional condition analogous analogously sensitivity sensible dying lying ties "
              "feed fed flies flying caresses ponies electrical electricity formalize goodness "
              "adoption adoptive operator operating proceed proceeding news innings 2024 x9").split()


def morphology_pairs(seed, count):
    """Inflected English words, for the stemmer."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        def text():
            lines = [" ".join(rng.choice(MORPHOLOGY) for _ in range(rng.randint(1, 12)))
                     for _ in range(rng.randint(1, 3))]
            return "\n".join(lines)
        pairs.append((text(), text()))
    return pairs


def normalize_answer(s):
    """SQuAD v1.1's official normalization (as evaluate's `squad` metric)."""
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def score_set(name, pairs):
    hyps = [p for p, _ in pairs]
    refs = [r for _, r in pairs]
    bleu, sent_bleu = BLEU(), BLEU(effective_order=True)  # sacrebleu.sentence_bleu's setting
    chrf, ter = CHRF(), TER()
    # evaluate's rouge: RougeScorer(rouge_types, use_stemmer=False), score(reference, prediction).
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(rouge_types=types, use_stemmer=False)
    stemming = rouge_scorer.RougeScorer(rouge_types=types, use_stemmer=True)
    samples = []
    for h, r in pairs:
        rouge = scorer.score(r, h)
        stemmed = stemming.score(r, h)
        samples.append({
            "prediction": h,
            "reference": r,
            "sacrebleu": sent_bleu.sentence_score(h, [r]).score,
            "chrf": chrf.sentence_score(h, [r]).score,
            "ter": ter.sentence_score(h, [r]).score,
            **{t: rouge[t].fmeasure for t in types},
            "exact_match": 100.0 if normalize_answer(h) == normalize_answer(r) else 0.0,
            "stemmed": {t: stemmed[t].fmeasure for t in types},
        })
    corpus = {
        "sacrebleu": bleu.corpus_score(hyps, [refs]).score,
        "chrf": chrf.corpus_score(hyps, [refs]).score,
        "ter": ter.corpus_score(hyps, [refs]).score,
    }
    for t in types:
        # The mean of the per-sample F1s, summed in order (a plain loop: no compensated sum).
        total = 0.0
        for s in samples:
            total += s[t]
        corpus[t] = total / len(samples)
    corpus_stemmed = {}
    for t in types:
        total = 0.0
        for s in samples:
            total += s["stemmed"][t]
        corpus_stemmed[t] = total / len(samples)
    hits = 0
    for s in samples:
        hits += s["exact_match"] == 100.0
    corpus["exact_match"] = 100.0 * hits / len(samples)
    return {"name": name, "corpus": corpus, "corpus_stemmed": corpus_stemmed, "samples": samples}


def main():
    sets = [
        score_set("mixed", MIXED),
        score_set("long", long_pairs(17, 60)),
        score_set("multiline", multiline_pairs(23, 50)),
        score_set("shuffled", shuffled_pairs(29, 15)),
        score_set("morphology", morphology_pairs(31, 30)),
        score_set("single", [MIXED[1]]),
        score_set("all_empty_predictions", [("", r) for _, r in MIXED[:6]]),
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "generated_by": "scripts/reference/eval_goldens.py",
        "versions": {"python": sys.version.split()[0], "sacrebleu": sacrebleu.__version__, "rouge-score": "0.1.2"},
        "sets": sets,
    }
    OUT.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    figures = sum(len(s["corpus"]) + len(s["corpus_stemmed"])
                  + sum(len(x) - 3 + len(x["stemmed"]) for x in s["samples"]) for s in sets)
    print(f"wrote {OUT}: {len(sets)} sets, {figures} figures")


if __name__ == "__main__":
    main()

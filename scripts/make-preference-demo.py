#!/usr/bin/env python3
"""Writes data/preference/shakespeare-continuations.jsonl: preference pairs made from the public-domain
Shakespeare excerpt for the DPO demo and tests (no third-party text beyond it). Each pair: a speech's
first line as the prompt, its true next line as `chosen`, and the same line with its words shuffled
(seeded) as `rejected`: a preference for well-formed text that a small model can learn and carry over
to unseen pairs. Deterministic: rerunning writes the same file.

    python3 scripts/make-preference-demo.py
"""
import json
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "data/shakespeare/tinyshakespeare-excerpt.txt")
OUT = os.path.join(ROOT, "data/preference/shakespeare-continuations.jsonl")
PAIRS = 240


def main():
    with open(SOURCE, encoding="utf-8") as f:
        speeches = [block.strip().split("\n") for block in f.read().split("\n\n")]
    # A speech: a speaker line, then at least two lines of text.
    candidates = [s[1:] for s in speeches if len(s) >= 3 and s[0].endswith(":")]
    rng = random.Random(1601)
    rng.shuffle(candidates)
    rows = []
    for lines in candidates:
        words = lines[1].split()
        if len(words) < 4:
            continue
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        rows.append({"prompt": lines[0] + "\n", "chosen": lines[1], "rejected": " ".join(shuffled)})
        if len(rows) == PAIRS:
            break
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} pairs -> {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()

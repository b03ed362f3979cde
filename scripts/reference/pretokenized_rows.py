#!/usr/bin/env python3
"""Pre-tokenized rows for tests/pretok.rs: Axolotl's dataset without `type` (rows holding
`input_ids`, `attention_mask` and `labels`, used as they are), tokenized by transformers with the
bundled model's tokenizer (models/stories260k), so no id is typed by hand.

Rows, tests/fixtures/pretok/rows.jsonl (one JSON object a line, a `text` field beside the three
lists, which recipe does not read, as the trainer drops columns the model does not take):
  - every row of tests/fixtures/pipeline/instructions.jsonl as "Question: ... Answer:" + " output":
    BOS + the prompt and the answer tokenized together + EOS, labels -100 over BOS and the prompt's own
    tokens (rows 1 and 3 are the same, for deduplication);
  - two lines of data/stories/stories260k-samples.txt, every token trained (labels = input_ids): the
    first cut to 40 tokens, the second whole (longer than the tests' sequence_len of 96, for
    excess_length_strategy).

run:
  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \\
    python3 -S scripts/reference/pretokenized_rows.py [--check]
"""

import json
import os
import sys

from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests/fixtures/pretok/rows.jsonl")


def row(text, input_ids, labels):
    return {"text": text, "input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def main():
    tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, "models/stories260k"))
    rows = []
    with open(os.path.join(ROOT, "tests/fixtures/pipeline/instructions.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            question = r["instruction"] + (" " + r["input"] if r["input"] else "")
            prompt = f"Question: {question}\nAnswer:"
            text = f"{prompt} {r['output']}"
            ids = tok(text)["input_ids"] + [tok.eos_token_id]
            masked = len(tok(prompt)["input_ids"])
            rows.append(row(text, ids, [-100] * masked + ids[masked:]))
    with open(os.path.join(ROOT, "data/stories/stories260k-samples.txt"), encoding="utf-8") as f:
        stories = [line.strip() for line in f if line.strip()]
    short = tok(stories[0])["input_ids"][:40]
    rows.append(row(tok.decode(short, skip_special_tokens=True), short, list(short)))
    long = tok(stories[1])["input_ids"] + [tok.eos_token_id]
    assert len(long) > 96, len(long)
    rows.append(row(stories[1], long, list(long)))
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if "--check" in sys.argv[1:]:
        with open(OUT, encoding="utf-8") as f:
            same = f.read() == text
        print(f"{os.path.relpath(OUT, ROOT)}: {'identical' if same else 'DIFFERS'}")
        sys.exit(0 if same else 1)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"{len(rows)} rows -> {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Goldens for Axolotl's KTO dataset types (tests/kto_formats.rs): runs Axolotl's own transforms
(src/axolotl/prompt_strategies/kto/chatml.py and llama3.py, pure Python with no imports, loaded from
an Axolotl checkout) on tests/fixtures/kto/rows.jsonl (argilla, intel, prompt_pairs, ultra) and
tests/fixtures/kto/chat_rows.jsonl (argilla_chat), and writes each type's prompt, completion and
label per row to tests/golden/kto_formats.json.

Run with the path of an Axolotl checkout (the goldens were made at 067b021c8b87a9e5e380b9173c704cf7340e30f5):
  python3 scripts/reference/kto_format_goldens.py /path/to/axolotl
"""
import copy
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(path):
    module = {}
    with open(path, encoding="utf-8") as f:
        exec(compile(f.read(), path, "exec"), module)  # noqa: S102 (Axolotl's own file, pure functions)
    return module


def rows(name):
    with open(os.path.join(ROOT, "tests/fixtures/kto", name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    strategies = os.path.join(sys.argv[1], "src/axolotl/prompt_strategies/kto")
    out = {}
    for turns in ("chatml", "llama3"):
        module = load(os.path.join(strategies, f"{turns}.py"))
        for fields in ("argilla", "argilla_chat", "intel", "prompt_pairs", "ultra"):
            transform = module[fields](cfg={})
            source = "chat_rows.jsonl" if fields == "argilla_chat" else "rows.jsonl"
            done = [transform(copy.deepcopy(r)) for r in rows(source)]
            out[f"{turns}.{fields}"] = {
                "rows": source,
                "expected": [{"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]} for r in done],
            }
    path = os.path.join(ROOT, "tests/golden/kto_formats.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")
    print(f"{len(out)} types -> {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Goldens for Axolotl's string preference types (tests/preference_formats.rs): runs Axolotl's own
transforms on the fixture rows and writes each row's prompt, chosen and rejected text, and the
token ids the method's TRL trainer makes of them under models/stories260k's tokenizer (Axolotl hands
these texts to TRL's DPOTrainer / ORPOTrainer: preference_tokenization_goldens.trl_sides, under `ids`
per answer the prompt ids before it and its own), to tests/golden/preference_formats.json.

- DPO (`rl: dpo|ipo|simpo`, Axolotl's load_dpo): every function of
  src/axolotl/prompt_strategies/dpo/chatml.py and llama3.py (pure Python with no imports, exec'd
  from the checkout): `default`, `icr`, `intel`, `prompt_pairs` on tests/fixtures/dpo/rows.jsonl,
  `default` also on tests/fixtures/dpo/default_rows.jsonl (its fallback field names), and
  `argilla_chat`, `ultra` on tests/fixtures/dpo/chat_rows.jsonl.
- ORPO (`rl: orpo`, Axolotl's load_orpo): `argilla` of src/axolotl/prompt_strategies/orpo/chat_template.py
  (imported from the checkout) with `chat_template: chatml` on tests/fixtures/orpo/argilla.jsonl.
- `chat_template.default` under `rl: dpo` and `rl: simpo` (Axolotl's load_dpo): `default` of
  src/axolotl/prompt_strategies/dpo/chat_template.py on tests/fixtures/preference/message_rows.jsonl and
  text_rows.jsonl (string prompts: Axolotl makes them user messages), with recipe's templates/chatml.jinja
  and llama2.jinja (message rows) given as `chat_template_jinja`.

Each row is passed as the dict json.loads gives (a field absent from a row is absent, as recipe
reads rows), one at a time.

The ORPO module imports axolotl's packages: it needs transformers, tokenizers, jinja2, pydantic
(scripts/reference/requirements.txt, in $RECIPE_CACHE/ref-py), torch ($RECIPE_CACHE/torch-2.11.0)
and `datasets` (scripts/reference/requirements-axolotl.txt); the token ids need TRL 1.16
(scripts/reference/requirements-trl.txt, in $RECIPE_CACHE/ref-py-trl, first on the path):
  grep -v "^#" scripts/reference/requirements-axolotl.txt | pip install --target $RECIPE_CACHE/ref-axolotl --no-deps -r /dev/stdin

Run with the path of an Axolotl checkout (the goldens were made at 067b021c8b87a9e5e380b9173c704cf7340e30f5):
  PYTHONPATH=$RECIPE_CACHE/ref-py-trl:/path/to/axolotl/src:$RECIPE_CACHE/ref-py:$RECIPE_CACHE/torch-2.11.0:$RECIPE_CACHE/ref-axolotl \\
    python3 scripts/reference/preference_format_goldens.py /path/to/axolotl
"""
import copy
import json
import os
import sys

from kto_format_goldens import load  # exec's one of Axolotl's pure-Python strategy files
from preference_tokenization_goldens import trl_sides

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DPO_CASES = [
    ("default", "dpo/rows.jsonl"),
    ("default", "dpo/default_rows.jsonl"),
    ("icr", "dpo/rows.jsonl"),
    ("intel", "dpo/rows.jsonl"),
    ("prompt_pairs", "dpo/rows.jsonl"),
    ("argilla_chat", "dpo/chat_rows.jsonl"),
    ("ultra", "dpo/chat_rows.jsonl"),
]


def rows(name):
    with open(os.path.join(ROOT, "tests/fixtures", name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def expected(done, tokenizer, method):
    texts = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in done]
    return [{**t, "ids": sides} for t, sides in zip(texts, trl_sides(method, texts, tokenizer))]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    checkout = sys.argv[1]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(ROOT, "models/stories260k"))
    out = {"dpo": [], "orpo": []}
    strategies = os.path.join(checkout, "src/axolotl/prompt_strategies/dpo")
    for turns in ("chatml", "llama3"):
        module = load(os.path.join(strategies, f"{turns}.py"))
        for fields, source in DPO_CASES:
            transform = module[fields](cfg={})
            done = [transform(copy.deepcopy(r)) for r in rows(source)]
            out["dpo"].append({"type": f"{turns}.{fields}", "rows": source, "expected": expected(done, tokenizer, "dpo")})

    from axolotl.prompt_strategies.orpo import chat_template as orpo

    # Axolotl's cfg is a DictDefault; `argilla` only calls cfg.get("chat_template"/"chat_template_jinja").
    transform = orpo.argilla({"chat_template": "chatml"})
    source = "orpo/argilla.jsonl"
    done = [transform(copy.deepcopy(r), tokenizer=tokenizer) for r in rows(source)]
    out["orpo"].append(
        {"type": "chat_template.argilla", "chat_template": "chatml", "rows": source, "expected": expected(done, tokenizer, "orpo")}
    )
    # `chat_template.default` under dpo / ipo / simpo: Axolotl's dpo/chat_template.py `default` with
    # recipe's template files as `chat_template_jinja` (the same jinja on both sides), handed to DPO's
    # and SimPO's trainers.
    from axolotl.prompt_strategies.dpo import chat_template as dpo_chat_template
    from axolotl.utils.dict import DictDefault

    out["default"] = []
    # Text rows in chatml only: llama2 writes " </s>" after an answer that already ends with "</s>", where
    # transformers 5 and tokenizer.json part on the space after a special token (models/stories260k/README.md).
    for source, names in (("preference/message_rows.jsonl", ("chatml", "llama2")), ("preference/text_rows.jsonl", ("chatml",))):
        for name in names:
            with open(os.path.join(ROOT, "templates", f"{name}.jinja"), encoding="utf-8") as f:
                jinja = f.read()
            cfg = DictDefault({"chat_template": "jinja", "chat_template_jinja": jinja,
                               "datasets": [{"type": "chat_template.default", "field_messages": "prompt"}]})
            transform, _ = dpo_chat_template.default(cfg, dataset_idx=0)
            done = [transform(copy.deepcopy(r), tokenizer=tokenizer) for r in rows(source)]
            for method in ("dpo", "simpo"):
                out["default"].append({"type": "chat_template.default", "method": method, "chat_template": name,
                                       "rows": source, "expected": expected(done, tokenizer, method)})
    path = os.path.join(ROOT, "tests/golden/preference_formats.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False, sort_keys=True)
        f.write("\n")
    print(f"{len(out['dpo'])} DPO cases, {len(out['orpo'])} ORPO case, {len(out['default'])} chat_template.default "
          f"cases -> {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()

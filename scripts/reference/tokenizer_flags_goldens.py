#!/usr/bin/env python3
"""Goldens of what transformers' `tokenizer(text)` adds, and which special tokens it reads.

Writes small tokenizer folders under tests/fixtures/tokenizers/<case>/ made from
models/stories260k's tokenizer files (tokenizer.json, tokenizer_config.json,
special_tokens_map.json), each changed in one way, loads each with transformers'
`AutoTokenizer.from_pretrained(dir)` and records to tests/golden/tokenizer_flags.json:
`tokenizer(text)["input_ids"]`, the same with `add_special_tokens=False`, what the first adds
before / after the second (`prefix`, `suffix`), `bos_token_id` and `eos_token`.
tests/tokenizer_flags.rs checks recipe's `Tokenizer` (encode_with_special, bos, adds_eos,
bos_token_id, eos_text) against them.

What the cases show (transformers 5.24): tokenizer_config.json's add_bos_token/add_eos_token are
dropped when a tokenizer.json exists, the post_processor of tokenizer.json decides; without one,
the class's flags (none for LlamaTokenizer and the generic class; BOS for CodeLlamaTokenizer);
special_tokens_map.json overrides tokenizer_config.json's special tokens unless the config has an
`added_tokens_decoder`. `special_tokens_set`: the as_is folder after
`add_special_tokens({"bos_token": "<bos2>", "eos_token": "<eos2>"})` as Axolotl's load_tokenizer
calls it for `special_tokens:` (AddedToken, not normalized; its `update_post_processor()` call is
for class names `LlamaTokenizerFast` / `CodeLlamaTokenizerFast`, which transformers 5 names
`LlamaTokenizer` / `CodeLlamaTokenizer`, so it is not made): the post-processor keeps its BOS.

Run (reference stack of scripts/reference/requirements.txt):
  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \
    python3 -S scripts/reference/tokenizer_flags_goldens.py [--check]
`--check` compares with the committed goldens (and fixtures) instead of writing them.
"""

import copy
import json
import os
import sys

import transformers
from tokenizers import AddedToken
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(ROOT, "models", "stories260k")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
GOLDEN = os.path.join(ROOT, "tests", "golden", "tokenizer_flags.json")
TEXTS = ["Once upon a time", "a", "The cat sat.\nIt was happy!"]


def load(name):
    with open(os.path.join(SRC, name), encoding="utf-8") as f:
        return json.load(f)


BOS_EOS_TEMPLATE = {
    "type": "TemplateProcessing",
    "single": [
        {"SpecialToken": {"id": "<s>", "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": "</s>", "type_id": 0}},
    ],
    "pair": [
        {"SpecialToken": {"id": "<s>", "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": "</s>", "type_id": 0}},
        {"Sequence": {"id": "B", "type_id": 1}},
    ],
    "special_tokens": {
        "<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
        "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]},
    },
}
ADDED_UNK = {"0": {"content": "<unk>", "lstrip": False, "normalized": False, "rstrip": False,
                   "single_word": False, "special": True}}
SPECIAL = {"bos_token": "<bos2>", "eos_token": "<eos2>"}
GENERIC = {"tokenizer_class": "PreTrainedTokenizerFast"}

# name: (tokenizer_config changes, keys dropped from it, post_processor ("keep", None or a dict),
#        special_tokens_map.json content ("keep", None for no file, or a dict))
CASES = {
    "as_is": ({}, [], "keep", "keep"),
    "config_no_bos": ({"add_bos_token": False}, [], "keep", "keep"),
    "config_eos": ({"add_eos_token": True}, [], "keep", "keep"),
    "no_post_processor": ({"add_bos_token": True, "add_eos_token": True}, [], None, "keep"),
    "post_processor_eos": ({"add_eos_token": False}, [], BOS_EOS_TEMPLATE, "keep"),
    "generic_no_post_processor": (dict(GENERIC, add_eos_token=True), [], None, "keep"),
    "bos_in_map_only": (GENERIC, ["bos_token", "eos_token"], "keep", {"bos_token": "<s>"}),
    "no_bos_named": (GENERIC, ["bos_token", "eos_token"], "keep", None),
    "llama_class_defaults": ({}, ["bos_token", "eos_token"], "keep", None),
    "map_overrides_config": ({}, [], "keep",
                             {"eos_token": "<unk>", "pad_token": {"content": "<s>", "lstrip": False,
                                                                  "normalized": False, "rstrip": False,
                                                                  "single_word": False}}),
    "map_ignored_with_added_tokens_decoder": ({"added_tokens_decoder": ADDED_UNK}, [], "keep",
                                              {"eos_token": "<unk>"}),
    "codellama_no_post_processor": ({"tokenizer_class": "CodeLlamaTokenizerFast", "add_bos_token": False},
                                    [], None, "keep"),
}


def dump(obj):
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def files_of(case):
    changes, dropped, post, smap = CASES[case]
    tok = load("tokenizer.json")
    if post != "keep":
        tok["post_processor"] = copy.deepcopy(post)
    config = load("tokenizer_config.json")
    config.update(copy.deepcopy(changes))
    for k in dropped:
        config.pop(k, None)
    files = {"tokenizer.json": dump(tok), "tokenizer_config.json": dump(config)}
    if smap == "keep":
        files["special_tokens_map.json"] = dump(load("special_tokens_map.json"))
    elif smap is not None:
        files["special_tokens_map.json"] = dump(smap)
    return files


def record(folder, special=None):
    t = AutoTokenizer.from_pretrained(folder)
    if special:
        t.add_special_tokens({k: AddedToken(v, rstrip=False, lstrip=False, normalized=False)
                              for k, v in special.items()})
    rows = []
    for text in TEXTS:
        ids = t(text)["input_ids"]
        plain = t(text, add_special_tokens=False)["input_ids"]
        at = next(i for i in range(len(ids) - len(plain) + 1) if ids[i:i + len(plain)] == plain)
        rows.append({"text": text, "input_ids": ids, "plain_ids": plain,
                     "prefix": ids[:at], "suffix": ids[at + len(plain):]})
    return {"class": type(t).__name__, "bos_token_id": t.bos_token_id, "eos_token": t.eos_token,
            "texts": rows}


def main():
    check = "--check" in sys.argv[1:]
    out = {"transformers": transformers.__version__, "cases": {}}
    differs = []
    for case in CASES:
        folder = os.path.join(FIXTURES, case)
        files = files_of(case)
        if check:
            for name, text in files.items():
                path = os.path.join(folder, name)
                if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:
                    differs.append(path)
        else:
            os.makedirs(folder, exist_ok=True)
            for name in os.listdir(folder):
                os.remove(os.path.join(folder, name))
            for name, text in files.items():
                with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                    f.write(text)
        out["cases"][case] = record(folder)
    out["special_tokens_set"] = dict(SPECIAL, **record(os.path.join(FIXTURES, "as_is"), SPECIAL))
    if check:
        if open(GOLDEN, encoding="utf-8").read() != dump(out):
            differs.append(GOLDEN)
        print("differs: " + ", ".join(differs) if differs else "goldens and fixtures match")
        sys.exit(1 if differs else 0)
    with open(GOLDEN, "w", encoding="utf-8") as f:
        f.write(dump(out))
    print(f"wrote {GOLDEN} and {len(CASES)} folders under {FIXTURES}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Goldens for how preference rows become token ids (tests/preference_tokenization.rs): each method's
TRL trainer prepares the fixture rows itself, and its own dataset (what it trains on) is written out.

- DPO (and IPO, which shares it): TRL 1.16's DPOTrainer `_prepare_dataset`;
- KTO: its KTOTrainer `_prepare_dataset` (the pairs unpaired by TRL: every chosen answer desirable,
  every rejected one undesirable);
- ORPO / SimPO: its experimental ORPOTrainer / CPOTrainer (`loss_type="simpo"`) `tokenize_row`, after
  their `maybe_apply_chat_template`.

Cases: tests/fixtures/preference/text_rows.jsonl (text rows, among them a prompt ending in a space,
answers already ending with EOS's text, a prompt ending inside a word, a row where only one answer
merges with the prompt) and message_rows.jsonl (message lists) rendered with recipe's
templates/chatml.jinja and templates/llama2.jinja, for KTO and ORPO (under DPO / IPO / SimPO recipe reads
`chat_template.default` rows as Axolotl's transform does: preference_format_goldens.py, whose texts go
to the same trainers), on models/stories260k's tokenizer.

Written per row and per answer (`chosen`, `rejected`): the prompt ids the trainer puts before that answer
and the answer's ids (for ORPO / SimPO: the sequence's tokens labelled -100 and the labelled ones), to
tests/golden/preference_tokenization.json. `trl_sides` is also used by preference_format_goldens.py.

Run (versions pinned in requirements.txt and requirements-trl.txt):
  PYTHONPATH=$RECIPE_CACHE/ref-py-trl:$RECIPE_CACHE/ref-py:$RECIPE_CACHE/torch-2.11.0 \\
    python3 -S scripts/reference/preference_tokenization_goldens.py
"""
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_DISABLED", "true")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models/stories260k")
FIXTURES = os.path.join(ROOT, "tests/fixtures/preference")
METHODS = ("dpo", "kto", "orpo", "simpo")
# TRL's text and conversational rows, as recipe's `chat_template.default` gives them under kto and orpo;
# under dpo / ipo / simpo it is Axolotl's transform (its goldens: preference_format_goldens.py).
CASES = [
    ("text_rows.jsonl", None, ("kto", "orpo")),
    ("message_rows.jsonl", "chatml", ("kto", "orpo")),
    ("message_rows.jsonl", "llama2", ("kto", "orpo")),
]


def tokenizer_with(chat_template):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if chat_template:
        with open(os.path.join(ROOT, "templates", f"{chat_template}.jinja"), encoding="utf-8") as f:
            tokenizer.chat_template = f.read()
    return tokenizer


def trl_sides(method, rows, tokenizer):
    """Per row (`prompt` / `chosen` / `rejected` as TRL reads them), what the method's trainer trains
    on: {"chosen": {"prompt_ids", "answer_ids"}, "rejected": {...}}."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(output_dir=tmp, report_to=[], use_cpu=True, dataset_num_proc=None, max_length=4096,
                      per_device_train_batch_size=1)
        data = Dataset.from_list(rows)
        if method == "dpo":
            trainer = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=data, processing_class=tokenizer)
            prepared = list(trainer.train_dataset)
            return [{side: {"prompt_ids": r["prompt_ids"], "answer_ids": r[f"{side}_ids"]} for side in ("chosen", "rejected")}
                    for r in prepared]
        if method == "kto":
            kto = {**common, "per_device_train_batch_size": 2}  # KTO refuses a batch of 1 (its KL term)
            trainer = KTOTrainer(model=model, args=KTOConfig(**kto), train_dataset=data, processing_class=tokenizer)
            prepared = list(trainer.train_dataset)
            n = len(rows)
            assert len(prepared) == 2 * n and all(r["label"] for r in prepared[:n]), "TRL unpairs chosen first"
            side = lambda r: {"prompt_ids": r["prompt_ids"], "answer_ids": r["completion_ids"]}  # noqa: E731
            return [{"chosen": side(prepared[i]), "rejected": side(prepared[n + i])} for i in range(n)]
        if method == "orpo":
            trainer = ORPOTrainer(model=model, args=ORPOConfig(**common), train_dataset=data,
                                  processing_class=tokenizer)
        else:
            trainer = CPOTrainer(model=model, args=CPOConfig(loss_type="simpo", cpo_alpha=1.0, **common),
                                 train_dataset=data, processing_class=tokenizer)
        out = []
        for r in trainer.train_dataset:
            sides = {}
            for side in ("chosen", "rejected"):
                ids, labels = r[f"{side}_input_ids"], r[f"{side}_labels"]
                prompt_len = sum(1 for label in labels if label == -100)
                assert all(label == -100 for label in labels[:prompt_len]), "the prompt is the labels' -100 prefix"
                sides[side] = {"prompt_ids": ids[:prompt_len], "answer_ids": ids[prompt_len:]}
            out.append(sides)
        return out


def read_rows(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def main():
    out = []
    for rows_name, template, methods in CASES:
        tokenizer = tokenizer_with(template)
        rows = read_rows(rows_name)
        for method in methods:
            out.append({"method": method, "rows": f"preference/{rows_name}", "chat_template": template,
                        "expected": trl_sides(method, rows, tokenizer)})
            print(f"{method} on {rows_name} ({template or 'text'}): {len(rows)} rows", file=sys.stderr)
    path = os.path.join(ROOT, "tests/golden/preference_tokenization.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(out)} cases -> {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()

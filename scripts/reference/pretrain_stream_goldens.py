#!/usr/bin/env python3
"""Goldens for `pretraining_dataset` (tests/pretrain.rs): runs Axolotl's own `encode_streaming`
(src/axolotl/utils/data/streaming.py, the function's source taken from an Axolotl checkout and run
unchanged; the rest of that file needs `datasets`, which the function does not use) with
transformers' tokenizer of the bundled stories260k, its pad token set as Axolotl's load_tokenizer
sets a Llama tokenizer's (`</s>`), on tests/fixtures/pretrain/corpus.jsonl read as Axolotl's stream
reads it: `skip` rows dropped, then `map(batched=True, batch_size=streaming_multipack_buffer_size)`.
Writes every row's input_ids, labels and attention_mask per case to tests/golden/pretrain/rows.json,
which stream rows accelerate's IterableDatasetShard (the split Axolotl's
`dispatch_batches: False` selects) yields to each rank, and transformers' fp32 loss and per-position
logsumexp of stories260k on two concatenated rows with their attention_mask (the pad
between texts hidden from attention, positions 0..n as the Trainer passes none).

Run with the path of an Axolotl checkout (the goldens were made at 067b021c8b87a9e5e380b9173c704cf7340e30f5):
  PYTHONPATH=~/.cache/recipe/ref-py:~/.cache/recipe/torch-2.11.0 python3 -S \\
      scripts/reference/pretrain_stream_goldens.py /path/to/axolotl
"""
import ast
import json
import os
import sys
from typing import Dict, List

import torch
from accelerate.data_loader import IterableDatasetShard
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models/stories260k")
CORPUS = os.path.join(ROOT, "tests/fixtures/pretrain/corpus.jsonl")

# (name, sequence_len, streaming_multipack_buffer_size, skip, pretraining_sample_concatenation)
CASES = [
    ("concatenated", 64, 5, 2, True),
    ("concatenated_one_chunk", 48, 10000, 0, True),
    ("one_text_per_row", 32, 4, 1, False),
]


MODEL_ROWS = [2, 5]


class _Log:
    def debug(self, *args, **kwargs):
        pass


def encode_streaming_from(checkout):
    """Axolotl's encode_streaming, compiled from its source file alone."""
    path = os.path.join(checkout, "src/axolotl/utils/data/streaming.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "encode_streaming")
    module = ast.Module(body=[fn], type_ignores=[])
    scope = {"torch": torch, "Dict": Dict, "List": List, "PreTrainedTokenizerBase": PreTrainedTokenizerBase, "LOG": _Log()}
    exec(compile(module, path, "exec"), scope)  # noqa: S102 (Axolotl's own function)
    return scope["encode_streaming"]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    encode_streaming = encode_streaming_from(sys.argv[1])
    tok = AutoTokenizer.from_pretrained(MODEL)
    if not tok.pad_token:
        tok.pad_token = "</s>"  # axolotl.loaders.tokenizer: LLAMA_DEFAULT_EOS_TOKEN
    with open(CORPUS, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    out = {"cases": [], "shard": []}
    for name, seq_len, buffer, skip, concatenate in CASES:
        stream = texts[skip:]
        rows = {"input_ids": [], "labels": [], "attention_mask": []}
        for start in range(0, len(stream), buffer):
            done = encode_streaming(
                {"text": stream[start : start + buffer]},
                tok,
                seq_len,
                text_column="text",
                concatenate=concatenate,
            )
            for k in rows:
                rows[k].extend(done[k])
        out["cases"].append(
            {
                "name": name,
                "sequence_len": seq_len,
                "buffer": buffer,
                "skip": skip,
                "concatenate": concatenate,
                "rows": [
                    {"input_ids": i, "labels": l, "attention_mask": m}
                    for i, l, m in zip(rows["input_ids"], rows["labels"], rows["attention_mask"])
                ],
            }
        )

    class Indices(torch.utils.data.IterableDataset):
        def __init__(self, n):
            self.n = n

        def __iter__(self):
            return iter(range(self.n))

    for world, mbs, n in [(2, 2, 24), (3, 1, 12), (2, 3, 18)]:
        for rank in range(world):
            shard = IterableDatasetShard(Indices(n), batch_size=mbs, drop_last=False, num_processes=world, process_index=rank)
            out["shard"].append({"world": world, "micro_batch_size": mbs, "rank": rank, "rows": list(shard)})
    model = LlamaForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
    # Rows 2 and 5 hold a pad between two texts (attention_mask 0 then 1).
    first = [out["cases"][0]["rows"][i] for i in MODEL_ROWS]
    batch = {k: torch.tensor([r[k] for r in first]) for k in ("input_ids", "labels", "attention_mask")}
    with torch.no_grad():
        result = model(**batch)
    out["model"] = {
        "case": out["cases"][0]["name"],
        "rows": MODEL_ROWS,
        "loss": result.loss.item(),
        "logsumexp": result.logits.logsumexp(-1).tolist(),
        "attn_implementation": model.config._attn_implementation,
    }
    path = os.path.join(ROOT, "tests/golden/pretrain/rows.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"{sum(len(c['rows']) for c in out['cases'])} rows in {len(CASES)} cases -> {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()

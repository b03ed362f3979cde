"""Golden perplexities for `recipe eval` (src/exec/eval.rs `nll`): transformers' loss on the bundled
stories260k for fixed texts, whole texts and answer-only (prompt tokens labelled -100), written with
their token ids to tests/golden/eval/perplexity.json; tests/eval.rs compares within 1e-4.

Versions: scripts/reference/requirements.txt (transformers, tokenizers, safetensors...) and torch
2.11.0, as that file says. Run from the repository root:
  PYTHONPATH=/root/.cache/recipe/ref-py-eval:/root/.cache/recipe/torch-2.11.0 \
    python3 -S scripts/reference/eval_perplexity.py
"""
import json
import math
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM

MODEL = "models/stories260k"
OUT = Path("tests/golden/eval/perplexity.json")

# (prompt, answer): the prompt's tokens carry no loss when an answer follows; an empty prompt
# scores the whole text.
TEXTS = [
    ("", "Once upon a time, there was a little girl named Lily. She loved to play outside."),
    ("", "The cat sat on the mat."),
    ("Tom had a red ball.", " He threw it to his friend Sam, and they laughed all day."),
    ("First Citizen:\n", "Before we proceed any further, hear me speak."),
    ("", "One day, a big dog came to the park. The dog was very happy and wanted to play with the kids. "
         "They ran and jumped until the sun went down, and then everyone went home to sleep."),
    ("Q: What colour is the sky?\nA:", " Blue."),
]


def main():
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = LlamaForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
    rows = []
    total_nll, total_tokens = 0.0, 0
    for prompt, answer in TEXTS:
        # As recipe tokenizes a prompt/response row: BOS, prompt and answer tokenized together, as
        # many tokens masked as the prompt alone gives.
        ids = tok(prompt + answer, add_special_tokens=True)["input_ids"]
        masked = len(tok(prompt, add_special_tokens=True)["input_ids"]) if prompt else 0
        labels = [-100] * masked + ids[masked:]
        with torch.no_grad():
            out = model(torch.tensor([ids]), labels=torch.tensor([labels]))
        tokens = sum(1 for label in labels[1:] if label != -100)
        loss = out.loss.item()
        total_nll += loss * tokens
        total_tokens += tokens
        rows.append({"input_ids": ids, "labels": labels, "tokens": tokens, "mean_nll": loss, "perplexity": math.exp(loss)})
    doc = {
        "generated_by": "scripts/reference/eval_perplexity.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "model": MODEL,
        "samples": rows,
        "corpus_perplexity": math.exp(total_nll / total_tokens),
        "corpus_tokens": total_tokens,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT}: {len(rows)} texts, corpus perplexity {doc['corpus_perplexity']:.6f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Developer-only: EWC's diagonal empirical Fisher information on the bundled stories260k, for
src/exec/ewc.rs (checked by tests/ewc.rs).

F = 1/N · Σ_n (∂L_n/∂θ)², L_n the mean next-token cross-entropy of sample n alone (batch 1),
computed with transformers' LlamaForCausalLM (fp32, eval mode) and plain autograd. Three samples
of random token ids (torch.Generator with fixed seeds) of different lengths. The Fisher of a fresh
LoRA's base weight W equals this one (B = 0, so the adapted model is the base), which the test
checks too.

Files, tests/golden/ewc/fisher.safetensors:
  sample<n>                 int64 token ids of sample n (labels are the same ids)
  fisher.<name>             F of each stored tensor (Hugging Face names)

run:
  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \
    python3 -S scripts/reference/ewc_goldens.py [--check]
"""

import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "ewc", "fisher.safetensors")
MODEL = os.path.join(ROOT, "models", "stories260k")
STORED = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.2.self_attn.v_proj.weight",
    "model.layers.4.mlp.down_proj.weight",
    "model.norm.weight",
]


def main():
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    out = {}
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    lengths = [24, 17, 31]
    for n, length in enumerate(lengths):
        g = torch.Generator()
        g.manual_seed(1000 + n)
        ids = torch.randint(1, model.config.vocab_size, (1, length), generator=g)
        out[f"sample{n}"] = ids[0].clone()
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        for name, p in params.items():
            fisher[name] += p.grad.detach() ** 2
    for name in STORED:
        out[f"fisher.{name}"] = (fisher[name] / len(lengths)).contiguous()
    if "--check" in sys.argv:
        old = load_file(OUT)
        for k, v in out.items():
            assert torch.equal(old[k], v), k
        print("goldens unchanged")
    else:
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        save_file(out, OUT)
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

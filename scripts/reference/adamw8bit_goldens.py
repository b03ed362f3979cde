#!/usr/bin/env python3
"""Developer-only: 8-bit AdamW goldens from bitsandbytes' `AdamW8bit`, for recipe's port in
src/exec/optimizer.rs (checked by tests/optimizer.rs).

Runs on the CPU (torch 2.11.0 CPU, bitsandbytes 0.50.2, see requirements.txt), where
bitsandbytes' update is its CPU kernel (`optimizer_update_8bit_blockwise` for tensors of at least
min_8bit_size = 4096 elements, `optimizer_update_32bit` below). Two parameters in the two groups
transformers' Trainer makes (weight decay on the matrix, none on the norm vector) take three steps
of fixed gradients; after each step the parameters and the optimizer's whole state are stored as
bitsandbytes holds them. Nothing is typed by hand: every value below comes from running
`bnb.optim.AdamW8bit`.

Files, tests/golden/adamw8bit/:
  adamw8bit.safetensors   init.<name>; step<k>.grad.<name>, step<k>.param.<name>,
                          step<k>.state1.<name>, step<k>.state2.<name> (uint8 codes for the
                          matrix, fp32 for the vector) and step<k>.absmax1/2.<name> (matrix);
                          qmap1, qmap2 (the signed and unsigned dynamic maps)
  adamw8bit.json          the hyperparameters

Random inputs come from torch.Generator objects with fixed seeds, so two runs write
byte-identical files (--check compares instead of writing).

run:
  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \
    python3 -S scripts/reference/adamw8bit_goldens.py [--check]
"""

import json
import os
import sys

import torch
import bitsandbytes as bnb
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "adamw8bit")
HYPER = {"lr": 2e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01, "steps": 3}


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def grads(step):
    """The matrix's gradient: normal, with an all-zero block (absmax 0) and a block spanning six
    decades (the small codes of the dynamic maps); the vector's: normal."""
    g = torch.randn(40, 130, generator=gen(100 + step)) * 0.01
    flat = g.view(-1)
    flat[512:768] = 0.0
    flat[1024:1280] *= 10 ** (torch.rand(256, generator=gen(200 + step)) * 6 - 5)
    return {"layer.weight": g, "norm.weight": torch.randn(64, generator=gen(300 + step)) * 0.1}


def build():
    params = {
        "layer.weight": torch.nn.Parameter(torch.randn(40, 130, generator=gen(1)) * 0.02),
        "norm.weight": torch.nn.Parameter(torch.ones(64) + torch.randn(64, generator=gen(2)) * 0.01),
    }
    out = {f"init.{n}": p.detach().clone() for n, p in params.items()}
    opt = bnb.optim.AdamW8bit(
        [
            {"params": [params["layer.weight"]], "weight_decay": HYPER["weight_decay"]},
            {"params": [params["norm.weight"]], "weight_decay": 0.0},
        ],
        lr=HYPER["lr"],
        betas=(HYPER["beta1"], HYPER["beta2"]),
        eps=HYPER["eps"],
    )
    for step in range(1, HYPER["steps"] + 1):
        g = grads(step)
        for n, p in params.items():
            p.grad = g[n].clone()
            out[f"step{step}.grad.{n}"] = g[n].clone()
        opt.step()
        for n, p in params.items():
            st = opt.state[p]
            out[f"step{step}.param.{n}"] = p.detach().clone()
            for key in ("state1", "state2", "absmax1", "absmax2"):
                if key in st:
                    out[f"step{step}.{key}.{n}"] = st[key].clone()
    matrix = opt.state[params["layer.weight"]]
    assert matrix["state1"].dtype == torch.uint8, "the matrix must get 8-bit states"
    assert opt.state[params["norm.weight"]]["state1"].dtype == torch.float32
    out["qmap1"] = matrix["qmap1"].clone()
    out["qmap2"] = matrix["qmap2"].clone()
    return out


def main():
    check = "--check" in sys.argv
    torch.manual_seed(0)
    tensors = {k: v.contiguous() for k, v in build().items()}
    meta = dict(HYPER, bitsandbytes=bnb.__version__, torch=torch.__version__.split("+")[0])
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    if check:
        old = load_file(os.path.join(OUT, "adamw8bit.safetensors"))
        bad = [k for k in tensors if k not in old or not torch.equal(old[k], tensors[k])]
        with open(os.path.join(OUT, "adamw8bit.json")) as f:
            same_meta = f.read() == text
        if bad or set(old) != set(tensors) or not same_meta:
            sys.exit(f"goldens differ: {bad[:5]} (metadata same: {same_meta})")
        print("adamw8bit goldens reproduce")
        return
    os.makedirs(OUT, exist_ok=True)
    save_file(tensors, os.path.join(OUT, "adamw8bit.safetensors"))
    with open(os.path.join(OUT, "adamw8bit.json"), "w") as f:
        f.write(text)
    print(f"wrote {len(tensors)} tensors to {OUT}")


if __name__ == "__main__":
    main()

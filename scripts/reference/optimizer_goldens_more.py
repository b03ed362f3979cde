#!/usr/bin/env python3
"""Developer-only: goldens of the optimizers besides AdamW (`sgd`, `adafactor`, `lion_32bit`,
`muon`) for recipe's port in src/exec/optim_more.rs (checked by tests/optimizers_more.rs), and of
Axolotl's decay-then-constant cosine schedule (`cosine_constant_lr_ratio`).

Each optimizer is built as the reference run builds it:
  sgd         transformers' Trainer: torch.optim.SGD(groups, lr=lr) (no momentum)
  adafactor   transformers' Trainer: transformers.optimization.Adafactor(groups, lr=lr,
              scale_parameter=False, relative_step=False)
  lion_32bit  transformers' Trainer: bitsandbytes.optim.Lion(groups, lr=lr, betas=(adam_beta1,
              adam_beta2), optim_bits=32, is_paged=False) (bitsandbytes' CPU kernel)
  lion_8bit   the same with optim_bits=8 (tensors under 4,096 values keep 32-bit states)
  muon        Axolotl (core/builders/base.py): axolotl-contribs-mit 0.0.6's MuonOptimizerFactory
              with lr, weight_decay, betas=(adam_beta1, adam_beta2), eps=adam_epsilon. Its
              Newton-Schulz function is wrapped in torch.compile; TORCHDYNAMO_DISABLE=1 runs it
              eagerly (the same bf16 ops, each rounded, which is what recipe computes).
The Trainer's two parameter groups: weight decay for every parameter but biases and norms.
Four parameters (fp32), three steps of fixed gradients at three learning rates (the scheduler
writes each into the groups before the step):
  layer.weight               [24, 40]  a wide matrix
  tall.weight                [48, 16]  a tall matrix (Muon transposes it)
  norm.weight                [40]      1-D, no weight decay (Muon leaves it out)
  model.embed_tokens.weight  [64, 16]  the embedding (Muon's AdamW group)
  big.weight                 [64, 128] 8,192 values: 8-bit Lion quantizes its momentum

The schedule: Axolotl's `_get_cosine_schedule_with_warmup_decay_constant_lr_lambda`, loaded from
src/axolotl/utils/schedulers.py of Axolotl @067b021c (the fetched checkout named by
AXOLOTL_SRC, default /work/.mirror/axolotl-ai-cloud+axolotl/repo, read with `git show`), for a
few (warmup, total, constant ratio, floor) settings.

Files, tests/golden/optimizers_more/:
  grads.safetensors          init.<name>, step<k>.grad.<name>
  <optimizer>.safetensors    after each step k: step<k>.param.<name>, step<k>.<state>.<name>
  schedule.json              the lambdas
  meta.json                  hyperparameters and versions

Random inputs come from torch.Generator objects with fixed seeds (--check compares instead of
writing).

install (once):
  grep -v '^#' scripts/reference/requirements-optimizers.txt \\
    | pip install --target /root/.cache/recipe/ref-optimizers --no-deps -r /dev/stdin
run:
  PYTHONPATH=/root/.cache/recipe/ref-optimizers:/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \\
    python3 -S scripts/reference/optimizer_goldens_more.py [--check]
"""

import os

os.environ["TORCHDYNAMO_DISABLE"] = "1"

import json
import math
import subprocess
import sys
import types
from importlib.metadata import version

import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "optimizers_more")
AXOLOTL_SRC = os.environ.get("AXOLOTL_SRC", "/work/.mirror/axolotl-ai-cloud+axolotl/repo")
AXOLOTL_COMMIT = "067b021c8b87a9e5e380b9173c704cf7340e30f5"
HYPER = {
    "lrs": [2e-2, 1.5e-2, 7e-3],
    "beta1": 0.9,
    "beta2": 0.99,
    "eps": 1e-8,
    "weight_decay": 0.1,
}
SHAPES = {
    "layer.weight": [24, 40],
    "tall.weight": [48, 16],
    "norm.weight": [40],
    "model.embed_tokens.weight": [64, 16],
    "big.weight": [64, 128],
}


def decays(name):
    return not (name.endswith(".bias") or "norm" in name)


def make_model(init):
    """A module whose named_parameters() are SHAPES' names (Muon's factory reads the names)."""
    root = torch.nn.Module()
    for name, value in init.items():
        *path, leaf = name.split(".")
        m = root
        for part in path:
            if not hasattr(m, part):
                setattr(m, part, torch.nn.Module())
            m = getattr(m, part)
        setattr(m, leaf, torch.nn.Parameter(value.clone()))
    return root


def groups(model):
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if decays(n)], "weight_decay": HYPER["weight_decay"]},
        {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0},
    ]


def build(kind, model):
    lr, b1, b2 = HYPER["lrs"][0], HYPER["beta1"], HYPER["beta2"]
    if kind == "sgd":
        return torch.optim.SGD(groups(model), lr=lr)
    if kind == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups(model), lr=lr, scale_parameter=False, relative_step=False)
    if kind in ("lion_32bit", "lion_8bit"):
        from bitsandbytes.optim import Lion

        bits = 8 if kind == "lion_8bit" else 32
        return Lion(groups(model), lr=lr, betas=(b1, b2), optim_bits=bits, is_paged=False)
    if kind == "muon":
        # The factory's base class lives in Axolotl proper; an empty one stands in for it.
        base = types.ModuleType("axolotl.integrations.base")
        base.BaseOptimizerFactory = object
        sys.modules.setdefault("axolotl.integrations", types.ModuleType("axolotl.integrations"))
        sys.modules["axolotl.integrations.base"] = base
        from axolotl.contribs.mit.muon.muon import MuonOptimizerFactory

        return MuonOptimizerFactory()(
            model, None, lr=lr, weight_decay=HYPER["weight_decay"], betas=(b1, b2), eps=HYPER["eps"]
        )
    raise ValueError(kind)


STATE_NAMES = ["exp_avg", "exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col", "momentum_buffer", "moment1", "moment2"]


def run(kind, grads):
    init = {n: grads[f"init.{n}"] for n in SHAPES}
    model = make_model(init)
    opt = build(kind, model)
    params = dict(model.named_parameters())
    out = {}
    for k in range(1, 4):
        for n, p in params.items():
            p.grad = grads[f"step{k}.grad.{n}"].clone()
        for g in opt.param_groups:
            g["lr"] = HYPER["lrs"][k - 1]
        opt.step()
        for n, p in params.items():
            out[f"step{k}.param.{n}"] = p.detach().clone()
            state = opt.state.get(p, {})
            for s in STATE_NAMES:
                if s in state and torch.is_tensor(state[s]):
                    # bitsandbytes keeps Lion's momentum as `state1`; the others by these names.
                    out[f"step{k}.{s}.{n}"] = state[s].detach().clone()
            if kind.startswith("lion"):
                if state["state1"].dtype == torch.uint8:
                    out[f"step{k}.exp_avg.q8.{n}"] = state["state1"].detach().clone()
                    out[f"step{k}.exp_avg.absmax.{n}"] = state["absmax1"].detach().clone()
                else:
                    out[f"step{k}.exp_avg.{n}"] = state["state1"].detach().clone()
    return out


def schedule():
    text = subprocess.run(
        ["git", "--git-dir", os.path.join(AXOLOTL_SRC, ".git") if os.path.isdir(os.path.join(AXOLOTL_SRC, ".git")) else AXOLOTL_SRC,
         "show", f"{AXOLOTL_COMMIT}:src/axolotl/utils/schedulers.py"],
        check=True, capture_output=True, text=True,
    ).stdout
    module = types.ModuleType("axolotl_schedulers")
    exec(compile(text, "schedulers.py", "exec"), module.__dict__)
    fn = module._get_cosine_schedule_with_warmup_decay_constant_lr_lambda
    cases = []
    for warmup, total, ratio, floor in [(10, 100, 0.8, 0.1), (0, 37, 0.5, 0.25), (5, 20, 0.3, 0.1), (3, 7, 0.9, 0.05)]:
        lambdas = [fn(s, num_warmup_steps=warmup, num_training_steps=total, constant_lr_ratio=ratio,
                      min_lr_ratio=floor, num_cycles=0.5) for s in range(total + 1)]
        cases.append({"warmup": warmup, "total": total, "constant_ratio": ratio, "min_ratio": floor,
                      "lambdas": lambdas})
    return cases


def main():
    check = "--check" in sys.argv[1:]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    grads = {}
    for n, shape in SHAPES.items():
        grads[f"init.{n}"] = torch.randn(shape, generator=gen) * 0.5
    for k in range(1, 4):
        for n, shape in SHAPES.items():
            g = torch.randn(shape, generator=gen) * (0.1 * k)
            if n == "layer.weight":
                g[0] = 0.0  # a zero row: Adafactor's eps and Lion's sign(0)
            grads[f"step{k}.grad.{n}"] = g
    files = {"grads": grads}
    for kind in ["sgd", "adafactor", "lion_32bit", "lion_8bit", "muon"]:
        files[kind] = run(kind, grads)
    meta = dict(HYPER, shapes=SHAPES, axolotl_commit=AXOLOTL_COMMIT, versions={
        "torch": torch.__version__, "transformers": version("transformers"),
        "bitsandbytes": version("bitsandbytes"), "axolotl-contribs-mit": version("axolotl-contribs-mit"),
    })
    sched = schedule()
    if check:
        for name, tensors in files.items():
            saved = load_file(os.path.join(OUT, f"{name}.safetensors"))
            assert saved.keys() == tensors.keys(), name
            for k, v in tensors.items():
                assert torch.equal(saved[k], v), f"{name}: {k} differs"
        assert json.load(open(os.path.join(OUT, "schedule.json"))) == sched
        print("goldens match")
        return
    os.makedirs(OUT, exist_ok=True)
    for name, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, f"{name}.safetensors"))
    json.dump(sched, open(os.path.join(OUT, "schedule.json"), "w"), indent=1)
    json.dump(meta, open(os.path.join(OUT, "meta.json"), "w"), indent=1)
    print("wrote", OUT, {k: len(v) for k, v in files.items()})


if __name__ == "__main__":
    main()

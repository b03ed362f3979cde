#!/usr/bin/env python3
"""Developer-only: goldens of torchao's low-bit AdamW (`torchao.optim.AdamW8bit` / `AdamW4bit`, the
`adamw_torch_8bit` / `adamw_torch_4bit` of transformers' Trainer) for recipe's port in
src/exec/optim_torchao.rs (checked by tests/optim_torchao.rs).

Runs on the CPU (torch 2.11.0 CPU, torchao 0.18.0, see requirements-torchao.txt). torchao's step is
`torch.compile(single_param_adam)`: on the CPU an Inductor C++ kernel built with
`-ffp-contract=off` and no unsafe math. It differs from the same ops run eagerly in two places:
eager `lerp` contracts into a fused multiply-add (Inductor computes `start + w * (end - start)`),
and eager fp32 `sqrt` is MKL's, not correctly rounded (Inductor's is IEEE). Each optimizer is run
twice, compiled (as torchao runs it, what the goldens hold) and with `single_param_adam` replaced by
`replica` below (what recipe computes: those two places done as Inductor does them, the rest the
same eager ops), and the script stops unless the two agree bit for bit. torchao's only randomness
is bf16 stochastic rounding, off unless asked for (`optim_args`, which recipe refuses), so every
step is deterministic.

The optimizer is built as transformers' Trainer builds it: `block_size=256` (the Trainer's value for
both; torchao's own default for 4-bit is 128), `bf16_stochastic_round=False`, two parameter groups
(weight decay on matrices, none on norm weights). Five parameters take three steps of fixed
gradients at three learning rates (the Trainer's scheduler writes each into torchao's fp32 lr
tensor):
  layer.weight      fp32 [32, 128]  quantized states (an all-zero block, a block spanning six decades)
  odd.weight        fp32 [4100]     at least 4,096 values but not a multiple of the block: fp32 states
  norm.weight       fp32 [64]       under 4,096 values: fp32 states
  bf16.weight       bf16 [32, 128]  quantized states of a bf16 parameter (fp32 math, rounded back)
  bf16_norm.weight  bf16 [64]       full-precision states in the parameter's dtype (bf16)

Files, tests/golden/torchao_adamw/:
  grads.safetensors        init.<name>, step<k>.grad.<name>
  adamw{8,4}bit.safetensors  qmap.signed, qmap.unsigned; after steps 1 and 3: step<k>.param.<name>,
                           step<k>.<moment>.<name> (full states) or step<k>.<moment>.codes.<name> and
                           step<k>.<moment>.scale.<name> (quantized; 4-bit codes packed two a byte,
                           flattened, as torchao holds them)
  meta.json                the hyperparameters and versions

Random inputs come from torch.Generator objects with fixed seeds, so two runs write
byte-identical files (--check compares instead of writing).

install (once):
  grep -v '^#' scripts/reference/requirements-torchao.txt \\
    | pip install --target /root/.cache/recipe/ref-torchao --no-deps -r /dev/stdin
run:
  PYTHONPATH=/root/.cache/recipe/ref-torchao:/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \\
    python3 -S scripts/reference/torchao_adamw_goldens.py [--check]
"""

import json
import os
import sys
from importlib.metadata import version

import torch
from safetensors.torch import load_file, save_file
from torchao.optim import AdamW4bit, AdamW8bit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "torchao_adamw")
HYPER = {
    "lrs": [2e-3, 1.5e-3, 7e-4],
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-8,
    "weight_decay": 0.01,
    "block_size": 256,
    "kept_steps": [1, 3],
}
NAMES = ["layer.weight", "odd.weight", "norm.weight", "bf16.weight", "bf16_norm.weight"]
DECAY = {"layer.weight", "odd.weight", "bf16.weight"}


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def init():
    return {
        "layer.weight": torch.randn(32, 128, generator=gen(1)) * 0.02,
        "odd.weight": torch.randn(4100, generator=gen(2)) * 0.02,
        "norm.weight": torch.ones(64) + torch.randn(64, generator=gen(3)) * 0.01,
        "bf16.weight": (torch.randn(32, 128, generator=gen(4)) * 0.02).bfloat16(),
        "bf16_norm.weight": (torch.ones(64) + torch.randn(64, generator=gen(5)) * 0.01).bfloat16(),
    }


def grads(step):
    g = torch.randn(32, 128, generator=gen(100 + step)) * 0.01
    flat = g.view(-1)
    flat[512:768] = 0.0
    flat[1024:1280] *= 10 ** (torch.rand(256, generator=gen(200 + step)) * 6 - 5)
    return {
        "layer.weight": g,
        "odd.weight": torch.randn(4100, generator=gen(300 + step)) * 0.01,
        "norm.weight": torch.randn(64, generator=gen(400 + step)) * 0.1,
        "bf16.weight": (torch.randn(32, 128, generator=gen(500 + step)) * 0.01).bfloat16(),
        "bf16_norm.weight": (torch.randn(64, generator=gen(600 + step)) * 0.1).bfloat16(),
    }


def run(cls):
    start = init()
    params = {n: torch.nn.Parameter(t.clone()) for n, t in start.items()}
    opt = cls(
        [
            {"params": [params[n] for n in NAMES if n in DECAY], "weight_decay": HYPER["weight_decay"]},
            {"params": [params[n] for n in NAMES if n not in DECAY], "weight_decay": 0.0},
        ],
        lr=HYPER["lrs"][0],
        betas=(HYPER["beta1"], HYPER["beta2"]),
        eps=HYPER["eps"],
        block_size=HYPER["block_size"],
        bf16_stochastic_round=False,
    )
    out = {}
    for step, lr in enumerate(HYPER["lrs"], start=1):
        for group in opt.param_groups:
            group["lr"].fill_(lr)  # what torch's LR schedulers do with a tensor lr
        g = grads(step)
        for n, p in params.items():
            p.grad = g[n].clone()
        opt.step()
        if step not in HYPER["kept_steps"]:
            continue
        for n, p in params.items():
            out[f"step{step}.param.{n}"] = p.detach().clone()
            st = opt.state[p]
            for moment in ("exp_avg", "exp_avg_sq"):
                s = st[moment]
                if hasattr(s, "codes"):
                    out[f"step{step}.{moment}.codes.{n}"] = s.codes.clone()
                    out[f"step{step}.{moment}.scale.{n}"] = s.scale.clone()
                    out[f"qmap.{'signed' if s.signed else 'unsigned'}"] = s.qmap.clone()
                else:
                    out[f"step{step}.{moment}.{n}"] = s.clone()
    quantized = {n for n in NAMES if hasattr(opt.state[params[n]]["exp_avg"], "codes")}
    assert quantized == {"layer.weight", "bf16.weight"}, quantized
    assert opt.state[params["bf16_norm.weight"]]["exp_avg"].dtype == torch.bfloat16
    return out


def replica(p, grad, step, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, weight_decay, eps, is_adamw, sr):
    """torchao's `single_param_adam` (AdamW, no amsgrad, no stochastic rounding) as recipe computes it."""
    assert is_adamw and max_exp_avg_sq is None and not sr

    def value(state):
        return state.dequantize() if hasattr(state, "dequantize") else state.float()

    def lerp(start, end, weight):
        assert abs(weight) < 0.5
        return (end - start) * weight + start

    def sqrt(x):
        return x.double().sqrt().float()

    p_f32 = p.float()
    grad_f32 = grad.float()
    p_f32 = p_f32 - lr * weight_decay * p_f32
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    exp_avg_f32 = lerp(value(exp_avg), grad_f32, 1 - beta1)
    exp_avg_sq_f32 = lerp(value(exp_avg_sq), grad_f32 * grad_f32, 1 - beta2)
    exp_avg.copy_(exp_avg_f32)
    exp_avg_sq.copy_(exp_avg_sq_f32)
    denom = (sqrt(exp_avg_sq_f32) / sqrt(bias_correction2)) + eps
    p.copy_(p_f32 - lr * (exp_avg_f32 / bias_correction1) / denom)


def run_both(cls):
    compiled = run(cls)
    real_compile = torch.compile
    torch.compile = lambda fn, **kwargs: replica
    try:
        replicated = run(cls)
    finally:
        torch.compile = real_compile
    differ = [k for k in compiled if not torch.equal(compiled[k], replicated[k])]
    if differ:
        sys.exit(f"{cls.__name__}: the compiled step and its replica differ in {differ[:5]}")
    return compiled


def build():
    files = {"grads": {f"init.{n}": t for n, t in init().items()}}
    for step in range(1, len(HYPER["lrs"]) + 1):
        files["grads"].update({f"step{step}.grad.{n}": t for n, t in grads(step).items()})
    files["adamw8bit"] = run_both(AdamW8bit)
    files["adamw4bit"] = run_both(AdamW4bit)
    return {name: {k: v.contiguous() for k, v in t.items()} for name, t in files.items()}


def main():
    check = "--check" in sys.argv
    files = build()
    meta = dict(HYPER, torchao=version("torchao"), torch=torch.__version__.split("+")[0])
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    if check:
        bad = []
        for name, tensors in files.items():
            old = load_file(os.path.join(OUT, f"{name}.safetensors"))
            bad += [f"{name}:{k}" for k in tensors if k not in old or not torch.equal(old[k], tensors[k])]
            bad += [f"{name}:{k} (extra)" for k in set(old) - set(tensors)]
        with open(os.path.join(OUT, "meta.json")) as f:
            same_meta = f.read() == text
        if bad or not same_meta:
            sys.exit(f"goldens differ: {bad[:5]} (metadata same: {same_meta})")
        print("torchao AdamW goldens reproduce")
        return
    os.makedirs(OUT, exist_ok=True)
    for name, tensors in files.items():
        save_file(tensors, os.path.join(OUT, f"{name}.safetensors"))
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        f.write(text)
    print(f"wrote {sum(len(t) for t in files.values())} tensors to {OUT}")


if __name__ == "__main__":
    main()

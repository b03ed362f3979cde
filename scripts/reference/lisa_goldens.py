#!/usr/bin/env python3
"""Developer-only: LISA goldens from Axolotl's own `LISACallback` (axolotl @067b021c,
src/axolotl/utils/callbacks/lisa.py) driving a plain torch AdamW loop as transformers' Trainer
runs it, for recipe's LISA (src/exec/lisa.rs, checked by tests/lisa.rs).

A tiny random Llama (LlamaConfig hidden 32, intermediate 64, 4 layers, 4 heads, 2 kv heads,
vocab 128, untied, fp32, eager attention) trains 6 steps on fixed batches (2 rows of 16 random
ids each step). Axolotl's callback is built by `lisa_callback_factory` on a stand-in trainer
(an object with `.model` and `.args`: lisa_n_layers 2, lisa_step_interval 2, lisa_layers_attribute
model.layers), numpy's global state seeded with 1234. Each step, as `Trainer._inner_training_loop`
does: `on_step_begin(args, state, control)` with `state.global_step` = the steps taken, forward
(`labels = input_ids`, transformers' shifted mean cross-entropy), backward,
`clip_grad_norm_(model.parameters(), 0.5)`, `optimizer.step()`, `model.zero_grad()` (grads set to
None). The optimizer is `torch.optim.AdamW` (lr 1e-2, betas (0.9, 0.999), eps 1e-8) over the
Trainer's two groups: weight decay 0.1 for every parameter but biases and norms, 0 for those;
built before the first callback, so it holds every parameter, as the Trainer's does.

Files, tests/golden/lisa/:
  config.json, model.safetensors   the tiny model before training
  lisa.safetensors                 step<k>.input_ids, losses [6], grad_norms [6], final.<name>
                                   (every parameter after the 6 steps); bnb8bit.losses,
                                   bnb8bit.grad_norms, bnb8bit.final.<name>: the same run with
                                   bitsandbytes' AdamW8bit (0.50.2, CPU: 8-bit states for the embedding
                                   and head, 4,096 values each; its 32-bit update for the rest)
  lisa.json                        the hyperparameters, the layer sets the callback drew at each
                                   switch (in order: steps 0, 1, 2, 4) and the switch steps

Random inputs come from torch.Generator objects with fixed seeds and numpy's seeded global state,
so two runs write byte-identical files (--check compares instead of writing). Nothing is typed by
hand.

run (Axolotl's source at /tmp/axsrc/src: `git --git-dir=<axolotl mirror> archive 067b021c src`):
  PYTHONPATH=/tmp/axsrc/src:/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0:/tmp/pyx \
    python3 -S scripts/reference/lisa_goldens.py [--check]
"""

import importlib.util
import json
import os
import sys
import types

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "lisa")
AXOLOTL_SRC = os.environ.get("AXOLOTL_SRC", "/tmp/axsrc/src")
HYPER = {
    "lr": 1e-2,
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-8,
    "weight_decay": 0.1,
    "max_grad_norm": 0.5,
    "steps": 6,
    "lisa_n_layers": 2,
    "lisa_step_interval": 2,
    "numpy_seed": 1234,
    "rows": 2,
    "seq": 16,
}


def lisa_module():
    """Axolotl's lisa.py, loaded by path (its package's __init__ imports `evaluate` and more)."""
    path = os.path.join(AXOLOTL_SRC, "axolotl", "utils", "callbacks", "lisa.py")
    spec = importlib.util.spec_from_file_location("axolotl_lisa", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model():
    """The tiny Llama, seeded: the same weights on every call."""
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        tie_word_embeddings=False,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_act="silu",
        attn_implementation="eager",
        use_cache=False,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    model.config.use_cache = False
    return config, model


def train(optimizer_name, tensors, prefix):
    """Six steps with Axolotl's callback; writes `prefix`losses, grad_norms, final.<name>."""
    config, model = tiny_model()
    decay = [p for n, p in model.named_parameters() if not (n.endswith(".bias") or "norm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith(".bias") or "norm" in n]
    groups = [{"params": decay, "weight_decay": HYPER["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    hyper = dict(lr=HYPER["lr"], betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"])
    if optimizer_name == "adamw_torch":
        optimizer = torch.optim.AdamW(groups, **hyper)
    else:
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(groups, **hyper)
    args = types.SimpleNamespace(
        lisa_n_layers=HYPER["lisa_n_layers"],
        lisa_step_interval=HYPER["lisa_step_interval"],
        lisa_layers_attribute="model.layers",
    )
    trainer = types.SimpleNamespace(model=model, args=args)
    np.random.seed(HYPER["numpy_seed"])
    callback = lisa_module().lisa_callback_factory(trainer)

    data = torch.Generator().manual_seed(11)
    losses, norms, sets, switches = [], [], [], []
    model.train()
    for step in range(HYPER["steps"]):
        state = types.SimpleNamespace(global_step=step)
        drawn_before = id(callback.active_layers_indices)
        callback.on_step_begin(args, state, None)
        if id(callback.active_layers_indices) != drawn_before:
            sets.append([int(i) for i in callback.active_layers_indices])
            switches.append(step)
        ids = torch.randint(0, config.vocab_size, (HYPER["rows"], HYPER["seq"]), generator=data)
        tensors[f"step{step}.input_ids"] = ids
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), HYPER["max_grad_norm"])
        optimizer.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
        norms.append(norm.item())
    tensors[f"{prefix}losses"] = torch.tensor(losses, dtype=torch.float64)
    tensors[f"{prefix}grad_norms"] = torch.tensor(norms, dtype=torch.float64)
    for n, p in model.named_parameters():
        tensors[f"{prefix}final.{n}"] = p.detach().clone().contiguous()
    return sets, switches, losses


def build():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    config, model = tiny_model()
    init = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
    tensors = {}
    sets, switches, losses = train("adamw_torch", tensors, "")
    sets8, switches8, losses8 = train("adamw_bnb_8bit", tensors, "bnb8bit.")
    # numpy seeded alike: the same draws for both optimizers.
    assert (sets8, switches8) == (sets, switches)
    meta = dict(HYPER, layer_sets=sets, switch_steps=switches, losses=losses, bnb8bit_losses=losses8)
    config.architectures = ["LlamaForCausalLM"]
    cfg = config.to_dict()
    return init, cfg, tensors, meta


def main():
    check = "--check" in sys.argv
    init, cfg, tensors, meta = build()
    files = {
        "model.safetensors": init,
        "lisa.safetensors": tensors,
    }
    if check:
        for name, want in files.items():
            got = load_file(os.path.join(OUT, name))
            assert set(got) == set(want), f"{name}: keys differ"
            for k in want:
                assert torch.equal(got[k], want[k]), f"{name}: {k} differs"
        with open(os.path.join(OUT, "lisa.json")) as f:
            assert json.load(f) == json.loads(json.dumps(meta)), "lisa.json differs"
        print("goldens match")
        return
    os.makedirs(OUT, exist_ok=True)
    for name, t in files.items():
        save_file(t, os.path.join(OUT, name))
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    with open(os.path.join(OUT, "lisa.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(f"wrote {OUT}: layer sets {meta['layer_sets']} at steps {meta['switch_steps']}, losses {meta['losses']}")


if __name__ == "__main__":
    main()

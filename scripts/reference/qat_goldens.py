#!/usr/bin/env python3
"""Developer-only: quantization-aware training goldens from torchao, for the Rust port in
src/model/qat.rs (checked by tests/qat.rs).

Runs on the CPU (torch 2.11.0 CPU, torchao 0.18.0 from requirements-torchao.txt). The layers are
built exactly as Axolotl's `prepare_model_for_qat` builds them for
`qat: {activation_dtype: int8, weight_dtype: int4, group_size: G}`
(axolotl/utils/quantization.py, `_make_qat_config`):
  QATConfig(weight_config=Int4WeightFakeQuantizeConfig(group_size=G, activation_dtype=bfloat16),
            activation_config=IntxFakeQuantizeConfig(int8, "per_token", is_symmetric=False))
applied with torchao's own `quantize_` (every nn.Linear becomes a FakeQuantizedLinear). Nothing
here restates a formula: the values are what torchao's modules and autograd return.

Per case, tests/golden/qat/<case>.safetensors holds:
  x, weight, bias, grad_out     the inputs (random, fixed seeds) in the case's dtype
  out                           the FakeQuantizedLinear's output
  grad_x, grad_weight, grad_bias  the gradients of (out * grad_out).sum()
  weight_fq, x_fq               the two fake quantizers' outputs alone
  plain_out                     the same layer with fake quantization disabled (Axolotl's
                                QATCallback before `fake_quant_after_n_steps`)
Cases cover fp32 and bf16, group sizes 32 and 16, values with wide per-token ranges, a row of
one repeated value per group (the eps clamp) and activations of one sign (the zero point at an
end of the range).

run:
  PYTHONPATH=$HOME/.cache/recipe/ref-torchao:$HOME/.cache/recipe/ref-py:$HOME/.cache/recipe/torch-2.11.0 \
    python3 -S scripts/reference/qat_goldens.py [--check]
"""

import os
import sys

import torch
from safetensors.torch import load_file, save_file
from torchao.quantization import quantize_
from torchao.quantization.qat import QATConfig
from torchao.quantization.qat.fake_quantize_config import (
    Int4WeightFakeQuantizeConfig,
    IntxFakeQuantizeConfig,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "qat")


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def axolotl_int8_int4(group_size):
    # Axolotl's _make_qat_config for activation_dtype int8, weight_dtype int4.
    return QATConfig(
        weight_config=Int4WeightFakeQuantizeConfig(group_size=group_size, activation_dtype=torch.bfloat16),
        activation_config=IntxFakeQuantizeConfig(dtype=torch.int8, granularity="per_token", is_symmetric=False),
    )


def case(name, seed, dtype, out_f, in_f, lead, group_size, shape_x=None):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(in_f, out_f, bias=True, dtype=dtype)
    x = torch.randn(*lead, in_f, generator=gen(seed + 1)) * torch.linspace(0.1, 4.0, in_f)
    if shape_x is not None:
        x = shape_x(x)
    x = x.to(dtype)
    w = lin.weight.detach().clone()
    if name.endswith("flat_groups"):
        # a group of one repeated value: max - min is 0, the eps clamp decides the scale
        w[0, :group_size] = 0.25
        w[1, :group_size] = 0.0
    with torch.no_grad():
        lin.weight.copy_(w)
    model = torch.nn.Sequential(lin)
    quantize_(model, axolotl_int8_int4(group_size))
    fq = model[0]
    assert type(fq).__name__ == "FakeQuantizedLinear", type(fq)
    grad_out = torch.randn(*lead, out_f, generator=gen(seed + 2)).to(dtype)
    xg = x.clone().requires_grad_(True)
    out = fq(xg)
    (out * grad_out).sum().backward()
    with torch.no_grad():
        weight_fq = fq.weight_fake_quantizer(fq.weight)
        x_fq = fq.activation_fake_quantizer(x)
        fq.weight_fake_quantizer.enabled = False
        fq.activation_fake_quantizer.enabled = False
        plain_out = fq(x)
    return {
        "x": x,
        "weight": w,
        "bias": lin.bias.detach().clone(),
        "grad_out": grad_out,
        "out": out.detach(),
        "grad_x": xg.grad,
        "grad_weight": fq.weight.grad,
        "grad_bias": fq.bias.grad,
        "weight_fq": weight_fq,
        "x_fq": x_fq,
        "plain_out": plain_out,
    }


def one_sign(x):
    return x.abs() + 0.5


CASES = {
    "int8_int4_g32_f32": (11, torch.float32, 8, 64, (2, 5), 32, None),
    "int8_int4_g16_f32": (21, torch.float32, 12, 48, (7,), 16, None),
    "int8_int4_g32_bf16": (31, torch.bfloat16, 8, 64, (2, 5), 32, None),
    "int8_int4_g32_f32_one_sign": (41, torch.float32, 6, 32, (3, 4), 32, one_sign),
    "int8_int4_g16_f32_flat_groups": (51, torch.float32, 4, 32, (5,), 16, None),
}


def main():
    check = "--check" in sys.argv
    os.makedirs(OUT, exist_ok=True)
    bad = 0
    for name, (seed, dtype, out_f, in_f, lead, g, shape_x) in CASES.items():
        tensors = {k: v.contiguous() for k, v in case(name, seed, dtype, out_f, in_f, lead, g, shape_x).items()}
        path = os.path.join(OUT, f"{name}.safetensors")
        if check:
            old = load_file(path)
            same = old.keys() == tensors.keys() and all(torch.equal(old[k], tensors[k]) for k in tensors)
            print(("same " if same else "DIFFERENT ") + name)
            bad += not same
        else:
            save_file(tensors, path, metadata={"group_size": str(g)})
            print("wrote", path)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

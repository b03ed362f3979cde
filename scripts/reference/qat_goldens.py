#!/usr/bin/env python3
"""Developer-only: quantization-aware training goldens from torchao, for the Rust port in
src/model/qat.rs (checked by tests/qat.rs).

Runs on the CPU (torch 2.11.0 CPU, torchao 0.18.0 from requirements-torchao.txt). The layers are
built exactly as Axolotl's `prepare_model_for_qat` builds them (axolotl/utils/quantization.py,
`_make_qat_config`), applied with torchao's own `quantize_`:
- `qat: {activation_dtype: int8, weight_dtype: int4, group_size: G}` (cases int8_int4_*):
    QATConfig(weight_config=Int4WeightFakeQuantizeConfig(group_size=G, activation_dtype=bfloat16),
              activation_config=IntxFakeQuantizeConfig(int8, "per_token", is_symmetric=False))
  every nn.Linear becomes a FakeQuantizedLinear;
- `qat: {activation_dtype: mxfp4, weight_dtype: mxfp4, group_size: 32}` (cases mxfp4_*):
    mx = MXFakeQuantizeConfig(dtype=float4_e2m1fn_x2, block_size=32)   # RCEIL scales, EMULATED gemm
    QATConfig(activation_config=mx, weight_config=mx)
  every nn.Linear becomes an MXFakeQuantizedLinear, whose emulated forward (the one torchao runs on
  any device with the config's default KernelPreference.EMULATED) and backward are plain torch ops,
  so the goldens are torchao's own CPU values.
Nothing here restates a formula: the values are what torchao's modules and autograd return.

Per case, tests/golden/qat/<case>.safetensors holds:
  x, weight, bias, grad_out     the inputs (random, fixed seeds) in the case's dtype
  out                           the FakeQuantizedLinear's output
  grad_x, grad_weight, grad_bias  the gradients of (out * grad_out).sum()
  weight_fq, x_fq               the two fake quantizers' outputs alone
  plain_out                     the same layer with fake quantization disabled (Axolotl's
                                QATCallback before `fake_quant_after_n_steps`; int8/int4 only:
                                the callback does not switch MXFakeQuantizedLinear)
MXFakeQuantizedLinear's backward returns no bias gradient: the mxfp4 cases have no grad_bias, and
bias_has_grad (a one-element tensor) records that torchao left bias.grad None.
int8/int4 cases cover fp32 and bf16, group sizes 32 and 16, values with wide per-token ranges, a
row of one repeated value per group (the eps clamp) and activations of one sign (the zero point at
an end of the range). mxfp4 cases cover fp32 and bf16, no bias (mm instead of addmm), block
maxima over 60 orders of magnitude, an all-zero block and a weight whose rows hold every FP4 grid
point, every round-to-even tie between them and the floats either side of each (one block max 6:
scale 1), at scales 1, 2^-20 and 3.7.

run:
  PYTHONPATH=$HOME/.cache/recipe/ref-torchao:$HOME/.cache/recipe/ref-py:$HOME/.cache/recipe/torch-2.11.0 \
    python3 -S scripts/reference/qat_goldens.py [--check]
"""

import os
import sys

import torch
from safetensors.torch import load_file, save_file
from torchao.prototype.mx_formats.config import ScaleCalculationMode
from torchao.prototype.mx_formats.mx_tensor import MXTensor
from torchao.prototype.qat import MXFakeQuantizeConfig
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


def axolotl_mxfp4():
    # Axolotl's _make_qat_config for weight_dtype mxfp4 (block_size 32, the only one it accepts).
    mx = MXFakeQuantizeConfig(dtype=torch.float4_e2m1fn_x2, block_size=32)
    return QATConfig(activation_config=mx, weight_config=mx)


def mx_dequantized(t, cfg):
    # What MXFakeQuantizedLinear's forward multiplies: MXTensor.to_mx of the 2-D tensor,
    # dequantized to its own dtype.
    t2 = t.reshape(-1, t.shape[-1])
    mx = MXTensor.to_mx(
        t2,
        elem_dtype=cfg.dtype,
        block_size=cfg.block_size,
        scaling_mode=cfg.scaling_mode,
        kernel_preference=cfg.kernel_preference,
    )
    return mx.dequantize(t.dtype).reshape(t.shape)


def fp4_grid_rows(in_f):
    # Every FP4 (e2m1) grid point and round-to-nearest-even tie, the floats either side of each,
    # both signs, laid out in blocks of 32 whose first element is 6 (block scale exactly 1).
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    pts = torch.cat([grid, ties])
    pts = torch.cat([pts, torch.nextafter(pts, torch.tensor(10.0)), torch.nextafter(pts, torch.tensor(-10.0))])
    pts = torch.cat([pts, -pts]).clamp(-6.0, 6.0)
    per_block = 31
    n_blocks = (pts.numel() + per_block - 1) // per_block
    vals = torch.zeros(n_blocks * per_block)
    vals[: pts.numel()] = pts
    blocks = torch.cat([torch.full((n_blocks, 1), 6.0), vals.view(n_blocks, per_block)], dim=1)
    flat = blocks.reshape(-1)
    rows = torch.zeros(-(-flat.numel() // in_f) * in_f)
    rows[: flat.numel()] = flat
    return rows.view(-1, in_f)


def case(name, seed, dtype, out_f, in_f, lead, group_size, shape_x=None):
    mx = name.startswith("mxfp4")
    bias = not name.endswith("no_bias")
    torch.manual_seed(seed)
    lin = torch.nn.Linear(in_f, out_f, bias=bias, dtype=dtype)
    x = torch.randn(*lead, in_f, generator=gen(seed + 1)) * torch.linspace(0.1, 4.0, in_f)
    if shape_x is not None:
        x = shape_x(x)
    x = x.to(dtype)
    w = lin.weight.detach().clone()
    if name.endswith("flat_groups"):
        # a group of one repeated value: max - min is 0, the eps clamp decides the scale
        w[0, :group_size] = 0.25
        w[1, :group_size] = 0.0
    if name.endswith("grid"):
        rows = fp4_grid_rows(in_f)
        n = rows.shape[0]
        w[:n] = rows.to(dtype)
        w[n : 2 * n] = (rows * 2.0**-20).to(dtype)
        w[2 * n : 3 * n] = (rows * 3.7).to(dtype)
        w[3 * n, :32] = 0.0  # an all-zero block
    with torch.no_grad():
        lin.weight.copy_(w)
    model = torch.nn.Sequential(lin)
    quantize_(model, axolotl_mxfp4() if mx else axolotl_int8_int4(group_size))
    fq = model[0]
    expected = "MXFakeQuantizedLinear" if mx else "FakeQuantizedLinear"
    assert type(fq).__name__ == expected, type(fq)
    grad_out = torch.randn(*lead, out_f, generator=gen(seed + 2)).to(dtype)
    xg = x.clone().requires_grad_(True)
    out = fq(xg)
    (out * grad_out).sum().backward()
    tensors = {
        "x": x,
        "weight": w,
        "grad_out": grad_out,
        "out": out.detach(),
        "grad_x": xg.grad,
        "grad_weight": fq.weight.grad,
    }
    if bias:
        tensors["bias"] = lin.bias.detach().clone()
    with torch.no_grad():
        if mx:
            tensors["weight_fq"] = mx_dequantized(fq.weight, fq.weight_config)
            tensors["x_fq"] = mx_dequantized(x, fq.activation_config)
            if bias:
                tensors["bias_has_grad"] = torch.tensor([fq.bias.grad is not None])
            return tensors
        tensors["grad_bias"] = fq.bias.grad
        tensors["weight_fq"] = fq.weight_fake_quantizer(fq.weight)
        tensors["x_fq"] = fq.activation_fake_quantizer(x)
        fq.weight_fake_quantizer.enabled = False
        fq.activation_fake_quantizer.enabled = False
        tensors["plain_out"] = fq(x)
    return tensors


def one_sign(x):
    return x.abs() + 0.5


def wide_blocks(x):
    # block maxima from 1e-30 to 1e30 (per block of 32 input features)
    return x * torch.logspace(-30, 30, x.shape[-1] // 32).repeat_interleave(32)


CASES = {
    "int8_int4_g32_f32": (11, torch.float32, 8, 64, (2, 5), 32, None),
    "int8_int4_g16_f32": (21, torch.float32, 12, 48, (7,), 16, None),
    "int8_int4_g32_bf16": (31, torch.bfloat16, 8, 64, (2, 5), 32, None),
    "int8_int4_g32_f32_one_sign": (41, torch.float32, 6, 32, (3, 4), 32, one_sign),
    "int8_int4_g16_f32_flat_groups": (51, torch.float32, 4, 32, (5,), 16, None),
    "mxfp4_f32": (61, torch.float32, 8, 64, (2, 5), 32, None),
    "mxfp4_bf16": (71, torch.bfloat16, 8, 64, (2, 5), 32, None),
    "mxfp4_f32_no_bias": (81, torch.float32, 6, 96, (7,), 32, None),
    "mxfp4_f32_wide_blocks": (91, torch.float32, 4, 320, (3, 2), 32, wide_blocks),
    "mxfp4_f32_grid": (101, torch.float32, 12, 64, (4,), 32, None),
    "mxfp4_bf16_grid": (111, torch.bfloat16, 12, 64, (4,), 32, None),
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

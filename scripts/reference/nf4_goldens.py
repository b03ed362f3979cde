#!/usr/bin/env python3
"""Developer-only: NF4 / FP4 blockwise 4-bit quantization goldens from bitsandbytes, for the
Rust port in src/model/nf4.rs (checked by tests/nf4.rs).

Runs on the CPU (torch 2.11.0 CPU, bitsandbytes 0.50.2, see requirements.txt), where
bitsandbytes 0.50.2 takes these paths:
  quantize_4bit          pure torch ("default" backend: absmax, reciprocal, clamp, bucketize
                         on the code midpoints, two codes per byte, high nibble first)
  quantize_blockwise     libbitsandbytes_cpu.so quantize_cpu (65536-entry LUT, used for the
                         double-quantized absmax, blocksize 256, create_dynamic_map code)
  dequantize_blockwise   libbitsandbytes_cpu.so (code[q] * absmax in fp32)
  dequantize_4bit        libbitsandbytes_cpu.so when the last dimension is even (its FP4 table
                         has -0.0 at code 8), the pure-torch fallback when it is odd
Random inputs come from torch.Generator objects with fixed seeds, so two runs write
byte-identical files (--check compares instead of writing). Nothing is typed by hand.

One file per input case, tests/golden/nf4/<case>.safetensors, holding
  input                      the weight as given to quantize_4bit (original dtype); left out
                             for stories260k_gate_proj, which the test reads from
                             models/stories260k/model.safetensors
and for each variant V in nf4, nf4_dq, fp4, fp4_dq (dq: compress_statistics=True):
  V.packed                   uint8 [(n+1)/2, 1], quantize_4bit's first output
  V.absmax                   fp32 [blocks] (uint8 [blocks] for dq)
  V.code                     fp32 [16], the 4-bit code (get_4bit_type)
  V.nested_absmax            dq only: fp32 [ceil(blocks/256)]  (state2.absmax)
  V.nested_code              dq only: fp32 [256]               (state2.code)
  V.offset                   dq only: fp32 []                  (state.offset)
  V.dequant                  dequantize_4bit(packed, state), original dtype and shape

run:
  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \
    python3 -S scripts/reference/nf4_goldens.py [--check]
"""

import os
import sys

import torch
import bitsandbytes
import bitsandbytes.functional as F
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "nf4")
BLOCKSIZE = 64
VARIANTS = [("nf4", "nf4", False), ("nf4_dq", "nf4", True), ("fp4", "fp4", False), ("fp4_dq", "fp4", True)]


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def special():
    """fp32, 7 full blocks + a partial one of 32, every block built to hit an edge."""
    code = F.get_4bit_type("nf4", device="cpu")
    mids = (code[:-1] + code[1:]) / 2
    blocks = []
    # 0: absmax exactly 1, every NF4 midpoint (an exact tie) and its two float neighbours
    b = torch.cat([mids, torch.nextafter(mids, torch.full_like(mids, 2.0)), torch.nextafter(mids, torch.full_like(mids, -2.0))])
    b = torch.cat([torch.tensor([1.0]), b, torch.zeros(64 - 1 - b.numel())])
    blocks.append(b)
    # 1: all zeros (absmax 0 is stored as 0; scaled through the 1e-38 clamp)
    blocks.append(torch.zeros(64))
    # 2: a large negative outlier sets absmax; the rest are tiny and collapse to the zero code
    b = torch.randn(64, generator=gen(11)) * 1e-3
    b[17] = -3.0e4
    blocks.append(b)
    # 3: absmax 3 with the NF4 / FP4 midpoints scaled by 3 (ties after the reciprocal multiply)
    fp4 = F.get_4bit_type("fp4", device="cpu").sort().values
    fmids = (fp4[:-1] + fp4[1:]) / 2
    b = torch.cat([torch.tensor([3.0, -3.0]), mids * 3, fmids * 3])
    blocks.append(torch.cat([b, torch.zeros(64 - b.numel())]))
    # 4: the FP4 midpoints with absmax 1, signed zeros, subnormals
    b = torch.cat([torch.tensor([-1.0, -0.0, 0.0, 1e-45, -1e-45, 1e-40]), fmids, -fmids])
    blocks.append(torch.cat([b, torch.linspace(-0.9, 0.9, 64 - b.numel())]))
    # 5: huge and tiny magnitudes in one block
    b = torch.randn(64, generator=gen(12))
    b[0], b[1], b[2] = 1e30, -1e-30, 1e-38
    blocks.append(b)
    # 6: every value equal (all map to +-1)
    blocks.append(torch.full((64,), -0.3))
    # partial block of 32: absmax 3 and the NF4 / FP4 midpoints times 3 again, where dividing
    # by absmax (what bnb does in a partial block) and multiplying by its reciprocal (full
    # blocks) round differently. The last dimension (480) is even, so dequantize_4bit takes the
    # native path (FP4 code 8 is -0.0); odd_3x101 covers the odd one
    x = torch.cat(blocks + [torch.tensor([3.0]), mids * 3, fmids * 3, torch.tensor([0.5])])
    return x.reshape(1, -1)


def cases():
    yield "normal_64x64", torch.randn(64, 64, generator=gen(1))
    yield "normal_172x64", torch.randn(172, 64, generator=gen(2)) * 0.02
    yield "partial_3x100", torch.randn(3, 100, generator=gen(3))
    yield "odd_3x101", torch.randn(3, 101, generator=gen(4))
    yield "special", special()
    # a partial last block of zeros: its absmax is clamped to 1e-38 and stored clamped
    yield "zero_tail_1x70", torch.cat([torch.randn(64, generator=gen(6)), torch.zeros(6)]).reshape(1, 70)
    # bf16 weight given to bnb as bf16; 257 blocks, so the nested absmax has a partial block
    yield "bf16_257x64", (torch.randn(257, 64, generator=gen(5)) * 0.05).to(torch.bfloat16)
    st = load_file(os.path.join(ROOT, "models", "stories260k", "model.safetensors"))
    yield "stories260k_gate_proj", st["model.layers.0.mlp.gate_proj.weight"]


def golden(name, x):
    out = {} if name == "stories260k_gate_proj" else {"input": x.contiguous()}
    for v, qt, dq in VARIANTS:
        packed, state = F.quantize_4bit(x, blocksize=BLOCKSIZE, quant_type=qt, compress_statistics=dq)
        out[f"{v}.packed"] = packed
        out[f"{v}.absmax"] = state.absmax
        out[f"{v}.code"] = state.code
        if dq:
            out[f"{v}.nested_absmax"] = state.state2.absmax
            out[f"{v}.nested_code"] = state.state2.code
            out[f"{v}.offset"] = state.offset.reshape(())
        out[f"{v}.dequant"] = F.dequantize_4bit(packed, state)
        assert out[f"{v}.dequant"].dtype == x.dtype and out[f"{v}.dequant"].shape == x.shape
    return {k: t.contiguous() for k, t in out.items()}


def bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8).tolist()


def main():
    check = "--check" in sys.argv[1:]
    assert bitsandbytes.__version__ == "0.50.2", bitsandbytes.__version__
    assert torch.__version__.startswith("2.11.0"), torch.__version__
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    bad = 0
    total = 0
    for name, x in cases():
        tensors = golden(name, x)
        path = os.path.join(OUT, f"{name}.safetensors")
        meta = {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__, "blocksize": str(BLOCKSIZE)}
        if check:
            # tensor by tensor, bit for bit (the header's metadata order is not stable)
            old = load_file(path) if os.path.exists(path) else {}
            same = old.keys() == tensors.keys() and all(
                old[k].dtype == t.dtype and old[k].shape == t.shape and bits(old[k]) == bits(t) for k, t in tensors.items()
            )
            print(f"{'ok  ' if same else 'DIFF'} {path}")
            bad += not same
        else:
            save_file(tensors, path, metadata=meta)
            total += os.path.getsize(path)
            print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    if not check:
        print(f"total {total} bytes")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

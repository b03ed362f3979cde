#!/usr/bin/env python3
"""Developer-only: LLM.int8 (`load_in_8bit`) goldens from bitsandbytes, for the Rust port in
src/model/int8.rs (checked by tests/int8.rs).

Runs on the CPU (torch 2.11.0 CPU, bitsandbytes 0.50.2, transformers 5.24.0, see
requirements.txt). Every 8-bit op that bitsandbytes 0.50.2 runs here is its pure-torch "default"
kernel (bitsandbytes/backends/default/ops.py and bitsandbytes/_ops.py), except
int8_linear_matmul, which is torch._int_mm on an AVX-512 CPU and an fp32 matmul otherwise (the
two agree whenever every partial sum stays below 2**24, as in every case here). The values
stored below come from the real entry points, never from a formula copied here:
  cb, scb            bnb.nn.Int8Params(w, has_fp16_weights=False).to("cpu"), i.e. what
                     transformers' load_in_8bit does (Bnb8bitQuantize): w cast to fp16, then
                     int8_vectorwise_quant (threshold 0)
  dequant            bnb.functional.int8_vectorwise_dequant(cb, scb) (fp32), what transformers'
                     dequantize_bnb_weight and peft's merge use
  direct.cb/.scb     bnb.functional.int8_vectorwise_quant(w) on w in its own dtype
  mm_weight.<dtype>  the weight MatMul8bitFp (a Linear8bitLt in training mode on the CPU) feeds
                     to F.linear, read out through an identity input (exact: one nonzero term
                     per output, and no -0.0 can occur since scb >= 0)
  mm.*               a Linear8bitLt in eval mode (MatMul8bitLt forward) on an activation x:
                     mm.out_t6 with llm_int8_threshold 6.0 (the outlier decomposition),
                     mm.out_t0 with 0.0; mm.ca/sca/outlier_cols = int8_vectorwise_quant(x as
                     [-1, in] in fp16, threshold=6.0), the activation quantization inside it
Random inputs come from torch.Generator objects with fixed seeds, so two runs write
byte-identical files (--check compares instead of writing). Nothing is typed by hand.

Files, tests/golden/int8/:
  <case>.safetensors        per weight case: input, cb, scb, dequant, and for some cases
                            direct.*, mm_weight.*, mm.*; stories260k_down_proj has no input (the
                            test reads models/stories260k/model.safetensors) and no cb / scb
                            (they are saved_down_proj's weight / SCB)
  saved_down_proj.safetensors  the three tensors transformers' save_pretrained writes for
                            model.layers.0.mlp.down_proj of stories260k loaded with
                            load_in_8bit=True on the CPU, under their real names
  quantization_config.json  the quantization_config of that saved config.json

run:
  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \
    python3 -S scripts/reference/int8_goldens.py [--check]
"""

import json
import logging
import os
import sys
import tempfile
import warnings

import torch
import bitsandbytes
import bitsandbytes.functional as F
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "int8")
STORIES = os.path.join(ROOT, "models", "stories260k")
DOWN = "model.layers.0.mlp.down_proj"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def ties():
    """Rows built so that w * (127 / absmax) lands on or next to .5 (round half to even)."""
    rows = []
    # absmax 127: the scale reciprocal(127) * 127 is one rounding away from 1; k + 0.5 are fp16-exact
    r = torch.arange(-127, 127, dtype=torch.float32) + 0.5
    rows.append(torch.cat([torch.tensor([127.0]), r, torch.zeros(256 - 1 - r.numel())]))
    # absmax 254: the scale is half of the one above, so odd integers land on (near) halves
    r = torch.arange(-254, 2, dtype=torch.float32)
    rows.append(torch.cat([torch.tensor([254.0]), r[: 255]]))
    # absmax 2 (a power of two), values j / 64: w * 63.5 hits every multiple of 1/64 * 63.5
    r = torch.arange(-128, 127, dtype=torch.float32) / 64
    rows.append(torch.cat([torch.tensor([2.0]), r]))
    # a negative absmax and fp16 subnormals
    r = torch.randn(253, generator=gen(7)) * 1e-6
    rows.append(torch.cat([torch.tensor([-3.0e-5, 5.9604645e-08, -0.0]), r]))
    return torch.stack(rows)


def cases():
    yield "normal_64x64", torch.randn(64, 64, generator=gen(1))
    yield "normal_172x64", torch.randn(172, 64, generator=gen(2)) * 0.02
    # an all-zero row and an all -0.0 row: absmax 0, 0 * inf = NaN, cast to int8 gives 0
    w = torch.randn(8, 64, generator=gen(3))
    w[3] = 0.0
    w[5] = -0.0
    yield "zero_rows_8x64", w
    # weight outliers 100x larger (about 2% of the entries, plus all of column 7): they set their
    # rows' absmax, so the other values of those rows collapse to a few int8 levels
    w = torch.randn(16, 128, generator=gen(4)) * 0.02
    big = torch.rand(16, 128, generator=gen(40)) < 0.02
    big[:, 7] = True
    yield "outliers_16x128", torch.where(big, w * 100, w)
    # a bf16 weight (cast to fp16 by Int8Params, exact in this range)
    yield "bf16_32x64", (torch.randn(32, 64, generator=gen(5)) * 0.05).to(torch.bfloat16)
    yield "ties_4x256", ties()
    # many rows with scales over four decades: many distinct SCB, where SCB * fp32(1/127)
    # (MatMul8bitFp) and an exact division by 127 part ways
    scale = 10 ** (torch.rand(256, 1, generator=gen(60)) * 4 - 3)
    yield "rows_256x2", torch.randn(256, 2, generator=gen(6)) * scale
    st = load_file(os.path.join(STORIES, "model.safetensors"))
    yield "stories260k_down_proj", st[f"{DOWN}.weight"]


# which cases carry the extras (kept small: < 300 KB in all)
DIRECT = {"zero_rows_8x64", "outliers_16x128", "bf16_32x64", "ties_4x256", "rows_256x2"}
MM_WEIGHT = {
    "zero_rows_8x64": ["float32"],
    "rows_256x2": ["float32", "bfloat16", "float16"],
    "bf16_32x64": ["bfloat16"],
}
MM = {"normal_64x64": 11, "outliers_16x128": 12, "bf16_32x64": 13, "stories260k_down_proj": 14}
BIAS = {"normal_64x64"}


def linear8(w, threshold, training, bias=None):
    out_f, in_f = w.shape
    lin = bitsandbytes.nn.Linear8bitLt(in_f, out_f, bias=bias is not None, has_fp16_weights=False, threshold=threshold)
    lin.weight = bitsandbytes.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
    if bias is not None:
        lin.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)
    lin.train(training)
    return lin


def activation(seed, in_f, dtype):
    """x [2, 3, in]: normal * 2 with activation outliers (|x| >= 6 in columns 5 and 20: 6.0 exactly
    counts, >= threshold) and 5.99 in column 30 (does not)."""
    x = torch.randn(2, 3, in_f, generator=gen(seed)) * 2
    x = x.clamp(-5.5, 5.5)
    x[0, 1, 5], x[1, 2, 5], x[1, 0, 20], x[0, 0, 30] = 7.5, -9.0, 6.0, 5.99
    return x.to(dtype)


def golden(name, w):
    stories = name == "stories260k_down_proj"
    out = {} if stories else {"input": w.contiguous()}
    p = bitsandbytes.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
    assert p.data is p.CB or torch.equal(p.data, p.CB)
    if not stories:  # stories260k: saved_down_proj holds them (checked equal in main)
        out["cb"], out["scb"] = p.CB, p.SCB
    assert p.CB.dtype == torch.int8 and p.SCB.dtype == torch.float32
    out["dequant"] = F.int8_vectorwise_dequant(p.CB, p.SCB)
    if name in DIRECT:
        cb, scb, cols = F.int8_vectorwise_quant(w.clone())
        assert cols is None
        out["direct.cb"], out["direct.scb"] = cb, scb
    out_f, in_f = w.shape
    for dt in MM_WEIGHT.get(name, []):
        lin = linear8(w, 0.0, True)
        eye = torch.eye(in_f, dtype=DTYPES[dt])
        with torch.no_grad():
            out[f"mm_weight.{dt}"] = lin(eye).t().contiguous()
        assert out[f"mm_weight.{dt}"].dtype == DTYPES[dt]
    if name in MM:
        x = activation(MM[name], in_f, w.dtype)
        out["mm.x"] = x
        bias = None
        if name in BIAS:
            bias = (torch.randn(out_f, generator=gen(100 + MM[name])) * 0.1).to(w.dtype)
            out["mm.bias"] = bias
        for t in (6.0, 0.0):
            with torch.no_grad():
                out[f"mm.out_t{int(t)}"] = linear8(w, t, False, bias)(x)
        ca, sca, cols = F.int8_vectorwise_quant(x.reshape(-1, in_f).to(torch.float16), threshold=6.0)
        out["mm.ca"], out["mm.sca"], out["mm.outlier_cols"] = ca, sca, cols
    return {k: t.contiguous() for k, t in out.items()}


def saved_by_transformers():
    """stories260k through from_pretrained(load_in_8bit=True, device_map="cpu") + save_pretrained."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    m = AutoModelForCausalLM.from_pretrained(
        STORIES, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map="cpu"
    )
    with tempfile.TemporaryDirectory() as d:
        m.save_pretrained(d)
        st = load_file(os.path.join(d, "model.safetensors"))
        with open(os.path.join(d, "config.json")) as f:
            config = json.load(f)["quantization_config"]
    names = [f"{DOWN}.weight", f"{DOWN}.SCB", f"{DOWN}.weight_format"]
    assert sorted(k for k in st if k.startswith(DOWN + ".")) == sorted(names), sorted(st)
    return {k: st[k].contiguous() for k in names}, config


def bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8).tolist()


def same_tensors(old, new):
    return old.keys() == new.keys() and all(
        old[k].dtype == t.dtype and old[k].shape == t.shape and bits(old[k]) == bits(t) for k, t in new.items()
    )


def main():
    check = "--check" in sys.argv[1:]
    assert bitsandbytes.__version__ == "0.50.2", bitsandbytes.__version__
    assert torch.__version__.startswith("2.11.0"), torch.__version__
    warnings.filterwarnings("ignore")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "inputs will be cast ... to float16"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    meta = {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__}
    files = {}
    goldens = {}
    for name, w in cases():
        goldens[name] = golden(name, w)
        files[f"{name}.safetensors"] = goldens[name]
    saved, config = saved_by_transformers()
    # what transformers saved is exactly what Int8Params produces, and what dequant was made from
    w = load_file(os.path.join(STORIES, "model.safetensors"))[f"{DOWN}.weight"]
    p = bitsandbytes.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
    assert torch.equal(saved[f"{DOWN}.weight"], p.CB) and torch.equal(saved[f"{DOWN}.SCB"], p.SCB)
    assert torch.equal(F.int8_vectorwise_dequant(p.CB, p.SCB), goldens["stories260k_down_proj"]["dequant"])
    files["saved_down_proj.safetensors"] = saved
    config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"

    bad = 0
    total = 0
    for fname, tensors in files.items():
        path = os.path.join(OUT, fname)
        if check:
            # tensor by tensor, bit for bit (the header's metadata order is not stable)
            same = os.path.exists(path) and same_tensors(load_file(path), tensors)
            print(f"{'ok  ' if same else 'DIFF'} {path}")
            bad += not same
        else:
            save_file(tensors, path, metadata=meta)
            total += os.path.getsize(path)
            print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    path = os.path.join(OUT, "quantization_config.json")
    if check:
        same = os.path.exists(path) and open(path).read() == config_text
        print(f"{'ok  ' if same else 'DIFF'} {path}")
        bad += not same
    else:
        with open(path, "w") as f:
            f.write(config_text)
        total += os.path.getsize(path)
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
        print(f"total {total} bytes")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

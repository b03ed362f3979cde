#!/usr/bin/env python3
"""Developer-only: a QLoRA reference (NF4 double-quantized base + peft LoRA) from transformers,
bitsandbytes and peft, written as goldens for the Rust QLoRA code.

Everything runs on the CPU in float32 with torch.use_deterministic_algorithms(True), one
thread, attn_implementation="eager" and use_cache=False. Random numbers come from
torch.Generator objects with fixed seeds, so two runs write byte-identical files (checked
with --check). Nothing is typed by hand: rerun this script after changing the case.

Route: bitsandbytes-native 4-bit, forward AND backward. transformers 5.24.0 accepts 4-bit on
the CPU, so the model is

  AutoModelForCausalLM.from_pretrained("models/stories260k", quantization_config=
      BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                         bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32),
      dtype=torch.float32, device_map="cpu", attn_implementation="eager")

which turns the 35 decoder linears (q/k/v/o/gate/up/down_proj of 5 layers) into
bnb.nn.Linear4bit (embed_tokens, the norms and the tied lm_head stay fp32). Each weight is
quantized by bitsandbytes.functional.quantize_4bit(fp32 weight, blocksize=64,
quant_type="nf4", compress_statistics=True) (nested absmax blocksize 256); this script checks
that bit for bit against quantizing models/stories260k/model.safetensors itself. On the CPU,
bitsandbytes 0.50.2 runs Linear4bit as: per-block scale = dequantize_blockwise(absmax uint8,
nested state) + offset, W = dequantize_4bit (code[q] * scale, libbitsandbytes_cpu), then
F.linear in fp32; its backward (MatMul4Bit) gives grad_input = grad_output @ W and no weight
gradient (the base is frozen). bitsandbytes would switch a Linear4bit in eval mode with a
no-grad input to a bf16 packed CPU kernel on CPUs with AVX512-BF16; this script sets
support_avx512bf16_for_cpu = False on every Linear4bit so the result does not depend on the
CPU it runs on.

Cross-check (not written): the mathematically identical dense route, models/stories260k in
fp32 with each decoder linear weight replaced by bnb's dequantize_4bit of the same quantized
state and the same LoRA weights on top, must give the same logits, loss and gradients
(asserted to 1e-5 max abs; the differences are printed). The same LoRA on the unquantized
fp32 base must give logits that differ by more than 1e-3 (quantization matters).

peft on top: get_peft_model with LoraConfig(task_type CAUSAL_LM, r 4, lora_alpha 8,
target_modules q/k/v/o/gate/up/down_proj, lora_dropout 0.0, bias "none",
init_lora_weights=False). Every lora_A / lora_B weight (named_parameters order) is then
redrawn as 0.1 * randn from a generator seeded with 3000, and input_ids [2, 16] are uniform
over the vocab from a generator seeded with 4000: the same seeds, hence the same adapter
weights and inputs, as tests/golden/lora/stories260k_all_linear (model_goldens.py), so the
two cases differ only by the quantized base. target_modules is stored sorted; the script
re-executes itself under PYTHONHASHSEED=0 as model_goldens.py does.

Output: tests/golden/qlora/stories260k_nf4_dq/
  adapter_config.json, adapter_model.safetensors
        model.save_pretrained as peft writes them (README.md deleted);
        base_model_name_or_path "models/stories260k". Keys e.g.
        base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight fp32 [4, 64].
  expected.safetensors
        input_ids  int64 [2, 16]
        labels     int64 [2, 16]       input_ids with labels[:, :5] = -100
        loss       fp32  [] (0-dim)    model(input_ids=..., labels=...).loss, mean over the
                                       2 * 11 shifted tokens that are not -100
        logits     fp32  [2, 16, 512]
        grad.<key> fp32                for every key of adapter_model.safetensors, the
                                       gradient after loss.backward()
  quantized.safetensors
        bnb's 4-bit state of each of the 35 decoder linears, for W its HF weight name (e.g.
        model.layers.0.self_attn.q_proj.weight), with the names of tests/golden/nf4:
          W.packed       uint8 [out*in/2, 1]  quantize_4bit's packed codes (high nibble
                                              first, row-major over the [out, in] weight)
          W.absmax       uint8 [out*in/64]    the double-quantized block absmax
        and, as every linear here has at most 256 blocks (so exactly one nested block),
          nested_absmax  fp32  [5, 7]         [layer, module], module in the order
          offset         fp32  [5, 7]         q, k, v, o, gate, up, down_proj
          nf4_code       fp32  [16]           (the same for every linear)
          nested_code    fp32  [256]          (the same for every linear)
        The fp32 dequantized weights would take 906 KB, over this folder's 400 KB budget, so
        they are not stored; bnb's dequantized weight is exactly (checked here with
        torch.equal for every linear)
          scale[b] = nested_code[absmax[b]] * nested_absmax[layer, module] + offset[layer, module]
          W[i]     = nf4_code[q[i]] * scale[i // 64]    (fp32, i row-major; q[2j] = packed[j] >> 4,
                                                         q[2j+1] = packed[j] & 15)
        The fp32 weights they come from are models/stories260k/model.safetensors.
  case.json  the settings, seeds and versions.

DoRA over the same quantized base: tests/golden/qlora/stories260k_nf4_dq_dora/, the same case
with LoraConfig(use_dora=True): peft computes each magnitude's norm from bnb's dequantized
weight. After the lora_A / lora_B redraw (same generator), every lora_magnitude_vector is
multiplied by 1 + 0.1 * randn from that generator, so m / ||W + scaling B A|| is far from 1. Its
folder holds adapter_config.json, adapter_model.safetensors (with ...lora_magnitude_vector keys),
expected.safetensors (grad.<key> for the magnitudes too) and case.json; no quantized.safetensors
(the quantized base is the one above, bit for bit). Both cross-checks run for it too.

How to run (from anywhere; versions pinned in scripts/reference/requirements.txt):

  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \\
      python3 -S scripts/reference/qlora_goldens.py

Options: --check builds everything in a temporary folder and compares it byte for byte
with the files on disk instead of writing them (exit 1 on a difference).
"""
import os
import sys

# peft writes set-valued config fields with list(set); pin the string hash seed so any
# such field has a stable order (target_modules is sorted explicitly below as well).
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    flags = ["-S"] if sys.flags.no_site else []
    os.execv(sys.executable, [sys.executable] + flags + sys.argv)

import argparse  # noqa: E402
import filecmp  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as BF  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

transformers.utils.logging.disable_progress_bar()
# peft 0.21 calls transformers' deprecated is_gradient_checkpointing; nothing to act on.
warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
STORIES = "models/stories260k"  # relative to ROOT
CASE = "tests/golden/qlora/stories260k_nf4_dq"  # relative to ROOT
DORA_CASE = "tests/golden/qlora/stories260k_nf4_dq_dora"  # relative to ROOT

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QUANT = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
             bnb_4bit_compute_dtype=torch.float32)
BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256
LORA = dict(r=4, lora_alpha=8, target_modules=sorted(ALL_LINEAR))
LORA_STD = 0.1
LORA_SEED = 3000  # = model_goldens.py's stories260k_all_linear
INPUT_SEED = 4000  # = model_goldens.py's stories260k_all_linear
T = 16
MASKED = 5
TOL = 1e-5
MAGNITUDE_STD = 0.1


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def meta():
    # One key only: safetensors writes the metadata map in hash order.
    return {"generator": f"scripts/reference/qlora_goldens.py (transformers {transformers.__version__}, "
                         f"peft {peft.__version__}, bitsandbytes {bnb.__version__}, "
                         f"torch {torch.__version__}, safetensors {safetensors.__version__})"}


def save_tensors(tensors, path):
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path, metadata=meta())


def write_json(obj, path):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def lora_config(dora):
    return LoraConfig(task_type="CAUSAL_LM", bias="none", lora_dropout=0.0,
                      init_lora_weights=False, use_dora=dora, **LORA)


def load_quantized():
    m = AutoModelForCausalLM.from_pretrained(
        STORIES, quantization_config=BitsAndBytesConfig(**QUANT), dtype=torch.float32,
        device_map="cpu", attn_implementation="eager")
    n = 0
    for name, mod in m.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            assert name.split(".")[-1] in ALL_LINEAR and name.startswith("model.layers."), name
            mod.support_avx512bf16_for_cpu = False  # no bf16 packed kernel, on any CPU
            n += 1
        elif isinstance(mod, torch.nn.Linear):
            assert name == "lm_head", name
    assert n == 7 * m.config.num_hidden_layers, n
    return m.eval()


def load_dense():
    return AutoModelForCausalLM.from_pretrained(
        STORIES, dtype=torch.float32, attn_implementation="eager").eval()


def quantized_state(qmodel):
    """bnb's state for each decoder linear, checked against quantize_4bit of the fp32 file."""
    fp32 = load_file(os.path.join(STORIES, "model.safetensors"))
    out, deq, nested = {}, {}, {}
    code = nested_code = None
    for name, mod in qmodel.named_modules():
        if not isinstance(mod, bnb.nn.Linear4bit):
            continue
        key = name + ".weight"
        qs = mod.weight.quant_state
        packed = mod.weight.data
        assert qs.quant_type == "nf4" and qs.blocksize == BLOCKSIZE and qs.nested
        assert qs.state2.blocksize == NESTED_BLOCKSIZE and qs.dtype == torch.float32
        assert tuple(qs.shape) == tuple(fp32[key].shape), (key, qs.shape)
        assert packed.dtype == torch.uint8 and packed.shape == (fp32[key].numel() // 2, 1)
        # from_pretrained quantizes exactly as quantize_4bit of the fp32 weight does
        p2, s2 = BF.quantize_4bit(fp32[key], blocksize=BLOCKSIZE, quant_type="nf4",
                                  compress_statistics=True)
        assert torch.equal(p2, packed), key
        assert torch.equal(s2.absmax, qs.absmax) and torch.equal(s2.state2.absmax, qs.state2.absmax), key
        assert torch.equal(s2.offset, qs.offset), key
        w = BF.dequantize_4bit(packed, qs)
        assert w.dtype == torch.float32 and w.shape == fp32[key].shape
        # the documented reconstruction gives bnb's dequantized weight exactly
        scale = qs.state2.code[qs.absmax.long()] * qs.state2.absmax.repeat_interleave(
            NESTED_BLOCKSIZE)[:qs.absmax.numel()] + qs.offset
        flat = packed.reshape(-1)
        q = torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1).long()[:w.numel()]
        rebuilt = qs.code[q] * scale.repeat_interleave(BLOCKSIZE)[:w.numel()]
        assert torch.equal(rebuilt.reshape(w.shape), w), f"{key}: reconstruction differs"
        if code is None:
            code, nested_code = qs.code, qs.state2.code
        assert torch.equal(code, qs.code) and torch.equal(nested_code, qs.state2.code)
        # every linear here has <= 256 blocks, so one nested block: stored as a [layers, 7] table
        assert qs.state2.absmax.numel() == 1, key
        layer, kind = int(name.split(".")[2]), ALL_LINEAR.index(name.split(".")[-1])
        assert (layer, kind) not in nested, key
        nested[(layer, kind)] = (qs.state2.absmax[0], qs.offset.reshape(()))
        out[key + ".packed"] = packed
        out[key + ".absmax"] = qs.absmax
        deq[key] = w
    layers = qmodel.config.num_hidden_layers
    assert sorted(nested) == [(i, j) for i in range(layers) for j in range(len(ALL_LINEAR))]
    out["nested_absmax"] = torch.stack([nested[(i, j)][0] for i in range(layers)
                                        for j in range(len(ALL_LINEAR))]).reshape(layers, -1)
    out["offset"] = torch.stack([nested[(i, j)][1] for i in range(layers)
                                 for j in range(len(ALL_LINEAR))]).reshape(layers, -1)
    out["nf4_code"] = code
    out["nested_code"] = nested_code
    return out, deq


def add_lora(base, dora):
    model = get_peft_model(base, lora_config(dora))
    pcfg = model.peft_config["default"]
    pcfg.target_modules = sorted(pcfg.target_modules)
    return model


def run(model, ids, labels):
    model.zero_grad(set_to_none=True)
    res = model(input_ids=ids, labels=labels, use_cache=False)
    assert res.loss.dim() == 0
    res.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return res.loss.detach().float(), res.logits.detach().float(), grads


def saved_name(param):
    """The adapter file's key for a trainable parameter's name, as peft saves it."""
    return param.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector").replace(".default", "")


def build(case_dir, dora):
    torch.manual_seed(0)
    qbase = load_quantized()
    qstate, deq = quantized_state(qbase)
    model = add_lora(qbase, dora)
    g = gen(LORA_SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(LORA_STD * torch.randn(p.shape, generator=g))
        for name, p in model.named_parameters():
            if ".lora_magnitude_vector." in name:
                p.mul_(1.0 + MAGNITUDE_STD * torch.randn(p.shape, generator=g))
    model.eval()
    model.save_pretrained(case_dir, safe_serialization=True)
    readme = os.path.join(case_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    saved = load_file(os.path.join(case_dir, "adapter_model.safetensors"))

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    key_of = {}
    for key, t in saved.items():
        cands = [n for n, p in trainable.items()
                 if saved_name(n) == key and torch.equal(p.detach(), t)]
        assert len(cands) == 1, f"{key} matches {cands}"
        key_of[cands[0]] = key
    missing = sorted(set(trainable) - set(key_of))
    assert not missing, f"trainable parameters not in adapter file: {missing}"
    assert len(saved) == (3 if dora else 2) * 7 * qbase.config.num_hidden_layers, len(saved)

    ids = torch.randint(0, model.config.vocab_size, (2, T), generator=gen(INPUT_SEED))
    labels = ids.clone()
    labels[:, :MASKED] = -100
    loss, logits, grads = run(model, ids, labels)
    tensors = {"input_ids": ids, "labels": labels, "loss": loss, "logits": logits}
    for name, key in key_of.items():
        assert grads[name].abs().max().item() > 0, f"zero gradient for {name}"
        tensors["grad." + key] = grads[name]
    save_tensors(tensors, os.path.join(case_dir, "expected.safetensors"))
    if not dora:
        save_tensors(qstate, os.path.join(case_dir, "quantized.safetensors"))
    print(f"native 4-bit{' DoRA' if dora else ''}: loss {loss.item():.6f}, {len(saved)} adapter tensors, {len(key_of)} gradients")

    # Cross-check 1: dense fp32 base with bnb's dequantized weights, same LoRA weights.
    lora_weights = {n: p.detach().clone() for n, p in trainable.items()}
    dense = load_dense()
    with torch.no_grad():
        for key, w in deq.items():
            dict(dense.named_parameters())[key].copy_(w)
    dmodel = add_lora(dense, dora)
    with torch.no_grad():
        for n, p in dmodel.named_parameters():
            if p.requires_grad:
                p.copy_(lora_weights[n])
    dmodel.eval()
    dloss, dlogits, dgrads = run(dmodel, ids, labels)
    d_logits = (dlogits - logits).abs().max().item()
    d_loss = abs(dloss.item() - loss.item())
    d_grad = max((dgrads[n] - grads[n]).abs().max().item() for n in key_of)
    print(f"native 4-bit vs dense dequantized: max|logits| {d_logits:.3e}, |loss| {d_loss:.3e}, "
          f"max|grad| {d_grad:.3e}")
    assert d_logits <= TOL and d_loss <= TOL and d_grad <= TOL, "routes disagree"

    # Cross-check 2: the same LoRA on the unquantized base must differ (quantization matters).
    fmodel = add_lora(load_dense(), dora)
    with torch.no_grad():
        for n, p in fmodel.named_parameters():
            if p.requires_grad:
                p.copy_(lora_weights[n])
    fmodel.eval()
    with torch.no_grad():
        flogits = fmodel(input_ids=ids, use_cache=False).logits
    d_q = (flogits - logits).abs().max().item()
    print(f"quantized vs unquantized base: max|logits| {d_q:.3e}")
    assert d_q > 1e-3, d_q

    write_json({"base_model": STORIES,
                "route": "bitsandbytes-native Linear4bit forward and backward (CPU)",
                "quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                 "bnb_4bit_use_double_quant": True,
                                 "bnb_4bit_compute_dtype": "float32",
                                 "blocksize": BLOCKSIZE, "nested_blocksize": NESTED_BLOCKSIZE,
                                 "quantized_modules": sorted(ALL_LINEAR)},
                "lora": dict(LORA, use_dora=True) if dora else LORA, "lora_dropout": 0.0, "bias": "none", "init_lora_weights": False,
                "task_type": "CAUSAL_LM", "lora_weights_std": LORA_STD,
                "lora_weights_seed": LORA_SEED, "input_ids_seed": INPUT_SEED,
                "seq_len": T, "labels_masked_prefix": MASKED,
                "dense_dequantized_route_tolerance": TOL,
                "transformers_version": transformers.__version__,
                "peft_version": peft.__version__,
                "bitsandbytes_version": bnb.__version__,
                "torch_version": torch.__version__,
                "safetensors_version": safetensors.__version__,
                **({"magnitude_perturbation_std": MAGNITUDE_STD} if dora else {})},
               os.path.join(case_dir, "case.json"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = ap.parse_args()

    assert bnb.__version__ == "0.50.2", bnb.__version__
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)

    bad = 0
    for case, dora in ((CASE, False), (DORA_CASE, True)):
        bad |= write_case(case, dora, args.check)
    if args.check:
        sys.exit(bad)


def write_case(case, dora, check):
    """Builds one case in a temporary folder, then writes it (or, with check, compares it)."""
    with tempfile.TemporaryDirectory() as stage:
        case_dir = os.path.join(stage, case)
        os.makedirs(case_dir)
        cwd = os.getcwd()
        os.chdir(ROOT)  # so the base path is relative, as recorded in adapter_config.json
        try:
            build(case_dir, dora)
        finally:
            os.chdir(cwd)

        files = sorted(os.path.relpath(os.path.join(case_dir, n), stage) for n in os.listdir(case_dir))
        print(f"transformers {transformers.__version__}, peft {peft.__version__}, "
              f"bitsandbytes {bnb.__version__}, torch {torch.__version__}, "
              f"safetensors {safetensors.__version__}")
        total = 0
        bad = 0
        if check:
            on_disk = os.path.join(ROOT, case)
            extra = sorted(set(os.listdir(on_disk) if os.path.isdir(on_disk) else [])
                           - set(os.listdir(case_dir)))
            for n in extra:
                print(f"not written by this script: {case}/{n}", file=sys.stderr)
                bad = 1
        for rel in files:
            src = os.path.join(stage, rel)
            dst = os.path.join(ROOT, rel)
            size = os.path.getsize(src)
            total += size
            if check:
                if not (os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False)):
                    print(f"differs: {rel}", file=sys.stderr)
                    bad = 1
            else:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst)
                print(f"wrote {rel:60s} {size:>8,d} bytes")
        print(f"{len(files)} files, {total:,d} bytes")
        return bad

if __name__ == "__main__":
    main()

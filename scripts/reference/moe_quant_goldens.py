#!/usr/bin/env python3
"""Developer-only: Axolotl's `quantize_moe_experts` as bitsandbytes 0.50.2 + transformers 5.24 +
peft 0.21.2 compute it, written as goldens for recipe's quantized experts (tests/moeq.rs).

What Axolotl does (axolotl @067b021c, src/axolotl/monkeypatch/moe_quant.py): while transformers
5 loads a model with `load_in_4bit`, each 3-D parameter whose name holds "expert" (a mixture of
experts' fused `gate_up_proj` [E, 2I, H], gate rows first, and `down_proj` [E, H, I]) is handed to
bitsandbytes' `replace_parameter_4bit(module, name, compress_statistics=bnb_4bit_use_double_quant,
quant_type=bnb_4bit_quant_type)` (blocksize: quantize_4bit's default, 64): `quantize_4bit` of the
whole tensor, and a parametrization that dequantizes it whole on access. Its patch runs for CUDA
tensors only, so here, on the CPU, the same call is made by hand after loading. peft's
ParamWrapper (target_parameters) then adds its LoRA update through a second parametrization on
the same parameter; it wraps the module before the quantization here, in definition order
(gate_up_proj inside, down_proj outside), which is the nesting Axolotl's patched
`_inject_parameters` gives on a quantized model (and the adapter it saves is peft's usual one).

Cases (random bases, every parameter redrawn: RMSNorm weights 1 + 0.1 randn, the rest 0.02 randn;
hidden 64 and expert width 64, so every bitsandbytes CPU kernel sees rows of at least one block):

  mixtral_nf4_dq   MixtralConfig, 4 experts top-2, 2 layers, output_router_logits (coef 0.02),
                   nf4 with double quantization; LoRA r 4 / alpha 8 on q_proj, v_proj and on
                   experts.gate_up_proj, experts.down_proj
  qwen3_moe_nf4_dq Qwen3MoeConfig, 6 experts top-3 (not renormalized), 3 layers with layer 1 dense
                   (mlp_only_layers, an nn.Linear MLP that bitsandbytes quantizes), nf4 with double
                   quantization; LoRA r 4 / alpha 16 on q_proj, k_proj and experts.down_proj

Loaded on the CPU in fp32 (compute dtype fp32, eager attention), each Linear4bit with
support_avx512bf16_for_cpu False (as qlora_goldens.py). LoRA weights redrawn as 0.1 * randn
(seed 3100), input_ids [2, 16] (seed 4100), labels = input_ids with the first 5 columns -100.

Output: tests/golden/moeq/<case>/
  base/config.json, base/model.safetensors   the dense base (transformers' per-expert names)
  adapter_config.json, adapter_model.safetensors   as peft writes them
  expected.safetensors   input_ids, labels, logits, loss, grad.<adapter key>, and per sparse layer
                         L and fused parameter P (gate_up_proj / down_proj):
                         L.P.packed, L.P.absmax, L.P.nested_absmax, L.P.offset (bitsandbytes'
                         QuantState; 8-bit: L.P.cb, L.P.scb) and L.P.dequantized (what the
                         parametrization returns)
  case.json              settings, versions, the quantized modules and parameters

  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \\
      python3 -S scripts/reference/moe_quant_goldens.py [--check]
"""
import os
import sys

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
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import bitsandbytes as bnb  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from bitsandbytes.nn.parametrize import Bnb4bitParametrization, replace_parameter_4bit  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402


def patch_peft_param_wrapper():
    """Two faults of peft 0.21.2's ParamWrapper on a parameter that is already parametrized (as
    bitsandbytes' quantized experts are), fixed here so that its LoRA acts as it does on a dense
    base: (1) `_remove_parametrizations` looks for `_LoraParameterProxy` only, so the
    `_LoraFactorsProxy` of a single adapter on 3-D experts stays registered after the forward
    (every later forward would stack one more); (2) the outer wrapper's `parametrize.cached()`
    is active while the inner wrapper reads its parameter, so the dequantized value is cached
    before the inner LoRA proxy is registered, and the inner LoRA (gate_up_proj, nested inside
    down_proj) would have no effect and no gradient. The cache is emptied once each proxy is in
    place; the extra proxy is removed after the forward."""
    import contextlib
    import torch.nn.utils.parametrize as P
    from peft.tuners.lora import layer as lora_layer

    original_activate = lora_layer.ParamWrapper._activate_lora

    @contextlib.contextmanager
    def activate(self, active_adapters):
        with original_activate(self, active_adapters):
            P._cache = {}
            yield

    def remove(self):
        base_layer = self.get_base_layer()
        plist = base_layer.parametrizations[self.parameter_name]
        if len(plist) == 1:
            P.remove_parametrizations(base_layer, self.parameter_name, leave_parametrized=False)
            return
        for i in reversed(range(len(plist))):
            if isinstance(plist[i], (lora_layer._LoraParameterProxy, lora_layer._LoraFactorsProxy)):
                del plist[i]
                return
        raise AssertionError("no LoRA proxy to remove")

    lora_layer.ParamWrapper._activate_lora = activate
    lora_layer.ParamWrapper._remove_parametrizations = remove


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = "tests/golden/moeq"

CASES = {
    "mixtral_nf4_dq": dict(
        family="mixtral",
        config=dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, vocab_size=128, tie_word_embeddings=False,
                    num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
                    max_position_embeddings=64, output_router_logits=True, router_aux_loss_coef=0.02),
        quant=dict(bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
        lora=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                  target_parameters=["experts.gate_up_proj", "experts.down_proj"]),
        seed=1300,
    ),
    "qwen3_moe_nf4_dq": dict(
        family="qwen3_moe",
        config=dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=64, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=128,
                    tie_word_embeddings=False, num_experts=6, num_experts_per_tok=3, norm_topk_prob=False,
                    decoder_sparse_step=1, mlp_only_layers=[1], max_position_embeddings=64,
                    output_router_logits=True, router_aux_loss_coef=0.01),
        quant=dict(bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
        lora=dict(r=4, lora_alpha=16, target_modules=["k_proj", "q_proj"],
                  target_parameters=["experts.down_proj"]),
        seed=1400,
    ),
    "mixtral_int8": dict(
        family="mixtral",
        config=dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, vocab_size=128, tie_word_embeddings=False,
                    num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
                    max_position_embeddings=64, output_router_logits=True, router_aux_loss_coef=0.02),
        quant=dict(load_in_8bit=True),
        lora=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                  target_parameters=["experts.gate_up_proj", "experts.down_proj"]),
        seed=1500,
    ),
}


class Bnb8bitParametrization(torch.nn.Module):
    """Axolotl's (moe_quant.py): dequantizes int8 row-wise data on access, to fp32."""

    def __init__(self, row_stats):
        super().__init__()
        self.register_buffer("row_stats", row_stats)

    @torch.no_grad()
    def forward(self, quantized_param):
        orig_shape = quantized_param.shape
        if quantized_param.ndim > 2:
            quantized_param = quantized_param.reshape(-1, orig_shape[-1])
        return bnb.functional.int8_vectorwise_dequant(quantized_param, self.row_stats).reshape(orig_shape)


def replace_parameter_8bit(module, name):
    """Axolotl's replace_parameter_8bit: int8_vectorwise_quant of the fp16 data, one scale per row
    of the last dimension. On CUDA (where Axolotl runs it) bitsandbytes' kernel takes a 3-D tensor
    row by row; its CPU fallback reduces over dim 1 instead, so the tensor is handed over as
    [rows, last] here (the same rows, the same per-row arithmetic), and the codes reshaped back."""
    import torch.nn.utils.parametrize as P
    original = getattr(module, name)
    data = original.data.to(torch.float16)
    int8_data, row_stats, _ = bnb.functional.int8_vectorwise_quant(data.reshape(-1, data.shape[-1]))
    setattr(module, name, torch.nn.Parameter(int8_data.reshape(data.shape), requires_grad=False))
    P.register_parametrization(module, name, Bnb8bitParametrization(row_stats), unsafe=True)


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def meta():
    return {"generator": f"scripts/reference/moe_quant_goldens.py (transformers {transformers.__version__}, "
                         f"peft {peft.__version__}, bitsandbytes {bnb.__version__}, torch {torch.__version__}, "
                         f"safetensors {safetensors.__version__})"}


def make_base(spec, base_dir):
    if spec["family"] == "mixtral":
        from transformers import MixtralConfig as Config, MixtralForCausalLM as Model
    else:
        from transformers import Qwen3MoeConfig as Config, Qwen3MoeForCausalLM as Model
    torch.manual_seed(0)
    model = Model(Config(**spec["config"])).eval()
    g = gen(spec["seed"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * r if name.endswith("norm.weight") else 0.02 * r)
    model.save_pretrained(base_dir, safe_serialization=True)
    os.remove(os.path.join(base_dir, "generation_config.json"))


def build(out, case, spec):
    case_dir = f"{OUT}/{case}"
    base = f"{case_dir}/base"
    os.chdir(out)
    make_base(spec, base)
    q = spec["quant"]
    eight = q.get("load_in_8bit", False)
    if eight:
        quant = BitsAndBytesConfig(**q)
    else:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32, **q)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=quant, dtype=torch.float32,
                                                 device_map="cpu", attn_implementation="eager")
    linear4bit = []
    for name, mod in model.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = False
            linear4bit.append(name)
        if isinstance(mod, bnb.nn.Linear8bitLt):
            linear4bit.append(name)
    experts = [(name, mod) for name, mod in model.named_modules() if name.endswith(".mlp.experts")]
    assert experts, "no fused experts"
    lcfg = LoraConfig(task_type="CAUSAL_LM", bias="none", lora_dropout=0.0, init_lora_weights=False, **spec["lora"])
    model = get_peft_model(model, lcfg)
    pcfg = model.peft_config["default"]
    pcfg.target_modules = sorted(pcfg.target_modules)
    pcfg.target_parameters = sorted(pcfg.target_parameters)
    # Axolotl's quantization of every 3-D expert parameter (on the innermost module, in definition
    # order), with the settings its patch passes.
    tensors = {}
    quantized = []
    for name, mod in experts:
        layer = name.split(".")[2]
        for pname in ["gate_up_proj", "down_proj"]:
            dense = getattr(mod, pname).detach().clone()
            assert dense.ndim == 3
            key = f"{layer}.{pname}"
            if eight:
                replace_parameter_8bit(mod, pname)
                quantized.append(f"{name}.{pname}")
                par = mod.parametrizations[pname]
                tensors[key + ".cb"] = par.original.detach().clone()
                tensors[key + ".scb"] = par[0].row_stats.detach().clone()
                deq = getattr(mod, pname).detach().clone()
                assert deq.shape == dense.shape and deq.dtype == torch.float32
                tensors[key + ".dequantized"] = deq
                continue
            replace_parameter_4bit(mod, pname, compress_statistics=q["bnb_4bit_use_double_quant"],
                                   quant_type=q["bnb_4bit_quant_type"])
            quantized.append(f"{name}.{pname}")
            par = next(p for p in mod.parametrizations[pname] if isinstance(p, Bnb4bitParametrization))
            st = par.quant_state
            tensors[key + ".packed"] = mod.parametrizations[pname].original.detach().clone()
            if st.nested:
                tensors[key + ".absmax"] = st.absmax
                tensors[key + ".nested_absmax"] = st.state2.absmax
                tensors[key + ".offset"] = st.offset.reshape(1).float()
            else:
                tensors[key + ".absmax"] = st.absmax
            assert st.blocksize == 64, st.blocksize
            deq = getattr(mod, pname).detach().clone()
            tensors[key + ".dequantized"] = deq
            assert deq.shape == dense.shape and deq.dtype == dense.dtype
    g = gen(3100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    # An 8-bit base runs Linear8bitLt's training path on the CPU (MatMul8bitFp: the dequantized
    # weight), the one recipe computes; nothing else in these models depends on the mode.
    model.train() if eight else model.eval()
    model.save_pretrained(case_dir, safe_serialization=True)
    os.remove(os.path.join(case_dir, "README.md"))
    saved = load_file(os.path.join(case_dir, "adapter_model.safetensors"))
    trainable = {n.replace(".default", ""): p for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(trainable) == sorted(saved), (sorted(trainable), sorted(saved))
    ids = torch.randint(0, spec["config"]["vocab_size"], (2, 16), generator=gen(4100))
    labels = ids.clone()
    labels[:, :5] = -100
    res = model(input_ids=ids, labels=labels, use_cache=False)
    res.loss.backward()
    tensors.update({"input_ids": ids, "labels": labels, "loss": res.loss.detach().float(),
                    "logits": res.logits.detach().float()})
    for k, p in trainable.items():
        assert p.grad is not None and p.grad.abs().max() > 0, k
        tensors["grad." + k] = p.grad.detach()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(case_dir, "expected.safetensors"),
              metadata=meta())
    with open(os.path.join(case_dir, "case.json"), "w") as f:
        f.write(json.dumps({"base_model": base, "lora": spec["lora"], "quantization": {
            "quantize_moe_experts": True, **({} if eight else {"load_in_4bit": True, "bnb_4bit_compute_dtype":
                                                                        "float32"}), **q},
            ("linear8bitlt_modules" if eight else "linear4bit_modules"): linear4bit, "quantized_expert_parameters": quantized,
            "trainable_parameters": model.get_nb_trainable_parameters()[0],
            "transformers_version": transformers.__version__, "peft_version": peft.__version__,
            "bitsandbytes_version": bnb.__version__}, indent=2, sort_keys=True) + "\n")
    print(f"{case}: loss {res.loss.item():.6f}, {len(linear4bit)} {'Linear8bitLt' if eight else 'Linear4bit'}, {len(quantized)} quantized expert "
          f"parameters, {len(saved)} adapter tensors")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    patch_peft_param_wrapper()
    bad = 0
    with tempfile.TemporaryDirectory() as stage:
        for case, spec in CASES.items():
            build(stage, case, spec)
        os.chdir(ROOT)
        for case in CASES:
            case_dir = f"{OUT}/{case}"
            names = [n for n in sorted(os.listdir(os.path.join(stage, case_dir))) if n != "base"]
            names += [f"base/{n}" for n in sorted(os.listdir(os.path.join(stage, case_dir, "base")))]
            for name in names:
                src, dst = os.path.join(stage, case_dir, name), os.path.join(ROOT, case_dir, name)
                if args.check:
                    if not (os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False)):
                        print(f"differs: {case_dir}/{name}", file=sys.stderr)
                        bad = 1
                else:
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copyfile(src, dst)
                    print(f"wrote {case_dir}/{name}")
    sys.exit(bad)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Developer-only: QLoRA of a mixture of experts as transformers 5.24 + bitsandbytes 0.50.2 + peft
0.21.2 build it, written as goldens for recipe's MoE QLoRA (tests/moe.rs).

The base is a random MixtralConfig (hidden 64, 4 heads of 16, 2 kv heads, 4 experts of width 32,
top-2, 2 layers, vocab 128, untied, output_router_logits true, router_aux_loss_coef 0.02; every
parameter redrawn from a generator seeded 1100: RMSNorm weights 1 + 0.1 randn, the rest 0.02 randn),
saved to base/ in the case folder. Every quantized linear has at least 64 inputs: bitsandbytes
0.50.2's CPU dequantize_4bit is wrong for a weight with fewer columns than its block size (64),
e.g. tests/golden/model/mixtral_moe's [32, 32] q_proj (max error 1.9 on randn(64, 32), against
0.39 on randn(32, 64)); a GPU kernel does not do that, recipe follows the format's definition.
It is loaded on the CPU with

  BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                     bnb_4bit_compute_dtype=torch.float32), dtype=torch.float32, eager attention

Checked here (and written to case.json): bitsandbytes turns only `nn.Linear` modules into
Linear4bit, i.e. the attention projections (q/k/v/o_proj of each layer); the router
(MixtralTopKRouter, a bare parameter) and the fused 3-D experts (gate_up_proj, down_proj) stay
fp32 (the compute dtype), and so does lm_head. Each Linear4bit has support_avx512bf16_for_cpu
set False so the result does not depend on the CPU (as qlora_goldens.py does).

peft on top: LoraConfig(task_type CAUSAL_LM, r 4, lora_alpha 8, target_modules q_proj, v_proj,
target_parameters experts.gate_up_proj, experts.down_proj, lora_dropout 0, bias none,
init_lora_weights False); every lora_A / lora_B weight is redrawn as 0.1 * randn (generator seed
3100), input_ids [2, 16] uniform over the vocab (seed 4100), labels = input_ids with the first
5 columns -100. The loss carries the load-balancing term (output_router_logits is on in the
base's config.json).

Output: tests/golden/qlora/mixtral_moe_nf4_dq/
  adapter_config.json, adapter_model.safetensors   as peft writes them (README.md deleted)
  expected.safetensors   input_ids, labels, loss, logits, grad.<adapter key>
  case.json              settings, versions, and the modules bitsandbytes quantized

  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \\
      python3 -S scripts/reference/moe_qlora_goldens.py [--check]
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
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CASE = "tests/golden/qlora/mixtral_moe_nf4_dq"
BASE = CASE + "/base"
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
            target_parameters=["experts.down_proj", "experts.gate_up_proj"])


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def meta():
    return {"generator": f"scripts/reference/moe_qlora_goldens.py (transformers {transformers.__version__}, "
                         f"peft {peft.__version__}, bitsandbytes {bnb.__version__}, torch {torch.__version__}, "
                         f"safetensors {safetensors.__version__})"}


def make_base(out):
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(0)
    cfg = MixtralConfig(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, vocab_size=128, tie_word_embeddings=False,
                        num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
                        max_position_embeddings=64, output_router_logits=True, router_aux_loss_coef=0.02)
    model = MixtralForCausalLM(cfg).eval()
    g = gen(1100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * r if name.endswith("norm.weight") else 0.02 * r)
    model.save_pretrained(os.path.join(out, BASE), safe_serialization=True)
    os.remove(os.path.join(out, BASE, "generation_config.json"))


def build(out):
    make_base(out)
    os.chdir(out)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(BASE, quantization_config=quant, dtype=torch.float32,
                                                 device_map="cpu", attn_implementation="eager")
    quantized = []
    for name, mod in model.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = False
            quantized.append(name)
    assert all(n.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "o_proj") for n in quantized), quantized
    assert len(quantized) == 4 * model.config.num_hidden_layers, quantized
    for name, p in model.named_parameters():
        if ".mlp." in name:
            assert p.dtype == torch.float32, (name, p.dtype)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", bias="none", lora_dropout=0.0,
                                             init_lora_weights=False, **LORA))
    pcfg = model.peft_config["default"]
    pcfg.target_modules = sorted(pcfg.target_modules)
    pcfg.target_parameters = sorted(pcfg.target_parameters)
    g = gen(3100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    model.eval()
    case_dir = os.path.join(out, CASE)
    model.save_pretrained(case_dir, safe_serialization=True)
    os.remove(os.path.join(case_dir, "README.md"))
    saved = load_file(os.path.join(case_dir, "adapter_model.safetensors"))
    trainable = {n.replace(".default", ""): p for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(trainable) == sorted(saved), (sorted(trainable), sorted(saved))
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=gen(4100))
    labels = ids.clone()
    labels[:, :5] = -100
    res = model(input_ids=ids, labels=labels, use_cache=False)
    res.loss.backward()
    tensors = {"input_ids": ids, "labels": labels, "loss": res.loss.detach().float(),
               "logits": res.logits.detach().float()}
    for k, p in trainable.items():
        assert p.grad is not None and p.grad.abs().max() > 0, k
        tensors["grad." + k] = p.grad.detach()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(case_dir, "expected.safetensors"),
              metadata=meta())
    with open(os.path.join(case_dir, "case.json"), "w") as f:
        f.write(json.dumps({"base_model": BASE, "lora": LORA, "quantization": {
            "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": "float32"}, "linear4bit_modules": quantized,
            "trainable_parameters": model.get_nb_trainable_parameters()[0],
            "transformers_version": transformers.__version__, "peft_version": peft.__version__,
            "bitsandbytes_version": bnb.__version__}, indent=2, sort_keys=True) + "\n")
    print(f"{CASE}: loss {res.loss.item():.6f}, {len(quantized)} Linear4bit, {len(saved)} adapter tensors")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as stage:
        build(stage)
        os.chdir(ROOT)
        bad = 0
        names = sorted(os.listdir(os.path.join(stage, CASE))) + [f"base/{n}" for n in sorted(os.listdir(os.path.join(stage, BASE)))]
        for name in names:
            if name == "base":
                continue
            src, dst = os.path.join(stage, CASE, name), os.path.join(ROOT, CASE, name)
            if args.check:
                if not (os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False)):
                    print(f"differs: {CASE}/{name}", file=sys.stderr)
                    bad = 1
            else:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst)
                print(f"wrote {CASE}/{name}")
        sys.exit(bad)


if __name__ == "__main__":
    main()

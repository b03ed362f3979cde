#!/usr/bin/env python3
"""Developer-only: IA3 and embedding-LoRA goldens from peft, for tests/ia3_parity.rs.

Reuses scripts/reference/model_goldens.py's settings and helpers (CPU, float32,
deterministic algorithms, one thread, eager attention, fixed generator seeds), on bases that
script writes (tests/golden/model/*) and the bundled models/stories260k. Nothing is typed by
hand: rerun this script after changing a case.

Cases: tests/golden/peft_methods/<case>/

  stories260k_ia3       base models/stories260k, IA3Config() with peft's defaults for llama
                        (target k_proj, v_proj, down_proj; feedforward down_proj)
  qwen2_ia3_bias        base tests/golden/model/qwen2 (q/k/v biases), IA3Config() with peft's
                        defaults for qwen2 (target q_proj, v_proj, down_proj; feedforward
                        down_proj): the output scale multiplies the bias too
  stories260k_embed     base models/stories260k (tied head), LoraConfig r 4, lora_alpha 8,
                        target embed_tokens, q_proj, v_proj
  llama_untied_embed    base tests/golden/model/llama_gqa_untied, LoraConfig r 4, lora_alpha 16,
                        target embed_tokens, k_proj, down_proj
  stories260k_ia3_nf4   as stories260k_ia3 over a 4-bit base: from_pretrained with
                        BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute float32),
                        device_map "cpu" (peft's IA3 Linear4bit; bitsandbytes' bf16 packed CPU
                        kernel switched off as in qlora_goldens.py). peft has no merge for a 4-bit
                        IA3 layer, so this case holds no merged.* tensors.
  stories260k_dora_embed as stories260k_embed with use_dora: peft's DoraEmbeddingLayer on the
                        embedding (a magnitude per hidden feature, the norm over the vocabulary
                        of each column of embedding + scaling * (B A)^T, detached) and DoRA on
                        q_proj, v_proj; the magnitudes keep peft's init (the norms before the
                        LoRA weights are redrawn), so magnitude / norm is not 1.

get_peft_model with task_type CAUSAL_LM (LoRA: bias "none", lora_dropout 0.0,
init_lora_weights=False). Then, from a generator seeded with 5000 + case index, in
named_parameters order: every ia3_l is redrawn as 1 + 0.1 * randn (peft starts at ones, which
would make the vectors' effect invisible), every lora_A / lora_B / lora_embedding_A /
lora_embedding_B as 0.1 * randn. target_modules and feedforward_modules are stored as sorted
lists. model.save_pretrained writes adapter_config.json + adapter_model.safetensors (README.md
deleted); with embed_tokens targeted peft also saves the base embedding
(…embed_tokens.base_layer.weight, save_embedding_layers). With input_ids [2, 16] (generator
seed 6000 + case index) and labels = input_ids with labels[:, :5] = -100, the loss is
back-propagated, and expected.safetensors holds
  input_ids int64 [2, 16], labels int64 [2, 16], loss fp32 [], logits fp32 [2, 16, vocab],
  grad.<key> fp32 for every trainable key of adapter_model.safetensors,
  merged.<module>.weight (and merged.<module>.bias where the base has one) fp32: peft's
  merge_and_unload, for every target of layer 0 and for model.embed_tokens (dense bases).
case.json records the base and the adapter settings.

  PYTHONPATH=$HOME/.cache/recipe/ref-py:$HOME/.cache/recipe/torch-2.11.0 \\
      python3 -S scripts/reference/ia3_goldens.py [--check]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_goldens as mg  # noqa: E402  (re-executes with PYTHONHASHSEED=0 first)

import argparse  # noqa: E402
import filecmp  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402
from peft import IA3Config, LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

OUT = "tests/golden/peft_methods"  # relative to ROOT

# (case, base path relative to ROOT, "ia3" | "lora", config kwargs)
CASES = [
    ("stories260k_ia3", mg.STORIES, "ia3", dict()),
    ("qwen2_ia3_bias", mg.GOLDEN + "/model/qwen2", "ia3", dict()),
    ("stories260k_embed", mg.STORIES, "lora",
     dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj", "v_proj"])),
    ("llama_untied_embed", mg.GOLDEN + "/model/llama_gqa_untied", "lora",
     dict(r=4, lora_alpha=16, target_modules=["embed_tokens", "k_proj", "down_proj"])),
    ("stories260k_ia3_nf4", mg.STORIES, "ia3_nf4", dict()),
    ("stories260k_dora_embed", mg.STORIES, "lora",
     dict(r=4, lora_alpha=8, use_dora=True, target_modules=["embed_tokens", "q_proj", "v_proj"])),
]
QUANT = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
             bnb_4bit_compute_dtype=torch.float32)


def load_nf4(rel):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    m = AutoModelForCausalLM.from_pretrained(rel, quantization_config=BitsAndBytesConfig(**QUANT),
                                             dtype=torch.float32, device_map="cpu", attn_implementation="eager")
    n = 0
    for mod in m.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = False  # no bf16 packed kernel, on any CPU
            n += 1
    assert n == 7 * m.config.num_hidden_layers, n
    return m.eval()
T = 16
MASKED = 5


def merged_weights(model, targets):
    """peft's merge_and_unload: layer 0's targeted linears and the embedding."""
    merged = model.merge_and_unload()
    out = {}
    for name, mod in merged.named_modules():
        short = name.rsplit(".", 1)[-1]
        if (".layers.0." in name and short in targets) or (short == "embed_tokens" and short in targets):
            out[f"merged.{name}.weight"] = mod.weight.detach().float().clone()
            if getattr(mod, "bias", None) is not None:
                out[f"merged.{name}.bias"] = mod.bias.detach().float().clone()
    assert out, "nothing merged"
    return out


def case_goldens(out):
    for index, (case, base_rel, method, kw) in enumerate(CASES):
        case_dir = os.path.join(out, OUT, case)
        torch.manual_seed(0)
        base = load_nf4(base_rel) if method == "ia3_nf4" else mg.load_model(base_rel)
        if method.startswith("ia3"):
            cfg = IA3Config(task_type="CAUSAL_LM", **kw)
        else:
            cfg = LoraConfig(task_type="CAUSAL_LM", bias="none", lora_dropout=0.0, init_lora_weights=False, **kw)
        model = get_peft_model(base, cfg)
        pcfg = model.peft_config["default"]
        pcfg.target_modules = sorted(pcfg.target_modules)
        if method.startswith("ia3"):
            pcfg.feedforward_modules = sorted(pcfg.feedforward_modules)
        targets = list(pcfg.target_modules)
        g = mg.gen(5000 + index)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".ia3_l." in name:
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                elif any(f".{k}." in name for k in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")):
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
        model.eval()
        model.save_pretrained(case_dir, safe_serialization=True)
        readme = os.path.join(case_dir, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        saved = load_file(os.path.join(case_dir, "adapter_model.safetensors"))

        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        key_of = {}
        for key, t in saved.items():
            if key.endswith(".base_layer.weight"):
                continue  # peft's copy of a targeted embedding's base (save_embedding_layers)
            cands = [n for n, p in trainable.items() if mg.saved_name(n) == key and torch.equal(p.detach(), t)]
            assert len(cands) == 1, f"{case}: {key} matches {cands}"
            key_of[cands[0]] = key
        missing = sorted(set(trainable) - set(key_of))
        assert not missing, f"{case}: trainable parameters not in adapter file: {missing}"

        ids = torch.randint(0, model.config.vocab_size, (2, T), generator=mg.gen(6000 + index))
        labels = ids.clone()
        labels[:, :MASKED] = -100
        model.zero_grad(set_to_none=True)
        res = model(input_ids=ids, labels=labels, use_cache=False)
        res.loss.backward()
        tensors = {"input_ids": ids, "labels": labels, "loss": res.loss.detach().float(),
                   "logits": res.logits.detach().float()}
        for name, key in key_of.items():
            grad = trainable[name].grad
            assert grad is not None and grad.abs().max().item() > 0, f"{case}: no gradient for {name}"
            tensors["grad." + key] = grad
        counts = model.get_nb_trainable_parameters()
        if method != "ia3_nf4":
            tensors.update(merged_weights(model, targets))
        mg.save_tensors(tensors, os.path.join(case_dir, "expected.safetensors"))
        settings = {k: (sorted(v) if isinstance(v, list) else v) for k, v in kw.items()}
        if method.startswith("ia3"):
            settings.update(target_modules=targets, feedforward_modules=list(pcfg.feedforward_modules))
        mg.write_json({"base_model": base_rel, "method": method, "config": settings,
                       "ia3_weights": "1 + 0.1 randn" if method.startswith("ia3") else None,
                       "quantization": QUANT | {"bnb_4bit_compute_dtype": "float32"} if method == "ia3_nf4" else None,
                       "lora_weights_std": 0.1 if method == "lora" else None,
                       "trainable_params": counts[0], "all_params": counts[1],
                       "seq_len": T, "labels_masked_prefix": MASKED,
                       "transformers_version": mg.transformers.__version__,
                       "peft_version": mg.peft.__version__},
                      os.path.join(case_dir, "case.json"))
        print(f"{case}: loss {res.loss.item():.6f}, {len(saved)} adapter tensors, {len(key_of)} gradients, "
              f"trainable {counts[0]:,d} of {counts[1]:,d}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with tests/golden instead of writing")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    with tempfile.TemporaryDirectory() as stage:
        # The staged tree mirrors ROOT for relative base paths (models/ and tests/golden/model).
        os.symlink(os.path.join(mg.ROOT, "models"), os.path.join(stage, "models"))
        os.makedirs(os.path.join(stage, mg.GOLDEN))
        os.symlink(os.path.join(mg.ROOT, mg.GOLDEN, "model"), os.path.join(stage, mg.GOLDEN, "model"))
        cwd = os.getcwd()
        os.chdir(stage)
        try:
            case_goldens(stage)
        finally:
            os.chdir(cwd)
        bad = 0
        for dirpath, _, names in os.walk(os.path.join(stage, OUT)):
            for n in sorted(names):
                rel = os.path.relpath(os.path.join(dirpath, n), stage)
                src, dst = os.path.join(stage, rel), os.path.join(mg.ROOT, rel)
                if args.check:
                    if not (os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False)):
                        print(f"differs: {rel}", file=sys.stderr)
                        bad = 1
                else:
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copyfile(src, dst)
                    print(f"wrote {rel:70s} {os.path.getsize(src):>8,d} bytes")
        if args.check:
            sys.exit(bad)


if __name__ == "__main__":
    main()

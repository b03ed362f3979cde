#!/usr/bin/env python3
"""Developer-only: reference parameter counts from transformers and peft, written as
goldens for the Rust planner's tests.

What it does
  1. For every src/plan/models/*.json (a Hugging Face config.json; the file name is the
     hub id with "/" replaced by "--") and for the bundled models/stories260k/config.json,
     loads the config with AutoConfig and builds AutoModelForCausalLM.from_config on the
     meta device (no weights are allocated or downloaded). It records
       total        = sum(p.numel() for p in model.parameters())   (tied weights once)
       embed_tokens = numel of the input embedding weight
       lm_head      = numel of the output head weight, 0 when it is tied to embed_tokens
       per_layer    = numel of one decoder layer (every layer is checked to be the same)
       num_layers   = number of decoder layers
     and writes them to tests/golden/param_counts.json, keyed by hub id ("stories260k"
     for the bundled model).
  2. Wraps fresh meta-device models with peft's get_peft_model(model, LoraConfig(...))
     for a fixed list of cases (task_type CAUSAL_LM, lora_dropout 0.05, bias "none",
     lora_alpha = 2 * r; use_dora for the DoRA cases) and records what model.get_nb_trainable_parameters() reports
     as (trainable, all), plus the base model's total before peft. Written to
     tests/golden/peft_trainable.json (a list of cases; each carries peft_version). The
     embed_tokens cases use peft's LoRA on the embedding (lora_embedding_A / _B).
  3. The same for IA3: get_peft_model(model, IA3Config(task_type CAUSAL_LM, target_modules,
     feedforward_modules)), None meaning peft's default for the architecture (the config
     peft resolved is recorded), written to tests/golden/peft_ia3_trainable.json.

  3. Wraps fresh meta-device models with get_peft_model(model, PromptTuningConfig(
     task_type CAUSAL_LM, num_virtual_tokens N, prompt_tuning_init RANDOM)) for PROMPT_CASES,
     and with PrefixTuningConfig(task_type CAUSAL_LM, num_virtual_tokens N), without or with
     prefix_projection (and encoder_hidden_size, None for peft's default) for PREFIX_CASES, and records (trainable, all) as in 2, with the method, written to
     tests/golden/peft_prompt_trainable.json.
  All files are pretty-printed with sorted keys and end with a newline. Nothing is
  typed by hand: rerun this script after changing a model file.

How to run (from the repository root; versions pinned in scripts/reference/requirements.txt,
installed with `pip install --target DIR --no-deps ...` so torch is not fetched again):

  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \\
      python3 scripts/reference/param_counts.py

Options: --check compares with the files on disk instead of writing them (exit 1 on a
difference).
"""
import argparse
import glob
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS_DIR = os.path.join(ROOT, "src", "plan", "models")
STORIES = os.path.join(ROOT, "models", "stories260k", "config.json")
GOLDEN_DIR = os.path.join(ROOT, "tests", "golden")

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_LINEAR = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]

# (model key, r, target_modules, modules_to_save, use_dora)
PEFT_CASES = [
    ("meta-llama/Llama-2-13b-hf", 32, ALL_LINEAR, None, False),
    ("meta-llama/Meta-Llama-3-8B", 16, ["q_proj", "v_proj"], None, False),
    ("mistralai/Mistral-7B-v0.1", 64, ALL_LINEAR, ["lm_head"], False),
    ("stories260k", 8, ALL_LINEAR, None, False),
    ("Qwen/Qwen2.5-0.5B", 16, ALL_LINEAR, ["embed_tokens", "lm_head"], False),
    # The QLoRA paper's 65B setting: r=64 on every linear layer.
    ("huggyllama/llama-65b", 64, ALL_LINEAR, None, False),
    # Qwen3: the q/k norms stay frozen; head_dim 128 != hidden/heads = 64.
    ("Qwen/Qwen3-0.6B", 16, ALL_LINEAR, None, False),
    # DoRA: one magnitude per output row of every adapted linear, on top of LoRA's pairs.
    ("meta-llama/Meta-Llama-3-8B", 16, ALL_LINEAR, None, True),
    ("stories260k", 8, ["q_proj", "v_proj", "lm_head"], None, True),
    # LoRA on the input embedding: r * (vocab + hidden) more (peft's lora.Embedding).
    ("stories260k", 8, ["embed_tokens", "q_proj", "v_proj"], None, False),
    ("meta-llama/Meta-Llama-3-8B", 16, ["embed_tokens", "q_proj", "v_proj"], None, False),
    ("Qwen/Qwen2.5-0.5B", 16, ["embed_tokens", "lm_head"] + ALL_LINEAR, None, False),
    # DoRA on the embedding: one magnitude per hidden feature on top of its LoRA pair (peft's
    # DoraEmbeddingLayer).
    ("stories260k", 8, ["embed_tokens", "q_proj", "v_proj"], None, True),
    ("meta-llama/Meta-Llama-3-8B", 16, ["embed_tokens", "q_proj", "v_proj"], None, True),
    # Gemma 2 / Gemma 3 text: the sandwich norms and (Gemma 3) q/k norms stay frozen.
    ("google/gemma-2-2b", 16, ALL_LINEAR, None, False),
    ("google/gemma-3-1b-it", 16, ALL_LINEAR, None, False),
    # Phi-3/4: LoRA on the fused qkv_proj / gate_up_proj (one pair over the whole fused output).
    ("microsoft/Phi-3-mini-4k-instruct", 16, PHI3_LINEAR, None, False),
    ("microsoft/phi-4", 16, ["qkv_proj", "o_proj"], None, False),
    # OLMo 2: the q/k norms (over all heads) and post-norms stay frozen.
    ("allenai/OLMo-2-1124-7B", 16, ALL_LINEAR, None, False),
    # Mixtures of experts: in transformers 5 the router and experts are not nn.Linear, so LoRA's
    # linear targets are the attention projections (what peft's all-linear reaches).
    ("mistralai/Mixtral-8x7B-v0.1", 32, ["q_proj", "k_proj", "v_proj", "o_proj"], None, False),
    ("Qwen/Qwen3-30B-A3B", 16, ["q_proj", "k_proj", "v_proj", "o_proj"], None, False),
]

# (model key, target_modules, feedforward_modules); None: peft's default for the model type.
IA3_CASES = [
    ("stories260k", None, None),
    ("meta-llama/Meta-Llama-3-8B", None, None),
    ("mistralai/Mistral-7B-v0.1", None, None),
    ("Qwen/Qwen2.5-0.5B", None, None),
    ("Qwen/Qwen3-0.6B", None, None),
    ("meta-llama/Llama-2-13b-hf", ALL_LINEAR, ["gate_proj", "up_proj", "down_proj"]),
    ("stories260k", ["q_proj", "o_proj", "up_proj"], ["up_proj"]),
    ("google/gemma-2-9b", None, None),
    # No IA3 default exists for phi3 / olmo2 in peft: named targets only.
    ("microsoft/Phi-3-mini-4k-instruct", ["qkv_proj", "down_proj"], ["down_proj"]),
    ("allenai/OLMo-2-1124-7B", ["k_proj", "v_proj", "down_proj"], ["down_proj"]),
]

# (model key, num_virtual_tokens, encoder_hidden_size): prefix tuning (grouped-query heads: peft sizes
# the prefix by the key/value heads); encoder_hidden_size False: no projection, None: projection with
# peft's default size (the key/value width), a number: projection through an MLP that wide.
PREFIX_CASES = [
    ("stories260k", 6, False),
    ("meta-llama/Meta-Llama-3-8B", 20, False),
    ("Qwen/Qwen3-0.6B", 10, False),
    ("stories260k", 6, None),
    ("meta-llama/Meta-Llama-3-8B", 20, 512),
    ("Qwen/Qwen3-0.6B", 10, None),
]
# (model key, num_virtual_tokens): prompt tuning (the init does not change the counts).
PROMPT_CASES = [
    ("stories260k", 7),
    ("meta-llama/Meta-Llama-3-8B", 20),
    ("Qwen/Qwen2.5-0.5B", 8),
]


def config_sources():
    """(key, path) for every model file, sorted by key."""
    out = []
    for path in sorted(glob.glob(os.path.join(MODELS_DIR, "*.json"))):
        hub_id = os.path.basename(path)[: -len(".json")].replace("--", "/")
        out.append((hub_id, path))
    out.append(("stories260k", STORIES))
    return out


def load_config(path):
    """AutoConfig.from_pretrained on a directory holding only this config.json."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(path, os.path.join(tmp, "config.json"))
        return AutoConfig.from_pretrained(tmp)


def build_meta(path):
    cfg = load_config(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return model


def total_params(model):
    return sum(p.numel() for p in model.parameters())


def decoder_layers(model):
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return base.layers


def count_model(path):
    model = build_meta(path)
    total = total_params(model)
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is emb
    layers = decoder_layers(model)
    per = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    if len(set(per)) != 1:
        raise SystemExit(f"{path}: decoder layers differ in size: {sorted(set(per))}")
    return {
        "total": total,
        "embed_tokens": emb.numel(),
        "lm_head": 0 if (tied or out is None) else out.weight.numel(),
        "per_layer": per[0],
        "num_layers": len(per),
        "transformers_version": transformers.__version__,
    }


def peft_case(path, key, r, targets, modules_to_save, use_dora):
    model = build_meta(path)
    base_total = total_params(model)
    cfg = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.05,
        bias="none",
        target_modules=list(targets),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        use_dora=use_dora,
    )
    with torch.device("meta"):
        pm = get_peft_model(model, cfg)
    trainable, all_params = pm.get_nb_trainable_parameters()
    return {
        "model": key,
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.05,
        "bias": "none",
        "target_modules": list(targets),
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "use_dora": use_dora,
        "trainable": int(trainable),
        "all": int(all_params),
        "base_total": base_total,
        "peft_version": peft.__version__,
        "transformers_version": transformers.__version__,
    }


def prompt_case(path, key, n, method="prompt_tuning", encoder_hidden_size=False):
    model = build_meta(path)
    base_total = total_params(model)
    projection = {}
    if method == "prompt_tuning":
        cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, prompt_tuning_init="RANDOM")
    elif encoder_hidden_size is False:
        cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n)
    else:
        cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, prefix_projection=True,
                                 encoder_hidden_size=encoder_hidden_size)
        projection = {"prefix_projection": True, "encoder_hidden_size": encoder_hidden_size}
    with torch.device("meta"):
        pm = get_peft_model(model, cfg)
    trainable, all_params = pm.get_nb_trainable_parameters()
    return projection | {
        "model": key,
        "method": method,
        "num_virtual_tokens": n,
        "trainable": int(trainable),
        "all": int(all_params),
        "base_total": base_total,
        "peft_version": peft.__version__,
        "transformers_version": transformers.__version__,
    }


def ia3_case(path, key, targets, feedforward):
    model = build_meta(path)
    cfg = IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward)
    with torch.device("meta"):
        pm = get_peft_model(model, cfg)
    resolved = pm.peft_config["default"]
    trainable, all_params = pm.get_nb_trainable_parameters()
    return {
        "model": key,
        "target_modules": sorted(targets) if targets else None,
        "feedforward_modules": sorted(feedforward) if feedforward else None,
        "resolved_target_modules": sorted(resolved.target_modules),
        "resolved_feedforward_modules": sorted(resolved.feedforward_modules),
        "trainable": int(trainable),
        "all": int(all_params),
        "peft_version": peft.__version__,
        "transformers_version": transformers.__version__,
    }


def dump(obj):
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with tests/golden instead of writing")
    args = ap.parse_args()

    sources = dict(config_sources())
    counts = {}
    for key, path in config_sources():
        counts[key] = count_model(path)
        c = counts[key]
        print(f"{key:32s} total={c['total']:>15,d}  embed={c['embed_tokens']:>13,d}  "
              f"lm_head={c['lm_head']:>13,d}  per_layer={c['per_layer']:>12,d} x {c['num_layers']}")

    cases = []
    for key, r, targets, mts, dora in PEFT_CASES:
        case = peft_case(sources[key], key, r, targets, mts, dora)
        cases.append(case)
        print(f"peft {key:28s} r={r:<3d} trainable={case['trainable']:>15,d}  all={case['all']:>15,d}  "
              f"base_total={case['base_total']:>15,d}  modules_to_save={mts}  use_dora={dora}")

    prompt_cases = []
    for key, n in PROMPT_CASES:
        case = prompt_case(sources[key], key, n)
        prompt_cases.append(case)
        print(f"peft prompt tuning {key:28s} virtual tokens={n:<3d} trainable={case['trainable']:>15,d}  "
              f"all={case['all']:>15,d}")
    for key, n, hidden in PREFIX_CASES:
        case = prompt_case(sources[key], key, n, "prefix_tuning", hidden)
        prompt_cases.append(case)
        print(f"peft prefix tuning {key:28s} virtual tokens={n:<3d} trainable={case['trainable']:>15,d}  "
              f"all={case['all']:>15,d}  projection={hidden is not False} encoder_hidden_size={hidden}")
    ia3_cases = []
    for key, targets, feedforward in IA3_CASES:
        case = ia3_case(sources[key], key, targets, feedforward)
        ia3_cases.append(case)
        print(f"peft IA3 {key:24s} trainable={case['trainable']:>12,d}  all={case['all']:>15,d}  "
              f"targets={case['resolved_target_modules']}  feedforward={case['resolved_feedforward_modules']}")

    outputs = {
        os.path.join(GOLDEN_DIR, "param_counts.json"): dump(counts),
        os.path.join(GOLDEN_DIR, "peft_trainable.json"): dump(cases),
        os.path.join(GOLDEN_DIR, "peft_prompt_trainable.json"): dump(prompt_cases),
        os.path.join(GOLDEN_DIR, "peft_ia3_trainable.json"): dump(ia3_cases),
    }
    print(f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}")
    if args.check:
        bad = 0
        for path, text in outputs.items():
            try:
                with open(path) as f:
                    same = f.read() == text
            except FileNotFoundError:
                same = False
            if not same:
                print(f"differs: {os.path.relpath(path, ROOT)}", file=sys.stderr)
                bad = 1
        sys.exit(bad)
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    for path, text in outputs.items():
        with open(path, "w") as f:
            f.write(text)
        print(f"wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()

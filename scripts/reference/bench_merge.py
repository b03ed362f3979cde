#!/usr/bin/env python3
"""Benchmark (not a test), run by scripts/bench-merge.sh: `recipe merge`'s peak host memory on a
1.1B-parameter Llama in bfloat16, and its merged weights against peft's.

1. Makes (once, in --work) a random Llama with TinyLlama-1.1B's shape, stored in bfloat16 with the
   Llama 2 tokenizer of the bundled assets, and a peft LoRA adapter (r 16, alpha 32, every linear
   layer) with random A and B (init_lora_weights=False), saved by peft.
2. Runs `recipe merge ADAPTER --output MERGED` under /usr/bin/time and reads its maximum RSS.
3. Loads base + adapter with peft, merge_and_unload() (in bfloat16, as a user of Axolotl's
   legacy merge would), and compares every tensor with recipe's merged file: how many are
   bit-identical, and the largest difference in bfloat16 units in the last place.
Prints and writes (--out) peak RSS, the model's bf16 size and their ratio.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(os.path.dirname(ROOT), "shared", "assets", "tokenizers", "llama2", "tokenizer.json")
CONFIG = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
    num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make(work):
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model

    base, adapter = os.path.join(work, "base"), os.path.join(work, "adapter")
    if os.path.isfile(os.path.join(adapter, "adapter_model.safetensors")):
        return base, adapter
    torch.manual_seed(0)
    config = LlamaConfig(**CONFIG, torch_dtype="bfloat16")
    with torch.device("cpu"):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(config)
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(base, safe_serialization=True, max_shard_size="20GB")
    shutil.copy(TOKENIZER, os.path.join(base, "tokenizer.json"))
    with open(os.path.join(base, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 2048}, f)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(adapter)
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = os.path.abspath(base)
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return base, adapter


def compare(base, adapter, merged):
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
    from safetensors import safe_open

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    reference = PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()
    same, worst, names = 0, 0, 0
    with safe_open(os.path.join(merged, "model.safetensors"), "pt") as f:
        for name in f.keys():
            ours, theirs = f.get_tensor(name), reference[name]
            assert ours.dtype == theirs.dtype == torch.bfloat16, (name, ours.dtype, theirs.dtype)
            names += 1
            if torch.equal(ours, theirs):
                same += 1
                continue
            # units in the last place: bf16 bit patterns of same-signed values are ordered
            a, b = ours.view(torch.int16).to(torch.int32), theirs.view(torch.int16).to(torch.int32)
            worst = max(worst, int((a - b).abs().max()))
    return {"tensors": names, "bit_identical": same, "max_ulp": worst}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe-bin", required=True)
    ap.add_argument("--work", default="/tmp/bench-merge")
    ap.add_argument("--out", default="/tmp/bench-merge.json")
    args = ap.parse_args()
    base, adapter = make(args.work)
    size = os.path.getsize(os.path.join(base, "model.safetensors"))
    merged = os.path.join(args.work, "merged")
    shutil.rmtree(merged, ignore_errors=True)
    start = time.time()
    run = subprocess.run(
        ["/usr/bin/time", "-v", args.recipe_bin, "merge", adapter, "--output", merged],
        capture_output=True, text=True,
    )
    seconds = time.time() - start
    if run.returncode != 0:
        sys.exit(f"recipe merge failed:\n{run.stdout}\n{run.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1)) * 1024
    result = {
        "model_bf16_bytes": size,
        "merge_peak_rss_bytes": rss,
        "rss_over_bf16_size": round(rss / size, 3),
        "merge_seconds": round(seconds, 1),
        "merged_dtype": json.load(open(os.path.join(merged, "config.json"))).get("dtype"),
        "against_peft_merge_and_unload": compare(base, adapter, merged),
    }
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmark (developer-only, not a test): DPO with LoRA, `recipe run` against TRL 1.16's DPOTrainer
(with peft) on the same CPU, model and pairs.

Entry point: scripts/bench-dpo.sh (builds recipe, sets PYTHONPATH, runs this file).

Both sides: models/stories260k, LoRA r 8 / alpha 16 / dropout 0 on every linear, the pairs of
data/preference/shakespeare-continuations.jsonl (strings; TRL tokenizes prompt + answer itself),
beta 0.1 (sigmoid DPO, reference = adapters off), micro batch 8, AdamW lr 5e-4, cosine with 5 warmup
steps, fp32, --steps optimizer steps, no evaluation or saving during training.

Measured:
  tokens/s   real tokens (prompt + answer of both sequences of every pair) over the training loop:
             recipe's summary figure; TRL's token count (`num_tokens`, the attention masks' sum)
             over `train_runtime`.
  peak RSS   ru_maxrss of each process (os.wait4).
  losses     first and last training loss.

Usage: python3 -S scripts/reference/bench_dpo.py --recipe-bin PATH [--steps 60] [--out /tmp/bench-dpo.json]
Worker mode (internal): --reference-worker SPEC.json
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train as bt  # noqa: E402  (child runner, quiet-machine wait)

PAIRS = os.path.join(bt.REPO, "data/preference/shakespeare-continuations.jsonl")
MICRO = 8
LR = 5e-4
WARMUP = 5
BETA = 0.1

RECIPE = """recipe_version: 1
base_model: {model}
adapter: lora
lora_r: 8
lora_alpha: 16
lora_dropout: 0.0
lora_target_linear: true
rl: dpo
dpo_beta: {beta}
datasets:
  - path: {pairs}
    type: chat_template.default
    field_messages: prompt
val_set_size: 0
sequence_len: 512
micro_batch_size: {micro}
max_steps: {steps}
learning_rate: {lr}
lr_scheduler: cosine
warmup_steps: {warmup}
logging_steps: 1
seed: 42
output_dir: {out}
"""


def reference_worker(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(42)
    with open(PAIRS, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    tokenizer = AutoTokenizer.from_pretrained(bt.TINY)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(bt.TINY, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=bt.TARGETS, task_type="CAUSAL_LM")
    args = DPOConfig(output_dir=spec["work"], beta=BETA, per_device_train_batch_size=MICRO, max_steps=spec["steps"],
                     learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP, logging_steps=1,
                     save_strategy="no", report_to=[], use_cpu=True, seed=42, max_length=512,
                     dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora)
    out = trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    tokens = trainer._total_train_tokens
    seconds = out.metrics["train_runtime"]
    with open(spec["result"], "w") as f:
        json.dump({"tokens": tokens, "train_seconds": seconds, "tokens_per_second": tokens / seconds,
                   "losses": losses, "torch_threads": torch.get_num_threads()}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe-bin")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="/tmp/bench-dpo.json")
    ap.add_argument("--reference-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_worker:
        return reference_worker(args.reference_worker)
    work = tempfile.mkdtemp(prefix="bench-dpo-")
    out_dir = os.path.join(work, "recipe-out")
    path = os.path.join(work, "dpo.yaml")
    with open(path, "w") as f:
        f.write(RECIPE.format(model=bt.TINY, beta=BETA, pairs=PAIRS, micro=MICRO, steps=args.steps, lr=LR,
                              warmup=WARMUP, out=out_dir))
    print("recipe DPO", file=sys.stderr, flush=True)
    stdout, stderr = os.path.join(work, "recipe.out"), os.path.join(work, "recipe.err")
    ours = bt.run_child([args.recipe_bin, "run", path, "--device", "cpu", "--no-progress"], stdout, stderr)
    if ours["exit_code"] != 0:
        raise SystemExit(f"recipe run failed:\n{bt.tail(stdout)}{bt.tail(stderr)}")
    with open(stdout) as f:
        ours["tokens_per_second"] = float(bt.STEPS_LINE.search(f.read()).group(3))
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        ours["losses"] = [json.loads(line)["loss"] for line in f if '"loss"' in line]
    print("TRL DPOTrainer", file=sys.stderr, flush=True)
    spec, result = os.path.join(work, "trl.spec.json"), os.path.join(work, "trl.json")
    with open(spec, "w") as f:
        json.dump({"steps": args.steps, "result": result, "work": os.path.join(work, "trl")}, f)
    stdout, stderr = os.path.join(work, "trl.out"), os.path.join(work, "trl.err")
    theirs = bt.run_child([sys.executable, "-S", os.path.abspath(__file__), "--reference-worker", spec], stdout, stderr,
                          env=os.environ.copy())
    if theirs["exit_code"] != 0:
        raise SystemExit(f"TRL failed:\n{bt.tail(stdout)}{bt.tail(stderr)}")
    with open(result) as f:
        theirs.update(json.load(f))
    ratio = ours["tokens_per_second"] / theirs["tokens_per_second"]
    rss = ours["max_rss_bytes"] / theirs["max_rss_bytes"]
    print(f"\nrecipe {ours['tokens_per_second']:.0f} tok/s, TRL {theirs['tokens_per_second']:.0f} tok/s: ratio {ratio:.2f}")
    print(f"peak RSS recipe {bt.mib(ours['max_rss_bytes']):.0f} MiB, TRL {bt.mib(theirs['max_rss_bytes']):.0f} MiB: "
          f"ratio {rss:.2f}")
    print(f"loss first/last: recipe {ours['losses'][0]:.4f}/{ours['losses'][-1]:.4f}, "
          f"TRL {theirs['losses'][0]:.4f}/{theirs['losses'][-1]:.4f}")
    with open(args.out, "w") as f:
        json.dump({"steps": args.steps, "recipe": ours, "trl": theirs, "tokens_per_second_ratio": ratio,
                   "peak_rss_ratio": rss}, f, indent=2)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

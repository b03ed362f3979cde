#!/usr/bin/env python3
"""GPU check (developer-only, not a test; runs on the device machine): the CUDA paths of the
executor, with figures for the executor and quantization issues.

Entry point: scripts/device/gpu-check.sh (points the binary at the device's libtorch).

1. llama-1b: a random-initialised 1.1B Llama (TinyLlama's shape: hidden 2048, intermediate 5632,
   22 layers, 32 heads, 4 kv heads, vocab 32000), LoRA r 16 on every linear, bf16 (autocast's
   policy), SDPA, sequence 2048, micro batch 4, 10 steps, on data/shakespeare cut into 2048-token
   chunks. `recipe run --random-weights` beside transformers + peft (a plain loop under
   torch.autocast(bf16), the same shapes and tokens): tokens/s of both and their ratio, peak
   device memory of both, and recipe's peak against its plan's estimate.
2. llama2-13b: the Llama-2-13B shape (40 layers, hidden 5120, intermediate 13824), QLoRA as
   recipes/llama2-13b-qlora.yaml says (NF4 + double quant, r 32 on every linear, gradient
   checkpointing, sequence 2048, micro batch 1, paged_adamw_8bit), weights generated and
   quantized layer by layer on the device, 6 steps: peak device memory (must be under 24 GB and
   within 10% of the plan's estimate) and tokens/s.

recipe's peak is the device's memory in use at its highest sample (context, cuBLAS workspace
and the caching allocator's pool included, as nvidia-smi counts); the reference's is
torch.cuda.max_memory_reserved() plus the context (measured once as device use minus reserved).

3. nccl-1: the llama-1b run again as `recipe run --nproc-per-node 1`: one rank in a c10d process
   group, NCCL on the GPU (one GPU cannot host two NCCL ranks), gradients all-reduced every step:
   its backend (from the layout line), tokens/s and peak memory beside the single-process run.

Every recipe run also reports its device-to-host reads per optimizer step (`host syncs` of the
run summary: 0 expected outside logging steps), the attention kernel packed rows went through
(`attention  packed rows: flash attention per sample (varlen)` on an sm80+ GPU in bf16), and what its
plan says it computes: the loss path (head + cross-entropy in chunks, or whole logits) and the
kernel its attention expects.

4. flash-varlen (with --test-bin, the library's unit test binary): per-sample flash attention
   against the block-diagonal masked SDPA on packed GQA rows, outputs and gradients (bf16).

--tiny runs the same plumbing on CPU with toy shapes (to check the script off the device); there
the process group is Gloo.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT = os.path.join(ROOT, "data/shakespeare/tinyshakespeare-excerpt.txt")
TOKENIZER = os.path.join(ROOT, "models/stories260k")

SHAPES = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096),
}
TINY = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=4, vocab_size=512, max_position_embeddings=2048)


def model_folder(work, name, shape):
    folder = os.path.join(work, name)
    os.makedirs(folder, exist_ok=True)
    config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rms_norm_eps=1e-5,
                  rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                  torch_dtype="bfloat16", **shape)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(TOKENIZER, name), "rb") as src, open(os.path.join(folder, name), "wb") as dst:
            dst.write(src.read())
    return folder


def run_recipe(args, recipe_text, work, name, extra=()):
    path = os.path.join(work, name + ".yaml")
    with open(path, "w") as f:
        f.write(recipe_text)
    device = "cpu" if args.tiny else "cuda"
    cmd = [args.recipe_bin, "run", path, "--device", device, "--no-progress", "--random-weights", *extra]
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, RECIPE_LOG="warn", NO_COLOR="1"))
    wall = time.perf_counter() - start
    print(p.stdout, p.stderr, sep="\n", flush=True)
    if p.returncode != 0:
        return dict(error=f"exit {p.returncode}", stderr=p.stderr[-2000:])
    out = dict(wall_s=round(wall, 1))
    m = re.search(r"layout\s+\S+ across (\d+) rank\(s\) \((\w+)\); all-reduced ([\d.]+ \w+)", p.stdout)
    if m:
        out.update(world_size=int(m.group(1)), backend=m.group(2), all_reduced_per_step=m.group(3))
    m = re.search(r"steps\s+(\d+) of (\d+) \((\d+) tokens/s\)", p.stdout)
    if m:
        out.update(steps=int(m.group(1)), tokens_per_s=int(m.group(3)))
    m = re.search(r"memory\s+training peak ([\d.]+ \w+) (on the GPU|in use).*estimate ([\d.]+ \w+) \(([+-][\d.]+)%\)",
                  p.stdout)
    if m:
        out.update(peak=m.group(1), plan_estimate=m.group(3), plan_vs_peak_percent=float(m.group(4)))
    m = re.search(r"memory\s+training peak ([\d.]+) (GiB|MiB|KiB)", p.stdout)
    if m:
        scale = {"GiB": 2**30, "MiB": 2**20, "KiB": 2**10}[m.group(2)]
        out["peak_bytes"] = int(float(m.group(1)) * scale)
    # Device-to-host reads per optimizer step (src/exec/host_sync.rs): 0 expected outside logging.
    m = re.search(r"host syncs (\d+) per non-logging step(?:, (\d+) per logging step)?", p.stdout)
    if m:
        out["host_syncs_per_non_logging_step"] = int(m.group(1))
        if m.group(2) is not None:
            out["host_syncs_per_logging_step"] = int(m.group(2))
    # The attention kernel packed rows went through (flash varlen where the GPU takes it).
    m = re.search(r"^attention\s+packed rows: (.*)$", p.stdout, re.M)
    if m:
        out["packed_attention_ran"] = m.group(1)
    # What the plan says the run computes: the loss path (chunked head + cross-entropy) and the
    # SDPA kernel attention can take (packed rows with grouped heads: memory-efficient, heads expanded).
    plan = subprocess.run([args.recipe_bin, "plan", path], capture_output=True, text=True,
                          env=dict(os.environ, RECIPE_LOG="warn", NO_COLOR="1"))
    for key in ("loss", "attention"):
        m = re.search(rf"^{key}\s+(.*)$", plan.stdout, re.M)
        if m:
            out[f"plan_{key}"] = m.group(1)
    return out


def reference(args, folder, seq, micro, steps, r):
    """transformers + peft, a plain loop under autocast(bf16): tokens/s and peak memory."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    device = "cpu" if args.tiny else "cuda"
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(folder)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear"))
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    ids = [1] + tok.encode(open(TEXT).read(), add_special_tokens=False).ids + [2]
    chunks = [ids[i:i + seq] for i in range(0, len(ids) - seq + 1, seq)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tokens, start = 0, None
    for step in range(steps + 1):  # step 0 warms up (kernels, allocator) and is not timed
        if step == 1:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = torch.tensor([chunks[(step * micro + j) % len(chunks)] for j in range(micro)], device=device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 1:
            tokens += batch.numel()
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - start
    out = dict(tokens_per_s=int(tokens / secs), final_loss=float(loss))
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        context = (total - free) - torch.cuda.memory_reserved()
        out.update(peak_reserved_bytes=torch.cuda.max_memory_reserved(),
                   peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                   peak_bytes=torch.cuda.max_memory_reserved() + max(context, 0))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe-bin", required=True)
    ap.add_argument("--out", default="/tmp/gpu-check")
    ap.add_argument("--tiny", action="store_true", help="toy shapes on CPU, to check the script")
    ap.add_argument("--only", default="llama-1b,nccl-1,llama2-13b")
    ap.add_argument("--test-bin", help="the library's unit test binary (cargo test --lib --no-run), for flash varlen")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    results = {}
    if "llama-1b" in args.only:
        folder = model_folder(work, "llama-1b", TINY if args.tiny else SHAPES["llama-1b"])
        seq, micro, steps = (256, 2, 3) if args.tiny else (2048, 4, 10)
        text = (f"base_model: {folder}\nadapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_target_linear: true\n"
                f"datasets:\n  - path: {TEXT}\n    type: completion\n    ds_type: text\nval_set_size: 0\n"
                f"sequence_len: {seq}\nsample_packing: true\nmicro_batch_size: {micro}\nmax_steps: {steps}\n"
                f"learning_rate: 2.0e-4\nbf16: auto\nlogging_steps: 5\noutput_dir: {work}/out-1b\n")
        ours = run_recipe(args, text, work, "llama-1b")
        theirs = reference(args, folder, seq, micro, steps, 16)
        ratio = ours.get("tokens_per_s", 0) / max(theirs["tokens_per_s"], 1)
        results["llama-1b"] = dict(recipe=ours, reference=theirs, tokens_per_s_ratio=round(ratio, 3))
        if "nccl-1" in args.only:
            group = run_recipe(args, text.replace("/out-1b", "/out-1b-nccl"), work, "llama-1b-nccl",
                               extra=("--nproc-per-node", "1"))
            single = ours.get("tokens_per_s", 0)
            results["nccl-1"] = dict(
                recipe=group,
                tokens_per_s_vs_single_process=round(group.get("tokens_per_s", 0) / max(single, 1), 3),
                peak_bytes_vs_single_process=round(group.get("peak_bytes", 0) / max(ours.get("peak_bytes", 0), 1), 3),
            )
    if "llama2-13b" in args.only:
        folder = model_folder(work, "llama2-13b", TINY if args.tiny else SHAPES["llama2-13b"])
        seq, steps = (256, 2) if args.tiny else (2048, 6)
        text = (f"extends: {ROOT}/recipes/llama2-13b-qlora.yaml\nbase_model: {folder}\ntokenizer_type: null\n"
                f"datasets:\n  - path: {TEXT}\n    type: completion\n    ds_type: text\nval_set_size: 0\n"
                f"sequence_len: {seq}\nmax_steps: {steps}\nnum_epochs: null\nearly_stopping_patience: null\n"
                f"evals_per_epoch: null\nsaves_per_epoch: null\nlogging_steps: 2\noutput_dir: {work}/out-13b\n")
        ours = run_recipe(args, text, work, "llama2-13b")
        peak = ours.get("peak_bytes", 0)
        ours["under_24GB"] = bool(peak) and peak < 24e9
        ours["within_10_percent"] = "plan_vs_peak_percent" in ours and abs(ours["plan_vs_peak_percent"]) <= 10.0
        results["llama2-13b-qlora"] = ours
    if args.test_bin:
        # The library's unit test binary: flash varlen against the masked path (values and
        # gradients, bf16, packed GQA rows); it prints "skipped" where the GPU cannot run it.
        t = subprocess.run([args.test_bin, "flash_varlen_equals_the_masked_path_on_cuda", "--nocapture"],
                           capture_output=True, text=True)
        print(t.stdout, t.stderr, sep="\n", flush=True)
        m = re.search(r"flash varlen vs masked SDPA \(bf16\): output (\S+), gradients (\S+)", t.stderr)
        results["flash-varlen"] = dict(
            passed=t.returncode == 0 and "1 passed" in t.stdout,
            skipped="skipped:" in t.stderr,
            output_max_abs_diff=float(m.group(1)) if m else None,
            gradient_max_abs_diff=float(m.group(2)) if m else None,
        )
    with open(os.path.join(args.out, "gpu-check.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())

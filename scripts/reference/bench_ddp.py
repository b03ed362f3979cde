#!/usr/bin/env python3
"""Benchmark (developer-only, not a test): data-parallel training on CPU ranks, recipe against
torch DDP. `recipe run --nproc-per-node N` (c10d Gloo, bucketed gradient all-reduce) beside
`torchrun --nproc-per-node N` running transformers + peft under
torch.nn.parallel.DistributedDataParallel (backend gloo), on the same model, data and machine.

Entry point: scripts/bench-ddp.sh (builds recipe, sets PYTHONPATH, runs this file).

Both sides train what scripts/reference/bench_train.py trains (LoRA r 8 on every linear, data
cut into 512-token chunks, AdamW lr 5e-4, cosine with 10 warmup steps, clipping at 1.0, fp32),
with micro batch 4 per rank and N ranks (global batch 4 N). Each rank uses cores / N threads
(recipe sets it itself; the reference sets torch.set_num_threads the same way, as torchrun's
OMP_NUM_THREADS would).

Measured:
  tokens/s   real tokens of the global batches over the training loop (recipe: its summary's
             figure; reference: rank 0's perf_counter around the loop, tokens of all ranks).
  peak RSS   ru_maxrss of the launcher's process tree from os.wait4: the largest process, i.e.
             the largest rank (the launchers themselves are small).
  losses     first and last global training loss (recipe: metrics.jsonl; reference: rank 0's
             loss all-reduced over the ranks).

Usage: python3 -S scripts/reference/bench_ddp.py --recipe-bin PATH [--ranks 2] [--steps 30]
       [--models stories260k,llama-23m] [--out /tmp/bench-ddp.json] [--keep DIR]
Worker mode (internal, under torchrun): --reference-worker SPEC.json
"""
import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train as bt  # noqa: E402  (shared constants, child runner, data and model helpers)

MICRO_PER_RANK = 4


def reference_worker(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    model_dir, steps = spec["model_dir"], spec["steps"]
    torch.manual_seed(bt.SEED)
    chunks = bt.chunks_of_data(os.path.join(model_dir, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(r=bt.LORA_R, lora_alpha=bt.LORA_ALPHA, lora_dropout=0.0, target_modules=bt.TARGETS,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    params = [p for p in ddp.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=bt.LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, bt.WARMUP, steps)

    # Global batches as recipe forms them (a shuffle per epoch cut into micro x world slices);
    # rank r takes its slice r of each.
    n, global_batch = len(chunks), MICRO_PER_RANK * world
    per_epoch = math.ceil(n / global_batch)
    batches = []
    for step in range(steps):
        epoch = step // per_epoch
        order = torch.randperm(n, generator=torch.Generator().manual_seed(bt.SEED + epoch)).tolist()
        pick = order[(step % per_epoch) * global_batch : (step % per_epoch + 1) * global_batch]
        all_tokens = sum(len(chunks[i]) for i in pick)
        mine = pick[rank * MICRO_PER_RANK : (rank + 1) * MICRO_PER_RANK] or pick[:1]
        ids = torch.zeros(len(mine), bt.SEQ_LEN, dtype=torch.long)
        labels = torch.full((len(mine), bt.SEQ_LEN), -100, dtype=torch.long)
        for row, i in enumerate(mine):
            c = torch.tensor(chunks[i], dtype=torch.long)
            ids[row, : len(c)] = c
            labels[row, : len(c)] = c
        batches.append((ids, labels, all_tokens))

    losses, tokens = [], 0
    dist.barrier()
    t0 = time.perf_counter()
    for ids, labels, all_tokens in batches:
        out = ddp(input_ids=ids, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = out.loss.detach().clone()
        dist.all_reduce(loss)
        losses.append(loss.item() / world)
        tokens += all_tokens
    train_seconds = time.perf_counter() - t0
    if rank == 0:
        with open(spec["result"], "w") as f:
            json.dump({"steps": steps, "tokens": tokens, "train_seconds": train_seconds,
                       "tokens_per_second": tokens / train_seconds, "losses": losses, "world_size": world,
                       "threads_per_rank": torch.get_num_threads(),
                       "rank0_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}, f)
    # Both ranks leave together; destroy_process_group was seen to leave one rank waiting here.
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


def run_recipe(recipe_bin, name, model_dir, steps, ranks, work):
    out_dir = os.path.join(work, f"recipe-out-{name}")
    shutil.rmtree(out_dir, ignore_errors=True)
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(bt.RECIPE_TEMPLATE.format(base_model=model_dir, data=bt.DATA, r=bt.LORA_R, alpha=bt.LORA_ALPHA,
                                          seq_len=bt.SEQ_LEN, mbs=MICRO_PER_RANK, steps=steps, lr=bt.LR,
                                          warmup=bt.WARMUP, seed=bt.SEED, output_dir=out_dir))
    stdout, stderr = os.path.join(work, f"recipe-{name}.out"), os.path.join(work, f"recipe-{name}.err")
    argv = [recipe_bin, "run", path, "--device", "cpu", "--no-progress", "--nproc-per-node", str(ranks)]
    proc = bt.run_child(argv, stdout, stderr)
    if proc["exit_code"] != 0:
        raise SystemExit(f"recipe run failed on {name}:\n{bt.tail(stdout)}{bt.tail(stderr)}")
    with open(stdout) as f:
        m = bt.STEPS_LINE.search(f.read())
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = sorted((r for r in records if "loss" in r), key=lambda r: r["step"])
    return {"tokens_per_second": float(m.group(3)), **proc, "losses": [r["loss"] for r in train]}


def run_reference(name, model_dir, steps, ranks, work):
    spec, result = os.path.join(work, f"ddp-{name}.spec.json"), os.path.join(work, f"ddp-{name}.json")
    with open(spec, "w") as f:
        json.dump({"model_dir": model_dir, "steps": steps, "result": result}, f)
    stdout, stderr = os.path.join(work, f"ddp-{name}.out"), os.path.join(work, f"ddp-{name}.err")
    argv = [sys.executable, "-S", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
            os.path.abspath(__file__), "--reference-worker", spec]
    proc = bt.run_child(argv, stdout, stderr, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc["exit_code"] != 0:
        raise SystemExit(f"torch DDP failed on {name}:\n{bt.tail(stdout)}{bt.tail(stderr)}")
    with open(result) as f:
        r = json.load(f)
    r.update(proc)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe-bin")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--models", default="stories260k,llama-23m")
    ap.add_argument("--out", default="/tmp/bench-ddp.json")
    ap.add_argument("--keep")
    ap.add_argument("--reference-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_worker:
        return reference_worker(args.reference_worker)
    work = args.keep or tempfile.mkdtemp(prefix="bench-ddp-")
    os.makedirs(work, exist_ok=True)
    rows = {}
    for name in args.models.split(","):
        if name == "stories260k":
            model_dir = bt.TINY
        else:
            model_dir = os.path.join(work, name)
            if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
                os.makedirs(model_dir, exist_ok=True)
                bt.make_large_model(model_dir)
        print(f"{name}: recipe, {args.ranks} ranks", file=sys.stderr, flush=True)
        ours = run_recipe(args.recipe_bin, name, model_dir, args.steps, args.ranks, work)
        print(f"{name}: torch DDP (torchrun, gloo), {args.ranks} ranks", file=sys.stderr, flush=True)
        theirs = run_reference(name, model_dir, args.steps, args.ranks, work)
        rows[name] = {
            "recipe": ours,
            "torch_ddp": theirs,
            "tokens_per_second_ratio": ours["tokens_per_second"] / theirs["tokens_per_second"],
            "peak_rss_ratio": ours["max_rss_bytes"] / theirs["max_rss_bytes"],
        }
    print(f"\n{'model':<12} {'recipe tok/s':>13} {'DDP tok/s':>10} {'ratio':>6}   {'recipe RSS':>11} {'DDP RSS':>9} "
          f"{'ratio':>6}   first/last loss (recipe | DDP)")
    for name, r in rows.items():
        o, t = r["recipe"], r["torch_ddp"]
        print(f"{name:<12} {o['tokens_per_second']:>13.0f} {t['tokens_per_second']:>10.0f} "
              f"{r['tokens_per_second_ratio']:>6.2f}   {bt.mib(o['max_rss_bytes']):>8.0f} MiB "
              f"{bt.mib(t['max_rss_bytes']):>5.0f} MiB {r['peak_rss_ratio']:>6.2f}   "
              f"{o['losses'][0]:.3f}/{o['losses'][-1]:.3f} | {t['losses'][0]:.3f}/{t['losses'][-1]:.3f}")
    with open(args.out, "w") as f:
        json.dump({"ranks": args.ranks, "steps": args.steps, "models": rows}, f, indent=2)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

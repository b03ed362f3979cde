#!/usr/bin/env python3
"""Benchmark (developer-only, not a test): sharded full fine-tuning on CPU ranks, recipe against
torch FSDP2. `recipe run --nproc-per-node N` with `fsdp: [full_shard, auto_wrap]` (c10d Gloo)
beside `torchrun --nproc-per-node N` running transformers' AutoModelForCausalLM under torch's
FSDP2 `fully_shard` (backend gloo, a 1-D "cpu" device mesh of the N ranks), on the same model,
data and machine.

Entry point: scripts/bench-shard.sh (builds recipe, sets PYTHONPATH, runs this file).

Both sides run the same FULL fine-tune (no LoRA: every weight trained, fp32): data cut into
512-token chunks as scripts/reference/bench_train.py cuts them, AdamW lr 2e-5, betas (0.9, 0.999),
eps 1e-8, weight decay 0, cosine with 10 warmup steps, clipping at 1.0 (the norm over every
rank's shards), micro batch 4 per rank and N ranks (global batch 4 N, formed as
scripts/reference/bench_ddp.py forms it). Each rank uses cores / N threads (recipe sets it itself;
the reference sets torch.set_num_threads the same way, as torchrun's OMP_NUM_THREADS would).

Sharding, the same on both sides: one unit per decoder layer and one for the root (embeddings,
final norm, head; FSDP's auto wrap / `fully_shard` on each layer, then on the model). Each
rank holds 1/N of every parameter, gradient and AdamW moment; a unit's parameters are
all-gathered before its use and freed after it (reshard_after_forward), its gradients
reduce-scattered after its backward pass.

Activation checkpointing: recipe's full_shard recomputes each decoder layer in the backward pass
(a layer's parameters are released after its forward pass, so its activations are not kept
either). The reference therefore turns on transformers' activation (gradient) checkpointing on
every decoder layer (model.activation_checkpointing_enable, formerly gradient_checkpointing_enable;
use_reentrant False; the recompute re-gathers the layer's parameters through FSDP2's hooks), so
both sides do the same compute: "FSDP2" in the table. Unless --skip-no-ac is given, the reference is also run without activation checkpointing
("FSDP2 no AC": less compute, more activation memory); the table gives recipe's ratios against
that too.

Measured:
  tokens/s   real tokens of the global batches over the training loop (recipe: its summary's
             figure; reference: rank 0's perf_counter around the loop, tokens of all ranks).
  peak RSS   ru_maxrss of the launcher's process tree from os.wait4: the largest process, i.e.
             the largest rank (the launchers themselves are small).
  losses     first and last global training loss (recipe: metrics.jsonl; reference: rank 0's
             loss all-reduced over the ranks). They agree in ballpark, not exactly: recipe
             shuffles with ChaCha8, the reference with torch.randperm.

Usage: python3 -S scripts/reference/bench_shard.py --recipe-bin PATH [--ranks 2] [--steps 30]
       [--models stories260k,llama-23m] [--skip-no-ac] [--quiet-timeout 120]
       [--out /tmp/bench-shard.json] [--keep DIR]
Worker mode (internal, under torchrun): --reference-worker SPEC.json
"""
import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train as bt  # noqa: E402  (shared constants, child runner, data and model helpers)

MICRO_PER_RANK = 4
LR = 2e-5  # full fine-tuning

RECIPE_TEMPLATE = """recipe_version: 1
base_model: {base_model}
datasets:
  - path: {data}
    type: completion
    ds_type: text
val_set_size: 0
sequence_len: {seq_len}
sample_packing: true
micro_batch_size: {mbs}
gradient_accumulation_steps: 1
max_steps: {steps}
learning_rate: {lr}
lr_scheduler: cosine
warmup_steps: {warmup}
weight_decay: 0.0
adam_beta1: 0.9
adam_beta2: 0.999
adam_epsilon: 1.0e-8
max_grad_norm: 1.0
logging_steps: {steps}
seed: {seed}
fsdp: [full_shard, auto_wrap]
output_dir: {output_dir}
"""


def reference_worker(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    mesh = init_device_mesh("cpu", (world,))
    model_dir, steps, checkpointing = spec["model_dir"], spec["steps"], spec["activation_checkpointing"]
    torch.manual_seed(bt.SEED)
    chunks = bt.chunks_of_data(os.path.join(model_dir, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    if checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # newer transformers' name
            model.activation_checkpointing_enable({"use_reentrant": False})
            assert model.is_activation_checkpointing, "activation checkpointing did not turn on"
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.is_gradient_checkpointing, "activation checkpointing did not turn on"
    model.train()
    layer_cls = type(model.model.layers[0])
    for module in model.modules():
        if isinstance(module, layer_cls):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
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
    rss_before_training = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    losses, norms, tokens = [], [], 0
    dist.barrier()
    t0 = time.perf_counter()
    for ids, labels, all_tokens in batches:
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)  # a DTensor: the norm over every shard
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = out.loss.detach().clone()
        dist.all_reduce(loss)
        losses.append(loss.item() / world)
        norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
        tokens += all_tokens
    train_seconds = time.perf_counter() - t0
    if rank == 0:
        with open(spec["result"], "w") as f:
            json.dump({"steps": steps, "tokens": tokens, "train_seconds": train_seconds,
                       "tokens_per_second": tokens / train_seconds, "losses": losses, "grad_norms": norms,
                       "world_size": world, "threads_per_rank": torch.get_num_threads(),
                       "activation_checkpointing": checkpointing, "torch": torch.__version__,
                       "rank0_max_rss_before_training_bytes": rss_before_training,
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
        f.write(RECIPE_TEMPLATE.format(base_model=model_dir, data=bt.DATA, seq_len=bt.SEQ_LEN, mbs=MICRO_PER_RANK,
                                       steps=steps, lr=LR, warmup=bt.WARMUP, seed=bt.SEED, output_dir=out_dir))
    stdout, stderr = os.path.join(work, f"recipe-{name}.out"), os.path.join(work, f"recipe-{name}.err")
    argv = [recipe_bin, "run", path, "--device", "cpu", "--no-progress", "--nproc-per-node", str(ranks)]
    proc = bt.run_child(argv, stdout, stderr)
    if proc["exit_code"] != 0:
        raise SystemExit(f"recipe run failed on {name} (exit {proc['exit_code']}):\n{bt.tail(stdout)}{bt.tail(stderr)}")
    with open(stdout) as f:
        m = bt.STEPS_LINE.search(f.read())
    if not m:
        raise SystemExit(f"recipe run on {name}: no `steps N of N (X tokens/s)` line in\n{bt.tail(stdout)}")
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = sorted((r for r in records if "loss" in r), key=lambda r: r["step"])
    return {"tokens_per_second": float(m.group(3)), **proc, "losses": [r["loss"] for r in train],
            "grad_norms": [r.get("grad_norm") for r in train]}


def run_reference(name, model_dir, steps, ranks, work, checkpointing):
    tag = f"fsdp2-{name}" + ("" if checkpointing else "-noac")
    spec, result = os.path.join(work, f"{tag}.spec.json"), os.path.join(work, f"{tag}.json")
    with open(spec, "w") as f:
        json.dump({"model_dir": model_dir, "steps": steps, "result": result,
                   "activation_checkpointing": checkpointing}, f)
    stdout, stderr = os.path.join(work, f"{tag}.out"), os.path.join(work, f"{tag}.err")
    argv = [sys.executable, "-S", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
            os.path.abspath(__file__), "--reference-worker", spec]
    proc = bt.run_child(argv, stdout, stderr, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc["exit_code"] != 0:
        raise SystemExit(f"torch FSDP2 failed on {name} (exit {proc['exit_code']}):\n{bt.tail(stdout)}{bt.tail(stderr)}")
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
    ap.add_argument("--skip-no-ac", action="store_true",
                    help="do not also run the reference without activation checkpointing")
    ap.add_argument("--quiet-timeout", type=float, default=bt.QUIET["timeout"],
                    help="before each run, wait at most this many seconds for other processes to leave the CPU")
    ap.add_argument("--out", default="/tmp/bench-shard.json")
    ap.add_argument("--keep")
    ap.add_argument("--reference-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_worker:
        return reference_worker(args.reference_worker)
    if not args.recipe_bin or not os.access(args.recipe_bin, os.X_OK):
        raise SystemExit(f"--recipe-bin {args.recipe_bin!r} is not an executable")
    bt.QUIET["timeout"] = args.quiet_timeout
    work = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="bench-shard-")
    os.makedirs(work, exist_ok=True)
    rows = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "stories260k":
            model_dir = bt.TINY
        elif name == "llama-23m":
            model_dir = os.path.join(work, name)
            if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
                # Built in a child process (bench_train.py --make-model), so this one never loads torch.
                code = subprocess.call([sys.executable, "-S", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "bench_train.py"), "--make-model", model_dir], stdout=subprocess.DEVNULL,
                                       cwd=bt.REPO)
                if code != 0:
                    raise SystemExit("building the random Llama failed")
        else:
            raise SystemExit(f"--models: unknown model {name!r} (stories260k, llama-23m)")
        print(f"{name}: recipe full_shard, {args.ranks} ranks", file=sys.stderr, flush=True)
        ours = run_recipe(args.recipe_bin, name, model_dir, args.steps, args.ranks, work)
        print(f"   {ours['tokens_per_second']:.0f} tokens/s, {ours['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
        print(f"{name}: torch FSDP2 (torchrun, gloo, activation checkpointing), {args.ranks} ranks",
              file=sys.stderr, flush=True)
        theirs = run_reference(name, model_dir, args.steps, args.ranks, work, True)
        print(f"   {theirs['tokens_per_second']:.0f} tokens/s, {theirs['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
        rows[name] = {
            "recipe": ours,
            "torch_fsdp2": theirs,
            "tokens_per_second_ratio": ours["tokens_per_second"] / theirs["tokens_per_second"],
            "peak_rss_ratio": ours["max_rss_bytes"] / theirs["max_rss_bytes"],
        }
        if not args.skip_no_ac:
            print(f"{name}: torch FSDP2 without activation checkpointing, {args.ranks} ranks",
                  file=sys.stderr, flush=True)
            plain = run_reference(name, model_dir, args.steps, args.ranks, work, False)
            print(f"   {plain['tokens_per_second']:.0f} tokens/s, {plain['wall_seconds']:.1f} s",
                  file=sys.stderr, flush=True)
            rows[name]["torch_fsdp2_no_ac"] = plain
            rows[name]["no_ac_tokens_per_second_ratio"] = ours["tokens_per_second"] / plain["tokens_per_second"]
            rows[name]["no_ac_peak_rss_ratio"] = ours["max_rss_bytes"] / plain["max_rss_bytes"]
    print(f"\n{'model':<12} {'recipe tok/s':>13} {'FSDP2 tok/s':>12} {'ratio':>6}   {'recipe RSS':>11} "
          f"{'FSDP2 RSS':>10} {'ratio':>6}   first/last loss (recipe | FSDP2)")
    for name, r in rows.items():
        o, t = r["recipe"], r["torch_fsdp2"]
        print(f"{name:<12} {o['tokens_per_second']:>13.0f} {t['tokens_per_second']:>12.0f} "
              f"{r['tokens_per_second_ratio']:>6.2f}   {bt.mib(o['max_rss_bytes']):>7.0f} MiB "
              f"{bt.mib(t['max_rss_bytes']):>6.0f} MiB {r['peak_rss_ratio']:>6.2f}   "
              f"{o['losses'][0]:.3f}/{o['losses'][-1]:.3f} | {t['losses'][0]:.3f}/{t['losses'][-1]:.3f}")
        if "torch_fsdp2_no_ac" in r:
            p = r["torch_fsdp2_no_ac"]
            print(f"{'  (no AC)':<12} {'':>13} {p['tokens_per_second']:>12.0f} {r['no_ac_tokens_per_second_ratio']:>6.2f}"
                  f"   {'':>11} {bt.mib(p['max_rss_bytes']):>6.0f} MiB {r['no_ac_peak_rss_ratio']:>6.2f}   "
                  f"{'':>13} | {p['losses'][0]:.3f}/{p['losses'][-1]:.3f}")
    print("FSDP2: fully_shard per decoder layer + root, activation checkpointing on every layer (as recipe's "
          "full_shard);\n" + ("" if args.skip_no_ac else "(no AC): the same without it. ") +
          "RSS: peak of the largest rank; ratio: recipe / torch. "
          f"{args.ranks} ranks, {args.steps} steps, {os.cpu_count()} logical CPUs.")
    loaded = [n for n, r in rows.items() for k in ("recipe", "torch_fsdp2", "torch_fsdp2_no_ac")
              if k in r and r[k]["other_load"] > bt.QUIET["threshold"]]
    if loaded:
        print(f"WARNING: other processes used the CPU during runs on {', '.join(sorted(set(loaded)))}: "
              "those timings are not clean (other_load in the JSON)")
    with open(args.out, "w") as f:
        json.dump({"ranks": args.ranks, "steps": args.steps, "micro_batch_per_rank": MICRO_PER_RANK,
                   "learning_rate": LR, "sequence_len": bt.SEQ_LEN, "cpu_count": os.cpu_count(), "models": rows},
                  f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

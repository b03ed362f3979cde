#!/usr/bin/env python3
"""Benchmark (developer-only, not a test): `recipe run` against a Python reference
(transformers + peft + a plain torch loop) doing the same LoRA fine-tune on the same CPU.

Entry point: scripts/bench-train.sh (builds recipe, sets PYTHONPATH, runs this file).

What it compares, per model:
  stories260k  the bundled models/stories260k (read in place)
  llama-23m    a random-initialised Llama (hidden 512, intermediate 1376, 8 layers, 8 heads,
               4 kv heads, vocab 512, max_position_embeddings 512, tied embeddings;
               23.5M parameters), built here with torch.manual_seed(0) and
               save_pretrained (safetensors) into the temp folder, next to copies of the
               stories260k tokenizer files, so the same data tokenizes the same way.

Both sides train the same thing: LoRA r 8, alpha 16, dropout 0 on all 7 linears of every
decoder layer; data/shakespeare/tinyshakespeare-excerpt.txt as ONE document
([BOS] + tokens + [EOS]) cut into consecutive 512-token chunks, every token trained; no
validation split; micro batch 8, no accumulation; AdamW lr 5e-4, betas (0.9, 0.999),
eps 1e-8, weight decay 0; cosine schedule with 10 warmup steps; gradient clipping at 1.0;
fp32; the thread count left at torch's / libtorch's default (the physical cores) in both.
Each epoch is a shuffle of the chunks cut into batches of 8 (the last batch of an epoch is
the remainder), as recipe does; the order itself differs (recipe shuffles with ChaCha8,
the reference with torch.randperm), and so does the LoRA A initialisation (same
distribution, other random numbers), so the losses agree in ballpark, not exactly.

Measured:
  tokens/s    recipe: the value its summary prints (real, unpadded tokens over the
              training steps only; model load, tokenization, the final sample and the
              output files are excluded). Reference: the same count over the same span,
              timed with perf_counter around the training loop. Neither side excludes the
              first (warm-up) step: recipe does not, so the reference does not either.
              The reference reads the loss with .item() every step; on the CPU that costs
              nothing (there is no asynchronous queue to drain).
  wall        the whole process (start to exit), from the orchestrator, for both.
  peak RSS    ru_maxrss of each child process from os.wait4 (the reference also reports
              getrusage(RUSAGE_SELF) itself; they agree).
  losses      first and last training loss (recipe: metrics.jsonl).
  other load  cores that other processes kept busy during each run (/proc/stat busy time
              minus the child's CPU time, over the wall time). On a 2-core machine a single
              busy neighbour slows a 2-thread OpenMP job several-fold, so before each run
              the orchestrator waits (up to --quiet-timeout seconds) for the machine to go
              quiet, measures a run again (up to --retries times) when the load came during
              it, keeps the least disturbed attempt, and flags runs that stayed disturbed.

Usage (see scripts/bench-train.sh):
  python3 -S scripts/reference/bench_train.py --recipe-bin PATH [--out /tmp/bench-train.json]
      [--steps-small 30] [--steps-large 10] [--models stories260k,llama-23m] [--keep DIR]
      [--quiet-timeout 120] [--retries 1]
Worker mode (internal): --reference-worker SPEC.json
"""
import argparse
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY = os.path.join(REPO, "models", "stories260k")
DATA = os.path.join(REPO, "data", "shakespeare", "tinyshakespeare-excerpt.txt")
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

SEQ_LEN = 512
MICRO_BATCH = 8
LR = 5e-4
WARMUP = 10
SEED = 42
LORA_R = 8
LORA_ALPHA = 16

RECIPE_TEMPLATE = """recipe_version: 1
base_model: {base_model}
adapter: lora
lora_r: {r}
lora_alpha: {alpha}
lora_dropout: 0.0
lora_target_linear: true
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
output_dir: {output_dir}
"""


# ---------------------------------------------------------------- child processes


def busy_cpu_seconds():
    """CPU seconds spent busy by the whole machine so far (all cores, from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return (total - idle) / os.sysconf("SC_CLK_TCK")


QUIET = {"timeout": 120.0, "threshold": 0.25, "retries": 1}


def wait_for_quiet():
    """Waits (up to QUIET["timeout"] seconds) until other processes keep less than
    QUIET["threshold"] cores busy over a 2-second window: on a 2-core machine one busy
    neighbour slows a 2-thread OpenMP job several-fold. Returns the seconds waited."""
    start = time.perf_counter()
    announced = False
    while True:
        b0 = busy_cpu_seconds()
        time.sleep(2.0)
        load = (busy_cpu_seconds() - b0) / 2.0
        waited = time.perf_counter() - start
        if load < QUIET["threshold"] or waited >= QUIET["timeout"]:
            if announced:
                state = "quiet" if load < QUIET["threshold"] else f"still {load:.2f} cores busy, going on"
                print(f"   ({state} after {waited:.0f} s)", file=sys.stderr, flush=True)
            return waited
        if not announced:
            print(f"   waiting for the CPU to go quiet ({load:.2f} cores busy)", file=sys.stderr, flush=True)
            announced = True


def run_child(argv, stdout_path, stderr_path, env=None):
    """Runs argv to completion. Returns wall seconds, the child's peak RSS (bytes) and CPU
    seconds, and `other_load`: the average number of cores other processes kept busy meanwhile
    (the machine's busy time from /proc/stat minus the child's; a benchmark wants ~0)."""
    waited = wait_for_quiet()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        busy0, start = busy_cpu_seconds(), time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall, busy1 = time.perf_counter() - start, busy_cpu_seconds()
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "exit_code": os.waitstatus_to_exitcode(status),
        "wall_seconds": wall,
        "max_rss_bytes": usage.ru_maxrss * 1024,  # Linux: kilobytes
        "cpu_seconds": cpu,
        "other_load": max(0.0, busy1 - busy0 - cpu) / wall,
        "waited_for_quiet_seconds": waited,
    }


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------- model preparation


def make_large_model(folder):
    """The random ~23.5M-parameter Llama, saved with save_pretrained, plus the stories260k
    tokenizer files. Runs in a child process so the orchestrator stays small."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.02,
        attention_bias=False,
        mlp_bias=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    gen = os.path.join(folder, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(TINY, name), os.path.join(folder, name))
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- the reference worker


def chunks_of_data(tokenizer_path):
    """recipe's completion data: the whole file is one document, [BOS] + ids + [EOS], cut
    into consecutive SEQ_LEN chunks."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(tokenizer_path)
    with open(DATA, encoding="utf-8") as f:
        text = f.read()
    ids = [1] + tok.encode(text, add_special_tokens=False).ids + [2]
    return [ids[i : i + SEQ_LEN] for i in range(0, len(ids), SEQ_LEN)]


def reference_worker(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    started = time.perf_counter()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    model_dir, steps = spec["model_dir"], spec["steps"]
    torch.manual_seed(SEED)
    chunks = chunks_of_data(os.path.join(model_dir, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, WARMUP, steps)

    # Batches as recipe forms them: per epoch a shuffle of the chunks, cut into MICRO_BATCH
    # slices (the last one the remainder); rows padded on the right to SEQ_LEN, labels -100.
    n = len(chunks)
    per_epoch = math.ceil(n / MICRO_BATCH)
    batches = []
    for step in range(steps):
        epoch = step // per_epoch
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED + epoch)).tolist()
        pick = order[(step % per_epoch) * MICRO_BATCH : (step % per_epoch + 1) * MICRO_BATCH]
        ids = torch.zeros(len(pick), SEQ_LEN, dtype=torch.long)
        labels = torch.full((len(pick), SEQ_LEN), -100, dtype=torch.long)
        real = 0
        for row, i in enumerate(pick):
            c = torch.tensor(chunks[i], dtype=torch.long)
            ids[row, : len(c)] = c
            labels[row, : len(c)] = c
            real += len(c)
        batches.append((ids, labels, real))
    setup_seconds = time.perf_counter() - started
    rss_before_training = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    losses, norms, step_seconds, tokens = [], [], [], 0
    t0 = time.perf_counter()
    for ids, labels, real in batches:
        t_step = time.perf_counter()
        # transformers shifts the labels and takes the mean over labels != -100: recipe's loss.
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        norms.append(float(norm))
        step_seconds.append(time.perf_counter() - t_step)
        tokens += real
    train_seconds = time.perf_counter() - t0

    result = {
        "steps": steps,
        "train_chunks": n,
        "tokens": tokens,
        "train_seconds": train_seconds,
        "tokens_per_second": tokens / train_seconds,
        "setup_seconds": setup_seconds,
        "losses": losses,
        "grad_norms": norms,
        "step_seconds": step_seconds,
        "trainable_parameters": trainable,
        "threads": torch.get_num_threads(),
        "attn_implementation": model.config._attn_implementation,
        "max_rss_before_training_bytes": rss_before_training,
        "self_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch": torch.__version__,
    }
    with open(spec["result"], "w") as f:
        json.dump(result, f)


# ---------------------------------------------------------------- recipe


STEPS_LINE = re.compile(r"^steps\s+(\d+) of (\d+) \(([\d.]+) tokens/s\)", re.M)


def run_recipe(recipe_bin, name, model_dir, steps, work):
    out_dir = os.path.join(work, f"recipe-out-{name}")
    shutil.rmtree(out_dir, ignore_errors=True)
    recipe_path = os.path.join(work, f"{name}.yaml")
    with open(recipe_path, "w") as f:
        f.write(
            RECIPE_TEMPLATE.format(
                base_model=model_dir,
                data=DATA,
                r=LORA_R,
                alpha=LORA_ALPHA,
                seq_len=SEQ_LEN,
                mbs=MICRO_BATCH,
                steps=steps,
                lr=LR,
                warmup=WARMUP,
                seed=SEED,
                output_dir=out_dir,
            )
        )
    stdout, stderr = os.path.join(work, f"recipe-{name}.out"), os.path.join(work, f"recipe-{name}.err")
    argv = [recipe_bin, "run", recipe_path, "--device", "cpu", "--no-progress"]
    proc = run_child(argv, stdout, stderr)
    if proc["exit_code"] != 0:
        raise SystemExit(f"recipe run failed on {name} (exit {proc['exit_code']}):\n{tail(stdout)}{tail(stderr)}")
    with open(stdout) as f:
        m = STEPS_LINE.search(f.read())
    if not m:
        raise SystemExit(f"recipe run on {name}: no `steps N of N (X tokens/s)` line in\n{tail(stdout)}")
    records = []
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
    train = sorted((r for r in records if "loss" in r), key=lambda r: r["step"])
    return {
        "steps": int(m.group(1)),
        "tokens_per_second": float(m.group(3)),
        **proc,
        "losses": [r["loss"] for r in train],
        "grad_norms": [r["grad_norm"] for r in train],
    }


def run_reference(name, model_dir, steps, work):
    spec = os.path.join(work, f"reference-{name}.spec.json")
    result = os.path.join(work, f"reference-{name}.json")
    with open(spec, "w") as f:
        json.dump({"model_dir": model_dir, "steps": steps, "result": result}, f)
    stdout, stderr = os.path.join(work, f"reference-{name}.out"), os.path.join(work, f"reference-{name}.err")
    argv = [sys.executable, "-S", os.path.abspath(__file__), "--reference-worker", spec]
    proc = run_child(argv, stdout, stderr, env=os.environ.copy())
    if proc["exit_code"] != 0:
        raise SystemExit(f"reference failed on {name} (exit {proc['exit_code']}):\n{tail(stdout)}{tail(stderr)}")
    with open(result) as f:
        r = json.load(f)
    r.update(proc)
    return r


def measured(label, run):
    """run() once, and again (up to QUIET["retries"] more times) while other processes kept
    the CPU busy during it; keeps the attempt with the least other load."""
    best, spent = None, 0.0
    for attempt in range(1 + QUIET["retries"]):
        r = run()
        spent += r["waited_for_quiet_seconds"] + r["wall_seconds"]
        note = f" (other load {r['other_load']:.2f} cores)" if r["other_load"] > QUIET["threshold"] else ""
        print(f"   {r['tokens_per_second']:.0f} tokens/s, {r['wall_seconds']:.1f} s{note}", file=sys.stderr, flush=True)
        if best is None or r["other_load"] < best["other_load"]:
            best = r
        if r["other_load"] <= QUIET["threshold"]:
            break
        if attempt < QUIET["retries"]:
            print(f"   {label}: measuring again", file=sys.stderr, flush=True)
    best["attempts"] = attempt + 1
    best["seconds_spent_all_attempts"] = spent  # waits included
    return best


# ---------------------------------------------------------------- report


def mib(b):
    return b / (1024 * 1024)


def table(rows):
    head = [
        "model",
        "params",
        "steps",
        "tok/s recipe",
        "tok/s ref",
        "ratio",
        "wall recipe",
        "wall ref",
        "RSS recipe",
        "RSS ref",
        "ratio",
        "loss first r/ref",
        "loss last r/ref",
        "other load r/ref",
    ]
    body = []
    for r in rows:
        a, b = r["recipe"], r["reference"]
        body.append(
            [
                r["model"],
                f"{r['parameters'] / 1e6:.2f}M",
                str(r["steps"]),
                f"{a['tokens_per_second']:.0f}",
                f"{b['tokens_per_second']:.0f}",
                f"{r['tokens_per_second_ratio']:.2f}",
                f"{a['wall_seconds']:.1f} s",
                f"{b['wall_seconds']:.1f} s",
                f"{mib(a['max_rss_bytes']):.0f} MiB",
                f"{mib(b['max_rss_bytes']):.0f} MiB",
                f"{r['max_rss_ratio']:.2f}",
                f"{a['losses'][0]:.3f} / {b['losses'][0]:.3f}",
                f"{a['losses'][-1]:.3f} / {b['losses'][-1]:.3f}",
                f"{a['other_load']:.2f} / {b['other_load']:.2f}",
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe-bin")
    ap.add_argument("--out", default="/tmp/bench-train.json")
    ap.add_argument("--steps-small", type=int, default=30, help="optimizer steps on stories260k")
    ap.add_argument("--steps-large", type=int, default=10, help="optimizer steps on the random 23.5M Llama")
    ap.add_argument("--models", default="stories260k,llama-23m")
    ap.add_argument(
        "--quiet-timeout",
        type=float,
        default=QUIET["timeout"],
        help="before each run, wait at most this many seconds for other processes to leave the CPU (0: never wait)",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=QUIET["retries"],
        help="measure a run again up to this many times when other processes used the CPU during it",
    )
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temp folder, removed)")
    ap.add_argument("--reference-worker", help=argparse.SUPPRESS)
    ap.add_argument("--make-model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_model:
        print(make_large_model(args.make_model))
        return
    if args.reference_worker:
        reference_worker(args.reference_worker)
        return
    if not args.recipe_bin or not os.access(args.recipe_bin, os.X_OK):
        raise SystemExit(f"--recipe-bin {args.recipe_bin!r} is not an executable")

    QUIET["timeout"] = args.quiet_timeout
    QUIET["retries"] = max(0, args.retries)
    t_start = time.perf_counter()
    work = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="bench-train-")
    os.makedirs(work, exist_ok=True)
    try:
        models = []
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if name == "stories260k":
                models.append((name, TINY, args.steps_small, 260_032))
            elif name == "llama-23m":
                folder = os.path.join(work, "llama-23m")
                # Built in a child process, so this one never loads torch.
                with open(os.path.join(work, "make-model.out"), "w") as out:
                    code = subprocess.call(
                        [sys.executable, "-S", os.path.abspath(__file__), "--make-model", folder],
                        stdout=out,
                        cwd=REPO,
                    )
                if code != 0:
                    raise SystemExit("building the random Llama failed")
                with open(os.path.join(work, "make-model.out")) as f:
                    params = int(f.read().split()[-1])
                models.append((name, folder, args.steps_large, params))
            else:
                raise SystemExit(f"--models: unknown model {name!r} (stories260k, llama-23m)")

        rows = []
        for name, folder, steps, params in models:
            print(f"== {name}: recipe run, {steps} steps", file=sys.stderr, flush=True)
            a = measured(f"{name} recipe", lambda: run_recipe(args.recipe_bin, name, folder, steps, work))
            print(f"== {name}: reference (transformers + peft), {steps} steps", file=sys.stderr, flush=True)
            b = measured(f"{name} reference", lambda: run_reference(name, folder, steps, work))
            rows.append(
                {
                    "model": name,
                    "parameters": params,
                    "steps": steps,
                    "recipe": a,
                    "reference": b,
                    "tokens_per_second_ratio": a["tokens_per_second"] / b["tokens_per_second"],
                    "max_rss_ratio": a["max_rss_bytes"] / b["max_rss_bytes"],
                }
            )
        total = time.perf_counter() - t_start
        print(table(rows))
        print(
            "tokens/s: training steps only (first step included on both sides); wall: whole process; "
            "RSS: peak resident set; ratio: recipe / reference;\nother load: cores other processes kept "
            "busy during the run (should be ~0)"
        )
        busy = [r["model"] for r in rows if max(r["recipe"]["other_load"], r["reference"]["other_load"]) > 0.2]
        if busy:
            print(f"WARNING: other processes used the CPU during {', '.join(busy)}: those timings are not clean")
        sides = [r[side] for r in rows for side in ("recipe", "reference")]
        repeated = sum(s["seconds_spent_all_attempts"] - s["wall_seconds"] for s in sides)
        attempts = sum(s["attempts"] for s in sides)
        print(
            f"total benchmark time {total:.1f} s, of which {repeated:.0f} s waiting for a quiet CPU or repeating "
            f"disturbed runs ({attempts} runs for {len(sides)} measurements; threads: torch / libtorch default; "
            f"{os.cpu_count()} logical CPUs)"
        )
        summary = {
            "settings": {
                "sequence_len": SEQ_LEN,
                "micro_batch_size": MICRO_BATCH,
                "learning_rate": LR,
                "warmup_steps": WARMUP,
                "lora_r": LORA_R,
                "lora_alpha": LORA_ALPHA,
                "target_modules": TARGETS,
                "data": os.path.relpath(DATA, REPO),
                "recipe_bin": os.path.abspath(args.recipe_bin),
                "cpu_count": os.cpu_count(),
            },
            "models": rows,
            "total_seconds": total,
        }
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

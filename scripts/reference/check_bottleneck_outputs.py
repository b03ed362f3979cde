#!/usr/bin/env python3
"""Developer-only: proves that the bottleneck-adapter folders recipe writes load in AdapterHub's
`adapters` and give recipe's logits and greedy text.

What it reads (left by `cargo test --test bottleneck`, tests/bottleneck.rs), by default
${CARGO_TARGET_DIR:-target}/tmp/bottleneck-check, or the folder given as the first argument:

  DIR/houlsby/, DIR/pfeiffer/   adapters' format as recipe writes it: adapter_config.json (the full
               config: `config` with the BnConfig fields, model_name = the base's local folder,
               name "bottleneck"), adapter.safetensors, tokenizer files, and
               recipe_logits.safetensors (input_ids int64 [B, T], logits fp32 [B, T, V]: recipe's
               logits for base + adapter), recipe_generate.json (prompt, max_new_tokens, and the
               text `recipe generate` printed: greedy)

What it checks, per case, on the CPU in float32, one thread, attn_implementation="eager",
under torch.no_grad():
  base = AutoModelForCausalLM.from_pretrained(model_name); adapters.init(base);
  name = base.load_adapter(DIR/case, use_safetensors=True) (adapters reads adapter.safetensors only
  with use_safetensors; recipe writes no pickles); base.set_active_adapters(name). Every tensor of
  adapter.safetensors must be loaded into the model exactly, and the model's adapter parameters
  must be exactly the file's keys. Then max |logits - recipe logits| < 1e-4 (use_cache=False), and
  base.generate(tokenizer(prompt).input_ids, do_sample=False, max_new_tokens, use_cache=False) must
  give recipe's text: the prompt followed by the new tokens decoded (special tokens skipped), as
  `recipe generate` prints them. use_cache=False because adapters 1.3.0's generate with its KV
  cache gives other tokens than its own forward pass on the same ids: its Llama decoder layer takes
  `past_key_value` while transformers 4.57 passes `past_key_values`, so the attention never sees the
  cache (the report records that text too, as `adapters_cached_text`, without judging it).

Prints a table and writes a JSON report (pretty, sorted keys) to --report PATH (default
tests/golden/bottleneck_outputs_check.json); exit status 0 all present cases pass, 1 one fails,
2 no artifacts.

Run with the adapters stack (scripts/reference/requirements-adapters.txt, installed into the cache
by scripts/test.sh):

  cargo test --test bottleneck
  PYTHONPATH=$HOME/.cache/recipe/ref-adapters:$HOME/.cache/recipe/ref-py:$HOME/.cache/recipe/torch-2.11.0 \\
      python3 -S scripts/reference/check_bottleneck_outputs.py [DIR] [--report PATH]
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
import adapters  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CASES = ["houlsby", "pfeiffer"]
TOL = 1e-4


def default_dir():
    target = os.environ.get("CARGO_TARGET_DIR")
    target = os.path.abspath(target) if target else os.path.join(ROOT, "target")
    return os.path.join(target, "tmp", "bottleneck-check")


def base_path(name):
    for candidate in (name, os.path.join(ROOT, name)):
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(f"base model folder {name!r} not found (tried as is and under {ROOT})")


def check_case(case_dir):
    with open(os.path.join(case_dir, "adapter_config.json")) as f:
        config = json.load(f)
    model = AutoModelForCausalLM.from_pretrained(base_path(config["model_name"]), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    adapters.init(model)
    name = model.load_adapter(case_dir, use_safetensors=True)
    model.set_active_adapters(name)
    model.eval()
    saved = load_file(os.path.join(case_dir, "adapter.safetensors"))
    params = {n: p for n, p in model.named_parameters() if f".adapters.{name}." in n}
    checks = {"keys_equal": set(saved) == set(params),
              "tensors_exact": all(k in params and torch.equal(params[k].detach(), v) for k, v in saved.items())}
    expected = load_file(os.path.join(case_dir, "recipe_logits.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"], use_cache=False).logits.float()
    diff = (logits - expected["logits"]).abs().max().item()
    checks["logits_within_tol"] = logits.shape == expected["logits"].shape and diff < TOL

    with open(os.path.join(case_dir, "recipe_generate.json")) as f:
        gen = json.load(f)
    tok = AutoTokenizer.from_pretrained(case_dir)
    ids = tok(gen["prompt"], return_tensors="pt").input_ids
    texts = {}
    for use_cache in (False, True):
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=use_cache,
                                 max_new_tokens=gen["max_new_tokens"], pad_token_id=tok.eos_token_id)
        texts[use_cache] = gen["prompt"] + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    checks["greedy_text_equal"] = texts[False] == gen["text"]
    return {"max_abs_diff": diff, "shape": list(logits.shape), "checks": checks, "adapter_name": name,
            "adapters_text": texts[False], "adapters_cached_text": texts[True], "recipe_text": gen["text"],
            "pass": all(checks.values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", default=default_dir())
    ap.add_argument("--report", default=os.path.join(ROOT, "tests", "golden", "bottleneck_outputs_check.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    report = {"versions": {"adapters": adapters.__version__, "transformers": transformers.__version__,
                           "torch": torch.__version__}, "cases": {}, "skipped": {}}
    for case in CASES:
        case_dir = os.path.join(args.dir, case)
        if not os.path.exists(os.path.join(case_dir, "recipe_logits.safetensors")):
            report["skipped"][case] = f"no {case_dir}/recipe_logits.safetensors"
            continue
        report["cases"][case] = check_case(case_dir)
    if not report["cases"]:
        print(f"no bottleneck outputs under {args.dir} (run cargo test --test bottleneck first)", file=sys.stderr)
        sys.exit(2)
    print(f"{'case':10s} {'max|Δlogits|':>13s}  checks")
    for case, r in report["cases"].items():
        status = "ok" if r["pass"] else "FAIL " + ", ".join(k for k, v in r["checks"].items() if not v)
        print(f"{case:10s} {r['max_abs_diff']:13.2e}  {status}")
        if not r["checks"]["greedy_text_equal"]:
            print(f"  adapters: {r['adapters_text']!r}\n  recipe:   {r['recipe_text']!r}")
    os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
    with open(args.report, "w") as f:
        f.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    sys.exit(0 if all(r["pass"] for r in report["cases"].values()) else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Developer-only: proves that the folders recipe writes load in the Python ecosystem
(transformers, peft) and give the same logits recipe computed.

What it reads (left by `cargo test --test outputs`, tests/outputs.rs), by default
${CARGO_TARGET_DIR:-target}/tmp/outputs-check (a relative CARGO_TARGET_DIR is taken from
the current directory, as cargo does; "target" from the repository root), or the folder
given as the first argument:

  DIR/lora/    a peft LoRA adapter: adapter_config.json (base_model_name_or_path is the
               path of a local Hugging Face model folder, e.g. models/stories260k; a
               relative one is tried from the current directory, then from the repository
               root), adapter_model.safetensors, tokenizer files, recipe_logits.safetensors
               (recipe's logits for base + adapter)
  DIR/full/    a Hugging Face model folder after full fine-tuning: config.json,
               model.safetensors, tokenizer files, recipe_logits.safetensors
  DIR/lora_head/ like lora/, with LoRA on lm_head too (the tied head of stories260k).
  DIR/quantized4/, DIR/quantized8/  `recipe quantize` folders (NF4 + double quant; LLM.int8) with
               recipe's logits for the quantized base; transformers loads them through bitsandbytes.
  DIR/merged/  a Hugging Face model folder written by `recipe merge` (adapter folded into
               the base), tokenizer files, recipe_logits.safetensors holding recipe's logits
               for base + adapter computed BEFORE merging

  DIR/reward_lora/, DIR/reward_full/  reward models (`reward_model: true`): a peft SEQ_CLS adapter with
               its `score` head in modules_to_save, and a LlamaForSequenceClassification folder; their
               recipe_logits.safetensors hold recipe's reward per row as `logits` float32 [B, 1]
               (loaded as AutoModelForSequenceClassification; the adapter's base with num_labels 1 and
               the tokenizer's pad token, EOS when it has none)

  DIR/lora_dora/, DIR/merged_dora/  like lora/ and merged/ for a DoRA adapter (use_dora: true, its
               magnitudes saved as ...lora_magnitude_vector) and its `recipe merge` folder
  DIR/ia3/, DIR/merged_ia3/  like lora/ and merged/ for an IA3 adapter (peft_type IA3, vectors saved
               as ...ia3_l) and its `recipe merge` folder
  DIR/lora_embed/, DIR/merged_embed/  like lora/ and merged/ for LoRA on embed_tokens (peft's
               lora_embedding_A / lora_embedding_B, plus the embedding's base_layer.weight) and its
               `recipe merge` folder (stories260k's head is tied: recipe writes it untied, with the
               original weights, so the merged logits equal the adapter's; peft's merge_and_unload
               folds the update into the shared tensor and changes the head too, so it is not compared)

  DIR/prompt_tuning/  a peft PROMPT_TUNING adapter (adapter_config.json, adapter_model.safetensors
               with prompt_embeddings); its recipe logits cover the N virtual positions too: [B, N + T, V]
               (N = num_virtual_tokens), as PeftModelForCausalLM's do
  DIR/prefix_tuning/  a peft PREFIX_TUNING adapter (prompt_embeddings: every layer's prefix keys and
               values); its logits are [B, T, V]
  DIR/prefix_projection/  the same trained through peft's PrefixEncoder MLP (prefix_projection: true):
               prompt_embeddings holds the MLP's output, as peft saves it (the MLP itself, in
               prefix_encoder.safetensors, is recipe's for resuming and not read here)
  DIR/lora_moe/, DIR/merged_moe/  (left by tests/moe.rs) like lora/ and merged/ for a tiny random
               Mixtral (DIR/moe_base/) with LoRA on q/v and, through peft's target_parameters, on
               its router and fused experts (ParamWrapper tensors under ...mlp.experts[.base_layer]); the
               merged folder writes experts per expert, so peft's fused merge_and_unload is not compared
  DIR/lora_dora_embed/, DIR/merged_dora_embed/  like lora_embed/ and merged_embed/ with DoRA (peft's
               DoraEmbeddingLayer: the embedding's lora_magnitude_vector too)

  every recipe_logits.safetensors holds
    input_ids  int64 [B, T]
    logits     fp32  [B, T, V]

Any of the three may be absent (skipped with a note); if none is there the script exits 2.

What it checks, per case, on the CPU in float32, one thread, attn_implementation="eager",
use_cache=False, torch.manual_seed(0), under torch.no_grad():
  lora,   base = AutoModelForCausalLM.from_pretrained(base_model_name_or_path),
  prompt_tuning, prefix_tuning
          model = PeftModel.from_pretrained(base, DIR/lora); the set of keys in
          adapter_model.safetensors must equal the keys of get_peft_model_state_dict(model)
          (no missing and no unexpected adapter tensors), every loaded tensor must equal
          the file's exactly (the file's tensor cast to the loaded dtype, which peft may
          upcast), and peft must raise no missing-keys warning.
  full,   model = AutoModelForCausalLM.from_pretrained(DIR/case, output_loading_info=True);
  merged  no missing, unexpected or mismatched keys.
  merged_dora, merged_ia3  also: peft's merge_and_unload of DIR/lora_dora (DIR/ia3) (PeftModel over
          its base) must equal every weight of the merged folder's model.safetensors within 1e-5 (max abs).
  all     AutoTokenizer.from_pretrained(DIR/case) must load (proves the folder carries its
          tokenizer; len(tokenizer) is reported), logits = model(input_ids).logits must
          have recipe's shape, and max |logits - recipe logits| must be < 1e-4 (NaN fails).

Prints a table and writes a JSON report (pretty, sorted keys, trailing newline) to
tests/golden/outputs_check.json (relative to the repository root), or to --report PATH:
per case the max abs diff, shapes, the individual checks and a pass flag, per skipped case
a note, and the transformers / peft / torch / safetensors versions. Nothing else is
written. Exit status: 0 all present cases pass, 1 one fails, 2 no artifacts.

How to run (from anywhere; versions pinned in scripts/reference/requirements.txt):

  cargo test --test outputs
  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \\
      python3 -S scripts/reference/check_outputs.py [DIR] [--report PATH]
"""
import os
import sys

sys.dont_write_bytecode = True  # write nothing but the report
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from peft import PeftModel, get_peft_model_state_dict  # noqa: E402

transformers.utils.logging.disable_progress_bar()
# peft 0.21 calls transformers' deprecated is_gradient_checkpointing; nothing to act on.
warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
REPORT = "tests/golden/outputs_check.json"  # relative to ROOT
CASES = ("lora", "lora_head", "full", "merged", "quantized4", "quantized8", "reward_lora", "reward_full",
         "lora_dora", "merged_dora", "ia3", "merged_ia3", "lora_embed", "merged_embed", "prompt_tuning",
         "prefix_tuning", "prefix_projection", "lora_dora_embed", "merged_dora_embed", "lora_moe", "merged_moe")
TOL = 1e-4
MERGE_TOL = 1e-5
LOGITS_FILE = "recipe_logits.safetensors"


def default_dir():
    target = os.environ.get("CARGO_TARGET_DIR")
    target = os.path.abspath(target) if target else os.path.join(ROOT, "target")
    return os.path.join(target, "tmp", "outputs-check")


def load_recipe_logits(case_dir):
    t = load_file(os.path.join(case_dir, LOGITS_FILE))
    for k in ("input_ids", "logits"):
        if k not in t:
            raise CheckError(f"{LOGITS_FILE} has no '{k}' (keys: {sorted(t)})")
    ids, logits = t["input_ids"], t["logits"]
    if ids.dtype != torch.int64 or ids.dim() != 2:
        raise CheckError(f"input_ids must be int64 [B, T], got {ids.dtype} {list(ids.shape)}")
    if os.path.basename(case_dir).startswith("reward"):
        # A reward model's scores, one per row: [B, 1] as transformers' …ForSequenceClassification gives.
        if logits.dtype != torch.float32 or list(logits.shape) != [ids.shape[0], 1]:
            raise CheckError(f"rewards must be float32 [B, 1], got {logits.dtype} {list(logits.shape)}")
        return ids, logits
    want = list(ids.shape)
    if os.path.basename(case_dir) == "prompt_tuning":
        with open(os.path.join(case_dir, "adapter_config.json")) as f:
            want[1] += json.load(f)["num_virtual_tokens"]
    if logits.dtype != torch.float32 or logits.dim() != 3 or list(logits.shape[:2]) != want:
        raise CheckError(f"logits must be float32 [B, T, V] matching input_ids {list(ids.shape)} (T + virtual tokens), "
                         f"got {logits.dtype} {list(logits.shape)}")
    return ids, logits


class CheckError(Exception):
    pass


def load_model(path, reward=False, pad_token_id=None):
    if reward:
        # A reward model: a LlamaForSequenceClassification folder (full), or the base grown a score
        # head for a SEQ_CLS adapter, pooling at the last token that is not the pad token.
        extra = {"num_labels": 1} if pad_token_id is not None else {}
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True, **extra)
        if pad_token_id is not None:
            model.config.pad_token_id = pad_token_id
        return model, info
    # `recipe quantize` folders (quantized4: NF4 + double quant, quantized8: LLM.int8) carry a
    # quantization_config: transformers loads them through bitsandbytes, on the CPU here.
    extra = {"device_map": "cpu"} if os.path.basename(path).startswith("quantized") else {}
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                                       output_loading_info=True, **extra)
    for m in model.modules():
        # bitsandbytes may pick a bf16 packed CPU kernel for eval-mode 4-bit layers on CPUs with
        # AVX512-BF16; keep the fp32 path so results do not depend on the machine.
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    return model, info


def resolve_base(name):
    if os.path.isabs(name):
        return name
    for start in (os.getcwd(), ROOT):
        p = os.path.join(start, name)
        if os.path.isdir(p):
            return os.path.abspath(p)
    raise CheckError(f"base_model_name_or_path {name!r} is not a folder here or under {ROOT}")


def tokenizer_info(case_dir, rec):
    tok = AutoTokenizer.from_pretrained(case_dir)
    rec["tokenizer_class"] = type(tok).__name__
    rec["tokenizer_len"] = len(tok)


def check_lora(case_dir, rec):
    with open(os.path.join(case_dir, "adapter_config.json")) as f:
        acfg = json.load(f)
    base_name = acfg.get("base_model_name_or_path")
    if not base_name:
        raise CheckError("adapter_config.json has no base_model_name_or_path")
    rec["base_model"] = os.path.basename(os.path.normpath(base_name))
    rec["base_model_path_is_absolute"] = os.path.isabs(base_name)
    reward = acfg.get("task_type") == "SEQ_CLS"
    rec["task_type"] = acfg.get("task_type")
    pad = None
    if reward:
        tok = AutoTokenizer.from_pretrained(case_dir if os.path.isfile(os.path.join(case_dir, "tokenizer.json"))
                                            else resolve_base(base_name))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    base, info = load_model(resolve_base(base_name), reward=reward, pad_token_id=pad)
    # The base has no score head: transformers draws one, which the adapter's saved copy replaces.
    base_issues = {k: [x for x in v if not (reward and str(x).startswith("score."))] for k, v in info.items()
                   if k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    base_issues = {k: v for k, v in base_issues.items() if v}
    if base_issues:
        raise CheckError(f"base model loading: {base_issues}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, case_dir)
    peft_warnings = [str(w.message) for w in caught
                     if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    model.eval()

    saved = load_file(os.path.join(case_dir, "adapter_model.safetensors"))
    with warnings.catch_warnings():
        # peft looks for the base config.json under the path as written (to see whether the
        # vocabulary changed); a relative path it cannot find only draws this note.
        warnings.filterwarnings("ignore", message="Could not find a config file")
        loaded = get_peft_model_state_dict(model)
    missing = sorted(set(loaded) - set(saved))  # the model has them, the file does not
    unexpected = sorted(set(saved) - set(loaded))  # the file has them, peft did not load them
    differ = sorted(k for k in set(saved) & set(loaded)
                    if loaded[k].shape != saved[k].shape
                    or not torch.equal(loaded[k].detach().cpu(), saved[k].to(loaded[k].dtype)))
    rec["adapter_tensors"] = len(saved)
    rec["adapter_file_dtypes"] = sorted({str(t.dtype).replace("torch.", "") for t in saved.values()})
    rec["adapter_missing_keys"] = missing
    rec["adapter_unexpected_keys"] = unexpected
    rec["adapter_values_differ"] = differ
    rec["peft_warnings"] = peft_warnings
    rec["peft_type"] = acfg.get("peft_type")
    if acfg.get("peft_type") in ("PROMPT_TUNING", "PREFIX_TUNING"):
        rec["virtual_tokens"] = {k: acfg.get(k) for k in ("peft_type", "num_virtual_tokens", "token_dim",
                                                          "num_attention_heads", "prompt_tuning_init")}
    else:
        rec["lora"] = {k: acfg.get(k) for k in ("r", "lora_alpha", "use_rslora", "use_dora", "modules_to_save")}
        if acfg.get("peft_type") == "IA3":
            rec["lora"]["feedforward_modules"] = sorted(acfg.get("feedforward_modules") or [])
        rec["lora"]["target_modules"] = (sorted(acfg["target_modules"])
                                         if isinstance(acfg.get("target_modules"), list)
                                         else acfg.get("target_modules"))
    ok = not (missing or unexpected or differ or peft_warnings)
    if not saved:
        ok = False
        rec["note"] = "adapter_model.safetensors is empty"
    return model, ok


def check_model(case_dir, rec):
    model, info = load_model(case_dir, reward=os.path.basename(case_dir).startswith("reward"))
    model.eval()
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        rec[k] = sorted(str(x) for x in info.get(k, []))
    rec["model_type"] = model.config.model_type
    rec["vocab_size"] = model.config.vocab_size
    with open(os.path.join(case_dir, "config.json")) as f:
        rec["config_tie_word_embeddings"] = json.load(f).get("tie_word_embeddings")
    ok = not (rec["missing_keys"] or rec["unexpected_keys"] or rec["mismatched_keys"])
    return model, ok


def check_peft_merge(adapter_dir, merged_dir, rec):
    """peft's merge_and_unload of the adapter against the weights recipe merged."""
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        base_name = json.load(f)["base_model_name_or_path"]
    base, _ = load_model(resolve_base(base_name))
    want = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().state_dict()
    got = load_file(os.path.join(merged_dir, "model.safetensors"))
    # A tied head is one tensor: transformers' state_dict lists it twice, the file once.
    missing = sorted(k for k in want if k not in got and not (k == "lm_head.weight" and base.config.tie_word_embeddings))
    unexpected = sorted(k for k in got if k not in want)
    worst = max((want[k].float() - got[k].float()).abs().max().item() for k in got if k in want)
    rec["peft_merge_missing_keys"] = missing
    rec["peft_merge_unexpected_keys"] = unexpected
    rec["peft_merge_max_abs_diff"] = worst
    rec["peft_merge_ok"] = bool(not missing and not unexpected and math.isfinite(worst) and worst < MERGE_TOL)
    return rec["peft_merge_ok"]


def run_case(name, case_dir):
    rec = {}
    try:
        ids, want = load_recipe_logits(case_dir)
        rec["input_ids_shape"] = list(ids.shape)
        rec["recipe_logits_shape"] = list(want.shape)
        torch.manual_seed(0)
        if name.startswith(("lora", "ia3")) or name in ("reward_lora", "prompt_tuning", "prefix_tuning",
                                                                  "prefix_projection"):
            model, load_ok = check_lora(case_dir, rec)
        else:
            model, load_ok = check_model(case_dir, rec)
        rec["load_ok"] = bool(load_ok)
        try:
            tokenizer_info(case_dir, rec)
            rec["tokenizer_ok"] = True
        except Exception as e:  # noqa: BLE001 (reported, and the logits are still compared)
            rec["tokenizer_error"] = f"{type(e).__name__}: {e}"
            rec["tokenizer_ok"] = False
        if name == "quantized8":
            # LLM.int8's eval forward also quantizes the activations (threshold 6); recipe trains
            # with bitsandbytes' CPU training path (dequantized weight, fp activations), which
            # bitsandbytes takes in train mode. Llama has no dropout here, so only that path changes.
            model.train()
        with torch.no_grad():
            got = model(input_ids=ids, use_cache=False).logits.float()
        rec["logits_shape"] = list(got.shape)
        if got.shape != want.shape:
            raise CheckError(f"logits shape {list(got.shape)} != recipe's {list(want.shape)}")
        diff = (got - want).abs().max().item()
        # JSON has no NaN or Infinity: a non-finite difference is written as a string.
        rec["max_abs_diff"] = diff if math.isfinite(diff) else str(diff)
        rec["logits_ok"] = bool(math.isfinite(diff) and diff < TOL)
        rec["pass"] = rec["logits_ok"] and rec["load_ok"] and rec["tokenizer_ok"]
        adapter_of = {"merged_dora": "lora_dora", "merged_ia3": "ia3"}
        if name in adapter_of:
            merge_ok = check_peft_merge(os.path.join(os.path.dirname(case_dir), adapter_of[name]), case_dir, rec)
            rec["pass"] = rec["pass"] and merge_ok
    except Exception as e:  # noqa: BLE001 (every failure is reported per case)
        rec["error"] = f"{type(e).__name__}: {e}"
        rec["pass"] = False
        rec.setdefault("max_abs_diff", None)
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", default=None,
                    help="artifacts folder (default ${CARGO_TARGET_DIR:-target}/tmp/outputs-check)")
    ap.add_argument("--report", default=os.path.join(ROOT, REPORT),
                    help=f"where to write the JSON report (default {REPORT} in the repository)")
    args = ap.parse_args()
    art = os.path.abspath(args.dir) if args.dir else default_dir()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)

    present = [c for c in CASES if os.path.isfile(os.path.join(art, c, LOGITS_FILE))]
    if not present:
        print(f"no artifacts under {art} (looked for {{{','.join(CASES)}}}/{LOGITS_FILE}); "
              f"run `cargo test --test outputs` first", file=sys.stderr)
        sys.exit(2)

    cases, skipped = {}, {}
    for c in CASES:
        case_dir = os.path.join(art, c)
        if c not in present:
            why = "folder absent" if not os.path.isdir(case_dir) else f"no {LOGITS_FILE}"
            skipped[c] = why
            print(f"note: skipping {c}: {why} ({case_dir})")
            continue
        cases[c] = run_case(c, case_dir)

    print(f"\n{'case':12s} {'max abs diff':>14s}  {'loads':5s}  {'tokenizer':9s}  result")
    for c, rec in cases.items():
        d = rec.get("max_abs_diff")
        ds = "-" if d is None else (f"{d:.3e}" if isinstance(d, float) else d)
        loads = "-" if "load_ok" not in rec else ("ok" if rec["load_ok"] else "BAD")
        toks = "-" if "tokenizer_ok" not in rec else ("ok" if rec["tokenizer_ok"] else "BAD")
        print(f"{c:12s} {ds:>14s}  {loads:5s}  {toks:9s}  {'pass' if rec['pass'] else 'FAIL'}")
    for c, rec in cases.items():
        for k in ("error", "tokenizer_error"):
            if rec.get(k):
                print(f"  {c}: {k}: {rec[k][:500]}")
        if "peft_merge_max_abs_diff" in rec:
            print(f"  {c}: peft merge_and_unload vs recipe merge: max abs diff {rec['peft_merge_max_abs_diff']:.3e}")
        for k in ("adapter_missing_keys", "adapter_unexpected_keys", "adapter_values_differ",
                  "peft_merge_missing_keys", "peft_merge_unexpected_keys",
                  "peft_warnings", "missing_keys", "unexpected_keys", "mismatched_keys"):
            if rec.get(k):
                print(f"  {c}: {k}: {rec[k]}")
        if "tokenizer_len" in rec:
            print(f"  {c}: tokenizer {rec['tokenizer_class']}, {rec['tokenizer_len']} tokens; "
                  f"logits {rec['logits_shape']}")
    versions = {"transformers": transformers.__version__, "peft": peft.__version__,
                "torch": torch.__version__, "safetensors": safetensors.__version__}
    print(f"tolerance {TOL:g}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    all_pass = all(rec["pass"] for rec in cases.values())
    report = {"cases": cases, "skipped": skipped, "tolerance": TOL, "versions": versions,
              "pass": all_pass}
    os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
    with open(args.report, "w") as f:
        f.write(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n")
    print(f"wrote {args.report}")
    sys.exit(0 if all_pass else 1)


if __name__ == "__main__":
    main()

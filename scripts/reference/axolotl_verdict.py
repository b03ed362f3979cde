"""Axolotl's own verdict on every config of an Axolotl checkout's examples/ (developer-only).

For each *.yml / *.yaml under CHECKOUT/examples, loads it as Axolotl's CLI does (`yaml.safe_load` into a
`DictDefault`, `axolotl_config_path` set, the `plugins:` registered and each plugin's `register(cfg)` called:
axolotl.cli.config.load_cfg / prepare_plugins) and runs Axolotl's own validation,
`axolotl.utils.config.validate_config` (which merges the plugins' schemas with `merge_input_args` and converts
the `datasets:` entries first), imported from CHECKOUT/src: nothing is downloaded, no model config is read.
validate_config is given the capabilities of one H100 (`--gpu`: bf16, fp8, tf32, sm_90, n_gpu 1;
torch_version from the torch on the path), as load_cfg does on a GPU machine, so no hardware check refuses an
example written for a GPU; `--gpu none` validates with the schema alone (load_cfg's Ray path).

Writes one JSON line per file to OUT.jsonl:
  file       path relative to the examples/ folder
  verdict    "accepted"; "rejected": Axolotl refuses the file (pydantic's errors, among them a validator's
             ValueError, the DeprecationWarning Axolotl raises for a removed key, YAML that is not a mapping);
             "crashed": a validator raises another exception on the file (AttributeError, ...: Axolotl fails,
             but that is no verdict on the file); "unknown": no verdict here, because a validator needs a
             package this environment lacks (ImportError), or a plugin the file names cannot be imported (its
             schema is missing; `base` then holds what validation without it says)
  errors     Axolotl's error text, shortened (one entry per pydantic error: location and message)
  dropped    top-level keys that are neither a field nor an alias of the model Axolotl validates with (the
             plugins' schemas merged): pydantic drops them without a word, Axolotl never reads them
  dropped_nested  the same below the top level ("datasets[0].foo", "trl.bar"), from the validated model
             (accepted files; for rejected files only the `datasets:` entries, against the class
             validate_config converts them to)
  mentioned  dropped keys whose quoted name still appears in Axolotl's schema or integration sources (a
             `mode="before"` validator may read a key and drop it; such a key is not "dropped unread")
  plugins_unavailable  [{"plugin", "error"}] plugins that fail to import (Axolotl itself logs and goes on)

Prints a summary grouped by Axolotl's first error and the dropped keys.

Install what it needs beyond the main reference stack (scripts/reference/requirements.txt, in
$RECIPE_CACHE/ref-py) once, without dependency resolution (see requirements-axolotl.txt):
  grep -v '^#' scripts/reference/requirements-axolotl.txt \
    | pip install --target /root/.cache/recipe/ref-axolotl --no-deps -r /dev/stdin
  scripts/tracking-tools.sh wandb        # wandb (the cut_cross_entropy and diffusion plugins import it)
Run (an Axolotl checkout with src/, examples/ and deepspeed_configs/, e.g. at 067b021c; it runs from the
checkout, as Axolotl runs from its repository root; torchao makes `fp8: true` pass
accelerate's is_fp8_available as on a GPU machine with Axolotl installed):
  C=$HOME/.cache/recipe
  PYTHONPATH=CHECKOUT/src:$C/ref-axolotl:$C/ref-py:$C/torch-2.11.0:$C/ref-torchao:$C/wandb-0.31.0 \\
    HF_HUB_OFFLINE=1 python3 -S scripts/reference/axolotl_verdict.py CHECKOUT OUT.jsonl
scripts/axolotl-examples.sh --axolotl-verdict OUT.jsonl reads the output.
"""

import argparse
import collections
import copy
import json
import logging
import os
import re
import sys
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def shorten(text, n=200):
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def field_names(model_cls):
    """Names a pydantic model reads a key by: field names (populate_by_name) and their aliases."""
    from pydantic import AliasChoices, AliasPath

    names = set()
    for name, field in model_cls.model_fields.items():
        names.add(name)
        if field.alias:
            names.add(field.alias)
        va = field.validation_alias
        choices = va.choices if isinstance(va, AliasChoices) else [va] if va is not None else []
        for choice in choices:
            if isinstance(choice, str):
                names.add(choice)
            elif isinstance(choice, AliasPath) and choice.path and isinstance(choice.path[0], str):
                names.add(choice.path[0])
    return names


def allows_extra(model_cls):
    return (getattr(model_cls, "model_config", {}) or {}).get("extra") == "allow"


def dropped_keys(raw, model_cls):
    if not isinstance(raw, dict) or allows_extra(model_cls):
        return []
    known = field_names(model_cls)
    return sorted(str(k) for k in raw if str(k) not in known)


def walk_dropped(raw, instance, prefix):
    """Keys of `raw` (the YAML mapping) the validated pydantic `instance` has no field or alias for, below
    the top level (nested models, lists of models)."""
    from pydantic import BaseModel

    out = []
    if not isinstance(raw, dict) or not isinstance(instance, BaseModel):
        return out
    cls = type(instance)
    if prefix == "fsdp_config":
        # check_fsdp_config_kwargs_prefix (a mode="before" validator) reads `fsdp_config.fsdp_X` as `X`
        # (every key but fsdp_version), before FSDPConfig sees it
        read_as = {k: k.replace("fsdp_", "") if k.startswith("fsdp_") and k != "fsdp_version" else k for k in map(str, raw)}
        known = field_names(cls)
        out += [f"{prefix}.{k}" for k in sorted(read_as) if read_as[k] not in known]
    elif prefix:
        out += [f"{prefix}.{k}" for k in dropped_keys(raw, cls)]
    by_key = {}
    for name, field in cls.model_fields.items():
        by_key[name] = name
        if field.alias:
            by_key[field.alias] = name
    for key, value in raw.items():
        name = by_key.get(str(key))
        if name is None:
            continue
        sub = getattr(instance, name, None)
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and isinstance(sub, BaseModel):
            out += walk_dropped(value, sub, path)
        elif isinstance(value, list) and isinstance(sub, list) and len(value) == len(sub):
            for i, (v, s) in enumerate(zip(value, sub)):
                if isinstance(v, dict) and isinstance(s, BaseModel):
                    out += walk_dropped(v, s, f"{path}[{i}]")
    return out


def dataset_class(cfg, ds):
    """The class validate_config converts a `datasets:` entry to."""
    from axolotl.utils.schemas.datasets import DPODataset, KTODataset, SFTDataset, SyntheticDataset

    if cfg.get("rl") in ["dpo", "ipo", "simpo"]:
        return DPODataset
    if cfg.get("rl") == "kto":
        return KTODataset
    if isinstance(ds, dict) and ds.get("type") == "_synthetic":
        return SyntheticDataset
    return SFTDataset


def error_lines(exc):
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            msg = err.get("msg", "")
            lines.append(shorten(f"{loc}: {msg}" if loc else msg))
        return lines or [shorten(exc)]
    return [shorten(f"{type(exc).__name__}: {exc}")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkout", help="an Axolotl checkout with src/ and examples/ (or the examples/ folder)")
    ap.add_argument("out", help="OUT.jsonl")
    ap.add_argument("--gpu", default="h100", choices=["h100", "none"])
    ap.add_argument("--n-gpu", type=int, default=1)
    args = ap.parse_args()

    checkout = Path(args.checkout).resolve()
    examples = checkout / "examples" if (checkout / "examples").is_dir() else checkout
    out_path = Path(args.out).resolve()
    src = examples.parent / "src"
    if (src / "axolotl").is_dir() and str(src.resolve()) not in [str(Path(p).resolve()) for p in sys.path if p]:
        sys.path.insert(0, str(src))

    logging.disable(logging.WARNING)
    import torch
    import yaml

    from pydantic import ValidationError

    import axolotl
    import axolotl.utils.config as axcfg
    from axolotl.integrations.base import PluginManager, load_plugin
    from axolotl.utils.dict import DictDefault

    logging.disable(logging.WARNING)
    axsrc = Path(axolotl.__file__).parent
    print(f"Axolotl from {axsrc}", file=sys.stderr)

    # quoted names in the sources that read a config (schemas and plugin integrations)
    source_text = "\n".join(
        p.read_text(errors="replace")
        for d in (axsrc / "utils" / "schemas", axsrc / "integrations", axsrc / "utils" / "config")
        for p in d.rglob("*.py")
    )

    if args.gpu == "h100":
        capabilities = {"bf16": True, "fp8": True, "tf32": True, "n_gpu": args.n_gpu, "compute_capability": "sm_90"}
        env_capabilities = {"torch_version": str(torch.__version__).split("+", maxsplit=1)[0]}
    else:
        capabilities = env_capabilities = None

    # validate_config's model instance, to walk nested models for dropped keys
    captured = {}
    original = axcfg._model_with_inherited_default_fallback

    def capture(model_cls, data):
        captured["cls"] = model_cls
        instance = original(model_cls, data)
        captured["instance"] = instance
        return instance

    axcfg._model_with_inherited_default_fallback = capture

    # Axolotl runs from its repository root: a validator that opens `deepspeed: deepspeed_configs/zero3.json`
    # (tensor_parallel_size, deepcompile) reads it from there
    os.chdir(examples.parent)
    files = sorted(p for p in examples.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
    rows = []
    for path in files:
        rel = str(path.relative_to(examples))
        row = {"file": rel, "verdict": None, "errors": [], "dropped": [], "dropped_nested": [],
               "mentioned": [], "plugins_unavailable": []}
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            row.update(verdict="rejected", errors=[shorten(f"YAML: {exc}")])
            rows.append(row)
            continue
        if not isinstance(raw, dict):
            row.update(verdict="rejected", errors=[f"YAML document is a {type(raw).__name__}, not a mapping"])
            rows.append(row)
            continue

        cfg = DictDefault(copy.deepcopy(raw))
        cfg.axolotl_config_path = str(path)
        # prepare_plugins, with a fresh PluginManager per file (it is a process-wide singleton)
        PluginManager._instance = None
        manager = PluginManager.get_instance()
        plugins = raw.get("plugins") or []
        for name in plugins if isinstance(plugins, list) else []:
            try:
                manager.plugins[name] = load_plugin(name)
            except Exception as exc:  # pylint: disable=broad-except
                row["plugins_unavailable"].append({"plugin": name, "error": shorten(f"{type(exc).__name__}: {exc}")})
        captured.clear()
        try:
            for plugin in manager.plugins.values():
                plugin.register(cfg)
            axcfg.validate_config(cfg, capabilities=capabilities, env_capabilities=env_capabilities)
            verdict = "accepted"
        except (ValidationError, ValueError, AssertionError, DeprecationWarning) as exc:
            # pydantic's errors (a validator's ValueError / AssertionError come wrapped in them), and the
            # DeprecationWarning Axolotl raises for a removed key: Axolotl refuses the file
            verdict = "rejected"
            row["errors"] = error_lines(exc)
        except ImportError as exc:
            # a validator needs a package this environment lacks (not the file's fault): no verdict
            verdict = "unknown"
            row["errors"] = error_lines(exc)
        except Exception as exc:  # pylint: disable=broad-except
            # any other exception from a validator: Axolotl fails on the file, but not with a verdict on it
            verdict = "crashed"
            frames = traceback.extract_tb(exc.__traceback__)
            tb = ([f for f in frames if f.filename.startswith(str(axsrc))] or frames)[-1]
            row["errors"] = [shorten(f"{type(exc).__name__}: {exc} (at {Path(tb.filename).name}:{tb.lineno} {tb.name})")]

        # the model validated with (plugins merged), even when validation failed before building it
        model_cls = captured.get("cls")
        if model_cls is None:
            from axolotl.integrations.config import merge_input_args

            model_cls = merge_input_args()[0 if capabilities else 1] if plugins else (
                axcfg.AxolotlConfigWCapabilitiesBase if capabilities else axcfg.AxolotlInputConfigBase)
        row["dropped"] = dropped_keys(raw, model_cls)
        if "instance" in captured:
            row["dropped_nested"] = walk_dropped(raw, captured["instance"], "")
        elif isinstance(raw.get("datasets"), list):
            for i, ds in enumerate(raw["datasets"]):
                if isinstance(ds, dict):
                    row["dropped_nested"] += [f"datasets[{i}].{k}" for k in dropped_keys(ds, dataset_class(raw, ds))]
        row["mentioned"] = sorted(
            k for k in row["dropped"] + [re.sub(r".*\.", "", k) for k in row["dropped_nested"]]
            if re.search(r"""["']""" + re.escape(k) + r"""["']""", source_text)
        )
        if row["plugins_unavailable"] and verdict != "unknown":
            row["base"] = verdict
            verdict = "unknown"
        row["verdict"] = verdict
        rows.append(row)

    with open(out_path, "w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")

    counts = collections.Counter(r["verdict"] for r in rows)
    print(f"{len(rows)} configs (Axolotl at {axsrc.parent}, capabilities: {args.gpu})")
    for v in ["accepted", "rejected", "crashed", "unknown"]:
        print(f"  {v:<9} {counts.get(v, 0):>4}")
    first = collections.Counter(
        r["verdict"] + ": " + re.sub(r"\d+", "N", r["errors"][0])[:110] for r in rows if r["verdict"] != "accepted" and r["errors"])
    print("\nAxolotl rejects / crashes / needs a package, by first error (files):")
    for e, n in first.most_common():
        print(f"  {n:>4}  {e}")
    unknown = collections.Counter(p["plugin"] + " (" + p["error"][:60] + ")" for r in rows for p in r["plugins_unavailable"])
    if unknown:
        print("\nplugins not importable here (files):")
        for e, n in unknown.most_common():
            print(f"  {n:>4}  {e}")
    dropped = collections.Counter(k for r in rows for k in r["dropped"])
    print("\nkeys Axolotl drops unread, top level (files):")
    for k, n in dropped.most_common():
        print(f"  {n:>4}  {k}")
    nested = collections.Counter(re.sub(r"\[\d+\]", "[]", k) for r in rows for k in r["dropped_nested"])
    if nested:
        print("\nkeys Axolotl drops unread, nested (files):")
        for k, n in nested.most_common():
            print(f"  {n:>4}  {k}")
    mentioned = collections.Counter(k for r in rows for k in r["mentioned"])
    if mentioned:
        print("\ndropped keys whose name appears quoted in Axolotl's config sources (files):")
        for k, n in mentioned.most_common():
            print(f"  {n:>4}  {k}")


if __name__ == "__main__":
    main()

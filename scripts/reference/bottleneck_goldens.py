#!/usr/bin/env python3
"""Developer-only: bottleneck-adapter goldens from AdapterHub's `adapters`, for tests/bottleneck.rs.

adapters 1.3.0 pins transformers ~=4.57.6, so it runs from its own folder ahead of the main
reference stack (pinned in scripts/reference/requirements-adapters.txt):

  PYTHONPATH=$HOME/.cache/recipe/ref-adapters:$HOME/.cache/recipe/ref-py:$HOME/.cache/recipe/torch-2.11.0 \\
      python3 -S scripts/reference/bottleneck_goldens.py [--check]

Settings as scripts/reference/model_goldens.py's: CPU, float32, deterministic algorithms, one
thread, eager attention, fixed generator seeds. Nothing is typed by hand: rerun after changing a case.

Cases: tests/golden/bottleneck/<case>/ (bases: the bundled models/stories260k and the random
configs model_goldens.py wrote under tests/golden/model; the script first checks that
transformers 4.57.6 gives those bases' committed logits, within 1e-5)

  stories260k_houlsby   DoubleSeqBnConfig(reduction_factor=16)                 (swish)
  stories260k_pfeiffer  SeqBnConfig(reduction_factor=8)                        (relu)
  llama_untied_houlsby  DoubleSeqBnConfig(reduction_factor=4, non_linearity="gelu")
  mistral_pfeiffer      SeqBnConfig(reduction_factor=2, non_linearity="gelu_new")
  qwen2_houlsby         DoubleSeqBnConfig(reduction_factor=4, non_linearity="tanh")
                        (Qwen2/Qwen3 go through adapters' plugin interface: hooks on o_proj and
                        down_proj, the residual taken before the layer norms)
  qwen3_pfeiffer        SeqBnConfig(reduction_factor=4, non_linearity="silu")
  stories260k_pfeiffer_nf4  SeqBnConfig(reduction_factor=8) over a 4-bit base: from_pretrained with
                        BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute float32), device_map
                        "cpu" (bitsandbytes' bf16 packed CPU kernel switched off, as in qlora_goldens.py)

adapters.init(model); add_adapter("bottleneck", config); train_adapter("bottleneck") (which
freezes the base and activates the adapter). Then, from a generator seeded with 7000 + case
index, in named_parameters order, every adapter tensor is redrawn as 0.05 * randn (adapters'
"bert" init draws normal(0, 0.02) weights and zero biases; the redraw makes every tensor's effect
and gradient visible). save_adapter(case_dir, "bottleneck", use_safetensors=True) writes
adapter_config.json + adapter.safetensors (the head_config.json / model_head.safetensors /
adapter_interface.json it also writes are deleted: no head is trained, and recipe reads the
architecture from the base). With input_ids [2, 16] (generator seed 8000 + case index) and labels
= input_ids with labels[:, :5] = -100, the loss is back-propagated (train mode: dropout is 0),
and expected.safetensors holds
  input_ids int64 [2, 16], labels int64 [2, 16], loss fp32 [], logits fp32 [2, 16, vocab],
  grad.<key> fp32 for every key of adapter.safetensors.
case.json records the base, the config, adapters' trainable count (adapter_summary's #Param,
the same as the parameters with requires_grad) and the versions.

Trainable counts: tests/golden/bottleneck_trainable.json, for built-in model configs
(src/plan/models/*.json, built on the meta device: nothing allocated or downloaded) with
add_adapter + train_adapter as above: the parameters with requires_grad ("trainable") and all
parameters ("all"), as adapters' adapter_summary reports them.
"""
import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    flags = ["-S"] if sys.flags.no_site else []
    os.execv(sys.executable, [sys.executable] + flags + sys.argv)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import filecmp  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
import adapters  # noqa: E402
import safetensors  # noqa: E402
from adapters import DoubleSeqBnConfig, SeqBnConfig  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = "tests/golden/bottleneck"  # relative to ROOT
STORIES = "models/stories260k"
GOLDEN_MODEL = "tests/golden/model"
NAME = "bottleneck"
T = 16
MASKED = 5
STD = 0.05  # the redraw of every adapter tensor

# (case, base relative to ROOT, config class, kwargs)
CASES = [
    ("stories260k_houlsby", STORIES, DoubleSeqBnConfig, dict(reduction_factor=16)),
    ("stories260k_pfeiffer", STORIES, SeqBnConfig, dict(reduction_factor=8)),
    ("llama_untied_houlsby", GOLDEN_MODEL + "/llama_gqa_untied", DoubleSeqBnConfig,
     dict(reduction_factor=4, non_linearity="gelu")),
    ("mistral_pfeiffer", GOLDEN_MODEL + "/mistral", SeqBnConfig, dict(reduction_factor=2, non_linearity="gelu_new")),
    ("qwen2_houlsby", GOLDEN_MODEL + "/qwen2", DoubleSeqBnConfig, dict(reduction_factor=4, non_linearity="tanh")),
    ("qwen3_pfeiffer", GOLDEN_MODEL + "/qwen3_gqa_tied", SeqBnConfig, dict(reduction_factor=4, non_linearity="silu")),
    # Appended after the others so their seeds (case index) and files stay as they were.
    ("stories260k_pfeiffer_nf4", STORIES, SeqBnConfig, dict(reduction_factor=8)),
]
QUANT = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
             bnb_4bit_compute_dtype=torch.float32)
ARCH_OF = {DoubleSeqBnConfig: "houlsby", SeqBnConfig: "pfeiffer"}


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def meta():
    # One key only: safetensors writes the metadata map in hash order.
    return {"generator": f"scripts/reference/bottleneck_goldens.py (adapters {adapters.__version__}, "
                         f"transformers {transformers.__version__}, torch {torch.__version__}, "
                         f"safetensors {safetensors.__version__})"}


def write_json(obj, path):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_base(rel):
    m = AutoModelForCausalLM.from_pretrained(rel, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def load_nf4(rel):
    from transformers import BitsAndBytesConfig
    m = AutoModelForCausalLM.from_pretrained(rel, quantization_config=BitsAndBytesConfig(**QUANT),
                                             dtype=torch.float32, device_map="cpu", attn_implementation="eager")
    no_packed_kernel(m)
    return m.eval()


def no_packed_kernel(m):
    import bitsandbytes as bnb
    n = 0
    for mod in m.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = False  # no bf16 packed kernel, on any CPU
            n += 1
    assert n == 7 * m.config.num_hidden_layers, n


def check_base(rel):
    """transformers 4.57.6 reads the committed random bases (written by 5.x) as 5.x computed them."""
    expected = os.path.join(rel, "expected.safetensors")
    if not os.path.exists(expected):
        return None
    g = load_file(expected)
    with torch.no_grad():
        logits = load_base(rel)(input_ids=g["input_ids"], use_cache=False).logits
    d = (logits - g["logits"]).abs().max().item()
    assert d < 1e-5, f"{rel}: transformers {transformers.__version__} gives other base logits ({d:e})"
    return d


# (model config, config class, kwargs) for the trainable counts.
COUNT_CASES = [
    ("meta-llama/Meta-Llama-3-8B", DoubleSeqBnConfig, dict()),
    ("meta-llama/Meta-Llama-3-8B", SeqBnConfig, dict()),
    ("mistralai/Mistral-7B-v0.1", SeqBnConfig, dict(reduction_factor=32)),
    ("Qwen/Qwen2.5-0.5B", DoubleSeqBnConfig, dict(reduction_factor=8)),
    ("Qwen/Qwen3-0.6B", SeqBnConfig, dict(reduction_factor=3)),
]


def count_goldens(out):
    rows = []
    for hub_id, cfg_cls, kw in COUNT_CASES:
        path = os.path.join(ROOT, "src", "plan", "models", hub_id.replace("/", "--") + ".json")
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(path, os.path.join(tmp, "config.json"))
            cfg = transformers.AutoConfig.from_pretrained(tmp)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
            adapters.init(model)
            model.add_adapter(NAME, config=cfg_cls(**kw))
            model.train_adapter(NAME)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        summary = [r for r in model.adapter_summary(as_dict=True) if r["name"] == NAME][0]
        assert summary["#param"] == trainable, (summary, trainable)
        rows.append({"model": hub_id, "adapter_config": ARCH_OF[cfg_cls], "config": kw, "trainable": trainable,
                     "all": sum(p.numel() for p in model.parameters())})
        print(f"{hub_id} {ARCH_OF[cfg_cls]} {kw}: trainable {trainable:,d}")
    os.makedirs(os.path.join(out, "tests/golden"), exist_ok=True)
    write_json(rows, os.path.join(out, "tests/golden/bottleneck_trainable.json"))


def case_goldens(out):
    for index, (case, base_rel, cfg_cls, kw) in enumerate(CASES):
        case_dir = os.path.join(out, OUT, case)
        os.makedirs(case_dir)
        base_diff = check_base(base_rel)
        torch.manual_seed(0)
        nf4 = case.endswith("_nf4")
        model = load_nf4(base_rel) if nf4 else load_base(base_rel)
        adapters.init(model)
        if nf4:
            no_packed_kernel(model)  # adapters.init rewraps the linears (its LoRALinear)
        model.add_adapter(NAME, config=cfg_cls(**kw))
        model.train_adapter(NAME)
        g = gen(7000 + index)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(f".adapters.{NAME}." in n for n in trainable), list(trainable)
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(STD * torch.randn(p.shape, generator=g))
        model.save_adapter(case_dir, NAME, use_safetensors=True)
        for extra in ("head_config.json", "model_head.safetensors", "adapter_interface.json",
                      "pytorch_model_head.bin"):
            path = os.path.join(case_dir, extra)
            if os.path.exists(path):
                os.remove(path)
        saved = load_file(os.path.join(case_dir, "adapter.safetensors"))
        assert set(saved) == set(trainable), (sorted(saved), sorted(trainable))

        ids = torch.randint(0, model.config.vocab_size, (2, T), generator=gen(8000 + index))
        labels = ids.clone()
        labels[:, :MASKED] = -100
        model.train()
        model.zero_grad(set_to_none=True)
        res = model(input_ids=ids, labels=labels, use_cache=False)
        res.loss.backward()
        model.eval()
        with torch.no_grad():
            again = model(input_ids=ids, use_cache=False).logits
        assert torch.equal(again, res.logits), "train and eval logits differ (dropout?)"
        tensors = {"input_ids": ids, "labels": labels, "loss": res.loss.detach().float(),
                   "logits": res.logits.detach().float()}
        for name, p in trainable.items():
            assert p.grad is not None and p.grad.abs().max().item() > 0, f"{case}: no gradient for {name}"
            tensors["grad." + name] = p.grad
        save_file({k: v.detach().contiguous() for k, v in tensors.items()},
                  os.path.join(case_dir, "expected.safetensors"), metadata=meta())
        count = sum(p.numel() for p in trainable.values())
        write_json({"base_model": base_rel, "adapter_config": ARCH_OF[cfg_cls], "config": kw,
                    "config_class": cfg_cls.__name__, "adapter_weights_std": STD,
                    "trainable_params": count, "seq_len": T, "labels_masked_prefix": MASKED,
                    "base_logits_vs_committed": base_diff,
                    "quantization": QUANT | {"bnb_4bit_compute_dtype": "float32"} if nf4 else None,
                    "adapters_version": adapters.__version__,
                    "transformers_version": transformers.__version__},
                   os.path.join(case_dir, "case.json"))
        print(f"{case}: loss {res.loss.item():.6f}, {len(saved)} adapter tensors, trainable {count:,d}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with tests/golden instead of writing")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as stage:
        os.symlink(os.path.join(ROOT, "models"), os.path.join(stage, "models"))
        os.makedirs(os.path.join(stage, "tests/golden"))
        os.symlink(os.path.join(ROOT, GOLDEN_MODEL), os.path.join(stage, GOLDEN_MODEL))
        cwd = os.getcwd()
        os.chdir(stage)
        try:
            case_goldens(stage)
            count_goldens(stage)
        finally:
            os.chdir(cwd)
        bad = 0
        written = [os.path.join(OUT, os.path.relpath(os.path.join(d, n), os.path.join(stage, OUT)))
                   for d, _, names in os.walk(os.path.join(stage, OUT)) for n in sorted(names)]
        for rel in written + ["tests/golden/bottleneck_trainable.json"]:
            if True:
                src, dst = os.path.join(stage, rel), os.path.join(ROOT, rel)
                if args.check:
                    if not (os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False)):
                        print(f"differs: {rel}", file=sys.stderr)
                        bad = 1
                else:
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copyfile(src, dst)
                    print(f"wrote {rel:70s} {os.path.getsize(src):>8,d} bytes")
        if args.check:
            sys.exit(bad)


if __name__ == "__main__":
    main()

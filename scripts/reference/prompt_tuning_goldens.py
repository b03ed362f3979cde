#!/usr/bin/env python3
"""Developer-only: prompt- and prefix-tuning goldens from peft (PROMPT_TUNING and PREFIX_TUNING,
CAUSAL_LM), for the Rust code (tests/prompt_tuning.rs).

Everything runs on the CPU in float32 with torch.use_deterministic_algorithms(True), one thread,
attn_implementation="eager". Random numbers come from torch.Generator objects with fixed seeds, so
two runs write byte-identical files (checked with --check). Nothing is typed by hand: rerun this
script after changing a case.

Cases, each written to tests/golden/<method>/<case>/ (method prompt_tuning or prefix_tuning) by
peft's save_pretrained (adapter_config.json, adapter_model.safetensors with `prompt_embeddings`)
plus case.json and expected.safetensors:

   case                   base                              init
   stories260k_text       models/stories260k (tied, GQA)    TEXT "Once upon a time" (5 ids with
                                                            BOS, repeated to 7 virtual tokens)
   llama_gqa_untied_random tests/golden/model/llama_gqa_untied RANDOM (peft's nn.Embedding,
                          (untied head, 4 heads, 2 kv)      normal(0, 1)), 4 virtual tokens,
                                                            drawn under torch.manual_seed(0)
   prefix_tuning/stories260k_prefix      models/stories260k, PrefixTuningConfig 6 virtual tokens,
                                         no projection (peft sizes the prefix by the 4 key/value
                                         heads: token_dim 32), nn.Embedding normal(0, 1) under
                                         torch.manual_seed(0); batch as stories260k_text
   prefix_tuning/llama_gqa_untied_prefix tests/golden/model/llama_gqa_untied, 3 virtual tokens;
                                         batch as llama_gqa_untied_random
   prefix_tuning/stories260k_projection_prefix  models/stories260k, 5 virtual tokens through peft's
                                         PrefixEncoder MLP (prefix_projection, encoder_hidden_size
                                         16; torch's default init under torch.manual_seed(0)):
                                         peft saves the MLP's output as prompt_embeddings, so the
                                         folder is read as plain keys and values; the MLP's own
                                         tensors and gradients are goldens too (init.<name>,
                                         grad.<name>, peft's parameter names)
   prefix_tuning/llama_gqa_untied_projection_prefix  tests/golden/model/llama_gqa_untied, 3 virtual
                                         tokens through the MLP at peft's default
                                         encoder_hidden_size (the key/value width); batch as
                                         llama_gqa_untied_random
Prefix tuning hands the prefix to the model as past key values: logits are [2, T, V] (no virtual
positions), the real tokens' positions are N..N+T-1.

The prompt embeddings are used as peft initialises them (no perturbation: TEXT gives the word
embeddings, RANDOM normal(0, 1)). The batch is two rows of T = 16 ids, uniform over the vocab
(generator seeded with 5000 + case index; stories260k's rows start with BOS, id 1):
   stories260k_text: labels = input_ids (so each row's first label counts: the last virtual
       token predicts it), the second row right-padded after 12 tokens (attention_mask 0,
       labels -100, input id 0 there).
   llama_gqa_untied_random: labels = input_ids with the first 5 positions -100, no padding.
peft's forward puts the virtual tokens in front (inputs_embeds), extends attention_mask with
ones and labels with -100, and transformers numbers positions 0..N+T-1.

expected.safetensors:
   input_ids        int64 [2, T]
   labels           int64 [2, T]        as given to peft (before its -100 prefix)
   attention_mask   int64 [2, T]
   logits           fp32  [2, N + T, V] peft's logits (virtual positions first)
   loss             fp32  []            peft's loss (mean over counted tokens)
   init.prompt_embeddings fp32 [N, H]   the prompt embeddings at the start (= the saved ones)
   grad.prompt_embeddings fp32 [N, H]   their gradient after loss.backward() (not for the projection)
   init.<name>, grad.<name>             (projection cases) each trainable tensor of peft's
                                        PrefixEncoder under its name in peft's model
                                        (prompt_encoder.default.embedding.weight,
                                        ….transform.0.weight/bias, ….transform.2.weight/bias) and
                                        its gradient; trainable_params in case.json is peft's
                                        get_nb_trainable_parameters()
   greedy_prompt    int64 [P]           (stories260k cases only) a prompt's ids, BOS first
   greedy_ids       int64 [P + 12]      greedy decoding through PeftModelForCausalLM.forward: 12
                                        times, the argmax of the last position's logits of the
                                        whole sequence so far (virtual tokens in front) appended.

Why not peft's generate(): with peft 0.21.2 and transformers 5.24, generate() passes the KV cache
to the model as `cache`, while peft's prepare_inputs_for_generation looks for `past_key_values`;
finding none, it puts the virtual tokens in front again at every decoding step (each step feeds
N + 1 embeddings and appends them to the cache), so its output drifts from peft's own forward
after a few tokens. This script computes generate()'s ids too and prints whether they still
differ, so a fixed peft shows up here.
"""

import argparse
import filecmp
import json
import os
import shutil
import sys
import tempfile

import peft
import safetensors
import torch
import transformers
from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GOLDEN = "tests/golden"
STORIES = "models/stories260k"
T = 16

# (method, case, base path relative to ROOT, config kwargs, masked label prefix, padded row length)
CASES = [
    ("prompt_tuning", "stories260k_text", STORIES,
     dict(num_virtual_tokens=7, prompt_tuning_init="TEXT", prompt_tuning_init_text="Once upon a time",
          tokenizer_name_or_path=STORIES), 0, 12),
    ("prompt_tuning", "llama_gqa_untied_random", GOLDEN + "/model/llama_gqa_untied",
     dict(num_virtual_tokens=4, prompt_tuning_init="RANDOM"), 5, None),
    ("prefix_tuning", "stories260k_prefix", STORIES, dict(num_virtual_tokens=6), 0, 12),
    ("prefix_tuning", "llama_gqa_untied_prefix", GOLDEN + "/model/llama_gqa_untied", dict(num_virtual_tokens=3), 5, None),
    ("prefix_tuning", "stories260k_projection_prefix", STORIES,
     dict(num_virtual_tokens=5, prefix_projection=True, encoder_hidden_size=16), 0, 12),
    ("prefix_tuning", "llama_gqa_untied_projection_prefix", GOLDEN + "/model/llama_gqa_untied",
     dict(num_virtual_tokens=3, prefix_projection=True), 5, None),
]
GREEDY_TEXT = "Once upon a time, there was a"
GREEDY_NEW = 12


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def meta():
    # One key only: safetensors writes the metadata map in hash order.
    return {"generator": f"scripts/reference/prompt_tuning_goldens.py (transformers {transformers.__version__}, "
                         f"peft {peft.__version__}, torch {torch.__version__}, "
                         f"safetensors {safetensors.__version__})"}


def write_json(obj, path):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def goldens(out):
    for index, (method, case, base_rel, kw, masked, padded) in enumerate(CASES):
        case_dir = os.path.join(out, GOLDEN, method, case)
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(base_rel, dtype=torch.float32, attn_implementation="eager")
        base.eval()
        config = PromptTuningConfig if method == "prompt_tuning" else PrefixTuningConfig
        model = get_peft_model(base, config(task_type="CAUSAL_LM", **kw))
        model.eval()
        model.save_pretrained(case_dir, safe_serialization=True)
        readme = os.path.join(case_dir, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        saved = load_file(os.path.join(case_dir, "adapter_model.safetensors"))
        assert sorted(saved) == ["prompt_embeddings"], sorted(saved)
        weight = model.prompt_encoder["default"].embedding.weight
        projected = kw.get("prefix_projection", False)
        if projected:
            # peft saves the MLP's output: the keys and values themselves.
            with torch.no_grad():
                want = model.prompt_encoder["default"](torch.arange(kw["num_virtual_tokens"]))
            assert torch.allclose(saved["prompt_embeddings"], want), "projected prefix"
        else:
            assert torch.equal(saved["prompt_embeddings"], weight.detach())

        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (2, T), generator=gen(5000 + index))
        if base_rel == STORIES:
            ids[:, 0] = 1
        attention_mask = torch.ones_like(ids)
        labels = ids.clone()
        labels[:, :masked] = -100
        if padded is not None:
            ids[1, padded:] = 0
            attention_mask[1, padded:] = 0
            labels[1, padded:] = -100
        model.zero_grad(set_to_none=True)
        res = model(input_ids=ids, attention_mask=attention_mask, labels=labels, use_cache=False)
        res.loss.backward()
        n = kw["num_virtual_tokens"]
        shown = n if method == "prompt_tuning" else 0
        assert res.logits.shape == (2, shown + T, vocab), res.logits.shape
        grad = weight.grad
        assert grad is not None and grad.abs().max().item() > 0
        tensors = {"input_ids": ids, "labels": labels, "attention_mask": attention_mask,
                   "logits": res.logits.detach().float(), "loss": res.loss.detach().float(),
                   "init.prompt_embeddings": saved["prompt_embeddings"]}
        if not projected:
            tensors["grad.prompt_embeddings"] = grad
        else:
            for name, p in model.named_parameters():
                if p.requires_grad:
                    assert name.startswith("prompt_encoder.default."), name
                    assert p.grad is not None and p.grad.abs().max().item() > 0, name
                    tensors["init." + name] = p.detach().clone()
                    tensors["grad." + name] = p.grad
        if base_rel == STORIES and not projected:
            tok = transformers.AutoTokenizer.from_pretrained(STORIES)
            prompt = torch.tensor([tok(GREEDY_TEXT)["input_ids"]])
            greedy = prompt
            with torch.no_grad():
                for _ in range(GREEDY_NEW):
                    logits = model(input_ids=greedy, attention_mask=torch.ones_like(greedy)).logits
                    greedy = torch.cat([greedy, logits[:, -1].argmax(-1, keepdim=True)], 1)
                generated = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                           do_sample=False, max_new_tokens=GREEDY_NEW)
            agree = generated.shape == greedy.shape and torch.equal(generated, greedy)
            print(f"{case}: peft generate() {'equals' if agree else 'differs from'} greedy decoding through "
                  f"its forward ({generated[0, prompt.shape[1]:].tolist()} vs {greedy[0, prompt.shape[1]:].tolist()})")
            tensors["greedy_prompt"] = prompt[0]
            tensors["greedy_ids"] = greedy[0]
        save_file({k: v.detach().contiguous() for k, v in tensors.items()},
                  os.path.join(case_dir, "expected.safetensors"), metadata=meta())
        trainable_params = model.get_nb_trainable_parameters()[0]
        write_json({"base_model": base_rel, method: kw, "seq_len": T, "labels_masked_prefix": masked,
                    "trainable_params": trainable_params,
                    "padded_row_length": padded, "transformers_version": transformers.__version__,
                    "peft_version": peft.__version__},
                   os.path.join(case_dir, "case.json"))
        print(f"{case}: loss {res.loss.item():.6f}, {n} virtual tokens")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with tests/golden instead of writing")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)

    with tempfile.TemporaryDirectory() as stage:
        # The staged tree mirrors ROOT, so relative base paths resolve (and are recorded) as given.
        os.symlink(os.path.join(ROOT, "models"), os.path.join(stage, "models"))
        os.makedirs(os.path.join(stage, GOLDEN))
        os.symlink(os.path.join(ROOT, GOLDEN, "model"), os.path.join(stage, GOLDEN, "model"))
        cwd = os.getcwd()
        os.chdir(stage)
        try:
            goldens(stage)
        finally:
            os.chdir(cwd)

        files = []
        for method in ("prompt_tuning", "prefix_tuning"):
            for dirpath, _, names in os.walk(os.path.join(stage, GOLDEN, method)):
                for n in names:
                    files.append(os.path.relpath(os.path.join(dirpath, n), stage))
        files.sort()
        print(f"transformers {transformers.__version__}, peft {peft.__version__}, "
              f"torch {torch.__version__}, safetensors {safetensors.__version__}")
        bad = 0
        for rel in files:
            src = os.path.join(stage, rel)
            dst = os.path.join(ROOT, rel)
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

#!/usr/bin/env python3
"""Goldens for KTO (tests/preference.rs): TRL 1.16's KTOTrainer (`loss_type="kto"`, beta 0.1,
desirable_weight 1.0, undesirable_weight 1.5) computes the loss, its metrics and every LoRA gradient
on a fixed batch of unpaired rows.

Model: models/stories260k with a new LoRA adapter (r 4, alpha 8, every linear: TRL's reference is
then the base with adapters disabled, as recipe's) whose weights are then set to those of
tests/golden/lora/stories260k_all_linear (B scaled by 0.05) and trained 2 steps of torch Adam (lr
1e-3) on the rows' answers (next-token loss), so the policy leans towards them and its KL estimate is
positive (not only clamped at 0); the weights used are saved too. Rows: the first 4 pairs of
data/preference/shakespeare-continuations.jsonl unpaired as TRL does, taking the chosen answer of
pairs 0 and 2 (desirable) and the rejected answer of pairs 1 and 3 (undesirable); token ids and KL
rows (the answers rotated by one within the batch, `KL_completion_ids`) as the KTOTrainer prepares
them, collated by TRL's DataCollatorForUnpairedPreference.

Writes tests/golden/preference/kto.safetensors: prompt_ids / answer_ids (flat, with *_lengths),
`lora.<peft name>` (the policy's LoRA weights), `desirable`, `loss`, TRL's metrics (`metric.kl`, `metric.rewards.chosen`, ...) and `grad.<peft name>`
for every LoRA tensor.

Run (versions pinned in requirements.txt and requirements-trl.txt):
  PYTHONPATH=$RECIPE_CACHE/ref-py-trl:$RECIPE_CACHE/ref-py:$RECIPE_CACHE/torch-2.11.0 \\
    python3 -S scripts/reference/kto_goldens.py [--check]
"""
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_DISABLED", "true")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models/stories260k")
ADAPTER = os.path.join(ROOT, "tests/golden/lora/stories260k_all_linear")
PAIRS = os.path.join(ROOT, "data/preference/shakespeare-continuations.jsonl")
OUT = os.path.join(ROOT, "tests/golden/preference/kto.safetensors")
SFT_STEPS = 2


def main():
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    check = "--check" in sys.argv
    with open(PAIRS, encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f][:4]
    rows = [
        {"prompt": p["prompt"], "completion": p["chosen"] if i % 2 == 0 else p["rejected"], "label": i % 2 == 0}
        for i, p in enumerate(pairs)
    ]
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    with open(os.path.join(ADAPTER, "adapter_config.json")) as f:
        cfg = json.load(f)
    lora = LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], lora_dropout=0.0,
                      target_modules=cfg["target_modules"], task_type="CAUSAL_LM")
    trained = load_file(os.path.join(ADAPTER, "adapter_model.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        args = KTOConfig(output_dir=tmp, beta=0.1, desirable_weight=1.0, undesirable_weight=1.5,
                         per_device_train_batch_size=4, report_to=[], use_cpu=True, max_length=None)
        trainer = KTOTrainer(model=base, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=lora)
        assert "ref" not in trainer.model.peft_config, "the reference must be the base (adapters disabled)"
        # The rows as the trainer prepared them: its tokenization and its KL completions.
        keys = ("prompt_ids", "completion_ids", "label", "KL_completion_ids")
        examples = [{k: trainer.train_dataset[i][k] for k in keys} for i in range(len(rows))]
        with torch.no_grad():
            for pname, p in trainer.model.named_parameters():
                if "lora_" in pname:
                    p.copy_(trained[pname.replace(".default.", ".")] * (0.05 if "lora_B" in pname else 1.0))
        # A policy that already leans towards these answers (a few steps of supervised training on
        # them), so its KL estimate is positive and the loss exercises it (not only its clamp at 0).
        lora_params = [p for n, p in trainer.model.named_parameters() if "lora_" in n]
        sft = torch.optim.Adam(lora_params, lr=1e-3)
        sft_batch = DataCollatorForUnpairedPreference(pad_token_id=tokenizer.pad_token_id)(
            [{k: e[k] for k in ("prompt_ids", "completion_ids", "label")} for e in examples])
        labels = sft_batch["input_ids"].masked_fill(sft_batch["completion_mask"] == 0, -100)
        for _ in range(SFT_STEPS):
            sft.zero_grad()
            trainer.model(input_ids=sft_batch["input_ids"], attention_mask=sft_batch["attention_mask"],
                          labels=labels).loss.backward()
            sft.step()
        batch = DataCollatorForUnpairedPreference(pad_token_id=tokenizer.pad_token_id)(examples)
        trainer.model.train()
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer._compute_loss(trainer.model, batch, return_outputs=False)
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
        loss.backward()
        grads = {}
        for pname, p in trainer.model.named_parameters():
            if p.requires_grad and "lora_" in pname:
                grads["grad." + pname.replace(".default.", ".")] = p.grad.detach().clone()
    out = {
        "loss": loss.detach().reshape(1).to(torch.float64),
        **{"lora." + n.replace(".default.", "."): p.detach().clone()
           for n, p in trainer.model.named_parameters() if "lora_" in n},
        "desirable": torch.tensor([int(e["label"]) for e in examples], dtype=torch.int64),
        **{"metric." + k.replace("/", "."): torch.tensor([v], dtype=torch.float64) for k, v in metrics.items()},
        **grads,
    }
    for key, name in (("prompt_ids", "prompt"), ("completion_ids", "answer")):
        out[f"{name}_ids"] = torch.tensor([i for e in examples for i in e[key]], dtype=torch.int64)
        out[f"{name}_lengths"] = torch.tensor([len(e[key]) for e in examples], dtype=torch.int64)
    if check:
        old = load_file(OUT)
        worst = max(float((old[k].double() - out[k].double()).abs().max()) for k in out)
        print(f"kto: max difference to the committed golden {worst:.3e}")
        if worst > 1e-6:
            sys.exit(f"{OUT} differs")
    else:
        save_file({k: v.contiguous() for k, v in out.items()}, OUT)
        print(f"kto: loss {loss.item():.6f}, {len(grads)} gradients, metrics {metrics} -> {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()

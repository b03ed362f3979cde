#!/usr/bin/env python3
"""Goldens for reward-model training (tests/reward.rs): TRL 1.16's RewardTrainer computes the
Bradley-Terry loss (with center_rewards_coefficient 0.01), its metrics, each sequence's reward and the
gradient of every trainable tensor on a fixed batch; transformers + peft score two plain texts.

Model: models/stories260k as transformers' LlamaForSequenceClassification (num_labels 1; its new
`score` head drawn under torch.manual_seed(0)), with a new peft LoRA adapter (task SEQ_CLS: peft
keeps `score` trainable in modules_to_save; r 4, alpha 8, every linear) whose LoRA weights are then
set to those of tests/golden/lora/stories260k_all_linear (B non-zero). The adapter as it stands is
saved with peft's save_pretrained into tests/golden/reward/adapter/ (base_model_name_or_path made
relative: models/stories260k), so the test loads exactly this model, the way recipe loads any peft
SEQ_CLS adapter. Batch: the first 4 pairs of data/preference/shakespeare-continuations.jsonl as text
(prompt, chosen, rejected), tokenized and collated by the trainer itself (prompt + answer + EOS, the
tokenizer's BOS first; padding with the pad token, here EOS, on the right).

Writes tests/golden/reward/expected.safetensors: chosen_ids / rejected_ids (flat, with *_lengths),
`rewards` (every chosen sequence's, then every rejected one's), `loss`, TRL's metrics (`metric.accuracy`,
`metric.margin`, `metric.mean_reward`, ...), `grad.<peft saved name>` for every LoRA tensor and the
score head, and `text_scores` for the texts in `TEXTS` (scored one at a time, no padding) with
`text_ids` / `text_lengths`.

Run (versions pinned in requirements.txt and requirements-trl.txt):
  PYTHONPATH=$RECIPE_CACHE/ref-py-trl:$RECIPE_CACHE/ref-py:$RECIPE_CACHE/torch-2.11.0 \\
    python3 -S scripts/reference/reward_goldens.py [--check]
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
OUT = os.path.join(ROOT, "tests/golden/reward")
CENTER = 0.01
TEXTS = ["Once upon a time there was a little dog.", "The sun went down and the stars came out"]


def main():
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    check = "--check" in sys.argv
    with open(PAIRS, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:4]
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=1, dtype=torch.float32)
    with open(os.path.join(ADAPTER, "adapter_config.json")) as f:
        cfg = json.load(f)
    lora = LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], lora_dropout=0.0,
                      target_modules=cfg["target_modules"], task_type="SEQ_CLS")
    trained = load_file(os.path.join(ADAPTER, "adapter_model.safetensors"))
    text = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])
    with tempfile.TemporaryDirectory() as tmp:
        args = RewardConfig(output_dir=tmp, per_device_train_batch_size=4, report_to=[], use_cpu=True,
                            center_rewards_coefficient=CENTER, max_length=None)
        trainer = RewardTrainer(model=model, args=args, train_dataset=text, processing_class=tokenizer,
                                peft_config=lora)
        with torch.no_grad():
            for pname, p in trainer.model.named_parameters():
                if "lora_" in pname:
                    p.copy_(trained[pname.replace(".default.", ".")])
        adapter_dir = os.path.join(OUT, "adapter")
        if not check:
            trainer.model.save_pretrained(adapter_dir)
            config_path = os.path.join(adapter_dir, "adapter_config.json")
            with open(config_path) as f:
                saved = json.load(f)
            saved["base_model_name_or_path"] = "models/stories260k"
            with open(config_path, "w") as f:
                json.dump(saved, f, indent=2, sort_keys=True)
                f.write("\n")
            readme = os.path.join(adapter_dir, "README.md")
            if os.path.exists(readme):
                os.remove(readme)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
        trainer.model.train()
        trainer.model.zero_grad(set_to_none=True)
        loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
        loss.backward()
        grads = {}
        for pname, p in trainer.model.named_parameters():
            if p.requires_grad:
                saved_name = pname.replace(".default.", ".").replace(".modules_to_save.", ".")
                grads["grad." + saved_name] = p.grad.detach().clone()
        ids, mask = batch["input_ids"], batch["attention_mask"]
        sequences = [[int(i) for i, m in zip(row, ms) if int(m) == 1] for row, ms in zip(ids, mask)]
        n = len(rows)
        out = {
            "loss": loss.detach().reshape(1).to(torch.float64),
            "rewards": outputs.logits.detach().reshape(-1).to(torch.float64),
            **{"metric." + k: torch.tensor([v], dtype=torch.float64) for k, v in metrics.items()},
            **grads,
        }
        for key, seqs in (("chosen", sequences[:n]), ("rejected", sequences[n:])):
            out[f"{key}_ids"] = torch.tensor([i for s in seqs for i in s], dtype=torch.int64)
            out[f"{key}_lengths"] = torch.tensor([len(s) for s in seqs], dtype=torch.int64)

    # Scores of plain texts by the saved adapter, loaded as peft loads any adapter.
    torch.manual_seed(1)  # a different draw: the score head must come from the adapter file
    base = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=1, dtype=torch.float32)
    base.config.pad_token_id = tokenizer.eos_token_id
    scorer = PeftModel.from_pretrained(base, os.path.join(OUT, "adapter")).eval()
    text_ids, scores = [], []
    with torch.no_grad():
        for t in TEXTS:
            enc = tokenizer(t, return_tensors="pt")
            text_ids.append(enc["input_ids"][0].tolist())
            scores.append(float(scorer(**enc).logits.reshape(-1)[0]))
    out["text_ids"] = torch.tensor([i for s in text_ids for i in s], dtype=torch.int64)
    out["text_lengths"] = torch.tensor([len(s) for s in text_ids], dtype=torch.int64)
    out["text_scores"] = torch.tensor(scores, dtype=torch.float64)

    path = os.path.join(OUT, "expected.safetensors")
    if check:
        old = load_file(path)
        worst = max(float((old[k].double() - out[k].double()).abs().max()) for k in out)
        print(f"reward: max difference to the committed golden {worst:.3e}")
        if worst > 1e-6:
            sys.exit(f"{path} differs")
    else:
        os.makedirs(OUT, exist_ok=True)
        save_file({k: v.contiguous() for k, v in out.items()}, path)
        print(f"reward: loss {loss.item():.6f}, {len(grads)} gradients, metrics {metrics}, "
              f"text scores {scores} -> {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Goldens for preference training (tests/preference.rs): TRL 1.16 computes the loss, its metrics and
every LoRA gradient on a fixed batch, for each loss recipe builds: its DPOTrainer (`sigmoid` = rl: dpo,
`ipo`; and `sigmoid` with `use_weighting`, WPO's weights = dpo_use_weighting, as dpo_wpo), its experimental CPOTrainer with loss_type="simpo" (rl: simpo, cpo_alpha 1.0, simpo_gamma 0.5,
beta 2.0) and its experimental ORPOTrainer (rl: orpo, beta = orpo_alpha 0.1).

Model: models/stories260k with a new LoRA adapter (peft_config r 4, alpha 8, every linear: TRL's
reference is then the base with adapters disabled, as recipe's) whose weights are then set to those of
tests/golden/lora/stories260k_all_linear (B non-zero), so the policy differs from the reference.
Batch: the first 4 pairs of data/preference/shakespeare-continuations.jsonl, as each trainer tokenizes
the text rows itself. DPO/IPO: the DPOTrainer's prepared dataset, collated by TRL's
DataCollatorForPreference, beta 0.1. SimPO/ORPO: as their trainers tokenize and collate the rows; the
ids written are read back from that batch.

Writes tests/golden/preference/<loss>.safetensors: the ids (prompt_ids / chosen_ids / rejected_ids flat, with
*_lengths), `loss`, TRL's logged metrics (`rewards/chosen`, ...; slashes as `.` in the name), and the
gradient of every LoRA tensor under peft's saved name (`base_model.model....lora_A.weight`).

Run (versions pinned in requirements.txt and requirements-trl.txt):
  PYTHONPATH=$RECIPE_CACHE/ref-py-trl:$RECIPE_CACHE/ref-py:$RECIPE_CACHE/torch-2.11.0 \\
    python3 -S scripts/reference/preference_goldens.py [--check]
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
OUT = os.path.join(ROOT, "tests/golden/preference")
BETA = 0.1
LOSSES = {"sigmoid": "dpo", "ipo": "ipo", "simpo": "simpo", "orpo": "orpo", "sigmoid+wpo": "dpo_wpo"}
SIMPO_BETA = 2.0


def ids_from_pair_batch(batch, side):
    """(prompt ids, answer ids) per row of a CPO/ORPO batch: real tokens whose label is -100 are the
    prompt, the labelled ones the answer."""
    prompts, answers = [], []
    for ids, labels, mask in zip(batch[f"{side}_input_ids"], batch[f"{side}_labels"], batch[f"{side}_attention_mask"]):
        real = [(int(i), int(l)) for i, l, m in zip(ids, labels, mask) if int(m) == 1]
        prompts.append([i for i, l in real if l == -100])
        answers.append([i for i, l in real if l != -100])
    return prompts, answers


def main():
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    check = "--check" in sys.argv
    with open(PAIRS, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:4]
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    os.makedirs(OUT, exist_ok=True)
    for trl_loss, name in LOSSES.items():
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
        with open(os.path.join(ADAPTER, "adapter_config.json")) as f:
            cfg = json.load(f)
        lora = LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], lora_dropout=0.0,
                          target_modules=cfg["target_modules"], task_type="CAUSAL_LM")
        trained = load_file(os.path.join(ADAPTER, "adapter_model.safetensors"))
        # Each trainer prepares these text rows itself (TRL's own tokenization).
        text = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])
        with tempfile.TemporaryDirectory() as tmp:
            common = dict(output_dir=tmp, per_device_train_batch_size=4, report_to=[], use_cpu=True)

            def load_trained_adapter(trainer):
                with torch.no_grad():
                    for pname, p in trainer.model.named_parameters():
                        if "lora_" in pname:
                            p.copy_(trained[pname.replace(".default.", ".")])

            if trl_loss in ("sigmoid", "ipo", "sigmoid+wpo"):
                args = DPOConfig(beta=BETA, loss_type=[trl_loss.split("+")[0]], use_weighting=trl_loss.endswith("+wpo"),
                                 dataset_num_proc=None, max_length=None, **common)
                trainer = DPOTrainer(model=base, args=args, train_dataset=text, processing_class=tokenizer,
                                     peft_config=lora)
                assert "ref" not in trainer.model.peft_config, "the reference must be the base (adapters disabled)"
                load_trained_adapter(trainer)
                examples = [{k: trainer.train_dataset[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                            for i in range(len(rows))]
                collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
                batch = collator(examples)
                trainer.model.train()
                trainer.model.zero_grad(set_to_none=True)
                loss = trainer._compute_loss(trainer.model, batch, return_outputs=False)
                metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()
                           if k.split("/")[0] in ("rewards", "logps", "logits")}
                written = examples
            else:
                if trl_loss == "simpo":
                    args = CPOConfig(beta=SIMPO_BETA, loss_type="simpo", cpo_alpha=1.0, simpo_gamma=0.5, **common)
                    trainer = CPOTrainer(model=base, args=args, train_dataset=text, processing_class=tokenizer,
                                         peft_config=lora)
                else:
                    args = ORPOConfig(beta=BETA, **common)
                    trainer = ORPOTrainer(model=base, args=args, train_dataset=text, processing_class=tokenizer,
                                          peft_config=lora)
                load_trained_adapter(trainer)
                batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
                trainer.model.train()
                trainer.model.zero_grad(set_to_none=True)
                loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch, "train")
                metrics = {k: float(v) for k, v in metrics.items()}
                chosen_prompts, chosen = ids_from_pair_batch(batch, "chosen")
                rejected_prompts, rejected = ids_from_pair_batch(batch, "rejected")
                assert chosen_prompts == rejected_prompts
                written = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
                           for p, c, r in zip(chosen_prompts, chosen, rejected)]
            loss.backward()
            grads = {}
            for pname, p in trainer.model.named_parameters():
                if p.requires_grad and "lora_" in pname:
                    grads["grad." + pname.replace(".default.", ".")] = p.grad.detach().clone()
        out = {
            "loss": loss.detach().reshape(1).to(torch.float64),
            **{"metric." + k.replace("/", "."): torch.tensor([v], dtype=torch.float64) for k, v in metrics.items()},
            **grads,
        }
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            out[key] = torch.tensor([i for e in written for i in e[key]], dtype=torch.int64)
            out[key.replace("_ids", "_lengths")] = torch.tensor([len(e[key]) for e in written], dtype=torch.int64)
        path = os.path.join(OUT, f"{name}.safetensors")
        if check:
            old = load_file(path)
            worst = max(float((old[k].double() - out[k].double()).abs().max()) for k in out)
            print(f"{name}: max difference to the committed golden {worst:.3e}")
            if worst > 1e-6:
                sys.exit(f"{path} differs")
        else:
            save_file({k: v.contiguous() for k, v in out.items()}, path)
            print(f"{name}: loss {loss.item():.6f}, {len(grads)} gradients, metrics {metrics} -> {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()

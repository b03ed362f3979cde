//! Built-in presets: recipe fragments of recommended hyperparameters, layered under a recipe that
//! names them with `preset:`. The table they encode (and that `recipe validate` warns against, see
//! config/rules.rs): LoRA rank 8–64, lora_alpha = 2 × r, learning rate 1e-4 to 5e-4 for LoRA (about
//! 10× a full fine-tune's), micro batch 4–16 by memory, 3–10 epochs with early stopping, sequence
//! length 512–2048.

/// One built-in preset.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub summary: &'static str,
    /// The preset's keys, as a YAML recipe fragment.
    pub yaml: &'static str,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "lora",
        summary: "LoRA on a dense base: rank 16, alpha 32, all linear layers, lr 2e-4, 3 epochs",
        yaml: include_str!("presets/lora.yaml"),
    },
    Preset {
        name: "qlora-13b-24gb",
        summary: "QLoRA for a 13B model on one 24 GB GPU: NF4 + double quant, rank 32, gradient checkpointing",
        yaml: include_str!("presets/qlora-13b-24gb.yaml"),
    },
    Preset {
        name: "full-finetune",
        summary: "Full fine-tuning: lr 2e-5 (about 10x below LoRA), gradient checkpointing, bf16 auto",
        yaml: include_str!("presets/full-finetune.yaml"),
    },
];

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

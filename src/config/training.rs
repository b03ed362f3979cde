//! Batch, schedule, optimizer, precision and the training objective.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// How training proceeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TrainingConfig {
    /// Sequences per device per forward/backward pass (4–16, by memory).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 65536))]
    pub micro_batch_size: u32,
    /// Micro batches accumulated before each optimizer step.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 65536))]
    pub gradient_accumulation_steps: u32,
    /// Axolotl's deprecated per-device batch: in place of `gradient_accumulation_steps` (set one of
    /// the two), it gives gradient_accumulation_steps = batch_size / micro_batch_size, as Axolotl's
    /// normalize_config does; a multiple of micro_batch_size.
    #[serde(default)]
    #[schemars(range(min = 1, max = 4194304))]
    pub batch_size: Option<u32>,
    /// Sequences per evaluation batch. Defaults to `micro_batch_size`.
    #[serde(default)]
    #[schemars(range(min = 1, max = 65536))]
    pub eval_batch_size: Option<u32>,
    /// Passes over the training data (3–10 with early stopping). Fractions are allowed.
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0.0), range(max = 10000.0))]
    pub num_epochs: Option<f64>,
    /// Stop after this many optimizer steps (overrides `num_epochs`).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_steps: Option<u64>,
    /// Peak learning rate (LoRA: 1e-4 to 5e-4; full fine-tuning about 10× lower).
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0.0), range(max = 1.0))]
    pub learning_rate: Option<f64>,
    /// The learning-rate schedule after warmup.
    #[serde(default)]
    pub lr_scheduler: LrScheduler,
    /// Linear warmup length in optimizer steps (exclusive with `warmup_ratio`).
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    /// Linear warmup as a fraction of all steps, in [0, 1] (exclusive with `warmup_steps`).
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub warmup_ratio: Option<f64>,
    /// Cosine decays to this fraction of the peak learning rate instead of 0.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub cosine_min_lr_ratio: Option<f64>,
    /// Cosine reaches `cosine_min_lr_ratio` at this fraction of all steps and stays there (Axolotl's
    /// `get_cosine_schedule_with_warmup_decay_constant`); needs `lr_scheduler: cosine` and a
    /// `cosine_min_lr_ratio` above 0.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub cosine_constant_lr_ratio: Option<f64>,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Decoupled weight decay (AdamW).
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub weight_decay: f64,
    /// AdamW beta1.
    #[serde(default = "default_beta1")]
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub adam_beta1: f64,
    /// AdamW beta2.
    #[serde(default = "default_beta2")]
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub adam_beta2: f64,
    /// AdamW epsilon.
    #[serde(default = "default_epsilon")]
    #[schemars(extend("exclusiveMinimum" = 0.0), range(max = 1.0))]
    pub adam_epsilon: f64,
    /// Clip the global gradient norm to this value (0 turns clipping off).
    #[serde(default = "default_max_grad_norm")]
    #[schemars(range(min = 0.0))]
    pub max_grad_norm: f64,
    /// bfloat16 autocast on CUDA: true, false, or auto (on where the GPU supports it).
    #[serde(default = "Switch::auto")]
    pub bf16: Switch,
    /// Axolotl's `bfloat16`: `true` is `bf16: true` (Axolotl's trainer turns bf16 on for either, and
    /// loads the model in bfloat16); folded into `bf16`.
    #[serde(default)]
    pub bfloat16: Option<bool>,
    /// float16 autocast with loss scaling on CUDA.
    #[serde(default = "Switch::off")]
    pub fp16: Switch,
    /// Allow TF32 matmuls on Ampere and newer GPUs.
    #[serde(default = "Switch::off")]
    pub tf32: Switch,
    /// Recompute each decoder layer's activations in the backward pass: less memory, about 30% more
    /// compute. Axolotl's `offload` is `true` with `activation_offloading: true`.
    #[serde(default)]
    pub gradient_checkpointing: Checkpointing,
    /// Activation offloading (needs `gradient_checkpointing`): on CUDA each checkpointed decoder
    /// layer's input goes to pinned host memory after its forward pass and comes back before its
    /// recomputation; the loss and gradients are unchanged. No effect on CPU (the activations already
    /// live in host memory).
    #[serde(default)]
    pub activation_offloading: bool,
    /// Seed for initialisation, dropout, shuffling and splitting.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Preference training instead of supervised fine-tuning.
    #[serde(default)]
    pub rl: Option<RlMethod>,
    /// DPO's beta: how far the policy may move from the reference model.
    #[serde(default = "default_dpo_beta")]
    #[schemars(extend("exclusiveMinimum" = 0.0), range(max = 100.0))]
    pub dpo_beta: f64,
    /// Axolotl's name for the preference methods' beta (TRL's `beta`): folded into `dpo_beta`, or into
    /// `orpo_alpha` under `rl: orpo` (Axolotl hands it to ORPO as its beta). Write one of the two.
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0.0), range(max = 100.0))]
    pub rl_beta: Option<f64>,
    /// Compute the reference model's log-probabilities of every pair once, before training, instead
    /// of a reference pass per step (TRL's name). Needed by a full fine-tune with `rl:` (the
    /// reference is the model before training); with an adapter it saves the per-step pass.
    #[serde(default)]
    pub precompute_ref_log_probs: bool,
    /// ORPO's weight of the odds-ratio term against the chosen answers' language-modelling loss
    /// (TRL's ORPO `beta`; 0.1 when absent).
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub orpo_alpha: Option<f64>,
    /// SimPO's target reward margin γ (TRL's CPO `simpo_gamma`; 0.5 when absent). SimPO's β is
    /// `dpo_beta`.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub simpo_gamma: Option<f64>,
    /// SimPO's weight of the chosen answers' language-modelling loss (TRL's CPO `cpo_alpha`; 1.0 when
    /// absent, 0 for pure SimPO).
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub cpo_alpha: Option<f64>,
    /// DPO / IPO: weigh each pair's loss by how likely the policy finds both answers, as WPO does
    /// (TRL's `use_weighting`).
    #[serde(default)]
    pub dpo_use_weighting: bool,
    /// KTO's weight of the desirable answers' losses (TRL's `desirable_weight`; 1.0 when absent).
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0.0), range(max = 100.0))]
    pub kto_desirable_weight: Option<f64>,
    /// KTO's weight of the undesirable answers' losses (TRL's `undesirable_weight`; 1.0 when absent).
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0.0), range(max = 100.0))]
    pub kto_undesirable_weight: Option<f64>,
    /// Train a Bradley–Terry reward model on preference pairs (Axolotl's key): a score head on the
    /// last token replaces the language-model head, loss -log σ(r_chosen − r_rejected) as TRL's
    /// RewardTrainer. Reads `type: bradley_terry.chat_template` or `chat_template.default` pairs.
    #[serde(default)]
    pub reward_model: bool,
    /// Reward models: weight of the penalty on (r_chosen + r_rejected)², which keeps rewards centred
    /// on zero (TRL's `center_rewards_coefficient`; none when absent).
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub center_rewards_coefficient: Option<f64>,
    /// Share of each optimizer step's rows drawn from `replay_datasets`, in (0, 1) (e.g. 0.25): a
    /// replay buffer against forgetting. The rest of the step's rows are new training data.
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0.0, "exclusiveMaximum" = 1.0))]
    pub replay_ratio: Option<f64>,
    /// Elastic weight consolidation's strength λ: the loss gains λ/2 · Σ F ⊙ (θ − θ0)², F the
    /// diagonal empirical Fisher information on `ewc_datasets` at the start (adapters: of the
    /// adapted base weights, with θ − θ0 the adapter's merged delta).
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    pub ewc_lambda: Option<f64>,
    /// Samples of `ewc_datasets` the Fisher information is estimated on (one forward and backward
    /// pass each); 64 when absent, or the whole set when smaller.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000000))]
    pub ewc_samples: Option<u32>,
}

impl TrainingConfig {
    /// Whether decoder layers are recomputed in the backward pass (`gradient_checkpointing: true`
    /// or `offload`).
    pub fn checkpointing(&self) -> bool {
        self.gradient_checkpointing != Checkpointing::Off
    }

    /// Whether the checkpointed layer inputs go to host memory: `activation_offloading: true`, or
    /// Axolotl's older spelling `gradient_checkpointing: offload`.
    pub fn offloads_activations(&self) -> bool {
        self.activation_offloading || self.gradient_checkpointing == Checkpointing::Offload
    }

    /// `lr_scheduler` as written in a recipe.
    pub fn lr_scheduler_name(&self) -> &'static str {
        match self.lr_scheduler {
            LrScheduler::Cosine => "cosine",
            LrScheduler::Linear => "linear",
            LrScheduler::Constant => "constant",
            LrScheduler::ConstantWithWarmup => "constant_with_warmup",
        }
    }
}

impl Default for TrainingConfig {
    fn default() -> Self {
        super::defaults()
    }
}

fn one() -> u32 {
    1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_epsilon() -> f64 {
    1e-8
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    42
}
fn default_dpo_beta() -> f64 {
    0.1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduler {
    /// Cosine decay to `cosine_min_lr_ratio` × peak (0 by default).
    #[default]
    Cosine,
    /// Linear decay to 0.
    Linear,
    /// Constant after warmup.
    Constant,
    /// Constant after warmup (Hugging Face's name).
    ConstantWithWarmup,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// AdamW with 32-bit states (libtorch's).
    #[default]
    AdamwTorch,
    /// AdamW with 32-bit states, fused kernel on CUDA.
    AdamwTorchFused,
    /// AdamW with blockwise 8-bit states.
    #[serde(rename = "adamw_8bit")]
    Adamw8bit,
    /// Same as `adamw_8bit` (bitsandbytes' name).
    #[serde(rename = "adamw_bnb_8bit")]
    AdamwBnb8bit,
    /// Same as `adamw_8bit`: recipe needs no paging.
    #[serde(rename = "paged_adamw_8bit")]
    PagedAdamw8bit,
    /// Same as `adamw_torch`: recipe needs no paging.
    #[serde(rename = "paged_adamw_32bit")]
    PagedAdamw32bit,
    /// torchao's `AdamW8bit` (transformers' name): 8-bit states, blocks of 256.
    #[serde(rename = "adamw_torch_8bit")]
    AdamwTorch8bit,
    /// torchao's `AdamW4bit` (transformers' name): 4-bit states, blocks of 256.
    #[serde(rename = "adamw_torch_4bit")]
    AdamwTorch4bit,
    /// `torch.optim.SGD` as transformers' Trainer builds it: no momentum, weight decay added to the
    /// gradient (L2), no state.
    Sgd,
    /// transformers' `Adafactor` as the Trainer builds it (`scale_parameter=False`,
    /// `relative_step=False`, no first moment): factored second moments for matrices.
    Adafactor,
    /// bitsandbytes' 32-bit `Lion` (betas from `adam_beta1` / `adam_beta2`, decoupled weight decay).
    #[serde(rename = "lion_32bit")]
    Lion32bit,
    /// Same as `lion_32bit`: recipe needs no paging.
    #[serde(rename = "paged_lion_32bit")]
    PagedLion32bit,
    /// bitsandbytes' 8-bit `Lion`: the momentum blockwise quantized (signed dynamic map, blocks of
    /// 256; tensors under 4,096 values keep it in 32 bits).
    #[serde(rename = "lion_8bit")]
    Lion8bit,
    /// Same as `lion_8bit`: recipe needs no paging.
    #[serde(rename = "paged_lion_8bit")]
    PagedLion8bit,
    /// Axolotl's Muon (Moonlight's formulation): Newton–Schulz orthogonalized momentum for hidden
    /// matrices, its own AdamW for the embedding and head; 1-D parameters are left out, as Axolotl does.
    Muon,
}

impl Optimizer {
    /// The recipe's name for it, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Optimizer::AdamwTorch => "adamw_torch",
            Optimizer::AdamwTorchFused => "adamw_torch_fused",
            Optimizer::Adamw8bit => "adamw_8bit",
            Optimizer::AdamwBnb8bit => "adamw_bnb_8bit",
            Optimizer::PagedAdamw8bit => "paged_adamw_8bit",
            Optimizer::PagedAdamw32bit => "paged_adamw_32bit",
            Optimizer::AdamwTorch8bit => "adamw_torch_8bit",
            Optimizer::AdamwTorch4bit => "adamw_torch_4bit",
            Optimizer::Sgd => "sgd",
            Optimizer::Adafactor => "adafactor",
            Optimizer::Lion32bit => "lion_32bit",
            Optimizer::PagedLion32bit => "paged_lion_32bit",
            Optimizer::Lion8bit => "lion_8bit",
            Optimizer::PagedLion8bit => "paged_lion_8bit",
            Optimizer::Muon => "muon",
        }
    }

    /// Whether it keeps blockwise 8-bit AdamW states (the others keep 32-bit ones).
    pub fn eight_bit_states(self) -> bool {
        matches!(self, Optimizer::Adamw8bit | Optimizer::AdamwBnb8bit | Optimizer::PagedAdamw8bit)
    }

    /// Bits per state value of torchao's low-bit AdamW (`adamw_torch_8bit`: 8, `adamw_torch_4bit`: 4).
    pub fn torchao_state_bits(self) -> Option<u8> {
        match self {
            Optimizer::AdamwTorch8bit => Some(8),
            Optimizer::AdamwTorch4bit => Some(4),
            _ => None,
        }
    }

    /// Whether it is one of the AdamW variants (the others: `sgd`, `adafactor`, Lion, Muon).
    pub fn is_adamw(self) -> bool {
        !matches!(
            self,
            Optimizer::Sgd
                | Optimizer::Adafactor
                | Optimizer::Lion32bit
                | Optimizer::PagedLion32bit
                | Optimizer::Lion8bit
                | Optimizer::PagedLion8bit
                | Optimizer::Muon
        )
    }

    /// bitsandbytes' 8-bit Lion (`lion_8bit`, `paged_lion_8bit`).
    pub fn eight_bit_lion(self) -> bool {
        matches!(self, Optimizer::Lion8bit | Optimizer::PagedLion8bit)
    }

    /// Whether its update needs each parameter whole (Adafactor's row and column means, Muon's
    /// orthogonalization), so sharded training cannot update chunks.
    pub fn needs_whole_parameters(self) -> bool {
        matches!(self, Optimizer::Adafactor | Optimizer::Muon)
    }
}

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RlMethod {
    /// Direct preference optimisation.
    Dpo,
    /// Identity preference optimisation.
    Ipo,
    /// Odds-ratio preference optimisation (no reference model).
    Orpo,
    /// Simple preference optimisation.
    Simpo,
    /// Kahneman-Tversky optimisation: each answer judged desirable or not on its own, against a
    /// reference model and a batch-level KL estimate (TRL's KTOTrainer).
    Kto,
}

impl RlMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            RlMethod::Dpo => "dpo",
            RlMethod::Ipo => "ipo",
            RlMethod::Orpo => "orpo",
            RlMethod::Simpo => "simpo",
            RlMethod::Kto => "kto",
        }
    }
}

impl std::fmt::Display for RlMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `true`, `false` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
    Auto,
}

impl Switch {
    pub fn auto() -> Switch {
        Switch::Auto
    }
    pub fn off() -> Switch {
        Switch::Off
    }
}

/// `gradient_checkpointing`: false, true, or Axolotl's `offload` (checkpointing whose layer inputs
/// are offloaded to host memory, as `activation_offloading: true`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Checkpointing {
    #[default]
    Off,
    On,
    Offload,
}

impl From<bool> for Checkpointing {
    fn from(on: bool) -> Self {
        if on { Checkpointing::On } else { Checkpointing::Off }
    }
}

impl Serialize for Checkpointing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Checkpointing::Off => s.serialize_bool(false),
            Checkpointing::On => s.serialize_bool(true),
            Checkpointing::Offload => s.serialize_str("offload"),
        }
    }
}

impl<'de> Deserialize<'de> for Checkpointing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(on) => Ok(on.into()),
            serde_json::Value::String(s) if s == "offload" => Ok(Checkpointing::Offload),
            other => Err(serde::de::Error::custom(format!("expected true, false or \"offload\", found {other}"))),
        }
    }
}

impl JsonSchema for Checkpointing {
    fn schema_name() -> Cow<'static, str> {
        "Checkpointing".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "true, false or offload (true with activation_offloading: true)",
            "enum": [true, false, "offload"]
        })
    }
}

impl Serialize for Switch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Switch::On => s.serialize_bool(true),
            Switch::Off => s.serialize_bool(false),
            Switch::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(true) => Ok(Switch::On),
            serde_json::Value::Bool(false) => Ok(Switch::Off),
            serde_json::Value::String(s) if s == "auto" => Ok(Switch::Auto),
            other => Err(serde::de::Error::custom(format!("expected true, false or \"auto\", found {other}"))),
        }
    }
}

impl JsonSchema for Switch {
    fn schema_name() -> Cow<'static, str> {
        "Switch".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"description": "true, false or auto", "enum": [true, false, "auto"]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimizer_names_are_their_serialized_names() {
        use Optimizer::*;
        for o in [
            AdamwTorch,
            AdamwTorchFused,
            Adamw8bit,
            AdamwBnb8bit,
            PagedAdamw8bit,
            PagedAdamw32bit,
            AdamwTorch8bit,
            AdamwTorch4bit,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str(), "{o:?}");
        }
    }
}

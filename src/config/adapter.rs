//! The parameter-efficient method (LoRA / QLoRA / IA3 / prompt or prefix tuning / bottleneck adapters) or full
//! fine-tuning.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Adapter settings: the `lora_*` keys for LoRA/QLoRA, the `ia3_*` keys for IA3. With no `adapter`, every
/// parameter is trained (full fine-tuning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AdapterConfig {
    /// `lora` (dense base), `qlora` (LoRA on a 4-bit base; needs `load_in_4bit: true`), `ia3` (a
    /// learned scale per feature, on a dense or quantized base), `prompt_tuning` (trained virtual
    /// tokens before every sequence, the body frozen), `prefix_tuning` (trained keys and values
    /// before every sequence in every layer, the body frozen) or `bottleneck` (AdapterHub's
    /// bottleneck adapters: small down/up-projection blocks after the attention and/or feed-forward
    /// block of every layer, the body frozen). Absent: full fine-tuning.
    #[serde(default)]
    pub adapter: Option<AdapterKind>,
    /// LoRA rank r: the inner dimension of the low-rank update (8–64; higher for harder tasks).
    #[serde(default = "default_lora_r")]
    #[schemars(range(min = 1, max = 65536))]
    pub lora_r: u32,
    /// LoRA alpha; the update is scaled by alpha / r (alpha / sqrt(r) with rsLoRA).
    /// Defaults to 2 × lora_r.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1048576))]
    pub lora_alpha: Option<u32>,
    /// Dropout on the LoRA input, in [0, 1).
    #[serde(default)]
    #[schemars(range(min = 0.0), extend("exclusiveMaximum" = 1.0))]
    pub lora_dropout: f64,
    /// Module names to adapt (e.g. `q_proj`, `v_proj`, or `embed_tokens` for peft's embedding LoRA), matched
    /// against the architecture.
    #[serde(default)]
    pub lora_target_modules: Option<ModuleList>,
    /// Parameters to adapt directly, as peft's `target_parameters` (a name matches a parameter that
    /// is it or ends with `.` + it, e.g. `experts.gate_up_proj`): a mixture of experts' fused 3-D
    /// expert weights (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`, one LoRA pair per
    /// parameter holding every expert's rank-r factors) and its router (`mlp.gate.weight`), under
    /// transformers 5's in-memory names. Needs `lora_dropout: 0` (peft's rule).
    #[serde(default)]
    pub lora_target_parameters: Option<Vec<String>>,
    /// Adapt every linear layer of the decoder (all attention and MLP projections).
    #[serde(default)]
    pub lora_target_linear: bool,
    /// Modules trained in full alongside the adapter and saved with it (e.g. `embed_tokens`, `lm_head`).
    #[serde(default)]
    pub lora_modules_to_save: Vec<String>,
    /// Set when the base stores weights as (fan_in, fan_out), as GPT-2's Conv1D does. Llama-family
    /// models do not, so it must be false or absent.
    #[serde(default)]
    #[schemars(extend("const" = false))]
    pub lora_fan_in_fan_out: bool,
    /// Weight-decomposed LoRA (DoRA), as peft's `use_dora`: a trainable magnitude per output row of every
    /// adapted layer on top of the LoRA pair (with `adapter: lora` or `qlora`).
    #[serde(default)]
    pub peft_use_dora: bool,
    /// Rank-stabilised LoRA: scale by alpha / sqrt(r) instead of alpha / r.
    #[serde(default)]
    pub peft_use_rslora: bool,
    /// A trained adapter folder (peft format) to start from: LoRA or DoRA with `adapter: lora` /
    /// `qlora`, IA3 with `adapter: ia3`; its settings must be the recipe's.
    #[serde(default)]
    pub lora_model_dir: Option<String>,
    /// Prompt or prefix tuning (`adapter: prompt_tuning` / `prefix_tuning`): how many trained virtual
    /// tokens come before every sequence, as peft's `num_virtual_tokens`. Prompt tuning trains an
    /// embedding of the model's hidden size for each (every sequence grows by this many positions);
    /// prefix tuning trains each one's key and value in every layer.
    // Prompt tuning's keys are left out of the resolved settings unless set (only it reads them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub num_virtual_tokens: Option<u32>,
    /// Prompt tuning: how the virtual tokens start, as peft's `prompt_tuning_init`: `random`
    /// (normal(0, 1), peft's default) or `text` (the word embeddings of `prompt_tuning_init_text`'s
    /// tokens, repeated or cut to `num_virtual_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tuning_init: Option<PromptTuningInit>,
    /// Prompt tuning with `prompt_tuning_init: text`: the text whose tokens (as the model's
    /// tokenizer encodes it, special tokens included) initialise the virtual tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tuning_init_text: Option<String>,
    /// Prefix tuning: reparameterize the prefixes through peft's PrefixEncoder MLP
    /// (`prefix_projection`): a trained embedding per virtual token, Linear → tanh → Linear to every
    /// layer's key and value. The adapter saved is the MLP's output, as peft saves it. `false` or
    /// absent: the keys and values are trained directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_projection: Option<bool>,
    /// Prefix tuning with `prefix_projection: true`: the hidden size of peft's PrefixEncoder MLP
    /// (`encoder_hidden_size`). Defaults to peft's: the key/value width (num_key_value_heads ×
    /// head_dim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub encoder_hidden_size: Option<u32>,
    /// IA3 (`adapter: ia3`): the linear layers that get a learned scale vector (peft's `target_modules`).
    /// Defaults to peft's for the architecture: `k_proj`, `v_proj`, `down_proj` (Llama, Mistral) or
    /// `q_proj`, `v_proj`, `down_proj` (Qwen2, Qwen3).
    #[serde(default)]
    pub ia3_target_modules: Option<ModuleList>,
    /// IA3: the targets that scale their input (one value per input feature) instead of their output,
    /// peft's `feedforward_modules`; a subset of `ia3_target_modules`. Defaults to peft's: `down_proj`.
    #[serde(default)]
    pub ia3_feedforward_modules: Option<ModuleList>,
    /// Bottleneck adapters (`adapter: bottleneck`): AdapterHub's architecture. `houlsby` (adapters'
    /// `DoubleSeqBnConfig`): an adapter after the attention block and one after the feed-forward
    /// block of every layer; `pfeiffer` (`SeqBnConfig`, adapters' default): one after the feed-forward
    /// block, fed the block's output plus its residual. Defaults to `pfeiffer`.
    // The bottleneck keys are left out of the resolved settings unless set (only it reads them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_config: Option<BottleneckArchitecture>,
    /// Bottleneck adapters: hidden size ÷ bottleneck width, as adapters' `reduction_factor` (the
    /// width is `hidden_size // reduction_factor`, at least 1). Defaults to 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    pub adapter_reduction_factor: Option<f64>,
    /// Bottleneck adapters: the activation between the down and up projections, as adapters'
    /// `non_linearity`: `relu`, `swish` / `silu`, `gelu` (erf), `gelu_new` (tanh approximation) or
    /// `tanh`. Defaults to adapters' default for the architecture: `swish` (houlsby), `relu` (pfeiffer).
    /// adapters' other activations are refused by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_non_linearity: Option<String>,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        super::defaults()
    }
}

fn default_lora_r() -> u32 {
    8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    /// Low-rank adapters on a dense (or 8-bit) base.
    Lora,
    /// LoRA on a 4-bit (NF4) quantized base.
    Qlora,
    /// IA3 (peft's `IA3Config`): a trainable vector, initialised to ones, that scales each target's
    /// output (or, for feed-forward modules, its input).
    Ia3,
    /// Prompt tuning (peft's PROMPT_TUNING): trained virtual-token embeddings before every sequence.
    #[serde(rename = "prompt_tuning")]
    PromptTuning,
    /// Prefix tuning (peft's PREFIX_TUNING): trained keys and values before every sequence, in every layer.
    #[serde(rename = "prefix_tuning")]
    PrefixTuning,
    /// AdapterHub's bottleneck adapters (`adapters`' `SeqBnConfig` / `DoubleSeqBnConfig`).
    Bottleneck,
}

impl AdapterKind {
    /// The name a recipe writes.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::Lora => "lora",
            AdapterKind::Qlora => "qlora",
            AdapterKind::Ia3 => "ia3",
            AdapterKind::PromptTuning => "prompt_tuning",
            AdapterKind::PrefixTuning => "prefix_tuning",
            AdapterKind::Bottleneck => "bottleneck",
        }
    }

    /// Whether this method trains LoRA pairs (and so reads the `lora_*` / `peft_*` keys).
    pub fn is_lora(self) -> bool {
        matches!(self, AdapterKind::Lora | AdapterKind::Qlora)
    }
}

/// AdapterHub's bottleneck-adapter architecture (`adapter_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BottleneckArchitecture {
    /// Houlsby et al. (2019), adapters' `DoubleSeqBnConfig`: after the attention and the feed-forward block.
    Houlsby,
    /// Pfeiffer et al. (2020), adapters' `SeqBnConfig`: after the feed-forward block.
    Pfeiffer,
}

/// peft's `prompt_tuning_init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PromptTuningInit {
    /// normal(0, 1), as a new `nn.Embedding`.
    Random,
    /// The word embeddings of `prompt_tuning_init_text`.
    Text,
}

/// One module name or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ModuleList {
    One(String),
    Many(Vec<String>),
}

impl ModuleList {
    pub fn names(&self) -> Vec<&str> {
        match self {
            ModuleList::One(s) => vec![s.as_str()],
            ModuleList::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

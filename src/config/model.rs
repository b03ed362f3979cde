//! Which model to fine-tune and how to load it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The base model and its tokenizer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelConfig {
    /// The model to fine-tune: a local folder in Hugging Face layout (config.json + safetensors),
    /// relative to the recipe file, or a Hugging Face hub id such as `meta-llama/Llama-2-13b-hf`.
    /// Required (here or in an extended recipe or preset).
    #[serde(default)]
    pub base_model: Option<String>,
    /// Where to read config.json from when it differs from `base_model` (local folder or hub id).
    #[serde(default)]
    pub base_model_config: Option<String>,
    /// The hub revision (branch, tag or commit) of `base_model`; pin a commit for reproducible runs.
    #[serde(default)]
    pub revision_of_model: Option<String>,
    /// Where to read the tokenizer from, when not base_model's: a local folder holding
    /// tokenizer.json, or a hub id (its tokenizer files are fetched). The run's outputs and
    /// checkpoints carry this tokenizer; a larger vocabulary grows the embeddings as added tokens do.
    #[serde(default)]
    pub tokenizer_config: Option<String>,
    /// The transformers model class: a causal language model, or a sequence classifier for a
    /// reward model (`reward_model: true`). The architecture itself is read from config.json.
    #[serde(default)]
    pub model_type: Option<ModelClass>,
    /// Outputs of a sequence-classification head: 1 for a reward model (its only value).
    #[serde(default)]
    pub num_labels: Option<u32>,
    /// The transformers tokenizer class. Informational: recipe reads tokenizer.json.
    #[serde(default)]
    pub tokenizer_type: Option<TokenizerClass>,
    /// Must be false or absent: a recipe never runs code shipped with a model repository.
    #[serde(default)]
    #[schemars(extend("const" = false))]
    pub trust_remote_code: bool,
    /// Values that replace config.json's (Axolotl's `overrides_of_model_config`). Built: the
    /// mixture-of-experts load-balancing loss's switch and weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides_of_model_config: Option<ModelConfigOverrides>,
    /// The older spelling of `overrides_of_model_config` (Axolotl's `model_config`); write one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_config: Option<ModelConfigOverrides>,
}

/// config.json values a recipe may replace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfigOverrides {
    /// Mixtral / Qwen3-MoE: add the router's load-balancing loss to the training loss
    /// (transformers' `output_router_logits`), weighted by `router_aux_loss_coef`.
    #[serde(default)]
    pub output_router_logits: Option<bool>,
    /// Mixtral / Qwen3-MoE: the load-balancing loss's weight.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub router_aux_loss_coef: Option<f64>,
}

impl ModelConfig {
    /// The config.json overrides, under either spelling (None: neither written; an error: both).
    pub fn config_overrides(&self) -> Result<Option<&ModelConfigOverrides>, String> {
        match (&self.overrides_of_model_config, &self.model_config) {
            (Some(_), Some(_)) => Err("`model_config` and `overrides_of_model_config` are one setting (its older and \
                 newer spelling); write one of them"
                .into()),
            (a, b) => Ok(a.as_ref().or(b.as_ref())),
        }
    }
}

/// Model classes recipe can run (the Llama family: Llama 1/2/3, Mistral, Qwen2, Qwen3 dense;
/// Gemma 2 and Gemma 3's text model; Phi-3/3.5/4; OLMo 2; the mixtures of experts Mixtral and
/// Qwen3-MoE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ModelClass {
    AutoModelForCausalLM,
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Phi3ForCausalLM,
    Olmo2ForCausalLM,
    MixtralForCausalLM,
    Qwen3MoeForCausalLM,
    /// A reward model (`reward_model: true`): the model with a score head on its last token.
    AutoModelForSequenceClassification,
    LlamaForSequenceClassification,
    MistralForSequenceClassification,
    Qwen2ForSequenceClassification,
    Qwen3ForSequenceClassification,
    Phi3ForSequenceClassification,
    Olmo2ForSequenceClassification,
}

impl ModelClass {
    /// A sequence classifier (the class of a reward model).
    pub fn is_sequence_classifier(self) -> bool {
        matches!(
            self,
            ModelClass::AutoModelForSequenceClassification
                | ModelClass::LlamaForSequenceClassification
                | ModelClass::MistralForSequenceClassification
                | ModelClass::Qwen2ForSequenceClassification
                | ModelClass::Qwen3ForSequenceClassification
                | ModelClass::Phi3ForSequenceClassification
                | ModelClass::Olmo2ForSequenceClassification
        )
    }
}

/// Tokenizer classes whose tokenizer.json recipe reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TokenizerClass {
    AutoTokenizer,
    LlamaTokenizer,
    LlamaTokenizerFast,
    PreTrainedTokenizerFast,
    Qwen2Tokenizer,
    Qwen2TokenizerFast,
    CodeLlamaTokenizer,
    CodeLlamaTokenizerFast,
    GPT2Tokenizer,
    GPT2TokenizerFast,
}

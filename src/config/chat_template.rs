//! Chat templates and the tokenizer's special tokens.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The chat template and token additions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatTemplateConfig {
    /// The chat template for `chat_template` datasets: a built-in name (templates/), `tokenizer_default`
    /// (the model's tokenizer_config.json), or `jinja` with `chat_template_jinja`.
    #[serde(default)]
    pub chat_template: Option<ChatTemplateName>,
    /// The template text (or a path to a .jinja file, relative to the recipe) for `chat_template: jinja`.
    #[serde(default)]
    pub chat_template_jinja: Option<String>,
    /// Set the tokenizer's special tokens (e.g. a pad token the base model lacks).
    #[serde(default)]
    pub special_tokens: SpecialTokens,
    /// New tokens to add to the vocabulary; embeddings are resized and trained.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Axolotl's `resize_token_embeddings_to_32x`: the embedding must cover the tokenizer's length
    /// rounded up to a multiple of 32. Where its rows already do, nothing changes; rows it would
    /// have to add beyond the tokenizer's tokens are refused at the run's start (Axolotl draws them
    /// at random, and every row takes part in the softmax).
    #[serde(default)]
    pub resize_token_embeddings_to_32x: bool,
    /// The tokens that end a turn in `chat_template` datasets (e.g. `<|eot_id|>`, `<|im_end|>`),
    /// when they differ from the EOS token; each must be a single token. The first one after each
    /// turn is trained per the dataset's `train_on_eot`, and the EOS token per `train_on_eos`, as
    /// in Axolotl. Unset: the EOS token alone ends a turn.
    #[serde(default)]
    pub eot_tokens: Option<Vec<String>>,
}

/// Built-in templates (files in templates/) and the two indirect forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChatTemplateName {
    Alpaca,
    Chatml,
    DeepseekV2,
    Gemma,
    Llama2,
    Llama3,
    MistralV1,
    MistralV2v3,
    MistralV3Tekken,
    #[serde(rename = "phi_3")]
    Phi3,
    #[serde(rename = "phi_35")]
    Phi35,
    #[serde(rename = "qwen_25")]
    Qwen25,
    Zephyr,
    #[serde(rename = "aya")]
    Aya,
    #[serde(rename = "cohere")]
    Cohere,
    #[serde(rename = "command_a")]
    CommandA,
    #[serde(rename = "command_a_rag")]
    CommandARag,
    #[serde(rename = "command_a_tool_use")]
    CommandAToolUse,
    #[serde(rename = "deepseek_v3")]
    DeepseekV3,
    #[serde(rename = "exaone")]
    Exaone,
    #[serde(rename = "exaone4")]
    Exaone4,
    #[serde(rename = "falcon_h1")]
    FalconH1,
    #[serde(rename = "gemma3")]
    Gemma3,
    #[serde(rename = "gemma3n")]
    Gemma3n,
    #[serde(rename = "gemma4")]
    Gemma4,
    #[serde(rename = "gemma4_unified")]
    Gemma4Unified,
    #[serde(rename = "jamba")]
    Jamba,
    #[serde(rename = "llama3_2_vision")]
    Llama32Vision,
    #[serde(rename = "llama4")]
    Llama4,
    #[serde(rename = "llava")]
    Llava,
    #[serde(rename = "metharme")]
    Metharme,
    #[serde(rename = "mistral_v7_tekken")]
    MistralV7Tekken,
    #[serde(rename = "nemotron_h")]
    NemotronH,
    #[serde(rename = "pixtral")]
    Pixtral,
    #[serde(rename = "qwen2_vl")]
    Qwen2Vl,
    #[serde(rename = "qwen3")]
    Qwen3,
    #[serde(rename = "qwen3_5")]
    Qwen35,
    /// The `chat_template` of the model's tokenizer_config.json.
    TokenizerDefault,
    /// The template given in `chat_template_jinja`.
    Jinja,
}

/// Special tokens to set on the tokenizer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpecialTokens {
    /// The beginning-of-sequence token.
    #[serde(default)]
    pub bos_token: Option<String>,
    /// The end-of-sequence token (also ends each chat turn for most templates).
    #[serde(default)]
    pub eos_token: Option<String>,
    /// The padding token; Llama models ship without one.
    #[serde(default)]
    pub pad_token: Option<String>,
    /// The unknown token.
    #[serde(default)]
    pub unk_token: Option<String>,
}

impl ChatTemplateName {
    /// The name as written in a recipe.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatTemplateName::Alpaca => "alpaca",
            ChatTemplateName::Chatml => "chatml",
            ChatTemplateName::DeepseekV2 => "deepseek_v2",
            ChatTemplateName::Gemma => "gemma",
            ChatTemplateName::Llama2 => "llama2",
            ChatTemplateName::Llama3 => "llama3",
            ChatTemplateName::MistralV1 => "mistral_v1",
            ChatTemplateName::MistralV2v3 => "mistral_v2v3",
            ChatTemplateName::MistralV3Tekken => "mistral_v3_tekken",
            ChatTemplateName::Phi3 => "phi_3",
            ChatTemplateName::Phi35 => "phi_35",
            ChatTemplateName::Qwen25 => "qwen_25",
            ChatTemplateName::Zephyr => "zephyr",
            ChatTemplateName::Aya => "aya",
            ChatTemplateName::Cohere => "cohere",
            ChatTemplateName::CommandA => "command_a",
            ChatTemplateName::CommandARag => "command_a_rag",
            ChatTemplateName::CommandAToolUse => "command_a_tool_use",
            ChatTemplateName::DeepseekV3 => "deepseek_v3",
            ChatTemplateName::Exaone => "exaone",
            ChatTemplateName::Exaone4 => "exaone4",
            ChatTemplateName::FalconH1 => "falcon_h1",
            ChatTemplateName::Gemma3 => "gemma3",
            ChatTemplateName::Gemma3n => "gemma3n",
            ChatTemplateName::Gemma4 => "gemma4",
            ChatTemplateName::Gemma4Unified => "gemma4_unified",
            ChatTemplateName::Jamba => "jamba",
            ChatTemplateName::Llama32Vision => "llama3_2_vision",
            ChatTemplateName::Llama4 => "llama4",
            ChatTemplateName::Llava => "llava",
            ChatTemplateName::Metharme => "metharme",
            ChatTemplateName::MistralV7Tekken => "mistral_v7_tekken",
            ChatTemplateName::NemotronH => "nemotron_h",
            ChatTemplateName::Pixtral => "pixtral",
            ChatTemplateName::Qwen2Vl => "qwen2_vl",
            ChatTemplateName::Qwen3 => "qwen3",
            ChatTemplateName::Qwen35 => "qwen3_5",
            ChatTemplateName::TokenizerDefault => "tokenizer_default",
            ChatTemplateName::Jinja => "jinja",
        }
    }

    /// The text of a built-in template (templates/NAME.jinja); None for `tokenizer_default` and `jinja`.
    pub fn builtin_text(self) -> Option<&'static str> {
        match self {
            ChatTemplateName::Alpaca => Some(include_str!("../../templates/alpaca.jinja")),
            ChatTemplateName::Chatml => Some(include_str!("../../templates/chatml.jinja")),
            ChatTemplateName::DeepseekV2 => Some(include_str!("../../templates/deepseek_v2.jinja")),
            ChatTemplateName::Gemma => Some(include_str!("../../templates/gemma.jinja")),
            ChatTemplateName::Llama2 => Some(include_str!("../../templates/llama2.jinja")),
            ChatTemplateName::Llama3 => Some(include_str!("../../templates/llama3.jinja")),
            ChatTemplateName::MistralV1 => Some(include_str!("../../templates/mistral_v1.jinja")),
            ChatTemplateName::MistralV2v3 => Some(include_str!("../../templates/mistral_v2v3.jinja")),
            ChatTemplateName::MistralV3Tekken => Some(include_str!("../../templates/mistral_v3_tekken.jinja")),
            ChatTemplateName::Phi3 => Some(include_str!("../../templates/phi_3.jinja")),
            ChatTemplateName::Phi35 => Some(include_str!("../../templates/phi_35.jinja")),
            ChatTemplateName::Qwen25 => Some(include_str!("../../templates/qwen_25.jinja")),
            ChatTemplateName::Zephyr => Some(include_str!("../../templates/zephyr.jinja")),
            ChatTemplateName::Aya => Some(include_str!("../../templates/aya.jinja")),
            ChatTemplateName::Cohere => Some(include_str!("../../templates/cohere.jinja")),
            ChatTemplateName::CommandA => Some(include_str!("../../templates/command_a.jinja")),
            ChatTemplateName::CommandARag => Some(include_str!("../../templates/command_a_rag.jinja")),
            ChatTemplateName::CommandAToolUse => Some(include_str!("../../templates/command_a_tool_use.jinja")),
            ChatTemplateName::DeepseekV3 => Some(include_str!("../../templates/deepseek_v3.jinja")),
            ChatTemplateName::Exaone => Some(include_str!("../../templates/exaone.jinja")),
            ChatTemplateName::Exaone4 => Some(include_str!("../../templates/exaone4.jinja")),
            ChatTemplateName::FalconH1 => Some(include_str!("../../templates/falcon_h1.jinja")),
            ChatTemplateName::Gemma3 => Some(include_str!("../../templates/gemma3.jinja")),
            ChatTemplateName::Gemma3n => Some(include_str!("../../templates/gemma3n.jinja")),
            ChatTemplateName::Gemma4 => Some(include_str!("../../templates/gemma4.jinja")),
            ChatTemplateName::Gemma4Unified => Some(include_str!("../../templates/gemma4_unified.jinja")),
            ChatTemplateName::Jamba => Some(include_str!("../../templates/jamba.jinja")),
            ChatTemplateName::Llama32Vision => Some(include_str!("../../templates/llama3_2_vision.jinja")),
            ChatTemplateName::Llama4 => Some(include_str!("../../templates/llama4.jinja")),
            ChatTemplateName::Llava => Some(include_str!("../../templates/llava.jinja")),
            ChatTemplateName::Metharme => Some(include_str!("../../templates/metharme.jinja")),
            ChatTemplateName::MistralV7Tekken => Some(include_str!("../../templates/mistral_v7_tekken.jinja")),
            ChatTemplateName::NemotronH => Some(include_str!("../../templates/nemotron_h.jinja")),
            ChatTemplateName::Pixtral => Some(include_str!("../../templates/pixtral.jinja")),
            ChatTemplateName::Qwen2Vl => Some(include_str!("../../templates/qwen2_vl.jinja")),
            ChatTemplateName::Qwen3 => Some(include_str!("../../templates/qwen3.jinja")),
            ChatTemplateName::Qwen35 => Some(include_str!("../../templates/qwen3_5.jinja")),
            ChatTemplateName::TokenizerDefault | ChatTemplateName::Jinja => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_name_round_trips_and_has_its_template_file() {
        let names = crate::config::schema::schema()["$defs"]["ChatTemplateName"]["enum"].as_array().unwrap().clone();
        assert!(names.len() >= 12);
        for name in names.iter().filter_map(|n| n.as_str()) {
            let parsed: ChatTemplateName = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(parsed.as_str(), name);
            let indirect = matches!(parsed, ChatTemplateName::TokenizerDefault | ChatTemplateName::Jinja);
            assert_eq!(parsed.builtin_text().is_some(), !indirect, "{name}");
        }
    }
}

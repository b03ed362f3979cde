//! The typed recipe: one type per concern, flattened into the flat key space Axolotl recipes use.
//!
//! Every field carries its default and a doc comment; the JSON Schema (schema.rs) is generated
//! from these types, so the schema, the docs and the defaults cannot drift apart. After
//! validation only these typed values flow on. An empty (null) key means "unset", as in Axolotl.

pub mod adapter;
pub mod axolotl_keys;
pub mod chat_template;
pub mod datasets;
pub mod deepspeed;
pub mod distributed;
pub mod kernels;
pub mod location;
pub mod logging;
pub mod model;
pub mod quantization;
pub mod rules;
pub mod schema;
pub mod string_transforms;
pub mod tracking;
pub mod training;
pub mod unfrozen;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use adapter::AdapterConfig;
pub use chat_template::ChatTemplateConfig;
pub use datasets::DataConfig;
pub use distributed::DistributedConfig;
pub use kernels::KernelConfig;
pub use logging::LoggingConfig;
pub use model::ModelConfig;
pub use quantization::QuantizationConfig;
pub use tracking::TrackingConfig;
pub use training::TrainingConfig;
pub use unfrozen::UnfrozenConfig;

/// The recipe format version this build reads.
pub const RECIPE_VERSION: u32 = 1;

/// A fine-tuning recipe, in Axolotl's key names. An empty key means "unset".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "recipe", deny_unknown_fields)]
pub struct Config {
    /// The recipe format version (1). Optional; a newer version is refused by an older build.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1))]
    pub recipe_version: Option<u32>,
    /// Built-in hyperparameter presets applied under this recipe (`recipe presets` lists them).
    /// Later names win over earlier ones; the recipe's own keys win over all.
    #[serde(default)]
    pub preset: Option<PresetNames>,
    /// Another recipe file (path relative to this one) merged underneath this one.
    #[serde(default)]
    pub extends: Option<String>,
    #[serde(flatten)]
    pub model: ModelConfig,
    #[serde(flatten)]
    pub quantization: QuantizationConfig,
    #[serde(flatten)]
    pub adapter: AdapterConfig,
    #[serde(flatten)]
    pub unfrozen: UnfrozenConfig,
    #[serde(flatten)]
    pub data: DataConfig,
    #[serde(flatten)]
    pub chat: ChatTemplateConfig,
    #[serde(flatten)]
    pub training: TrainingConfig,
    #[serde(flatten)]
    pub kernels: KernelConfig,
    #[serde(flatten)]
    pub logging: LoggingConfig,
    #[serde(flatten)]
    pub distributed: DistributedConfig,
    #[serde(flatten)]
    pub tracking: TrackingConfig,
}

/// A section with every key absent: its serde defaults, so `Default` and a recipe that leaves a
/// section out can never disagree.
fn defaults<T: serde::de::DeserializeOwned>() -> T {
    serde_json::from_value(serde_json::json!({})).expect("every field of a config section has a default")
}

/// One preset name or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PresetNames {
    One(String),
    Many(Vec<String>),
}

impl PresetNames {
    pub fn names(&self) -> Vec<&str> {
        match self {
            PresetNames::One(s) => vec![s.as_str()],
            PresetNames::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

impl JsonSchema for PresetNames {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PresetNames".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = crate::recipe::presets::PRESETS.iter().map(|p| p.name).collect();
        schemars::json_schema!({
            "anyOf": [
                {"type": "string", "enum": names},
                {"type": "array", "items": {"type": "string", "enum": names}}
            ]
        })
    }
}

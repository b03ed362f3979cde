//! Experiment tracking, in Axolotl's key names: TensorBoard event files, MLflow through its REST
//! API, Weights & Biases run folders in W&B's offline format, and Prometheus metrics served over
//! HTTP as Axolotl's OpenTelemetry callback serves them. Every key is unset by default (and so
//! absent from the plan's settings); a tracker is on when its switch is: `use_tensorboard: true`,
//! `mlflow_tracking_uri` (unless `use_mlflow: false`), `wandb_project` (unless `use_wandb: false`
//! or `wandb_mode: disabled`), `use_otel_metrics: true`. The rules that tie the keys together are in rules.rs
//! (`tracking`); what the run does with them is src/track/. Unset keys are left out when a config
//! is serialized, so recipes without trackers read as before.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the run's metrics go besides metrics.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TrackingConfig {
    /// Write TensorBoard event files to `logging_dir`: a scalar series for every metric of
    /// metrics.jsonl (`train/loss`, `train/lr`, ..., `eval/loss`, ...) and the resolved recipe as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_tensorboard: Option<bool>,
    /// Where TensorBoard's event files go (default: `output_dir/runs`); needs `use_tensorboard: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging_dir: Option<String>,
    /// Log to MLflow. On when `mlflow_tracking_uri` is set; `false` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_mlflow: Option<bool>,
    /// The MLflow tracking server, `http(s)://host[:port][/prefix]` (recipe logs through MLflow's REST
    /// API; start one with `mlflow server`). Credentials come from the environment:
    /// `MLFLOW_TRACKING_TOKEN`, or `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow_tracking_uri: Option<String>,
    /// The MLflow experiment, created when missing (default: `Default`, MLflow's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow_experiment_name: Option<String>,
    /// The MLflow run's name (default: the last component of `output_dir`, as transformers names runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow_run_name: Option<String>,
    /// Upload the output folder's files (adapter or model, config, tokenizer, metrics.jsonl, loss
    /// curve; checkpoints excluded) to the MLflow run's artifacts at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_mlflow_log_artifacts: Option<bool>,
    /// Log to Weights & Biases. On when `wandb_project` is set; `false` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_wandb: Option<bool>,
    /// The W&B project; setting it turns W&B on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wandb_project: Option<String>,
    /// The W&B entity (user or team) the run belongs to (default: the account `wandb sync` uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wandb_entity: Option<String>,
    /// The W&B run's display name (default: the last component of `output_dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wandb_name: Option<String>,
    /// The W&B run id (letters, digits, `-` and `_`; default: 8 random characters at the start of the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub wandb_run_id: Option<String>,
    /// How W&B logs. Unset: `offline` (recipe writes W&B's offline run folder; `wandb sync` uploads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wandb_mode: Option<WandbMode>,
    /// Log the model to W&B as an artifact (`end`, `checkpoint`) or not (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "WandbLogModel::deserialize_any")]
    pub wandb_log_model: Option<WandbLogModel>,
    /// Serve the run's metrics at `http://otel_metrics_host:otel_metrics_port/metrics` in Prometheus'
    /// text format, named as Axolotl's OpenTelemetry callback names them (`axolotl_train_loss`,
    /// `axolotl_learning_rate`, `axolotl_global_steps_total`, ...), from the start of training until
    /// the process exits. Only the main process serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_otel_metrics: Option<bool>,
    /// The address the metrics server listens on (default: `localhost`); needs `use_otel_metrics: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub otel_metrics_host: Option<String>,
    /// The metrics server's port (default: 8000); one already in use stops the run at its start.
    /// Needs `use_otel_metrics: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub otel_metrics_port: Option<u16>,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl TrackingConfig {
    /// TensorBoard is on.
    pub fn tensorboard(&self) -> bool {
        self.use_tensorboard == Some(true)
    }

    /// MLflow is on.
    pub fn mlflow(&self) -> bool {
        self.mlflow_tracking_uri.is_some() && self.use_mlflow != Some(false)
    }

    /// Prometheus metrics are served (`use_otel_metrics: true`).
    pub fn otel(&self) -> bool {
        self.use_otel_metrics == Some(true)
    }

    /// W&B is on.
    pub fn wandb(&self) -> bool {
        self.wandb_project.is_some() && self.use_wandb != Some(false) && self.wandb_mode != Some(WandbMode::Disabled)
    }
}

/// W&B's modes (`WANDB_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WandbMode {
    /// Straight to the W&B server (not built: use `offline` and `wandb sync`).
    Online,
    /// A local run folder in W&B's offline format, uploaded later by `wandb sync`.
    Offline,
    /// W&B off.
    Disabled,
}

/// Axolotl's `wandb_log_model` values (`WANDB_LOG_MODEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WandbLogModel {
    /// No model artifact (`false`, or the string "false" as Axolotl writes it).
    #[serde(rename = "false")]
    Off,
    /// The final model as an artifact (not built).
    #[serde(rename = "end")]
    End,
    /// Every checkpoint as an artifact (not built).
    #[serde(rename = "checkpoint")]
    Checkpoint,
}

impl WandbLogModel {
    pub fn as_str(self) -> &'static str {
        match self {
            WandbLogModel::Off => "false",
            WandbLogModel::End => "end",
            WandbLogModel::Checkpoint => "checkpoint",
        }
    }

    /// Reads `false` (a YAML boolean, as Axolotl configs write it) as well as the strings.
    pub fn deserialize_any<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<WandbLogModel>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(WandbLogModel),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Bool(false)) => Ok(Some(WandbLogModel::Off)),
            Some(Raw::Bool(true)) => Err(serde::de::Error::custom("expected false, \"end\" or \"checkpoint\"")),
            Some(Raw::Text(v)) => Ok(Some(v)),
        }
    }
}

impl JsonSchema for WandbLogModel {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WandbLogModel".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`false` (no model artifact), `end` (the final model) or `checkpoint` (every checkpoint).",
            "anyOf": [
                {"type": "boolean", "const": false},
                {"type": "string", "enum": ["false", "end", "checkpoint"]}
            ]
        })
    }
}

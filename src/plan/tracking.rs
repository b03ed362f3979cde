//! Where the run is tracked besides metrics.jsonl (config/tracking.rs resolved): TensorBoard's
//! event folder, the MLflow server, experiment and run name, the W&B offline run folder. The
//! writers are src/track/; the run id of a W&B run without `wandb_run_id` is drawn at the start
//! of the run, so the plan stays a function of the recipe. Prometheus metrics (`use_otel_metrics`)
//! are served at an address the plan states.

use crate::config::Config;
use crate::config::tracking::WandbMode;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrackingPlan {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensorboard: Option<TensorBoardPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlflow: Option<MlflowPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wandb: Option<WandbPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otel: Option<OtelPlan>,
}

/// Axolotl's OpenTelemetry metrics: a Prometheus endpoint the main process serves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtelPlan {
    /// `otel_metrics_host` (default `localhost`).
    pub host: String,
    /// `otel_metrics_port` (default 8000).
    pub port: u16,
}

impl OtelPlan {
    /// `http://host:port/metrics` (an IPv6 address in brackets).
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("http://{host}:{}/metrics", self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorBoardPlan {
    /// The folder the event files go to (`logging_dir`, else `output_dir/runs`).
    pub dir: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MlflowPlan {
    /// The server, without a trailing slash.
    pub tracking_uri: String,
    /// Created when missing.
    pub experiment: String,
    pub run_name: String,
    /// Upload the output folder's files as the run's artifacts at the end.
    pub log_artifacts: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WandbPlan {
    pub project: String,
    pub entity: Option<String>,
    pub display_name: String,
    /// Drawn at the start of the run when the recipe gives none.
    pub run_id: Option<String>,
    /// `offline`: the only mode built.
    pub mode: WandbMode,
    /// The folder W&B's offline run folders go to (`output_dir/wandb`).
    pub dir: String,
}

impl TrackingPlan {
    pub fn is_off(&self) -> bool {
        self.tensorboard.is_none() && self.mlflow.is_none() && self.wandb.is_none() && self.otel.is_none()
    }

    /// One line per tracker, for `recipe plan` and `recipe run`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(tb) = &self.tensorboard {
            out.push(format!("TensorBoard event files in {} (tensorboard --logdir {})", tb.dir, tb.dir));
        }
        if let Some(m) = &self.mlflow {
            out.push(format!(
                "MLflow at {}: experiment `{}`, run `{}`{}",
                m.tracking_uri,
                m.experiment,
                m.run_name,
                if m.log_artifacts { ", output files uploaded as artifacts" } else { "" }
            ));
        }
        if let Some(w) = &self.wandb {
            out.push(format!(
                "W&B offline run folder in {} (project `{}`{}, run `{}`, id {}); upload with `wandb sync`",
                w.dir,
                w.project,
                w.entity.as_ref().map_or(String::new(), |e| format!(", entity `{e}`")),
                w.display_name,
                w.run_id.as_ref().map_or("drawn at the start".to_string(), |id| format!("`{id}`"))
            ));
        }
        if let Some(o) = &self.otel {
            out.push(format!(
                "metrics served at {} (Prometheus text format, Axolotl's OpenTelemetry metric names) from the start \
                 of training until the process exits",
                o.url()
            ));
        }
        out
    }
}

/// The trackers a valid config turns on.
pub fn plan(c: &Config) -> TrackingPlan {
    let t = &c.tracking;
    let output_dir = &c.logging.output_dir;
    let run_name = || {
        Path::new(output_dir)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| output_dir.clone())
    };
    let under_output = |name: &str| Path::new(output_dir).join(name).display().to_string();
    TrackingPlan {
        tensorboard: t
            .tensorboard()
            .then(|| TensorBoardPlan { dir: t.logging_dir.clone().unwrap_or_else(|| under_output("runs")) }),
        mlflow: t.mlflow().then(|| MlflowPlan {
            tracking_uri: t.mlflow_tracking_uri.as_deref().unwrap_or_default().trim_end_matches('/').to_string(),
            experiment: t.mlflow_experiment_name.clone().unwrap_or_else(|| "Default".into()),
            run_name: t.mlflow_run_name.clone().unwrap_or_else(run_name),
            log_artifacts: t.hf_mlflow_log_artifacts == Some(true),
        }),
        wandb: t.wandb().then(|| WandbPlan {
            project: t.wandb_project.clone().unwrap_or_default(),
            entity: t.wandb_entity.clone(),
            display_name: t.wandb_name.clone().unwrap_or_else(run_name),
            run_id: t.wandb_run_id.clone(),
            mode: WandbMode::Offline,
            dir: under_output("wandb"),
        }),
        otel: t.otel().then(|| OtelPlan {
            host: t.otel_metrics_host.clone().unwrap_or_else(|| "localhost".into()),
            port: t.otel_metrics_port.unwrap_or(8000),
        }),
    }
}

/// An MLflow tracking URI recipe can log to: an http(s) URL with a host and nothing after the path.
pub fn check_tracking_uri(uri: &str) -> Result<(), String> {
    let store =
        |scheme: &str| matches!(scheme, "file" | "databricks" | "databricks-uc" | "sqlite" | "postgresql" | "mysql");
    let parsed = url::Url::parse(uri);
    match &parsed {
        Ok(url) if store(url.scheme()) => {
            return Err(format!(
                "`{uri}`: a `{}:` store is not an MLflow server; recipe logs through the REST API of a server",
                url.scheme()
            ));
        }
        // `localhost:5000` parses as the scheme `localhost`, `127.0.0.1:5000` not at all.
        _ if !uri.contains("://") && !store(uri) => {
            return Err(format!("`{uri}` has no scheme: write http://{uri} (or https://)"));
        }
        _ => {}
    }
    let url = parsed.map_err(|e| format!("`{uri}` is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{uri}`: the scheme `{}` is not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{uri}` has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{uri}`: a tracking URI has no query or fragment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_uris() {
        for good in ["http://127.0.0.1:5000", "https://mlflow.example.com/prefix/", "http://[::1]:8080"] {
            assert_eq!(check_tracking_uri(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("127.0.0.1:5000", "no scheme: write http://127.0.0.1:5000"),
            ("localhost:5000", "no scheme: write http://localhost:5000"),
            ("mlruns", "no scheme"),
            ("file:///tmp/mlruns", "`file:` store"),
            ("databricks", "not a URL"),
            ("http://", "not a URL"),
            ("http://host:99999", "not a URL"),
            ("ftp://host", "scheme `ftp`"),
            ("http://host/?x=1", "no query"),
        ] {
            let e = check_tracking_uri(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}

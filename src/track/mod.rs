//! Experiment tracking: what the run records in metrics.jsonl also goes to the trackers the plan
//! names (plan/tracking.rs): TensorBoard event files (`tensorboard.rs`), an MLflow server through
//! its REST API (`mlflow.rs`), a W&B run folder in W&B's offline format (`wandb.rs`), Prometheus
//! metrics served over HTTP as Axolotl's OpenTelemetry callback serves them (`otel.rs`).
//!
//! The training loop knows nothing of them: `exec::metrics::MetricsLog` hands every record it writes
//! to [`Trackers::record`] and every optimizer step's end to [`Trackers::step_end`], and the run
//! ends them with [`Trackers::finish`] (or, on an error, by dropping them: FAILED). Only the main
//! process tracks.
//!
//! Tracking never breaks training, once started. The metrics server's address is the exception at
//! the start: a port in use is an error (the recipe names an endpoint that would serve nothing,
//! or another run's numbers). Any other tracker that cannot start is a warning and the run goes on
//! without it (an error with `recipe run --deny-warnings`); a tracker that fails later is reported
//! once and dropped (local files), or retries with backoff in its own thread and reports what it
//! could not deliver at the end (MLflow). metrics.jsonl and the run's outputs do not depend on any
//! of them.
//!
//! Metric names are those of metrics.jsonl under `train/` and `eval/`, as transformers' TensorBoard
//! and W&B callbacks name them: `loss` -> `train/loss`, `eval_loss` -> `eval/loss`.

pub mod mlflow;
pub mod otel;
pub mod tensorboard;
pub mod wandb;

use crate::plan::Plan;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// How a run ended, as MLflow names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Finished,
    /// An error stopped the run.
    Failed,
    /// Ctrl-C / SIGTERM (or `--stop-after`): a checkpoint was saved and the run stopped.
    Killed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Finished => "FINISHED",
            Status::Failed => "FAILED",
            Status::Killed => "KILLED",
        }
    }
}

/// One record of metrics.jsonl in the trackers' names.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub step: u64,
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    pub metrics: Vec<(String, f64)>,
}

/// The tracker name of a metrics.jsonl key: `eval_x` -> `eval/x`, anything else -> `train/x`.
pub fn metric_name(key: &str) -> String {
    match key.strip_prefix("eval_") {
        Some(rest) => format!("eval/{rest}"),
        None => format!("train/{key}"),
    }
}

/// A metrics.jsonl record as a point: every number (booleans as 0/1) but the step.
pub fn point(record: &Value, wall_time: f64) -> Option<Point> {
    let map = record.as_object()?;
    let step = map.get("step")?.as_u64()?;
    let metrics = map
        .iter()
        .filter(|(k, _)| k.as_str() != "step")
        .filter_map(|(k, v)| {
            let value = match v {
                Value::Number(n) => n.as_f64()?,
                Value::Bool(b) => f64::from(u8::from(*b)),
                _ => return None,
            };
            Some((metric_name(k), value))
        })
        .collect();
    Some(Point { step, wall_time, metrics })
}

pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// What the trackers record about the run besides its metrics.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub recipe: String,
    pub output_dir: PathBuf,
    /// The resolved recipe: every set key with its value (JSON) and origin.
    pub settings: Vec<(String, Value, String)>,
    /// The plan's summary: (name, value), e.g. ("model", "stories260k"), for tags.
    pub summary: Vec<(String, String)>,
    /// The run continues from a checkpoint at this step.
    pub resumed_at: Option<u64>,
}

impl RunInfo {
    pub fn from_plan(plan: &Plan, resumed_at: Option<u64>) -> RunInfo {
        let m = &plan.model;
        let mut summary = vec![
            ("recipe".to_string(), plan.recipe.clone()),
            ("model".to_string(), m.name.clone()),
            ("parameters".to_string(), m.parameters.total.to_string()),
            ("method".to_string(), plan.adapter.method.to_string()),
            ("trainable_parameters".to_string(), plan.adapter.trainable_parameters.to_string()),
            ("precision".to_string(), plan.training.precision.describe()),
            ("world_size".to_string(), plan.layout.world_size.to_string()),
        ];
        if let Some(p) = &plan.training.preference {
            summary.push(("objective".to_string(), format!("{} preference training", p.method)));
        }
        if let Some(steps) = plan.batch.total_steps {
            summary.push(("planned_steps".to_string(), steps.to_string()));
        }
        let data: Vec<String> = plan.datasets.iter().map(|d| format!("{} ({})", d.source, d.r#type)).collect();
        summary.push(("datasets".to_string(), data.join(", ")));
        RunInfo {
            recipe: plan.recipe.clone(),
            output_dir: PathBuf::from(&plan.training.output_dir),
            settings: plan.settings.iter().map(|s| (s.key.clone(), s.value.clone(), s.origin.clone())).collect(),
            summary,
            resumed_at,
        }
    }

    /// The settings as flat text pairs: nested values by dotted path (`datasets.0.path`).
    pub fn flat_settings(&self) -> Vec<(String, String)> {
        fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
            match v {
                Value::Object(map) if !map.is_empty() => {
                    for (k, v) in map {
                        walk(&format!("{prefix}.{k}"), v, out);
                    }
                }
                Value::Array(items) if !items.is_empty() => {
                    for (i, v) in items.iter().enumerate() {
                        walk(&format!("{prefix}.{i}"), v, out);
                    }
                }
                Value::String(s) => out.push((prefix.to_string(), s.clone())),
                Value::Null => {}
                other => out.push((prefix.to_string(), other.to_string())),
            }
        }
        let mut out = Vec::new();
        for (key, value, _) in &self.settings {
            walk(key, value, &mut out);
        }
        out
    }

    /// The resolved recipe as Markdown (TensorBoard's text plugin renders it).
    pub fn settings_markdown(&self) -> String {
        let mut text = format!("Resolved recipe `{}`\n\n| key | value | origin |\n|---|---|---|\n", self.recipe);
        for (key, value, origin) in &self.settings {
            let v = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            text += &format!("| {key} | `{}` | {origin} |\n", v.replace('|', "\\|").replace('`', "'"));
        }
        text
    }
}

/// What each tracker does. Errors are messages; the caller decides what they cost (a warning).
pub trait Tracker: Send {
    /// The tracker's name, for messages.
    fn name(&self) -> &'static str;
    /// Where the run can be seen: a URL or a folder.
    fn location(&self) -> String;
    /// One record of metrics.jsonl.
    fn log(&mut self, point: &Point) -> Result<(), String>;
    /// An optimizer step ended: the run's step count and epoch (fractional) after it. Host values
    /// only; called every step, so it must be cheap.
    fn step_end(&mut self, _step: u64, _epoch: f64) {}
    /// The end of the run: status, and (after the outputs are written) what to upload.
    fn finish(&mut self, status: Status, output_dir: &Path) -> Result<(), String>;
}

/// A tracker, or why it could not start.
type Started = Result<Box<dyn Tracker>, String>;

/// The run's trackers. Dropped without [`Trackers::finish`] (an error ended the run): FAILED.
pub struct Trackers {
    active: Vec<Box<dyn Tracker>>,
    finished: bool,
}

impl Trackers {
    /// No tracker.
    pub fn none() -> Trackers {
        Trackers { active: Vec::new(), finished: true }
    }

    /// Starts every tracker the plan names. One that cannot start is a warning (logged; the run
    /// goes on without it), or with `deny_warnings` the error this returns.
    pub fn start(plan: &Plan, resumed_at: Option<u64>, deny_warnings: bool) -> Result<Trackers, String> {
        let t = &plan.tracking;
        if t.is_off() {
            return Ok(Trackers::none());
        }
        let info = RunInfo::from_plan(plan, resumed_at);
        let mut active: Vec<Box<dyn Tracker>> = Vec::new();
        // First, and an error whatever --deny-warnings says: the address is the recipe's.
        if let Some(o) = &t.otel {
            // Axolotl's RL trainer builder (`rl:`) sets `logging_first_step=True`; its causal
            // builder (reward models too) leaves transformers' False.
            let first_step = plan.training.preference.is_some();
            let started = otel::Otel::start(o, plan.training.logging_steps, first_step)?;
            tracing::info!("tracking: {} {}", started.name(), started.location());
            active.push(Box::new(started));
        }
        let mut attempts: Vec<(&str, Started)> = Vec::new();
        if let Some(tb) = &t.tensorboard {
            attempts.push(("TensorBoard", tensorboard::TensorBoard::start(tb, &info).map(|x| Box::new(x) as _)));
        }
        if let Some(m) = &t.mlflow {
            attempts.push(("MLflow", mlflow::Mlflow::start(m, &info).map(|x| Box::new(x) as _)));
        }
        if let Some(w) = &t.wandb {
            attempts.push(("W&B", wandb::Wandb::start(w, &info).map(|x| Box::new(x) as _)));
        }
        for (name, attempt) in attempts {
            match attempt {
                Ok(tracker) => {
                    tracing::info!("tracking: {} {}", tracker.name(), tracker.location());
                    active.push(tracker);
                }
                Err(e) if deny_warnings => {
                    let mut started = Trackers { active, finished: false };
                    started.finish(Status::Failed, &info.output_dir);
                    return Err(format!("{name}: {e} (--deny-warnings)"));
                }
                Err(e) => tracing::warn!("{name}: {e}; the run goes on without it"),
            }
        }
        Ok(Trackers { finished: active.is_empty(), active })
    }

    /// Hands one record of metrics.jsonl to every tracker; one that fails is reported and dropped.
    pub fn record(&mut self, record: &Value) {
        let Some(point) = point(record, now()) else { return };
        self.active.retain_mut(|t| match t.log(&point) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("{}: {e}; no more metrics go there (metrics.jsonl has them all)", t.name());
                false
            }
        });
    }

    /// An optimizer step ended (every step; host values only).
    pub fn step_end(&mut self, step: u64, epoch: f64) {
        for t in &mut self.active {
            t.step_end(step, epoch);
        }
    }

    /// Where the run is tracked (one line per tracker).
    pub fn locations(&self) -> Vec<String> {
        self.active.iter().map(|t| format!("{} {}", t.name(), t.location())).collect()
    }

    /// Ends every tracker with `status`; returns where the run is tracked. Failures are warnings.
    pub fn finish(&mut self, status: Status, output_dir: &Path) -> Vec<String> {
        self.finished = true;
        let mut lines = Vec::new();
        for t in &mut self.active {
            match t.finish(status, output_dir) {
                Ok(()) => lines.push(format!("{} {}", t.name(), t.location())),
                Err(e) => tracing::warn!("{}: {e}", t.name()),
            }
        }
        lines
    }
}

impl Drop for Trackers {
    fn drop(&mut self) {
        if !self.finished {
            let dir = PathBuf::new();
            self.finish(Status::Failed, &dir);
        }
    }
}

/// `YYYYMMDD_HHMMSS` (UTC) of a Unix time, as W&B names run folders.
pub fn timestamp_name(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}_{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_follow_transformers() {
        assert_eq!(metric_name("loss"), "train/loss");
        assert_eq!(metric_name("eval_loss"), "eval/loss");
        assert_eq!(metric_name("eval_rewards/chosen"), "eval/rewards/chosen");
        let p = point(&serde_json::json!({"step": 3, "loss": 1.5, "skipped": true, "note": "x"}), 1.0).unwrap();
        assert_eq!(p.step, 3);
        assert_eq!(p.metrics, vec![("train/loss".to_string(), 1.5), ("train/skipped".to_string(), 1.0)]);
        assert!(point(&serde_json::json!({"loss": 1.0}), 1.0).is_none());
    }

    #[test]
    fn timestamps_match_the_calendar() {
        // Against `date -u` (GNU coreutils): a leap day, the epoch, a date past 2038.
        for unix in [951_827_696u64, 0, 4_102_444_799] {
            let out = std::process::Command::new("date")
                .args(["-u", "-d", &format!("@{unix}"), "+%Y%m%d_%H%M%S"])
                .output()
                .expect("date(1)");
            assert_eq!(timestamp_name(unix as f64), String::from_utf8_lossy(&out.stdout).trim(), "{unix}");
        }
    }
}

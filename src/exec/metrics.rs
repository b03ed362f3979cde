//! What a run records: `metrics.jsonl` in output_dir (one JSON object per logging step or
//! evaluation: step, loss, lr, grad_norm, tokens_per_second, eval_loss, ...), and the loss curve
//! as an SVG picture written at the end. Every record also goes to the run's trackers
//! (TensorBoard, MLflow, W&B: src/track/) when the recipe names any.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct MetricsLog {
    path: PathBuf,
    /// None on ranks other than the main process: they record nothing.
    file: Option<std::fs::File>,
    tracking: crate::track::Trackers,
}

impl MetricsLog {
    /// Opens `output_dir/metrics.jsonl`. When resuming at `resume_step`, records after that step
    /// (from the interrupted run) are dropped so the log reads as one run.
    pub fn open(output_dir: &Path, resume_step: Option<u64>) -> Result<MetricsLog, String> {
        let path = output_dir.join("metrics.jsonl");
        let kept: Vec<String> = match resume_step {
            Some(step) => read(&path)
                .into_iter()
                .filter(|r| r.get("step").and_then(Value::as_u64).is_some_and(|s| s <= step))
                .map(|r| r.to_string())
                .collect(),
            None => Vec::new(),
        };
        let mut file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in kept {
            writeln!(file, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(MetricsLog { path, file: Some(file), tracking: crate::track::Trackers::none() })
    }

    /// A log that writes nothing (ranks other than the main process).
    pub fn discard(output_dir: &Path) -> MetricsLog {
        MetricsLog { path: output_dir.join("metrics.jsonl"), file: None, tracking: crate::track::Trackers::none() }
    }

    /// Hands every record from now on to these trackers too.
    pub fn track(mut self, trackers: crate::track::Trackers) -> MetricsLog {
        self.tracking = trackers;
        self
    }

    pub fn write(&mut self, record: &Value) -> Result<(), String> {
        match &mut self.file {
            Some(file) => writeln!(file, "{record}").map_err(|e| format!("{}: {e}", self.path.display()))?,
            None => return Ok(()),
        }
        self.tracking.record(record);
        Ok(())
    }

    /// An optimizer step ended: `step` steps done, `epoch` epochs (fractional). Only trackers that
    /// follow steps (the OpenTelemetry metrics' step counter) see it; nothing is written.
    pub fn step_end(&mut self, step: u64, epoch: f64) {
        self.tracking.step_end(step, epoch);
    }

    /// Ends the trackers (after the outputs are written); returns where the run is tracked.
    pub fn finish_tracking(&mut self, status: crate::track::Status, output_dir: &Path) -> Vec<String> {
        self.tracking.finish(status, output_dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Every record of a metrics.jsonl (unreadable lines skipped).
pub fn read(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The training and evaluation loss curves of a metrics log as an SVG document.
pub fn loss_curve_svg(records: &[Value], title: &str) -> String {
    let series = |key: &str| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    };
    let train = series("loss");
    let eval = series("eval_loss");
    let all: Vec<&(f64, f64)> = train.iter().chain(&eval).collect();
    let (w, h, m) = (640.0, 400.0, 56.0);
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_min = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).min(f64::MAX);
    let y_max = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (y_min, y_max) = if all.is_empty() {
        (0.0, 1.0)
    } else if y_max > y_min {
        (y_min, y_max)
    } else {
        (y_min - 0.5, y_max + 0.5)
    };
    let px = |x: f64| m + x / x_max * (w - 2.0 * m);
    let py = |y: f64| h - m - (y - y_min) / (y_max - y_min) * (h - 2.0 * m);
    let path = |pts: &[(f64, f64)]| -> String {
        pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect::<Vec<_>>().join(" ")
    };
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        w / 2.0,
        esc(title)
    );
    svg += &format!(
        "<line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{b}\" stroke=\"black\"/>\n",
        b = h - m,
        r = w - m
    );
    for i in 0..=4 {
        let y = y_min + (y_max - y_min) * f64::from(i) / 4.0;
        svg += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{y:.3}</text>\n", m - 6.0, py(y) + 4.0);
        let x = x_max * f64::from(i) / 4.0;
        svg += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{x:.0}</text>\n", px(x), h - m + 18.0);
    }
    svg += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">optimizer step</text>\n", w / 2.0, h - 12.0);
    if train.len() > 1 {
        svg +=
            &format!("<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>\n", path(&train));
    }
    for &(x, y) in &eval {
        svg += &format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#d62728\"/>\n", px(x), py(y));
    }
    if eval.len() > 1 {
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"#d62728\" stroke-dasharray=\"4 3\" points=\"{}\"/>\n",
            path(&eval)
        );
    }
    svg += &format!(
        "<text x=\"{}\" y=\"{m}\" fill=\"#1f77b4\">— training loss</text>\n\
         <text x=\"{}\" y=\"{}\" fill=\"#d62728\">● validation loss</text>\n",
        w - m - 130.0,
        w - m - 130.0,
        m + 16.0
    );
    // `do_causal_lm_eval`'s figures (other scales than the loss): first and last evaluation.
    let mut line = 0.0;
    for key in GENERATION_METRICS {
        let points = series(key);
        if let (Some(first), Some(last)) = (points.first(), points.last()) {
            line += 16.0;
            svg += &format!(
                "<text x=\"{}\" y=\"{}\" fill=\"#555\">{} {:.3} → {:.3}</text>\n",
                w - m - 130.0,
                m + 16.0 + line,
                key.trim_start_matches("eval_"),
                first.1,
                last.1
            );
        }
    }
    svg + "</svg>\n"
}

/// The metrics.jsonl keys of `do_causal_lm_eval` that the loss curve lists.
const GENERATION_METRICS: &[&str] = &[
    "eval_sacrebleu",
    "eval_chrf",
    "eval_ter",
    "eval_rouge1",
    "eval_rouge2",
    "eval_rougeL",
    "eval_rougeLsum",
    "eval_exact_match",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_lists_generation_metrics() {
        let records: Vec<Value> = vec![
            serde_json::json!({"step": 0, "eval_loss": 3.0, "eval_chrf": 10.0}),
            serde_json::json!({"step": 4, "eval_loss": 2.0, "eval_chrf": 12.5}),
        ];
        let svg = loss_curve_svg(&records, "t");
        assert!(svg.contains("chrf 10.000 → 12.500") && svg.ends_with("</svg>\n"), "{svg}");
    }

    #[test]
    fn svg_has_both_curves() {
        let records: Vec<Value> = vec![
            serde_json::json!({"step": 1, "loss": 3.0}),
            serde_json::json!({"step": 2, "loss": 2.0}),
            serde_json::json!({"step": 2, "eval_loss": 2.5}),
        ];
        let svg = loss_curve_svg(&records, "a <run>");
        assert!(svg.contains("<polyline") && svg.contains("<circle") && svg.contains("a &lt;run&gt;"));
    }
}

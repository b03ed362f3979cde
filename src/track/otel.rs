//! Axolotl's OpenTelemetry metrics (`use_otel_metrics`): a Prometheus endpoint at
//! `http://otel_metrics_host:otel_metrics_port/metrics` that serves what Axolotl's
//! `OpenTelemetryMetricsCallback` serves through OpenTelemetry's SDK, its Prometheus exporter and
//! prometheus_client's HTTP server: the same metric names, HELP and TYPE lines, labels, unit
//! suffixes and number formatting (tests/otel.rs replays the calls of
//! scripts/reference/otel_goldens.py and compares the text).
//!
//! [`Meter`] is the callback with its SDK and exporter: gauges `axolotl_train_loss`,
//! `axolotl_eval_loss`, `axolotl_learning_rate`, `axolotl_epoch`, `axolotl_gradient_norm`,
//! `axolotl_memory_usage` (unit `MB`, so `axolotl_memory_usage_MB`), the counter
//! `axolotl_global_steps` (`axolotl_global_steps_total`), and one gauge per `eval_*` metric of an
//! evaluation (`axolotl_eval_<name>`, described "Evaluation metric: eval_<name>"; for `eval_loss`
//! that is a second family beside "Current evaluation loss", as Axolotl's exposition has it). A
//! family appears from its first measurement on, in that order, after prometheus_client's
//! `process_*` metrics and OpenTelemetry's `target_info`. Python's `python_gc_*` and
//! `python_info` are not served (recipe is no Python process); `target_info` names recipe's
//! process (service_name `unknown_service:recipe`, SDK `recipe`, language `rust`).
//!
//! [`Otel`] is the tracker. It makes the callback's calls as transformers' Trainer (5.24) makes
//! them, from the run's records (metrics.jsonl) and step ends:
//! - every optimizer step ends with `on_step_end` (the counter and the epoch; host values, no
//!   device read);
//! - a step's training record (it has `loss`) is gathered into the logging window ([`LogWindow`]);
//!   `on_log` comes at logging steps only, the steps whose number is a multiple of
//!   `logging_steps` (`DefaultFlowCallback.on_step_end`), and step 1 of an `rl:` run (Axolotl's
//!   RL trainer builder sets `logging_first_step=True`; its causal builder, reward models included,
//!   does not), with the logs `_maybe_log_save_evaluate`
//!   builds: `loss` the window's mean, `tr_loss / (global_step - _globalstep_last_logged)` where
//!   `tr_loss` is a float32 sum of the window's losses, then divided in float64, not rounded
//!   (transformers adds each micro-batch's share of a step's loss on the device in float32; recipe
//!   adds each step's loss as its record has it, a float32 value: the same sum but for float32
//!   rounding when gradients accumulate over micro-batches); `grad_norm` and `learning_rate`
//!   (metrics.jsonl's `lr`) those of the logging step; `epoch` the epoch after that step, as
//!   transformers' `log` adds it. The run's last step is no logging step unless its number is such a multiple:
//!   transformers sets `should_log` at `max_steps` only then, so the losses of a final partial
//!   window never reach `on_log` (recipe's loop still writes their records; the gauges keep the
//!   last full window's values);
//! - an evaluation's record (`eval_*`) is its `on_log` call (with the epoch) and its `on_evaluate`
//!   call, at once; any other record (`forgetting_perplexity`, which Axolotl has not) is an
//!   `on_log` call at once, which moves nothing but the epoch gauge, to the value it already has.
//!
//! The server is a thread that renders the text under the meter's lock for each request; the
//! training loop only updates numbers under that lock.

use super::{Point, Status, Tracker};
use crate::plan::tracking::OtelPlan;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The meter's name, Axolotl's `metrics.get_meter("axolotl.training")`: the `otel_scope_name` label.
pub const SCOPE: &str = "axolotl.training";

/// prometheus_client's Content-Type for the text format it serves by default.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Set in tests: at the end of the run the tracker scrapes its own endpoint over HTTP and writes the
/// response there (status line, headers, body), so a test reads what a scrape saw without racing
/// the run.
pub const SCRAPE_AT_END_ENV: &str = "RECIPE_OTEL_SCRAPE_AT_END";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One instrument with its value, once measured.
#[derive(Debug, Clone)]
struct Instrument {
    /// OpenTelemetry's identity of an instrument: its name lowercased, kind, unit and description.
    name: String,
    kind: Kind,
    unit: &'static str,
    description: String,
    value: f64,
}

/// The callback's instruments, in the order of their first measurement (the SDK's storage order).
#[derive(Debug, Clone, Default)]
pub struct Meter {
    instruments: Vec<Instrument>,
}

/// OpenTelemetry's instrument name rule: `[a-zA-Z][-_./a-zA-Z0-9]{0,254}`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 255
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl Meter {
    pub fn new() -> Meter {
        Meter::default()
    }

    /// Records a measurement: `set` for a gauge, `add` for a counter. An invalid name is the error
    /// the SDK raises (Axolotl logs it and goes on).
    fn measure(&mut self, name: &str, kind: Kind, unit: &'static str, description: &str, v: f64) -> Result<(), String> {
        if !valid_name(name) {
            return Err(format!(
                "`{name}` is not an OpenTelemetry instrument name ([a-zA-Z][-_./a-zA-Z0-9]{{0,254}}); not served"
            ));
        }
        let lower = name.to_ascii_lowercase();
        let found = self
            .instruments
            .iter_mut()
            .find(|i| i.name == lower && i.kind == kind && i.unit == unit && i.description == description);
        match (found, kind) {
            (Some(i), Kind::Gauge) => i.value = v,
            (Some(i), Kind::Counter) => i.value += v,
            (None, _) => self.instruments.push(Instrument {
                name: lower,
                kind,
                unit,
                description: description.to_string(),
                value: v,
            }),
        }
        Ok(())
    }

    fn gauge(&mut self, name: &str, description: &str, v: f64) {
        let unit = if name == "axolotl_memory_usage" { "MB" } else { "1" };
        // Axolotl's own names are valid.
        let _ = self.measure(name, Kind::Gauge, unit, description, v);
    }

    /// `on_log(logs)`: the keys Axolotl's callback reads, in its order.
    pub fn on_log(&mut self, logs: &[(String, f64)]) {
        let get = |key: &str| logs.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        for (key, name, description) in [
            ("loss", "axolotl_train_loss", "Current training loss"),
            ("eval_loss", "axolotl_eval_loss", "Current evaluation loss"),
            ("learning_rate", "axolotl_learning_rate", "Current learning rate"),
            ("epoch", "axolotl_epoch", "Current training epoch"),
            ("grad_norm", "axolotl_gradient_norm", "Gradient norm"),
            ("memory_usage", "axolotl_memory_usage", "Current memory usage in MB"),
        ] {
            if let Some(v) = get(key) {
                self.gauge(name, description, v);
            }
        }
    }

    /// `on_step_end`: one more step, and the epoch (transformers' `state.epoch`) when known.
    pub fn on_step_end(&mut self, epoch: Option<f64>) {
        let _ = self.measure("axolotl_global_steps", Kind::Counter, "1", "Total training steps completed", 1.0);
        if let Some(e) = epoch {
            self.gauge("axolotl_epoch", "Current training epoch", e);
        }
    }

    /// `on_evaluate(metrics)`: `eval_loss`, then a gauge for every `eval_*` number. Returns the
    /// warnings Axolotl logs (a metric whose name OpenTelemetry refuses).
    pub fn on_evaluate(&mut self, metrics: &[(String, f64)]) -> Vec<String> {
        if let Some((_, v)) = metrics.iter().find(|(k, _)| k == "eval_loss") {
            self.gauge("axolotl_eval_loss", "Current evaluation loss", *v);
        }
        let mut warnings = Vec::new();
        for (key, v) in metrics.iter().filter(|(k, _)| k.starts_with("eval_")) {
            let name = format!("axolotl_{key}");
            if let Err(e) = self.measure(&name, Kind::Gauge, "1", &format!("Evaluation metric: {key}"), *v) {
                warnings.push(e);
            }
        }
        warnings
    }

    /// Whether anything was measured (OpenTelemetry's exporter serves `target_info` only then).
    pub fn is_empty(&self) -> bool {
        self.instruments.is_empty()
    }

    /// The exporter's part of the exposition: `target_info` with `resource`, then a family per
    /// (name, description, unit, type) in the order of first measurement.
    pub fn exposition(&self, resource: &Resource) -> String {
        if self.is_empty() {
            return String::new();
        }
        let mut out = String::new();
        let labels: Vec<(String, String)> = resource.0.iter().map(|(k, v)| (sanitize_label(k), v.clone())).collect();
        family(&mut out, "target_info", "Target metadata", "gauge", &[(labels, 1.0)]);
        let scope = vec![
            ("otel_scope_name".to_string(), SCOPE.to_string()),
            ("otel_scope_schema_url".to_string(), String::new()),
            ("otel_scope_version".to_string(), String::new()),
        ];
        // (exported name, description, kind) -> the samples of that family.
        let mut families: Vec<(String, &str, Kind, Vec<f64>)> = Vec::new();
        for i in &self.instruments {
            let unit = map_unit(i.unit);
            let mut name = sanitize_name(&i.name);
            if i.kind == Kind::Counter
                && let Some(stem) = name.strip_suffix("_total")
            {
                name = stem.to_string();
            }
            if !unit.is_empty() && !name.ends_with(&format!("_{unit}")) {
                name = format!("{name}_{unit}");
            }
            match families.iter_mut().find(|f| f.0 == name && f.1 == i.description && f.2 == i.kind) {
                Some(f) => f.3.push(i.value),
                None => families.push((name, &i.description, i.kind, vec![i.value])),
            }
        }
        for (name, help, kind, values) in families {
            let samples: Vec<(Vec<(String, String)>, f64)> = values.into_iter().map(|v| (scope.clone(), v)).collect();
            match kind {
                Kind::Counter => family(&mut out, &format!("{name}_total"), help, "counter", &samples),
                Kind::Gauge => family(&mut out, &name, help, "gauge", &samples),
            }
        }
        out
    }
}

/// One family in prometheus_client's text format (labels sorted by name).
fn family(out: &mut String, name: &str, help: &str, kind: &str, samples: &[(Vec<(String, String)>, f64)]) {
    out.push_str(&format!("# HELP {name} {}\n# TYPE {name} {kind}\n", help.replace('\\', r"\\").replace('\n', r"\n")));
    for (labels, value) in samples {
        let mut labels = labels.clone();
        labels.sort();
        let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
        if text.is_empty() {
            out.push_str(&format!("{name} {}\n", go_float(*value)));
        } else {
            out.push_str(&format!("{name}{{{}}} {}\n", text.join(","), go_float(*value)));
        }
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n").replace('"', "\\\"")
}

/// The exporter's metric name rule: a leading digit becomes `_`, every run of characters other
/// than `[a-zA-Z0-9:]` (`_` included: `a__b` is `a_b`) one `_`.
fn sanitize_name(name: &str) -> String {
    sanitize(name, |c| c.is_ascii_alphanumeric() || c == ':')
}

/// The same for label names, without `:`.
fn sanitize_label(name: &str) -> String {
    sanitize(name, |c| c.is_ascii_alphanumeric())
}

fn sanitize(name: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::new();
    let mut in_run = false;
    for (i, c) in name.chars().enumerate() {
        // A leading digit becomes `_`, which (like `_` anywhere) is outside the kept set.
        let c = if i == 0 && c.is_ascii_digit() { '_' } else { c };
        if keep(c) {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('_');
            in_run = true;
        }
    }
    out
}

/// The exporter's unit mapping for the units Axolotl's instruments carry: "1" adds nothing, other
/// units are their sanitized text ("MB" stays "MB"; only "MBy" would be "megabytes").
fn map_unit(unit: &str) -> String {
    match unit {
        "1" => String::new(),
        "By" => "bytes".into(),
        "MBy" => "megabytes".into(),
        "s" => "seconds".into(),
        "%" => "percent".into(),
        u => sanitize_name(u).trim_matches('_').to_string(),
    }
}

/// A number as prometheus_client writes it (`floatToGoString`): Python's `repr`, except positive
/// numbers of seven or more integer digits, which go to Go's exponent form (`1.2345678e+07`).
pub fn go_float(x: f64) -> String {
    if x == f64::INFINITY {
        return "+Inf".into();
    }
    if x == f64::NEG_INFINITY {
        return "-Inf".into();
    }
    if x.is_nan() {
        return "NaN".into();
    }
    let s = py_repr(x);
    match s.find('.') {
        Some(dot) if x > 0.0 && dot > 6 => {
            let digits = format!("{}.{}{}", &s[..1], &s[1..dot], &s[dot + 1..]);
            let mantissa = digits.trim_end_matches(['0', '.']);
            format!("{mantissa}e+{:02}", dot - 1)
        }
        _ => s,
    }
}

/// Python's `repr` of a finite float: the shortest digits that read back, positional for
/// exponents -4 to 15 (with `.0` on whole numbers), else `d.ddde±XX`.
pub fn py_repr(x: f64) -> String {
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// OpenTelemetry's resource: the attributes `target_info` carries, sorted as served.
#[derive(Debug, Clone)]
pub struct Resource(pub Vec<(String, String)>);

impl Resource {
    /// The SDK's default resource for this process: a random `service.instance.id`, the
    /// `unknown_service:<executable>` service name, and the telemetry SDK (recipe's own exporter).
    pub fn detect() -> Resource {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "recipe".into());
        let b: [u8; 16] = rand::random();
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        // A version-4 UUID, as the SDK draws one.
        let v4 = format!(
            "{}-{}-4{}-{:x}{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            (b[8] & 0x3) | 0x8,
            &hex[17..20],
            &hex[20..32]
        );
        Resource(vec![
            ("service.instance.id".into(), v4),
            ("service.name".into(), format!("unknown_service:{exe}")),
            ("telemetry.sdk.language".into(), "rust".into()),
            ("telemetry.sdk.name".into(), "recipe".into()),
            ("telemetry.sdk.version".into(), env!("CARGO_PKG_VERSION").into()),
        ])
    }
}

/// prometheus_client's process collector (Linux): memory, start time, CPU time and file
/// descriptors of this process from /proc. Empty where /proc cannot be read.
pub fn process_metrics() -> String {
    let mut out = String::new();
    let Some(btime) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())))
    else {
        return out;
    };
    // SAFETY: sysconf reads a constant of the system.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK) as f64, libc::sysconf(libc::_SC_PAGESIZE) as f64) };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        let parts: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let f = |i: usize| parts.get(i).and_then(|v| v.parse::<f64>().ok());
        if let (Some(vsize), Some(rss), Some(start), Some(utime), Some(stime)) = (f(20), f(21), f(19), f(11), f(12)) {
            let none: Vec<(String, String)> = Vec::new();
            family(
                &mut out,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                "gauge",
                &[(none.clone(), vsize)],
            );
            family(
                &mut out,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                "gauge",
                &[(none.clone(), rss * page)],
            );
            family(
                &mut out,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                "gauge",
                &[(none.clone(), start / ticks + btime)],
            );
            family(
                &mut out,
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                "counter",
                &[(none, utime / ticks + stime / ticks)],
            );
        }
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Max open file"))
            .and_then(|l| l.split_whitespace().nth(3)?.parse::<f64>().ok())
    });
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64);
    if let (Some(max), Ok(open)) = (max_fds, open_fds) {
        family(&mut out, "process_open_fds", "Number of open file descriptors.", "gauge", &[(Vec::new(), open)]);
        family(&mut out, "process_max_fds", "Maximum number of open file descriptors.", "gauge", &[(Vec::new(), max)]);
    }
    out
}

/// The whole exposition a scrape gets.
fn scrape_text(meter: &Mutex<Meter>, resource: &Resource) -> String {
    let mut text = process_metrics();
    text += &meter.lock().unwrap_or_else(|e| e.into_inner()).exposition(resource);
    text
}

/// transformers' logging window: the training losses since the last logging step, summed as its
/// on-device `tr_loss` sums them (float32), and the rule that decides when `on_log` comes.
#[derive(Debug, Clone)]
pub struct LogWindow {
    logging_steps: u64,
    /// transformers' `logging_first_step`: step 1 is a logging step too.
    first_step: bool,
    /// `tr_loss`: the float32 sum of the window's losses.
    sum: f32,
    /// `global_step - _globalstep_last_logged`: one record per step, so the records gathered.
    steps: u64,
}

impl LogWindow {
    /// A window that logs every `logging_steps` steps (at least 1), and at step 1 when
    /// `first_step` (transformers' `logging_first_step`; the next window starts after it).
    pub fn new(logging_steps: u64, first_step: bool) -> LogWindow {
        LogWindow { logging_steps: logging_steps.max(1), first_step, sum: 0.0, steps: 0 }
    }

    /// One step's training record (`logs`, with its `loss`) at `step`: the logs of the callback's
    /// `on_log` call when `step` is a logging step (`loss` the window's mean, the rest the step's
    /// own values), else nothing (gathered).
    pub fn train(&mut self, step: u64, logs: &[(String, f64)]) -> Option<Vec<(String, f64)>> {
        let loss = logs.iter().find(|(k, _)| k == "loss").map_or(0.0, |(_, v)| *v);
        // `self._tr_loss += tr_loss_step`, both float32 tensors.
        self.sum += loss as f32;
        self.steps += 1;
        if !step.is_multiple_of(self.logging_steps) && !(self.first_step && step == 1) {
            return None;
        }
        // `tr_loss_scalar / (self.state.global_step - self._globalstep_last_logged)`: `.item()`
        // gives the float32 sum as a Python float, divided by an int.
        let mean = f64::from(self.sum) / self.steps as f64;
        (self.sum, self.steps) = (0.0, 0);
        Some(logs.iter().map(|(k, v)| (k.clone(), if k == "loss" { mean } else { *v })).collect())
    }
}

/// The tracker: the meter, the address it is served at, the epoch of the last step, and the
/// logging window.
pub struct Otel {
    meter: Arc<Mutex<Meter>>,
    url: String,
    addr: SocketAddr,
    epoch: f64,
    window: LogWindow,
}

impl Otel {
    /// Binds `host:port` (the first address the host resolves to, as prometheus_client binds) and
    /// serves from a thread until the process exits. A port in use is an error naming
    /// `otel_metrics_port`. Training losses reach the meter every `logging_steps` steps (the
    /// plan's `logging_steps`), as their window's mean, and at step 1 when `logging_first_step`
    /// (an `rl:` run, as Axolotl's RL trainer builder sets it).
    pub fn start(plan: &OtelPlan, logging_steps: u64, logging_first_step: bool) -> Result<Otel, String> {
        let (host, port) = (plan.host.as_str(), plan.port);
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("otel_metrics_host: `{host}` does not resolve to an address to listen on ({e})"))?
            .next()
            .ok_or_else(|| format!("otel_metrics_host: `{host}` resolves to no address"))?;
        let listener = TcpListener::bind(addr).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    "otel_metrics_port: {port} is in use on {addr} (otel_metrics_host `{host}`) by another process; \
                     set otel_metrics_port to a free port"
                )
            } else {
                format!(
                    "otel_metrics_host / otel_metrics_port: cannot listen on {addr} (`{host}`, {port}): {e}; set them \
                     to an address this machine can listen on"
                )
            }
        })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let meter = Arc::new(Mutex::new(Meter::new()));
        let served = Arc::clone(&meter);
        let resource = Arc::new(Resource::detect());
        std::thread::Builder::new()
            .name("otel-metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        // A thread per connection, so a stalled client does not hold up the next scrape.
                        Ok(stream) => {
                            let (served, resource) = (Arc::clone(&served), Arc::clone(&resource));
                            let _ = std::thread::Builder::new().name("otel-scrape".into()).spawn(move || {
                                let _ = respond(stream, &served, &resource);
                            });
                        }
                        // Out of file descriptors, say: wait rather than spin.
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
            .map_err(|e| format!("cannot start the metrics server thread: {e}"))?;
        tracing::info!("OpenTelemetry metrics server started on {}", plan.url());
        Ok(Otel { meter, url: plan.url(), addr, epoch: 0.0, window: LogWindow::new(logging_steps, logging_first_step) })
    }
}

/// One request, whatever its method and path (as prometheus_client's server): the exposition, or
/// an empty body for `/favicon.ico`; HEAD gets the headers only.
fn respond(mut stream: TcpStream, meter: &Mutex<Meter>, resource: &Resource) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (parts.next().unwrap_or("GET"), parts.next().unwrap_or("/"));
    let body = if path == "/favicon.ico" { String::new() } else { scrape_text(meter, resource) };
    let mut reply = format!(
        "HTTP/1.0 200 OK\r\nServer: recipe\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        reply.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&reply)?;
    stream.flush()
}

/// A GET of `http://addr/metrics`: the whole response (status line, headers, body).
pub fn scrape(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("{addr}: {e}"))?;
    Ok(out)
}

/// A record's metrics under their metrics.jsonl keys (`train/loss` -> `loss`, `eval/loss` ->
/// `eval_loss`), `lr` as transformers logs it (`learning_rate`).
fn logs_of(point: &Point) -> Vec<(String, f64)> {
    point
        .metrics
        .iter()
        .map(|(name, v)| {
            let key = match name.strip_prefix("eval/") {
                Some(rest) => format!("eval_{rest}"),
                None => name.strip_prefix("train/").unwrap_or(name).to_string(),
            };
            (if key == "lr" { "learning_rate".to_string() } else { key }, *v)
        })
        .collect()
}

impl Tracker for Otel {
    fn name(&self) -> &'static str {
        "OpenTelemetry metrics"
    }

    fn location(&self) -> String {
        self.url.clone()
    }

    fn log(&mut self, point: &Point) -> Result<(), String> {
        let mut logs = logs_of(point);
        logs.push(("epoch".into(), self.epoch));
        let evaluation = logs.iter().any(|(k, _)| k.starts_with("eval_"));
        if !evaluation && logs.iter().any(|(k, _)| k == "loss") {
            // A training step's record: on_log at logging steps only, with the window's mean.
            // The logging step's record comes right after its step end (the loop reads its
            // losses there), so `self.epoch` is that step's.
            match self.window.train(point.step, &logs) {
                Some(logged) => logs = logged,
                None => return Ok(()),
            }
        }
        let mut meter = self.meter.lock().unwrap_or_else(|e| e.into_inner());
        meter.on_log(&logs);
        if evaluation {
            for w in meter.on_evaluate(&logs) {
                tracing::warn!("OpenTelemetry metrics: {w}");
            }
        }
        Ok(())
    }

    fn step_end(&mut self, _step: u64, epoch: f64) {
        self.epoch = epoch;
        self.meter.lock().unwrap_or_else(|e| e.into_inner()).on_step_end(Some(epoch));
    }

    fn finish(&mut self, _status: Status, _output_dir: &Path) -> Result<(), String> {
        if let Some(path) = std::env::var_os(SCRAPE_AT_END_ENV) {
            let text = scrape(self.addr)?;
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", Path::new(&path).display()))?;
        }
        tracing::info!("metrics stay at {} until the process exits", self.url);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_units_as_the_exporter_writes_them() {
        assert_eq!(sanitize_name("axolotl_eval_rewards/chosen"), "axolotl_eval_rewards_chosen");
        assert_eq!(sanitize_name("a.b-c//d"), "a_b_c_d");
        assert_eq!(sanitize_name("1abc"), "_abc");
        assert_eq!(sanitize_name("a:b"), "a:b");
        assert_eq!(sanitize_name("a__b"), "a_b");
        assert_eq!(sanitize_label("service.instance.id"), "service_instance_id");
        assert_eq!(map_unit("1"), "");
        assert_eq!(map_unit("MB"), "MB");
        assert!(valid_name("axolotl_eval_a.b-c/d") && !valid_name("axolotl_eval_a b") && !valid_name("_x"));
        assert!(!valid_name(&format!("a{}", "b".repeat(255))));
    }

    /// transformers' window: `on_log` at multiples of logging_steps (and step 1 with
    /// `logging_first_step`) only, the loss a float32 sum
    /// over the window divided by its steps, the other values the logging step's own.
    #[test]
    fn the_window_logs_its_mean_at_logging_steps_only() {
        let logs = |loss: f64, grad_norm: f64, lr: f64| {
            vec![
                ("loss".to_string(), loss),
                ("grad_norm".to_string(), grad_norm),
                ("learning_rate".to_string(), lr),
                ("epoch".to_string(), 0.5),
            ]
        };
        let mut w = LogWindow::new(2, false);
        assert_eq!(w.train(1, &logs(0.1, 1.0, 1e-4)), None);
        let logged = w.train(2, &logs(0.2, 2.0, 2e-4)).unwrap();
        // torch: tensor(0.) + tensor(0.1) + tensor(0.2) in float32, `.item()`, `/ 2`.
        let mean = f64::from(0.1f32 + 0.2f32) / 2.0;
        assert_eq!(mean, 0.15000000596046448);
        assert_ne!(mean, (0.1 + 0.2) / 2.0, "the float32 sum is not the float64 one");
        assert_eq!(logged, logs(mean, 2.0, 2e-4));
        // The next window starts empty; a partial window at the end is never logged.
        assert_eq!(w.train(3, &logs(3.0, 3.0, 3e-4)), None);
        assert_eq!(w.train(4, &logs(5.0, 4.0, 4e-4)), Some(logs(4.0, 4.0, 4e-4)));
        assert_eq!(w.train(5, &logs(7.0, 5.0, 5e-4)), None);
        // Every step a logging step: each loss as it is (a float32 value stays itself).
        let mut w = LogWindow::new(1, false);
        let x = f64::from(2.3456789f32);
        assert_eq!(w.train(7, &logs(x, 1.0, 1e-4)), Some(logs(x, 1.0, 1e-4)));
        // A window after a resume counts the steps since it, as `_globalstep_last_logged` starts there.
        let mut w = LogWindow::new(4, false);
        assert_eq!(w.train(7, &logs(1.0, 1.0, 1e-4)), None);
        assert_eq!(w.train(8, &logs(2.0, 1.0, 1e-4)), Some(logs(1.5, 1.0, 1e-4)));
        // `logging_first_step` (an `rl:` run): step 1 logs its own loss, the next window is steps
        // 2..=4 (`_globalstep_last_logged` = 1), then multiples of logging_steps as before.
        let mut w = LogWindow::new(4, true);
        assert_eq!(w.train(1, &logs(1.0, 1.0, 1e-4)), Some(logs(1.0, 1.0, 1e-4)));
        assert_eq!(w.train(2, &logs(2.0, 2.0, 2e-4)), None);
        assert_eq!(w.train(3, &logs(3.0, 3.0, 3e-4)), None);
        assert_eq!(w.train(4, &logs(7.0, 4.0, 4e-4)), Some(logs(4.0, 4.0, 4e-4)));
        assert_eq!(w.train(5, &logs(5.0, 5.0, 5e-4)), None);
        // Resumed past step 1: no first-step log.
        let mut w = LogWindow::new(4, true);
        assert_eq!(w.train(3, &logs(3.0, 3.0, 3e-4)), None);
        assert_eq!(w.train(4, &logs(5.0, 4.0, 4e-4)), Some(logs(4.0, 4.0, 4e-4)));
    }

    #[test]
    fn numbers_as_python_writes_them() {
        for (x, s) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (2.5, "2.5"),
            (2e-4, "0.0002"),
            (1e-5, "1e-05"),
            (-3.5e-5, "-3.5e-05"),
            (123456.0, "123456.0"),
            (1234567.0, "1.234567e+06"),
            (12345678.9, "1.23456789e+07"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
            (-1234567.0, "-1234567.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (f64::INFINITY, "+Inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(go_float(x), s, "{x}");
        }
    }
}

//! Axolotl's OpenTelemetry metrics (`use_otel_metrics`, src/track/otel.rs) against Axolotl's own
//! callback: scripts/reference/otel_goldens.py drove `OpenTelemetryMetricsCallback` (OpenTelemetry
//! SDK 1.45.2, its Prometheus exporter 0.66b2, prometheus_client 0.26.0) through a 4-step run's
//! calls and scraped /metrics after several of them (tests/golden/otel/callback.json). Here the
//! same calls go into recipe's meter, and the same run as recipe's records and step ends goes
//! through the tracker and its HTTP server; each scrape must equal Axolotl's text but for what
//! must differ: Python's own `python_gc_*` / `python_info` families (not served), the values of
//! the `process_*` samples (another process), and five `target_info` label values
//! (`service_instance_id`, a random UUID in both; `service_name`, `unknown_service:` and the
//! executable; `telemetry_sdk_language`, `_name`, `_version`: recipe's exporter, not Python's SDK).
//! Every name, HELP and TYPE line, label name, other label value, sample value and the order of
//! the families is compared byte for byte (the records logging every 2 steps, as the golden's
//! Trainer: the training loss served is a window's mean). Then a CLI run on stories260k serves its
//! last logging window's mean loss (as transformers computes it from metrics.jsonl's losses) and
//! no final partial window, a port in use stops a run at its start naming otel_metrics_port, the
//! Axolotl example validates, and the plan states the endpoint.

mod common;

use recipe::track::otel::{self, Meter, Resource};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("tests/golden/otel/callback.json")).unwrap()).unwrap()
}

/// A JSON dict as the callback reads it: numbers and booleans (Python's bool is an int), no strings.
fn numbers(v: &Value) -> Vec<(String, f64)> {
    v.as_object()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| match v {
            Value::Number(n) => Some((k.clone(), n.as_f64()?)),
            Value::Bool(b) => Some((k.clone(), f64::from(u8::from(*b)))),
            _ => None,
        })
        .collect()
}

/// The exposition with what must differ between Python's process and recipe's normalised.
fn normalised(text: &str) -> String {
    let uuid = regex::Regex::new(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$").unwrap();
    let label = regex::Regex::new(r#"(\w+)="([^"]*)""#).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let name = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")).unwrap_or(line);
        if name.starts_with("python_") {
            continue;
        }
        if line.starts_with("process_") {
            let (metric, value) = line.rsplit_once(' ').unwrap();
            assert!(otel::go_float(value.parse::<f64>().unwrap()) == value, "{line}");
            out += &format!("{metric} <value>\n");
        } else if line.starts_with("target_info{") {
            let line = label.replace_all(line, |c: &regex::Captures| {
                let (k, v) = (&c[1], &c[2]);
                match k {
                    "service_instance_id" => {
                        assert!(uuid.is_match(v), "{v}");
                        format!("{k}=\"<uuid4>\"")
                    }
                    "service_name" => {
                        assert!(v.starts_with("unknown_service:") && v.len() > 16, "{v}");
                        format!("{k}=\"unknown_service:<executable>\"")
                    }
                    "telemetry_sdk_language" | "telemetry_sdk_name" | "telemetry_sdk_version" => {
                        assert!(!v.is_empty(), "{k}");
                        format!("{k}=\"<sdk>\"")
                    }
                    _ => c[0].to_string(),
                }
            });
            out += &line;
            out.push('\n');
        } else {
            out += line;
            out.push('\n');
        }
    }
    out
}

fn assert_same_exposition(ours: &str, theirs: &str, what: &str) {
    let (a, b) = (normalised(ours), normalised(theirs));
    assert!(a == b, "{what}: recipe's exposition differs from Axolotl's\n--- recipe\n{a}\n--- Axolotl\n{b}");
}

/// The golden's number table: prometheus_client's floatToGoString of Python's floats.
#[test]
fn numbers_are_written_as_prometheus_client_writes_them() {
    let g = golden();
    for pair in g["floats"].as_array().unwrap() {
        let (repr, go) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        let x: f64 = repr.parse().unwrap();
        assert_eq!(otel::go_float(x), go, "{repr}");
        if x.is_finite() {
            assert_eq!(otel::py_repr(x), repr);
        }
    }
}

/// Axolotl's calls replayed into recipe's meter: every scrape equal to Axolotl's.
#[test]
fn the_callbacks_calls_give_axolotls_exposition() {
    let g = golden();
    let calls = g["calls"].as_array().unwrap();
    let mut meter = Meter::new();
    let resource = Resource::detect();
    let mut done = 0;
    let mut warnings = Vec::new();
    for scrape in g["scrapes"].as_array().unwrap() {
        let upto = scrape["after_calls"].as_u64().unwrap() as usize;
        for c in &calls[done..upto] {
            match c["call"].as_str().unwrap() {
                "on_train_begin" => {}
                "on_step_end" => meter.on_step_end(c["epoch"].as_f64()),
                "on_log" => meter.on_log(&numbers(&c["logs"])),
                "on_evaluate" => warnings.extend(meter.on_evaluate(&numbers(&c["metrics"]))),
                other => panic!("{other}"),
            }
        }
        done = upto;
        let ours = otel::process_metrics() + &meter.exposition(&resource);
        assert_same_exposition(&ours, scrape["text"].as_str().unwrap(), &format!("after {upto} calls"));
    }
    // The name OpenTelemetry refuses is skipped with a warning, as Axolotl logs one.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("axolotl_eval_bad name"), "{warnings:?}");
    assert_eq!(g["content_type"], otel::CONTENT_TYPE);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The body of an HTTP response, after checking its status and Content-Type.
fn body_of(response: &str) -> &str {
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(head.contains(&format!("Content-Type: {}\r\n", otel::CONTENT_TYPE)), "{head}");
    body
}

/// The losses of a logging window of two steps (float32 values, as the run's records have them)
/// around a logged loss: the first step's and the second's.
fn window_losses(loss: f64) -> (f64, f64) {
    (f64::from((loss + 0.0625) as f32), f64::from((loss - 0.0625) as f32))
}

/// transformers' window mean: `tr_loss` (a float32 tensor, from 0) adds each loss, `.item()`, then
/// divided by the steps since the last log.
fn transformers_mean(losses: &[f64]) -> f64 {
    f64::from(losses.iter().fold(0.0f32, |sum, l| sum + *l as f32)) / losses.len() as f64
}

/// The exposition with the `axolotl_train_loss` sample's value replaced by `loss`.
fn with_train_loss(text: &str, loss: f64) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("axolotl_train_loss{") {
            Some(_) => format!("{} {}\n", l.rsplit_once(' ').unwrap().0, otel::go_float(loss)),
            None => format!("{l}\n"),
        })
        .collect()
}

/// The same run as recipe's tracker sees it (records of metrics.jsonl, step ends), served over
/// HTTP: each scrape equal to Axolotl's. The run logs every 2 steps (as the golden's Trainer), so
/// each of Axolotl's training `on_log` calls is two records: the step before (its own loss, grad
/// norm and learning rate, which must not be served) and the logging step (the call's values);
/// `axolotl_train_loss` is the two losses' mean as transformers computes it. The golden's first
/// logged loss (2.4375) is such a mean; its second (0.1 + 0.2 in float64) is no mean of float32
/// losses, so that one sample is compared with the records' mean instead. An evaluation is one
/// record (the callback's on_log and on_evaluate); `learning_rate` is metrics.jsonl's `lr`.
#[cfg(feature = "exec")]
#[test]
fn recipes_records_served_over_http_give_axolotls_exposition() {
    use recipe::track::Tracker;
    let g = golden();
    let calls = g["calls"].as_array().unwrap();
    let plan = recipe::plan::tracking::OtelPlan { host: "127.0.0.1".into(), port: free_port() };
    let mut tracker = otel::Otel::start(&plan, 2, false).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", plan.port).parse().unwrap();
    let (mut step, mut done) = (0u64, 0usize);
    let mut served_loss = None;
    let mut replaced = 0;
    for scrape in g["scrapes"].as_array().unwrap() {
        let upto = scrape["after_calls"].as_u64().unwrap() as usize;
        while done < upto {
            let c = &calls[done];
            done += 1;
            match c["call"].as_str().unwrap() {
                "on_train_begin" => {}
                "on_step_end" => {
                    step += 1;
                    tracker.step_end(step, c["epoch"].as_f64().unwrap());
                    if step % 2 == 1 {
                        // The window's first step: its record, with the next training log's loss.
                        let next = calls[done..].iter().find_map(|c| c["logs"].get("loss")?.as_f64()).unwrap();
                        let record = serde_json::json!({
                            "step": step, "loss": window_losses(next).0, "grad_norm": 99.0, "lr": 0.5,
                        });
                        tracker.log(&recipe::track::point(&record, 0.0).unwrap()).unwrap();
                    }
                }
                "on_log" => {
                    let mut record = serde_json::json!({"step": step});
                    for (k, v) in numbers(&c["logs"]).into_iter().filter(|(k, _)| k != "epoch") {
                        record[if k == "learning_rate" { "lr".to_string() } else { k }] = serde_json::json!(v);
                    }
                    if let Some(loss) = c["logs"].get("loss").and_then(Value::as_f64) {
                        assert_eq!(step % 2, 0);
                        let (first, second) = window_losses(loss);
                        record["loss"] = serde_json::json!(second);
                        let mean = transformers_mean(&[first, second]);
                        assert_ne!(mean, second, "the window's mean is not its last loss");
                        if f64::from(loss as f32) == loss {
                            assert_eq!(mean, loss, "a float32 loss is a window's mean");
                        }
                        served_loss = Some((loss, mean));
                    }
                    if c["logs"].get("eval_loss").is_some() {
                        // The evaluation's on_evaluate comes with the same record.
                        assert_eq!(calls[done]["call"], "on_evaluate");
                        done += 1;
                    }
                    tracker.log(&recipe::track::point(&record, 0.0).unwrap()).unwrap();
                }
                other => panic!("{other} outside an evaluation record"),
            }
        }
        let mut theirs = scrape["text"].as_str().unwrap().to_string();
        if let Some((logged, mean)) = served_loss
            && mean != logged
        {
            assert!(theirs.contains(&format!("}} {}\n", otel::go_float(logged))), "{theirs}");
            theirs = with_train_loss(&theirs, mean);
            replaced += 1;
        }
        let response = otel::scrape(addr).unwrap();
        assert_same_exposition(body_of(&response), &theirs, &format!("after {upto} calls"));
    }
    assert_eq!(replaced, 1, "only the last scrape's loss is no float32 window's mean");
}

/// A small LoRA recipe on stories260k in `dir`, with `extra` lines appended.
fn write_recipe(dir: &Path, extra: &str) -> PathBuf {
    common::stories_lora_recipe(
        dir,
        &format!("sequence_len: 128\nlr_scheduler: cosine\nwarmup_steps: 2\nlogging_steps: 2\n{extra}"),
    )
}

/// The sample value of `name{...}` in an exposition (the first family of that name).
fn sample(text: &str, name: &str) -> Option<String> {
    text.lines().find(|l| l.starts_with(&format!("{name}{{"))).map(|l| l.rsplit_once(' ').unwrap().1.to_string())
}

/// `recipe run` with use_otel_metrics: the endpoint serves, at the end of the run (scraped over
/// HTTP by the test hook before the process exits), the step count, the epoch, the last logging
/// window's values as transformers logs them (the mean of its losses; the learning rate and
/// gradient norm of its last step), and the last evaluation, from metrics.jsonl's records. The run
/// logs every 2 steps and ends at step 7, off a logging step: transformers logs no final partial
/// window, so step 7's loss, learning rate and gradient norm are not served (its evaluation is).
#[cfg(feature = "exec")]
#[test]
fn a_run_serves_its_logged_values() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = write_recipe(
        dir.path(),
        &format!(
            "max_steps: 7\neval_steps: 3\nuse_otel_metrics: true\notel_metrics_host: 127.0.0.1\notel_metrics_port: {port}\n"
        ),
    );
    let scraped = dir.path().join("scrape.txt");
    let out = common::recipe_command()
        .arg("run")
        .arg(&path)
        .args(["--device", "cpu"])
        .env(otel::SCRAPE_AT_END_ENV, &scraped)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let url = format!("http://127.0.0.1:{port}/metrics");
    assert!(stdout.contains(&format!("tracked    OpenTelemetry metrics {url}")), "{stdout}");
    let response = std::fs::read_to_string(&scraped).unwrap();
    let text = body_of(&response);
    let records: Vec<Value> = std::fs::read_to_string(dir.path().join("out/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = |key: &str| records.iter().rev().find_map(|r| r.get(key).and_then(Value::as_f64)).unwrap();
    let go = |x: f64| Some(otel::go_float(x));
    assert_eq!(sample(text, "axolotl_global_steps_total"), go(7.0), "{text}");
    // Steps over the steps per epoch (an integer the run's data decides).
    let epoch: f64 = sample(text, "axolotl_epoch").unwrap().parse().unwrap();
    let per_epoch = (7.0 / epoch).round();
    assert!(per_epoch >= 1.0 && sample(text, "axolotl_epoch") == go(7.0 / per_epoch), "{text}");
    // One training record per step; the last logging window is steps 5 and 6.
    let train: Vec<&Value> = records.iter().filter(|r| r.get("loss").is_some()).collect();
    let steps: Vec<u64> = train.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=7).collect::<Vec<u64>>());
    let at = |step: u64, key: &str| train[step as usize - 1][key].as_f64().unwrap();
    let mean = transformers_mean(&[at(5, "loss"), at(6, "loss")]);
    // Guards the test: the mean must differ from both neighbouring steps' losses (the window's last,
    // step 6, and the run's last, step 7), or serving either would pass the check below.
    assert!(mean != at(6, "loss") && mean != at(7, "loss"), "{mean} {train:?}");
    assert_eq!(sample(text, "axolotl_train_loss"), go(mean), "{text}");
    assert_ne!(at(6, "lr"), at(7, "lr"));
    assert_eq!(sample(text, "axolotl_learning_rate"), go(at(6, "lr")), "{text}");
    assert_eq!(sample(text, "axolotl_gradient_norm"), go(at(6, "grad_norm")), "{text}");
    assert_eq!(sample(text, "axolotl_eval_loss"), go(last("eval_loss")));
    assert_eq!(records.last().unwrap()["step"], 7, "the final evaluation at step 7");
    // The second family of the same name, as Axolotl's on_evaluate makes it.
    assert!(text.contains("# HELP axolotl_eval_loss Evaluation metric: eval_loss\n"), "{text}");
    assert!(text.contains("# HELP target_info Target metadata\n") && text.contains("process_open_fds "), "{text}");
    assert!(sample(text, "axolotl_memory_usage_MB").is_none(), "recipe logs no memory_usage: {text}");
}

/// Two ranks: only the main process serves (a second server on the same port would stop the run
/// with the port in use), and its counter counts the run's steps once.
#[cfg(feature = "exec")]
#[test]
fn only_the_main_process_serves() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = write_recipe(
        dir.path(),
        &format!("max_steps: 4\nuse_otel_metrics: true\notel_metrics_host: 127.0.0.1\notel_metrics_port: {port}\n"),
    );
    let scraped = dir.path().join("scrape.txt");
    let out = common::recipe_command()
        .arg("run")
        .arg(&path)
        .args(["--device", "cpu", "--nproc-per-node", "2"])
        .env(otel::SCRAPE_AT_END_ENV, &scraped)
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}");
    let response = std::fs::read_to_string(&scraped).unwrap();
    assert_eq!(sample(body_of(&response), "axolotl_global_steps_total"), Some(otel::go_float(4.0)), "{response}");
}

/// A port another process listens on stops the run at its start, naming otel_metrics_port; no
/// step runs.
#[cfg(feature = "exec")]
#[test]
fn a_port_in_use_stops_the_run_at_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let path = write_recipe(
        dir.path(),
        &format!("max_steps: 2\nuse_otel_metrics: true\notel_metrics_host: 127.0.0.1\notel_metrics_port: {port}\n"),
    );
    let out = common::recipe_command().arg("run").arg(&path).args(["--device", "cpu"]).output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("otel_metrics_port") && all.contains("in use"), "{all}");
    let records = std::fs::read_to_string(dir.path().join("out/metrics.jsonl")).unwrap_or_default();
    assert!(records.is_empty(), "no step may run: {records}");
    drop(taken);
}

fn validate_json(path: &Path) -> Vec<Value> {
    let out = common::recipe_command().args(["validate", "--format", "json"]).arg(path).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["diagnostics"].as_array().cloned().unwrap_or_default()
}

/// The keys: accepted with use_otel_metrics (the plan states the endpoint, Axolotl's defaults where
/// unset), errors without it or with a host that is not one.
#[test]
fn keys_validate_and_the_plan_states_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 2\nuse_otel_metrics: true\n");
    let errors: Vec<Value> = validate_json(&path).into_iter().filter(|d| d["severity"] == "error").collect();
    assert!(errors.is_empty(), "{errors:?}");
    let plan = common::recipe_command().arg("plan").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&plan.stdout);
    let line = text.lines().find(|l| l.starts_with("tracking   ")).unwrap_or_else(|| panic!("{text}"));
    insta::assert_snapshot!("plan_tracking_line", line);

    let path = write_recipe(dir.path(), "max_steps: 2\notel_metrics_port: 9100\notel_metrics_host: localhost\n");
    let rules: Vec<(String, String)> = validate_json(&path)
        .iter()
        .filter(|d| d["severity"] == "error")
        .map(|d| (d["rule"].as_str().unwrap().to_string(), d["message"].as_str().unwrap().to_string()))
        .collect();
    insta::assert_debug_snapshot!("keys_without_the_switch", rules);

    let path = write_recipe(dir.path(), "max_steps: 2\nuse_otel_metrics: false\notel_metrics_port: 9100\n");
    let rules: Vec<String> = validate_json(&path)
        .iter()
        .filter(|d| d["severity"] == "error")
        .map(|d| d["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rules, ["`otel_metrics_port` has no effect: `use_otel_metrics: false` turns the metrics server off"]);

    for (host, bad) in
        [("http://localhost", true), ("localhost:9000", true), ("'[::1]'", true), ("::1", false), ("0.0.0.0", false)]
    {
        let path =
            write_recipe(dir.path(), &format!("max_steps: 2\nuse_otel_metrics: true\notel_metrics_host: {host}\n"));
        let rules: Vec<String> = validate_json(&path)
            .iter()
            .filter(|d| d["severity"] == "error")
            .map(|d| d["rule"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(rules, if bad { vec!["bad-otel-metrics-host"] } else { vec![] }, "{host}");
    }

    let path = write_recipe(dir.path(), "max_steps: 2\nuse_otel_metrics: true\notel_metrics_port: 0\n");
    let errors = validate_json(&path).iter().filter(|d| d["severity"] == "error").count();
    assert_eq!(errors, 1);
}

/// Axolotl's example (examples/llama-3/opentelemetry-qlora.yml, a verbatim fixture) validates
/// without refusing anything of its OpenTelemetry keys.
#[test]
fn axolotls_example_keeps_its_otel_keys() {
    let path = root().join("tests/fixtures/axolotl/llama-3-opentelemetry-qlora.yml");
    let loaded = recipe::recipe::load(&path, &[]);
    for d in loaded.diagnostics.iter() {
        let text = format!("{d:?}");
        assert!(!text.contains("otel"), "{text}");
    }
}

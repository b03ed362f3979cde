//! Experiment tracking, read back by each tool's own code: TensorBoard's event reader
//! (`event_accumulator`) gives the same scalar series as metrics.jsonl and the resolved recipe as
//! text; W&B's own reader of `.wandb` files (`wandb leet inspect --json`, wandb-core, no network)
//! gives the run, its config, every history row and the summary, and `wandb sync --dry-run` takes
//! the folder as an offline run to upload; a real `mlflow server` (SQLite store, temporary
//! artifact root, started here on localhost) holds the run with the recipe's params, every logged
//! loss at its step, status FINISHED and the output files as artifacts; a run stopped by Ctrl-C
//! reads KILLED, one stopped and resumed goes on in the same MLflow run, one an error stops reads
//! FAILED; stopping the server mid-run leaves the training result unchanged; an unreachable server
//! is a warning (an error with --deny-warnings). A run stopped and resumed continues the same W&B
//! run and TensorBoard folder; two ranks track once. The tools are pinned and installed into the
//! cache by scripts/tracking-tools.sh. Bad tracking keys are errors at the key.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small LoRA recipe on stories260k in `dir`, with `extra` lines appended.
fn write_recipe(dir: &Path, extra: &str) -> PathBuf {
    common::stories_lora_recipe(
        dir,
        &format!("sequence_len: 128\nlr_scheduler: cosine\nwarmup_steps: 2\nlogging_steps: 1\n{extra}"),
    )
}

/// Installs a tracking tool (once, into the cache) and gives its folder, or None when it cannot
/// be installed here (printed as skipped).
fn tool(name: &str) -> Option<PathBuf> {
    let out = Command::new("bash").arg(root().join("scripts/tracking-tools.sh")).arg(name).output().unwrap();
    if !out.status.success() {
        println!("skipped: {name} could not be installed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn python(prefix: &Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-S").env("PYTHONPATH", prefix).env("PYTHONWARNINGS", "ignore");
    cmd
}

fn metrics(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// metrics.jsonl as series in the trackers' names: name -> [(step, value)].
fn series(records: &[Value]) -> std::collections::BTreeMap<String, Vec<(u64, f64)>> {
    let mut out: std::collections::BTreeMap<String, Vec<(u64, f64)>> = Default::default();
    for r in records {
        let step = r["step"].as_u64().unwrap();
        for (k, v) in r.as_object().unwrap() {
            let value = match v {
                Value::Number(n) => n.as_f64().unwrap(),
                Value::Bool(b) => f64::from(u8::from(*b)),
                _ => continue,
            };
            if k != "step" {
                out.entry(recipe::track::metric_name(k)).or_default().push((step, value));
            }
        }
    }
    out
}

fn validate_json(path: &Path, args: &[&str]) -> Vec<Value> {
    let out = common::recipe_command().args(["validate", "--format", "json"]).arg(path).args(args).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["diagnostics"].as_array().cloned().unwrap_or_default()
}

/// (rule, key_path, line) of each diagnostic but the hyperparameter table's warnings.
fn located(diagnostics: &[Value]) -> Vec<(String, String, u64)> {
    diagnostics
        .iter()
        .filter(|d| !d["rule"].as_str().unwrap().starts_with("table-"))
        .map(|d| {
            (
                d["rule"].as_str().unwrap().into(),
                d["key_path"].as_str().unwrap_or("").into(),
                d["line"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The line (1-based) where `key:` starts in the file.
fn line_of(path: &Path, key: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().position(|l| l.starts_with(&format!("{key}:"))).unwrap() as u64 + 1
}

#[test]
fn bad_tracking_keys_are_errors_at_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(
        dir.path(),
        "max_steps: 2\nmlflow_tracking_uri: 127.0.0.1:5000\nwandb_project: p\nwandb_mode: onlin\nlogging_dir: tb\n\
         hf_mlflow_log_artifacts: true\n",
    );
    let found = located(&validate_json(&path, &[]));
    for expected in [
        ("bad-tracking-uri", "mlflow_tracking_uri", line_of(&path, "mlflow_tracking_uri")),
        ("value", "wandb_mode", line_of(&path, "wandb_mode")),
        ("tracker-key-without-switch", "logging_dir", line_of(&path, "logging_dir")),
    ] {
        assert!(
            found.iter().any(|(r, k, l)| r.starts_with(expected.0) && k == expected.1 && *l == expected.2),
            "{expected:?} not in {found:?}"
        );
    }
    let text = common::recipe_command().arg("validate").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("{}:{}:13: error", path.display(), line_of(&path, "wandb_mode"))), "{text}");
    assert!(text.contains("online") && text.contains("offline"), "{text}");

    // Keys of a tracker that is off; W&B online and model artifacts are refused by name.
    let path = write_recipe(
        dir.path(),
        "max_steps: 2\nmlflow_experiment_name: e\nmlflow_run_name: r\nwandb_entity: team\nwandb_name: n\nuse_wandb: true\n\
         use_tensorboard: false\nlogging_dir: tb\n",
    );
    let found = located(&validate_json(&path, &[]));
    let mut orphans: Vec<&str> =
        found.iter().filter(|(r, ..)| r == "tracker-key-without-switch").map(|(_, k, _)| k.as_str()).collect();
    orphans.sort();
    assert_eq!(
        orphans,
        ["logging_dir", "mlflow_experiment_name", "mlflow_run_name", "use_wandb", "wandb_entity", "wandb_name"]
    );
    let path = write_recipe(dir.path(), "max_steps: 2\nwandb_project: p\nwandb_mode: online\nwandb_log_model: end\n");
    let found = located(&validate_json(&path, &[]));
    let at = |key: &str| line_of(&path, key);
    assert!(found.contains(&("wandb-online-not-built".into(), "wandb_mode".into(), at("wandb_mode"))), "{found:?}");
    assert!(found.contains(&("wandb-log-model-not-built".into(), "wandb_log_model".into(), at("wandb_log_model"))));

    // Axolotl's spellings of "off" and an unset mode (a warning: offline) validate.
    let path = write_recipe(
        dir.path(),
        "max_steps: 2\nwandb_project: p\nwandb_log_model: \"false\"\nwandb_watch:\nuse_mlflow: false\n",
    );
    let found = located(&validate_json(&path, &[]));
    assert_eq!(found, [("wandb-offline".into(), "wandb_project".into(), line_of(&path, "wandb_project"))]);
    let path =
        write_recipe(dir.path(), "max_steps: 2\nwandb_mode: disabled\nwandb_log_model: false\nuse_mlflow: false\n");
    assert_eq!(located(&validate_json(&path, &[])), []);
    // A tracker switched off explicitly: its other keys have no effect.
    let path = write_recipe(
        dir.path(),
        "max_steps: 2\nwandb_project: p\nwandb_mode: disabled\nuse_mlflow: false\nmlflow_tracking_uri: http://h:1\n",
    );
    let found = validate_json(&path, &[]);
    let messages: Vec<&str> = found
        .iter()
        .filter(|d| d["rule"] == "tracker-key-without-switch")
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "`wandb_project` has no effect: `wandb_mode: disabled` turns W&B off",
            "`mlflow_tracking_uri` has no effect: `use_mlflow: false` turns MLflow off"
        ]
    );
}

#[test]
fn plan_shows_where_the_run_will_be_tracked() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(
        dir.path(),
        "max_steps: 2\nuse_tensorboard: true\nmlflow_tracking_uri: http://127.0.0.1:5000/\nmlflow_experiment_name: exp\n\
         wandb_project: proj\nwandb_mode: offline\nwandb_run_id: abc-1\n",
    );
    let out = common::recipe_command().arg("plan").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let out_dir = dir.path().join("out");
    assert!(
        text.contains(&format!("tracking   TensorBoard event files in {}", out_dir.join("runs").display())),
        "{text}"
    );
    assert!(text.contains("MLflow at http://127.0.0.1:5000: experiment `exp`, run `out`"), "{text}");
    assert!(text.contains(&format!("W&B offline run folder in {}", out_dir.join("wandb").display())), "{text}");
    let out = common::recipe_command().arg("plan").arg(&path).arg("--json").output().unwrap();
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["tracking"]["mlflow"]["tracking_uri"], "http://127.0.0.1:5000");
    assert_eq!(plan["tracking"]["wandb"]["run_id"], "abc-1");
    // No tracker: no tracking section (plans of other recipes are unchanged).
    let path = write_recipe(dir.path(), "max_steps: 2\n");
    let out = common::recipe_command().arg("plan").arg(&path).arg("--json").output().unwrap();
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(plan.get("tracking").is_none());
}

#[cfg(feature = "exec")]
fn run(path: &Path, args: &[&str]) -> std::process::Output {
    common::recipe_command().arg("run").arg(path).args(["--device", "cpu"]).args(args).output().unwrap()
}

#[cfg(feature = "exec")]
fn assert_success(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[cfg(feature = "exec")]
#[test]
fn tensorboard_reads_back_every_metric() {
    let Some(tb) = tool("tensorboard") else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 12\neval_steps: 6\nuse_tensorboard: true\n");
    let stdout = assert_success(&run(&path, &[]));
    let logdir = dir.path().join("out/runs");
    assert!(stdout.contains(&format!("tracked    TensorBoard {}", logdir.display())), "{stdout}");
    let read = python(&tb).arg(root().join("tests/tracking/read_tensorboard.py")).arg(&logdir).output().unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let got: Value = serde_json::from_slice(&read.stdout).unwrap();
    let expected = series(&metrics(&dir.path().join("out")));
    let scalars = got["scalars"].as_object().unwrap();
    let mut tags: Vec<&String> = scalars.keys().collect();
    tags.sort();
    assert_eq!(tags, expected.keys().collect::<Vec<_>>());
    for (name, points) in &expected {
        let theirs: Vec<(u64, f64)> = scalars[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        // TensorBoard's scalars are float32: the same values rounded once.
        let ours: Vec<(u64, f64)> = points.iter().map(|&(s, v)| (s, f64::from(v as f32))).collect();
        assert_eq!(theirs, ours, "{name}");
    }
    assert!(expected["train/loss"].len() == 12 && expected["eval/loss"].len() >= 2, "{expected:?}");
    let text = got["text"]["recipe/text_summary"][0].as_str().unwrap();
    assert_eq!(got["text_plugin"]["recipe/text_summary"], "text");
    assert!(text.contains("| learning_rate | `0.002` |") && text.contains("| use_tensorboard | `true` |"), "{text}");
}

#[cfg(feature = "exec")]
#[test]
fn wandb_offline_run_reads_back_with_wandbs_reader() {
    let Some(wandb) = tool("wandb") else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(
        dir.path(),
        "max_steps: 12\neval_steps: 6\nwandb_project: proj\nwandb_entity: team\nwandb_name: first\n\
         wandb_run_id: run-7\nwandb_mode: offline\n",
    );
    let stdout = assert_success(&run(&path, &[]));
    let folders: Vec<PathBuf> =
        std::fs::read_dir(dir.path().join("out/wandb")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(folders.len(), 1);
    let folder = &folders[0];
    let name = folder.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("offline-run-") && name.ends_with("-run-7"), "{name}");
    assert!(stdout.contains(&format!("tracked    W&B {}", folder.display())), "{stdout}");
    let file = folder.join("run-run-7.wandb");
    let read = python(&wandb)
        .args(["-m", "wandb", "leet", "inspect", "--json"])
        .arg(&file)
        .env("WANDB_MODE", "offline")
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let records: Vec<Value> =
        String::from_utf8_lossy(&read.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |kind: &str| records.iter().filter(|r| r["type"] == kind).map(|r| r[kind].clone()).collect::<Vec<_>>();
    let run = &of("run")[0];
    assert_eq!(
        (&run["run_id"], &run["project"], &run["entity"], &run["display_name"]),
        (&Value::from("run-7"), &Value::from("proj"), &Value::from("team"), &Value::from("first"))
    );
    let config = &run["config"]["update"];
    assert_eq!(config["learning_rate"], 0.002);
    assert_eq!(config["datasets"][0]["type"], "completion");
    // Every metrics.jsonl record, merged by step as wandb.log commits rows.
    let expected = series(&metrics(&dir.path().join("out")));
    let history = of("history");
    for (name, points) in &expected {
        let theirs: Vec<(u64, f64)> = history
            .iter()
            .filter_map(|h| Some((h["step"]["num"].as_u64().unwrap_or(0), h["item"].get(name)?.as_f64()?)))
            .collect();
        assert_eq!(&theirs, points, "{name}");
    }
    let steps: Vec<u64> = history.iter().map(|h| h["item"]["_step"].as_u64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    let summary = of("summary");
    let last = summary.last().unwrap();
    assert_eq!(last["update"]["train/loss"].as_f64(), expected["train/loss"].last().map(|p| p.1));
    assert_eq!(last["update"]["eval/loss"].as_f64(), expected["eval/loss"].last().map(|p| p.1));
    assert_eq!(of("exit")[0].get("exit_code").and_then(Value::as_i64).unwrap_or(0), 0);
    // `wandb sync` takes the folder for an offline run to upload (dry run: no network).
    let sync = python(&wandb).args(["-m", "wandb", "sync", "--dry-run"]).arg(folder).output().unwrap();
    let said = String::from_utf8_lossy(&sync.stderr).into_owned() + &String::from_utf8_lossy(&sync.stdout);
    assert!(
        sync.status.success() && said.contains("Would sync 1 run(s)") && said.contains("run-run-7.wandb"),
        "{said}"
    );
    // The same as one summary object.
    let read =
        python(&wandb).args(["-m", "wandb", "leet", "inspect", "--summary", "--json"]).arg(&file).output().unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let summary: Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(
        (&summary["state"], &summary["exit_code"], &summary["step"]),
        (&Value::from("finished"), &Value::from(0), &Value::from(12))
    );
    assert_eq!(summary["summary"]["train/loss"].as_f64(), expected["train/loss"].last().map(|p| p.1));
}

/// The records of a `.wandb` file as W&B's own reader gives them.
#[cfg(feature = "exec")]
fn wandb_records(prefix: &Path, file: &Path) -> Vec<Value> {
    let read = python(prefix).args(["-m", "wandb", "leet", "inspect", "--json"]).arg(file).output().unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    String::from_utf8_lossy(&read.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A run stopped after a checkpoint and resumed: W&B continues the same run (a second folder of its
/// id marked resume, exit 255 then 0), TensorBoard's folder holds both parts, and together they
/// give metrics.jsonl's series.
#[cfg(feature = "exec")]
#[test]
fn a_resumed_run_continues_in_wandb_and_tensorboard() {
    let (Some(tb), Some(wandb)) = (tool("tensorboard"), tool("wandb")) else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(
        dir.path(),
        "max_steps: 8\nsave_steps: 4\nuse_tensorboard: true\nwandb_project: p\nwandb_mode: offline\n",
    );
    assert_success(&run(&path, &["--stop-after", "4"]));
    assert_success(&run(&path, &["--set", "resume_from_checkpoint=true"]));
    let mut folders: Vec<PathBuf> =
        std::fs::read_dir(dir.path().join("out/wandb")).unwrap().map(|e| e.unwrap().path()).collect();
    folders.sort();
    assert_eq!(folders.len(), 2, "{folders:?}");
    let id = |f: &Path| f.file_name().unwrap().to_string_lossy()["offline-run-YYYYMMDD_HHMMSS-".len()..].to_string();
    assert_eq!(id(&folders[0]), id(&folders[1]));
    let expected = series(&metrics(&dir.path().join("out")));
    let mut losses = Vec::new();
    for (folder, (resume, exit_code, steps)) in folders.iter().zip([(false, 255, 1..=4), (true, 0, 5..=8)]) {
        let records = wandb_records(&wandb, &folder.join(format!("run-{}.wandb", id(folder))));
        let of = |kind: &str| records.iter().filter(|r| r["type"] == kind).map(|r| r[kind].clone()).collect::<Vec<_>>();
        assert_eq!(of("run")[0].get("resume").and_then(Value::as_bool).unwrap_or(false), resume);
        assert_eq!(of("exit")[0].get("exit_code").and_then(Value::as_i64).unwrap_or(0), exit_code);
        let part: Vec<(u64, f64)> = of("history")
            .iter()
            .filter_map(|h| Some((h["step"]["num"].as_u64().unwrap_or(0), h["item"].get("train/loss")?.as_f64()?)))
            .collect();
        assert_eq!(part.iter().map(|p| p.0).collect::<Vec<_>>(), steps.collect::<Vec<_>>());
        losses.extend(part);
    }
    assert_eq!(losses, expected["train/loss"]);
    assert_eq!(std::fs::read_dir(dir.path().join("out/runs")).unwrap().count(), 2);
    let read = python(&tb)
        .arg(root().join("tests/tracking/read_tensorboard.py"))
        .arg(dir.path().join("out/runs"))
        .output()
        .unwrap();
    let got: Value = serde_json::from_slice(&read.stdout).unwrap();
    let theirs: Vec<(u64, f64)> = got["scalars"]["train/loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    assert_eq!(theirs, expected["train/loss"].iter().map(|&(s, v)| (s, f64::from(v as f32))).collect::<Vec<_>>());
}

/// Two data-parallel ranks: only rank 0 writes tracking output.
#[cfg(feature = "exec")]
#[test]
fn only_the_main_process_tracks() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "max_steps: 4\nuse_tensorboard: true\nwandb_project: p\nwandb_mode: offline\n");
    assert_success(&run(&path, &["--nproc-per-node", "2"]));
    let count = |sub: &str| std::fs::read_dir(dir.path().join("out").join(sub)).unwrap().count();
    assert_eq!((count("runs"), count("wandb")), (1, 1));
}

/// A `mlflow server` on localhost with a SQLite store and a temporary artifact root; stopped when
/// dropped.
#[cfg(feature = "exec")]
struct MlflowServer {
    child: std::process::Child,
    uri: String,
}

#[cfg(feature = "exec")]
impl MlflowServer {
    fn start(prefix: &Path, dir: &Path) -> MlflowServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = python(prefix)
            .args(["-m", "mlflow", "server", "--host", "127.0.0.1", "--port", &port.to_string(), "--workers", "1"])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let server = MlflowServer { child, uri: format!("http://127.0.0.1:{port}") };
        let start = std::time::Instant::now();
        while ureq::get(&format!("{}/health", server.uri)).call().is_err() {
            assert!(
                start.elapsed().as_secs() < 180,
                "mlflow server did not start: {}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        server
    }

    fn get(&self, endpoint: &str, query: &[(&str, &str)]) -> Value {
        let mut request = ureq::get(&format!("{}/api/2.0/mlflow/{endpoint}", self.uri));
        for (k, v) in query {
            request = request.query(k, v);
        }
        request.call().unwrap().into_json().unwrap()
    }

    fn post(&self, endpoint: &str, body: Value) -> Value {
        ureq::post(&format!("{}/api/2.0/mlflow/{endpoint}", self.uri)).send_json(body).unwrap().into_json().unwrap()
    }

    /// The runs of an experiment, by run name.
    fn run_named(&self, experiment: &str, name: &str) -> Value {
        let exp = self.get("experiments/get-by-name", &[("experiment_name", experiment)]);
        let id = exp["experiment"]["experiment_id"].as_str().unwrap().to_string();
        let found = self.post(
            "runs/search",
            serde_json::json!({"experiment_ids": [id], "filter": format!("attributes.run_name = '{name}'")}),
        );
        let runs = found["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{found}");
        runs[0].clone()
    }

    fn history(&self, run_id: &str, key: &str) -> Vec<(u64, f64)> {
        let h = self.get("metrics/get-history", &[("run_id", run_id), ("metric_key", key), ("max_results", "25000")]);
        let mut points: Vec<(u64, f64)> = h["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["step"].as_u64().unwrap_or(0), m["value"].as_f64().unwrap()))
            .collect();
        points.sort_by_key(|p| p.0);
        points
    }

    fn stop(&mut self) {
        // SAFETY: signalling the server's own process group (it has uvicorn workers).
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[cfg(feature = "exec")]
impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(feature = "exec")]
use std::os::unix::process::CommandExt;

#[cfg(feature = "exec")]
#[test]
fn mlflow_server_gets_the_run_and_a_stopped_server_changes_nothing() {
    let Some(mlflow) = tool("mlflow") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut server = MlflowServer::start(&mlflow, dir.path());
    let tracking = |name: &str| {
        format!(
            "mlflow_tracking_uri: {}\nmlflow_experiment_name: recipe-tests\nmlflow_run_name: {name}\n\
             hf_mlflow_log_artifacts: true\n",
            server.uri
        )
    };

    // Unreachable: a warning and the run goes on, or an error with --deny-warnings.
    let nowhere = tempfile::tempdir().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = write_recipe(nowhere.path(), &format!("max_steps: 2\nmlflow_tracking_uri: http://127.0.0.1:{free}\n"));
    let out = run(&path, &["--deny-warnings"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the MLflow server") && stderr.contains("--deny-warnings"), "{stderr}");
    assert!(!nowhere.path().join("out/metrics.jsonl").exists());
    let out = run(&path, &[]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the MLflow server") && stderr.contains("goes on without it"), "{stderr}");

    // A finished run: params, every metric at its step, FINISHED, the output files.
    let a = tempfile::tempdir().unwrap();
    // Long enough that, below, the server is stopped while the same run is still going, even on a loaded machine.
    let path = write_recipe(a.path(), &format!("max_steps: 160\neval_steps: 80\n{}", tracking("finished")));
    let stdout = assert_success(&run(&path, &[]));
    let finished = server.run_named("recipe-tests", "finished");
    let info = &finished["info"];
    let run_id = info["run_id"].as_str().unwrap();
    assert_eq!(info["status"], "FINISHED");
    assert!(
        stdout.contains(&format!("tracked    MLflow {}/#/experiments/", server.uri)) && stdout.contains(run_id),
        "{stdout}"
    );
    let params: std::collections::BTreeMap<String, String> = finished["data"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["key"].as_str().unwrap().into(), p["value"].as_str().unwrap().into()))
        .collect();
    assert_eq!(params["learning_rate"], "0.002");
    assert_eq!(params["lora_r"], "4");
    assert_eq!(params["datasets.0.type"], "completion");
    assert_eq!(params["mlflow_run_name"], "finished");
    let tags: Vec<String> =
        finished["data"]["tags"].as_array().unwrap().iter().map(|t| t["key"].as_str().unwrap().to_string()).collect();
    assert!(
        tags.iter().any(|t| t == "recipe.model") && tags.iter().any(|t| t == "recipe.trainable_parameters"),
        "{tags:?}"
    );
    let expected = series(&metrics(&a.path().join("out")));
    assert_eq!(expected["train/loss"].len(), 160);
    for (name, points) in &expected {
        assert_eq!(&server.history(run_id, name), points, "{name}");
    }
    let artifacts = server.get("artifacts/list", &[("run_id", run_id)]);
    let files: Vec<&str> = artifacts["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    for file in ["adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "loss_curve.svg"] {
        assert!(files.contains(&file), "{file} not in {files:?}");
    }
    let uploaded = std::fs::read(
        dir.path()
            .join("artifacts")
            .join(info["experiment_id"].as_str().unwrap())
            .join(run_id)
            .join("artifacts/metrics.jsonl"),
    )
    .unwrap();
    assert_eq!(uploaded, std::fs::read(a.path().join("out/metrics.jsonl")).unwrap());

    // Ctrl-C: KILLED, with the steps logged so far.
    let b = tempfile::tempdir().unwrap();
    let path = write_recipe(b.path(), &format!("max_steps: 4000\nsave_steps: 10000\n{}", tracking("killed")));
    let child = common::recipe_command()
        .arg("run")
        .arg(&path)
        .args(["--device", "cpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = b.path().join("out/metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&log).map_or(true, |t| t.matches("\"loss\"").count() < 3) {
        assert!(start.elapsed().as_secs() < 120, "no step was logged");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_success(&out);
    let killed = server.run_named("recipe-tests", "killed");
    assert_eq!(killed["info"]["status"], "KILLED");
    let id = killed["info"]["run_id"].as_str().unwrap();
    assert_eq!(server.history(id, "train/loss"), series(&metrics(&b.path().join("out")))["train/loss"]);

    // Stopped after a checkpoint and resumed: the same MLflow run goes on and finishes.
    let r = tempfile::tempdir().unwrap();
    let path = write_recipe(r.path(), &format!("max_steps: 8\nsave_steps: 4\n{}", tracking("resumed")));
    assert_success(&run(&path, &["--stop-after", "4"]));
    assert_eq!(server.run_named("recipe-tests", "resumed")["info"]["status"], "KILLED");
    assert_success(&run(&path, &["--set", "resume_from_checkpoint=true"]));
    let resumed = server.run_named("recipe-tests", "resumed");
    assert_eq!(resumed["info"]["status"], "FINISHED");
    let id = resumed["info"]["run_id"].as_str().unwrap();
    let expected = series(&metrics(&r.path().join("out")));
    assert_eq!(expected["train/loss"].iter().map(|p| p.0).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
    assert_eq!(server.history(id, "train/loss"), expected["train/loss"]);

    // An error stops the run: FAILED.
    let f = tempfile::tempdir().unwrap();
    let path = write_recipe(f.path(), &format!("max_steps: 80\n{}", tracking("failed")));
    let out = run(&path, &["--set", "learning_rate=1.0", "--set", "max_grad_norm=0", "--set", "weight_decay=10"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.run_named("recipe-tests", "failed")["info"]["status"], "FAILED");

    // The server stops mid-run: the run ends as it would have, and says what was lost.
    let c = tempfile::tempdir().unwrap();
    let path = write_recipe(c.path(), &format!("max_steps: 160\neval_steps: 80\n{}", tracking("stopped")));
    let child = common::recipe_command()
        .arg("run")
        .arg(&path)
        .args(["--device", "cpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = c.path().join("out/metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&log).map_or(true, |t| !t.contains("\"loss\"")) {
        assert!(start.elapsed().as_secs() < 120, "no step was logged");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    server.stop();
    let steps_when_stopped = metrics(&c.path().join("out")).len();
    let out = child.wait_with_output().unwrap();
    assert_success(&out);
    assert!(steps_when_stopped < 160, "the run ended before the server was stopped");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MLflow") && stderr.contains("metrics.jsonl has them"), "{stderr}");
    let (ran, reference) = (metrics(&c.path().join("out")), metrics(&a.path().join("out")));
    let losses = |r: &[Value]| series(r)["train/loss"].clone();
    assert_eq!(losses(&ran), losses(&reference));
    assert_eq!(series(&ran)["eval/loss"], series(&reference)["eval/loss"]);
    assert!(c.path().join("out/adapter_model.safetensors").is_file());
}

//! MLflow through its REST API (`/api/2.0/mlflow/...`, with ureq): at the start the experiment is
//! looked up by name (created when missing), a run is created with the plan's summary as tags, and
//! the resolved recipe goes in as params (flattened: `datasets.0.path`); metrics go in batches
//! (`runs/log-batch`, at most 1,000 per request) with their steps and timestamps; at the end the
//! output folder's files are uploaded through the server's artifact proxy when
//! `hf_mlflow_log_artifacts` is set, and the run ends FINISHED, FAILED or KILLED. A run resumed
//! from a checkpoint continues its MLflow run (the newest unfinished run of the same name whose
//! `recipe.output_dir` tag is this output folder): RUNNING again, params it lacks added, metrics
//! appended.
//!
//! The start is synchronous, so an unreachable server is known before training (a warning, or an
//! error with `--deny-warnings`). After that a worker thread owns the connection: the training loop
//! only queues points. The worker sends every couple of seconds; a failed send keeps the points
//! and retries with exponential backoff (1 s doubling to 60 s), reports once after three failures,
//! and at the end makes a last few attempts before it reports what it could not deliver.
//!
//! Credentials follow MLflow's environment variables: `MLFLOW_TRACKING_TOKEN` (bearer), else
//! `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD` (basic).

use super::{Point, RunInfo, Status, Tracker};
use crate::plan::tracking::MlflowPlan;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// MLflow's limits on one `log-batch` request.
const MAX_METRICS_PER_BATCH: usize = 1000;
const MAX_PARAMS_PER_BATCH: usize = 100;
/// MLflow's longest param value and tag value.
const MAX_PARAM_VALUE: usize = 6000;
const MAX_TAG_VALUE: usize = 8000;
/// How often the worker sends what it holds.
const SEND_EVERY: Duration = Duration::from_secs(2);
/// Failures in a row before the worker reports (it keeps retrying).
const REPORT_AFTER: u32 = 3;

/// A REST client for one server.
#[derive(Clone)]
struct Client {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
}

enum CallError {
    /// No answer: the server is down or unreachable.
    Transport(String),
    /// An answer with an error status: (status, MLflow's error_code, message).
    Status(u16, String, String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "{e}"),
            CallError::Status(code, error_code, message) => write!(f, "HTTP {code} {error_code}: {message}"),
        }
    }
}

impl Client {
    fn new(base: &str) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("recipe/", env!("CARGO_PKG_VERSION")))
            .build();
        let auth = authorization(|name| std::env::var(name).ok());
        Client { agent, base: base.trim_end_matches('/').to_string(), auth }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.auth {
            Some(auth) => request.set("Authorization", auth),
            None => request,
        }
    }

    fn answer(result: Result<ureq::Response, ureq::Error>) -> Result<Value, CallError> {
        match result {
            Ok(response) => {
                let text = response.into_string().map_err(|e| CallError::Transport(e.to_string()))?;
                Ok(if text.trim().is_empty() { json!({}) } else { serde_json::from_str(&text).unwrap_or(json!({})) })
            }
            Err(ureq::Error::Status(code, response)) => {
                let text = response.into_string().unwrap_or_default();
                let body: Value = serde_json::from_str(&text).unwrap_or(json!({}));
                let error_code = body["error_code"].as_str().unwrap_or_default().to_string();
                let message = body["message"].as_str().map_or_else(|| text.chars().take(300).collect(), str::to_owned);
                Err(CallError::Status(code, error_code, message))
            }
            Err(ureq::Error::Transport(t)) => Err(CallError::Transport(t.to_string())),
        }
    }

    fn post(&self, endpoint: &str, body: &Value) -> Result<Value, CallError> {
        Self::answer(self.request("POST", &format!("/api/2.0/mlflow/{endpoint}")).send_json(body.clone()))
    }

    fn get(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<Value, CallError> {
        let mut request = self.request("GET", &format!("/api/2.0/mlflow/{endpoint}"));
        for (k, v) in query {
            request = request.query(k, v);
        }
        Self::answer(request.call())
    }

    /// The experiment's id, creating it when missing.
    fn experiment_id(&self, name: &str) -> Result<String, CallError> {
        let found = self.get("experiments/get-by-name", &[("experiment_name", name)]);
        let missing = |e: &CallError| matches!(e, CallError::Status(404, code, _) if code == "RESOURCE_DOES_NOT_EXIST");
        match found {
            Ok(v) => return Ok(v["experiment"]["experiment_id"].as_str().unwrap_or_default().to_string()),
            Err(e) if !missing(&e) => return Err(e),
            Err(_) => {}
        }
        match self.post("experiments/create", &json!({ "name": name })) {
            Ok(v) => Ok(v["experiment_id"].as_str().unwrap_or_default().to_string()),
            // Another run created it meanwhile.
            Err(CallError::Status(_, code, _)) if code == "RESOURCE_ALREADY_EXISTS" => {
                let v = self.get("experiments/get-by-name", &[("experiment_name", name)])?;
                Ok(v["experiment"]["experiment_id"].as_str().unwrap_or_default().to_string())
            }
            Err(e) => Err(e),
        }
    }

    /// The newest run of `name` whose `recipe.output_dir` tag is `output_dir` and that did not finish
    /// (KILLED, FAILED, or RUNNING when the process died), with its params.
    fn unfinished_run(&self, experiment_id: &str, name: &str, output_dir: &str) -> Result<Option<Value>, CallError> {
        // MLflow's filter language quotes with '...': a value that holds a quote is not searched for.
        if [name, output_dir].iter().any(|v| v.contains(['\'', '\\'])) {
            return Ok(None);
        }
        let quote = |v: &str| format!("'{v}'");
        let filter =
            format!("attributes.run_name = {} and tags.`recipe.output_dir` = {}", quote(name), quote(output_dir));
        let found = self.post(
            "runs/search",
            &json!({
                "experiment_ids": [experiment_id],
                "filter": filter,
                "order_by": ["attributes.start_time DESC"],
                "max_results": 1,
            }),
        )?;
        Ok(found["runs"]
            .as_array()
            .and_then(|runs| runs.first())
            .filter(|run| run["info"]["status"].as_str() != Some("FINISHED"))
            .cloned())
    }

    /// Uploads one file through the server's artifact proxy (`mlflow server`'s default
    /// `--serve-artifacts`), to `artifact_path/name`.
    fn upload(&self, artifact_path: &str, file: &Path) -> Result<(), CallError> {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let encoded: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let path = format!("/api/2.0/mlflow-artifacts/artifacts/{artifact_path}/{}", encoded.replace('+', "%20"));
        let reader = std::fs::File::open(file).map_err(|e| CallError::Transport(format!("{}: {e}", file.display())))?;
        let request = self.request("PUT", &path).set("Content-Type", "application/octet-stream");
        Self::answer(request.send(reader)).map(|_| ())
    }
}

/// The Authorization header MLflow's environment variables ask for: `MLFLOW_TRACKING_TOKEN` as a
/// bearer token, else `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD` as basic auth.
fn authorization(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(token) = set("MLFLOW_TRACKING_TOKEN") {
        return Some(format!("Bearer {token}"));
    }
    let user = set("MLFLOW_TRACKING_USERNAME")?;
    let password = var("MLFLOW_TRACKING_PASSWORD").unwrap_or_default();
    use base64::Engine;
    Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))))
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// A metric value as MLflow's JSON takes it (protobuf's JSON mapping spells the non-finite ones).
fn metric_value(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(v)
    }
}

/// The body of `runs/create`: the run's name, start, and the plan's summary as tags.
fn run_request(experiment_id: &str, plan: &MlflowPlan, info: &RunInfo, output_dir: &str) -> Value {
    let mut tags: Vec<Value> = vec![
        json!({"key": "mlflow.source.name", "value": info.recipe}),
        json!({"key": "mlflow.source.type", "value": "LOCAL"}),
        json!({"key": "recipe.output_dir", "value": clip(output_dir, MAX_TAG_VALUE)}),
    ];
    if let Ok(user) = std::env::var("USER") {
        tags.push(json!({"key": "mlflow.user", "value": user}));
    }
    let mut note = String::from("Trained by `recipe run`.\n\n");
    for (k, v) in &info.summary {
        tags.push(json!({"key": format!("recipe.{k}"), "value": clip(v, MAX_TAG_VALUE)}));
        note += &format!("- {k}: {v}\n");
    }
    if let Some(step) = info.resumed_at {
        tags.push(json!({"key": "recipe.resumed_from_step", "value": step.to_string()}));
    }
    tags.push(json!({"key": "mlflow.note.content", "value": clip(&note, MAX_TAG_VALUE)}));
    json!({
        "experiment_id": experiment_id,
        "run_name": plan.run_name,
        "start_time": (super::now() * 1000.0) as i64,
        "tags": tags,
    })
}

enum Message {
    Metrics(Vec<Value>),
    Finish { status: Status, artifacts: Vec<PathBuf>, done: mpsc::Sender<Result<(), String>> },
}

pub struct Mlflow {
    url: String,
    sender: mpsc::Sender<Message>,
    worker: Option<std::thread::JoinHandle<()>>,
    log_artifacts: bool,
}

impl Mlflow {
    pub fn start(plan: &MlflowPlan, info: &RunInfo) -> Result<Mlflow, String> {
        let client = Client::new(&plan.tracking_uri);
        let fail = |what: &str, e: CallError| match e {
            CallError::Transport(t) => format!("cannot reach the MLflow server at {} ({what}: {t})", plan.tracking_uri),
            other => format!("the MLflow server at {} refused to {what}: {other}", plan.tracking_uri),
        };
        let experiment_id = client.experiment_id(&plan.experiment).map_err(|e| fail("find the experiment", e))?;
        let output_dir = std::fs::canonicalize(&info.output_dir).unwrap_or_else(|_| info.output_dir.clone());
        let output_dir = output_dir.display().to_string();
        // A resumed run continues its MLflow run: the newest run of this name and output folder that did not
        // finish.
        let unfinished = match info.resumed_at {
            Some(_) => client
                .unfinished_run(&experiment_id, &plan.run_name, &output_dir)
                .map_err(|e| fail("search runs", e))?,
            None => None,
        };
        let (run_id, artifact_uri, logged) = match unfinished {
            Some(run) => {
                let run_id = run["info"]["run_id"].as_str().unwrap_or_default().to_string();
                let tags =
                    [json!({"key": "recipe.resumed_from_step", "value": info.resumed_at.unwrap_or(0).to_string()})];
                client
                    .post("runs/update", &json!({"run_id": run_id, "status": "RUNNING"}))
                    .and_then(|_| client.post("runs/log-batch", &json!({"run_id": run_id, "tags": tags})))
                    .map_err(|e| fail("continue the run", e))?;
                // Params cannot change: only keys the run lacks are added.
                let logged: Vec<String> = run["data"]["params"]
                    .as_array()
                    .map(|ps| ps.iter().filter_map(|p| p["key"].as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                (run_id, run["info"]["artifact_uri"].as_str().unwrap_or_default().to_string(), logged)
            }
            None => {
                let run = client
                    .post("runs/create", &run_request(&experiment_id, plan, info, &output_dir))
                    .map_err(|e| fail("create a run", e))?;
                let run_info = &run["run"]["info"];
                let run_id = run_info["run_id"].as_str().unwrap_or_default().to_string();
                (run_id, run_info["artifact_uri"].as_str().unwrap_or_default().to_string(), Vec::new())
            }
        };
        if run_id.is_empty() {
            return Err(format!("the MLflow server at {} answered without a run id", plan.tracking_uri));
        }
        let params: Vec<Value> = info
            .flat_settings()
            .into_iter()
            .map(|(k, v)| (clip(&k, 250), v))
            .filter(|(k, _)| !logged.contains(k))
            .map(|(k, v)| json!({"key": k, "value": clip(&v, MAX_PARAM_VALUE)}))
            .collect();
        for chunk in params.chunks(MAX_PARAMS_PER_BATCH) {
            client
                .post("runs/log-batch", &json!({"run_id": run_id, "params": chunk}))
                .map_err(|e| fail("log the recipe as params", e))?;
        }
        let url = format!("{}/#/experiments/{experiment_id}/runs/{run_id}", client.base);
        let (sender, receiver) = mpsc::channel();
        let worker = Worker { client, run_id, artifact_uri, buffer: Vec::new(), failures: 0, last_error: None };
        let worker = std::thread::Builder::new()
            .name("mlflow".into())
            .spawn(move || worker.run(receiver))
            .map_err(|e| format!("cannot start MLflow's thread: {e}"))?;
        Ok(Mlflow { url, sender, worker: Some(worker), log_artifacts: plan.log_artifacts })
    }
}

impl Tracker for Mlflow {
    fn name(&self) -> &'static str {
        "MLflow"
    }

    fn location(&self) -> String {
        self.url.clone()
    }

    fn log(&mut self, point: &Point) -> Result<(), String> {
        let timestamp = (point.wall_time * 1000.0) as i64;
        let metrics = point
            .metrics
            .iter()
            .map(|(k, v)| json!({"key": k, "value": metric_value(*v), "timestamp": timestamp, "step": point.step}))
            .collect();
        self.sender.send(Message::Metrics(metrics)).map_err(|_| "the MLflow thread has stopped".to_string())
    }

    fn finish(&mut self, status: Status, output_dir: &Path) -> Result<(), String> {
        let artifacts =
            if self.log_artifacts && status == Status::Finished { files_of(output_dir) } else { Vec::new() };
        let (done, result) = mpsc::channel();
        self.sender
            .send(Message::Finish { status, artifacts, done })
            .map_err(|_| "the MLflow thread has stopped".to_string())?;
        let outcome = result.recv().unwrap_or_else(|_| Err("the MLflow thread has stopped".into()));
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        outcome
    }
}

/// The regular files directly in `dir` (checkpoints and tracker folders are folders: left out).
fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

struct Worker {
    client: Client,
    run_id: String,
    artifact_uri: String,
    /// Metrics not yet accepted by the server, oldest first.
    buffer: Vec<Value>,
    /// Failed sends in a row.
    failures: u32,
    last_error: Option<String>,
}

impl Worker {
    fn run(mut self, receiver: mpsc::Receiver<Message>) {
        let mut next_send = Instant::now() + SEND_EVERY;
        loop {
            let wait = next_send.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(wait) {
                Ok(Message::Metrics(metrics)) => self.buffer.extend(metrics),
                Ok(Message::Finish { status, artifacts, done }) => {
                    let _ = done.send(self.finish(status, &artifacts));
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.finish(Status::Failed, &[]);
                    return;
                }
            }
            if Instant::now() < next_send {
                continue;
            }
            if self.buffer.is_empty() || self.send() {
                next_send = Instant::now() + SEND_EVERY;
            } else {
                // 1 s, 2 s, 4 s, ... at most 60 s between attempts; the points stay buffered.
                let backoff =
                    Duration::from_secs(1u64 << self.failures.min(6).saturating_sub(1)).min(Duration::from_secs(60));
                next_send = Instant::now() + backoff;
                if self.failures == REPORT_AFTER {
                    tracing::warn!(
                        "MLflow: sending metrics failed {} times ({}); retrying with backoff, {} metrics held",
                        self.failures,
                        self.last_error.as_deref().unwrap_or_default(),
                        self.buffer.len()
                    );
                }
            }
        }
    }

    /// Sends what the buffer holds; true when all of it went through.
    fn send(&mut self) -> bool {
        while !self.buffer.is_empty() {
            let n = self.buffer.len().min(MAX_METRICS_PER_BATCH);
            let body = json!({"run_id": self.run_id, "metrics": &self.buffer[..n]});
            match self.client.post("runs/log-batch", &body) {
                Ok(_) => {
                    self.buffer.drain(..n);
                    if self.failures >= REPORT_AFTER {
                        tracing::info!("MLflow: the server answers again; metrics sent");
                    }
                    self.failures = 0;
                }
                Err(e) => {
                    self.failures += 1;
                    self.last_error = Some(e.to_string());
                    return false;
                }
            }
        }
        true
    }

    fn finish(&mut self, status: Status, artifacts: &[PathBuf]) -> Result<(), String> {
        let mut problems = Vec::new();
        // A few last attempts: 0.5 s, 1 s, 2 s apart.
        let mut delivered = self.send();
        for pause in [500, 1000, 2000] {
            if delivered {
                break;
            }
            std::thread::sleep(Duration::from_millis(pause));
            delivered = self.send();
        }
        if !delivered {
            problems.push(format!(
                "{} metrics could not be sent ({}); metrics.jsonl has them",
                self.buffer.len(),
                self.last_error.as_deref().unwrap_or_default()
            ));
        }
        if !artifacts.is_empty() {
            match self.artifact_path() {
                Some(path) => {
                    for file in artifacts {
                        if let Err(e) = self.client.upload(&path, file) {
                            problems.push(format!("uploading {} failed ({e})", file.display()));
                        }
                    }
                }
                None => problems.push(format!(
                    "the run's artifact store {} is not served by the tracking server (start `mlflow server` with \
                     --serve-artifacts, its default), so no artifacts were uploaded",
                    self.artifact_uri
                )),
            }
        }
        let end = json!({
            "run_id": self.run_id,
            "status": status.as_str(),
            "end_time": (super::now() * 1000.0) as i64,
        });
        if let Err(e) = self.client.post("runs/update", &end) {
            problems.push(format!("setting the run's status to {} failed ({e})", status.as_str()));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }

    /// The path under the artifact proxy of a `mlflow-artifacts:` URI
    /// (`mlflow-artifacts:/1/<run>/artifacts` or `mlflow-artifacts://host:port/1/<run>/artifacts`).
    fn artifact_path(&self) -> Option<String> {
        let rest = self.artifact_uri.strip_prefix("mlflow-artifacts:")?;
        let path = match rest.strip_prefix("//") {
            Some(with_host) => with_host.split_once('/').map_or("", |(_, p)| p),
            None => rest.trim_start_matches('/'),
        };
        Some(path.trim_end_matches('/').to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// A stand-in server on localhost: answers 503 to the first `failures` requests, then 200 `{}`;
    /// returns what it was sent, (path, JSON body, Authorization header) per request.
    #[allow(clippy::type_complexity)]
    fn flaky_server(failures: usize) -> (String, std::sync::Arc<std::sync::Mutex<Vec<(String, Value, String)>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
                let (mut length, mut auth) = (0, String::new());
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if header.to_ascii_lowercase().starts_with("authorization:") {
                        auth = header["authorization:".len()..].trim().to_string();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let (status, text) = if n < failures {
                    ("503 Service Unavailable", r#"{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}"#)
                } else {
                    log.lock().unwrap().push((path, serde_json::from_slice(&body).unwrap_or(Value::Null), auth));
                    ("200 OK", "{}")
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                stream.write_all(reply.as_bytes()).unwrap();
            }
        });
        (uri, seen)
    }

    /// Sends that fail are retried with the points kept: every metric arrives once, in order, and
    /// the run ends with its status; every request carries the credentials.
    #[test]
    fn failed_sends_keep_the_points_and_retry() {
        let (uri, seen) = flaky_server(2);
        let worker = Worker {
            client: Client { auth: Some("Bearer t0k".into()), ..Client::new(&uri) },
            run_id: "r1".into(),
            artifact_uri: String::new(),
            buffer: Vec::new(),
            failures: 0,
            last_error: None,
        };
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::spawn(move || worker.run(receiver));
        let point = |step: u64| json!({"key": "train/loss", "value": step as f64, "timestamp": 0, "step": step});
        sender.send(Message::Metrics(vec![point(1), point(2)])).unwrap();
        // The first send (after SEND_EVERY) fails; more points come while the worker backs off.
        std::thread::sleep(SEND_EVERY + Duration::from_millis(300));
        sender.send(Message::Metrics(vec![point(3)])).unwrap();
        let (done, result) = mpsc::channel();
        sender.send(Message::Finish { status: Status::Killed, artifacts: Vec::new(), done }).unwrap();
        assert_eq!(result.recv().unwrap(), Ok(()));
        thread.join().unwrap();
        let seen = seen.lock().unwrap();
        let steps: Vec<u64> = seen
            .iter()
            .filter(|(path, ..)| path.ends_with("/runs/log-batch"))
            .flat_map(|(_, body, _)| body["metrics"].as_array().cloned().unwrap_or_default())
            .map(|m| m["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, [1, 2, 3]);
        assert!(seen.iter().all(|(.., auth)| auth == "Bearer t0k"), "{seen:?}");
        let (path, end, _) = seen.last().unwrap();
        assert!(path.ends_with("/api/2.0/mlflow/runs/update"), "{path}");
        assert_eq!((&end["run_id"], &end["status"]), (&json!("r1"), &json!("KILLED")));
    }

    /// RFC 7617's example credentials and their header; a token wins over them.
    #[test]
    fn credentials_from_mlflows_variables() {
        fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        }
        let basic = [("MLFLOW_TRACKING_USERNAME", "Aladdin"), ("MLFLOW_TRACKING_PASSWORD", "open sesame")];
        assert_eq!(authorization(env(&basic)).as_deref(), Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="));
        let both = [("MLFLOW_TRACKING_TOKEN", "t0k"), basic[0], basic[1]];
        assert_eq!(authorization(env(&both)).as_deref(), Some("Bearer t0k"));
        assert_eq!(authorization(env(&[("MLFLOW_TRACKING_TOKEN", "")])), None);
    }

    #[test]
    fn clip_keeps_characters_whole() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("aéb", 2), "a");
        assert_eq!(metric_value(f64::NAN), json!("NaN"));
        assert_eq!(metric_value(f64::NEG_INFINITY), json!("-Infinity"));
    }
}

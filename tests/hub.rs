//! `recipe plan` on a hub model that is neither cached nor in the built-in table: config.json
//! alone is fetched through hf-hub (from a stand-in hub on localhost, via HF_ENDPOINT), cached, and
//! read from the cache afterwards, offline too.

use assert_cmd::Command;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `body` at /acme/tiny-llama/resolve/main/config.json with the headers hf-hub reads
/// (ETag, X-Repo-Commit, Content-Range), honouring Range requests; 404 elsewhere.
fn stand_in_hub(body: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut range = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = value.trim().split_once('-').unwrap();
                    // `bytes=a-b`, or `bytes=a-` for the rest of the file.
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap_or(usize::MAX)));
                }
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or_default();
            if path != "/acme/tiny-llama/resolve/main/config.json" {
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            let (a, b) = range.unwrap_or((0, body.len() - 1));
            let part = &body[a..=b.min(body.len() - 1)];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{}/{}\r\n\
                 ETag: \"etag-config\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
                part.len(),
                a + part.len() - 1,
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(part).unwrap();
        }
    });
    (endpoint, handle)
}

#[test]
fn config_json_is_fetched_once_then_read_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let recipe = dir.path().join("r.yaml");
    std::fs::write(
        &recipe,
        "preset: lora\nbase_model: acme/tiny-llama\ndatasets: [{path: acme/data, type: alpaca}]\nsequence_len: 512\n",
    )
    .unwrap();
    let config = std::fs::read("models/stories260k/config.json").unwrap();
    let (endpoint, server) = stand_in_hub(config);
    let plan = |offline: bool| {
        let mut cmd = Command::cargo_bin("recipe").unwrap();
        cmd.args(["plan", "--json"]).arg(&recipe).env("HF_HUB_CACHE", &cache).env("HF_ENDPOINT", &endpoint);
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
        cmd
    };
    let out = plan(false).assert().success().get_output().stdout.clone();
    server.join().unwrap();
    let first: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(first["model"]["source_kind"], "hub");
    assert_eq!(first["model"]["parameters"]["total"], 260_032);
    let cached = cache.join(format!("models--acme--tiny-llama/snapshots/{COMMIT}/config.json"));
    assert!(cached.exists(), "config.json cached in the hub layout");

    // The stand-in hub is gone; the cache answers, offline.
    let out = plan(true).assert().success().get_output().stdout.clone();
    let second: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(second["model"]["config_source"].as_str().unwrap().starts_with("Hugging Face cache"));

    // Not cached, not built in, offline: a clear error.
    std::fs::remove_dir_all(&cache).unwrap();
    plan(true).assert().code(1).stderr(predicates::str::contains("HF_HUB_OFFLINE is set"));
}

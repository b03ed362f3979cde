//! Hub models from a stand-in hub on localhost (via HF_ENDPOINT): `recipe plan` fetches config.json
//! alone through hf-hub and reads it from the cache afterwards, offline too; `recipe run` fetches the
//! weights and tokenizer once, then trains offline from the cache.

use assert_cmd::Command;

mod common;
use common::HUB_COMMIT as COMMIT;

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
    let (endpoint, requests) = stand_in_model_hub(std::path::PathBuf::from("models/stories260k"));
    let plan = |offline: bool| {
        let mut cmd = Command::cargo_bin("recipe").unwrap();
        cmd.args(["plan", "--json"]).arg(&recipe).env("HF_HUB_CACHE", &cache).env("HF_ENDPOINT", &endpoint);
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
        cmd
    };
    let out = plan(false).assert().success().get_output().stdout.clone();
    // config.json alone: the plan downloads no weights.
    let fetched = requests.lock().unwrap().clone();
    assert!(fetched.iter().all(|p| p.ends_with("/config.json")), "{fetched:?}");
    let before = fetched.len();
    let first: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(first["model"]["source_kind"], "hub");
    assert_eq!(first["model"]["parameters"]["total"], 260_032);
    let cached = cache.join(format!("models--acme--tiny-llama/snapshots/{COMMIT}/config.json"));
    assert!(cached.exists(), "config.json cached in the hub layout");

    // The cache answers, offline: the hub is not asked again.
    let out = plan(true).assert().success().get_output().stdout.clone();
    assert_eq!(requests.lock().unwrap().len(), before);
    let second: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(second["model"]["config_source"].as_str().unwrap().starts_with("Hugging Face cache"));

    // Not cached, not built in, offline: a clear error.
    std::fs::remove_dir_all(&cache).unwrap();
    plan(true).assert().code(1).stderr(predicates::str::contains("HF_HUB_OFFLINE is set"));
}

/// Serves every file of `dir` at /acme/tiny-llama/resolve/main/NAME.
fn stand_in_model_hub(dir: std::path::PathBuf) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    common::stand_in_hub(move |path| {
        let name =
            path.strip_prefix("/acme/tiny-llama/resolve/main/").filter(|n| !n.contains('/') && !n.contains(".."))?;
        std::fs::read(dir.join(name)).ok().map(common::HubReply::File)
    })
}

#[cfg(feature = "exec")]
#[test]
fn run_fetches_a_hub_model_once_then_trains_offline_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let recipe = dir.path().join("r.yaml");
    std::fs::write(
        &recipe,
        format!(
            "base_model: acme/tiny-llama\nadapter: lora\nlora_target_linear: true\ndatasets:\n  - path: {}\n    \
             type: completion\n    ds_type: text\nval_set_size: 0\nsequence_len: 64\nmicro_batch_size: 2\nmax_steps: 2\n\
             learning_rate: 1.0e-3\noutput_dir: {}\noverwrite_output_dir: true\n",
            root.join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    // The stand-in repository holds a chat_template.jinja too (transformers 4.45+ keeps templates there).
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for entry in std::fs::read_dir(root.join("models/stories260k")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), repo.join(entry.file_name())).unwrap();
    }
    std::fs::write(repo.join("chat_template.jinja"), "{% for m in messages %}{{ m['content'] }}{% endfor %}").unwrap();
    let (endpoint, requests) = stand_in_model_hub(repo);
    let run = |offline: bool| {
        let mut cmd = Command::cargo_bin("recipe").unwrap();
        cmd.args(["run", "--device", "cpu"]).arg(&recipe).env("HF_HUB_CACHE", &cache).env("HF_ENDPOINT", &endpoint);
        cmd.env("OMP_NUM_THREADS", "1").env("RECIPE_LOG", "warn");
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
        cmd
    };
    run(false).assert().success();
    let fetched = requests.lock().unwrap().clone();
    assert!(fetched.iter().any(|p| p.ends_with("/model.safetensors")), "{fetched:?}");
    let snapshot = cache.join(format!("models--acme--tiny-llama/snapshots/{COMMIT}"));
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        assert!(snapshot.join(f).exists(), "{f} not cached");
    }
    let adapter: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(adapter["base_model_name_or_path"], "acme/tiny-llama");

    let before = requests.lock().unwrap().len();
    run(true).assert().success();
    assert_eq!(requests.lock().unwrap().len(), before, "an offline run must not touch the hub");
}

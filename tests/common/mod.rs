//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The `recipe` binary for end-to-end tests: plain output, warnings only, one libtorch thread
/// (tests run side by side on few cores, and OpenMP workers that spin-wait on an oversubscribed
/// machine slow everything down many times over).
pub fn recipe_command() -> std::process::Command {
    use assert_cmd::cargo::CommandCargoExt;
    let mut cmd = std::process::Command::cargo_bin("recipe").unwrap();
    cmd.env("NO_COLOR", "1").env("RECIPE_LOG", "warn").env("OMP_NUM_THREADS", "1");
    cmd
}

/// Asserts two tensors are identical: dtype, shape and every bit (so -0.0 != 0.0); `reference`
/// names where `theirs` comes from.
#[cfg(feature = "exec")]
pub fn assert_identical(what: &str, ours: &tch::Tensor, theirs: &tch::Tensor, reference: &str) {
    use tch::{Device, Kind, Tensor};
    let bytes = |t: &Tensor| -> Vec<u8> {
        Vec::<u8>::try_from(t.to_device(Device::Cpu).contiguous().reshape([-1]).view_dtype(Kind::Uint8)).unwrap()
    };
    assert_eq!(ours.kind(), theirs.kind(), "{what}: dtype");
    assert_eq!(ours.size(), theirs.size(), "{what}: shape");
    let (a, b) = (bytes(ours), bytes(theirs));
    if a != b {
        let elt = ours.kind().elt_size_in_bytes();
        let differing: Vec<usize> =
            (0..a.len() / elt).filter(|&i| a[i * elt..(i + 1) * elt] != b[i * elt..(i + 1) * elt]).collect();
        let first = differing[0] as i64;
        let flat =
            |t: &Tensor| t.to_device(Device::Cpu).reshape([-1]).get(first).to_kind(Kind::Double).double_value(&[]);
        panic!(
            "{what}: {} of {} elements differ from {reference}; first at flat index {first}: ours {:e}, {reference} {:e}",
            differing.len(),
            a.len() / elt,
            flat(ours),
            flat(theirs),
        );
    }
}

/// Asserts two tensors agree within `ulps` units in the last place of the tensor's largest
/// magnitude (in its dtype: float32 or bfloat16), dtype and shape equal. For reference values a
/// CPU kernel rounds by a last bit differently on different x86 machines (torch's vectorized
/// paths), where the same machine gives bit-identical results.
#[cfg(feature = "exec")]
pub fn assert_within_ulps(what: &str, ours: &tch::Tensor, theirs: &tch::Tensor, reference: &str, ulps: f64) {
    use tch::Kind;
    assert_eq!(ours.kind(), theirs.kind(), "{what}: dtype");
    assert_eq!(ours.size(), theirs.size(), "{what}: shape");
    let eps = match ours.kind() {
        Kind::BFloat16 => 2f64.powi(-7),
        Kind::Half => 2f64.powi(-10),
        _ => f64::from(f32::EPSILON),
    };
    let theirs64 = theirs.to_kind(Kind::Double);
    let scale = theirs64.abs().max().double_value(&[]);
    let bound = ulps * eps * scale;
    let worst = (ours.to_kind(Kind::Double) - theirs64).abs().max().double_value(&[]);
    assert!(worst <= bound, "{what}: differs from {reference} by {worst:e}, more than {ulps} ulps ({bound:e})");
}

/// A model against a parity golden (`input_ids`, `labels`, `logits`, `loss`, `grad.<name>` for
/// every trainable tensor): logits within 1e-4, the summed loss over the counted labels within
/// 1e-5, every trainable gradient within 1e-4 relative, the trainable set exactly the golden's.
/// Prints the figures.
#[cfg(feature = "exec")]
pub fn assert_matches_parity_golden(
    case: &str,
    model: &recipe::model::llama::CausalLm,
    g: &std::collections::HashMap<String, tch::Tensor>,
    positions: &tch::Tensor,
    checkpointing: bool,
) {
    use recipe::exec::objective::{self, DeviceBatch, Supervised};
    use recipe::model::llama::Inputs;
    use tch::Kind;
    let (ids, labels) = (&g["input_ids"], &g["labels"]);
    let t = ids.size()[1];
    let inputs = Inputs { input_ids: ids, position_ids: positions, segment_ids: None, varlen: None };

    let logits = tch::no_grad(|| model.logits(&inputs));
    let d = (&logits - &g["logits"]).abs().max().double_value(&[]);
    assert!(d < 1e-4, "{case}: logits differ by {d:e}");

    let counted = labels.narrow(1, 1, t - 1).ne(-100).sum(Kind::Int64).int64_value(&[]) as f64;
    let loss = objective::forward_backward(
        model,
        &Supervised::WHOLE,
        &DeviceBatch::new(&inputs, labels),
        counted,
        checkpointing,
        &|_| {},
    )
    .loss
        / counted;
    let dl = (loss.double_value(&[]) - g["loss"].double_value(&[])).abs();
    assert!(dl < 1e-5, "{case}: loss differs by {dl:e}");

    let params = model.trainable_params();
    assert_eq!(params.len(), g.keys().filter(|k| k.starts_with("grad.")).count(), "{case}: trainable set");
    let mut worst = 0f64;
    for p in params {
        let expected = &g[&format!("grad.{}", p.name)];
        let got = p.tensor.grad();
        assert_eq!(got.size(), expected.size(), "{case}: shape of {}'s gradient", p.name);
        let rel = (&got - expected).abs().max().double_value(&[]) / expected.abs().max().double_value(&[]);
        worst = worst.max(rel);
        assert!(rel < 1e-4, "{case}: gradient of {} differs by {rel:e} (relative)", p.name);
    }
    eprintln!(
        "{case} (checkpointing {checkpointing}): logits {d:e}, loss {dl:e}, worst relative gradient difference {worst:e}"
    );
}

/// The base model of the peft adapter folder `dir` (relative paths from the package root) with
/// that adapter loaded, on the CPU, the base in `base_kind`.
#[cfg(feature = "exec")]
pub fn load_peft_folder(dir: &Path, base_kind: tch::Kind) -> recipe::model::llama::CausalLm {
    load_peft_folder_on(dir, base_kind, tch::Device::Cpu)
}

/// [`load_peft_folder`] on `device`.
#[cfg(feature = "exec")]
pub fn load_peft_folder_on(dir: &Path, base_kind: tch::Kind, device: tch::Device) -> recipe::model::llama::CausalLm {
    use recipe::model::adapter;
    use recipe::model::llama::{CausalLm, LoadOptions};
    use recipe::model::weights::Checkpoint;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cfg = adapter::read_config(dir).unwrap();
    let base = root.join(&cfg.base_model);
    let config = std::fs::read_to_string(base.join("config.json")).unwrap();
    let arch = recipe::plan::arch::Architecture::from_config_json(&config).unwrap();
    let opts = LoadOptions {
        device,
        base_kind,
        trainable: cfg.trainable.clone(),
        quantize: None,
        score_head: cfg.sequence_classification,
    };
    let model = CausalLm::load(&arch, &Checkpoint::open(&base).unwrap(), &opts).unwrap();
    let adapter_file = dir.join("adapter_model.safetensors");
    adapter::load_trainable(&model, &Checkpoint::open_files(dir, &[adapter_file]).unwrap()).unwrap();
    model
}

/// Every *.yaml / *.yml under `dir`, recursively, sorted, as paths relative to the package root.
pub fn recipe_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(Path::new(dir), &mut out);
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
}

/// Diagnostics of one file as plain text, the way `recipe validate` prints them.
pub fn rendered(loaded: &recipe::recipe::Loaded) -> String {
    recipe::recipe::diagnostic::render_text(&loaded.diagnostics, &loaded.sources, false)
}

/// A snapshot name from a path: `tests/fixtures/invalid/typo.yaml` -> `invalid__typo`.
pub fn snapshot_name(path: &Path, strip: &str) -> String {
    let rel = path.strip_prefix(strip).unwrap_or(path);
    rel.with_extension("").to_string_lossy().replace(['/', '\\'], "__")
}

/// The commit the stand-in hubs report.
pub const HUB_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// What a stand-in hub answers for a path.
pub enum HubReply {
    /// A repo file: served with the headers hf-hub reads (ETag, X-Repo-Commit, Content-Range),
    /// Range honoured.
    File(Vec<u8>),
    /// An API answer.
    Json(String),
}

/// A stand-in Hugging Face hub on localhost (for HF_ENDPOINT): `route` answers each request path
/// (None: 404). Serves until the test process ends. Returns the endpoint and a request log.
pub fn stand_in_hub(
    route: impl Fn(&str) -> Option<HubReply> + Send + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let requests = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = value.trim().split_once('-').unwrap();
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap_or(usize::MAX)));
                }
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
            requests.lock().unwrap().push(path.clone());
            match route(&path) {
                None => {
                    let _ =
                        stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
                Some(HubReply::Json(body)) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(body.as_bytes());
                }
                Some(HubReply::File(body)) => {
                    let (a, b) = range.unwrap_or((0, body.len() - 1));
                    let part = &body[a..=b.min(body.len() - 1)];
                    let head = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{}/{}\r\n\
                         ETag: \"etag-{}-{}\"\r\nX-Repo-Commit: {HUB_COMMIT}\r\nConnection: close\r\n\r\n",
                        part.len(),
                        a + part.len() - 1,
                        body.len(),
                        path.len(),
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(part);
                }
            }
        }
    });
    (endpoint, log)
}

/// A random-initialised Llama folder at `dir` (config.json from `config`, which must use the
/// stories260k vocabulary of 512; its tokenizer files; model.safetensors with N(0, 0.02) weights
/// and unit norms), seeded for repeatability.
#[cfg(feature = "exec")]
pub fn random_llama(dir: &Path, config: &serde_json::Value) {
    use tch::{Device, Kind, Tensor};
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/stories260k");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(assets.join(f), dir.join(f)).unwrap();
    }
    let arch = recipe::plan::model::local_architecture(dir).unwrap();
    tch::manual_seed(0);
    let param = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.02;
    let ones = |n: i64| Tensor::ones([n], (Kind::Float, Device::Cpu));
    let h = arch.hidden_size as i64;
    let mut tensors = vec![
        ("model.embed_tokens.weight".to_string(), param(&[arch.vocab_size as i64, h])),
        ("model.norm.weight".to_string(), ones(h)),
    ];
    if !arch.tie_word_embeddings {
        tensors.push(("lm_head.weight".to_string(), param(&[arch.vocab_size as i64, h])));
    }
    for l in 0..arch.num_layers {
        for n in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((format!("model.layers.{l}.{n}.weight"), ones(h)));
        }
        for lin in arch.layer_linears() {
            tensors.push((
                format!("model.layers.{l}.{}.weight", lin.name),
                param(&[lin.out_features as i64, lin.in_features as i64]),
            ));
        }
    }
    recipe::model::weights::save(&dir.join("model.safetensors"), &tensors).unwrap();
}

/// Golden token-id lists stored flat as `KEY_ids` with their `KEY_lengths`.
#[cfg(feature = "exec")]
pub fn golden_id_lists(g: &std::collections::HashMap<String, tch::Tensor>, key: &str) -> Vec<Vec<i64>> {
    let flat = Vec::<i64>::try_from(&g[&format!("{key}_ids")]).unwrap();
    let lengths = Vec::<i64>::try_from(&g[&format!("{key}_lengths")]).unwrap();
    let mut out = Vec::new();
    let mut at = 0usize;
    for n in lengths {
        out.push(flat[at..at + n as usize].to_vec());
        at += n as usize;
    }
    out
}

/// Asserts every trainable tensor's gradient equals the golden `grad.NAME` within 1e-4 of its
/// largest value; returns how many were compared and the worst relative difference.
#[cfg(feature = "exec")]
pub fn assert_gradients_match(
    model: &recipe::model::llama::CausalLm,
    g: &std::collections::HashMap<String, tch::Tensor>,
    what: &str,
) -> (usize, f64) {
    let params = model.trainable_params();
    let mut worst = 0.0f64;
    for p in &params {
        let golden = &g[&format!("grad.{}", p.name)];
        let scale = golden.abs().max().double_value(&[]).max(1e-12);
        let d = (&p.tensor.grad() - golden).abs().max().double_value(&[]) / scale;
        assert!(d <= 1e-4, "{what}: gradient of {} differs from the reference's by {d:e} of its largest", p.name);
        worst = worst.max(d);
    }
    (params.len(), worst)
}

/// The records of `DIR/out/metrics.jsonl`.
pub fn metrics_records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("out/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `recipe run RECIPE --device cpu ARGS`: its standard output, once it has succeeded.
pub fn run_on_cpu(recipe: &Path, args: &[&str]) -> String {
    let run =
        recipe_command().arg("run").arg(recipe).args(["--device", "cpu", "--no-progress"]).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    stdout
}

/// The training losses of `OUT/metrics.jsonl`, in step order.
pub fn training_losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("loss")?.as_f64())
        .collect()
}

/// A runnable copy in `dest` of the tiny random model in `golden` (config.json, model.safetensors):
/// its vocabulary made stories260k's 512 tokens (fresh embedding and head rows, seeded) and
/// stories260k's tokenizer files beside it; `edit` changes the config first.
#[cfg(feature = "exec")]
pub fn runnable_copy_of_golden_base(golden: &Path, dest: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    use tch::{Device, Kind, Tensor};
    std::fs::create_dir_all(dest).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden.join("config.json")).unwrap()).unwrap();
    config["vocab_size"] = 512.into();
    edit(&mut config);
    std::fs::write(dest.join("config.json"), config.to_string()).unwrap();
    tch::manual_seed(0);
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(golden.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| match n.as_str() {
            "model.embed_tokens.weight" | "lm_head.weight" => {
                let hidden = t.size()[1];
                (n, Tensor::randn([512, hidden], (Kind::Float, Device::Cpu)) * 0.02)
            }
            _ => (n, t),
        })
        .collect();
    Tensor::write_safetensors(&tensors, dest.join("model.safetensors")).unwrap();
    let stories = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/stories260k");
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(stories.join(f), dest.join(f)).unwrap();
    }
}

/// A small LoRA recipe on stories260k written to `dir/recipe.yaml`: rank 4 on every linear layer,
/// the Shakespeare excerpt as packed completion text with a tenth held out, micro batch 4, lr 2e-3,
/// seed 7, outputs in `dir/out`; `settings` adds the rest (sequence_len, schedule, steps, ...).
pub fn stories_lora_recipe(dir: &Path, settings: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        "base_model: {model}\nadapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true\n\
         datasets:\n  - path: {data}\n    type: completion\n    ds_type: text\n\
         val_set_size: 0.1\nsample_packing: true\nmicro_batch_size: 4\nlearning_rate: 2.0e-3\nseed: 7\n\
         output_dir: {out}\n{settings}",
        model = root.join("models/stories260k").display(),
        data = root.join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
        out = dir.join("out").display(),
    );
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A full fine-tune of stories260k written to `dir/r.yaml`: the Shakespeare excerpt as packed
/// completion text, sequence_len 128, micro batch 2, 6 steps, logging every step, outputs in
/// `dir/out`; `settings` adds the rest (learning rate, schedule, optimizer, seed, ...).
pub fn stories_full_fine_tune(dir: &Path, settings: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        "base_model: {}\ndatasets:\n  - path: {}\n    type: completion\n    ds_type: text\nval_set_size: 0\n\
         sequence_len: 128\nsample_packing: true\nmicro_batch_size: 2\nmax_steps: 6\nlogging_steps: 1\n\
         save_steps: 100\noutput_dir: {}\n{settings}",
        root.join("models/stories260k").display(),
        root.join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
        dir.join("out").display()
    );
    let path = dir.join("r.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A command's standard output, asserting it succeeded (both streams shown when not).
pub fn stdout_of(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `text` with this machine's paths replaced, for snapshots: the repository as `<repo>`, `dir` as `<tmp>`.
pub fn portable(text: &str, dir: &Path) -> String {
    text.replace(env!("CARGO_MANIFEST_DIR"), "<repo>").replace(&dir.display().to_string(), "<tmp>")
}

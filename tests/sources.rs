//! `data::sources`: every format, folders, data_files globs, the hub cache layout (hit, revision,
//! offline miss), a stand-in hub for downloads, error messages naming file and line, and no panic
//! on truncated or garbage files. Fixtures: tests/fixtures/data/ (text written for these tests).

use recipe::config::datasets::{DatasetSource, FileFormat, FileList};
use recipe::data::sources::{self, Hub, RawRow};
use serde_json::json;
use std::path::{Path, PathBuf};

mod common;
use common::HUB_COMMIT as COMMIT;
const OTHER_COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn source(path: &str) -> DatasetSource {
    serde_json::from_value(json!({ "path": path })).unwrap()
}

fn with(path: &str, extra: serde_json::Value) -> DatasetSource {
    let mut v = json!({ "path": path });
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(v).unwrap()
}

fn read_local(path: &Path) -> Vec<RawRow> {
    sources::read(&source(&path.display().to_string()), Some(path), "text").unwrap()
}

fn names(rows: &[RawRow]) -> Vec<String> {
    rows.iter().map(|r| r.origin.file.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

/// A hub that is never reached: tests that must stay in the cache.
fn offline_hub(cache: &Path) -> Hub {
    Hub { cache: Some(cache.to_path_buf()), offline: true, endpoint: None, token: None }
}

#[test]
fn json_array_rows_carry_row_and_line() {
    let path = fixtures().join("alpaca.json");
    let rows = read_local(&path);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].value, json!({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}));
    assert_eq!((rows[1].origin.row, rows[1].origin.line), (1, Some(3)));
    assert_eq!(rows[2].origin.to_string(), format!("{}:4", path.display()));
    // Key order is the file's (serde_json preserve_order).
    let keys: Vec<&String> = rows[0].value.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["instruction", "input", "output"]);
}

#[test]
fn jsonl_rows_carry_their_line_past_blank_lines() {
    let rows = read_local(&fixtures().join("alpaca.jsonl"));
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].value["output"], "42");
    assert_eq!((rows[1].origin.row, rows[1].origin.line), (1, Some(3)));
    assert_eq!((rows[2].origin.row, rows[2].origin.line), (2, Some(4)));
}

#[test]
fn json_format_reads_json_lines_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lines.json");
    std::fs::write(&path, "{\"a\": 1}\n{\"a\": 2}\n").unwrap();
    let rows = read_local(&path);
    assert_eq!(rows.iter().map(|r| r.value["a"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(rows[1].origin.line, Some(2));
}

#[test]
fn csv_header_gives_keys_and_quotes_hold_commas_and_newlines() {
    let path = fixtures().join("alpaca.csv");
    let rows = read_local(&path);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].value, json!({"instruction": "List two fruits.", "input": "", "output": "apple, pear"}));
    assert_eq!(rows[1].value, json!({"instruction": "Quote \"this\".", "input": "x", "output": "line one\nline two"}));
    assert_eq!(rows[2].value["output"], "1 2 3");
    // Lines where each record starts; the second spans lines 3 and 4.
    assert_eq!(rows.iter().map(|r| r.origin.line.unwrap()).collect::<Vec<_>>(), [2, 3, 5]);
}

#[test]
fn parquet_rows_keep_nested_lists_and_structs() {
    let path = fixtures().join("chat.parquet");
    let rows = read_local(&path);
    assert_eq!(rows.len(), 3, "two row groups, all rows");
    assert_eq!(
        rows[0].value,
        json!({
            "id": 0, "instruction": "Name a planet.", "output": "Mars.", "score": 0.5,
            "messages": [{"role": "user", "content": "Name a planet."}, {"role": "assistant", "content": "Mars."}]
        })
    );
    assert_eq!(rows[2].value["output"], json!(null));
    assert_eq!(rows[2].value["messages"], json!([]));
    assert_eq!(rows[2].origin.to_string(), format!("{} row 2", path.display()));
}

#[test]
fn a_text_file_is_one_row_in_the_text_field() {
    let path = fixtures().join("story.txt");
    let rows = sources::read(&source("story.txt"), Some(&path), "body").unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].value, json!({"body": std::fs::read_to_string(&path).unwrap()}));
    // ds_type overrides the extension.
    let rows = sources::read(&with("x", json!({"ds_type": "text"})), Some(&fixtures().join("alpaca.csv")), "text");
    assert!(rows.unwrap()[0].value["text"].as_str().unwrap().starts_with("instruction,input,output"));
}

#[test]
fn a_folder_gives_its_data_files_sorted_without_hidden_ones() {
    let rows = read_local(&fixtures().join("folder"));
    assert_eq!(names(&rows), ["a.jsonl", "a.jsonl", "b.jsonl"]);
    assert_eq!(rows[2].value["text"], "folder b, row 0");
    assert_eq!((rows[2].origin.row, rows[2].origin.line), (0, Some(1)), "rows count per file");
}

#[test]
fn data_files_pick_files_by_name_or_glob() {
    let dir = fixtures();
    let pick = |path: &Path, files: FileList| {
        let src = DatasetSource { data_files: Some(files), ..source("x") };
        let hub = Hub::default();
        sources::files(&src, Some(path), &hub).map(|files| {
            files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>()
        })
    };
    assert_eq!(pick(&dir.join("folder"), FileList::One("b.jsonl".into())).unwrap(), ["b.jsonl"]);
    assert_eq!(
        pick(&dir, FileList::Many(vec!["folder/b.*".into(), "alpaca.json".into()])).unwrap(),
        ["b.jsonl", "alpaca.json"],
        "in the order of the patterns"
    );
    assert_eq!(pick(&dir, FileList::One("**/a.jsonl".into())).unwrap(), ["a.jsonl"]);
    // `*` crosses no folder and matches no hidden file.
    assert_eq!(pick(&dir, FileList::One("*.jsonl".into())).unwrap(), ["alpaca.jsonl", "broken.jsonl"]);
    assert_eq!(pick(&dir.join("folder"), FileList::One("*".into())).unwrap(), ["README", "a.jsonl", "b.jsonl"]);
    // The rows of the chosen files, in order.
    let src = DatasetSource { data_files: Some(FileList::One("folder/*.jsonl".into())), ..source("x") };
    assert_eq!(names(&sources::read(&src, Some(&dir), "text").unwrap()), ["a.jsonl", "a.jsonl", "b.jsonl"]);
    // Next to a file: relative to its folder.
    assert_eq!(pick(&dir.join("folder/a.jsonl"), FileList::One("b.jsonl".into())).unwrap(), ["b.jsonl"]);
    let err = pick(&dir.join("folder"), FileList::One("c*.jsonl".into())).unwrap_err();
    assert!(err.contains("data_files `c*.jsonl` matches no file in folder") && err.contains("folder"), "{err}");
}

#[test]
fn folders_choose_the_split_and_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("README.md", "# not data\n");
    write("train.jsonl", "{\"s\": \"train\"}\n");
    write("test.jsonl", "{\"s\": \"test\"}\n");
    write("extra/train-00000-of-00001.csv", "s\nextra\n");
    let read = |src: DatasetSource| sources::read(&src, Some(dir.path()), "text");
    let values =
        |rows: Vec<RawRow>| rows.into_iter().map(|r| r.value["s"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(values(read(source("d")).unwrap()), ["extra", "train"]);
    assert_eq!(values(read(with("d", json!({"split": "test"}))).unwrap()), ["test"]);
    let err = read(with("d", json!({"split": "validation"}))).unwrap_err();
    assert!(err.contains("no file of split `validation`") && err.contains("test.jsonl"), "{err}");
    assert_eq!(values(read(with("d", json!({"name": "extra"}))).unwrap()), ["extra"]);
    let err = read(with("d", json!({"name": "nope"}))).unwrap_err();
    assert!(err.contains("`name: nope`") && err.contains("no folder nope/"), "{err}");
    // ds_type narrows a folder to that format.
    assert_eq!(values(read(with("d", json!({"ds_type": "csv"}))).unwrap()), ["extra"]);
}

/// A hub cache with datasets--acme--toy at COMMIT (refs/main) and OTHER_COMMIT (refs/v1).
fn hub_cache() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("datasets--acme--toy");
    let main = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(main.join("data")).unwrap();
    std::fs::copy(fixtures().join("chat.parquet"), main.join("data/train-00000-of-00001.parquet")).unwrap();
    std::fs::write(main.join("data/test-00000-of-00001.jsonl"), "{\"instruction\": \"held out\"}\n").unwrap();
    std::fs::write(main.join("README.md"), "---\nlicense: mit\n---\n").unwrap();
    let v1 = repo.join("snapshots").join(OTHER_COMMIT);
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(v1.join("train.jsonl"), "{\"instruction\": \"v1\"}\n").unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    std::fs::write(repo.join("refs/v1"), format!("{OTHER_COMMIT}\n")).unwrap();
    dir
}

#[test]
fn hub_datasets_read_from_the_cache_snapshot() {
    let cache = hub_cache();
    // Online too: a complete snapshot answers without the network.
    let online = Hub { offline: false, endpoint: Some("http://127.0.0.1:9".into()), ..offline_hub(cache.path()) };
    for hub in [offline_hub(cache.path()), online] {
        let rows = sources::read_rows(&source("acme/toy"), None, "text", &hub).unwrap().strict().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].value["messages"][1]["content"], "Mars.");
        let file = rows[0].origin.file.to_string_lossy().into_owned();
        assert!(file.ends_with(&format!("datasets--acme--toy/snapshots/{COMMIT}/data/train-00000-of-00001.parquet")));
    }
    let hub = offline_hub(cache.path());
    let test = sources::read_rows(&with("acme/toy", json!({"split": "test"})), None, "text", &hub).unwrap();
    assert_eq!(test.rows[0].value["instruction"], "held out");
    for revision in ["v1", OTHER_COMMIT] {
        let src = with("acme/toy", json!({"revision": revision}));
        let rows = sources::read_rows(&src, None, "text", &hub).unwrap().rows;
        assert_eq!(rows[0].value["instruction"], "v1", "revision {revision}");
    }
    let src = with("acme/toy", json!({"data_files": "data/*.jsonl"}));
    let files = sources::files(&src, None, &hub).unwrap();
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with("data/test-00000-of-00001.jsonl"));
}

#[test]
fn hub_datasets_read_through_the_environment() {
    let cache = hub_cache();
    // SAFETY: the only test of this binary that reads or writes these variables (the others pass a
    // `Hub` explicitly or read local paths).
    unsafe {
        std::env::set_var("HF_HUB_CACHE", cache.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let rows = sources::read(&source("acme/toy"), None, "text").unwrap();
    assert_eq!(rows.len(), 3);
    let err = sources::read(&source("acme/absent"), None, "text").unwrap_err();
    assert!(
        err.contains("acme/absent@main is not in the Hugging Face cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn hub_offline_misses_are_clear_errors() {
    let cache = hub_cache();
    let hub = offline_hub(cache.path());
    let err = sources::read_rows(&source("acme/other"), None, "text", &hub).unwrap_err();
    assert!(err.contains("hub dataset acme/other@main is not in the Hugging Face cache"), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE is set"), "{err}");
    let err = sources::read_rows(&with("acme/toy", json!({"revision": "v2"})), None, "text", &hub).unwrap_err();
    assert!(err.contains("acme/toy@v2 is not in the Hugging Face cache"), "{err}");
    // A partly downloaded sharded split is not taken for the whole split.
    let data = cache.path().join(format!("datasets--acme--toy/snapshots/{COMMIT}/data"));
    std::fs::rename(data.join("train-00000-of-00001.parquet"), data.join("train-00000-of-00002.parquet")).unwrap();
    let err = sources::read_rows(&source("acme/toy"), None, "text", &hub).unwrap_err();
    assert!(err.contains("shards missing from the cache (data/train-00001-of-00002.parquet)"), "{err}");
    let err = sources::read_rows(&source("../escape"), None, "text", &hub).unwrap_err();
    assert!(err.contains("neither a local file or folder nor a hub dataset id"), "{err}");
}

/// A stand-in hub serving acme/remote: the repo info (siblings) and every file of `files`.
fn stand_in_dataset_hub(
    files: Vec<(&'static str, Vec<u8>)>,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    common::stand_in_hub(move |path| {
        if path == "/api/datasets/acme/remote/revision/main" {
            let siblings: Vec<_> = files.iter().map(|(name, _)| json!({"rfilename": name})).collect();
            return Some(common::HubReply::Json(json!({"siblings": siblings, "sha": COMMIT}).to_string()));
        }
        let name = path.strip_prefix("/datasets/acme/remote/resolve/main/")?;
        files.iter().find(|(n, _)| *n == name).map(|(_, body)| common::HubReply::File(body.clone()))
    })
}

#[test]
fn hub_datasets_not_cached_are_listed_and_fetched_then_cached() {
    let files = vec![
        (".gitattributes", b"*.parquet filter=lfs\n".to_vec()),
        ("README.md", b"# remote\n".to_vec()),
        ("data/train-00000-of-00001.parquet", std::fs::read(fixtures().join("chat.parquet")).unwrap()),
        ("data/validation-00000-of-00001.jsonl", b"{\"instruction\": \"val\"}\n".to_vec()),
    ];
    let (endpoint, log) = stand_in_dataset_hub(files);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub { cache: Some(cache.path().to_path_buf()), offline: false, endpoint: Some(endpoint), token: None };
    let rows = sources::read_rows(&source("acme/remote"), None, "text", &hub).unwrap().strict().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].value["instruction"], "What is 2+2?");
    let requests = log.lock().unwrap().clone();
    assert!(requests.contains(&"/api/datasets/acme/remote/revision/main".to_string()), "{requests:?}");
    assert!(
        !requests.iter().any(|r| r.contains("validation") || r.contains("README")),
        "only the split's files: {requests:?}"
    );
    let cached =
        cache.path().join(format!("datasets--acme--remote/snapshots/{COMMIT}/data/train-00000-of-00001.parquet"));
    assert!(cached.exists(), "cached in the hub layout");
    // Now offline: the cache answers.
    let rows = sources::read_rows(&source("acme/remote"), None, "text", &offline_hub(cache.path())).unwrap();
    assert_eq!(rows.rows.len(), 3);
}

#[test]
fn a_bad_jsonl_line_is_named_by_file_and_line() {
    let path = fixtures().join("broken.jsonl");
    let err = sources::read(&source("broken.jsonl"), Some(&path), "text").unwrap_err();
    assert!(err.starts_with(&format!("{}:3: not valid JSON (column 38): expected ident", path.display())), "{err}");
    // Tolerant reading sets it apart and keeps the rest.
    let rows = sources::read_file(&path, None, "text").unwrap();
    assert_eq!(rows.rows.iter().map(|r| r.origin.line.unwrap()).collect::<Vec<_>>(), [1, 2, 4]);
    assert_eq!(rows.bad.len(), 1);
    assert_eq!(rows.bad[0].origin.line, Some(3));
}

#[test]
fn errors_name_the_file_and_where_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let err_of = |p: &Path| sources::read(&source("x"), Some(p), "text").unwrap_err();
    let shows = |p: &Path, rest: &str| format!("{}{rest}", p.display());

    let p = file("array.json", b"[\n {\"a\": 1},\n {\"a\": }\n]");
    assert_eq!(err_of(&p), shows(&p, ":3:8: not valid JSON: expected value"));
    let p = file("scalars.json", b"[{\"a\": 1}, 2]");
    assert_eq!(err_of(&p), shows(&p, ":1: a row must be a JSON object, found a number"));
    let p = file("pretty.json", b"{\n  \"rows\": []\n}\n");
    assert!(err_of(&p).contains("one JSON object, not rows"), "{}", err_of(&p));
    let p = file("fields.csv", b"a,b\n1,2\n1,2,3\n");
    assert_eq!(err_of(&p), shows(&p, ":3: 3 fields, the header has 2"));
    let p = file("open.csv", b"a,b\n1,\"never closed\n2,3\n");
    assert_eq!(err_of(&p), shows(&p, ":2: a quoted field is never closed"));
    let p = file("dup.csv", b"a,a\n1,2\n");
    assert_eq!(err_of(&p), shows(&p, ":1: the header names column `a` twice"));
    let p = file("latin1.jsonl", b"{\"a\": \"ok\"}\n{\"a\": \"caf\xe9\"}\n");
    assert_eq!(err_of(&p), shows(&p, ":2: not UTF-8 text (bad byte at offset 22)"));
    let p = file("rows.data", b"{}\n");
    assert!(err_of(&p).starts_with(&shows(&p, ": cannot tell the format")), "{}", err_of(&p));
    let p = dir.path().join("absent.jsonl");
    assert!(err_of(&p).starts_with(&shows(&p, ": ")), "{}", err_of(&p));
    let p = file("garbage.parquet", b"PAR1 not really parquet PAR1");
    assert!(err_of(&p).starts_with(&shows(&p, ": not a readable parquet file")), "{}", err_of(&p));
    // Many bad rows: the first, and how many more.
    let p = file("many.jsonl", b"1\n2\n3\n");
    assert_eq!(err_of(&p), shows(&p, ":1: a row must be a JSON object, found a number (and 2 more malformed rows)"));
    assert_eq!(sources::format_of(Path::new("A.JSONL")), Some(FileFormat::Jsonl));
}

#[test]
fn truncated_and_garbage_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for name in ["alpaca.json", "alpaca.jsonl", "alpaca.csv", "chat.parquet", "broken.jsonl", "story.txt"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let n = bytes.len();
        for cut in [0, 1, 4, 8, n / 3, n / 2, n - 9, n - 8, n - 4, n - 1] {
            inputs.push(bytes[..cut.min(n)].to_vec());
        }
        // The middle overwritten, the footer kept (parquet reads its metadata from the end).
        let mut scrambled = bytes.clone();
        for (i, b) in scrambled.iter_mut().enumerate().skip(n / 4).take(n / 2) {
            *b = (i as u8).wrapping_mul(37) ^ 0x5a;
        }
        inputs.push(scrambled);
    }
    inputs.push((0..=255u8).cycle().take(2048).collect());
    inputs.push(b"PAR1\x00\x00\x00\x00PAR1".to_vec());
    inputs.push(b"PAR1\xff\xff\xff\x7fPAR1".to_vec());
    inputs.push(b"\"\n\"\"\"\r\r\n,,,\"".to_vec());
    inputs.push(b"[[[[[[[{".to_vec());
    let formats = [FileFormat::Json, FileFormat::Jsonl, FileFormat::Csv, FileFormat::Parquet, FileFormat::Text];
    let path = dir.path().join("input");
    for (i, bytes) in inputs.iter().enumerate() {
        std::fs::write(&path, bytes).unwrap();
        for format in formats {
            let outcome =
                std::panic::catch_unwind(|| sources::read_file(&path, Some(format), "text").map(|r| r.rows.len()));
            assert!(outcome.is_ok(), "input {i} read as {format:?} panicked");
        }
    }
}

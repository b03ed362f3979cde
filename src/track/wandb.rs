//! Weights & Biases, offline: a run folder as `wandb.init(mode="offline")` leaves it,
//! `OUTPUT_DIR/wandb/offline-run-YYYYMMDD_HHMMSS-<id>/run-<id>.wandb`, which `wandb sync` uploads.
//!
//! The `.wandb` file is W&B's transaction log: a 7-byte header (`:W&B`, magic 0xBEE1 little-endian,
//! version 0), then LevelDB-log framing in 32 KiB blocks (each fragment: CRC-32 of the fragment type
//! byte and data, length u16, type FULL/FIRST/MIDDLE/LAST; a block's tail shorter than a fragment
//! header is zero padding) around `wandb_internal.Record` protobufs (wandb/proto/wandb_internal.proto),
//! encoded with prost. The records are those an offline run of wandb 0.31 writes: header, run (id,
//! entity, project, display name, host, start time, the resolved recipe as config), one history
//! row per step (metrics of the same step merged, as `wandb.log` commits them, with `_step`,
//! `_runtime`, `_timestamp`), the summary (last value of every metric), and the exit (code 0 when
//! finished, 1 on failure, 255 when stopped by Ctrl-C). Every record is flushed when written.
//! A run resumed from a checkpoint is another folder of the same run id (the recipe's, else the
//! newest folder's) marked `resume`, as `wandb.init(id=..., resume="allow")` writes it offline;
//! `wandb sync` appends it to the run.

use super::{Point, RunInfo, Status, Tracker};
use crate::plan::tracking::WandbPlan;
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    #[prost(int64, tag = "1")]
    pub num: i64,
    #[prost(oneof = "RecordType", tags = "2, 3, 17, 18, 21")]
    pub record_type: Option<RecordType>,
    #[prost(message, optional, tag = "200")]
    pub info: Option<RecordInfo>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RecordType {
    #[prost(message, tag = "2")]
    History(HistoryRecord),
    #[prost(message, tag = "3")]
    Summary(SummaryRecord),
    #[prost(message, tag = "17")]
    Run(RunRecord),
    #[prost(message, tag = "18")]
    Exit(RunExitRecord),
    #[prost(message, tag = "21")]
    Header(HeaderRecord),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordInfo {
    #[prost(string, tag = "1")]
    pub stream_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderRecord {
    #[prost(message, optional, tag = "1")]
    pub version_info: Option<VersionInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionInfo {
    #[prost(string, tag = "1")]
    pub producer: String,
    #[prost(string, tag = "2")]
    pub min_consumer: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunRecord {
    #[prost(string, tag = "1")]
    pub run_id: String,
    #[prost(string, tag = "2")]
    pub entity: String,
    #[prost(string, tag = "3")]
    pub project: String,
    #[prost(message, optional, tag = "4")]
    pub config: Option<ConfigRecord>,
    #[prost(string, tag = "8")]
    pub display_name: String,
    #[prost(string, tag = "13")]
    pub host: String,
    #[prost(message, optional, tag = "17")]
    pub start_time: Option<Timestamp>,
    /// Continue the run of this id (`wandb.init(resume="allow")`): `wandb sync` appends to it.
    #[prost(bool, tag = "24")]
    pub resume: bool,
}

/// google.protobuf.Timestamp.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigRecord {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<Item>,
}

/// HistoryItem, SummaryItem and ConfigItem share these fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Item {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, repeated, tag = "2")]
    pub nested_key: Vec<String>,
    #[prost(string, tag = "16")]
    pub value_json: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryRecord {
    #[prost(message, repeated, tag = "1")]
    pub item: Vec<Item>,
    #[prost(message, optional, tag = "2")]
    pub step: Option<HistoryStep>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryStep {
    #[prost(int64, tag = "1")]
    pub num: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryRecord {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<Item>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunExitRecord {
    #[prost(int32, tag = "1")]
    pub exit_code: i32,
    #[prost(int32, tag = "2")]
    pub runtime: i32,
}

const BLOCK: usize = 32 * 1024;
const FRAGMENT_HEADER: usize = 7;
/// The version of wandb whose offline records these follow, and the reader its header asks for.
const PRODUCER: &str = concat!("recipe ", env!("CARGO_PKG_VERSION"), " (as wandb 0.31.0)");
const MIN_CONSUMER: &str = "0.70.0";

/// The file header and LevelDB-log framing of a `.wandb` file.
pub struct LogWriter<W: Write> {
    out: W,
    offset: usize,
}

impl<W: Write> LogWriter<W> {
    pub fn new(mut out: W) -> std::io::Result<LogWriter<W>> {
        let mut header = b":W&B".to_vec();
        header.extend_from_slice(&0xBEE1u16.to_le_bytes());
        header.push(0);
        out.write_all(&header)?;
        Ok(LogWriter { out, offset: header.len() })
    }

    pub fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut rest = data;
        let mut first = true;
        loop {
            let left = BLOCK - self.offset % BLOCK;
            if left < FRAGMENT_HEADER {
                self.out.write_all(&vec![0u8; left])?;
                self.offset += left;
                continue;
            }
            let n = rest.len().min(left - FRAGMENT_HEADER);
            let last = n == rest.len();
            let kind: u8 = match (first, last) {
                (true, true) => 1,
                (true, false) => 2,
                (false, false) => 3,
                (false, true) => 4,
            };
            let mut crc = crc32fast::Hasher::new();
            crc.update(&[kind]);
            crc.update(&rest[..n]);
            self.out.write_all(&crc.finalize().to_le_bytes())?;
            self.out.write_all(&(n as u16).to_le_bytes())?;
            self.out.write_all(&[kind])?;
            self.out.write_all(&rest[..n])?;
            self.offset += FRAGMENT_HEADER + n;
            rest = &rest[n..];
            first = false;
            if last {
                return self.out.flush();
            }
        }
    }
}

/// A value as W&B's JSON writes it (Python's json: NaN and Infinity spelt out).
fn value_json(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else {
        serde_json::Value::from(v).to_string()
    }
}

fn metric(key: &str, value: String) -> Item {
    Item { key: String::new(), nested_key: vec![key.to_string()], value_json: value }
}

/// 8 characters of [a-z0-9], as W&B draws run ids.
fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    let mut x = h.finish();
    (0..8)
        .map(|_| {
            let c = b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize] as char;
            x /= 36;
            c
        })
        .collect()
}

/// The run id of the newest `offline-run-YYYYMMDD_HHMMSS-<id>` folder in `dir`.
fn latest_run_id(dir: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("offline-run-"))
        .collect();
    names.sort();
    let last = names.pop()?;
    let id = last.get("offline-run-YYYYMMDD_HHMMSS-".len()..)?;
    (!id.is_empty()).then(|| id.to_string())
}

pub struct Wandb {
    dir: PathBuf,
    path: PathBuf,
    run_id: String,
    log: LogWriter<std::fs::File>,
    num: i64,
    started: f64,
    /// The row of the latest step, written when a later step arrives or at the end.
    pending: Option<Point>,
    /// The last value of every metric, for the summary.
    summary: Vec<(String, f64)>,
    last_step: Option<(u64, f64)>,
}

impl Wandb {
    pub fn start(plan: &WandbPlan, info: &RunInfo) -> Result<Wandb, String> {
        // A resumed run continues the latest run of the folder unless the recipe names one.
        let previous = || info.resumed_at.and_then(|_| latest_run_id(Path::new(&plan.dir)));
        let run_id = plan.run_id.clone().or_else(previous).unwrap_or_else(random_id);
        let started = super::now();
        // A second attempt of the same id within the same second takes the next second's name.
        let dir = (0..60)
            .map(|s| {
                Path::new(&plan.dir)
                    .join(format!("offline-run-{}-{run_id}", super::timestamp_name(started + f64::from(s))))
            })
            .find(|d| !d.exists())
            .ok_or_else(|| format!("{}: no free run folder name for run {run_id}", plan.dir))?;
        for sub in ["files", "logs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.join(sub).display()))?;
        }
        let path = dir.join(format!("run-{run_id}.wandb"));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let log = LogWriter::new(file).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut w = Wandb {
            dir,
            path,
            run_id: run_id.clone(),
            log,
            num: 0,
            started,
            pending: None,
            summary: Vec::new(),
            last_step: None,
        };
        w.write(RecordType::Header(HeaderRecord {
            version_info: Some(VersionInfo { producer: PRODUCER.into(), min_consumer: MIN_CONSUMER.into() }),
        }))?;
        let config = info
            .settings
            .iter()
            .map(|(key, value, _)| Item { key: key.clone(), nested_key: Vec::new(), value_json: value.to_string() })
            .collect();
        w.write(RecordType::Run(RunRecord {
            run_id,
            entity: plan.entity.clone().unwrap_or_default(),
            project: plan.project.clone(),
            config: Some(ConfigRecord { update: config }),
            display_name: plan.display_name.clone(),
            host: super::hostname(),
            start_time: Some(Timestamp {
                seconds: started.floor() as i64,
                nanos: ((started - started.floor()) * 1e9) as i32,
            }),
            resume: info.resumed_at.is_some(),
        }))?;
        Ok(w)
    }

    fn write(&mut self, record: RecordType) -> Result<(), String> {
        self.num += 1;
        let record = Record {
            num: self.num,
            record_type: Some(record),
            info: Some(RecordInfo { stream_id: self.run_id.clone() }),
        };
        self.log.append(&record.encode_to_vec()).map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn write_row(&mut self, row: Point) -> Result<(), String> {
        let runtime = row.wall_time - self.started;
        let mut items = vec![
            metric("_runtime", value_json(runtime)),
            metric("_step", row.step.to_string()),
            metric("_timestamp", value_json(row.wall_time)),
        ];
        for (k, v) in &row.metrics {
            items.push(metric(k, value_json(*v)));
            match self.summary.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = *v,
                None => self.summary.push((k.clone(), *v)),
            }
        }
        self.last_step = Some((row.step, row.wall_time));
        self.write(RecordType::History(HistoryRecord { item: items, step: Some(HistoryStep { num: row.step as i64 }) }))
    }
}

impl Tracker for Wandb {
    fn name(&self) -> &'static str {
        "W&B"
    }

    fn location(&self) -> String {
        format!("{} (offline; upload with `wandb sync {}`)", self.dir.display(), self.dir.display())
    }

    fn log(&mut self, point: &Point) -> Result<(), String> {
        match &mut self.pending {
            Some(row) if row.step == point.step => {
                for (k, v) in &point.metrics {
                    match row.metrics.iter_mut().find(|(name, _)| name == k) {
                        Some(slot) => slot.1 = *v,
                        None => row.metrics.push((k.clone(), *v)),
                    }
                }
                row.wall_time = point.wall_time;
                Ok(())
            }
            _ => match self.pending.replace(point.clone()) {
                Some(done) => self.write_row(done),
                None => Ok(()),
            },
        }
    }

    fn finish(&mut self, status: Status, _: &Path) -> Result<(), String> {
        if let Some(row) = self.pending.take() {
            self.write_row(row)?;
        }
        let now = super::now();
        let mut update: Vec<Item> = self.summary.iter().map(|(k, v)| metric(k, value_json(*v))).collect();
        if let Some((step, wall_time)) = self.last_step {
            update.push(metric("_step", step.to_string()));
            update.push(metric("_runtime", value_json(wall_time - self.started)));
            update.push(metric("_timestamp", value_json(wall_time)));
        }
        self.write(RecordType::Summary(SummaryRecord { update }))?;
        let exit_code = match status {
            Status::Finished => 0,
            Status::Failed => 1,
            Status::Killed => 255,
        };
        self.write(RecordType::Exit(RunExitRecord { exit_code, runtime: (now - self.started) as i32 }))?;
        self.log.out.sync_all().map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fragments never cross a 32 KiB block and reassemble to the record (LevelDB's log format).
    #[test]
    fn long_records_are_fragmented_by_block() {
        let mut w = LogWriter::new(Vec::new()).unwrap();
        let record: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        w.append(b"short").unwrap();
        w.append(&record).unwrap();
        let bytes = w.out;
        let (mut at, mut records, mut current) = (7usize, Vec::new(), Vec::new());
        while at + FRAGMENT_HEADER <= bytes.len() {
            let left = BLOCK - at % BLOCK;
            if left < FRAGMENT_HEADER {
                assert!(bytes[at..at + left].iter().all(|&b| b == 0));
                at += left;
                continue;
            }
            let crc = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            let n = u16::from_le_bytes(bytes[at + 4..at + 6].try_into().unwrap()) as usize;
            let kind = bytes[at + 6];
            let data = &bytes[at + 7..at + 7 + n];
            assert!(at % BLOCK + FRAGMENT_HEADER + n <= BLOCK, "fragment crosses a block");
            let mut h = crc32fast::Hasher::new();
            h.update(&[kind]);
            h.update(data);
            assert_eq!(crc, h.finalize());
            current.extend_from_slice(data);
            if kind == 1 || kind == 4 {
                records.push(std::mem::take(&mut current));
            }
            at += 7 + n;
        }
        assert_eq!(records, vec![b"short".to_vec(), record]);
    }

    #[test]
    fn ids_are_wandbs_alphabet() {
        let id = random_id();
        assert_eq!(id.len(), 8);
        assert!(id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }
}

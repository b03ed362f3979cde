//! TensorBoard event files: TFRecord framing (length, masked CRC-32C of the length, the record,
//! masked CRC-32C of the record) around `tensorflow.Event` protobufs (tensorflow/core/util/
//! event.proto, summary.proto, tensor.proto), encoded with prost. The first event names the file
//! version (`brain.Event:2`); then the resolved recipe as a text summary (the text plugin's
//! string tensor) and one event per metrics.jsonl record with a `simple_value` per metric, as
//! `torch.utils.tensorboard.SummaryWriter.add_scalar` writes them. Each event is flushed at once,
//! so TensorBoard shows a run while it trains and a killed run keeps what it logged.

use super::{Point, RunInfo, Status, Tracker};
use crate::plan::tracking::TensorBoardPlan;
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    #[prost(oneof = "ValueKind", tags = "2, 8")]
    pub value: Option<ValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
    #[prost(string, tag = "2")]
    pub display_name: String,
    #[prost(string, tag = "3")]
    pub summary_description: String,
    /// DATA_CLASS_TENSOR = 2.
    #[prost(int32, tag = "4")]
    pub data_class: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// DT_STRING = 7.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// No dimensions: a scalar.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {}

const DT_STRING: i32 = 7;
const DATA_CLASS_TENSOR: i32 = 2;

/// CRC-32C masked as TFRecord does it.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, masked CRC of the length, data, masked CRC of the data.
pub fn tf_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

pub struct TensorBoard {
    dir: PathBuf,
    path: PathBuf,
    file: std::fs::File,
}

impl TensorBoard {
    pub fn start(plan: &TensorBoardPlan, info: &RunInfo) -> Result<TensorBoard, String> {
        let dir = PathBuf::from(&plan.dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let now = super::now();
        // TensorFlow's name: events.out.tfevents.<seconds>.<host>.<pid>.<counter>.
        let name = format!("events.out.tfevents.{:010}.{}.{}.0", now as u64, super::hostname(), std::process::id());
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut tb = TensorBoard { dir, path, file };
        tb.write(&Event { wall_time: now, step: 0, what: Some(What::FileVersion("brain.Event:2".into())) })?;
        let text = SummaryValue {
            tag: "recipe/text_summary".into(),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData { plugin_name: "text".into(), content: Vec::new() }),
                display_name: "recipe".into(),
                summary_description: String::new(),
                data_class: DATA_CLASS_TENSOR,
            }),
            value: Some(ValueKind::Tensor(TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShapeProto {}),
                string_val: vec![info.settings_markdown().into_bytes()],
            })),
        };
        let step = info.resumed_at.unwrap_or(0) as i64;
        tb.write(&Event { wall_time: now, step, what: Some(What::Summary(Summary { value: vec![text] })) })?;
        Ok(tb)
    }

    fn write(&mut self, event: &Event) -> Result<(), String> {
        self.file
            .write_all(&tf_record(&event.encode_to_vec()))
            .and_then(|()| self.file.flush())
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

impl Tracker for TensorBoard {
    fn name(&self) -> &'static str {
        "TensorBoard"
    }

    fn location(&self) -> String {
        format!("{} (tensorboard --logdir {})", self.dir.display(), self.dir.display())
    }

    fn log(&mut self, point: &Point) -> Result<(), String> {
        let value = point
            .metrics
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: tag.clone(),
                metadata: None,
                value: Some(ValueKind::SimpleValue(*v as f32)),
            })
            .collect();
        let event =
            Event { wall_time: point.wall_time, step: point.step as i64, what: Some(What::Summary(Summary { value })) };
        self.write(&event)
    }

    fn finish(&mut self, _: Status, _: &Path) -> Result<(), String> {
        self.file.sync_all().map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masked CRC against TFRecord's definition: `((crc >> 15) | (crc << 17)) + 0xa282ead8`,
    /// with CRC-32C's check value (of "123456789") from its specification (RFC 3720, B.4).
    #[test]
    #[allow(clippy::manual_rotate)] // TFRecord's definition, as written there
    fn masked_crc_is_tfrecords() {
        let crc = crc32c::crc32c(b"123456789");
        assert_eq!(crc, 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8));
        let record = tf_record(b"abc");
        assert_eq!(record.len(), 8 + 4 + 3 + 4);
        assert_eq!(&record[..8], &3u64.to_le_bytes());
        assert_eq!(&record[12..15], b"abc");
    }
}

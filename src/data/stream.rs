//! Axolotl's streamed pretraining data (`pretraining_dataset`, its unpacked path): texts are read
//! from local JSON Lines / text files a line at a time (never a whole file), `skip`ped, taken in
//! chunks of `streaming_multipack_buffer_size` texts (Axolotl's batched `map`), tokenized as
//! transformers' `tokenizer(texts, truncation=True, max_length=sequence_len - 2,
//! add_special_tokens=True)` does, and turned into rows by [`encode_chunk`], a port of Axolotl's
//! `encode_streaming` (src/axolotl/utils/data/streaming.py).
//!
//! Rows are dealt as accelerate deals them (see [`micro_batch_rows`]): one stream read by every
//! rank, step k's global batch its rows [k·G, (k+1)·G), G = micro_batch_size × accumulation × world
//! (`IterableDatasetShard`), or, with at least as many files as processes, one stream per rank
//! over its contiguous group of files (datasets' `IterableDataset.shard`). At the end of its files
//! a stream starts over (skip applied again): Axolotl instead completes the last group of
//! world × micro_batch_size rows with the pass's first rows and lets the Trainer carry a partial
//! accumulation into the next pass, which recipe does not reproduce. Resume re-reads the stream up
//! to its step, as transformers' Trainer skips the batches of an iterable dataset.

use super::{IGNORE, Tokenizer};
use crate::config::datasets::FileFormat;
use crate::plan::data::PretrainingPlan;
use rayon::prelude::*;
use std::collections::VecDeque;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// One row as Axolotl's encoder returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRow {
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    pub attention_mask: Vec<i64>,
}

/// How a stream file is read a line at a time: JSON Lines or plain text; anything else is refused.
pub fn format_of(path: &Path) -> Result<FileFormat, String> {
    match crate::data::sources::format_of(path) {
        Some(f @ (FileFormat::Jsonl | FileFormat::Text)) => Ok(f),
        // A `.json` file streams when it is JSON Lines (an array is read whole; refused then).
        Some(FileFormat::Json) => Ok(FileFormat::Jsonl),
        other => Err(format!(
            "{}: pretraining_dataset streams JSON Lines and text files only (found {})",
            path.display(),
            other.map_or("an unknown extension".to_string(), |f| format!("{f:?}").to_lowercase())
        )),
    }
}

/// transformers' `tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=True)`:
/// BOS (and EOS when the tokenizer adds one) around the text, the text cut so that all fit.
pub fn tokenize(tok: &Tokenizer, text: &str, max_length: usize) -> Result<Vec<i64>, String> {
    let mut content = tok.encode(text)?;
    let bos = tok.bos();
    let eos = tok.eos().filter(|_| tok.adds_eos());
    let specials = usize::from(bos.is_some()) + usize::from(eos.is_some());
    content.truncate(max_length.saturating_sub(specials));
    Ok(bos.into_iter().chain(content).chain(eos).collect())
}

/// Axolotl's `encode_streaming` on one chunk of tokenized texts. Without `concatenate`, each text
/// is a row (labels = ids). With it, each text gains EOS (label EOS) and a pad (label -100,
/// attention 0), and texts fill rows of `max_tokens` in order; a text that does not fit closes the
/// row (padded: pad id, label -100, attention 0) and opens the next; the chunk's last row is padded.
pub fn encode_chunk(texts: Vec<Vec<i64>>, max_tokens: usize, eos: i64, pad: i64, concatenate: bool) -> Vec<StreamRow> {
    if !concatenate {
        return texts
            .into_iter()
            .map(|ids| StreamRow { labels: ids.clone(), attention_mask: vec![1; ids.len()], input_ids: ids })
            .collect();
    }
    let mut rows = Vec::new();
    let mut buf = StreamRow { input_ids: Vec::new(), labels: Vec::new(), attention_mask: Vec::new() };
    let close = |buf: &mut StreamRow, rows: &mut Vec<StreamRow>| {
        let fill = max_tokens.saturating_sub(buf.input_ids.len());
        buf.input_ids.extend(std::iter::repeat_n(pad, fill));
        buf.labels.extend(std::iter::repeat_n(IGNORE, fill));
        buf.attention_mask.extend(std::iter::repeat_n(0, fill));
        rows.push(std::mem::replace(
            buf,
            StreamRow { input_ids: Vec::new(), labels: Vec::new(), attention_mask: Vec::new() },
        ));
    };
    for ids in texts {
        let n = ids.len() + 2;
        // Axolotl: a full buffer is emitted; one the text does not fit into is padded and emitted.
        if buf.input_ids.len() == max_tokens || buf.input_ids.len() + n > max_tokens {
            close(&mut buf, &mut rows);
        }
        buf.labels.extend(&ids);
        buf.labels.extend([eos, IGNORE]);
        buf.attention_mask.extend(std::iter::repeat_n(1, ids.len()));
        buf.attention_mask.extend([1, 0]);
        buf.input_ids.extend(ids);
        buf.input_ids.extend([eos, pad]);
    }
    if !buf.input_ids.is_empty() {
        close(&mut buf, &mut rows);
    }
    rows
}

/// The line boundaries of Python's `str.splitlines` besides `\n` and `\r\n` (which `lines()` takes).
const PY_LINE_BREAKS: &[char] =
    &['\r', '\u{0b}', '\u{0c}', '\u{1c}', '\u{1d}', '\u{1e}', '\u{85}', '\u{2028}', '\u{2029}'];

/// Texts of the stream's files, a line at a time.
struct TextReader {
    files: Vec<PathBuf>,
    text_column: String,
    /// A text file's line split further at Python's other line boundaries.
    pending: VecDeque<String>,
    next_file: usize,
    current: Option<(FileFormat, PathBuf, std::io::Lines<std::io::BufReader<std::fs::File>>, usize)>,
}

impl TextReader {
    fn new(files: Vec<PathBuf>, text_column: String) -> TextReader {
        TextReader { files, text_column, pending: VecDeque::new(), next_file: 0, current: None }
    }

    /// The next text; None at the end of the last file.
    fn next_text(&mut self) -> Result<Option<String>, String> {
        loop {
            if let Some(text) = self.pending.pop_front() {
                return Ok(Some(text));
            }
            if self.current.is_none() {
                let Some(path) = self.files.get(self.next_file).cloned() else { return Ok(None) };
                self.next_file += 1;
                let format = format_of(&path)?;
                let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                self.current = Some((format, path, std::io::BufReader::new(file).lines(), 0));
            }
            let Some((format, path, lines, number)) = &mut self.current else { continue };
            let Some(line) = lines.next() else {
                self.current = None;
                continue;
            };
            *number += 1;
            let line = line.map_err(|e| format!("{}:{number}: {e}", path.display()))?;
            match format {
                // datasets' text builder: every line a text, empty lines too, split as Python's
                // str.splitlines splits (a lone \r, \v, \f, \x1c-\x1e, \x85, U+2028/9 end lines too).
                FileFormat::Text => {
                    self.pending.extend(line.split(PY_LINE_BREAKS).map(str::to_owned));
                    continue;
                }
                _ if line.trim().is_empty() => continue,
                _ => {
                    let row: serde_json::Value = serde_json::from_str(&line)
                        .map_err(|e| format!("{}:{number}: not a JSON object: {e}", path.display()))?;
                    return match row.get(&self.text_column) {
                        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                        Some(other) => Err(format!(
                            "{}:{number}: field `{}` is {}, not text",
                            path.display(),
                            self.text_column,
                            crate::data::formats::kind(other)
                        )),
                        None => {
                            Err(format!("{}:{number}: no field `{}` (text_column)", path.display(), self.text_column))
                        }
                    };
                }
            }
        }
    }
}

/// The rows of a `pretraining_dataset`, produced on demand, restarting at the end of the files.
pub struct PretrainStream<'a> {
    plan: &'a PretrainingPlan,
    /// Which of `plan.shards` this stream reads.
    shard: usize,
    tok: &'a Tokenizer,
    eos: i64,
    pad: i64,
    reader: TextReader,
    queue: VecDeque<StreamRow>,
    /// Rows handed out since the start (all passes).
    pub position: u64,
    /// Passes over the files begun (1 = the first).
    pub passes: u64,
    rows_this_pass: u64,
}

impl<'a> PretrainStream<'a> {
    /// The stream of `plan.shards[shard]`.
    pub fn new(plan: &'a PretrainingPlan, shard: usize, tok: &'a Tokenizer) -> Result<PretrainStream<'a>, String> {
        if shard >= plan.shards.len() {
            return Err(format!("pretraining stream: no shard {shard} of {}", plan.shards.len()));
        }
        let eos = tok.eos().ok_or("pretraining_dataset: the tokenizer has no EOS token")?;
        let mut s = PretrainStream {
            plan,
            shard,
            tok,
            eos,
            pad: tok.pad(),
            reader: TextReader::new(Vec::new(), String::new()),
            queue: VecDeque::new(),
            position: 0,
            passes: 0,
            rows_this_pass: 0,
        };
        s.restart()?;
        Ok(s)
    }

    fn restart(&mut self) -> Result<(), String> {
        if self.passes > 0 && self.rows_this_pass == 0 {
            return Err(format!("pretraining_dataset {}: the stream holds no text", self.plan.source));
        }
        self.reader = TextReader::new(
            self.plan.shards[self.shard].iter().map(PathBuf::from).collect(),
            self.plan.text_column.clone(),
        );
        for _ in 0..self.plan.skip {
            if self.reader.next_text()?.is_none() {
                break;
            }
        }
        self.passes += 1;
        self.rows_this_pass = 0;
        Ok(())
    }

    /// Reads and encodes the next chunk of texts; false at the end of the files.
    fn fill(&mut self) -> Result<bool, String> {
        let mut texts = Vec::new();
        while (texts.len() as u64) < self.plan.chunk_texts {
            match self.reader.next_text()? {
                Some(t) => texts.push(t),
                None => break,
            }
        }
        if texts.is_empty() {
            return Ok(false);
        }
        let max_length = (self.plan.row_tokens as usize).saturating_sub(2);
        let ids: Vec<Vec<i64>> =
            texts.par_iter().map(|t| tokenize(self.tok, t, max_length)).collect::<Result<_, String>>()?;
        let rows = encode_chunk(ids, self.plan.row_tokens as usize, self.eos, self.pad, self.plan.concatenate);
        self.queue.extend(rows);
        Ok(true)
    }

    /// The next row of the stream.
    pub fn next_row(&mut self) -> Result<StreamRow, String> {
        loop {
            if let Some(row) = self.queue.pop_front() {
                self.position += 1;
                self.rows_this_pass += 1;
                return Ok(row);
            }
            if !self.fill()? {
                self.restart()?;
            }
        }
    }

    /// Rows `[from, from + n)` of the stream: read past (a resumed run) up to `from` first.
    pub fn rows_at(&mut self, from: u64, n: usize) -> Result<Vec<StreamRow>, String> {
        if from < self.position {
            return Err(format!("pretraining stream: row {from} asked for after row {}", self.position));
        }
        while self.position < from {
            self.next_row()?;
        }
        (0..n).map(|_| self.next_row()).collect()
    }
}

/// Which stream, and which of its rows, micro-batch `j` of step `step` holds (j = a × world + r:
/// rank r's a-th accumulation micro-batch), for `streams` streams (1, or one per rank).
pub fn micro_batch_rows(step: u64, j: usize, mbs: usize, gas: usize, world: usize, streams: usize) -> (usize, u64) {
    let (a, r) = ((j / world) as u64, j % world);
    if streams == 1 {
        // IterableDatasetShard: rank r takes the r-th mbs rows of each world × mbs rows.
        (0, ((step * gas as u64 + a) * world as u64 + r as u64) * mbs as u64)
    } else {
        (r, (step * gas as u64 + a) * mbs as u64)
    }
}

/// Rows as one micro-batch: right-padded to the longest with the pad id (label -100). Segment ids
/// carry the attention mask when some token inside a row is masked: 1 for attended tokens, -1 for
/// a masked one (hidden from every query, see model/llama.rs), 0 for the batch's padding.
pub fn collate(rows: &[StreamRow], pad_id: i64) -> super::packing::HostBatch {
    let len = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(1).max(1);
    let masked = rows.iter().any(|r| r.attention_mask.contains(&0));
    let trained = |r: &StreamRow| r.labels.iter().skip(1).filter(|&&l| l != IGNORE).count();
    let mut b = super::packing::HostBatch {
        rows: rows.len(),
        len,
        input_ids: Vec::with_capacity(rows.len() * len),
        labels: Vec::with_capacity(rows.len() * len),
        position_ids: Vec::with_capacity(rows.len() * len),
        segment_ids: masked.then(|| Vec::with_capacity(rows.len() * len)),
        trained_tokens: rows.iter().map(trained).sum(),
        real_tokens: rows.iter().map(|r| r.attention_mask.iter().filter(|&&m| m == 1).count()).sum(),
        row_lengths: rows.iter().map(|r| r.input_ids.len()).collect(),
        reference_logps: None,
        pad_id,
        desirable: None,
        kl_rows: None,
    };
    for r in rows {
        let pad = len - r.input_ids.len();
        b.input_ids.extend(&r.input_ids);
        b.input_ids.extend(std::iter::repeat_n(pad_id, pad));
        b.labels.extend(&r.labels);
        b.labels.extend(std::iter::repeat_n(IGNORE, pad));
        // transformers' positions without position_ids: 0..len, whatever the mask.
        b.position_ids.extend(0..len as i64);
        if let Some(seg) = &mut b.segment_ids {
            seg.extend(r.attention_mask.iter().map(|&m| if m == 1 { 1 } else { -1 }));
            seg.extend(std::iter::repeat_n(0, pad));
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenation_closes_a_row_a_text_does_not_fit_and_pads_it() {
        let rows = encode_chunk(vec![vec![1, 5], vec![1, 6, 7], vec![1]], 8, 2, 0, true);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].input_ids, vec![1, 5, 2, 0, 0, 0, 0, 0]);
        assert_eq!(rows[0].labels, vec![1, 5, 2, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE]);
        assert_eq!(rows[0].attention_mask, vec![1, 1, 1, 0, 0, 0, 0, 0]);
        assert_eq!(rows[1].input_ids, vec![1, 6, 7, 2, 0, 1, 2, 0]);
        assert_eq!(rows[1].attention_mask, vec![1, 1, 1, 1, 0, 1, 1, 0]);
    }

    #[test]
    fn text_files_split_lines_as_python_does() {
        let dir = std::env::temp_dir().join(format!("recipe-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.txt");
        std::fs::write(&path, "one\r\ntwo\rthree\u{2028}four\n\nlast").unwrap();
        let mut r = TextReader::new(vec![path], "text".into());
        let mut got = Vec::new();
        while let Some(t) = r.next_text().unwrap() {
            got.push(t);
        }
        assert_eq!(got, ["one", "two", "three", "four", "", "last"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn collate_hides_masked_tokens_and_pads_the_batch() {
        let rows = encode_chunk(vec![vec![1, 5], vec![1, 6, 7]], 6, 2, 0, true);
        let b = collate(&rows, 0);
        assert_eq!(b.segment_ids.as_deref(), Some(&[1, 1, 1, -1, -1, -1, 1, 1, 1, 1, -1, -1][..]));
        assert_eq!(b.position_ids[6..], [0, 1, 2, 3, 4, 5]);
        let plain = collate(&encode_chunk(vec![vec![1, 5], vec![1]], 6, 2, 0, false), 0);
        assert!(plain.segment_ids.is_none());
        assert_eq!(plain.labels, vec![1, 5, 1, IGNORE]);
    }
}

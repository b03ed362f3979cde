//! Samples into rows, rows into batches, and what the training loop samples (`Example`: a row, or a
//! preference pair's two rows). With `sample_packing`, samples are packed into
//! sequence_len rows by first-fit-decreasing; each keeps its own position ids (restarting at 0)
//! and a segment id, from which the model builds a block-diagonal causal mask, and the label of each
//! sample's first token is -100, so no sample learns from its neighbour. Without packing, a row is
//! one sample. Batches are padded on the right with labels -100.

use super::{IGNORE, Sample};

/// One row of a batch, before padding.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    pub position_ids: Vec<i64>,
    /// 1, 2, ... per packed sample.
    pub segment_ids: Vec<i64>,
}

impl Row {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Tokens whose next-token prediction carries a loss.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
    }
}

/// Packs samples into rows of at most `capacity` tokens (first-fit-decreasing). Samples longer
/// than `capacity` must have been split or truncated before.
pub fn pack(samples: &[Sample], capacity: usize) -> Vec<Row> {
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(samples[i].input_ids.len()), i));
    let mut bins: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        let len = samples[i].input_ids.len().min(capacity);
        match bins.iter_mut().find(|(used, _)| used + len <= capacity) {
            Some((used, members)) => {
                *used += len;
                members.push(i);
            }
            None => bins.push((len, vec![i])),
        }
    }
    bins.into_iter().map(|(_, members)| join(members.iter().map(|&i| &samples[i]), capacity)).collect()
}

/// One row per sample.
pub fn unpacked(samples: &[Sample], capacity: usize) -> Vec<Row> {
    samples.iter().map(|s| join(std::iter::once(s), capacity)).collect()
}

fn join<'a>(samples: impl Iterator<Item = &'a Sample>, capacity: usize) -> Row {
    let mut row = Row { input_ids: Vec::new(), labels: Vec::new(), position_ids: Vec::new(), segment_ids: Vec::new() };
    for (seg, s) in samples.enumerate() {
        let n = s.input_ids.len().min(capacity - row.len());
        let start = row.len();
        row.input_ids.extend(&s.input_ids[..n]);
        row.labels.extend(&s.labels[..n]);
        row.labels[start] = IGNORE;
        row.position_ids.extend(0..n as i64);
        row.segment_ids.extend(std::iter::repeat_n(seg as i64 + 1, n));
    }
    row
}

/// Real tokens / slots of the rows once padded to `capacity`.
pub fn efficiency(rows: &[Row], capacity: usize) -> f64 {
    let real: usize = rows.iter().map(Row::len).sum();
    real as f64 / (rows.len() * capacity).max(1) as f64
}

/// What the training loop draws, shuffles and batches: a row of supervised samples, or a
/// preference pair (its chosen and rejected sequences).
pub trait Example: Sync {
    /// Tokens it puts through the model.
    fn tokens(&self) -> usize;
    /// A padded batch of `items` (pairs: every chosen sequence first, then every rejected one).
    fn collate(items: &[&Self], pad_id: i64, pad_to: Option<usize>) -> HostBatch
    where
        Self: Sized;
    /// Appends its token and label ids, for the ranks' comparison of their data.
    fn digest_into(&self, out: &mut Vec<u8>);
}

impl Example for Row {
    fn tokens(&self) -> usize {
        self.len()
    }

    fn collate(items: &[&Self], pad_id: i64, pad_to: Option<usize>) -> HostBatch {
        collate(items, pad_id, pad_to)
    }

    fn digest_into(&self, out: &mut Vec<u8>) {
        for (i, l) in self.input_ids.iter().zip(&self.labels) {
            out.extend_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&l.to_le_bytes());
        }
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
    }
}

/// A preference pair as two rows: prompt + chosen and prompt + rejected, labels only on the answer
/// (each answer with the prompt ids that go before it).
#[derive(Debug, Clone, PartialEq)]
pub struct PairRows {
    pub chosen: Row,
    pub rejected: Row,
    /// The reference model's summed log-probabilities of the chosen and the rejected answer, when
    /// computed once before training (`precompute_ref_log_probs`).
    pub reference_logps: Option<[f32; 2]>,
}

impl PairRows {
    pub fn new(chosen: (&[i64], &[i64]), rejected: (&[i64], &[i64])) -> PairRows {
        let row = |(prompt, answer): (&[i64], &[i64])| {
            let input_ids: Vec<i64> = prompt.iter().chain(answer).copied().collect();
            let labels = std::iter::repeat_n(IGNORE, prompt.len()).chain(answer.iter().copied()).collect();
            let n = input_ids.len();
            Row { input_ids, labels, position_ids: (0..n as i64).collect(), segment_ids: vec![1; n] }
        };
        PairRows { chosen: row(chosen), rejected: row(rejected), reference_logps: None }
    }
}

impl Example for PairRows {
    fn tokens(&self) -> usize {
        self.chosen.len() + self.rejected.len()
    }

    fn collate(items: &[&Self], pad_id: i64, _pad_to: Option<usize>) -> HostBatch {
        let rows: Vec<&Row> = items.iter().map(|p| &p.chosen).chain(items.iter().map(|p| &p.rejected)).collect();
        let mut batch = collate(&rows, pad_id, None);
        let refs: Option<Vec<[f32; 2]>> = items.iter().map(|p| p.reference_logps).collect();
        batch.reference_logps = refs.map(|r| r.iter().map(|x| x[0]).chain(r.iter().map(|x| x[1])).collect());
        batch
    }

    fn digest_into(&self, out: &mut Vec<u8>) {
        self.chosen.digest_into(out);
        self.rejected.digest_into(out);
    }
}

/// KTO's unpaired example: a prompt with one answer, judged desirable or not (a preference pair
/// gives two: its chosen answer desirable, its rejected one not, as TRL unpairs them).
#[derive(Debug, Clone, PartialEq)]
pub struct KtoRow {
    pub prompt: Vec<i64>,
    pub answer: Vec<i64>,
    pub desirable: bool,
}

impl KtoRow {
    fn row(prompt: &[i64], answer: &[i64]) -> Row {
        PairRows::new((prompt, answer), (&[], &[])).chosen
    }
}

impl Example for KtoRow {
    fn tokens(&self) -> usize {
        self.prompt.len() + self.answer.len()
    }

    /// The rows (prompt + answer, labels on the answer) with their desirability, and beside them
    /// the KL rows KTO estimates its reference point from: each prompt with the previous row's
    /// answer (the last answer for the first prompt), as TRL builds them.
    fn collate(items: &[&Self], pad_id: i64, _pad_to: Option<usize>) -> HostBatch {
        let rows: Vec<Row> = items.iter().map(|k| Self::row(&k.prompt, &k.answer)).collect();
        let n = items.len();
        let kl: Vec<Row> = (0..n).map(|i| Self::row(&items[i].prompt, &items[(i + n - 1) % n].answer)).collect();
        let mut batch = collate(&rows.iter().collect::<Vec<_>>(), pad_id, None);
        batch.desirable = Some(items.iter().map(|k| k.desirable).collect());
        batch.kl_rows = Some(Box::new(collate(&kl.iter().collect::<Vec<_>>(), pad_id, None)));
        batch
    }

    fn digest_into(&self, out: &mut Vec<u8>) {
        Self::row(&self.prompt, &self.answer).digest_into(out);
        out.push(u8::from(self.desirable));
    }
}

/// A padded batch on the host, row-major [rows, len].
#[derive(Debug, Clone)]
pub struct HostBatch {
    pub rows: usize,
    pub len: usize,
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    pub position_ids: Vec<i64>,
    /// Present when some row holds more than one sample.
    pub segment_ids: Option<Vec<i64>>,
    pub trained_tokens: usize,
    pub real_tokens: usize,
    /// Each row's length before padding.
    pub row_lengths: Vec<usize>,
    /// Preference pairs with precomputed reference log-probabilities: one per row (every chosen
    /// row's, then every rejected row's).
    pub reference_logps: Option<Vec<f32>>,
    /// The id rows are padded with.
    pub pad_id: i64,
    /// KTO: whether each row's answer is desirable.
    pub desirable: Option<Vec<bool>>,
    /// KTO: the mismatched prompt-answer rows of its KL estimate, scored without gradients.
    pub kl_rows: Option<Box<HostBatch>>,
}

impl HostBatch {
    /// Packed rows as one flat run of samples, for per-sample (varlen) flash attention: the
    /// cumulative sample lengths over the batch's `rows · len` tokens (`cu_seqlens`, int32, from 0
    /// to rows · len: a sample ends where its row or its segment id changes, a row's padding being
    /// one more sample) and the longest sample. Built here, where the batch is, so the device
    /// never reads its segment ids back. None for rows that are not packed.
    pub fn sample_boundaries(&self) -> Option<(Vec<i32>, i64)> {
        let seg = self.segment_ids.as_ref()?;
        // A masked token inside a row (negative id, a pretraining stream's pad between texts) is
        // hidden from the queries after it, which still see the keys before it: that takes the mask.
        if seg.iter().any(|&s| s < 0) {
            return None;
        }
        let mut cu = vec![0i32];
        let mut longest = 0usize;
        for (r, row) in seg.chunks(self.len.max(1)).enumerate() {
            let mut start = 0;
            for t in 1..=row.len() {
                if t == row.len() || row[t] != row[t - 1] {
                    cu.push((r * self.len + t) as i32);
                    longest = longest.max(t - start);
                    start = t;
                }
            }
        }
        Some((cu, longest as i64))
    }
}

/// Pads rows to the longest of them (or to `pad_to`) with `pad_id`, labels -100, segment 0.
pub fn collate(rows: &[&Row], pad_id: i64, pad_to: Option<usize>) -> HostBatch {
    let len = pad_to.unwrap_or_else(|| rows.iter().map(|r| r.len()).max().unwrap_or(1)).max(1);
    let packed = rows.iter().any(|r| r.segment_ids.last().is_some_and(|&s| s > 1));
    let mut b = HostBatch {
        rows: rows.len(),
        len,
        input_ids: Vec::with_capacity(rows.len() * len),
        labels: Vec::with_capacity(rows.len() * len),
        position_ids: Vec::with_capacity(rows.len() * len),
        segment_ids: packed.then(|| Vec::with_capacity(rows.len() * len)),
        trained_tokens: rows.iter().map(|r| r.trained_tokens()).sum(),
        real_tokens: rows.iter().map(|r| r.len()).sum(),
        row_lengths: rows.iter().map(|r| r.len()).collect(),
        reference_logps: None,
        pad_id,
        desirable: None,
        kl_rows: None,
    };
    for r in rows {
        let pad = len - r.len();
        b.input_ids.extend(&r.input_ids);
        b.input_ids.extend(std::iter::repeat_n(pad_id, pad));
        b.labels.extend(&r.labels);
        b.labels.extend(std::iter::repeat_n(IGNORE, pad));
        b.position_ids.extend(&r.position_ids);
        b.position_ids.extend(0..pad as i64);
        if let Some(seg) = &mut b.segment_ids {
            seg.extend(&r.segment_ids);
            seg.extend(std::iter::repeat_n(0, pad));
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, first: i64) -> Sample {
        let ids: Vec<i64> = (0..n as i64).map(|i| first + i).collect();
        Sample { input_ids: ids.clone(), labels: ids }
    }

    #[test]
    fn first_fit_decreasing_fills_rows_and_isolates_samples() {
        let samples = vec![sample(6, 100), sample(3, 200), sample(4, 300), sample(2, 400)];
        let rows = pack(&samples, 8);
        assert_eq!(rows.len(), 2);
        // 6 + 2 in the first row, 4 + 3 in the second.
        assert_eq!(rows[0].input_ids, vec![100, 101, 102, 103, 104, 105, 400, 401]);
        assert_eq!(rows[0].position_ids, vec![0, 1, 2, 3, 4, 5, 0, 1]);
        assert_eq!(rows[0].segment_ids, vec![1, 1, 1, 1, 1, 1, 2, 2]);
        assert_eq!(rows[0].labels[6], IGNORE);
        assert_eq!(rows[1].len(), 7);
        assert!((efficiency(&rows, 8) - 15.0 / 16.0).abs() < 1e-12);
    }

    #[test]
    fn collate_pads_right_with_ignored_labels() {
        let rows = unpacked(&[sample(3, 10), sample(1, 20)], 8);
        let b = collate(&[&rows[0], &rows[1]], 0, None);
        assert_eq!((b.rows, b.len), (2, 3));
        assert_eq!(b.input_ids, vec![10, 11, 12, 20, 0, 0]);
        assert_eq!(b.labels, vec![IGNORE, 11, 12, IGNORE, IGNORE, IGNORE]);
        assert!(b.segment_ids.is_none());
        assert_eq!(b.trained_tokens, 2);
    }

    #[test]
    fn sample_boundaries_follow_rows_segments_and_padding() {
        // Row 0: samples of 3 and 2 tokens, then 3 of padding; row 1: one sample of 8.
        let a = Row {
            input_ids: vec![5; 5],
            labels: vec![5; 5],
            position_ids: vec![0, 1, 2, 0, 1],
            segment_ids: vec![1, 1, 1, 2, 2],
        };
        let b =
            Row { input_ids: vec![6; 8], labels: vec![6; 8], position_ids: (0..8).collect(), segment_ids: vec![1; 8] };
        let batch = collate(&[&a, &b], 0, Some(8));
        assert_eq!(batch.sample_boundaries(), Some((vec![0, 3, 5, 8, 16], 8)));
        // Samples that continue across the row boundary with the same id still end with the row.
        let c = Row {
            input_ids: vec![7; 8],
            labels: vec![7; 8],
            position_ids: (0..8).collect(),
            segment_ids: vec![1, 1, 1, 1, 2, 2, 2, 2],
        };
        let batch = collate(&[&c, &c], 0, None);
        assert_eq!(batch.sample_boundaries(), Some((vec![0, 4, 8, 12, 16], 4)));
        let plain = collate(&[&b], 0, None);
        assert_eq!(plain.sample_boundaries(), None);
        // A masked token inside a row (a pretraining stream's pad, id -1): the queries after it still
        // see the keys before it, so the row keeps its mask instead of per-sample boundaries.
        let mut masked = collate(&[&c], 0, None);
        masked.segment_ids = Some(vec![1, 1, 1, -1, 1, 1, 1, 0]);
        assert_eq!(masked.sample_boundaries(), None);
    }
}

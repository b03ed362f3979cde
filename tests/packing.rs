//! Packing is exact: a packed row (positions restarting per sample, block-diagonal attention, the
//! first label of each sample masked) gives every sample the same loss as running it alone, on
//! the real stories260k model in fp32 (1e-5).
#![cfg(feature = "exec")]

use recipe::data::packing::{collate, pack, unpacked};
use recipe::data::{Sample, Tokenizer};
use recipe::model::llama::{CausalLm, Inputs, LoadOptions, Trainable};
use recipe::model::weights::Checkpoint;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Mean next-token loss of each sample in a collated batch (per row, per segment).
fn per_sample_losses(model: &CausalLm, rows: &[&recipe::data::packing::Row]) -> Vec<f64> {
    let b = collate(rows, 0, None);
    let shape = [b.rows as i64, b.len as i64];
    let t = |v: &[i64]| Tensor::from_slice(v).view(shape);
    let (ids, labels, pos) = (t(&b.input_ids), t(&b.labels), t(&b.position_ids));
    let seg = b.segment_ids.as_deref().map(t);
    let logits = tch::no_grad(|| {
        model.logits(&Inputs { input_ids: &ids, position_ids: &pos, segment_ids: seg.as_ref(), varlen: None })
    });
    let n = b.len as i64;
    let targets = labels.narrow(1, 1, n - 1);
    let losses = logits
        .narrow(1, 0, n - 1)
        .reshape([-1, logits.size()[2]])
        .cross_entropy_loss::<Tensor>(&targets.reshape([-1]), None, tch::Reduction::None, -100, 0.0)
        .view([b.rows as i64, n - 1]);
    let losses: Vec<f64> = Vec::<f64>::try_from(losses.to_kind(Kind::Double).flatten(0, -1)).unwrap();
    let targets: Vec<i64> = Vec::<i64>::try_from(targets.flatten(0, -1)).unwrap();
    let segs: Vec<i64> = b.segment_ids.clone().unwrap_or_else(|| vec![1; b.rows * b.len]);
    let mut out = Vec::new();
    for r in 0..b.rows {
        let mut sums: std::collections::BTreeMap<i64, (f64, usize)> = Default::default();
        for j in 0..(b.len - 1) {
            let k = r * (b.len - 1) + j;
            if targets[k] != -100 {
                let e = sums.entry(segs[r * b.len + j + 1]).or_default();
                e.0 += losses[k];
                e.1 += 1;
            }
        }
        out.extend(sums.values().map(|(s, c)| s / *c as f64));
    }
    out
}

#[test]
fn packed_rows_give_each_sample_its_own_loss() {
    let dir = root().join("models/stories260k");
    let arch = recipe::plan::model::local_architecture(&dir).unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: Kind::Float,
        trainable: Trainable::Nothing,
        quantize: None,
        score_head: false,
    };
    let model = CausalLm::load(&arch, &Checkpoint::open(&dir).unwrap(), &opts).unwrap();
    let tok = Tokenizer::load(&dir).unwrap();
    let text = std::fs::read_to_string(root().join("data/shakespeare/tinyshakespeare-excerpt.txt")).unwrap();
    let ids = tok.encode(&text[..4000]).unwrap();
    // Samples of different lengths, each starting with BOS; the middle one masks its first half.
    let mut samples = Vec::new();
    let mut at = 0;
    for (len, masked) in [(57usize, 0usize), (120, 60), (33, 0), (90, 0)] {
        let mut input_ids = vec![1];
        input_ids.extend(&ids[at..at + len]);
        let mut labels = input_ids.clone();
        labels[..masked].fill(-100);
        samples.push(Sample { input_ids, labels });
        at += len;
    }
    let packed = pack(&samples, 256);
    assert!(packed.len() < samples.len(), "samples should share rows");
    // Packed order is first-fit-decreasing; map the packed losses back by content.
    let packed_losses = per_sample_losses(&model, &packed.iter().collect::<Vec<_>>());
    let alone = unpacked(&samples, 256);
    let mut separate = Vec::new();
    for r in &alone {
        separate.extend(per_sample_losses(&model, &[r]));
    }
    let mut a = packed_losses.clone();
    let mut b = separate.clone();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    assert_eq!(a.len(), samples.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "packed {x} vs alone {y} ({packed_losses:?} vs {separate:?})");
    }
}

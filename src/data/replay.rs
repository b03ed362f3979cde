//! The replay buffer's batch composition (`replay_datasets`, `replay_ratio`; plan/forgetting.rs
//! resolves the counts): which rows make up one optimizer step's global batch.
//!
//! A step takes its new rows from the epoch's shuffled order, as without replay, and R replay
//! rows from an endless stream over the replay set: each pass over it in its own order (shuffled
//! with the seed and the pass number), so rows are reused cyclically when the replay set is
//! smaller than the training data, and every replay row is used once before any is used twice.
//! The replay rows sit at evenly spaced places of the global batch, so micro-batches (and ranks)
//! share them alike. Everything is a pure function of (seed, step): a resumed run repeats it.

use rand::SeedableRng;
use rand::seq::SliceRandom;

/// One row of a step's global batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// An index into the training rows.
    Train(usize),
    /// An index into the replay rows.
    Replay(usize),
}

/// The global batch of optimizer step `step`: the step's new rows `new` (indices into the
/// training rows) with `per_step` replay rows of `replay_len` mixed in.
pub fn step_picks(new: &[usize], step: u64, replay_len: usize, per_step: usize, seed: u64) -> Vec<Pick> {
    if replay_len == 0 || per_step == 0 {
        return new.iter().map(|&i| Pick::Train(i)).collect();
    }
    let first = step as usize * per_step;
    let mut pass = usize::MAX;
    let mut order: Vec<usize> = Vec::new();
    let mut replay = Vec::with_capacity(per_step);
    for p in first..first + per_step {
        if p / replay_len != pass {
            pass = p / replay_len;
            order = (0..replay_len).collect();
            let mut rng =
                rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (pass as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
            order.shuffle(&mut rng);
        }
        replay.push(order[p % replay_len]);
    }
    let total = new.len() + per_step;
    // Replay row j at place ⌊(j + ½) · total / R⌋: evenly spaced through the batch.
    let places: Vec<usize> = (0..per_step).map(|j| ((2 * j + 1) * total) / (2 * per_step)).collect();
    let (mut next_new, mut next_replay) = (new.iter(), replay.into_iter());
    (0..total)
        .map(|i| {
            if places.contains(&i) {
                Pick::Replay(next_replay.next().unwrap_or_default())
            } else {
                Pick::Train(next_new.next().copied().unwrap_or_default())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replayed(picks: &[Pick]) -> Vec<usize> {
        picks.iter().filter_map(|p| if let Pick::Replay(i) = p { Some(*i) } else { None }).collect()
    }

    #[test]
    fn every_step_holds_the_ratio_of_replay_rows_evenly_spaced_and_new_rows_in_order() {
        // Global batch 8 at replay_ratio 0.25: 6 new + 2 replay rows.
        let new: Vec<usize> = (10..16).collect();
        for step in 0..20 {
            let picks = step_picks(&new, step, 5, 2, 42);
            assert_eq!(picks.len(), 8);
            assert_eq!(replayed(&picks).len(), 2, "share 2/8 = 0.25");
            // One replay row in each half: micro-batches of 4 get one each.
            assert!(matches!(picks[2], Pick::Replay(_)) && matches!(picks[6], Pick::Replay(_)), "{picks:?}");
            let trained: Vec<usize> =
                picks.iter().filter_map(|p| if let Pick::Train(i) = p { Some(*i) } else { None }).collect();
            assert_eq!(trained, new);
        }
    }

    #[test]
    fn replay_rows_cycle_through_the_whole_set_before_repeating_and_repeat_with_the_seed() {
        let stream =
            |seed| -> Vec<usize> { (0..6).flat_map(|s| replayed(&step_picks(&[0, 1], s, 4, 2, seed))).collect() };
        let a = stream(7);
        assert_eq!(a, stream(7), "deterministic");
        assert_ne!(a, stream(8), "the seed orders it");
        for pass in a.chunks(4) {
            let mut p = pass.to_vec();
            p.sort_unstable();
            assert_eq!(p, vec![0, 1, 2, 3], "each pass uses every replay row once");
        }
    }

    #[test]
    fn without_replay_the_batch_is_the_new_rows() {
        assert_eq!(step_picks(&[3, 4], 0, 0, 0, 1), vec![Pick::Train(3), Pick::Train(4)]);
    }
}

//! The one door from the device to the host in training: every read of a tensor's values by the
//! host (`.item()`-like scalars, copies to the CPU, `is_nonzero`-like flags) in the loop, the
//! objectives, the optimizer, the loss scaler and the communicator goes through these functions,
//! which count them. On CUDA each such read waits for every kernel queued before it (a host-device
//! sync, the stall the design rules out inside a step); on the CPU it costs nothing but is counted
//! the same, so the count tests here what a GPU run will do.
//!
//! The loop reads the counter around each optimizer step and the run summary prints the highest
//! count per step of each kind (`host syncs   0 per non-logging step, 1 per logging step`).

use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Device, Kind, Tensor};

static READS: AtomicU64 = AtomicU64::new(0);

/// Device-to-host reads so far in this process.
pub fn count() -> u64 {
    READS.load(Ordering::Relaxed)
}

fn counted<T>(read: impl FnOnce() -> T) -> T {
    READS.fetch_add(1, Ordering::Relaxed);
    read()
}

/// Every value of `t` as f64, in one read; `what` names it in an error.
pub fn read_f64(t: &Tensor, what: &str) -> Result<Vec<f64>, String> {
    counted(|| {
        let host = t.detach().to_device(Device::Cpu).to_kind(Kind::Double).reshape([-1]);
        Vec::<f64>::try_from(host).map_err(|e| format!("reading {what} from the device: {e}"))
    })
}

/// Every value of `t` as i64, in one read.
pub fn read_i64(t: &Tensor, what: &str) -> Result<Vec<i64>, String> {
    counted(|| {
        let host = t.detach().to_device(Device::Cpu).to_kind(Kind::Int64).reshape([-1]);
        Vec::<i64>::try_from(host).map_err(|e| format!("reading {what} from the device: {e}"))
    })
}

/// Whether a one-element tensor is non-zero (`is_nonzero`), in one read.
pub fn read_flag(t: &Tensor, what: &str) -> Result<bool, String> {
    Ok(read_f64(t, what)?.first().is_some_and(|v| *v != 0.0))
}

/// The highest number of reads seen in one optimizer step, per kind of step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepSyncs {
    /// Steps that log, evaluate or save nothing.
    pub plain: Option<u64>,
    /// Steps that log (read the pending losses), without evaluating or saving.
    pub logging: Option<u64>,
    /// Steps that evaluate or save a checkpoint too.
    pub evaluating_or_saving: Option<u64>,
}

impl StepSyncs {
    pub fn record(&mut self, reads: u64, logged: bool, evaluated_or_saved: bool) {
        let slot = if evaluated_or_saved {
            &mut self.evaluating_or_saving
        } else if logged {
            &mut self.logging
        } else {
            &mut self.plain
        };
        *slot = Some(slot.map_or(reads, |r| r.max(reads)));
    }

    /// The run summary's words: `0 per non-logging step, 1 per logging step`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.plain {
            parts.push(format!("{n} per non-logging step"));
        }
        if let Some(n) = self.logging {
            parts.push(format!("{n} per logging step"));
        }
        if let Some(n) = self.evaluating_or_saving {
            parts.push(format!("up to {n} in a step that evaluates or saves"));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_is_counted() {
        let t = Tensor::from_slice(&[1.5f32, 0.0]);
        let before = count();
        assert_eq!(read_f64(&t, "t").unwrap(), [1.5, 0.0]);
        assert!(read_flag(&t.get(0), "flag").unwrap());
        assert!(!read_flag(&t.get(1), "flag").unwrap());
        assert_eq!(read_i64(&Tensor::from_slice(&[3i64]), "n").unwrap(), [3]);
        // Other tests may read meanwhile (threads): at least these four.
        assert!(count() - before >= 4);
    }

    #[test]
    fn steps_are_summarised_by_kind() {
        let mut s = StepSyncs::default();
        s.record(0, false, false);
        s.record(1, true, false);
        s.record(0, false, false);
        assert_eq!(s.describe(), "0 per non-logging step, 1 per logging step");
        s.record(3, true, true);
        assert_eq!(
            s.describe(),
            "0 per non-logging step, 1 per logging step, up to 3 in a step that evaluates or saves"
        );
    }
}

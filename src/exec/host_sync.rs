//! The one door from the device to the host in training: every read of a tensor's values by the
//! host (`.item()`-like scalars, copies to the CPU, `is_nonzero`-like flags) in the loop, the
//! objectives, the optimizer, the loss scaler and the communicator goes through these functions,
//! which count them. On CUDA each such read waits for every kernel queued before it (a host-device
//! sync, the stall the design rules out inside a step); on the CPU it costs nothing but is counted
//! the same, so the count tests here what a GPU run will do.
//!
//! Writing a file copies each tensor to the host: model/weights.rs writes every safetensors file
//! through `to_host_for_writing`, so a checkpoint's tensors count too (one read each).
//!
//! The loop reads the counter around each optimizer step and the run summary prints the highest
//! count per step of each kind (`host syncs   0 per non-logging step, 1 per logging step`, and
//! in a step that saves, how many of its reads were the checkpoint's tensors).

use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Device, Kind, Tensor};

static READS: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's reads: what a test counts while other tests read on their own threads.
    static READS_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Device-to-host reads so far in this process.
pub fn count() -> u64 {
    READS.load(Ordering::Relaxed)
}

/// Device-to-host reads so far on this thread.
pub fn count_on_this_thread() -> u64 {
    READS_HERE.with(|n| n.get())
}

fn counted<T>(read: impl FnOnce() -> T) -> T {
    READS.fetch_add(1, Ordering::Relaxed);
    READS_HERE.with(|n| n.set(n.get() + 1));
    read()
}

/// Tensors copied to the host to be written to a file so far (each also a read).
pub fn written() -> u64 {
    WRITTEN.load(Ordering::Relaxed)
}

/// `t` as a contiguous CPU tensor, to be written to a file (a checkpoint's or an output's
/// tensor; model/weights.rs writes every safetensors file through this): one read.
pub fn to_host_for_writing(t: &Tensor) -> Tensor {
    WRITTEN.fetch_add(1, Ordering::Relaxed);
    counted(|| t.to_device(Device::Cpu).contiguous())
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
    /// Steps that evaluate (and may log), without saving.
    pub evaluating: Option<u64>,
    /// Steps that save a checkpoint (and may evaluate or log): the reads, and of them the tensors
    /// written, in the step with the most reads.
    pub saving: Option<(u64, u64)>,
}

/// What one step did besides training, for [`StepSyncs::record`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StepKind {
    pub logged: bool,
    pub evaluated: bool,
    pub saved: bool,
}

impl StepSyncs {
    /// `reads` in a step of `kind`, `written` of them tensors written to a checkpoint.
    pub fn record(&mut self, reads: u64, written: u64, kind: StepKind) {
        let most = |slot: &mut Option<u64>| *slot = Some(slot.map_or(reads, |r| r.max(reads)));
        if kind.saved {
            if self.saving.is_none_or(|(r, _)| reads > r) {
                self.saving = Some((reads, written));
            }
        } else if kind.evaluated {
            most(&mut self.evaluating);
        } else if kind.logged {
            most(&mut self.logging);
        } else {
            most(&mut self.plain);
        }
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
        if let Some(n) = self.evaluating {
            parts.push(format!("up to {n} in a step that evaluates"));
        }
        if let Some((n, written)) = self.saving {
            parts.push(format!("up to {n} in a step that saves ({written} of them tensors written to the checkpoint)"));
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
        let here = count_on_this_thread();
        read_f64(&t, "t").unwrap();
        assert_eq!(count_on_this_thread(), here + 1);
    }

    #[test]
    fn steps_are_summarised_by_kind() {
        let mut s = StepSyncs::default();
        let logged = StepKind { logged: true, ..Default::default() };
        s.record(0, 0, StepKind::default());
        s.record(1, 0, logged);
        s.record(0, 0, StepKind::default());
        assert_eq!(s.describe(), "0 per non-logging step, 1 per logging step");
        s.record(2, 0, StepKind { evaluated: true, ..logged });
        s.record(25, 23, StepKind { saved: true, ..logged });
        s.record(24, 23, StepKind { saved: true, ..Default::default() });
        assert_eq!(
            s.describe(),
            "0 per non-logging step, 1 per logging step, up to 2 in a step that evaluates, up to 25 in a step that \
             saves (23 of them tensors written to the checkpoint)"
        );
    }
}

//! Host memory in use by the allocator's own accounting: glibc's `mallinfo2` (bytes malloc has
//! handed out, from its heaps and as separate mappings; libtorch's CPU tensors come from there).
//! Unlike the resident set, it does not count freed memory the allocator keeps, library code or
//! memory-mapped files. The training step samples it where memory peaks (after each forward,
//! after each layer's recomputation, after each backward, after the optimizer step), and the
//! CPU run compares the highest sample with the plan's CPU estimate.

use std::sync::atomic::{AtomicU64, Ordering};

static PEAK: AtomicU64 = AtomicU64::new(0);

/// Bytes the allocator has handed out and not yet got back; None where it cannot say.
pub fn in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct (glibc ≥ 2.33).
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Records the current use if it is the highest seen since `reset`.
pub fn sample() {
    if let Some(bytes) = in_use() {
        PEAK.fetch_max(bytes, Ordering::Relaxed);
    }
}

/// Starts a new peak from the current use.
pub fn reset() {
    PEAK.store(in_use().unwrap_or(0), Ordering::Relaxed);
}

/// The highest sample since `reset`.
pub fn peak() -> u64 {
    PEAK.load(Ordering::Relaxed)
}

//! Host memory in use by the allocator's own accounting: glibc's `mallinfo2` (bytes malloc has
//! handed out, from its heaps and as separate mappings; libtorch's CPU tensors come from there).
//! Unlike the resident set, it does not count freed memory the allocator keeps, library code or
//! memory-mapped files. The training step samples it where memory peaks (after each forward,
//! after each layer's recomputation, after each backward, after the optimizer step) in the steps
//! that can set a new peak (exec/train.rs: a walk of the allocator costs milliseconds), and the
//! CPU run compares the highest sample with the plan's CPU estimate.

use std::sync::atomic::{AtomicU64, Ordering};

static PEAK: AtomicU64 = AtomicU64::new(0);

/// Bytes the allocator has handed out and not yet got back; None where it cannot say.
/// `mallinfo2` is looked up at run time (glibc 2.33+), so the binary still loads on older glibc,
/// where this says None.
pub fn in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        type Mallinfo2 = unsafe extern "C" fn() -> libc::mallinfo2;
        static MALLINFO2: std::sync::OnceLock<Option<Mallinfo2>> = std::sync::OnceLock::new();
        let f = (*MALLINFO2.get_or_init(|| {
            // SAFETY: dlsym over the process's global scope; glibc's mallinfo2 has this signature.
            let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mallinfo2".as_ptr()) };
            (!symbol.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, Mallinfo2>(symbol) })
        }))?;
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct.
        let info = unsafe { f() };
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

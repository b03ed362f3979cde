//! PyTorch's c10d from Rust: a process group over a TCPStore rendezvous, Gloo for CPU tensors and
//! NCCL for CUDA tensors, through the C++ shim in `c10d.cpp` (compiled by build.rs). Every call
//! returns the C++ exception's message as an error instead of aborting.
//!
//! Collectives are blocking from the caller's point of view: on Gloo the call returns when the
//! result is in the tensor; on NCCL the current CUDA stream waits for it (no host sync), as
//! `work.wait()` does in PyTorch.

use std::ffi::{CStr, CString, c_char, c_int, c_longlong};
use tch::Tensor;

/// tch's `C_tensor` (an `at::Tensor*` on the C++ side), opaque here.
#[allow(non_camel_case_types)]
type C_tensor = std::ffi::c_void;

#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}

unsafe extern "C-unwind" {
    #[allow(clippy::too_many_arguments)]
    fn recipe_c10d_new(
        backend: c_int,
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world_size: c_int,
        store_server: c_int,
        wait_workers: c_int,
        prefix: *const c_char,
        timeout_ms: c_longlong,
        gloo_interface: *const c_char,
        gloo_hostname: *const c_char,
        cuda_device: c_int,
        err: *mut *mut c_char,
    ) -> *mut RawGroup;
    fn recipe_c10d_free(group: *mut RawGroup);
    fn recipe_c10d_free_message(message: *mut c_char);
    fn recipe_c10d_all_reduce(group: *mut RawGroup, tensor: *mut C_tensor, op: c_int, err: *mut *mut c_char) -> c_int;
    fn recipe_c10d_broadcast(group: *mut RawGroup, tensor: *mut C_tensor, root: c_int, err: *mut *mut c_char) -> c_int;
    fn recipe_c10d_all_gather(
        group: *mut RawGroup,
        output: *mut C_tensor,
        input: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> c_int;
    fn recipe_c10d_reduce_scatter(
        group: *mut RawGroup,
        output: *mut C_tensor,
        input: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> c_int;
    fn recipe_c10d_barrier(group: *mut RawGroup, err: *mut *mut c_char) -> c_int;
}

/// Which c10d backend carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors.
    Gloo,
    /// CUDA tensors.
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

/// Where and how to meet the other ranks.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    pub backend: Backend,
    pub master_addr: String,
    pub master_port: u16,
    pub rank: usize,
    pub world_size: usize,
    /// This process hosts the TCPStore (rank 0, unless a launcher's agent hosts it).
    pub store_server: bool,
    /// Count in at the store and wait until every rank has (not with a launcher's agent store,
    /// which outlives restarts).
    pub wait_workers: bool,
    /// Key namespace in the store (torchrun's agent store outlives restarts).
    pub prefix: String,
    /// Bounds the rendezvous and every collective.
    pub timeout: std::time::Duration,
    /// Gloo: bind to this network interface (GLOO_SOCKET_IFNAME).
    pub gloo_interface: Option<String>,
    /// NCCL: this rank's GPU.
    pub cuda_device: usize,
}

/// One process group; dropped, it leaves the group.
pub struct ProcessGroup {
    raw: *mut RawGroup,
    pub rank: usize,
    pub world_size: usize,
    pub backend: Backend,
}

// SAFETY: c10d process groups are used from one thread at a time here; the C++ object is
// thread-safe for that (PyTorch hands them between threads freely).
unsafe impl Send for ProcessGroup {}

fn cstring(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("`{text}` contains a NUL byte"))
}

/// Turns a shim's (status, message) into a Result, freeing the message (both C++ shims, this one
/// and torch_ops.cpp, allocate it with malloc); keeps the first line of a C++ exception's text.
pub(crate) fn check(ok: c_int, err: *mut c_char, what: &str) -> Result<(), String> {
    if ok != 0 {
        return Ok(());
    }
    let message = if err.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: the shim wrote a NUL-terminated malloc'd string, freed right after.
        let text = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { recipe_c10d_free_message(err) };
        text
    };
    let first = message.lines().next().unwrap_or_default().trim().to_string();
    Err(format!("{what}: {first}"))
}

impl ProcessGroup {
    /// Joins the group: waits (up to the timeout) for every rank at the store, then builds the
    /// backend.
    pub fn join(r: &Rendezvous) -> Result<ProcessGroup, String> {
        let host = cstring(&r.master_addr)?;
        let prefix = cstring(&r.prefix)?;
        let interface = cstring(r.gloo_interface.as_deref().unwrap_or(""))?;
        // Local rendezvous: bind Gloo to the loopback address the store uses, instead of whatever
        // this machine's hostname resolves to.
        let loopback = matches!(r.master_addr.as_str(), "127.0.0.1" | "localhost" | "::1");
        let hostname = cstring(if loopback { "127.0.0.1" } else { "" })?;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; err receives a message or stays null.
        let raw = unsafe {
            recipe_c10d_new(
                match r.backend {
                    Backend::Gloo => 0,
                    Backend::Nccl => 1,
                },
                host.as_ptr(),
                c_int::from(r.master_port),
                r.rank as c_int,
                r.world_size as c_int,
                c_int::from(r.store_server),
                c_int::from(r.wait_workers),
                prefix.as_ptr(),
                r.timeout.as_millis().min(i64::MAX as u128) as c_longlong,
                interface.as_ptr(),
                hostname.as_ptr(),
                r.cuda_device as c_int,
                &mut err,
            )
        };
        if raw.is_null() {
            check(
                0,
                err,
                &format!("joining the {} process group at {}:{}", r.backend.name(), r.master_addr, r.master_port),
            )?;
        }
        Ok(ProcessGroup { raw, rank: r.rank, world_size: r.world_size, backend: r.backend })
    }

    /// In place over the ranks.
    pub fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), String> {
        let mut err = std::ptr::null_mut();
        let op = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        // SAFETY: the tensor pointer is valid for the call.
        let ok = unsafe { recipe_c10d_all_reduce(self.raw, tensor.as_mut_ptr().cast(), op, &mut err) };
        check(ok, err, "all_reduce")
    }

    /// In place: every rank's tensor becomes `root`'s.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), String> {
        let mut err = std::ptr::null_mut();
        // SAFETY: as above.
        let ok = unsafe { recipe_c10d_broadcast(self.raw, tensor.as_mut_ptr().cast(), root as c_int, &mut err) };
        check(ok, err, "broadcast")
    }

    /// Every rank's `input` concatenated in rank order (flat, contiguous).
    pub fn all_gather(&self, input: &Tensor) -> Result<Tensor, String> {
        let mut input = input.contiguous().flatten(0, -1);
        let n = input.size()[0];
        let mut output = Tensor::empty([n * self.world_size as i64], (input.kind(), input.device()));
        let mut err = std::ptr::null_mut();
        // SAFETY: as above.
        let ok = unsafe {
            recipe_c10d_all_gather(self.raw, output.as_mut_ptr().cast(), input.as_mut_ptr().cast(), &mut err)
        };
        check(ok, err, "all_gather")?;
        Ok(output)
    }

    /// This rank's slice of the elementwise sum of every rank's `input` (flat; its length a
    /// multiple of the world size).
    pub fn reduce_scatter(&self, input: &Tensor) -> Result<Tensor, String> {
        let mut input = input.contiguous().flatten(0, -1);
        let n = input.size()[0];
        let world = self.world_size as i64;
        if n % world != 0 {
            return Err(format!("reduce_scatter: {n} elements do not split into {world} equal shards"));
        }
        let mut output = Tensor::empty([n / world], (input.kind(), input.device()));
        let mut err = std::ptr::null_mut();
        // SAFETY: as above.
        let ok = unsafe {
            recipe_c10d_reduce_scatter(self.raw, output.as_mut_ptr().cast(), input.as_mut_ptr().cast(), &mut err)
        };
        check(ok, err, "reduce_scatter")?;
        Ok(output)
    }

    pub fn barrier(&self) -> Result<(), String> {
        let mut err = std::ptr::null_mut();
        // SAFETY: as above.
        let ok = unsafe { recipe_c10d_barrier(self.raw, &mut err) };
        check(ok, err, "barrier")
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: raw came from recipe_c10d_new and is freed once.
        unsafe { recipe_c10d_free(self.raw) }
    }
}

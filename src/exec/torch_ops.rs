//! libtorch operations tch does not bind, through the C++ shim in `torch_ops.cpp` (compiled by
//! build.rs beside the c10d shim): a backward pass seeded with a given gradient, which the
//! chunked loss uses to send each chunk's logit gradient into the head without another copy of
//! the logits; `pin_memory()` in the form libtorch 2.11 keeps (tch passes the deprecated device
//! argument, a warning per call); host-to-device copies on a CUDA side stream (an event makes the
//! compute stream wait); libtorch's fused AdamW kernel (`_fused_adamw_`); and flash
//! attention's varlen form for packed rows (`_flash_attention_forward` with cumulative sequence
//! lengths, which tch binds only the backward of). Errors are the C++ exception's message.

use super::c10d::check;
use std::ffi::{c_char, c_int};
use tch::Tensor;

unsafe extern "C-unwind" {
    fn recipe_backward_with_grad(
        output: *const std::ffi::c_void,
        grad: *const std::ffi::c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn recipe_set_grad(tensor: *const std::ffi::c_void, grad: *const std::ffi::c_void, err: *mut *mut c_char) -> c_int;
    fn recipe_pin_memory(src: *const std::ffi::c_void, err: *mut *mut c_char) -> *mut std::ffi::c_void;
    fn recipe_copy_stream_new(device: c_int, err: *mut *mut c_char) -> *mut std::ffi::c_void;
    fn recipe_copy_stream_free(stream: *mut std::ffi::c_void);
    fn recipe_copy_on_stream(
        stream: *mut std::ffi::c_void,
        src: *const std::ffi::c_void,
        err: *mut *mut c_char,
    ) -> *mut std::ffi::c_void;
    fn recipe_flash_attention_varlen(
        q: *const std::ffi::c_void,
        k: *const std::ffi::c_void,
        v: *const std::ffi::c_void,
        cu_seqlens: *const std::ffi::c_void,
        max_seqlen: i64,
        err: *mut *mut c_char,
    ) -> *mut std::ffi::c_void;
    #[allow(clippy::too_many_arguments)]
    fn recipe_fused_adamw(
        params: *const *const std::ffi::c_void,
        grads: *const *const std::ffi::c_void,
        exp_avgs: *const *const std::ffi::c_void,
        exp_avg_sqs: *const *const std::ffi::c_void,
        n: c_int,
        step: *const std::ffi::c_void,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        found_inf: *const std::ffi::c_void,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// The backward pass from `output` seeded with `grad` (its shape): `output.backward(grad)`.
pub fn backward_with_grad(output: &Tensor, grad: &Tensor) -> Result<(), String> {
    let mut err = std::ptr::null_mut();
    // SAFETY: both pointers are live tensors for the call; the shim only reads them.
    let ok = unsafe { recipe_backward_with_grad(output.as_ptr().cast(), grad.as_ptr().cast(), &mut err) };
    check(ok, err, "backward pass")
}

/// Sets `t.grad` to `grad`, or to nothing (`t.grad = None`, freeing it).
pub fn set_grad(t: &Tensor, grad: Option<&Tensor>) -> Result<(), String> {
    let mut err = std::ptr::null_mut();
    let grad = grad.map_or(std::ptr::null(), |g| g.as_ptr().cast());
    // SAFETY: both pointers are live tensors (or null) for the call; the shim copies the handle.
    let ok = unsafe { recipe_set_grad(t.as_ptr().cast(), grad, &mut err) };
    check(ok, err, "setting a gradient")
}

/// A page-locked copy of the CPU tensor `t` (`t.pin_memory()`), from which a copy to the GPU runs
/// asynchronously.
pub fn pin_memory(t: &Tensor) -> Result<Tensor, String> {
    let mut err = std::ptr::null_mut();
    // SAFETY: `t` is live for the call; the shim returns a new heap `at::Tensor` (or null), whose
    // ownership passes to the returned Tensor.
    let out = unsafe { recipe_pin_memory(t.as_ptr().cast(), &mut err) };
    if out.is_null() {
        return Err(check(0, err, "pin_memory").err().unwrap_or_else(|| "pin_memory: no tensor".into()));
    }
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// Causal flash attention over packed samples (`torch.ops.aten._flash_attention_forward` with
/// cumulative sequence lengths): q [tokens, heads, d], k and v [tokens, kv heads, d], samples cut
/// at `cu_seqlens` (int32 [n + 1], on the device), `max_seqlen` at least the longest. The output
/// [tokens, heads, d] has a graph (its backward is libtorch's). CUDA only.
pub fn flash_attention_varlen(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    max_seqlen: i64,
) -> Result<Tensor, String> {
    let mut err = std::ptr::null_mut();
    let cu = cu_seqlens.to_kind(tch::Kind::Int);
    // SAFETY: every tensor is live for the call; the shim returns a new heap `at::Tensor` (or
    // null), whose ownership passes to the returned Tensor.
    let out = unsafe {
        recipe_flash_attention_varlen(
            q.as_ptr().cast(),
            k.as_ptr().cast(),
            v.as_ptr().cast(),
            cu.as_ptr().cast(),
            max_seqlen,
            &mut err,
        )
    };
    if out.is_null() {
        return Err(check(0, err, "flash attention (varlen)").err().unwrap_or_else(|| "no tensor".into()));
    }
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// A CUDA side stream for batch uploads (one per device, for the process's life): a copy on it
/// overlaps the kernels the compute stream still runs.
struct CopyStream(*mut std::ffi::c_void);

// SAFETY: a CUDA stream handle may be used from any thread; the map below serialises access.
unsafe impl Send for CopyStream {}

impl Drop for CopyStream {
    fn drop(&mut self) {
        // SAFETY: made by recipe_copy_stream_new, freed once.
        unsafe { recipe_copy_stream_free(self.0) }
    }
}

static COPY_STREAMS: std::sync::Mutex<Vec<(usize, CopyStream)>> = std::sync::Mutex::new(Vec::new());

/// Copies the pinned CPU tensor `pinned` to CUDA device `ordinal` on the device's side stream; the
/// compute stream waits for the copy (an event, on the device) before its later kernels. Double
/// buffering: the loop uploads step N+1's micro-batches while the GPU still computes step N (a
/// step reads nothing back), so the copies overlap that compute instead of queueing behind it.
pub fn copy_on_side_stream(pinned: &Tensor, ordinal: usize) -> Result<Tensor, String> {
    let mut streams = COPY_STREAMS.lock().map_err(|_| "the copy streams' lock is poisoned".to_string())?;
    if !streams.iter().any(|(d, _)| *d == ordinal) {
        let mut err = std::ptr::null_mut();
        // SAFETY: plain arguments; a null result comes with *err set.
        let stream = unsafe { recipe_copy_stream_new(ordinal as c_int, &mut err) };
        if stream.is_null() {
            return Err(check(0, err, "a copy stream").err().unwrap_or_else(|| "no stream".into()));
        }
        streams.push((ordinal, CopyStream(stream)));
    }
    let stream = streams.iter().find(|(d, _)| *d == ordinal).map(|(_, s)| s.0).expect("made above");
    let mut err = std::ptr::null_mut();
    // SAFETY: the stream lives in the map (locked); `pinned` is live for the call; the result is
    // a new heap `at::Tensor` (or null), whose ownership passes to the returned Tensor.
    let out = unsafe { recipe_copy_on_stream(stream, pinned.as_ptr().cast(), &mut err) };
    if out.is_null() {
        return Err(check(0, err, "copy on the side stream").err().unwrap_or_else(|| "no tensor".into()));
    }
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// AdamW's hyperparameters for one fused call (one parameter group).
pub struct AdamwGroup {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// libtorch's fused AdamW over `params` (their gradients and fp32 moments updated in place):
/// `step` is the fp32 step count including this step; a set `found_inf` skips the update.
pub fn fused_adamw(
    params: &[&Tensor],
    grads: &[Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    step: &Tensor,
    group: &AdamwGroup,
    found_inf: Option<&Tensor>,
) -> Result<(), String> {
    let n = params.len();
    assert!(
        grads.len() == n && exp_avgs.len() == n && exp_avg_sqs.len() == n,
        "fused AdamW: one of each per parameter"
    );
    let ptrs =
        |ts: Vec<&Tensor>| -> Vec<*const std::ffi::c_void> { ts.into_iter().map(|t| t.as_ptr().cast()).collect() };
    let (p, g) = (ptrs(params.to_vec()), ptrs(grads.iter().collect()));
    let (m, v) = (ptrs(exp_avgs.to_vec()), ptrs(exp_avg_sqs.to_vec()));
    let inf = found_inf.map_or(std::ptr::null(), |t| t.as_ptr().cast());
    let mut err = std::ptr::null_mut();
    // SAFETY: every pointer is a live tensor for the call; the shim reads the lists and updates the
    // tensors in place.
    let ok = unsafe {
        recipe_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            n as c_int,
            step.as_ptr().cast(),
            group.lr,
            group.beta1,
            group.beta2,
            group.weight_decay,
            group.eps,
            inf,
            &mut err,
        )
    };
    check(ok, err, "fused AdamW")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn a_seeded_backward_pass_gives_the_vector_jacobian_product() {
        let w = Tensor::from_slice(&[0.5f32, -2.0, 3.0]).set_requires_grad(true);
        let x = Tensor::from_slice(&[1.0f32, 2.0, 4.0]);
        let seed = Tensor::from_slice(&[1.0f32, 10.0, 100.0]);
        backward_with_grad(&(&w * &x).exp(), &seed).unwrap();
        let expected = (&w * &x).exp().detach() * &x * &seed;
        assert!(w.grad().allclose(&expected, 1e-6, 0.0, false));
        // A tensor without a graph is an error, not an abort.
        let v = Tensor::from_slice(&[1.0f32]);
        let err = backward_with_grad(&(&v * 2.0), &Tensor::ones([1], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(err.starts_with("backward pass: "), "{err}");
    }

    #[test]
    fn pinned_memory_holds_the_same_values_or_says_why_not() {
        let t = Tensor::from_slice(&[1i64, 2, 3]);
        match pin_memory(&t) {
            // With an accelerator: a pinned copy.
            Ok(pinned) => assert!(pinned.equal(&t)),
            // A CPU-only libtorch has no pinned memory: an error message, no abort.
            Err(e) => assert!(e.starts_with("pin_memory: ") && !tch::Cuda::is_available(), "{e}"),
        }
    }
}

#[cfg(test)]
mod side_stream_tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn a_copy_on_the_side_stream_arrives_before_the_compute_stream_reads_it() {
        if !tch::Cuda::is_available() {
            eprintln!("skipped: the side-stream upload needs a CUDA device");
            return;
        }
        let host = Tensor::arange(1 << 20, (Kind::Int64, Device::Cpu));
        let pinned = pin_memory(&host).unwrap();
        // Queue compute first, so the copy has something to overlap.
        let busy = Tensor::randn([2048, 2048], (Kind::Float, Device::Cuda(0)));
        let _ = (0..8).fold(busy.shallow_clone(), |x, _| x.matmul(&busy).tanh());
        let copy = copy_on_side_stream(&pinned, 0).unwrap();
        // Read on the compute stream (after the event): every value arrived.
        assert!(copy.sum(Kind::Int64).int64_value(&[]) == host.sum(Kind::Int64).int64_value(&[]));
        assert!(copy.to_device(Device::Cpu).equal(&host));
    }
}

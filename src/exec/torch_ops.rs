//! libtorch operations tch does not bind, through the C++ shim in `torch_ops.cpp` (compiled by
//! build.rs beside the c10d shim): a backward pass seeded with a given gradient, which the
//! chunked loss uses to send each chunk's logit gradient into the head without another copy of
//! the logits; and `pin_memory()` in the form libtorch 2.11 keeps (tch passes the deprecated
//! device argument, a warning per call). Errors are the C++ exception's message.

use std::ffi::{CStr, c_char, c_int};
use tch::Tensor;

unsafe extern "C-unwind" {
    fn recipe_backward_with_grad(
        output: *const std::ffi::c_void,
        grad: *const std::ffi::c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn recipe_pin_memory(src: *const std::ffi::c_void, err: *mut *mut c_char) -> *mut std::ffi::c_void;
    fn recipe_torch_ops_free_message(message: *mut c_char);
}

fn check(ok: c_int, err: *mut c_char, what: &str) -> Result<(), String> {
    if ok != 0 {
        return Ok(());
    }
    let message = if err.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: the shim wrote a NUL-terminated string it allocated with malloc.
        let text = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { recipe_torch_ops_free_message(err) };
        text
    };
    Err(format!("{what}: {message}"))
}

/// The backward pass from `output` seeded with `grad` (its shape): `output.backward(grad)`.
pub fn backward_with_grad(output: &Tensor, grad: &Tensor) -> Result<(), String> {
    let mut err = std::ptr::null_mut();
    // SAFETY: both pointers are live tensors for the call; the shim only reads them.
    let ok = unsafe { recipe_backward_with_grad(output.as_ptr().cast(), grad.as_ptr().cast(), &mut err) };
    check(ok, err, "backward pass")
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

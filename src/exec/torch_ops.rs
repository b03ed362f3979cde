//! libtorch operations tch does not bind, through the C++ shim in `torch_ops.cpp` (compiled by
//! build.rs beside the c10d shim): a backward pass seeded with a given gradient, which the
//! chunked loss uses to send each chunk's logit gradient into the head without another copy of
//! the logits. Errors are the C++ exception's message.

use std::ffi::{CStr, c_char, c_int};
use tch::Tensor;

unsafe extern "C-unwind" {
    fn recipe_backward_with_grad(
        output: *const std::ffi::c_void,
        grad: *const std::ffi::c_void,
        err: *mut *mut c_char,
    ) -> c_int;
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

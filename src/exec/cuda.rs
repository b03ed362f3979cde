//! What tch does not expose about CUDA:
//! - a device's compute capability, read through the CUDA driver API (libcuda, loaded at run
//!   time, so nothing links against it and CPU machines never load it); bf16 needs 8.0 or newer,
//!   as `torch.cuda.is_bf16_supported()` says;
//! - the device memory in use (driver API), sampled where a training step peaks;
//! - `tf32`: libtorch's global switch for TF32 in cuBLAS fp32 matmuls
//!   (`torch.backends.cuda.matmul.allow_tf32`), set through libtorch's exported `at::Context`.

use std::ffi::{CStr, c_int, c_void};

/// CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR.
const CAPABILITY_MAJOR: c_int = 75;
const CAPABILITY_MINOR: c_int = 76;

/// The driver API functions used here, from libcuda.so.1 (None on machines without a driver).
struct Driver {
    device_get: CuDeviceGet,
    device_get_attribute: CuDeviceGetAttribute,
    mem_get_info: CuMemGetInfo,
}

type CuInit = unsafe extern "C" fn(flags: u32) -> c_int;
type CuDeviceGet = unsafe extern "C" fn(device: *mut c_int, ordinal: c_int) -> c_int;
type CuDeviceGetAttribute = unsafe extern "C" fn(value: *mut c_int, attribute: c_int, device: c_int) -> c_int;
type CuMemGetInfo = unsafe extern "C" fn(free: *mut usize, total: *mut usize) -> c_int;

fn driver() -> Option<&'static Driver> {
    static DRIVER: std::sync::OnceLock<Option<Driver>> = std::sync::OnceLock::new();
    DRIVER
        .get_or_init(|| {
            // SAFETY: dlopen/dlsym with NUL-terminated names; the symbols are the driver API's
            // documented C functions with these signatures, and cuInit runs before any other.
            unsafe {
                let lib = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
                if lib.is_null() {
                    return None;
                }
                let symbol = |name: &CStr| -> Option<*mut c_void> {
                    let f = libc::dlsym(lib, name.as_ptr());
                    (!f.is_null()).then_some(f)
                };
                let init = std::mem::transmute::<*mut c_void, CuInit>(symbol(c"cuInit")?);
                if init(0) != 0 {
                    return None;
                }
                Some(Driver {
                    device_get: std::mem::transmute::<*mut c_void, CuDeviceGet>(symbol(c"cuDeviceGet")?),
                    device_get_attribute: std::mem::transmute::<*mut c_void, CuDeviceGetAttribute>(symbol(
                        c"cuDeviceGetAttribute",
                    )?),
                    mem_get_info: std::mem::transmute::<*mut c_void, CuMemGetInfo>(symbol(c"cuMemGetInfo_v2")?),
                })
            }
        })
        .as_ref()
}

/// (major, minor) of CUDA device `ordinal`; None where the driver cannot be asked.
pub fn compute_capability(ordinal: usize) -> Option<(i32, i32)> {
    let d = driver()?;
    let mut device = 0;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters; result codes checked.
    unsafe {
        if (d.device_get)(&mut device, c_int::try_from(ordinal).ok()?) != 0
            || (d.device_get_attribute)(&mut major, CAPABILITY_MAJOR, device) != 0
            || (d.device_get_attribute)(&mut minor, CAPABILITY_MINOR, device) != 0
        {
            return None;
        }
    }
    Some((major, minor))
}

/// Bytes in use on the current CUDA device (total − free, as nvidia-smi counts: the CUDA
/// context, libraries' workspaces and everything the caching allocator holds; on a shared GPU,
/// other processes' memory too). Needs the
/// device's context current on this thread, which libtorch makes once it has used the device.
pub fn device_memory_used() -> Option<u64> {
    let d = driver()?;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: plain out-parameters; result code checked.
    (unsafe { (d.mem_get_info)(&mut free, &mut total) } == 0).then(|| (total - free) as u64)
}

static DEVICE_PEAK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records the device's use if it is the highest seen (a model memory probe on CUDA).
pub fn sample_device_memory() {
    if let Some(used) = device_memory_used() {
        DEVICE_PEAK.fetch_max(used, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Starts a new peak (each run measures its own).
pub fn reset_device_memory_peak() {
    DEVICE_PEAK.store(0, std::sync::atomic::Ordering::Relaxed);
}

/// The highest `sample_device_memory` saw.
pub fn device_memory_peak() -> u64 {
    DEVICE_PEAK.load(std::sync::atomic::Ordering::Relaxed)
}

/// `at::globalContext()` and a member of it, looked up in the loaded libtorch by their mangled
/// names (the Itanium C++ ABI: a non-virtual member takes `this` first).
fn context_member(name: &CStr) -> Option<(*mut c_void, *mut c_void)> {
    type GlobalContext = unsafe extern "C-unwind" fn() -> *mut c_void;
    // SAFETY: dlsym over the process's global scope, where libtorch_cpu is loaded as a dependency
    // of this binary; `at::globalContext()` takes nothing and returns the context's address.
    unsafe {
        let global = libc::dlsym(libc::RTLD_DEFAULT, c"_ZN2at13globalContextEv".as_ptr());
        let member = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
        if global.is_null() || member.is_null() {
            return None;
        }
        let global = std::mem::transmute::<*mut c_void, GlobalContext>(global);
        Some((global(), member))
    }
}

/// Allows (or forbids) TF32 in cuBLAS fp32 matmuls, process-wide.
pub fn set_tf32_matmuls(allow: bool) -> Result<(), String> {
    // C-unwind: a C++ exception from libtorch must not cross a plain "C" boundary.
    type Setter = unsafe extern "C-unwind" fn(this: *mut c_void, allow: bool);
    let (context, setter) = context_member(c"_ZN2at7Context18setAllowTF32CuBLASEb")
        .ok_or("tf32: libtorch's at::Context::setAllowTF32CuBLAS is not exported by this libtorch")?;
    // SAFETY: `void at::Context::setAllowTF32CuBLAS(bool)` called on the global context.
    unsafe { std::mem::transmute::<*mut c_void, Setter>(setter)(context, allow) };
    Ok(())
}

/// Whether TF32 is allowed in cuBLAS fp32 matmuls.
pub fn tf32_matmuls() -> Option<bool> {
    type Getter = unsafe extern "C-unwind" fn(this: *mut c_void) -> bool;
    let (context, getter) = context_member(c"_ZNK2at7Context15allowTF32CuBLASEv")?;
    // SAFETY: `bool at::Context::allowTF32CuBLAS() const` called on the global context.
    Some(unsafe { std::mem::transmute::<*mut c_void, Getter>(getter)(context) })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tf32_switch_reaches_libtorch() {
        // libtorch's own getter reads back what was set (the switch lives in libtorch_cpu, so
        // this runs without a GPU).
        let before = super::tf32_matmuls().expect("libtorch exports allowTF32CuBLAS");
        super::set_tf32_matmuls(!before).unwrap();
        assert_eq!(super::tf32_matmuls(), Some(!before));
        super::set_tf32_matmuls(before).unwrap();
        assert_eq!(super::tf32_matmuls(), Some(before));
    }

    #[test]
    fn no_driver_means_no_answer_rather_than_a_guess() {
        // On a machine without libcuda (CI here) there is nothing to ask; with one, a real
        // capability (every CUDA 13 GPU is 7.5 or newer).
        match super::compute_capability(0) {
            None => assert!(!std::path::Path::new("/dev/nvidia0").exists() || !tch::Cuda::is_available()),
            Some((major, _)) => assert!(major >= 7),
        }
    }
}

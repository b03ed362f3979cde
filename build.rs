//! Link-time set-up for the libtorch executor (feature `exec`).
//!
//! torch-sys links libtorch but leaves two things to the binaries (and test binaries): an rpath to the libtorch folder, so
//! `recipe` runs without LD_LIBRARY_PATH, and `libtorch_cuda` kept with `--no-as-needed`, because
//! nothing references its symbols directly and the linker would otherwise drop it, leaving CUDA
//! invisible to tch on a GPU machine.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_EXEC").is_none() {
        return;
    }
    let lib_dir = match (std::env::var_os("LIBTORCH_LIB"), std::env::var_os("LIBTORCH")) {
        (Some(lib), _) => PathBuf::from(lib).join("lib"),
        (None, Some(root)) => PathBuf::from(root).join("lib"),
        (None, None) => {
            println!(
                "cargo:warning=LIBTORCH is not set: the binary gets no rpath to libtorch; \
                 use scripts/env.sh (see README) or build with --no-default-features"
            );
            return;
        }
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib_dir.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

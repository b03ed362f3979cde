//! Build-time set-up for the libtorch executor (feature `exec`).
//!
//! torch-sys links libtorch but leaves three things to the binaries (and test binaries):
//! - an rpath to the libtorch folder, so `recipe` runs without LD_LIBRARY_PATH;
//! - `libtorch_cuda` kept with `--no-as-needed`, because nothing references its symbols directly
//!   and the linker would otherwise drop it, leaving CUDA invisible to tch on a GPU machine;
//! - the c10d shim (src/exec/c10d.cpp): PyTorch's distributed runtime has no tch bindings, so a
//!   small C++ file is compiled here against the wheel's headers, with Gloo's headers (which the
//!   wheel lacks) and, when present, the CUDA headers ProcessGroupNCCL needs. scripts/env.sh puts
//!   both in the cache and exports RECIPE_GLOO_INCLUDE / RECIPE_CUDA_INCLUDE.

use std::path::PathBuf;

fn main() {
    for var in ["LIBTORCH", "LIBTORCH_LIB", "RECIPE_GLOO_INCLUDE", "RECIPE_CUDA_INCLUDE"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=src/exec/c10d.cpp");
    println!("cargo:rerun-if-changed=src/exec/torch_ops.cpp");
    if std::env::var_os("CARGO_FEATURE_EXEC").is_none() {
        return;
    }
    let (root, lib_dir) = match (std::env::var_os("LIBTORCH_LIB"), std::env::var_os("LIBTORCH")) {
        (Some(lib), root) => (PathBuf::from(root.unwrap_or_else(|| lib.clone())), PathBuf::from(lib).join("lib")),
        (None, Some(root)) => (PathBuf::from(&root), PathBuf::from(root).join("lib")),
        (None, None) => {
            panic!(
                "LIBTORCH is not set: source scripts/env.sh first (see README), or build the validate/plan-only \
                 binary with --no-default-features"
            );
        }
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    let has_cuda = lib_dir.join("libtorch_cuda.so").exists();
    if has_cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib_dir.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    build_c10d_shim(&root, &lib_dir, has_cuda);
}

fn build_c10d_shim(root: &std::path::Path, lib_dir: &std::path::Path, has_cuda: bool) {
    let gloo = std::env::var_os("RECIPE_GLOO_INCLUDE").map(PathBuf::from).filter(|p| p.join("gloo").is_dir());
    let Some(gloo) = gloo else {
        panic!(
            "RECIPE_GLOO_INCLUDE does not point at Gloo's headers: source scripts/env.sh, which fetches them into \
             the cache (the c10d shim for multi-process training needs them)"
        );
    };
    let include = root.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/exec/c10d.cpp")
        // Operations tch does not bind (a backward pass seeded with a gradient), same headers.
        .file("src/exec/torch_ops.cpp")
        .flag("-std=c++17")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_DISTRIBUTED", None)
        .define("USE_C10D_GLOO", None)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&gloo)
        .warnings(false);
    // ProcessGroupNCCL: the wheel's nccl.h and CUDA runtime headers plus crt/ and nv/target.
    let nvidia = root.parent().map(|p| p.join("nvidia"));
    let cuda_extra = std::env::var_os("RECIPE_CUDA_INCLUDE").map(PathBuf::from);
    if let (true, Some(nvidia), Some(extra)) = (has_cuda, nvidia, cuda_extra)
        && nvidia.join("nccl/include/nccl.h").is_file()
        && extra.join("crt/host_config.h").is_file()
    {
        build
            .define("USE_C10D_NCCL", None)
            .define("RECIPE_WITH_NCCL", None)
            .include(nvidia.join("cu13/include"))
            .include(nvidia.join("nccl/include"))
            .include(extra);
    } else if has_cuda {
        println!("cargo:warning=CUDA headers for ProcessGroupNCCL not found (RECIPE_CUDA_INCLUDE): Gloo only");
    }
    build.compile("recipe_c10d");
    // The shim's c10d symbols live in these; list them after it.
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if has_cuda {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}

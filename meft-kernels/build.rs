//! Compiles `kernels/meft.cu` to PTX with nvcc, only when the `cuda` feature is on.
//!
//! Never probes for a GPU. nvcc is `$NVCC` or `nvcc` on `PATH` (`cargo xtask gpu-bundle` puts the
//! pinned CUDA 13.0 nvcc there); the PTX target is `compute_$CUDA_COMPUTE_CAP` (default 90).

use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-changed=kernels/meft.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("meft.ptx");
    let status = Command::new(&nvcc).args(["-ptx", &format!("-arch=compute_{cap}"), "-O3", "kernels/meft.cu", "-o"]).arg(&out).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("meft-kernels: `{nvcc} -ptx kernels/meft.cu` failed ({s}); see the compiler output above"),
        Err(e) => panic!(
            "meft-kernels: cannot run nvcc `{nvcc}` ({e}); the `cuda` feature needs the pinned CUDA 13.0 nvcc: \
             run `cargo xtask gpu-bundle`, or set NVCC to its path"
        ),
    }
}

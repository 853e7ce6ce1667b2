//! CPU-side checks that always run: the kernel source compiles to PTX with the pinned nvcc (when
//! installed), and the API without `cuda` answers `NotCompiledWithCuda`.

use std::path::{Path, PathBuf};
use std::process::Command;

use meft_kernels::{KERNEL_NAMES, KERNEL_SOURCE};

/// The pinned nvcc: `$MEFT_NVCC`, else the workspace's `.venv-cuda` (made by `cargo xtask gpu-bundle`).
fn pinned_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MEFT_NVCC") {
        return Some(PathBuf::from(p));
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-cuda/lib");
    std::fs::read_dir(lib).ok()?.flatten().map(|e| e.path().join("site-packages/nvidia/cu13/bin/nvcc")).find(|p| p.is_file())
}

#[test]
fn kernel_source_compiles_to_ptx_with_pinned_nvcc() {
    let Some(nvcc) = pinned_nvcc() else {
        println!("skipped: the pinned CUDA 13.0 nvcc is not installed (run `cargo xtask gpu-bundle` or set MEFT_NVCC)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("meft-kernels-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, ptx) = (dir.join("meft.cu"), dir.join("meft.ptx"));
    std::fs::write(&src, KERNEL_SOURCE).unwrap();
    let out = Command::new(&nvcc).args(["-ptx", "-arch=compute_90", "-O3"]).arg(&src).arg("-o").arg(&ptx).output().unwrap();
    assert!(out.status.success(), "nvcc failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&ptx).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // CUDA 13.0's nvcc writes PTX ISA 9.0, which the 580 (CUDA 13.0) driver on the GPU machine accepts.
    assert!(text.contains(".version 9.0"), "unexpected PTX ISA version (pinned nvcc must be 13.0)");
    for name in KERNEL_NAMES {
        assert!(text.contains(&format!(".entry {name}(")), "PTX lacks entry {name}");
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn without_cuda_the_api_says_not_compiled_with_cuda() {
    let err = meft_kernels::DeviceKernels::new(0).unwrap_err();
    assert!(matches!(err, meft_kernels::KernelError::Core(meft_core::Error::NotCompiledWithCuda { .. })), "{err}");
    assert!(err.to_string().contains("gpu-bundle"));
}

//! `cargo xtask gpu-bundle`: builds the `cuda`-featured binaries here (no GPU, no system CUDA) and
//! packs them with `tools/gpu/run.sh` into `out/gpu-bundle/meft-gpu-bundle.tar.xz` for the GPU machine.
//!
//! Steps (the recipe of the project's GPU notes):
//! 1. the pinned CUDA 13.0 compiler pieces (`cuda-toolkit[nvcc,nvvm,crt,cccl,cudart]==13.0.2`) from
//!    pip into `.venv-cuda` (git-ignored), installed only when missing;
//! 2. `-lcudart` resolved to the static cudart by a one-line linker script;
//! 3. candle-core copied into the build dir with cudarc's `dynamic-linking` swapped for
//!    `dynamic-loading` and used through `--config patch...`, so the binaries start without any CUDA
//!    library and dlopen them at run time (Cargo.lock is restored afterwards);
//! 4. `meft` (experiments, `--features cuda`) and meft-kernels' device test and bandwidth bench,
//!    built in `target-cuda` so CPU builds keep their own cache;
//! 5. stripped, checked for load-time CUDA links, and packed as tar.xz (must stay < 64 MiB).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::run::{cargo, run, show, step, workspace_root};

/// The CUDA pieces, pinned as one set (newer nvcc writes PTX the 13.0 driver refuses).
const CUDA_PIP_SPEC: &str = "cuda-toolkit[nvcc,nvvm,crt,cccl,cudart]==13.0.2";
/// Target compute capability (H100/H200).
const COMPUTE_CAP: &str = "90";
/// The device tool carries at most 64 MiB.
const MAX_BUNDLE_BYTES: u64 = 64 << 20;
const BUNDLE: &str = "meft-gpu-bundle";

/// Entry point of `cargo xtask gpu-bundle`.
pub fn gpu_bundle() -> anyhow::Result<()> {
    let start = Instant::now();
    let root = workspace_root();
    let work = root.join("target-cuda");
    fs::create_dir_all(work.join("lib"))?;
    let cu = cuda_pieces(&root)?;
    fs::write(work.join("lib/libcudart.so"), format!("INPUT({})\n", cu.join("lib/libcudart_static.a").display()))?;
    let candle = patched_candle(&work)?;
    let lock = root.join("Cargo.lock");
    let kept = fs::read(&lock).context("reading Cargo.lock")?;
    let built = build_all(&root, &work, &cu, &candle);
    fs::write(&lock, kept).context("restoring Cargo.lock after the patched build")?;
    let exes = built?;
    let tarball = pack(&root, &exes)?;
    let size = fs::metadata(&tarball)?.len();
    eprintln!("\nbundle: {} ({:.1} MiB) in {:.0} s", tarball.display(), size as f64 / 1048576.0, start.elapsed().as_secs_f64());
    if size > MAX_BUNDLE_BYTES {
        bail!("the bundle is {size} bytes, over the 64 MiB the device tool carries; drop binaries from it");
    }
    eprintln!(
        "run it with the device tool: carry [\"out/gpu-bundle\"], command:\n  tar xJf out/gpu-bundle/{BUNDLE}.tar.xz -C /tmp && /tmp/{BUNDLE}/run.sh all"
    );
    Ok(())
}

/// Installs the pinned CUDA pieces into `.venv-cuda` when nvcc is missing; returns `.../nvidia/cu13`.
fn cuda_pieces(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join(".venv-cuda");
    if let Some(cu) = find_cu13(&venv).filter(|cu| cu.join("bin/nvcc").is_file()) {
        return Ok(cu);
    }
    step(&format!("installing the pinned CUDA pieces ({CUDA_PIP_SPEC}) into {}", venv.display()));
    if !venv.join("bin/python").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).context("creating the venv failed: install python3 with the venv module")?;
    }
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", "--disable-pip-version-check", CUDA_PIP_SPEC]))
        .context("pip could not install the pinned CUDA pieces (needs network access to the package index once)")?;
    find_cu13(&venv)
        .filter(|cu| cu.join("bin/nvcc").is_file())
        .with_context(|| format!("pip finished but no nvidia/cu13/bin/nvcc under {}", venv.display()))
}

fn find_cu13(venv: &Path) -> Option<PathBuf> {
    let lib = fs::read_dir(venv.join("lib")).ok()?;
    lib.flatten().map(|e| e.path().join("site-packages/nvidia/cu13")).find(|p| p.is_dir())
}

/// Copies the registry candle-core next to the build and swaps cudarc's linking feature.
fn patched_candle(work: &Path) -> anyhow::Result<PathBuf> {
    let out = cargo().args(["metadata", "--format-version", "1", "--features", "experiments/cuda"]).output()?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "candle-core" && !p["source"].is_null()))
        .and_then(|p| p["manifest_path"].as_str())
        .context("candle-core (from the registry) is not in the dependency graph")?;
    let src = Path::new(manifest).parent().context("candle-core manifest has no folder")?;
    let dst = work.join("candle-core");
    let stamp = work.join("candle-core.from");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(manifest) {
        step(&format!("patching candle-core for cudarc dynamic-loading ({})", src.display()));
        let _ = fs::remove_dir_all(&dst);
        run(Command::new("cp").arg("-r").arg(src).arg(&dst))?;
        let toml = fs::read_to_string(dst.join("Cargo.toml"))?;
        if !toml.contains("\"dynamic-linking\",") {
            bail!("candle-core's Cargo.toml no longer names cudarc's dynamic-linking; update the gpu-bundle patch");
        }
        fs::write(dst.join("Cargo.toml"), toml.replace("\"dynamic-linking\",", "\"dynamic-loading\","))?;
        fs::write(&stamp, manifest)?;
    }
    Ok(dst)
}

/// A cargo command with the CUDA environment and the candle patch.
fn cuda_cargo(work: &Path, cu: &Path, candle: &Path) -> Command {
    let mut cmd = cargo();
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", cu.join("bin").display()))
        .env("MEFT_GIT_REVISION", git_revision())
        .env("NVCC", cu.join("bin/nvcc"))
        .env("CUDA_COMPUTE_CAP", COMPUTE_CAP)
        .env("LIBRARY_PATH", work.join("lib"))
        .env("CARGO_TARGET_DIR", work)
        .args(["build", "--release", "--message-format=json-render-diagnostics"])
        .arg("--config")
        .arg(format!("patch.crates-io.candle-core.path=\"{}\"", candle.display()));
    cmd
}

/// `git rev-parse HEAD` (with `-dirty` for tracked changes), baked into the bundle's `meft` so its
/// reports name the revision on a machine without the repository.
fn git_revision() -> String {
    let git = |args: &[&str]| Command::new("git").args(args).output().ok().filter(|o| o.status.success());
    let rev = git(&["rev-parse", "HEAD"]).map_or_else(|| "unknown".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|o| !o.stdout.is_empty());
    if dirty { format!("{rev}-dirty") } else { rev }
}

/// Builds `meft` and the kernels' device test and bench; returns (bundle name, executable) pairs.
fn build_all(root: &Path, work: &Path, cu: &Path, candle: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let jobs = std::env::var("MEFT_BUILD_JOBS").unwrap_or_else(|_| "2".into());
    let mut exes = Vec::new();
    step("building the cuda-featured meft-kernels device test and bandwidth bench");
    let mut k = cuda_cargo(work, cu, candle);
    k.args(["-j", &jobs, "-p", "meft-kernels", "--features", "cuda", "--test", "device", "--bench", "device_bw"]);
    for exe in executables(&mut k, root)? {
        let stem = exe.file_name().and_then(|n| n.to_str()).and_then(|n| n.split('-').next()).unwrap_or("bin");
        let name = if stem == "device" { "device_test".to_string() } else { stem.to_string() };
        exes.push((name, exe));
    }
    step("building the cuda-featured `meft` binary");
    let mut m = cuda_cargo(work, cu, candle);
    m.args(["-j", &jobs, "-p", "experiments", "--features", "cuda", "--bin", "meft"]);
    exes.extend(executables(&mut m, root)?.into_iter().map(|e| ("meft".to_string(), e)));
    Ok(exes)
}

/// Runs a `cargo build --message-format=json` and returns the executables it reports.
fn executables(cmd: &mut Command, root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let shown = show(cmd);
    eprintln!("    $ {shown}");
    let start = Instant::now();
    let out = cmd.current_dir(root).stderr(std::process::Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("`{shown}` failed ({}) after {:.0} s", out.status, start.elapsed().as_secs_f64());
    }
    eprintln!("    built in {:.0} s", start.elapsed().as_secs_f64());
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .collect())
}

/// Copies, strips and checks the executables, adds the run script, and writes the tar.xz.
fn pack(root: &Path, exes: &[(String, PathBuf)]) -> anyhow::Result<PathBuf> {
    step("packing the bundle");
    let out = root.join("out/gpu-bundle");
    let dir = out.join(BUNDLE);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("bin"))?;
    for (name, exe) in exes {
        let to = dir.join("bin").join(name);
        fs::copy(exe, &to).with_context(|| format!("copying {}", exe.display()))?;
        run(Command::new("strip").arg(&to))?;
        let dynamic = Command::new("readelf").arg("-d").arg(&to).output()?;
        let needed = String::from_utf8_lossy(&dynamic.stdout);
        if let Some(bad) = needed.lines().find(|l| l.contains("NEEDED") && (l.contains("libcu") || l.contains("libnv"))) {
            bail!("{name} links a CUDA library at load time ({bad}); the candle patch did not apply");
        }
        eprintln!("    {name}: {:.1} MiB", fs::metadata(&to)?.len() as f64 / 1048576.0);
    }
    fs::copy(root.join("tools/gpu/run.sh"), dir.join("run.sh")).context("copying tools/gpu/run.sh")?;
    let tarball = out.join(format!("{BUNDLE}.tar.xz"));
    run(Command::new("tar").arg("cJf").arg(&tarball).arg("-C").arg(&out).arg(BUNDLE))?;
    fs::remove_dir_all(&dir)?; // only the tarball travels (the device tool's carry limit)
    Ok(tarball)
}

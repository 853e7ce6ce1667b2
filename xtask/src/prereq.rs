//! System prerequisites. Today: the HDF5 C library, needed by `hdf5-metno` when a workspace
//! crate depends on it. On a fresh Debian machine as root it is installed with apt-get;
//! otherwise the user is told exactly what to run.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::run::{cargo, run, step};

/// Names under which a workspace crate may depend on the HDF5 bindings.
const HDF5_CRATES: &[&str] = &["hdf5-metno", "hdf5", "hdf5-sys", "hdf5-metno-sys"];

/// Makes sure every system library the workspace needs is present.
pub fn ensure() -> anyhow::Result<()> {
    step("checking system prerequisites");
    if !workspace_needs_hdf5()? {
        eprintln!("    no workspace crate uses HDF5 yet: nothing to install");
        return Ok(());
    }
    if hdf5_present() {
        eprintln!("    HDF5 library: found");
        return Ok(());
    }
    install_hdf5()
}

/// Whether any workspace member depends (directly) on an HDF5 crate.
fn workspace_needs_hdf5() -> anyhow::Result<bool> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .context("could not run `cargo metadata`")?;
    if !out.status.success() {
        bail!("`cargo metadata` failed; is the workspace's Cargo.toml valid?");
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("`cargo metadata` output")?;
    let deps = meta["packages"].as_array().into_iter().flatten().flat_map(|p| p["dependencies"].as_array());
    Ok(deps.flatten().any(|d| d["name"].as_str().is_some_and(|n| HDF5_CRATES.contains(&n))))
}

/// Whether the HDF5 development files can be found (HDF5_DIR, pkg-config or the Debian package).
fn hdf5_present() -> bool {
    let quiet =
        |prog: &str, args: &[&str]| Command::new(prog).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    let debian_package = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "libhdf5-dev"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed"));
    std::env::var_os("HDF5_DIR").is_some() || quiet("pkg-config", &["--exists", "hdf5"]) || debian_package
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

const HOW: &str = "install it with `sudo apt-get install -y libhdf5-dev pkg-config` (Debian/Ubuntu), \
                   `dnf install hdf5-devel` (Fedora) or `brew install hdf5` (macOS), or point HDF5_DIR at an \
                   HDF5 installation, then run this command again";

fn install_hdf5() -> anyhow::Result<()> {
    let has_apt = Command::new("apt-get").arg("--version").stdout(Stdio::null()).status().is_ok();
    if !(is_root() && has_apt) {
        bail!("the HDF5 C library (libhdf5-dev) is missing and this is not a root Debian shell; {HOW}");
    }
    eprintln!("    HDF5 library missing: installing libhdf5-dev and pkg-config with apt-get (root, Debian)");
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null());
        cmd
    };
    run(&mut apt(&["update"])).with_context(|| format!("apt-get update failed; {HOW}"))?;
    run(&mut apt(&["install", "-y", "--no-install-recommends", "libhdf5-dev", "pkg-config"]))
        .with_context(|| format!("installing libhdf5-dev failed; {HOW}"))?;
    if !hdf5_present() {
        bail!("libhdf5-dev was installed but HDF5 is still not found; {HOW}");
    }
    Ok(())
}

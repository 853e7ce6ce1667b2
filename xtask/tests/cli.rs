//! The xtask binary's failure messages, with no network and no real pip involved.

use std::process::Command;

#[test]
fn assets_without_pip_fails_with_a_clear_message() {
    let home = std::env::temp_dir().join(format!("meft-xtask-cli-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("assets")
        .env("MEFT_HOME", &home)
        .env("MEFT_PIP", "/nonexistent/pip")
        .output()
        .expect("run xtask");
    let _ = std::fs::remove_dir_all(&home);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail without pip");
    assert!(stderr.contains("pip is not available") && stderr.contains("MEFT_PIP"), "{stderr}");
}

#[test]
fn unknown_command_is_rejected() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).arg("frobnicate").output().expect("run xtask");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

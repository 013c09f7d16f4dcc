//! Running programs from tests: the `mailflow` binary's path, whether a tool is
//! installed, a command's output checked for success, and a Python snippet whose
//! answer is JSON. Imports nothing of the other helpers.

use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_mailflow");

/// True if `cmd` is on the PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// What a command printed: its stdout, then its stderr.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails the test, showing what the command printed, unless it exited with 0.
#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(out.status.success(), "{}: {}", out.status, output_text(out));
}

/// Runs `python3 -c script args…` and parses what it prints as JSON; fails the test if
/// Python fails or prints something else.
#[track_caller]
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    assert_success(&out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Runs `swaks --server 127.0.0.1:<port> args…` (scripts/test installs swaks).
pub fn swaks(port: u16, args: &[&str]) -> Output {
    Command::new("swaks")
        .arg("--server")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .output()
        .expect("run swaks (apt-get install swaks; scripts/test installs it)")
}

//! Running programs from tests: the `mailflow` binary and its CLI against an
//! organisation file, whether a tool is installed, a command's output checked for
//! success, swaks, and a Python snippet whose answer is JSON. Imports only
//! files.rs.

use super::files_in;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_mailflow");

/// Runs `mailflow --config <config> args…` (the CLI of an organisation's operator).
pub fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run mailflow")
}

/// Runs a CLI command with `--json` and parses its answer; fails the test if the
/// command fails or prints something else.
#[track_caller]
pub fn cli_json(config: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = cli(config, &all);
    assert!(
        out.status.success(),
        "mailflow {args:?} failed: {}",
        output_text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "mailflow {args:?}: bad JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Puts `content` in `mailbox`'s Outbox (`mailbox send --eml`), as a user's client
/// does: Mailbox Transport Submission takes it from there.
#[track_caller]
pub fn send_from_outbox(config: &Path, mailbox: &str, content: &str) {
    let eml = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(eml.path(), content).unwrap();
    let eml = eml.path().to_str().unwrap();
    assert_success(&cli(config, &["mailbox", "send", mailbox, "--eml", eml]));
}

/// The messages of `address`'s mailbox (`mailbox export`: one folder, or every
/// folder with None), .eml bytes in file-name order; Err with what the CLI printed if
/// the export failed. `server` names the server in an organisation of several.
pub fn export_mailbox(
    config: &Path,
    server: Option<&str>,
    address: &str,
    folder: Option<&str>,
) -> Result<Vec<Vec<u8>>, String> {
    let out_dir = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    if let Some(server) = server {
        args.extend(["--server", server]);
    }
    args.extend(["mailbox", "export", address]);
    if let Some(folder) = folder {
        args.extend(["--folder", folder]);
    }
    args.extend(["--out", out_dir.path().to_str().unwrap()]);
    let out = cli(config, &args);
    if !out.status.success() {
        return Err(output_text(&out));
    }
    Ok(files_in(out_dir.path())
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect())
}

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

//! The command line's configuration commands: `init` writes a file `check-config`
//! accepts, and errors name file, line and key.

mod common;

use std::process::Command;

use common::{BIN, assert_success};

/// `mailflow init` of organisation fabrikam.test, server EX1, into `dir`.
fn init_fabrikam(dir: &std::path::Path) -> Command {
    let mut init = Command::new(BIN);
    init.args([
        "init",
        "--domain",
        "fabrikam.test",
        "--server",
        "EX1",
        "--dir",
    ])
    .arg(dir);
    init
}

#[test]
fn init_writes_a_valid_organisation_and_check_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = init_fabrikam(dir.path())
        .args([
            "--mailbox",
            "ann@fabrikam.test",
            "--mailbox",
            "ben@fabrikam.test",
        ])
        .output()
        .unwrap();
    assert_success(&out);
    let file = dir.path().join("mailflow.toml");
    assert!(dir.path().join("secret.key").exists());
    assert!(dir.path().join("certs/ex1.pem").exists());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("frontend = 25")
            && text.contains("transport = 2525")
            && text.contains("mailbox_delivery = 475")
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK (1 servers, 1 databases, 2 mailboxes")
    );

    // A mailbox in an unknown database, and a bad size: each error names file:line: key.
    let broken = text
        .replacen("database = \"DB01\"", "database = \"DB99\"", 1)
        .replace("max_message_size = \"10MB\"", "max_message_size = \"huge\"");
    std::fs::write(&file, &broken).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let size_line = broken.lines().position(|l| l.contains("\"huge\"")).unwrap() + 1;
    assert!(
        err.contains(&format!(
            "{}:{size_line}: max_message_size:",
            file.display()
        )),
        "{err}"
    );
    let fixed = broken.replace("\"huge\"", "\"10MB\"");
    std::fs::write(&file, &fixed).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let db_line = fixed.lines().position(|l| l.contains("DB99")).unwrap() + 1;
    assert!(
        err.contains(&format!(
            "{}:{db_line}: mailboxes.database: unknown database \"DB99\"",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly_without_a_panic() {
    // `mailflow agent list | true`: the pipe's reader is gone before the first line.
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = init_fabrikam(dir.path())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(13),
        "ended by SIGPIPE: {:?}",
        out.status
    );
}

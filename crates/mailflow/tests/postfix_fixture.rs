//! Self-test of the Postfix fixture (tests/common/postfix.rs): a private Postfix
//! on loopback accepts, delivers to Maildir, logs, rejects, stops and restarts.
mod common;

use common::postfix::{Postfix, PostfixOptions};
use std::process::{Command, Output};

fn swaks(port: u16, to: &str, subject: &str, extra: &[&str]) -> Output {
    Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--helo",
            "client.contoso.test",
            "--from",
            "sender@contoso.test",
        ])
        .args(["--to", to, "--header", &format!("Subject: {subject}")])
        .args(["--body", "hello from the fixture test\n"])
        .args(extra)
        .output()
        .expect("run swaks (apt-get install swaks)")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn postfix_delivers_to_maildir_over_starttls() {
    let pf = Postfix::start(PostfixOptions {
        tls: true,
        ..Default::default()
    });
    let out = swaks(pf.port, "ext@fabrikam.test", "fixture tls", &["--tls"]);
    assert!(out.status.success(), "swaks: {}", text(&out));

    let msgs = pf.wait_messages(1);
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(
        common::header_values(m, "Subject"),
        vec!["fixture tls".to_string()]
    );
    assert_eq!(
        common::header_values(m, "Delivered-To"),
        vec!["ext@fabrikam.test".to_string()]
    );
    assert!(common::body_of(m).starts_with(b"hello from the fixture test\r\n"));
    let log = pf.log();
    assert!(log.contains("TLS connection established from"), "{log}");
    assert!(log.contains("status=sent (delivered to maildir)"), "{log}");
}

#[test]
fn postfix_rejects_listed_recipients_and_relay() {
    let pf = Postfix::start(PostfixOptions {
        reject: vec!["nobody@fabrikam.test".into()],
        ..Default::default()
    });
    let out = swaks(pf.port, "nobody@fabrikam.test", "fixture reject", &[]);
    assert!(!out.status.success(), "accepted: {}", text(&out));
    assert!(text(&out).contains("550 5.1.1"), "{}", text(&out));
    // Not its domain: a destination MX, not a relay.
    let out = swaks(pf.port, "someone@elsewhere.test", "fixture relay", &[]);
    assert!(text(&out).contains("Relay access denied"), "{}", text(&out));
    // No STARTTLS without `tls`.
    let out = swaks(pf.port, "ok@fabrikam.test", "fixture no tls", &["--tls"]);
    assert!(!out.status.success(), "{}", text(&out));

    let out = swaks(pf.port, "ok@fabrikam.test", "fixture ok", &[]);
    assert!(out.status.success(), "swaks: {}", text(&out));
    let msgs = pf.wait_messages(1);
    assert_eq!(msgs.len(), 1);
    assert!(
        pf.log().contains("NOQUEUE: reject: RCPT from"),
        "{}",
        pf.log()
    );
}

#[test]
fn postfix_stops_and_restarts_on_the_same_port() {
    let mut pf = Postfix::start(PostfixOptions::default());
    let port = pf.port;
    pf.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    pf.restart();
    assert_eq!(pf.port, port);
    let out = swaks(port, "back@fabrikam.test", "fixture restart", &[]);
    assert!(out.status.success(), "swaks: {}", text(&out));
    pf.wait_messages(1);
}

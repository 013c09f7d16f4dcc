//! Self-test of the Postfix fixture (tests/common/postfix.rs): a private Postfix
//! on loopback accepts, delivers to Maildir, logs, rejects, stops and restarts.
mod common;

use common::postfix::{Postfix, PostfixOptions};
use common::{assert_success, output_text, swaks};
use std::process::Output;

fn send(port: u16, to: &str, subject: &str, extra: &[&str]) -> Output {
    let subject = format!("Subject: {subject}");
    let mut args = vec![
        "--helo",
        "client.contoso.test",
        "--from",
        "sender@contoso.test",
        "--to",
        to,
        "--header",
        &subject,
        "--body",
        "hello from the fixture test\n",
    ];
    args.extend_from_slice(extra);
    swaks(port, &args)
}

#[test]
fn postfix_delivers_to_maildir_over_starttls() {
    let pf = Postfix::start(PostfixOptions {
        tls: true,
        ..Default::default()
    });
    let out = send(pf.port, "ext@fabrikam.test", "fixture tls", &["--tls"]);
    assert_success(&out);

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
    let out = send(pf.port, "nobody@fabrikam.test", "fixture reject", &[]);
    assert!(!out.status.success(), "accepted: {}", output_text(&out));
    assert!(
        output_text(&out).contains("550 5.1.1"),
        "{}",
        output_text(&out)
    );
    // Not its domain: a destination MX, not a relay.
    let out = send(pf.port, "someone@elsewhere.test", "fixture relay", &[]);
    assert!(
        output_text(&out).contains("Relay access denied"),
        "{}",
        output_text(&out)
    );
    // No STARTTLS without `tls`.
    let out = send(pf.port, "ok@fabrikam.test", "fixture no tls", &["--tls"]);
    assert!(!out.status.success(), "{}", output_text(&out));

    let out = send(pf.port, "ok@fabrikam.test", "fixture ok", &[]);
    assert_success(&out);
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
    let out = send(port, "back@fabrikam.test", "fixture restart", &[]);
    assert_success(&out);
    pf.wait_messages(1);
}

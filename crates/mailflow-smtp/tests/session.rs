//! Drives the session state machine without sockets, including byte-by-byte input and
//! hostile input.

use mailflow_smtp::{Enhanced, Event, Reply, Session, SessionConfig};

/// A driver that accepts every decision and records what the session produced.
struct Harness {
    session: Session,
    output: String,
    content: Vec<u8>,
    events: Vec<String>,
}

impl Harness {
    fn new(config: SessionConfig) -> Harness {
        let mut session = Session::new(config);
        let output = String::from_utf8(session.take_output()).unwrap();
        Harness {
            session,
            output,
            content: Vec::new(),
            events: Vec::new(),
        }
    }

    fn feed(&mut self, bytes: &[u8], piece: usize) {
        for chunk in bytes.chunks(piece.max(1)) {
            self.session.feed(chunk);
            self.pump();
        }
    }

    fn pump(&mut self) {
        while let Some(ev) = self.session.next_event() {
            match ev {
                Event::Mail { .. } => {
                    self.events.push("mail".into());
                    self.session
                        .respond(Reply::new(250, Enhanced(2, 1, 0), "Sender OK"))
                }
                Event::Rcpt { to, .. } => {
                    self.events.push(format!("rcpt {}", to.key()));
                    if to.local == "nobody" {
                        self.session
                            .respond(Reply::new(550, Enhanced(5, 1, 1), "not found"))
                    } else {
                        self.session
                            .respond(Reply::new(250, Enhanced(2, 1, 5), "Recipient OK"))
                    }
                }
                Event::DataStart => {
                    self.events.push("datastart".into());
                    self.session.respond(Reply::plain(354, "go"))
                }
                Event::Data(d) => self.content.extend_from_slice(&d),
                Event::DataEnd => {
                    self.events.push("dataend".into());
                    self.session
                        .respond(Reply::new(250, Enhanced(2, 6, 0), "Queued"))
                }
                Event::Auth {
                    username, password, ..
                } => {
                    self.events.push(format!("auth {username}"));
                    if password == "secret" {
                        self.session.respond(Reply::new(
                            235,
                            Enhanced(2, 7, 0),
                            "Authentication successful",
                        ))
                    } else {
                        self.session.respond(Reply::new(
                            535,
                            Enhanced(5, 7, 8),
                            "Authentication credentials invalid",
                        ))
                    }
                }
                other => self.events.push(format!("{other:?}")),
            }
        }
        self.output
            .push_str(&String::from_utf8_lossy(&self.session.take_output()));
    }

    /// Reply codes in order (last line of each reply).
    fn codes(&self) -> Vec<String> {
        self.output
            .lines()
            .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
            .map(|l| l[..3].to_string())
            .collect()
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        max_message_size: 1000,
        max_recipients: 3,
        ..SessionConfig::default()
    }
}

#[test]
fn pipelined_transaction_byte_by_byte() {
    let script = b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<nobody@y.test>\r\nDATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
    for piece in [1, 3, 1000] {
        let mut h = Harness::new(config());
        h.feed(script, piece);
        assert_eq!(
            h.codes(),
            ["220", "250", "250", "250", "550", "354", "250", "221"],
            "piece {piece}"
        );
        assert_eq!(h.content, b"Subject: hi\r\n\r\n.dot\r\n");
        assert!(h.session.is_closed());
        assert!(h.events.contains(&"Close".to_string()));
    }
}

#[test]
fn ehlo_advertises_extensions_and_no_auth_before_tls() {
    let mut h = Harness::new(SessionConfig {
        starttls: true,
        auth_mechanisms: vec!["PLAIN".into(), "LOGIN".into()],
        ..config()
    });
    h.feed(b"EHLO c\r\n", 100);
    for ext in [
        "SIZE 1000",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "8BITMIME",
        "CHUNKING",
        "SMTPUTF8",
    ] {
        assert!(h.output.contains(ext), "missing {ext}: {}", h.output);
    }
    assert!(!h.output.contains("AUTH"), "AUTH offered before TLS");
    h.feed(b"AUTH PLAIN AGEAc2VjcmV0\r\n", 100);
    assert!(h.output.contains("538 5.7.11"), "{}", h.output);
}

#[test]
fn sequence_errors_and_error_limit() {
    let mut h = Harness::new(config());
    h.feed(b"MAIL FROM:<a@x.test>\r\n", 100);
    assert!(h.output.contains("503 5.5.2 Send hello first"));
    h.feed(b"EHLO c\r\nRCPT TO:<b@y.test>\r\nDATA\r\nFOO\r\n", 100);
    assert!(h.output.contains("503 5.5.1 Need mail command"));
    assert!(h.output.contains("500 5.3.3 Unrecognized command"));
    assert!(!h.session.is_closed());
    h.feed(b"BAR\r\n", 100);
    assert!(
        h.output.contains("421 4.7.0 Too many errors"),
        "{}",
        h.output
    );
    assert!(h.session.is_closed());
}

#[test]
fn overlong_command_line_is_refused_and_session_survives() {
    let mut h = Harness::new(config());
    let mut line = b"EHLO ".to_vec();
    line.extend(std::iter::repeat_n(b'a', 10 * 1024));
    line.extend_from_slice(b"\r\nNOOP\r\n");
    h.feed(&line, 512);
    assert!(h.output.contains("500 5.5.2 Line too long"), "{}", h.output);
    assert!(h.output.ends_with("250 2.0.0 OK\r\n"), "{}", h.output);
    assert!(!h.session.is_closed());
}

#[test]
fn oversized_message_is_refused_after_data() {
    let mut h = Harness::new(config());
    let mut script = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n".to_vec();
    for _ in 0..50 {
        script.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    script.extend_from_slice(b".\r\nNOOP\r\n");
    h.feed(&script, 64);
    assert!(
        h.output
            .contains("552 5.3.4 Message size exceeds fixed maximum message size"),
        "{}",
        h.output
    );
    assert!(!h.events.contains(&"dataend".to_string()));
    assert!(h.output.ends_with("250 2.0.0 OK\r\n"));
    // Declared SIZE over the limit is refused at MAIL (RFC 1870).
    h.feed(b"MAIL FROM:<a@x.test> SIZE=5000\r\n", 100);
    assert!(
        h.output
            .ends_with("552 5.3.4 Message size exceeds fixed maximum message size\r\n")
    );
}

#[test]
fn smuggled_end_of_data_is_not_honoured() {
    let mut h = Harness::new(config());
    h.feed(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nbody\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<c@y.test>\r\n.\r\n", 7);
    // One MAIL only: the smuggled commands were content, and the message is refused.
    assert_eq!(h.events.iter().filter(|e| *e == "mail").count(), 1);
    assert!(h.output.contains("550 5.6.11"), "{}", h.output);
}

#[test]
fn too_many_recipients_gets_452() {
    let mut h = Harness::new(config());
    h.feed(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b1@y.test>\r\nRCPT TO:<b2@y.test>\r\nRCPT TO:<b3@y.test>\r\nRCPT TO:<b4@y.test>\r\n", 100);
    assert!(
        h.output.ends_with("452 4.5.3 Too many recipients\r\n"),
        "{}",
        h.output
    );
}

#[test]
fn bdat_chunks_and_refusals() {
    let mut h = Harness::new(config());
    h.feed(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 5\r\nHel\r\nBDAT 4 LAST\r\nlo\r\n", 2);
    assert_eq!(h.content, b"Hel\r\nlo\r\n");
    assert!(h.output.contains("250 2.0.0 5 bytes received"));
    assert!(h.output.ends_with("250 2.6.0 Queued\r\n"), "{}", h.output);
    // BDAT without MAIL: the chunk is read and discarded, not run as commands.
    let mut h = Harness::new(config());
    h.feed(b"EHLO c\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n", 100);
    assert!(h.output.contains("503 5.5.1 Need mail command"));
    assert!(
        !h.session.is_closed(),
        "QUIT inside a BDAT chunk must not be executed"
    );
    assert!(h.output.ends_with("250 2.0.0 OK\r\n"));
    // A bare LF in BDAT content is refused at LAST.
    let mut h = Harness::new(config());
    h.feed(
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 3 LAST\r\na\nb",
        100,
    );
    assert!(h.output.contains("550 5.6.11"), "{}", h.output);
}

#[test]
fn starttls_discards_pipelined_plaintext() {
    let mut h = Harness::new(SessionConfig {
        starttls: true,
        ..config()
    });
    h.feed(
        b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@x.test>\r\n",
        100,
    );
    assert!(h.events.contains(&"StartTls".to_string()));
    assert!(!h.events.contains(&"mail".to_string()));
    h.session.tls_established();
    h.feed(b"MAIL FROM:<a@x.test>\r\n", 100);
    assert!(
        h.output.ends_with("503 5.5.2 Send hello first\r\n"),
        "{}",
        h.output
    );
}

#[test]
fn auth_plain_and_login() {
    let cfg = SessionConfig {
        auth_mechanisms: vec!["PLAIN".into(), "LOGIN".into()],
        ..config()
    };
    let mut h = Harness::new(cfg.clone());
    h.session.tls_established();
    // \0alice\0wrong then \0alice\0secret
    h.feed(
        b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
        100,
    );
    assert!(h.output.contains("535 5.7.8"));
    assert!(
        h.output
            .ends_with("235 2.7.0 Authentication successful\r\n")
    );
    assert!(h.session.is_authenticated());
    let mut h = Harness::new(cfg);
    h.session.tls_established();
    h.feed(b"EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n", 1);
    assert!(h.events.contains(&"auth alice".to_string()));
    assert!(h.session.is_authenticated());
}

#[test]
fn each_protocol_error_counts_towards_the_limit() {
    let mut h = Harness::new(config());
    h.feed(b"EHLO c\r\nHELLO THERE\r\n", 100);
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 10 * 1024));
    long.extend_from_slice(b"\r\n");
    h.feed(&long, 1460);
    h.feed(b"NOOP\r\n", 100);
    h.feed(b"\x00\xff\xfe junk\r\n", 100);
    h.feed(b"WHAT\r\n", 100);
    assert!(!h.session.is_closed(), "{}", h.output);
    h.feed(b"RCPT TO:<a@b.test>\r\n", 100);
    assert!(h.output.contains("421 4.7.0"), "{}", h.output);
}

#[test]
fn hello_with_control_characters_or_no_domain_gets_501_5_5_4() {
    for bad in [
        &b"EHLO bad\0name\r\n"[..],
        b"EHLO evil\x1b[31m.test\r\n",
        b"HELO a\rb.test\r\n",
        b"EHLO -dash.test\r\n",
        b"EHLO a..b\r\n",
        b"EHLO [999.1.1.1]\r\n",
        b"EHLO <x@y>\r\n",
    ] {
        let mut h = Harness::new(config());
        h.feed(bad, 100);
        assert!(
            h.output.ends_with("501 5.5.4 Invalid domain name\r\n"),
            "{:?}: {}",
            String::from_utf8_lossy(bad),
            h.output
        );
        assert!(!h.events.iter().any(|e| e.starts_with("Hello")));
    }
    for good in [
        "EHLO client.test",
        "EHLO c",
        "EHLO [127.0.0.1]",
        "EHLO [IPv6:::1]",
        "EHLO WIN_PC01.corp.test.",
    ] {
        let mut h = Harness::new(config());
        h.feed(format!("{good}\r\n").as_bytes(), 100);
        assert!(h.output.contains("\r\n250 "), "{good}: {}", h.output);
    }
}

#[test]
fn nul_byte_in_data_or_bdat_is_refused_with_550_5_6_0() {
    let mut h = Harness::new(config());
    h.feed(
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\na\0b\r\n.\r\n",
        3,
    );
    assert!(
        h.output
            .ends_with("550 5.6.0 NUL characters are not allowed in message content\r\n"),
        "{}",
        h.output
    );
    assert!(!h.events.contains(&"dataend".to_string()));
    let mut h = Harness::new(config());
    h.feed(
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 3\r\na\0bBDAT 2 LAST\r\n\r\n",
        100,
    );
    assert!(h.output.contains("550 5.6.0"), "{}", h.output);
    assert!(!h.events.contains(&"dataend".to_string()));
}

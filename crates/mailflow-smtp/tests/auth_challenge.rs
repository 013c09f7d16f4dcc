//! SASL mechanisms whose challenge comes from the driver (mailflow's
//! X-MAILFLOW-SERVER): `AuthStart`, `Session::auth_challenge`, `AuthResponse`, and
//! the final reply, with PLAIN and LOGIN still run by the session itself.

use mailflow_smtp::{Enhanced, Event, Reply, Session, SessionConfig};

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".into(),
        banner: "mx.test ESMTP".into(),
        auth_mechanisms: vec!["PLAIN".into(), "LOGIN".into(), "X-TEST".into()],
        ..SessionConfig::default()
    }
}

/// A driver that answers AuthStart with the challenge `chal` and accepts the
/// response `good` (refusing anything else), and records every event.
struct Driver {
    session: Session,
    output: String,
    events: Vec<Event>,
    /// Challenges still to send before the final answer (multi-round mechanisms).
    rounds: usize,
}

impl Driver {
    fn new(config: SessionConfig, tls: bool) -> Driver {
        let mut session = Session::new(config);
        if tls {
            session.tls_established();
        }
        let output = String::from_utf8(session.take_output()).unwrap();
        Driver {
            session,
            output,
            events: Vec::new(),
            rounds: 1,
        }
    }

    fn feed(&mut self, bytes: &[u8], piece: usize) {
        for chunk in bytes.chunks(piece.max(1)) {
            self.session.feed(chunk);
            while let Some(ev) = self.session.next_event() {
                match &ev {
                    Event::AuthStart { initial, .. } => {
                        if initial.as_deref() == Some(b"refuse") {
                            self.session.respond(Reply::new(
                                535,
                                Enhanced(5, 7, 8),
                                "Authentication credentials invalid",
                            ));
                        } else {
                            self.session.auth_challenge(b"chal");
                        }
                    }
                    Event::AuthResponse { response, .. } => {
                        if self.rounds > 1 {
                            self.rounds -= 1;
                            self.session.auth_challenge(b"again");
                        } else if response == b"good" {
                            self.session.respond(Reply::new(
                                235,
                                Enhanced(2, 7, 0),
                                "Authentication successful",
                            ));
                        } else {
                            self.session.respond(Reply::new(
                                535,
                                Enhanced(5, 7, 8),
                                "Authentication credentials invalid",
                            ));
                        }
                    }
                    Event::Auth { .. } => self.session.respond(Reply::new(
                        235,
                        Enhanced(2, 7, 0),
                        "Authentication successful",
                    )),
                    Event::Mail { .. } => {
                        self.session
                            .respond(Reply::new(250, Enhanced(2, 1, 0), "Sender OK"))
                    }
                    _ => {}
                }
                self.events.push(ev);
            }
            self.output
                .push_str(&String::from_utf8(self.session.take_output()).unwrap());
        }
    }

    fn starts(&self) -> Vec<(&str, Option<&[u8]>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::AuthStart { mechanism, initial } => {
                    Some((mechanism.as_str(), initial.as_deref()))
                }
                _ => None,
            })
            .collect()
    }

    fn responses(&self) -> Vec<&[u8]> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::AuthResponse { response, .. } => Some(response.as_slice()),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn challenge_from_the_driver_then_response_then_final_reply() {
    for piece in [1, 3, 100] {
        let mut d = Driver::new(config(), true);
        // "id" as initial response; "good" as the answer to the challenge.
        d.feed(b"EHLO c\r\n", 100);
        assert!(
            d.output.contains("250-AUTH PLAIN LOGIN X-TEST\r\n"),
            "{}",
            d.output
        );
        d.feed(b"AUTH X-TEST aWQ=\r\n", piece);
        assert_eq!(d.starts(), vec![("X-TEST", Some(&b"id"[..]))]);
        assert!(d.output.ends_with("334 Y2hhbA==\r\n"), "{}", d.output);
        assert!(!d.session.is_authenticated());
        d.feed(b"Z29vZA==\r\n", piece);
        assert_eq!(d.responses(), vec![&b"good"[..]]);
        assert!(
            d.output
                .ends_with("235 2.7.0 Authentication successful\r\n"),
            "{}",
            d.output
        );
        assert!(d.session.is_authenticated());
        // The exchange is over: the next line is a command again.
        d.feed(b"MAIL FROM:<a@b.test>\r\n", piece);
        assert!(
            d.output.ends_with("250 2.1.0 Sender OK\r\n"),
            "{}",
            d.output
        );
        // Credentials never reach the protocol log.
        let (received, _) = d.session.take_log();
        assert!(
            received.contains(&"AUTH X-TEST ****".to_string()),
            "{received:?}"
        );
        assert!(
            received.contains(&"<AUTH X-TEST response>".to_string()),
            "{received:?}"
        );
        assert!(
            !received.iter().any(|l| l.contains("Z29vZA")),
            "{received:?}"
        );
    }
}

#[test]
fn a_wrong_response_is_refused_and_a_new_auth_starts_over() {
    let mut d = Driver::new(config(), true);
    d.feed(b"EHLO c\r\nAUTH X-TEST aWQ=\r\nYmFk\r\n", 100);
    assert_eq!(d.responses(), vec![&b"bad"[..]]);
    assert!(
        d.output
            .ends_with("535 5.7.8 Authentication credentials invalid\r\n")
    );
    assert!(!d.session.is_authenticated());
    // The next line is a command, not a second try at the old challenge.
    d.feed(b"Z29vZA==\r\n", 100);
    assert_eq!(d.responses().len(), 1);
    assert!(
        d.output.ends_with("500 5.3.3 Unrecognized command\r\n"),
        "{}",
        d.output
    );
    d.feed(b"AUTH X-TEST aWQ=\r\nZ29vZA==\r\n", 100);
    assert_eq!(d.starts().len(), 2);
    assert!(d.session.is_authenticated());
    // Once authenticated, AUTH is a sequence error.
    d.feed(b"AUTH X-TEST aWQ=\r\n", 100);
    assert!(d.output.ends_with("503 5.5.1 Already authenticated\r\n"));
    assert_eq!(d.starts().len(), 2);
}

#[test]
fn the_driver_can_refuse_at_start_without_a_challenge() {
    let mut d = Driver::new(config(), true);
    // "refuse" as the initial response.
    d.feed(b"EHLO c\r\nAUTH X-TEST cmVmdXNl\r\n", 100);
    assert!(
        d.output
            .ends_with("535 5.7.8 Authentication credentials invalid\r\n")
    );
    assert!(!d.output.contains("334"));
    // Not waiting for a response: the next line is a command.
    d.feed(b"NOOP\r\n", 100);
    assert!(d.output.ends_with("250 2.0.0 OK\r\n"), "{}", d.output);
}

#[test]
fn star_cancels_and_bad_base64_is_501() {
    let mut d = Driver::new(config(), true);
    d.feed(b"EHLO c\r\nAUTH X-TEST aWQ=\r\n*\r\n", 100);
    assert!(d.output.ends_with("501 5.0.0 Authentication cancelled\r\n"));
    assert!(d.responses().is_empty());
    d.feed(b"AUTH X-TEST aWQ=\r\n!!notbase64\r\n", 100);
    assert!(d.output.ends_with("501 5.5.2 Invalid base64 data\r\n"));
    assert!(d.responses().is_empty());
    d.feed(b"AUTH X-TEST !!\r\n", 100);
    assert!(d.output.ends_with("501 5.5.2 Invalid base64 data\r\n"));
    assert_eq!(
        d.starts().len(),
        2,
        "no AuthStart for an undecodable initial response"
    );
    assert!(!d.session.is_authenticated());
}

#[test]
fn initial_response_absent_empty_or_given() {
    let mut d = Driver::new(config(), true);
    d.feed(b"EHLO c\r\nAUTH X-TEST\r\n*\r\nAUTH X-TEST =\r\n*\r\n", 100);
    assert_eq!(
        d.starts(),
        vec![("X-TEST", None), ("X-TEST", Some(&b""[..]))]
    );
    // `=` as a response is an empty one.
    d.feed(b"AUTH X-TEST aWQ=\r\n=\r\n", 100);
    assert_eq!(d.responses(), vec![&b""[..]]);
}

#[test]
fn several_rounds_of_challenges() {
    let mut d = Driver::new(config(), true);
    d.rounds = 2;
    d.feed(b"EHLO c\r\nAUTH X-TEST aWQ=\r\nb25l\r\n", 100);
    assert!(d.output.ends_with("334 YWdhaW4=\r\n"), "{}", d.output);
    d.feed(b"Z29vZA==\r\n", 100);
    assert_eq!(d.responses(), vec![&b"one"[..], &b"good"[..]]);
    assert!(d.session.is_authenticated());
}

#[test]
fn the_mechanism_needs_tls_and_a_configured_name() {
    let mut d = Driver::new(config(), false);
    d.feed(b"EHLO c\r\nAUTH X-TEST aWQ=\r\n", 100);
    assert!(
        d.output
            .ends_with("538 5.7.11 Encryption required for requested authentication mechanism\r\n")
    );
    let mut d = Driver::new(config(), true);
    d.feed(b"EHLO c\r\nAUTH X-OTHER aWQ=\r\n", 100);
    assert!(
        d.output
            .ends_with("504 5.7.4 Unrecognized authentication type\r\n")
    );
    assert!(d.starts().is_empty());
    // Without PLAIN configured, PLAIN is refused even though the session knows it.
    let cfg = SessionConfig {
        auth_mechanisms: vec!["X-TEST".into()],
        ..config()
    };
    let mut d = Driver::new(cfg, true);
    d.feed(b"EHLO c\r\nAUTH PLAIN AGEAYg==\r\n", 100);
    assert!(d.output.contains("250-AUTH X-TEST\r\n"), "{}", d.output);
    assert!(
        d.output
            .ends_with("504 5.7.4 Unrecognized authentication type\r\n")
    );
    assert!(!d.session.is_authenticated());
}

#[test]
fn plain_and_login_still_run_in_the_session() {
    let mut d = Driver::new(config(), true);
    d.feed(b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", 100);
    assert!(matches!(
        d.events.last(),
        Some(Event::Auth { mechanism, username, .. }) if mechanism == "PLAIN" && username == "alice"
    ));
    assert!(d.starts().is_empty());
    assert!(d.session.is_authenticated());
}

#[test]
fn a_challenge_nobody_asked_for_is_answered_454() {
    let mut s = Session::new(config());
    s.take_output();
    s.auth_challenge(b"x");
    assert_eq!(
        String::from_utf8(s.take_output()).unwrap(),
        "454 4.7.0 Temporary authentication failure\r\n"
    );
}

#[test]
fn an_overlong_response_line_ends_the_exchange() {
    let mut d = Driver::new(config(), true);
    let long = "a".repeat(3000);
    d.feed(
        format!("EHLO c\r\nAUTH X-TEST aWQ=\r\n{long}\r\nNOOP\r\n").as_bytes(),
        7,
    );
    assert!(d.output.contains("500 5.5.2 Line too long"), "{}", d.output);
    assert!(d.output.ends_with("250 2.0.0 OK\r\n"), "{}", d.output);
    assert!(d.responses().is_empty());
}

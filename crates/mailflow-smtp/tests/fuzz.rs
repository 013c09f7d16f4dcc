//! Property tests of everything in the SMTP core that reads bytes from outside: the
//! command parser, addresses, xtext/ORCPT, the DATA decoder and dot-stuffer, and the
//! whole session fed arbitrary bytes in arbitrary fragments. None may panic, and each
//! keeps a real invariant (see each target). `MAILFLOW_FUZZ_SECONDS` turns the fixed
//! cases into a timed run (`scripts/fuzz`).

#[path = "../fuzz/harness.rs"]
mod harness;

use harness::{CASES, fuzz, replay};
use mailflow_smtp::command::parse_command;
use mailflow_smtp::data::{DataDecoder, Decoded, DotStuffer};
use mailflow_smtp::xtext::{self, OriginalRecipient};
use mailflow_smtp::{Address, Command, Enhanced, Event, Reply, Session, SessionConfig};
use proptest::prelude::*;

/// Pieces of SMTP a client might send, well formed or not, for building sessions and
/// command lines that get past the first check.
fn smtp_token() -> impl Strategy<Value = Vec<u8>> {
    let fixed = prop::sample::select(vec![
        "EHLO client.test\r\n",
        "HELO x\r\n",
        "MAIL FROM:<a@b.test>\r\n",
        "MAIL FROM:<> BODY=8BITMIME SMTPUTF8 ENVID=x+2By RET=HDRS\r\n",
        "MAIL FROM:<j\u{f6}rg@b.test> SIZE=99999999\r\n",
        "RCPT TO:<c@d.test>\r\n",
        "RCPT TO:<nobody@d.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+2By@z\r\n",
        "RCPT TO:<alice@contoso.test> NOTIFY=SUCCESS ORCPT=rfc822;+A\u{e9}\r\n",
        "RCPT TO:<c@d.test> ORCPT=utf-8;j\u{f6}rg@d.test\r\n",
        "RCPT TO:<Postmaster>\r\n",
        "DATA\r\n",
        "BDAT 5\r\n",
        "BDAT 0 LAST\r\n",
        "BDAT 3 LAST\r\n",
        ".\r\n",
        "..x\r\n",
        "\r\n.\r\n",
        "RSET\r\n",
        "NOOP\r\n",
        "QUIT\r\n",
        "VRFY x\r\n",
        "AUTH PLAIN\r\n",
        "AUTH PLAIN AGEAYg==\r\n",
        "AUTH LOGIN\r\n",
        "AUTH X-CHALLENGE\r\n",
        "AUTH X-CHALLENGE aWQ=\r\n",
        "AUTH X-CHALLENGE =\r\n",
        "Z29vZA==\r\n",
        "YQ==\r\n",
        "*\r\n",
        "STARTTLS\r\n",
        "\r\n",
        "\n",
        "\r",
        "Subject: caf\u{e9}\r\n",
    ])
    .prop_map(|s: &str| s.as_bytes().to_vec());
    prop_oneof![
        6 => fixed,
        2 => "[ -~]{0,40}\r\n".prop_map(String::into_bytes),
        2 => "(MAIL FROM|RCPT TO):<[a-z.@\\\\\"+é]{0,12}>( [A-Z]{1,6}=[ -~é]{0,12}){0,3}\r\n"
            .prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 0..48),
        1 => (2040usize..2200).prop_map(|n| {
            let mut line = vec![b'a'; n];
            line.extend_from_slice(b"\r\n");
            line
        }),
    ]
}

fn smtp_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(smtp_token(), 0..24).prop_map(|t| t.concat())
}

/// Cut points for splitting an input into fragments (taken modulo its length).
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..12)
}

fn fragments<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    at.push(0);
    at.push(input.len());
    at.sort_unstable();
    at.windows(2).map(|w| &input[w[0]..w[1]]).collect()
}

// ---- parse_command and addresses -------------------------------------------------

/// The two inputs that crashed a delivery queue before ORCPT was checked as xtext.
const COMMAND_REGRESSIONS: &[&[u8]] = &[
    "RCPT TO:<alice@contoso.test> NOTIFY=SUCCESS ORCPT=rfc822;+A\u{e9}".as_bytes(),
    b"RCPT TO:<a@b.test> ORCPT=rfc822;+",
    b"MAIL FROM:<a@b.test> ENVID=+\xc3",
];

fn check_command(line: Vec<u8>) -> Result<(), TestCaseError> {
    match parse_command(&line) {
        Err(reply) => {
            prop_assert!((500..=555).contains(&reply.code), "{reply:?}");
        }
        Ok(Command::Mail(Some(a), p)) => {
            check_address_round_trip(&a)?;
            if let Some(envid) = &p.envid {
                prop_assert!(xtext::check_envid(envid).is_ok());
            }
        }
        Ok(Command::Rcpt(a, p)) => {
            if !a.domain.is_empty() {
                check_address_round_trip(&a)?;
            }
            if let Some(orcpt) = &p.orcpt {
                let o = OriginalRecipient::parse(orcpt);
                prop_assert!(o.is_ok(), "accepted ORCPT {orcpt:?} does not decode");
                let report = o.map(|o| o.report_value()).unwrap_or_default();
                prop_assert!(report.bytes().all(|b| (b' '..=b'~').contains(&b)));
            }
        }
        Ok(_) => {}
    }
    Ok(())
}

fn check_address_round_trip(a: &Address) -> Result<(), TestCaseError> {
    let again = Address::parse(&a.to_string(), true);
    prop_assert_eq!(again.as_ref(), Ok(a), "{} does not re-parse", a);
    prop_assert_eq!(Address::parse(&a.key(), true).map(|k| k.key()), Ok(a.key()));
    Ok(())
}

#[test]
fn parse_command_never_panics_and_what_it_accepts_is_consistent() {
    replay(
        COMMAND_REGRESSIONS.iter().map(|l| l.to_vec()),
        check_command,
    );
    let line = prop_oneof![
        smtp_token().prop_map(|mut t| {
            while matches!(t.last(), Some(b'\r' | b'\n')) {
                t.pop();
            }
            t
        }),
        prop::collection::vec(any::<u8>(), 0..96),
    ];
    fuzz("parse_command", CASES, line, check_command);
}

#[test]
fn an_address_that_parses_redisplays_and_reparses_to_itself() {
    let text = prop_oneof![
        "[a-zA-Z0-9.!#+\"\\\\ é@-]{0,24}@[a-zA-Z0-9.é\\[\\]:-]{0,24}",
        ".{0,80}",
    ];
    fuzz("address", CASES, (text, any::<bool>()), |(text, utf8)| {
        if let Ok(a) = Address::parse(&text, utf8) {
            check_address_round_trip(&a)?;
            prop_assert!(utf8 || text.is_ascii());
        }
        Ok(())
    });
}

#[test]
fn xtext_round_trips_and_orcpt_decodes_or_is_refused() {
    let value = prop_oneof![
        "[a-z0-9;+=\\\\{}x.@-]{0,24}",
        "(rfc822|utf-8|x400);[ -~é]{0,30}",
        ".{0,40}",
    ];
    fuzz(
        "xtext",
        CASES,
        (prop::collection::vec(any::<u8>(), 0..40), value),
        |(bytes, value)| {
            let encoded = xtext::encode_xtext(&bytes);
            prop_assert_eq!(xtext::decode_xtext(&encoded), Ok(bytes.clone()));
            if let Ok(o) = OriginalRecipient::parse(&value) {
                let report = o.report_value();
                prop_assert!(report.bytes().all(|b| (b' '..=b'~').contains(&b)));
            }
            // A printable address survives rfc822 xtext both ways.
            if !bytes.is_empty() && bytes.iter().all(|&b| (b' '..=b'~').contains(&b)) {
                let orcpt = OriginalRecipient::parse(&format!("rfc822;{encoded}"));
                let address = String::from_utf8(bytes).unwrap_or_default();
                prop_assert_eq!(orcpt.map(|o| o.address), Ok(address));
            }
            Ok(())
        },
    );
}

// ---- DATA ------------------------------------------------------------------------

/// Decodes fragments as a driver does (unconsumed bytes kept for the next read):
/// (content, bytes consumed through the terminator, bare newline seen).
fn decode(fragments: &[&[u8]]) -> (Vec<u8>, Option<usize>, bool) {
    let mut d = DataDecoder::default();
    let (mut out, mut buf, mut consumed) = (Vec::new(), Vec::new(), 0);
    for f in fragments {
        buf.extend_from_slice(f);
        match d.decode(&buf, &mut out) {
            Decoded::More(n) => {
                consumed += n;
                buf.drain(..n.min(buf.len()));
            }
            Decoded::End(n) => return (out, Some(consumed + n), d.bare_newline),
        }
    }
    (out, None, d.bare_newline)
}

fn content_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            &b"\r\n"[..],
            b".",
            b"\r\n.\r\n",
            b"\r\n..",
            b"\n.\n",
            b"\r",
            b"\n",
            b"a",
            b"\xe9",
        ])
        .prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 0..16),
        // Longer than the decoder's 8 KiB pending limit: the streaming path.
        (8190usize..8200).prop_map(|n| vec![b'x'; n]),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|p| p.concat())
}

#[test]
fn data_decoder_output_does_not_depend_on_fragmenting() {
    fuzz(
        "data_decoder",
        CASES,
        (content_bytes(), cuts()),
        |(input, cuts)| {
            let whole = decode(&[&input]);
            // Byte by byte as well, where that stays cheap (each read rescans the
            // pending partial line).
            let piece = if input.len() < 2048 { 1 } else { 512 };
            let small: Vec<&[u8]> = input.chunks(piece).collect();
            for other in [decode(&fragments(&input, &cuts)), decode(&small)] {
                if whole.1.is_some() || other.1.is_some() {
                    prop_assert_eq!(&whole, &other, "different content or end");
                } else {
                    // Without the terminator a partial line may still be held back, a
                    // different part of it depending on the reads; what was passed on
                    // agrees.
                    let n = whole.0.len().min(other.0.len());
                    prop_assert!(whole.0[..n] == other.0[..n], "different content");
                }
            }
            Ok(())
        },
    );
}

#[test]
fn dot_stuffed_content_decodes_back_to_itself() {
    fuzz(
        "dot_stuffer",
        CASES,
        (content_bytes(), cuts(), cuts()),
        |(content, send_cuts, read_cuts)| {
            let mut stuffer = DotStuffer::default();
            let mut wire = Vec::new();
            for f in fragments(&content, &send_cuts) {
                stuffer.stuff(f, &mut wire);
            }
            stuffer.finish(&mut wire);
            let (out, end, _) = decode(&fragments(&wire, &read_cuts));
            let mut expected = content.clone();
            if !expected.is_empty() && !expected.ends_with(b"\r\n") {
                expected.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(end, Some(wire.len()), "the terminator ends the data");
            prop_assert_eq!(out, expected);
            Ok(())
        },
    );
}

// ---- the session -----------------------------------------------------------------

/// What a session did with some input, independent of how the input was split.
#[derive(Debug, PartialEq, Eq, Default)]
struct Transcript {
    output: Vec<u8>,
    events: Vec<String>,
    /// The content of each message the session completed.
    messages: Vec<Vec<u8>>,
    closed: bool,
}

/// Drives a session like the receive connector does, accepting what it is asked
/// (but refusing `nobody@`, empty passwords and challenge responses other than `good`).
fn run_session(fragments: &[&[u8]]) -> Transcript {
    let config = SessionConfig {
        max_message_size: 4096,
        max_recipients: 3,
        auth_mechanisms: vec!["PLAIN".into(), "LOGIN".into(), "X-CHALLENGE".into()],
        auth_requires_tls: false,
        ..SessionConfig::default()
    };
    let mut s = Session::new(config);
    let mut t = Transcript::default();
    let mut content = Vec::new();
    for f in fragments {
        s.feed(f);
        // Each event consumes input or waits for a reply; bounded all the same.
        for _ in 0..100_000 {
            let Some(ev) = s.next_event() else { break };
            match &ev {
                Event::Data(d) => {
                    content.extend_from_slice(d);
                    continue;
                }
                Event::DataEnd => t.messages.push(std::mem::take(&mut content)),
                Event::DataRejected(_) | Event::Reset | Event::Hello { .. } => content.clear(),
                _ => {}
            }
            t.events.push(format!("{ev:?}"));
            let ok = |code, e: (u8, u16, u16)| Reply::new(code, Enhanced(e.0, e.1, e.2), "ok");
            match ev {
                Event::Mail { .. } => s.respond(ok(250, (2, 1, 0))),
                Event::Rcpt { to, .. } if to.local == "nobody" => s.respond(ok(550, (5, 1, 1))),
                Event::Rcpt { .. } => s.respond(ok(250, (2, 1, 5))),
                Event::DataStart => s.respond(Reply::plain(354, "go")),
                Event::DataEnd => s.respond(ok(250, (2, 6, 0))),
                Event::Auth { password, .. } if password.is_empty() => {
                    s.respond(ok(535, (5, 7, 8)))
                }
                Event::Auth { .. } => s.respond(ok(235, (2, 7, 0))),
                // A driver-run mechanism: challenge once, accept only `good`.
                Event::AuthStart { .. } => s.auth_challenge(b"chal"),
                Event::AuthResponse { response, .. } if response == b"good" => {
                    s.respond(ok(235, (2, 7, 0)))
                }
                Event::AuthResponse { .. } => s.respond(ok(535, (5, 7, 8))),
                // No TLS here: the session goes on in clear, as after a failed handshake.
                Event::StartTls => {}
                _ => {}
            }
        }
        t.output.extend_from_slice(&s.take_output());
    }
    t.closed = s.is_closed();
    t
}

/// Found by this target: an overlong line in the middle of AUTH ended the exchange
/// when it arrived in pieces, but not when it arrived whole, so the next line was a
/// command or an AUTH response depending on how TCP cut the stream. And a command
/// pipelined behind a BDAT chunk that was not the last waited for more input.
fn session_regressions() -> Vec<(Vec<u8>, Vec<usize>)> {
    let long = "a".repeat(2100);
    vec![
        (
            b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<Postmaster>\r\nBDAT 5\r\nHELO x\r\n"
                .to_vec(),
            vec![75],
        ),
        (
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nBDAT 5\r\nhelloBDAT 3 LAST\r\nabcQUIT\r\n"
                .to_vec(),
            vec![66],
        ),
        (
            format!("AUTH PLAIN\r\n{long}\r\nNOOP\r\n").into_bytes(),
            vec![2080],
        ),
        (
            format!("AUTH LOGIN\r\nYQ==\r\n{long}\r\nNOOP\r\n").into_bytes(),
            vec![2080],
        ),
        (
            format!("AUTH X-CHALLENGE aWQ=\r\n{long}\r\nNOOP\r\n").into_bytes(),
            vec![2080],
        ),
    ]
}

#[test]
fn a_session_fed_any_bytes_in_any_fragments_stays_in_step() {
    replay(session_regressions(), check_session);
    fuzz("session", CASES, (smtp_bytes(), cuts()), check_session);
}

fn check_session((input, cuts): (Vec<u8>, Vec<usize>)) -> Result<(), TestCaseError> {
    {
        {
            let whole = run_session(&[&input]);
            let pieces = run_session(&fragments(&input, &cuts));
            prop_assert!(
                whole == pieces,
                "out of step:\n whole: {}\npieces: {}",
                String::from_utf8_lossy(&whole.output),
                String::from_utf8_lossy(&pieces.output)
            );
            // Every reply line is `ddd` + space or dash, and CRLF-terminated.
            for line in whole.output.split_inclusive(|&b| b == b'\n') {
                prop_assert!(
                    line.ends_with(b"\r\n"),
                    "{:?}",
                    String::from_utf8_lossy(line)
                );
                prop_assert!(line.len() >= 5 && line[..3].iter().all(u8::is_ascii_digit));
                prop_assert!(matches!(line[3], b' ' | b'-' | b'\r'));
            }
            Ok(())
        }
    }
}

//! Hardening: input that once crashed a parser inside the mail flow is now refused
//! with a precise reply or handled correctly, end to end through the real binary.
//! (The parsers themselves are fuzzed in `crates/mailflow/src/fuzz.rs` and
//! `crates/mailflow-smtp/tests/fuzz.rs`.)

mod common;

use std::time::Duration;

use common::postfix::{Postfix, PostfixOptions};
use common::*;

/// All Inbox messages of `address` as text, once there are `n`.
fn inbox_texts(server: &Server, address: &str, n: u64) -> Vec<String> {
    server.wait_inbox(address, n);
    server
        .export(address)
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

#[test]
fn an_orcpt_that_is_not_xtext_gets_501_at_rcpt_and_mail_flow_goes_on() {
    let server = Server::start();
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    let r = c.cmd("MAIL FROM:<bob@contoso.test>");
    assert!(r.starts_with("250"), "MAIL: {r}");
    // Once a crash of a delivery queue worker when the success DSN was built: the
    // xtext decoder sliced inside the 'é'.
    for bad in [
        "RCPT TO:<alice@contoso.test> NOTIFY=SUCCESS ORCPT=rfc822;+A\u{e9}",
        "RCPT TO:<alice@contoso.test> NOTIFY=SUCCESS ORCPT=rfc822;+",
        "RCPT TO:<alice@contoso.test> ORCPT=alice@contoso.test",
        // RFC 6533: raw UTF-8 only in a transaction with SMTPUTF8.
        "RCPT TO:<alice@contoso.test> ORCPT=utf-8;j\u{f6}rg@contoso.test",
    ] {
        let r = c.cmd(bad);
        assert!(
            r.starts_with("501 5.5.4 Invalid ORCPT parameter"),
            "{bad}: {r}"
        );
    }
    c.cmd("QUIT");
    // A new session: four refusals are close to the limit of protocol errors.
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    let r = c.cmd("MAIL FROM:<bob@contoso.test> ENVID=a=b");
    assert!(r.starts_with("501 5.5.4 Invalid ENVID parameter"), "{r}");
    // AUTH= is xtext too (RFC 4954 §5), decoded by the Transport behind a Front End.
    let r = c.cmd("MAIL FROM:<bob@contoso.test> AUTH=+A\u{e9}");
    assert!(r.starts_with("501 5.5.4 Invalid AUTH parameter"), "{r}");
    // The session and the delivery queues carry on.
    let r = c.send(
        "bob@contoso.test",
        &["alice@contoso.test"],
        &message("after the bad ORCPT", "still flowing\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    server.wait_inbox("alice@contoso.test", 1);
}

#[test]
fn a_valid_orcpt_with_notify_success_gets_a_success_dsn_with_the_decoded_orcpt() {
    let server = Server::start();
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    let r = c.cmd("MAIL FROM:<bob@contoso.test> SMTPUTF8 ENVID=env+2B1");
    assert!(r.starts_with("250"), "MAIL: {r}");
    for rcpt in [
        "RCPT TO:<alice@contoso.test> NOTIFY=SUCCESS ORCPT=rfc822;Alice+2BTag@contoso.test",
        // RFC 6533 utf-8-addr-unitext under SMTPUTF8.
        "RCPT TO:<carol@contoso.test> NOTIFY=SUCCESS ORCPT=utf-8;J\u{f6}rg@contoso.test",
    ] {
        let r = c.cmd(rcpt);
        assert!(r.starts_with("250"), "{rcpt}: {r}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw(message("orcpt report", "hello\r\n").as_bytes());
    let r = c.cmd(".");
    assert!(r.starts_with("250"), "end of data: {r}");
    c.cmd("QUIT");
    server.wait_inbox("alice@contoso.test", 1);
    server.wait_inbox("carol@contoso.test", 1);

    // bob gets the delivered report(s): one per delivery or one for both.
    let reports = wait_for(
        "success DSNs for alice and carol in bob's Inbox",
        Duration::from_secs(60),
        || {
            let all = server.export("bob@contoso.test");
            let text: String = all.iter().map(|m| String::from_utf8_lossy(m)).collect();
            (text.matches("Action: delivered").count() >= 2).then_some(text)
        },
    );
    // RFC 3464 §2.3.1: the ORCPT decoded; the delivery-status part is 7-bit, so a
    // utf-8 address is given as RFC 6533 utf-8-addr-xtext.
    assert!(
        reports.contains("Original-Recipient: rfc822; Alice+Tag@contoso.test\r\n"),
        "{reports}"
    );
    assert!(
        reports.contains("Original-Recipient: utf-8; J\\x{F6}rg@contoso.test\r\n"),
        "{reports}"
    );
}

#[test]
fn a_header_name_with_utf8_where_the_org_prefix_ends_is_delivered_not_a_crash() {
    let server = Server::start();
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    // Once a panic in the header firewall of SMTP Receive: the 'é' spans bytes 26-27
    // of the name and the prefix X-MS-Exchange-Organization- is 27 bytes long.
    let content = "From: sender@fabrikam.test\r\nTo: alice@contoso.test\r\nSubject: header firewall\r\nX-MS-Exchange-Organization\u{e9}: kept\r\nX-MS-Exchange-Organization-Forged: stripped\r\n\r\nbody\r\n";
    let r = c.cmd("MAIL FROM:<sender@fabrikam.test> BODY=8BITMIME");
    assert!(r.starts_with("250"), "MAIL: {r}");
    let r = c.cmd("RCPT TO:<alice@contoso.test>");
    assert!(r.starts_with("250"), "RCPT: {r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw(content.as_bytes());
    let r = c.cmd(".");
    assert!(r.starts_with("250"), "end of data: {r}");
    c.cmd("QUIT");
    let got = inbox_texts(&server, "alice@contoso.test", 1);
    assert!(
        got[0].contains("X-MS-Exchange-Organization\u{e9}: kept\r\n"),
        "{}",
        got[0]
    );
    assert!(!got[0].contains("Forged: stripped"), "{}", got[0]);
}

/// A Postfix peer for fabrikam.test that does not offer 8BITMIME, and a server whose
/// send connector for fabrikam.test goes to it.
fn behind_a_7bit_peer() -> (Postfix, Server) {
    let postfix = Postfix::start(PostfixOptions {
        main_cf: "smtpd_discard_ehlo_keywords = 8bitmime\n".into(),
        ..Default::default()
    });
    let server = Server::start_custom(
        "",
        &smart_host_connector(
            "To Postfix",
            "fabrikam.test",
            "MBX1",
            postfix.port,
            "tls = \"opportunistic\"\n",
        ),
    );
    (postfix, server)
}

#[test]
fn two_mime_delimiters_in_a_row_reach_a_peer_without_8bitmime_as_7bit_mime() {
    let (postfix, server) = behind_a_7bit_peer();
    let plain = "Gr\u{fc}\u{df}e aus Z\u{fc}rich";
    // Once a panic in the 7-bit downgrade: the second delimiter line took the first
    // one's CRLF, and the empty part between them ended before it began.
    let content = format!(
        "From: alice@contoso.test\r\n\
To: partner@fabrikam.test\r\n\
Subject: empty part\r\n\
Message-ID: <empty-part@fabrikam.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
--b\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
{plain}\r\n\
--b--\r\n"
    );
    // From alice's Outbox (an authenticated submission, as a user's client makes).
    server.send_from_outbox("alice@contoso.test", &content);

    let got = postfix.wait_messages(1);
    let m = &got[0];
    assert!(
        m.is_ascii(),
        "the delivered message is not 7-bit: {}",
        String::from_utf8_lossy(m)
    );
    let text = String::from_utf8_lossy(m);
    assert!(
        text.contains("\r\n\r\n--b\r\n--b\r\nContent-Type: text/plain"),
        "{text}"
    );
    assert!(
        text.contains("Content-Transfer-Encoding: quoted-printable"),
        "{text}"
    );
    let parsed = mail_parser::MessageParser::default()
        .parse(m.as_slice())
        .expect("the delivered message parses");
    assert!(
        parsed
            .parts
            .iter()
            .any(|p| p.text_contents() == Some(plain)),
        "the text part does not decode to the original: {text}"
    );
}

#[test]
fn an_overlong_line_during_auth_ends_the_exchange_so_the_next_line_is_a_command() {
    let server = Server::start();
    // The Transport port offers server AUTH to loopback clients without TLS.
    let mut c = Smtp::connect(server.ports.transport);
    let r = c.cmd("EHLO client.contoso.test");
    assert!(r.contains("AUTH X-MAILFLOW-SERVER"), "{r}");
    // Found by the session fuzz target: whole, the overlong line left the session
    // waiting for the AUTH response, so NOOP was taken for one; in pieces it did not.
    // (HubTransport NUL MBX1: a known server, so the challenge comes.)
    let long = "a".repeat(2100);
    c.send_raw(
        format!("AUTH X-MAILFLOW-SERVER SHViVHJhbnNwb3J0AE1CWDE=\r\n{long}\r\nNOOP\r\n").as_bytes(),
    );
    let r = c.read_reply();
    assert!(r.starts_with("334"), "{r}");
    let r = c.read_reply();
    assert!(r.starts_with("500 5.5.2 Line too long"), "{r}");
    let r = c.read_reply();
    assert!(r.starts_with("250"), "NOOP after the overlong line: {r}");
    c.cmd("QUIT");
}

#[test]
fn a_pickup_file_with_bare_cr_line_ends_is_delivered() {
    let server = Server::start();
    // Found by the Pickup fuzz target: bare LF was normalised, bare CR was queued as is
    // and refused at the next hop (550 bare newline), so the message bounced.
    let pickup = server.data_dir().join("Pickup");
    wait_for("the Pickup folder", Duration::from_secs(20), || {
        pickup.is_dir().then_some(())
    });
    std::fs::write(
        pickup.join("cr.eml.tmp-write"),
        b"From: bob@contoso.test\rTo: alice@contoso.test\rSubject: old Mac line ends\r\rhello\rworld\r",
    )
    .unwrap();
    std::fs::rename(pickup.join("cr.eml.tmp-write"), pickup.join("cr.eml")).unwrap();
    let got = inbox_texts(&server, "alice@contoso.test", 1);
    assert!(got[0].contains("\r\n\r\nhello\r\nworld\r\n"), "{}", got[0]);
    assert_eq!(server.inbox_count("bob@contoso.test"), 0, "no NDR to bob");
}

#[test]
fn a_replay_file_whose_x_headers_a_non_field_line_interrupts_is_badmail() {
    let server = Server::start();
    // Found by the Pickup fuzz target: Replay skipped the X-headers by adding up the
    // lengths of the fields it recognised, so a line that is no field among them made
    // the message start inside a line, with a bare LF that the next hop refuses.
    let replay = server.data_dir().join("Replay");
    wait_for("the Replay folder", Duration::from_secs(20), || {
        replay.is_dir().then_some(())
    });
    let mut file = b"X-Sender: <bob@contoso.test>\r\n\x0e\x80 not a field\n".to_vec();
    file.extend_from_slice(
        b"X-Receiver: <alice@contoso.test>\r\nSubject: replayed\r\n\r\nbody\r\n",
    );
    std::fs::write(replay.join("x.eml.tmp-write"), &file).unwrap();
    std::fs::rename(replay.join("x.eml.tmp-write"), replay.join("x.eml")).unwrap();
    wait_for("x.bad in Replay", Duration::from_secs(30), || {
        replay.join("x.bad").exists().then_some(())
    });
    assert!(
        server.log().contains("no valid X-Receiver header"),
        "{}",
        server.log()
    );
}

#[test]
fn a_command_pipelined_behind_a_bdat_chunk_is_answered_at_once() {
    let server = Server::start();
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    // Found by the session fuzz target: after a BDAT chunk that was not the last, the
    // session waited for more input before reading what was already behind it, so a
    // client that pipelines (RFC 2920, RFC 3030) waited until the timeout.
    let content = message("bdat pipelined", "in two chunks\r\n");
    let (first, last) = content.split_at(20);
    c.send_raw(
        format!(
            "MAIL FROM:<sender@fabrikam.test>\r\nRCPT TO:<alice@contoso.test>\r\nBDAT {}\r\n{first}BDAT {} LAST\r\n{last}",
            first.len(),
            last.len()
        )
        .as_bytes(),
    );
    for what in ["MAIL", "RCPT", "first chunk", "last chunk"] {
        let r = c.read_reply();
        assert!(r.starts_with("250"), "{what}: {r:?}");
    }
    c.cmd("QUIT");
    let got = inbox_texts(&server, "alice@contoso.test", 1);
    assert!(got[0].contains("\r\n\r\nin two chunks\r\n"), "{}", got[0]);
}

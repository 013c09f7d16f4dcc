//! Single-server mail flow, end to end, with real sockets and real clients:
//! Front End :25 → Transport :2525 → Mailbox Delivery :475 → mailbox database.

mod common;
#[path = "common/server_auth.rs"]
mod server_auth;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn events_of(server: &Server, subject: &str) -> Vec<(String, String)> {
    server
        .track(&["--subject", subject])
        .iter()
        .map(|e| {
            (
                e["EventId"].as_str().unwrap().to_string(),
                e["Source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn python_smtplib_and_swaks_deliver_same_body_with_received_headers_and_tracking() {
    let server = Server::start();
    let port = server.ports.frontend;
    // Python's smtplib, with a body that needs dot-stuffing and 8-bit text.
    let body = "Line one\r\n.leading dot line\r\n..two dots\r\nCaf\u{e9} au lait\r\n";
    let script = format!(
        r#"
import smtplib, sys
msg = ("From: Sender <sender@fabrikam.test>\r\nTo: alice@contoso.test\r\nSubject: smtplib probe\r\n"
       "Message-ID: <smtplib-probe@fabrikam.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + {body:?}).encode("utf-8")
with smtplib.SMTP("127.0.0.1", {port}, timeout=30) as s:
    s.ehlo("client.fabrikam.test")
    s.sendmail("sender@fabrikam.test", ["alice@contoso.test"], msg, mail_options=["BODY=8BITMIME"])
"#
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // swaks, inside STARTTLS (the certificate is self-signed, made at start).
    let out = swaks(
        port,
        &[
            "--to",
            "bob@contoso.test",
            "--from",
            "sender@fabrikam.test",
            "--tls",
            "--header",
            "Subject: swaks probe",
            "--body",
            "swaks body line\n.dot line",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks: {text}");
    assert!(text.contains("250 2.6.0"), "swaks got no 250 2.6.0: {text}");

    server.wait_inbox("alice@contoso.test", 1);
    server.wait_inbox("bob@contoso.test", 1);
    let alice = server.export("alice@contoso.test");
    assert_eq!(alice.len(), 1);
    assert_eq!(
        body_of(&alice[0]),
        body.as_bytes(),
        "body bytes changed in transit"
    );
    let received = header_values(&alice[0], "Received");
    assert_eq!(received.len(), 3, "one Received per hop: {received:#?}");
    assert!(
        received[0].contains("via Mailbox Transport"),
        "{received:#?}"
    );
    assert!(
        received[2].contains("via Frontend Transport")
            && received[2].starts_with("from client.fabrikam.test"),
        "{received:#?}"
    );

    let bob = server.export("bob@contoso.test");
    assert_eq!(bob.len(), 1);
    // swaks ends its body with blank lines of its own; the dot-stuffed line arrives intact.
    assert!(
        body_of(&bob[0]).starts_with(b"swaks body line\r\n.dot line\r\n"),
        "{:?}",
        String::from_utf8_lossy(&bob[0])
    );
    let received = header_values(&bob[0], "Received");
    assert!(
        received[2].contains("version=TLS1_"),
        "TLS not recorded in the Front End hop: {received:#?}"
    );

    let events = events_of(&server, "smtplib probe");
    let ids: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        ids,
        ["RECEIVE", "AGENTINFO", "SEND", "RECEIVE", "DELIVER"],
        "{events:?}"
    );
    assert_eq!(events[4].1, "STOREDRIVER");
    assert_eq!(events[1].1, "AGENT");
    let deliver = server.track(&[
        "--event-id",
        "DELIVER",
        "--recipients",
        "alice@contoso.test",
    ]);
    assert_eq!(deliver.len(), 1);
    assert_eq!(deliver[0]["MessageId"], "<smtplib-probe@fabrikam.test>");
    let receive = server.track(&["--event-id", "RECEIVE", "--subject", "smtplib probe"]);
    assert_eq!(receive[0]["ConnectorId"], "MBX1\\Default MBX1");
    assert_eq!(
        receive[1]["ConnectorId"],
        "MBX1\\Default Mailbox Delivery MBX1"
    );

    // The table form works too, with the server stopped (it only reads files).
    let mut server = server;
    server.stop();
    let out = server.cli(&["track", "--sender", "sender@fabrikam.test"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("Timestamp")
            && table.contains("DELIVER")
            && table.contains("swaks probe"),
        "{table}"
    );
}

#[test]
fn tracking_log_files_have_exchange_headers_and_protocol_logs_record_sessions() {
    let server = Server::start();
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    let r = c.send(
        "sender@fabrikam.test",
        &["carol@contoso.test"],
        &message("log probe", "hello\r\n"),
    );
    assert!(r.starts_with("250 2.6.0"), "{r}");
    c.cmd("QUIT");
    server.wait_inbox("carol@contoso.test", 1);
    // Tracking files: MSGTRK (Transport) and MSGTRKMD (Mailbox Delivery), 5 header lines.
    let dir = server.data_dir().join("Logs/MessageTracking");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("MSGTRK2") && n.ends_with(".LOG")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("MSGTRKMD")), "{names:?}");
    let text = file_text(&dir.join(names.iter().find(|n| n.starts_with("MSGTRK2")).unwrap()));
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], "#Software: Microsoft Exchange Server");
    assert!(lines[1].starts_with("#Version: 15."));
    assert_eq!(lines[2], "#Log-type: Message Tracking Log");
    assert!(lines[3].starts_with("#Date: "));
    assert!(lines[4].starts_with("#Fields: date-time,client-ip,client-hostname,server-ip,server-hostname,source-context,connector-id,source,event-id,"));
    assert!(lines[4].ends_with(",custom-data,transport-traffic-type,log-id,schema-version"));
    // Protocol log of Default Frontend (Verbose by default): the session's lines.
    let recv_dir = server
        .data_dir()
        .join("Logs/FrontEnd/ProtocolLog/SmtpReceive");
    let recv = dir_text(&recv_dir);
    assert!(
        recv.contains("#Log-type: SMTP Receive Protocol Log"),
        "{recv}"
    );
    assert!(recv.contains("MBX1\\Default Frontend MBX1"), "{recv}");
    for needle in [
        ",+,",
        ",<,EHLO client.fabrikam.test",
        ",>,\"220 ",
        ",>,\"250 2.6.0",
        ",-,",
    ] {
        assert!(recv.contains(needle), "missing {needle:?} in:\n{recv}");
    }
    let send_dir = server.data_dir().join("Logs/FrontEnd/ProtocolLog/SmtpSend");
    let send = dir_text(&send_dir);
    assert!(
        send.contains("Inbound Proxy Internal Send Connector")
            && send.contains(",>,AUTH X-MAILFLOW-SERVER ****,")
            && send.contains(",<,334 ")
            && send.contains(",>,****,"),
        "{send}"
    );
    assert!(
        !send.contains(&server_auth::b64(b"FrontendTransport\0MBX1")),
        "AUTH lines are logged masked: {send}"
    );
    // Transport → Mailbox Delivery: BDAT, as between Exchange servers; the envelope
    // and the chunk in one write, so no DATA and no 354 on that hop.
    let hub_send = dir_text(&server.data_dir().join("Logs/Hub/ProtocolLog/SmtpSend"));
    let intra: Vec<&str> = hub_send
        .lines()
        .filter(|l| l.contains("Intra-Organization SMTP Send Connector"))
        .collect();
    assert!(
        intra
            .iter()
            .any(|l| l.contains(",>,BDAT ") && l.ends_with(" LAST,")),
        "{hub_send}"
    );
    assert!(!intra.iter().any(|l| l.contains(",>,DATA")), "{hub_send}");
}

#[test]
fn alias_and_group_deliver_once_to_each_member_and_external_member_waits_in_its_queue() {
    let server = Server::start();
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    // alice is reached three ways (alias, group member, member by alias); bob twice
    // (sales and the nested team group, which loops back to sales).
    let r = c.send(
        "sender@fabrikam.test",
        &["a.smith@contoso.test", "sales@contoso.test"],
        &message("group probe", "to the group\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    server.wait_inbox("alice@contoso.test", 1);
    server.wait_inbox("bob@contoso.test", 1);
    // Give a wrong second copy time to show up before counting.
    let deliver = wait_for("both DELIVER events", Duration::from_secs(10), || {
        let d = server.track(&["--event-id", "DELIVER", "--subject", "group probe"]);
        (d.len() >= 2).then_some(d)
    });
    // Give a wrong second copy time to show up while counting.
    assert_for("one copy each", Duration::from_millis(500), || {
        let counts =
            ["alice", "bob", "carol"].map(|u| server.export(&format!("{u}@contoso.test")).len());
        (counts == [1, 1, 0])
            .then_some(())
            .ok_or(format!("alice, bob, carol: {counts:?}"))
    });
    assert_eq!(deliver.len(), 2);
    let expand = server.track(&["--event-id", "EXPAND", "--subject", "group probe"]);
    let groups: Vec<&str> = expand
        .iter()
        .map(|e| e["RelatedRecipientAddress"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["sales@contoso.test", "team@contoso.test"]);
    let resolve = server.track(&["--event-id", "RESOLVE", "--subject", "group probe"]);
    assert!(
        resolve
            .iter()
            .any(|e| e["RelatedRecipientAddress"] == "a.smith@contoso.test"
                && e["Recipients"][0] == "alice@contoso.test"),
        "{resolve:?}"
    );
    // The external member waits in a queue named for its domain.
    let queues = server.cli_json(&["queue", "list"]);
    let ext = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["NextHopDomain"] == "fabrikam.test")
        .unwrap_or_else(|| panic!("no fabrikam.test queue: {queues:#}"));
    assert_eq!(ext["MessageCount"], 1);
    assert_eq!(ext["DeliveryType"], "DnsConnectorDelivery");
    let table = String::from_utf8_lossy(&server.cli(&["queue", "list"]).stdout).to_string();
    assert!(
        table.contains("MBX1\\Submission") && table.contains("fabrikam.test"),
        "{table}"
    );
}

#[test]
fn bad_input_gets_precise_replies_and_the_server_stays_up() {
    let server = Server::start();
    let mut c = Smtp::connect(server.ports.frontend);
    assert!(
        c.cmd("EHLO client.fabrikam.test")
            .contains("250-SIZE 1048576")
    );
    assert!(c.cmd("MAIL FROM:<sender@fabrikam.test>").starts_with("250"));
    let r = c.cmd("RCPT TO:<nobody@contoso.test>");
    assert!(r.starts_with("550 5.1.1 "), "unknown recipient: {r}");
    let r = c.cmd("RCPT TO:<victim@example.org>");
    assert!(r.starts_with("550 5.7.54 "), "relay: {r}");
    assert!(c.cmd("RCPT TO:<alice@contoso.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let big = "x".repeat(1000) + "\r\n";
    for _ in 0..1100 {
        c.send_raw(big.as_bytes());
    }
    c.send_raw(b".\r\n");
    let r = c.read_reply();
    assert!(r.starts_with("552 5.3.4 "), "oversized: {r}");
    // A declared size over the limit is refused at MAIL.
    let r = c.cmd("MAIL FROM:<sender@fabrikam.test> SIZE=5000000");
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // Garbage and a 10 KB command line: 5xx, and the session goes on.
    assert!(c.cmd("HELLO THERE").starts_with("500 5.3.3"));
    let long = format!("NOOP {}", "a".repeat(10 * 1024));
    assert!(c.cmd(&long).starts_with("500 5.5.2"), "long line");
    assert!(c.cmd("NOOP").starts_with("250"));
    // Binary junk: still a clean answer.
    c.send_raw(b"\x00\xff\xfe junk\r\n");
    assert!(c.read_reply().starts_with("500"));
    assert!(c.cmd("WHAT").starts_with("500"));
    // The fifth error is answered, then the session closes with 421 (MaxProtocolErrors).
    assert!(
        c.cmd("RCPT TO:<alice@contoso.test>")
            .starts_with("503 5.5.1")
    );
    let r = c.read_reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(c.is_closed());
    // A message that has looped (30 Received: fields) is refused with 5.4.6.
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    let looped = "Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n".repeat(30)
        + &message("looped", "loop\r\n");
    let r = c.send("sender@fabrikam.test", &["alice@contoso.test"], &looped);
    assert!(
        r.starts_with("554 5.4.6 Hop count exceeded - possible mail loop"),
        "{r}"
    );
    // Nothing was delivered, and the server still serves others.
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    let r = c.send(
        "sender@fabrikam.test",
        &["alice@contoso.test"],
        &message("after abuse", "fine\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    server.wait_inbox("alice@contoso.test", 1);
    assert_eq!(server.export("alice@contoso.test").len(), 1);
}

#[test]
fn internal_listeners_refuse_clients_that_are_not_organisation_servers() {
    let server = Server::start();
    for port in [server.ports.transport, server.ports.mailbox_delivery] {
        let mut c = Smtp::connect(port);
        c.cmd("EHLO stranger.example");
        let r = c.cmd("MAIL FROM:<evil@example.org>");
        assert!(
            r.starts_with("530 5.7.1 Client was not authenticated"),
            "port {port}: {r}"
        );
        // Servers never authenticate with a password: AUTH PLAIN is not offered here.
        let r = c.cmd("AUTH PLAIN AE1CWDEAYmFk");
        assert!(r.starts_with("504 5.7.4"), "port {port}: {r}");
        // A wrong answer to the challenge is refused.
        let r = c.cmd(&server_auth::auth_line("HubTransport", "MBX1"));
        server_auth::challenge(&r);
        let r = c.cmd(&server_auth::b64(&[0u8; 32]));
        assert!(r.starts_with("535 5.7.8"), "port {port}: {r}");
    }
}

#[test]
fn the_admin_api_refuses_requests_without_the_organisation_token() {
    use std::io::{Read, Write};
    let server = Server::start();
    let request = |req: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.ports.admin)).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let health = request("GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let anonymous =
        request("POST /api/queues/1/suspend HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    let forged = request(
        "GET /api/queues HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer 00\r\nConnection: close\r\n\r\n",
    );
    assert!(forged.starts_with("HTTP/1.1 401"), "{forged}");
    // The CLI reads the secret and gets in.
    assert!(server.cli(&["queue", "list"]).status.success());
}

#[test]
fn frontend_falls_back_to_the_local_delivery_group_at_once_when_the_recipients_group_does_not_answer()
 {
    // dave's database is active on MBX2 in another site, whose Transport is not running:
    // Front End must not hold the client until a timeout; DESIGN §1 (reference §2's
    // list of local-site servers for fail-over): the local delivery group takes it,
    // and it waits in MBX1's queue for MBX2.
    let extra = format!(
        r#"
[[sites]]
name = "Site-B"

[[site_links]]
sites = ["Site-A", "Site-B"]
cost = 10
{mbx2}
[[databases]]
name = "DB02"
copies = ["MBX2"]

[[mailboxes]]
address = "dave@contoso.test"
database = "DB02"
"#,
        mbx2 = server_entry("MBX2", "Site-B", &Ports::new())
    );
    let server = Server::start_with(&extra);
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    assert!(c.cmd("MAIL FROM:<sender@fabrikam.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<dave@contoso.test>").starts_with("250"));
    let started = Instant::now();
    let r = c.cmd("DATA");
    assert!(r.starts_with("354"), "{r}");
    c.send_raw(b"Subject: for dave\r\n\r\nhello\r\n.\r\n");
    let r = c.read_reply();
    let took = started.elapsed();
    assert!(r.starts_with("250"), "{r}");
    assert!(took < Duration::from_secs(4), "the fallback took {took:?}");
    let received = server.track(&["--event-id", "RECEIVE", "--subject", "for dave"]);
    assert_eq!(
        received[0]["ConnectorId"], "MBX1\\Default MBX1",
        "{received:#?}"
    );
    // The session goes on, and mail for MBX1's own mailboxes still flows.
    let r = c.send(
        "sender@fabrikam.test",
        &["alice@contoso.test"],
        &message("still flowing", "ok\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
}

#[test]
fn kill_9_after_250_then_restart_delivers_each_message_exactly_once() {
    let mut server = Server::start();
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    assert!(
        c.send(
            "sender@fabrikam.test",
            &["carol@contoso.test"],
            &message("warm up", "x\r\n")
        )
        .starts_with("250")
    );
    server.wait_inbox("carol@contoso.test", 1);
    // Hold the mailbox queue so accepted messages are certainly still queued at the kill.
    let out = server.cli(&["queue", "suspend", "DB01"]);
    assert_success(&out);
    for i in 0..5 {
        let r = c.send(
            "sender@fabrikam.test",
            &["carol@contoso.test"],
            &message(&format!("held {i}"), "x\r\n"),
        );
        assert!(r.starts_with("250 2.6.0"), "{r}");
    }
    // Then messages in full flow, killing right after the last 250.
    for i in 0..20 {
        let r = c.send(
            "sender@fabrikam.test",
            &["carol@contoso.test", "bob@contoso.test"],
            &message(&format!("flowing {i}"), "y\r\n"),
        );
        assert!(r.starts_with("250 2.6.0"), "{r}");
    }
    server.kill9();
    server.spawn();
    server.wait_inbox("carol@contoso.test", 26);
    server.wait_inbox("bob@contoso.test", 20);
    // A message delivered twice across the restart would arrive within a second.
    assert_for("26 and 20 messages", Duration::from_secs(1), || {
        let counts = [
            server.inbox_count("carol@contoso.test"),
            server.inbox_count("bob@contoso.test"),
        ];
        (counts == [26, 20])
            .then_some(())
            .ok_or(format!("carol, bob: {counts:?}"))
    });
    let subjects = |addr: &str| -> Vec<String> {
        let mut s: Vec<String> = server
            .export(addr)
            .iter()
            .map(|m| header_values(m, "Subject")[0].clone())
            .collect();
        s.sort();
        s
    };
    let carol = subjects("carol@contoso.test");
    let mut expected: Vec<String> = (0..5)
        .map(|i| format!("held {i}"))
        .chain((0..20).map(|i| format!("flowing {i}")))
        .chain(["warm up".to_string()])
        .collect();
    expected.sort();
    assert_eq!(carol, expected, "carol: every message exactly once");
    assert_eq!(subjects("bob@contoso.test").len(), 20);
    let queues = server.cli_json(&["queue", "list"]);
    let total: u64 = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["MessageCount"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 0, "queues drained: {queues:#}");
}

#[test]
fn fifty_concurrent_sessions_of_twenty_messages_each_are_delivered_exactly_once() {
    let server = Server::start();
    let port = server.ports.frontend;
    let threads: Vec<_> = (0..50)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Smtp::connect(port);
                c.cmd(&format!("EHLO client{t}.fabrikam.test"));
                for m in 0..20 {
                    let r = c.send(
                        "sender@fabrikam.test",
                        &["bob@contoso.test"],
                        &message(&format!("load {t}-{m}"), "payload\r\n"),
                    );
                    assert!(r.starts_with("250 2.6.0"), "session {t} message {m}: {r}");
                }
                c.cmd("QUIT");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    server.wait_inbox("bob@contoso.test", 1000);
    assert_for("1000 messages", Duration::from_millis(500), || {
        let n = server.inbox_count("bob@contoso.test");
        (n == 1000).then_some(()).ok_or(format!("{n} messages"))
    });
    let mut subjects: Vec<String> = server
        .export("bob@contoso.test")
        .iter()
        .map(|m| header_values(m, "Subject")[0].clone())
        .collect();
    assert_eq!(subjects.len(), 1000);
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 1000, "a message was delivered twice");
}

/// Authenticates as an organisation server's Transport service, as it does
/// (X-MAILFLOW-SERVER over plain loopback, DESIGN §1) to MBX1.
fn auth_as_transport(c: &mut Smtp, server: &str) -> String {
    server_auth::authenticate_plain(
        c,
        b"00112233445566778899aabbccddeeff",
        "HubTransport",
        server,
        "mbx1.contoso.test",
    )
}

#[test]
fn mailbox_delivery_takes_only_active_databases_and_absorbs_a_retried_delivery() {
    let extra = server_entry("MBX2", "Site-A", &Ports::new())
        + "\n[[databases]]\nname = \"DB02\"\ncopies = [\"MBX2\"]\n\n[[mailboxes]]\naddress = \"dave@contoso.test\"\ndatabase = \"DB02\"\n";
    let server = Server::start_with(&extra);
    let content = "X-MS-Exchange-Organization-Network-Message-Id: 0123456789abcdef0123456789abcdef\r\nSubject: retried delivery\r\nMessage-ID: <retried@contoso.test>\r\n\r\nonce\r\n";
    for attempt in 0..2 {
        let mut c = Smtp::connect(server.ports.mailbox_delivery);
        c.cmd("EHLO mbx1.contoso.test");
        assert!(auth_as_transport(&mut c, "MBX1").starts_with("235"));
        assert!(c.cmd("MAIL FROM:<sender@fabrikam.test>").starts_with("250"));
        // DB02's active copy is on MBX2: the sender must reroute.
        let r = c.cmd("RCPT TO:<dave@contoso.test>");
        assert!(r.starts_with("451 4.3.2 ") && r.contains("reroute"), "{r}");
        assert!(c.cmd("RCPT TO:<alice@contoso.test>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send_raw(content.as_bytes());
        c.send_raw(b".\r\n");
        let r = c.read_reply();
        assert!(r.starts_with("250"), "attempt {attempt}: {r}");
    }
    // The same message (same network message id) delivered twice: one copy.
    server.wait_inbox("alice@contoso.test", 1);
    let dup = wait_for(
        "the duplicate to be absorbed",
        Duration::from_secs(10),
        || {
            let d = server.track(&["--event-id", "DUPLICATEDELIVER"]);
            (!d.is_empty()).then_some(d)
        },
    );
    assert_eq!(dup[0]["Recipients"][0], "alice@contoso.test");
    assert_eq!(server.export("alice@contoso.test").len(), 1);
}

#[test]
fn a_message_that_crashes_the_server_twice_is_parked_in_the_poison_queue() {
    let mut server = Server::start();
    server.env.push((
        "MAILFLOW_TEST_ABORT_ON_SUBJECT".into(),
        "poison pill".into(),
    ));
    server.kill9();
    server.spawn();
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    // Accepted (durable), then the categorizer dies on it: twice. The process dies
    // with its Front End, so the client may see the 250 or a dropped connection.
    let r = c.send(
        "sender@fabrikam.test",
        &["alice@contoso.test"],
        &message("poison pill", "boom\r\n"),
    );
    assert!(r.starts_with("250") || r.is_empty(), "{r}");
    assert!(
        server.wait_exit(Duration::from_secs(20)),
        "the fault injection should abort the server"
    );
    server.spawn_unchecked();
    assert!(
        server.wait_exit(Duration::from_secs(20)),
        "second crash on restart"
    );
    // Third start: the message is parked, the server stays up and serves others.
    server.spawn();
    let poison = wait_for("the poison queue", Duration::from_secs(20), || {
        server
            .queues()
            .iter()
            .find(|q| q["Identity"] == "MBX1\\Poison")
            .cloned()
    });
    assert_eq!(poison["MessageCount"], 1);
    assert_eq!(poison["Status"], "Suspended");
    let ev = server.track(&["--event-id", "POISONMESSAGE"]);
    assert_eq!(ev[0]["MessageSubject"], "poison pill");
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    let r = c.send(
        "sender@fabrikam.test",
        &["alice@contoso.test"],
        &message("healthy", "fine\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    server.wait_inbox("alice@contoso.test", 1);
    assert_eq!(server.export("alice@contoso.test").len(), 1);
}

#[test]
fn the_front_end_reuses_an_idle_proxy_session_for_the_next_client() {
    let server = Server::start();
    for i in 0..3 {
        let mut c = Smtp::connect(server.ports.frontend);
        c.cmd("EHLO client.fabrikam.test");
        let r = c.send(
            "sender@fabrikam.test",
            &["bob@contoso.test"],
            &message(&format!("pooled {i}"), "one message per client session\r\n"),
        );
        assert!(r.starts_with("250"), "{r}");
        c.cmd("QUIT");
    }
    server.wait_inbox("bob@contoso.test", 3);
    // Three client sessions, one proxy session to Transport: one logon, three MAILs.
    let send_dir = server.data_dir().join("Logs/FrontEnd/ProtocolLog/SmtpSend");
    let read = || dir_text(&send_dir);
    let send = poll_until(Duration::from_secs(10), || {
        let send = read();
        (send.matches(",>,MAIL FROM:<sender@fabrikam.test>").count() >= 3).then_some(send)
    })
    .unwrap_or_else(read);
    assert_eq!(
        send.matches(",>,MAIL FROM:<sender@fabrikam.test>").count(),
        3,
        "{send}"
    );
    assert_eq!(
        send.matches(",>,AUTH X-MAILFLOW-SERVER ****,").count(),
        1,
        "{send}"
    );
}

/// Issue 14 item 6: listeners accept port 0 and the server reports what it bound. A
/// lone server with every port 0 (and a custom connector on port 0) writes each
/// listener's address to a private listeners.json; mail crosses its own hops on the
/// bound ports, before and after a reload, and the CLI finds the admin API there.
#[test]
fn a_lone_server_on_port_0_reports_every_listener_it_bound() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start_with(
        "\n[[receive_connectors]]\nname = \"Apps MBX1\"\nserver = \"MBX1\"\nservice = \"frontend\"\nbind = \"127.0.0.1:0\"\n",
    );
    assert!(file_text(&server.config()).contains("frontend = 0"));
    let path = server.data_dir().join("listeners.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "listeners.json is private");
    let json: serde_json::Value = serde_json::from_str(&file_text(&path)).unwrap();
    assert_eq!(json["server"], "MBX1");
    assert_eq!(json["pid"], server.pid().unwrap());
    let listeners = json["listeners"].as_array().unwrap();
    let kinds: Vec<&str> = listeners
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "frontend",
            "transport",
            "mailbox_delivery",
            "outbound_proxy",
            "client_frontend",
            "client_proxy",
            "receive_connector",
            "admin"
        ]
    );
    let log = server.log();
    let mut ports = std::collections::HashSet::new();
    for l in listeners {
        let addr: std::net::SocketAddr = l["address"].as_str().unwrap().parse().unwrap();
        assert_ne!(addr.port(), 0, "{l}");
        assert!(
            ports.insert(addr.port()),
            "two listeners on one port: {json}"
        );
        // The banner's "listening" lines show the same addresses.
        assert!(
            log.contains(&format!("    {addr}")),
            "{addr} not in:\n{log}"
        );
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{l}: {e}"));
        if let Some(kind) = l["kind"].as_str().filter(|k| *k != "receive_connector") {
            assert_eq!(json["ports"][kind], addr.port(), "{kind}");
        }
    }
    // Front End → Transport → Mailbox Delivery on the bound ports, through the custom
    // connector, before and after a reload (which reads the file's 0s again).
    for (i, step) in ["before", "after"].iter().enumerate() {
        if *step == "after" {
            let out = server.cli(&["reload"]);
            assert!(out.status.success(), "{out:?}");
        }
        let mut c = Smtp::connect(server.listener_port("Apps MBX1"));
        c.cmd("EHLO client.fabrikam.test");
        let r = c.send(
            "sender@fabrikam.test",
            &["bob@contoso.test"],
            &message(&format!("port 0 {step} reload"), "hops\r\n"),
        );
        assert!(r.starts_with("250"), "{r}");
        server.wait_inbox("bob@contoso.test", i as u64 + 1);
    }
}

/// A rule's blind copies are resolved and routed with the message's own recipients in
/// one categorizer pass (issue 14): an alias of a recipient the message already has
/// gets no second copy, another mailbox gets one, an unknown address is dropped
/// without an NDR, and the tracking rows are those of any message (no RESOLVE or FAIL
/// for what the rule added).
#[test]
fn a_rules_blind_copies_are_resolved_and_routed_with_the_message_once() {
    let server = Server::start_with(
        "\n[[transport_rules]]\nname = \"Copy\"\nif = { subject_contains_words = [\"copy me\"] }\nthen = { blind_copy_to = [\"a.smith@contoso.test\", \"bob@contoso.test\", \"nobody@contoso.test\"] }\n",
    );
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.contoso.test");
    let r = c.send(
        "carol@contoso.test",
        &["alice@contoso.test"],
        "From: carol@contoso.test\r\nSubject: please copy me\r\n\r\nhello\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    server.wait_inbox("bob@contoso.test", 1);
    server.wait_inbox("alice@contoso.test", 1);
    // One delivery queue, one transaction: by now a second copy would be there too.
    assert_eq!(server.export("alice@contoso.test").len(), 1);
    assert_eq!(server.export("bob@contoso.test").len(), 1);
    let events = events_of(&server, "please copy me");
    let ids: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(&ids[..3], ["RECEIVE", "AGENTINFO", "SEND"], "{events:?}");
    assert!(
        !ids.iter().any(|e| ["RESOLVE", "FAIL", "DSN"].contains(e)),
        "{events:?}"
    );
    let agentinfo = server.track(&["--event-id", "AGENTINFO", "--subject", "please copy me"]);
    assert!(
        agentinfo[0]["CustomData"]
            .as_str()
            .unwrap()
            .contains("rule=Copy"),
        "{agentinfo:#?}"
    );
}

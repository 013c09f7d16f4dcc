//! Mail to the internet: send connectors, retries, delay notices and NDRs, and queue
//! and message management from the CLI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::postfix::{Postfix, PostfixOptions};
use common::*;

/// A send connector for fabrikam.test through a smart host on `port`.
fn fabrikam_smart_host(port: u16) -> String {
    smart_host_connector(
        "Fabrikam",
        "fabrikam.test",
        "MBX1",
        port,
        "protocol_logging = \"verbose\"\n",
    )
}

/// Checks an RFC 3464 report with Python's email library: multipart/report with a
/// message/delivery-status part; returns (subject, per-recipient field maps as JSON).
fn parse_dsn(eml: &[u8]) -> serde_json::Value {
    let script = r#"
import email, json, sys
from email import policy
msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)
assert msg.get_content_type() == "multipart/report", msg.get_content_type()
assert msg.get_param("report-type") == "delivery-status"
parts = list(msg.iter_parts())
assert parts[0].get_content_type() == "text/plain"
status = parts[1]
assert status.get_content_type() == "message/delivery-status"
groups = [dict(g.items()) for g in status.get_payload()]
print(json.dumps({"subject": str(msg["Subject"]), "from": str(msg["From"]), "per_message": groups[0],
                  "recipients": groups[1:], "returned": parts[2].get_content_type(),
                  "text": parts[0].get_content()}))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(eml).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not a valid RFC 3464 report: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(eml)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn peer_down_gives_retry_then_a_delay_notice_then_an_ndr_after_expiration() {
    let closed = free_ports(1)[0];
    let server = Server::start_custom(
        "delay_notification_timeout = \"2s\"\nmessage_expiration_timeout = \"5s\"",
        &fabrikam_smart_host(closed),
    );
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.contoso.test");
    assert!(c.cmd("MAIL FROM:<alice@contoso.test>").starts_with("250"));
    // Anonymous relay to an external domain is refused even for an internal sender.
    assert!(
        c.cmd("RCPT TO:<ext@fabrikam.test>")
            .starts_with("550 5.7.54")
    );
    c.cmd("RSET");
    drop(c);
    // Mail from a mailbox to the outside enters through Transport, as Mailbox Transport
    // Submission would: here a group with an external member.
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.contoso.test");
    let r = c.send(
        "alice@contoso.test",
        &["sales@contoso.test"],
        &message("peer down", "to the outside\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");

    let q = wait_for(
        "the fabrikam queue in Retry",
        Duration::from_secs(20),
        || {
            server
                .queues()
                .iter()
                .find(|q| {
                    q["Status"] == "Retry" && q["DeliveryType"] == "SmartHostConnectorDelivery"
                })
                .cloned()
        },
    );
    assert!(
        q["LastError"].as_str().unwrap().starts_with("451 4.4.1"),
        "{q:#}"
    );
    assert!(q["NextRetryTime"].is_string(), "{q:#}");

    // Alice gets a delay notice, then the NDR (4.4.7) once the message expires.
    server.wait_inbox("alice@contoso.test", 3); // the group copy, the delay notice, the NDR
    let inbox = server.export("alice@contoso.test");
    let reports: Vec<serde_json::Value> = inbox
        .iter()
        .filter(|m| String::from_utf8_lossy(m).contains("multipart/report"))
        .map(|m| parse_dsn(m))
        .collect();
    assert_eq!(reports.len(), 2, "{reports:#?}");
    let delay = reports
        .iter()
        .find(|r| {
            r["subject"]
                .as_str()
                .unwrap()
                .starts_with("Delivery delayed")
        })
        .expect("delay notice");
    assert_eq!(delay["recipients"][0]["Action"], "delayed");
    assert_eq!(
        delay["recipients"][0]["Final-Recipient"],
        "rfc822; ext@fabrikam.test"
    );
    let ndr = reports
        .iter()
        .find(|r| r["subject"].as_str().unwrap().starts_with("Undeliverable"))
        .expect("NDR");
    assert_eq!(ndr["recipients"][0]["Action"], "failed");
    // Exchange's expiry NDR: the reply's 4.4.7 unaltered (issue 15 item 4).
    assert_eq!(ndr["recipients"][0]["Status"], "4.4.7");
    assert_eq!(
        ndr["recipients"][0]["Diagnostic-Code"],
        "smtp; 550 4.4.7 QUEUE.Expired; message expired"
    );
    assert_eq!(ndr["returned"], "message/rfc822");
    assert_eq!(
        ndr["per_message"]["Reporting-MTA"],
        "dns; mbx1.contoso.test"
    );
    // The queue is empty again, and tracking tells the story.
    let events: Vec<String> = server
        .track(&["--subject", "peer down"])
        .iter()
        .map(|e| e["EventId"].as_str().unwrap().to_string())
        .collect();
    for e in ["RECEIVE", "EXPAND", "DEFER", "FAIL", "DSN"] {
        assert!(events.contains(&e.to_string()), "missing {e} in {events:?}");
    }
}

#[test]
fn suspend_resume_retry_list_export_and_remove_from_the_cli() {
    let closed = free_ports(1)[0];
    let server = Server::start_custom("", &fabrikam_smart_host(closed));
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.contoso.test");
    for i in 0..2 {
        let r = c.send(
            "alice@contoso.test",
            &["sales@contoso.test"],
            &message(&format!("managed {i}"), "queued\r\n"),
        );
        assert!(r.starts_with("250"), "{r}");
    }
    let queue = wait_for("the fabrikam queue", Duration::from_secs(20), || {
        server
            .queues()
            .iter()
            .find(|q| q["DeliveryType"] == "SmartHostConnectorDelivery" && q["MessageCount"] == 2)
            .cloned()
    });
    let identity = queue["Identity"].as_str().unwrap().to_string();
    // Suspend: the status says so; resume: back to Retry or Ready.
    let out = server.cli(&["queue", "suspend", &identity]);
    assert_success(&out);
    let q = server
        .queues()
        .iter()
        .find(|q| q["Identity"] == identity.as_str())
        .cloned()
        .unwrap();
    assert_eq!(q["Status"], "Suspended");
    assert!(server.cli(&["queue", "resume", &identity]).status.success());
    assert!(server.cli(&["queue", "retry", &identity]).status.success());
    let q = server
        .queues()
        .iter()
        .find(|q| q["Identity"] == identity.as_str())
        .cloned()
        .unwrap();
    assert_ne!(q["Status"], "Suspended");

    // Get-Message lists both; Export-Message writes the bytes.
    let messages = wait_for("both messages listed", Duration::from_secs(10), || {
        let m = server.cli_json(&["message", "list", "--queue", &identity]);
        (m.as_array().unwrap().len() == 2).then_some(m)
    });
    let first = messages[0]["Identity"].as_str().unwrap().to_string();
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("m.eml");
    let out = server.cli(&["message", "export", &first, "--out", file.to_str().unwrap()]);
    assert_success(&out);
    let exported = std::fs::read(&file).unwrap();
    assert!(
        String::from_utf8_lossy(&exported).contains("Subject: managed"),
        "{}",
        String::from_utf8_lossy(&exported)
    );

    // Remove one without NDR and one with: only the second bounces to alice.
    let second = messages[1]["Identity"].as_str().unwrap().to_string();
    let removed = |id: &str, ndr: bool| {
        let mut args = vec!["message", "remove", id];
        if !ndr {
            args.push("--without-ndr");
        }
        // The message may be in transmission for a moment: retry until it waits.
        wait_for(
            "the message to be removable",
            Duration::from_secs(20),
            || server.cli(&args).status.success().then_some(()),
        );
    };
    removed(&first, false);
    removed(&second, true);
    wait_for("the queue to empty", Duration::from_secs(10), || {
        server
            .queues()
            .iter()
            .all(|q| q["MessageCount"] == 0)
            .then_some(())
    });
    server.wait_inbox("alice@contoso.test", 3); // two group copies + one NDR
    assert_for(
        "three messages for alice",
        Duration::from_millis(500),
        || {
            let n = server.inbox_count("alice@contoso.test");
            (n == 3).then_some(()).ok_or(format!("{n} messages"))
        },
    );
    let ndrs: Vec<serde_json::Value> = server
        .export("alice@contoso.test")
        .iter()
        .filter(|m| String::from_utf8_lossy(m).contains("multipart/report"))
        .map(|m| parse_dsn(m))
        .collect();
    assert_eq!(ndrs.len(), 1, "{ndrs:#?}");
    assert_eq!(ndrs[0]["recipients"][0]["Status"], "5.3.0");
}

#[test]
fn address_space_specificity_and_cost_choose_the_connector() {
    let (cheap, dear, specific) = (Sink::start(), Sink::start(), Sink::start());
    let connector = |name: &str, space: &str, cost: u32, port: u16| {
        format!(
            "\n[[send_connectors]]\nname = \"{name}\"\naddress_spaces = [{{ domain = \"{space}\", cost = {cost} }}]\nsource_servers = [\"MBX1\"]\nsmart_hosts = [\"[127.0.0.1]:{port}\"]\n"
        )
    };
    let extra = connector("Cheap", "*.test", 1, cheap.port)
        + &connector("Dear", "*.test", 5, dear.port)
        + &connector("Specific", "northwind.test", 9, specific.port)
        + "\n[[groups]]\naddress = \"partners@contoso.test\"\nmembers = [\"a@fabrikam.test\", \"b@northwind.test\"]\nrequire_sender_authentication = false\n";
    let server = Server::start_custom("", &extra);
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.contoso.test");
    let r = c.send(
        "alice@contoso.test",
        &["partners@contoso.test"],
        &message("connector choice", "which way\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    // fabrikam.test: *.test at cost 1 beats cost 5 (and the built-in "*" is less specific).
    let t = cheap.wait_transactions(1);
    assert!(
        t[0].contains("a@fabrikam.test") && t[0].contains("Subject: connector choice"),
        "{}",
        t[0]
    );
    // northwind.test: the exact address space wins despite its higher cost.
    let t = specific.wait_transactions(1);
    assert!(t[0].contains("b@northwind.test"), "{}", t[0]);
    assert!(dear.transactions().is_empty());
    let send = server.track(&["--event-id", "SEND", "--subject", "connector choice"]);
    let connectors: Vec<&str> = send
        .iter()
        .map(|e| e["ConnectorId"].as_str().unwrap())
        .collect();
    assert!(
        connectors.contains(&"Cheap") && connectors.contains(&"Specific"),
        "{connectors:?}"
    );
    // Organisation headers never leave the organisation.
    assert!(!t[0].contains("X-MS-Exchange-Organization"), "{}", t[0]);
}

#[test]
fn front_end_proxy_sends_through_the_outbound_proxy_frontend() {
    let sink = Sink::start();
    let extra = smart_host_connector(
        "Via Front End",
        "fabrikam.test",
        "MBX1",
        sink.port,
        "front_end_proxy = true\n",
    );
    let server = Server::start_custom("", &extra);
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.contoso.test");
    let r = c.send(
        "alice@contoso.test",
        &["sales@contoso.test"],
        &message("via proxy", "through 717\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    let t = sink.wait_transactions(1);
    assert!(
        t[0].contains("ext@fabrikam.test") && t[0].contains("Subject: via proxy"),
        "{}",
        t[0]
    );
    // The Front End's receive log shows the proxied session on its :717 connector.
    let recv_dir = server
        .data_dir()
        .join("Logs/FrontEnd/ProtocolLog/SmtpReceive");
    let log = dir_text(&recv_dir);
    assert!(
        log.contains("MBX1\\Outbound Proxy Frontend MBX1")
            && log.contains("RCPT TO:<ext@fabrikam.test>"),
        "{log}"
    );
    let send = server.track(&[
        "--event-id",
        "SEND",
        "--subject",
        "via proxy",
        "--recipients",
        "ext@fabrikam.test",
    ]);
    assert_eq!(send[0]["ConnectorId"], "Via Front End");
    // A stranger cannot use :717 to relay.
    let mut c = Smtp::connect(server.ports.outbound_proxy);
    c.cmd("EHLO stranger.example");
    assert!(
        c.cmd("MAIL FROM:<evil@example.org>")
            .starts_with("530 5.7.1")
    );
}

fn postfix_connector(port: u16, tls: &str) -> String {
    smart_host_connector(
        "To Postfix",
        "fabrikam.test",
        "MBX1",
        port,
        &format!("tls = \"{tls}\"\nprotocol_logging = \"verbose\"\n"),
    )
}

#[test]
fn mail_from_a_mailbox_reaches_postfix_intact_over_required_tls() {
    let postfix = common::postfix::Postfix::start(common::postfix::PostfixOptions {
        tls: true,
        ..Default::default()
    });
    let server = Server::start_custom("", &postfix_connector(postfix.port, "required"));
    let body = "Line one\r\n.starts with a dot\r\nCaf\u{e9} 8-bit text\r\n";
    server.send_from_outbox("alice@contoso.test",
        &format!(
            "From: Alice <alice@contoso.test>\r\nTo: partner@fabrikam.test\r\nSubject: to postfix\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}"
        ),
    );
    let got = postfix.wait_messages(1);
    let m = &got[0];
    assert_eq!(
        body_of(m),
        body.as_bytes(),
        "body changed: {}",
        String::from_utf8_lossy(m)
    );
    // DKIM-ready: the headers a signer needs are there once, nothing private leaked.
    for h in ["From", "To", "Subject", "Message-ID", "Date"] {
        assert_eq!(
            header_values(m, h).len(),
            1,
            "{h} in {}",
            String::from_utf8_lossy(m)
        );
    }
    assert!(
        !String::from_utf8_lossy(m).contains("X-MS-Exchange-Organization"),
        "{}",
        String::from_utf8_lossy(m)
    );
    assert!(
        postfix.log().contains("TLS connection established from"),
        "{}",
        postfix.log()
    );
    let send = server.track(&["--event-id", "SEND", "--subject", "to postfix"]);
    let external = send
        .iter()
        .find(|e| e["ConnectorId"] == "To Postfix")
        .expect("SEND through the connector");
    assert!(
        external["SourceContext"]
            .as_str()
            .unwrap()
            .contains("TLS1_"),
        "{external:#}"
    );
}

#[test]
fn postfix_rejecting_one_recipient_gives_an_ndr_for_it_alone() {
    let postfix = common::postfix::Postfix::start(common::postfix::PostfixOptions {
        reject: vec!["nobody@fabrikam.test".into()],
        ..Default::default()
    });
    let server = Server::start_custom("", &postfix_connector(postfix.port, "opportunistic"));
    server.send_from_outbox("alice@contoso.test",
        "From: alice@contoso.test\r\nTo: partner@fabrikam.test, nobody@fabrikam.test\r\nSubject: one bad recipient\r\n\r\nhello\r\n",
    );
    let got = postfix.wait_messages(1);
    assert!(String::from_utf8_lossy(&got[0]).contains("partner@fabrikam.test"));
    server.wait_inbox("alice@contoso.test", 1);
    let ndr = parse_dsn(&server.export("alice@contoso.test")[0]);
    assert!(
        ndr["subject"]
            .as_str()
            .unwrap()
            .starts_with("Undeliverable: one bad recipient"),
        "{ndr:#}"
    );
    let recipients = ndr["recipients"].as_array().unwrap();
    assert_eq!(recipients.len(), 1, "{ndr:#}");
    assert_eq!(
        recipients[0]["Final-Recipient"],
        "rfc822; nobody@fabrikam.test"
    );
    assert_eq!(recipients[0]["Status"], "5.1.1");
    assert_eq!(recipients[0]["Remote-MTA"], "dns; 127.0.0.1");
    assert!(
        recipients[0]["Diagnostic-Code"]
            .as_str()
            .unwrap()
            .starts_with("smtp; 550 5.1.1"),
        "{ndr:#}"
    );
    assert!(
        !ndr["text"]
            .as_str()
            .unwrap()
            .contains("partner@fabrikam.test\r\nThe"),
        "only the failed recipient is named"
    );
    assert_for(
        "the good recipient exactly once",
        Duration::from_millis(500),
        || {
            let n = postfix.messages().len();
            (n == 1).then_some(()).ok_or(format!("{n} messages"))
        },
    );
}

#[test]
fn postfix_down_then_back_the_queue_retries_and_delivers() {
    let mut postfix = common::postfix::Postfix::start(common::postfix::PostfixOptions::default());
    let server = Server::start_custom("", &postfix_connector(postfix.port, "opportunistic"));
    postfix.stop();
    server.send_from_outbox("alice@contoso.test",
        "From: alice@contoso.test\r\nTo: partner@fabrikam.test\r\nSubject: while down\r\n\r\nlater\r\n",
    );
    let q = wait_for("Retry", Duration::from_secs(20), || {
        server
            .queues()
            .iter()
            .find(|q| q["Status"] == "Retry")
            .cloned()
    });
    assert!(q["LastError"].as_str().unwrap().contains("4.4.1"), "{q:#}");
    postfix.restart();
    let id = q["Identity"].as_str().unwrap().to_string();
    assert!(server.cli(&["queue", "retry", &id]).status.success());
    let got = postfix.wait_messages(1);
    assert!(String::from_utf8_lossy(&got[0]).contains("Subject: while down"));
}

#[test]
fn mail_flow_rules_add_the_disclaimer_to_outside_mail_and_reject_what_they_forbid() {
    let sink = Sink::start();
    let extra = format!(
        "{}\n[[transport_rules]]\nname = \"Disclaimer\"\npriority = 0\nmode = \"enforce\"\nif = {{ sender_domain_is = [\"contoso.test\"], sent_to_scope = \"not_in_organization\" }}\nthen = {{ append_disclaimer = \"Sent from Contoso\" }}\n\n[[transport_rules]]\nname = \"No offers\"\npriority = 1\nif = {{ subject_contains_words = [\"special offer\"] }}\nthen = {{ reject_message = \"Offers are not allowed\" }}\n",
        fabrikam_smart_host(sink.port)
    );
    let server = Server::start_custom("", &extra);
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.contoso.test");
    // sales@ has an external member (rule matches) and internal ones.
    let r = c.send(
        "alice@contoso.test",
        &["sales@contoso.test"],
        "From: alice@contoso.test\r\nSubject: quarterly\r\n\r\nnumbers\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    let t = sink.wait_transactions(1);
    let (body_at, disclaimer_at) = (t[0].find("numbers"), t[0].find("Sent from Contoso"));
    assert!(body_at.is_some() && disclaimer_at > body_at, "{}", t[0]);
    let info = server.track(&["--event-id", "AGENTINFO", "--subject", "quarterly"]);
    assert!(
        info[0]["CustomData"]
            .as_str()
            .unwrap()
            .contains("rule=Disclaimer"),
        "{info:#?}"
    );
    // Internal only: no match, no disclaimer.
    let r = c.send(
        "alice@contoso.test",
        &["bob@contoso.test"],
        "From: alice@contoso.test\r\nSubject: internal\r\n\r\nplain\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    // A rejected message bounces to the sender with 5.7.1.
    let r = c.send(
        "alice@contoso.test",
        &["carol@contoso.test"],
        "From: alice@contoso.test\r\nSubject: A special offer\r\n\r\nbuy\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    server.wait_inbox("bob@contoso.test", 2); // the group copy + internal
    let internal = server
        .export("bob@contoso.test")
        .into_iter()
        .find(|m| String::from_utf8_lossy(m).contains("Subject: internal"))
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&internal).contains("Sent from Contoso"),
        "no disclaimer inside the organisation"
    );
    let ndr = wait_for("the rule's NDR", Duration::from_secs(20), || {
        server
            .export("alice@contoso.test")
            .into_iter()
            .find(|m| String::from_utf8_lossy(m).contains("multipart/report"))
    });
    let ndr = parse_dsn(&ndr);
    assert_eq!(ndr["recipients"][0]["Status"], "5.7.1");
    assert!(
        ndr["recipients"][0]["Diagnostic-Code"]
            .as_str()
            .unwrap()
            .contains("Offers are not allowed")
    );
    assert_eq!(server.export("carol@contoso.test").len(), 0);
}

/// `partners@contoso.test` has one member, outside: mail to it leaves through the
/// send connector.
const PARTNERS: &str = "\n[[groups]]\naddress = \"partners@contoso.test\"\nmembers = [\"partner@fabrikam.test\"]\nrequire_sender_authentication = false\n";

/// A Postfix peer for fabrikam.test started with `peer`, and a server that sends it
/// the mail for partners@ ([`PARTNERS`]) through the "To Postfix" connector
/// (opportunistic TLS, verbose SEND log) with `connector`'s lines added.
fn partners_behind_postfix(peer: PostfixOptions, connector: &str) -> (Postfix, Server) {
    let postfix = Postfix::start(peer);
    let server = Server::start_custom(
        "",
        &(postfix_connector(postfix.port, "opportunistic") + connector + PARTNERS),
    );
    (postfix, server)
}

/// Sends `content` to partners@ through the Front End with these MAIL parameters.
fn send_to_partners(server: &Server, mail_params: &str, content: &str) {
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    let r = c.cmd(&format!("MAIL FROM:<sender@fabrikam.test>{mail_params}"));
    assert!(r.starts_with("250"), "MAIL: {r}");
    let r = c.cmd("RCPT TO:<partners@contoso.test>");
    assert!(r.starts_with("250"), "RCPT: {r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send_raw(content.replace("\r\n.", "\r\n..").as_bytes());
    let r = c.cmd(".");
    assert!(r.starts_with("250"), "end of data: {r}");
    c.cmd("QUIT");
}

#[test]
fn eight_bit_mail_to_a_peer_without_8bitmime_arrives_as_7bit_mime_that_decodes_to_the_original() {
    let (postfix, server) = partners_behind_postfix(
        PostfixOptions {
            main_cf: "smtpd_discard_ehlo_keywords = 8bitmime\n".into(),
            ..Default::default()
        },
        "",
    );
    let subject = "Gr\u{fc}\u{df}e aus Z\u{fc}rich";
    let plain =
        "Bonjour \u{e0} tous,\r\nle caf\u{e9} est pr\u{ea}t \u{2615}\r\n.a line with a dot\r\n";
    let html = "<p>Caf\u{e9} cr\u{e8}me</p>";
    let seven = "This part is plain ASCII and must not change.";
    let content = format!(
        "From: =?utf-8?q?Ren=C3=A9?= <sender@fabrikam.test>\r\n\
To: partners@contoso.test\r\n\
Subject: {subject}\r\n\
Message-ID: <eightbit@fabrikam.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=\"alt\"\r\n\
\r\n\
--alt\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
{plain}\
--alt\r\n\
Content-Type: text/html; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
{html}\r\n\
--alt--\r\n\
--outer\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
{seven}\r\n\
--outer--\r\n"
    );
    send_to_partners(&server, " BODY=8BITMIME", &content);

    let got = postfix.wait_messages(1);
    let m = &got[0];
    assert!(
        m.is_ascii(),
        "the delivered file is not 7-bit: {}",
        String::from_utf8_lossy(m)
    );
    let text = String::from_utf8_lossy(m);
    assert!(
        text.contains(&format!(
            "--outer\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{seven}\r\n--outer--"
        )),
        "the 7-bit part changed: {text}"
    );
    assert_eq!(
        text.matches("Content-Transfer-Encoding: quoted-printable")
            .count(),
        2,
        "{text}"
    );
    let parsed = mail_parser::MessageParser::default()
        .parse(m.as_slice())
        .expect("parses");
    assert_eq!(parsed.subject(), Some(subject));
    // The CRLF before a delimiter belongs to the delimiter (RFC 2046 §5.1.1).
    assert_eq!(
        parsed.body_text(0).as_deref(),
        Some(plain.trim_end_matches("\r\n"))
    );
    assert_eq!(parsed.body_html(0).as_deref(), Some(html));

    // Postfix did not offer 8BITMIME, and mailflow did not claim it.
    let log = server.send_log("To Postfix");
    let ehlo = log
        .iter()
        .find(|l| l.contains(",<,250") && l.contains("PIPELINING"))
        .expect("EHLO reply in the SEND log");
    assert!(!ehlo.contains("8BITMIME"), "{ehlo}");
    let mail = log
        .iter()
        .find(|l| l.contains(",>,MAIL FROM:<sender@fabrikam.test>"))
        .expect("MAIL in the SEND log");
    assert!(!mail.contains("BODY="), "{mail}");
    // The tracking log is written behind the delivery: wait for the row.
    wait_for("SEND through To Postfix", Duration::from_secs(20), || {
        server
            .track(&["--event-id", "SEND", "--subject", subject])
            .iter()
            .any(|e| e["ConnectorId"] == "To Postfix")
            .then_some(())
    });
}

#[test]
fn eight_bit_mail_to_a_peer_with_8bitmime_goes_unchanged_with_body_8bitmime() {
    let (postfix, server) = partners_behind_postfix(PostfixOptions::default(), "");
    let body = "Caf\u{e9} cr\u{e8}me, tel quel\r\n";
    let content = format!(
        "From: sender@fabrikam.test\r\nTo: partners@contoso.test\r\nSubject: as is\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}"
    );
    send_to_partners(&server, " BODY=8BITMIME", &content);
    let got = postfix.wait_messages(1);
    assert_eq!(body_of(&got[0]), body.as_bytes());
    let log = server.send_log("To Postfix");
    assert!(
        log.iter()
            .any(|l| l.contains(",>,MAIL FROM:<sender@fabrikam.test>")
                && l.contains("BODY=8BITMIME")),
        "{log:#?}"
    );
}

#[test]
fn a_peer_offering_chunking_gets_the_content_by_bdat_in_chunks_without_dot_stuffing() {
    let (postfix, server) = partners_behind_postfix(PostfixOptions::default(), "");
    // Small: one chunk pipelined with the envelope.
    let small = "Line one\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n";
    send_to_partners(
        &server,
        "",
        &format!("From: sender@fabrikam.test\r\nSubject: bdat small\r\n\r\n{small}"),
    );
    // Large: a first chunk of 64 KiB, then the rest with LAST.
    let large: String = (0..4000)
        .map(|i| format!(".line {i:05} of a message larger than one chunk\r\n"))
        .collect();
    send_to_partners(
        &server,
        "",
        &format!("From: sender@fabrikam.test\r\nSubject: bdat large\r\n\r\n{large}"),
    );
    let got = postfix.wait_messages(2);
    let find = |subject: &str| {
        got.iter()
            .find(|m| String::from_utf8_lossy(m).contains(&format!("Subject: {subject}\r\n")))
            .unwrap_or_else(|| panic!("{subject} not delivered"))
    };
    assert_eq!(body_of(find("bdat small")), small.as_bytes());
    assert_eq!(body_of(find("bdat large")), large.as_bytes());

    let log = server.send_log("To Postfix");
    let sent: Vec<&str> = log.iter().filter_map(|l| l.split(",>,").nth(1)).collect();
    assert!(
        !sent.iter().any(|l| l.starts_with("DATA")),
        "DATA used: {sent:#?}"
    );
    let bdat: Vec<&&str> = sent.iter().filter(|l| l.starts_with("BDAT ")).collect();
    assert_eq!(bdat.len(), 3, "{sent:#?}");
    assert!(bdat[0].ends_with(" LAST,"), "{bdat:?}");
    assert_eq!(*bdat[1], "BDAT 65536,", "{bdat:?}");
    assert!(bdat[2].ends_with(" LAST,"), "{bdat:?}");
    // Every chunk was accepted: 250 after each BDAT.
    let ok = log.iter().filter(|l| l.contains(",<,250 2.0.0 Ok")).count();
    assert!(ok >= 2, "{log:#?}");
}

#[test]
fn a_peer_without_chunking_gets_data() {
    let (postfix, server) = partners_behind_postfix(
        PostfixOptions {
            main_cf: "smtpd_discard_ehlo_keywords = chunking\n".into(),
            ..Default::default()
        },
        "",
    );
    let body = "Line one\r\n.starts with a dot\r\n";
    send_to_partners(
        &server,
        "",
        &format!("From: sender@fabrikam.test\r\nSubject: by data\r\n\r\n{body}"),
    );
    let got = postfix.wait_messages(1);
    assert_eq!(body_of(&got[0]), body.as_bytes());
    let log = server.send_log("To Postfix");
    assert!(log.iter().any(|l| l.contains(",>,DATA,")), "{log:#?}");
    assert!(!log.iter().any(|l| l.contains(",>,BDAT")), "{log:#?}");
}

#[test]
fn under_bdat_a_peer_refusing_every_recipient_gets_no_content_accepted_and_a_reset() {
    let (postfix, server) = partners_behind_postfix(
        PostfixOptions {
            reject: vec!["partner@fabrikam.test".into()],
            ..Default::default()
        },
        "",
    );
    send_to_partners(
        &server,
        "",
        "From: alice@contoso.test\r\nSubject: nobody takes it\r\n\r\nhello\r\n",
    );
    let fail = wait_for(
        "FAIL for the refused recipient",
        Duration::from_secs(30),
        || {
            let f = server.track(&["--event-id", "FAIL", "--subject", "nobody takes it"]);
            (!f.is_empty()).then_some(f)
        },
    );
    assert!(
        fail[0]["RecipientStatus"][0]
            .as_str()
            .unwrap()
            .starts_with("550 5.1.1"),
        "{fail:#?}"
    );
    let log = server.send_log("To Postfix");
    let sent: Vec<&str> = log.iter().filter_map(|l| l.split(",>,").nth(1)).collect();
    // The pipelined chunk was refused with the recipients, then the transaction reset.
    let bdat = sent
        .iter()
        .position(|l| l.starts_with("BDAT "))
        .expect("BDAT");
    assert!(
        sent[bdat..].iter().any(|l| l.starts_with("RSET")),
        "{sent:#?}"
    );
    // What reaches Postfix is the NDR to the (outside) sender, never the message.
    let got = postfix.wait_messages(1);
    // The message itself would follow the NDR within half a second.
    assert_for(
        "only the NDR at Postfix",
        Duration::from_millis(500),
        || {
            let n = postfix.messages().len();
            (n == got.len())
                .then_some(())
                .ok_or(format!("{n} messages"))
        },
    );
    let got: Vec<String> = postfix
        .messages()
        .iter()
        .chain(&got)
        .map(|m| String::from_utf8_lossy(m).to_string())
        .collect();
    assert!(
        got.iter()
            .all(|m| m.contains("Delivered-To: sender@fabrikam.test\r\n")
                && m.contains("Subject: Undeliverable: nobody takes it")),
        "{got:#?}"
    );
    let sent = server.track(&[
        "--event-id",
        "SEND",
        "--recipients",
        "partner@fabrikam.test",
    ]);
    assert!(sent.is_empty(), "{sent:#?}");
}

#[test]
fn through_the_outbound_proxy_a_peer_without_8bitmime_also_gets_7bit_mime() {
    let (postfix, server) = partners_behind_postfix(
        PostfixOptions {
            main_cf: "smtpd_discard_ehlo_keywords = 8bitmime\n".into(),
            ..Default::default()
        },
        "front_end_proxy = true\n",
    );
    let body = "Caf\u{e9} cr\u{e8}me via 717\r\n";
    send_to_partners(
        &server,
        " BODY=8BITMIME",
        &format!("From: sender@fabrikam.test\r\nSubject: proxied 8bit\r\n\r\n{body}"),
    );
    let got = postfix.wait_messages(1);
    let m = &got[0];
    assert!(m.is_ascii(), "{}", String::from_utf8_lossy(m));
    let parsed = mail_parser::MessageParser::default()
        .parse(m.as_slice())
        .expect("parses");
    assert_eq!(parsed.body_text(0).as_deref(), Some(body));
    // The Front End made the session to Postfix and logged it in its own send log
    // (FrontEnd\ProtocolLog\SmtpSend, reference §8.1), with no BODY=.
    let log = server.send_log_of("FrontEnd", "To Postfix");
    assert!(
        server.send_log("To Postfix").is_empty(),
        "Transport's send log has the Front End's session"
    );
    let mail = log
        .iter()
        .find(|l| l.contains(",>,MAIL FROM:<sender@fabrikam.test>"))
        .expect("MAIL in the SEND log");
    assert!(!mail.contains("BODY="), "{mail}");
}

#[test]
fn a_mailflow_front_end_takes_bdat_pipelined_as_send_connectors_send_it() {
    // What a send connector of another mailflow organisation sends to this one's
    // Front End: the envelope and `BDAT n LAST` with the content, in one write.
    let server = Server::start();
    let content =
        "From: sender@fabrikam.test\r\nSubject: pipelined bdat\r\n\r\n.dot line\r\nCaf\u{e9}\r\n";
    let mut c = Smtp::connect(server.ports.frontend);
    assert!(c.cmd("EHLO mbx1.fabrikam.test").contains("CHUNKING"));
    c.send_raw(
        format!(
            "MAIL FROM:<sender@fabrikam.test> BODY=8BITMIME\r\nRCPT TO:<bob@contoso.test>\r\nBDAT {} LAST\r\n{content}",
            content.len()
        )
        .as_bytes(),
    );
    assert!(c.read_reply().starts_with("250"));
    assert!(c.read_reply().starts_with("250"));
    let end = c.read_reply();
    assert!(end.starts_with("250 2.6.0"), "{end}");
    server.wait_inbox("bob@contoso.test", 1);
    let got = server.export("bob@contoso.test");
    assert!(
        got[0].ends_with(b"\r\n\r\n.dot line\r\nCaf\xc3\xa9\r\n"),
        "{}",
        String::from_utf8_lossy(&got[0])
    );
}

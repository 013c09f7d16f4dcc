//! Stop-Service MSExchangeTransport on one server (`mailflow service stop transport`):
//! seed 003 notes that mail from a mailbox on MBX1 goes out with MBX1's Transport
//! stopped, because Mailbox Transport Submission on MBX1 hands it to MBX2's Transport.
//! Two servers of one site (seed 003's setup): DB1 on MBX1 (alice, carol), DB2 on MBX2
//! (bob).

mod common;

use std::collections::HashMap;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn seed_003(p: &HashMap<String, Ports>) -> String {
    seed_003_org(
        p,
        "pickup_directory_poll_interval = \"200ms\"\n",
        &[("carol@contoso.test", "DB1")],
    )
}

fn started() -> Cluster {
    let mut c = Cluster::new(&["MBX1", "MBX2"], seed_003);
    c.start_all();
    c
}

/// Whether a TCP connection to 127.0.0.1:`port` is accepted (false: refused).
fn accepts(port: u16) -> bool {
    match TcpStream::connect(("127.0.0.1", port)) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => false,
        Err(e) => panic!("connecting to 127.0.0.1:{port}: {e}"),
    }
}

/// `service list` of `server`: (Name, Status) per row, in the order printed.
fn services(c: &Cluster, server: &str) -> Vec<(String, String)> {
    let rows = c.cli_json(&["--server", server, "service", "list"]);
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["Server"], server, "{r}");
            (
                r["Name"].as_str().unwrap().to_string(),
                r["Status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn listed(transport: &str) -> Vec<(String, String)> {
    [
        ("MSExchangeDelivery", "Running"),
        ("MSExchangeFrontEndTransport", "Running"),
        ("MSExchangeSubmission", "Running"),
        ("MSExchangeTransport", transport),
    ]
    .iter()
    .map(|(n, s)| (n.to_string(), s.to_string()))
    .collect()
}

/// Stops MBX1's Transport with the CLI and checks what it answered.
fn stop_mbx1_transport(c: &Cluster) {
    let row = c.cli_json(&["--server", "MBX1", "service", "stop", "transport"]);
    assert_eq!(row[0]["Name"], "MSExchangeTransport", "{row}");
    assert_eq!(row[0]["Status"], "Stopped", "{row}");
}

/// (server, source, event id, connector id, server hostname) of each event for
/// `subject`: MBX1's in time order, then MBX2's. (Across servers the clocks agree
/// only to the millisecond: a SEND and the peer's RECEIVE may swap.)
fn table(c: &Cluster, subject: &str) -> Vec<[String; 5]> {
    let mut rows: Vec<(String, [String; 5])> = Vec::new();
    for server in ["MBX1", "MBX2"] {
        for e in c.track(Some(server), &["--subject", subject]) {
            let f = |k: &str| e[k].as_str().unwrap().to_string();
            rows.push((
                f("Timestamp"),
                [
                    server.to_string(),
                    f("Source"),
                    f("EventId"),
                    f("ConnectorId"),
                    f("ServerHostname"),
                ],
            ));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    // Stable: each server's events keep their time order.
    rows.sort_by(|a, b| a.1[0].cmp(&b.1[0]));
    rows.into_iter().map(|(_, r)| r).collect()
}

fn rows(expected: &[[&str; 5]]) -> Vec<[String; 5]> {
    expected.iter().map(|r| r.map(str::to_string)).collect()
}

fn inbox(c: &Cluster, server: &str, address: &str) -> Vec<Vec<u8>> {
    c.export(Some(server), address, Some("Inbox"))
        .unwrap_or_else(|e| panic!("export {address} on {server}: {e}"))
}

#[test]
fn with_mbx1s_transport_stopped_its_outbox_mail_goes_through_mbx2s_transport() {
    let c = started();
    let mbx1 = &c.ports["MBX1"];
    assert!(
        accepts(mbx1.transport),
        "MBX1's Default port before the stop"
    );
    assert_eq!(services(&c, "MBX1"), listed("Running"));

    stop_mbx1_transport(&c);
    // Transport's receive connectors refuse connections; the rest of MBX1 listens.
    assert!(!accepts(mbx1.transport), "Default MBX1 must refuse");
    assert!(!accepts(mbx1.client_proxy), "Client Proxy MBX1 must refuse");
    assert!(
        accepts(mbx1.frontend),
        "Default Frontend MBX1 keeps listening"
    );
    assert!(
        accepts(mbx1.mailbox_delivery),
        "Default Mailbox Delivery MBX1 keeps listening"
    );
    assert_eq!(services(&c, "MBX1"), listed("Stopped"));
    assert_eq!(services(&c, "MBX2"), listed("Running"));
    // Stopping a stopped service changes nothing.
    stop_mbx1_transport(&c);

    // (a) MBX1's mailbox to MBX2's: the seed's path, with MBX1's Transport stopped.
    c.send_from_outbox(
        "alice@contoso.test",
        "From: alice@contoso.test\r\nTo: bob@contoso.test\r\nSubject: stopped to mbx2\r\n\r\nhi\r\n",
    );
    c.wait_delivered("stopped to mbx2", 1);
    let bob = inbox(&c, "MBX2", "bob@contoso.test");
    assert_eq!(bob.len(), 1);
    assert_eq!(body_of(&bob[0]), b"hi\r\n");
    assert_eq!(
        table(&c, "stopped to mbx2"),
        rows(&[
            ["MBX1", "STOREDRIVER", "RECEIVE", "", "MBX1"],
            ["MBX1", "STOREDRIVER", "SUBMIT", "", "mbx2.contoso.test"],
            ["MBX2", "SMTP", "RECEIVE", "MBX2\\Default MBX2", "MBX2"],
            ["MBX2", "AGENT", "AGENTINFO", "", "MBX2"],
            [
                "MBX2",
                "SMTP",
                "SEND",
                "Intra-Organization SMTP Send Connector",
                "mbx2.contoso.test"
            ],
            [
                "MBX2",
                "SMTP",
                "RECEIVE",
                "MBX2\\Default Mailbox Delivery MBX2",
                "MBX2"
            ],
            ["MBX2", "STOREDRIVER", "DELIVER", "", "MBX2"],
        ])
    );

    // (b) MBX1's mailbox to another on MBX1: through MBX2's Transport, then MBX1's
    // Mailbox Delivery, though MBX1 holds the active copy of DB1.
    c.send_from_outbox(
        "alice@contoso.test",
        "From: alice@contoso.test\r\nTo: carol@contoso.test\r\nSubject: stopped to mbx1\r\n\r\nhello\r\n",
    );
    c.wait_delivered("stopped to mbx1", 1);
    let carol = inbox(&c, "MBX1", "carol@contoso.test");
    assert_eq!(carol.len(), 1);
    assert_eq!(body_of(&carol[0]), b"hello\r\n");
    assert_eq!(
        table(&c, "stopped to mbx1"),
        rows(&[
            ["MBX1", "STOREDRIVER", "RECEIVE", "", "MBX1"],
            ["MBX1", "STOREDRIVER", "SUBMIT", "", "mbx2.contoso.test"],
            [
                "MBX1",
                "SMTP",
                "RECEIVE",
                "MBX1\\Default Mailbox Delivery MBX1",
                "MBX1"
            ],
            ["MBX1", "STOREDRIVER", "DELIVER", "", "MBX1"],
            ["MBX2", "SMTP", "RECEIVE", "MBX2\\Default MBX2", "MBX2"],
            ["MBX2", "AGENT", "AGENTINFO", "", "MBX2"],
            [
                "MBX2",
                "SMTP",
                "SEND",
                "Intra-Organization SMTP Send Connector",
                "mbx1.contoso.test"
            ],
        ])
    );
    let logs = c.logs();
    assert_eq!(
        logs.matches("Transport service stopped").count(),
        1,
        "one stop logged, the second stop changed nothing: {logs}"
    );
}

#[test]
fn start_service_transport_listens_again_and_moves_mail_on_mbx1_itself() {
    let c = started();
    let mbx1 = &c.ports["MBX1"];
    stop_mbx1_transport(&c);
    assert!(!accepts(mbx1.transport));
    // Pickup is Transport's: a file dropped while it is stopped waits (polled every
    // 200 ms when running).
    let pickup = c.dir.path().join("data/MBX1/Pickup");
    wait_for("MBX1's Pickup directory", Duration::from_secs(10), || {
        pickup.is_dir().then_some(())
    });
    let file = pickup.join("waiting.eml");
    std::fs::write(
        &file,
        "From: app@contoso.test\nTo: carol@contoso.test\nSubject: picked up after start\n\nfrom a file\n",
    )
    .unwrap();
    assert_for(
        "the Pickup file waiting while Transport is stopped",
        Duration::from_secs(1),
        || {
            file.exists()
                .then_some(())
                .ok_or_else(|| "picked up by a stopped Transport".to_string())
        },
    );

    // (c) Start-Service: the port accepts again and Get-Service says Running.
    let row = c.cli_json(&["--server", "MBX1", "service", "start", "transport"]);
    assert_eq!(row[0]["Name"], "MSExchangeTransport", "{row}");
    assert_eq!(row[0]["Status"], "Running", "{row}");
    assert!(accepts(mbx1.transport), "Default MBX1 must accept again");
    assert!(
        accepts(mbx1.client_proxy),
        "Client Proxy MBX1 must accept again"
    );
    assert_eq!(services(&c, "MBX1"), listed("Running"));
    let logs = c.logs();
    assert!(logs.contains("Transport service started"), "{logs}");

    // Pickup runs again.
    c.wait_delivered("picked up after start", 1);
    assert!(
        !file.exists(),
        "the Pickup file is consumed after the start"
    );
    let picked = c.track(
        Some("MBX1"),
        &["--source", "PICKUP", "--subject", "picked up after start"],
    );
    assert_eq!(picked[0]["EventId"], "RECEIVE", "{picked:#?}");

    // MBX1's own Transport is first again for DB1's mailboxes: its categorizer and
    // transmitters run again after the start.
    c.send_from_outbox(
        "alice@contoso.test",
        "From: alice@contoso.test\r\nTo: carol@contoso.test\r\nSubject: started again\r\n\r\nback\r\n",
    );
    c.wait_delivered("started again", 1);
    let path: Vec<[String; 5]> = table(&c, "started again")
        .into_iter()
        .filter(|r| r[1] != "AGENT")
        .collect();
    assert_eq!(
        path,
        rows(&[
            ["MBX1", "STOREDRIVER", "RECEIVE", "", "MBX1"],
            ["MBX1", "STOREDRIVER", "SUBMIT", "", "mbx1.contoso.test"],
            ["MBX1", "SMTP", "RECEIVE", "MBX1\\Default MBX1", "MBX1"],
            [
                "MBX1",
                "SMTP",
                "SEND",
                "Intra-Organization SMTP Send Connector",
                "mbx1.contoso.test"
            ],
            [
                "MBX1",
                "SMTP",
                "RECEIVE",
                "MBX1\\Default Mailbox Delivery MBX1",
                "MBX1"
            ],
            ["MBX1", "STOREDRIVER", "DELIVER", "", "MBX1"],
        ])
    );
}

#[test]
fn only_transport_stops_alone_and_unknown_services_are_named() {
    let c = started();
    let out = c.cli(&["--server", "MBX1", "service", "stop", "frontend"]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("MSExchangeFrontEndTransport cannot stop alone"),
        "{}",
        output_text(&out)
    );
    let out = c.cli(&["--server", "MBX1", "service", "stop", "imap"]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("no service \"imap\""),
        "{}",
        output_text(&out)
    );
    assert_eq!(services(&c, "MBX1"), listed("Running"));
    // The table prints Get-Service's columns.
    let out = c.cli(&["--server", "MBX2", "service", "list"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["Server", "Status", "Name", "DisplayName"]
    );
    assert!(
        text.lines().any(|l| l.starts_with("MBX2")
            && l.contains("Running")
            && l.contains("Microsoft Exchange Transport")),
        "{text}"
    );
}

#[test]
fn mbx1s_front_end_relays_to_mbx2s_transport_while_mbx1s_is_stopped() {
    let c = started();
    let fe = c.frontend("MBX1");
    // One message first, so the Front End keeps an idle proxy session to MBX1's
    // Transport (its pool), opened before the stop.
    send_via(fe, &["carol@contoso.test"], "before the stop");
    c.wait_delivered("before the stop", 1);
    stop_mbx1_transport(&c);
    // carol's database is active on MBX1, so MBX1's Transport is the Front End's first
    // choice; it refuses (the pooled session is told 421, new ones are refused) and
    // MBX2's Transport takes the message at once.
    let mut smtp = Smtp::connect(fe);
    smtp.cmd("EHLO client.example");
    let started = std::time::Instant::now();
    let reply = smtp.send(
        "sender@example.net",
        &["carol@contoso.test"],
        &message("while stopped", "through MBX2"),
    );
    assert!(reply.starts_with("250"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the next Transport must be tried promptly: {:?}",
        started.elapsed()
    );
    c.wait_delivered("while stopped", 1);
    let received = c.track(
        Some("MBX2"),
        &[
            "--event-id",
            "RECEIVE",
            "--source",
            "SMTP",
            "--subject",
            "while stopped",
        ],
    );
    assert_eq!(
        received[0]["ConnectorId"], "MBX2\\Default MBX2",
        "{received:#?}"
    );
    let delivered = c.track(
        Some("MBX1"),
        &["--event-id", "DELIVER", "--subject", "while stopped"],
    );
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    let on_mbx1 = c.track(Some("MBX1"), &["--subject", "while stopped"]);
    assert!(
        !on_mbx1
            .iter()
            .any(|e| e["ConnectorId"] == "MBX1\\Default MBX1"),
        "MBX1's stopped Transport received it: {on_mbx1:#?}"
    );
}

/// MBX1's queue for DB2 (MBX2's database) as `queue list` shows it.
fn db2_queue(c: &Cluster) -> Option<serde_json::Value> {
    c.queues("MBX1")
        .into_iter()
        .find(|q| q["NextHopDomain"] == "DB2")
}

/// With MBX2 down, a message for bob waits in MBX1's queue for DB2; then MBX2 comes
/// back and MBX1's Transport is stopped.
fn queued_on_mbx1_then_stopped(c: &mut Cluster, subject: &str) {
    c.kill9("MBX2");
    // bob's database is on MBX2, whose Transport is down: MBX1's takes the message.
    send_via(c.frontend("MBX1"), &["bob@contoso.test"], subject);
    wait_for(
        "the message in MBX1's queue for DB2",
        Duration::from_secs(20),
        || db2_queue(c).filter(|q| q["MessageCount"] == 1 && q["Status"] == "Retry"),
    );
    stop_mbx1_transport(c);
    c.start("MBX2");
}

#[test]
fn queued_mail_waits_while_transport_is_stopped_and_moves_after_the_start() {
    let mut c = started();
    queued_on_mbx1_then_stopped(&mut c, "queued across the stop");
    // Retry-Queue reaches no transmitter while Transport is stopped: the message stays.
    assert_success(&c.cli(&["--server", "MBX1", "queue", "retry", "DB2"]));
    assert_for(
        "the queued message staying on stopped MBX1",
        Duration::from_secs(2),
        || {
            let q = db2_queue(&c).ok_or("MBX1's queue for DB2 is gone")?;
            if q["MessageCount"] != 1 {
                return Err(format!("the queue changed: {q}"));
            }
            let delivered = c.track(
                Some("MBX2"),
                &[
                    "--event-id",
                    "DELIVER",
                    "--subject",
                    "queued across the stop",
                ],
            );
            delivered
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("delivered by a stopped Transport: {delivered:#?}"))
        },
    );
    let row = c.cli_json(&["--server", "MBX1", "service", "start", "transport"]);
    assert_eq!(row[0]["Status"], "Running", "{row}");
    assert_success(&c.cli(&["--server", "MBX1", "queue", "retry", "DB2"]));
    c.wait_delivered("queued across the stop", 1);
    let sent = c.track(
        Some("MBX1"),
        &["--event-id", "SEND", "--subject", "queued across the stop"],
    );
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0]["ServerHostname"], "mbx2.contoso.test", "{sent:#?}");
    assert_eq!(inbox(&c, "MBX2", "bob@contoso.test").len(), 1);
}

#[test]
fn queued_mail_of_a_stopped_transport_moves_at_the_next_serve() {
    let mut c = started();
    queued_on_mbx1_then_stopped(&mut c, "queued until serve");
    // The process ends with Transport stopped; the next `serve` runs it again and
    // resumes the queue database.
    c.kill9("MBX1");
    c.start("MBX1");
    assert_eq!(services(&c, "MBX1"), listed("Running"));
    c.wait_delivered("queued until serve", 1);
    assert_eq!(inbox(&c, "MBX2", "bob@contoso.test").len(), 1);
}

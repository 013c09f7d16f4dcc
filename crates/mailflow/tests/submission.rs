//! Sending from mailboxes: Mailbox Transport Submission picks messages from Outboxes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

#[test]
fn a_message_in_an_outbox_is_delivered_without_bcc_and_moves_to_sent_items() {
    let server = Server::start();
    // A client-written message with bare LF line ends, no Message-ID and no Date.
    let eml = "From: Alice <alice@contoso.test>\nTo: Bob <bob@contoso.test>\nBcc: carol@contoso.test\nSubject: from the outbox\n\nHello Bob\n";
    server.send_from_outbox("alice@contoso.test", eml);
    server.wait_inbox("bob@contoso.test", 1);
    server.wait_inbox("carol@contoso.test", 1);
    let bob = &server.export("bob@contoso.test")[0];
    let carol = &server.export("carol@contoso.test")[0];
    for m in [bob, carol] {
        assert!(
            header_values(m, "Bcc").is_empty(),
            "Bcc must not travel: {}",
            String::from_utf8_lossy(m)
        );
        assert_eq!(header_values(m, "Message-ID").len(), 1);
        assert_eq!(header_values(m, "Date").len(), 1);
        assert_eq!(body_of(m), b"Hello Bob\r\n");
    }
    wait_for("the message in Sent Items", Duration::from_secs(20), || {
        let list = server.cli_json(&["mailbox", "list"]);
        list.as_array()
            .unwrap()
            .iter()
            .find(|m| m["PrimarySmtpAddress"] == "alice@contoso.test" && m["SentItems"] == 1)
            .cloned()
    });
    let ms = server.track(&["--source", "STOREDRIVER", "--subject", "from the outbox"]);
    let ids: Vec<&str> = ms.iter().map(|e| e["EventId"].as_str().unwrap()).collect();
    assert_eq!(&ids[..2], ["RECEIVE", "SUBMIT"], "{ids:?}");
    let receive = server.track(&[
        "--event-id",
        "RECEIVE",
        "--source",
        "SMTP",
        "--subject",
        "from the outbox",
    ]);
    assert_eq!(receive[0]["Directionality"], "Originating");
}

#[test]
fn a_message_from_mbx1_to_a_mailbox_on_mbx2_gives_the_seeds_tracking_sequence() {
    let org = |p: &HashMap<String, Ports>| seed_003_org(p, "", &[]);
    let mut c = Cluster::new(&["MBX1", "MBX2"], org);
    c.start_all();
    c.send_from_outbox(
        "alice@contoso.test",
        "From: alice@contoso.test\r\nTo: bob@contoso.test\r\nSubject: seven steps\r\n\r\nhi\r\n",
    );
    c.wait_delivered("seven steps", 1);
    // Seed 003's table: per row, the server whose log has it, source, event id,
    // connector id, client and server hostnames. Exchange writes its own server's
    // name short and a peer's as its FQDN.
    let mut rows: Vec<(String, [String; 6])> = Vec::new();
    for server in ["MBX1", "MBX2"] {
        for e in c.track(Some(server), &["--subject", "seven steps"]) {
            let f = |k: &str| e[k].as_str().unwrap().to_string();
            rows.push((
                f("Timestamp"),
                [
                    server.to_string(),
                    f("Source"),
                    f("EventId"),
                    f("ConnectorId"),
                    f("ClientHostname"),
                    f("ServerHostname"),
                ],
            ));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let table: Vec<[String; 6]> = rows.into_iter().map(|(_, r)| r).collect();
    let expected: Vec<[String; 6]> = [
        ["MBX1", "STOREDRIVER", "RECEIVE", "", "MBX1", "MBX1"],
        [
            "MBX1",
            "STOREDRIVER",
            "SUBMIT",
            "",
            "MBX1",
            "mbx2.contoso.test",
        ],
        [
            "MBX2",
            "SMTP",
            "RECEIVE",
            "MBX2\\Default MBX2",
            "mbx1.contoso.test",
            "MBX2",
        ],
        ["MBX2", "AGENT", "AGENTINFO", "", "", "MBX2"],
        [
            "MBX2",
            "SMTP",
            "SEND",
            "Intra-Organization SMTP Send Connector",
            "MBX2",
            "mbx2.contoso.test",
        ],
        [
            "MBX2",
            "SMTP",
            "RECEIVE",
            "MBX2\\Default Mailbox Delivery MBX2",
            "mbx2.contoso.test",
            "MBX2",
        ],
        ["MBX2", "STOREDRIVER", "DELIVER", "", "MBX2", "MBX2"],
    ]
    .iter()
    .map(|r| r.map(str::to_string))
    .collect();
    assert_eq!(table, expected, "{table:#?}");
    // MSGTRKMD rows carry what MBX2's Transport knew (issue 15 item 7): its internal
    // message id, the arrival time (message-info) and the directionality.
    let on_mbx2 = c.track(Some("MBX2"), &["--subject", "seven steps"]);
    let row = |source: &str, event: &str| {
        on_mbx2
            .iter()
            .find(|e| e["Source"] == source && e["EventId"] == event)
            .unwrap_or_else(|| panic!("no {source} {event}: {on_mbx2:#?}"))
    };
    let (received, delivered) = (row("SMTP", "SEND"), row("STOREDRIVER", "DELIVER"));
    assert_eq!(
        delivered["InternalMessageId"],
        received["InternalMessageId"]
    );
    assert_ne!(delivered["InternalMessageId"], "");
    assert_eq!(delivered["MessageInfo"], received["MessageInfo"]);
    assert_eq!(delivered["Directionality"], "Originating");
}

#[test]
fn pickup_delivers_a_good_file_and_renames_a_bad_one_with_the_reason_logged() {
    let server = Server::start_custom("pickup_directory_poll_interval = \"200ms\"", "");
    let pickup = server.data_dir().join("Pickup");
    let replay = server.data_dir().join("Replay");
    wait_for("the Pickup directory", Duration::from_secs(10), || {
        pickup.is_dir().then_some(())
    });
    std::fs::write(pickup.join("good.eml"), "From: app@contoso.test\nTo: bob@contoso.test\nBcc: carol@contoso.test\nSubject: picked up\n\nfrom a file\n").unwrap();
    std::fs::write(
        pickup.join("bad.eml"),
        "To: bob@contoso.test\nSubject: no sender\n\nbody\n",
    )
    .unwrap();
    std::fs::write(replay.join("replayed.eml"), "X-Sender: <app@contoso.test>\nX-Receiver: <carol@contoso.test>\nFrom: someone@contoso.test\nTo: bob@contoso.test\nSubject: replayed\n\nreplay body\n").unwrap();
    server.wait_inbox("bob@contoso.test", 1);
    server.wait_inbox("carol@contoso.test", 2); // the Bcc of the pickup file and the replay receiver
    let bob = &server.export("bob@contoso.test")[0];
    assert!(
        header_values(bob, "Received")
            .iter()
            .any(|r| r.starts_with("from localhost by Pickup")),
        "{}",
        String::from_utf8_lossy(bob)
    );
    assert!(header_values(bob, "Bcc").is_empty());
    assert_eq!(body_of(bob), b"from a file\r\n");
    wait_for("bad.bad", Duration::from_secs(10), || {
        pickup.join("bad.bad").exists().then_some(())
    });
    assert!(
        !pickup.join("good.eml").exists() && !pickup.join("good.tmp").exists(),
        "processed files are deleted"
    );
    assert!(
        server.log().contains("no address in From or Sender"),
        "{}",
        server.log()
    );
    let badmail = server.track(&["--event-id", "BADMAIL"]);
    assert!(
        badmail[0]["SourceContext"]
            .as_str()
            .unwrap()
            .contains("no address in From or Sender")
    );
    let pickup_receive = server.track(&["--event-id", "RECEIVE", "--source", "PICKUP"]);
    assert_eq!(pickup_receive[0]["MessageSubject"], "picked up");
    let replay_receive = server.track(&["--event-id", "RECEIVE", "--source", "ADMIN"]);
    assert_eq!(
        replay_receive[0]["Recipients"],
        serde_json::json!(["carol@contoso.test"])
    );
}

//! Hardening: nothing an outside client sends can stop or subvert the mail flow.
//! Supervision (a panic on one message stops nothing else), the restart order (queues
//! resume only once every listener is bound), the :717 proxy's reply, and the send
//! connector's size limit.

mod common;

use std::time::Duration;

use common::*;

/// Sends `count` messages whose subjects start with `prefix` to alice, then one
/// healthy message to bob, all in one session through the Front End.
fn send_panicking_then_healthy(server: &Server, prefix: &str, count: usize, healthy: &str) {
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    for i in 0..count {
        let r = c.send(
            "sender@fabrikam.test",
            &["alice@contoso.test"],
            &message(
                &format!("{prefix} {i}"),
                "this one makes handling panic\r\n",
            ),
        );
        assert!(r.starts_with("250"), "message {i}: {r}");
    }
    let r = c.send(
        "sender@fabrikam.test",
        &["bob@contoso.test"],
        &message(healthy, "this one is fine\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
}

/// The poison queue's row of `queue list`, once it holds `count` messages.
fn wait_poison(server: &Server, count: u64) -> serde_json::Value {
    wait_for(
        &format!("{count} messages in the poison queue"),
        Duration::from_secs(90),
        || {
            server
                .queues()
                .iter()
                .find(|q| q["Identity"] == "MBX1\\Poison" && q["MessageCount"] == count)
                .cloned()
        },
    )
}

/// Tracking events with `event_id` whose subject starts with `prefix`.
fn events(server: &Server, event_id: &str, prefix: &str) -> Vec<serde_json::Value> {
    server
        .track(&["--event-id", event_id])
        .into_iter()
        .filter(|e| {
            e["MessageSubject"]
                .as_str()
                .is_some_and(|s| s.starts_with(prefix))
        })
        .collect()
}

/// The supervision check shared by the categorizer and SMTP Send: 25 messages that
/// make handling panic, then a healthy one. The healthy one is delivered; each
/// panicking one is deferred once, then parked in the poison queue at the second
/// panic (PoisonThreshold 2).
fn panics_are_contained(hook: &str, prefix: &str, defer_source: &str) {
    const PANICKING: usize = 25;
    let mut server = Server::start();
    server.env.push((hook.into(), prefix.into()));
    server.kill9();
    server.spawn();
    let healthy = format!("healthy after {prefix}");
    send_panicking_then_healthy(&server, prefix, PANICKING, &healthy);
    wait_for(
        "the healthy message in bob's Inbox",
        Duration::from_secs(60),
        || (server.inbox_count("bob@contoso.test") >= 1).then_some(()),
    );
    let poison = wait_poison(&server, PANICKING as u64);
    assert_eq!(poison["Status"], "Suspended");
    // Every panicking message was deferred once, with a source context that says why.
    let deferred = events(&server, "DEFER", prefix);
    assert_eq!(deferred.len(), PANICKING, "{deferred:#?}");
    for d in &deferred {
        assert_eq!(d["Source"], defer_source, "{d:#?}");
        assert!(
            d["SourceContext"]
                .as_str()
                .is_some_and(|s| s.contains("panicked") && s.contains("crash 1 of")),
            "{d:#?}"
        );
    }
    let parked = events(&server, "POISONMESSAGE", prefix);
    assert_eq!(parked.len(), PANICKING, "{parked:#?}");
    assert_eq!(parked[0]["Recipients"][0], "alice@contoso.test");
    // Get-Message lists them in the poison queue, suspended; none reached alice.
    let listed = server.cli_json(&["message", "list", "--queue", "Poison"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), PANICKING);
    assert!(
        listed.iter().all(|m| m["Status"] == "Suspended"),
        "{listed:#?}"
    );
    assert_eq!(server.inbox_count("alice@contoso.test"), 0);
    assert!(
        server.log().contains("parked in the poison queue"),
        "the event is logged as an error:\n{}",
        server.log()
    );
    // The server goes on serving: one more healthy message arrives.
    send_via(
        server.ports.frontend,
        &["bob@contoso.test"],
        "still serving",
    );
    server.wait_inbox("bob@contoso.test", 2);
}

#[test]
fn panics_while_delivering_defer_then_poison_the_messages_and_other_mail_flows() {
    panics_are_contained(
        "MAILFLOW_TEST_PANIC_IN_DELIVERY_ON_SUBJECT",
        "panic in delivery",
        "SMTP",
    );
}

#[test]
fn panics_while_categorizing_defer_then_poison_the_messages_and_other_mail_flows() {
    panics_are_contained(
        "MAILFLOW_TEST_PANIC_IN_CATEGORIZER_ON_SUBJECT",
        "panic in categorizer",
        "ROUTING",
    );
}

/// The retry settings of the test organisation, lengthened to Exchange's scale: a
/// resumed message that met a closed port would wait a full minute.
fn with_long_retries(config: &str) -> String {
    config
        .replace(
            "queue_glitch_retry_interval = \"1s\"",
            "queue_glitch_retry_interval = \"60s\"",
        )
        .replace(
            "transient_failure_retry_interval = \"2s\"",
            "transient_failure_retry_interval = \"60s\"",
        )
        .replace(
            "outbound_connection_failure_retry_interval = \"2s\"",
            "outbound_connection_failure_retry_interval = \"60s\"",
        )
}

#[test]
fn after_a_restart_queued_mail_is_delivered_at_once_without_connection_refused() {
    const QUEUED: u64 = 5;
    let mut server = Server::start();
    // The mailbox delivery queue exists once a message went through it.
    send_via(server.ports.frontend, &["alice@contoso.test"], "warm up");
    server.wait_inbox("alice@contoso.test", 1);
    let queue = server
        .queues()
        .iter()
        .find(|q| q["DeliveryType"] == "SmtpDeliveryToMailbox")
        .cloned()
        .expect("the mailbox delivery queue");
    let identity = queue["Identity"].as_str().unwrap().to_string();
    let out = server.cli(&["queue", "suspend", &identity]);
    assert_success(&out);
    for i in 0..QUEUED {
        send_via(
            server.ports.frontend,
            &["bob@contoso.test"],
            &format!("queued across a restart {i}"),
        );
    }
    wait_for(
        "the messages to wait in the suspended queue",
        Duration::from_secs(20),
        || {
            server
                .queues()
                .iter()
                .any(|q| q["Identity"] == identity.as_str() && q["MessageCount"] == QUEUED)
                .then_some(())
        },
    );
    // Durable in the queue database; the process dies without a word.
    server.kill9();
    let config = std::fs::read_to_string(server.config()).unwrap();
    std::fs::write(server.config(), with_long_retries(&config)).unwrap();
    server.spawn();
    // Well within the one-minute retry interval a refused connection would cost.
    wait_for(
        "the queued messages in bob's Inbox",
        Duration::from_secs(20),
        || (server.inbox_count("bob@contoso.test") >= QUEUED).then_some(()),
    );
    let deferred = events(&server, "DEFER", "queued across a restart");
    assert!(deferred.is_empty(), "{deferred:#?}");
    for q in server.queues() {
        assert!(q["LastError"].is_null(), "{q:#?}");
    }
    let log = server.log();
    assert!(
        !log.contains("cannot connect") && !log.contains("Connection refused"),
        "{log}"
    );
}

#[test]
fn a_refused_smart_host_behind_the_outbound_proxy_gives_its_status_once() {
    let closed = free_ports(1)[0];
    let extra = smart_host_connector(
        "Via Front End",
        "fabrikam.test",
        "MBX1",
        closed,
        "front_end_proxy = true\n",
    );
    let server = Server::start_custom("", &extra);
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.contoso.test");
    let r = c.send(
        "carol@contoso.test",
        &["sales@contoso.test"],
        &message("proxy refused", "the smart host is down\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    // The :717 proxy answers RCPT with the smart host's failure; Transport defers it
    // with that reply, status once.
    let deferred = wait_for("the DEFER event", Duration::from_secs(30), || {
        let d = events(&server, "DEFER", "proxy refused");
        (!d.is_empty()).then_some(d)
    });
    let status = deferred[0]["RecipientStatus"][0].as_str().unwrap();
    assert!(
        status.starts_with("451 4.4.1 Connection failed"),
        "{status}"
    );
    assert_eq!(status.matches("4.4.1").count(), 1, "{status}");
    assert_eq!(status.matches("451").count(), 1, "{status}");
    // The Front End's :717 receive log holds the reply it gave, status once.
    let recv_dir = server
        .data_dir()
        .join("Logs/FrontEnd/ProtocolLog/SmtpReceive");
    let log = dir_text(&recv_dir);
    let reply = log
        .lines()
        .find(|l| l.contains("Outbound Proxy Frontend") && l.contains("Connection failed"))
        .unwrap_or_else(|| panic!("no :717 reply in the receive log:\n{log}"));
    assert_eq!(reply.matches("4.4.1").count(), 1, "{reply}");
    // Get-Message shows the same reply as the recipient's LastError.
    let last_error = wait_for(
        "the external recipient listed with a last error",
        Duration::from_secs(10),
        || {
            server
                .cli_json(&["message", "list"])
                .as_array()
                .unwrap()
                .iter()
                .find(|m| {
                    m["Recipients"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|a| a == "ext@fabrikam.test"))
                })
                .and_then(|m| m["LastError"].as_str().map(str::to_string))
        },
    );
    assert!(
        last_error.starts_with("451 4.4.1 Connection failed"),
        "{last_error}"
    );
    assert_eq!(last_error.matches("4.4.1").count(), 1, "{last_error}");
}

#[test]
fn a_message_larger_than_every_matching_send_connector_gets_ndr_5_3_4_and_is_not_sent() {
    let sink = Sink::start();
    // The first line is a key of the test organisation's `*` connector (the table
    // just before); the second connector is the fabrikam.test one.
    let extra = "max_message_size = \"1KB\"\n".to_string()
        + &smart_host_connector(
            "Fabrikam",
            "fabrikam.test",
            "MBX1",
            sink.port,
            "max_message_size = \"1KB\"\n",
        );
    let server = Server::start_custom("", &extra);
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.contoso.test");
    let body = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(80);
    let r = c.send(
        "carol@contoso.test",
        &["sales@contoso.test"],
        &message("five kilobytes", &body),
    );
    assert!(r.starts_with("250"), "{r}");
    // Carol, the sender, gets the NDR.
    server.wait_inbox("carol@contoso.test", 1);
    let ndr = String::from_utf8_lossy(&server.export("carol@contoso.test")[0]).to_string();
    assert!(ndr.contains("5.3.4"), "{ndr}");
    assert!(ndr.contains("ext@fabrikam.test"), "{ndr}");
    let failed = events(&server, "FAIL", "five kilobytes");
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["Recipients"][0], "ext@fabrikam.test");
    assert!(
        failed[0]["RecipientStatus"][0]
            .as_str()
            .is_some_and(|s| s.starts_with("550 5.3.4")),
        "{failed:#?}"
    );
    // The members inside the organisation got it; nothing went to the peer.
    server.wait_inbox("bob@contoso.test", 1);
    assert!(sink.transactions().is_empty(), "{:?}", sink.transactions());
    // A small message still goes through the connector.
    let r = c.send(
        "carol@contoso.test",
        &["sales@contoso.test"],
        &message("small enough", "short\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    let t = sink.wait_transactions(1);
    assert!(t[0].contains("Subject: small enough"), "{}", t[0]);
}

#[test]
fn panicking_receive_sessions_release_their_connection_slots_and_acknowledge_nothing() {
    // Two sessions per receive connector: a slot leaked by each panicking session
    // would lock Transport's receive connector after the second.
    let mut server = Server::start();
    let config = std::fs::read_to_string(server.config()).unwrap();
    std::fs::write(
        server.config(),
        config.replacen(
            "transport_protocol_logging = \"verbose\"\n",
            "transport_protocol_logging = \"verbose\"\nmax_inbound_connections = 2\n",
            1,
        ),
    )
    .unwrap();
    server.env.push((
        "MAILFLOW_TEST_PANIC_IN_RECEIVE_ON_SUBJECT".into(),
        "panic in receive".into(),
    ));
    server.kill9();
    server.spawn();
    for i in 0..10 {
        // The slot of the previous session is free once the server has seen its end;
        // a leaked one would keep the connector at its limit (421 4.3.2) for good.
        let mut c = wait_for(
            "a free session slot on Default Frontend",
            Duration::from_secs(10),
            || Smtp::try_connect(server.ports.frontend).ok(),
        );
        c.cmd("EHLO client.fabrikam.test");
        let r = c.send(
            "sender@fabrikam.test",
            &["alice@contoso.test"],
            &message(&format!("panic in receive {i}"), "never queued\r\n"),
        );
        // Never acknowledged: the message was not made durable.
        assert!(!r.starts_with("250"), "message {i}: {r}");
    }
    let mut c = wait_for(
        "a free session slot on Default Frontend",
        Duration::from_secs(10),
        || Smtp::try_connect(server.ports.frontend).ok(),
    );
    c.cmd("EHLO client.fabrikam.test");
    let r = c.send(
        "sender@fabrikam.test",
        &["bob@contoso.test"],
        &message("after receive panics", "delivered\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    server.wait_inbox("bob@contoso.test", 1);
    assert_eq!(server.inbox_count("alice@contoso.test"), 0);
    let submission = server
        .queues()
        .iter()
        .find(|q| q["Identity"] == "MBX1\\Submission")
        .cloned()
        .unwrap();
    assert_eq!(submission["MessageCount"], 0, "{submission:#?}");
}

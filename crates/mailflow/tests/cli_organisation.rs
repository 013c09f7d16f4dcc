//! Commands that look at the whole organisation (issue 15): `track --all-servers`
//! (Get-TransportService | Get-MessageTrackingLog) and its id filters, `connector
//! list` (Get-ReceiveConnector, Get-SendConnector) and `test-mailflow` (Test-Mailflow).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// MBX1 and MBX2 in one site, alice on MBX1's database, bob on MBX2's.
fn two_servers(p: &HashMap<String, Ports>) -> String {
    seed_003_org(
        p,
        "queue_glitch_retry_interval = \"1s\"\ntransient_failure_retry_interval = \"2s\"\n",
        &[],
    )
}

/// The same organisation as an administrator's machine sees it: the servers' data
/// folders are elsewhere (other machines), so only their admin APIs can answer.
fn remote_copy(c: &Cluster) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let text = file_text(&c.config()).replace("data_dir = \"data/", "data_dir = \"nowhere/");
    let file = dir.path().join("mailflow.toml");
    std::fs::write(&file, text).unwrap();
    std::fs::copy(
        c.dir.path().join("secret.key"),
        dir.path().join("secret.key"),
    )
    .unwrap();
    (dir, file)
}

fn run(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// `mailflow test-mailflow --from FROM --to TO` with `extra` arguments.
fn test_mailflow(config: &Path, from: &str, to: &str, extra: &[&str]) -> Output {
    let mut args = vec!["test-mailflow", "--from", from, "--to", to];
    args.extend_from_slice(extra);
    run(config, &args)
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn rows(config: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["track", "--result-size", "0", "--json"];
    all.extend_from_slice(args);
    let out = run(config, &all);
    assert!(
        out.status.success(),
        "track {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out).as_array().unwrap().clone()
}

fn s(v: &serde_json::Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

fn put_in_outbox(config: &Path, address: &str, eml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.eml");
    std::fs::write(&file, eml).unwrap();
    let out = run(
        config,
        &["mailbox", "send", address, "--eml", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn track_all_servers_merges_the_rows_of_two_machines_in_time_order_and_filters_by_ids() {
    let mut c = Cluster::new(&["MBX1", "MBX2"], two_servers);
    c.start_all();
    put_in_outbox(
        &c.config(),
        "alice@contoso.test",
        "From: alice@contoso.test\r\nTo: bob@contoso.test\r\nSubject: across two\r\nMessage-ID: <across-two@contoso.test>\r\n\r\nhi\r\n",
    );
    c.wait_delivered("across two", 1);
    let (_remote_dir, remote) = remote_copy(&c);
    // From the administrator's machine the files are not there: only the APIs answer.
    assert!(rows(&remote, &["--subject", "across two"]).is_empty());
    let all = rows(&remote, &["--all-servers", "--subject", "across two"]);
    let seq: Vec<String> = all
        .iter()
        .map(|e| format!("{} {} {}", s(e, "Server"), s(e, "Source"), s(e, "EventId")))
        .collect();
    // Seed 003: submitted on MBX1, received, routed and delivered on MBX2.
    assert_eq!(
        seq,
        [
            "MBX1 STOREDRIVER RECEIVE",
            "MBX1 STOREDRIVER SUBMIT",
            "MBX2 SMTP RECEIVE",
            "MBX2 AGENT AGENTINFO",
            "MBX2 SMTP SEND",
            "MBX2 SMTP RECEIVE",
            "MBX2 STOREDRIVER DELIVER",
        ],
        "{all:#?}"
    );
    let times: Vec<String> = all.iter().map(|e| s(e, "Timestamp")).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "rows must come in time order");
    // The table says which server each row is from.
    let table = run(
        &remote,
        &["track", "--all-servers", "--subject", "across two"],
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("Server "), "{text}");
    assert!(text.contains("MBX1 ") && text.contains("MBX2 "), "{text}");

    // -NetworkMessageId: the GUID the message keeps on every server.
    let deliver = all.iter().find(|e| s(e, "EventId") == "DELIVER").unwrap();
    let network = s(deliver, "NetworkMessageId");
    assert!(!network.is_empty());
    let by_network = rows(
        &remote,
        &["--all-servers", "--network-message-id", &network],
    );
    assert!(by_network.len() >= 5, "{by_network:#?}");
    assert!(
        by_network
            .iter()
            .all(|e| s(e, "NetworkMessageId") == network)
    );
    assert!(by_network.iter().any(|e| s(e, "EventId") == "DELIVER"));
    let none = rows(
        &remote,
        &[
            "--all-servers",
            "--network-message-id",
            "00000000-0000-0000-0000-000000000000",
        ],
    );
    assert!(none.is_empty(), "{none:#?}");
    // -InternalMessageId: one server's number (Transport's on MBX2), locally and
    // through the API.
    let send = all.iter().find(|e| s(e, "EventId") == "SEND").unwrap();
    let internal = s(send, "InternalMessageId");
    assert!(!internal.is_empty());
    for (config, args) in [
        (&remote, vec!["--all-servers"]),
        (&c.config(), vec!["--server", "MBX2"]),
    ] {
        let mut a = args.clone();
        a.extend(["--internal-message-id", &internal]);
        let got = rows(config, &a);
        assert!(!got.is_empty());
        assert!(got.iter().all(|e| s(e, "InternalMessageId") == internal));
        assert!(got.iter().any(|e| s(e, "EventId") == "SEND"), "{got:#?}");
    }

    // test-mailflow where the databases are (the Outbox path) and from the
    // administrator's machine (by SMTP to a Front End): delivered, every hop shown.
    let out = test_mailflow(
        &c.config(),
        "alice@contoso.test",
        "bob@contoso.test",
        &["--timeout", "30"],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(text.contains("TestMailflowResult  Success"), "{text}");
    assert!(text.contains("Test-Mailflow "), "{text}");
    let hop_line = |server: &str, event: &str| {
        text.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.get(1) == Some(&server) && w.get(3) == Some(&event)
        })
    };
    assert!(
        hop_line("MBX1", "SUBMIT") && hop_line("MBX2", "DELIVER"),
        "{text}"
    );
    let out = test_mailflow(
        &remote,
        "alice@contoso.test",
        "bob@contoso.test",
        &["--timeout", "30", "--json"],
    );
    assert!(out.status.success());
    let r = json(&out);
    assert_eq!(r["TestMailflowResult"], "Success", "{r:#}");
    let hops = r["Hops"].as_array().unwrap();
    let last = hops.last().unwrap();
    assert_eq!(
        (s(last, "Server"), s(last, "EventId")),
        ("MBX2".into(), "DELIVER".into())
    );
    // By SMTP through MBX1's Front End, which proxies to MBX2 (bob's delivery group).
    assert_eq!(s(&hops[0], "ConnectorId"), "MBX2\\Default MBX2", "{r:#}");
    assert!(hops.iter().all(|h| h["Elapsed"].as_f64().unwrap() < 30.0));

    // No such recipient: by SMTP the Front End refuses it, the first hop fails.
    let out = test_mailflow(
        &remote,
        "alice@contoso.test",
        "nobody@contoso.test",
        &["--json"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r = json(&out);
    assert_eq!(
        (
            s(&r["FailedHop"], "ConnectorId"),
            s(&r["FailedHop"], "EventId")
        ),
        ("MBX1\\Default Frontend MBX1".into(), "RECEIVE".into()),
        "{r:#}"
    );
    assert!(
        s(&r["FailedHop"], "RecipientStatus").contains("5.1.1"),
        "{r:#}"
    );
    // From its Outbox, Transport's categorizer fails it: the FAIL hop and its status.
    let out = test_mailflow(
        &c.config(),
        "alice@contoso.test",
        "nobody@contoso.test",
        &["--timeout", "30", "--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = json(&out);
    assert_eq!(r["TestMailflowResult"], "*FAILURE*", "{r:#}");
    let failed = &r["FailedHop"];
    assert_eq!(s(failed, "EventId"), "FAIL", "{r:#}");
    assert!(s(failed, "RecipientStatus").contains("5.1.1"), "{r:#}");
    // -Reference: the NDR's RECEIVE row refers to the probe's Message-ID.
    let probe = s(&r, "MessageId");
    let referring = wait_for("the NDR's rows", std::time::Duration::from_secs(20), || {
        let got = rows(&remote, &["--all-servers", "--reference", &probe]);
        (!got.is_empty()).then_some(got)
    });
    assert!(
        referring.iter().all(|e| s(e, "Source") == "DSN"
            && s(e, "Reference").contains(probe.trim_matches(['<', '>']))),
        "{referring:#?}"
    );

    // MBX2 stopped: the probe waits on MBX1, the command says so and that MBX2 is
    // silent; track --all-servers still prints MBX1's rows and exits 1.
    c.kill9("MBX2");
    let out = test_mailflow(
        &remote,
        "alice@contoso.test",
        "bob@contoso.test",
        &["--timeout", "6", "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(r["TestMailflowResult"], "*FAILURE*", "{r:#}");
    assert_eq!(
        r["ServersNotAnswering"],
        serde_json::json!(["MBX2"]),
        "{r:#}"
    );
    assert_eq!(s(&r["FailedHop"], "Server"), "MBX1", "{r:#}");
    // Where it waits, from MBX1's Get-Message: the delivery queue and its error.
    assert!(s(&r, "Error").contains("waits after it in MBX1\\"), "{r:#}");
    assert!(
        s(&r["FailedHop"], "RecipientStatus").contains("4.4.1"),
        "{r:#}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("MBX2: no answer"));
    let out = run(
        &remote,
        &[
            "track",
            "--all-servers",
            "--subject",
            "across two",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MBX2: no answer"));
    let left: Vec<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(e, "Server"))
        .collect();
    assert_eq!(left, ["MBX1", "MBX1"]);
}

#[test]
fn connector_list_shows_the_implicit_connectors_with_their_ports_and_a_custom_one() {
    let custom = "\n[[receive_connectors]]\nname = \"Relay MBX1\"\nserver = \"MBX1\"\nservice = \"transport\"\nbind = \"127.0.0.1:0\"\nremote_ranges = [\"127.0.0.0/8\"]\npermissions = [\"anonymous\", \"relay\"]\nprotocol_logging = \"verbose\"\n";
    let server = Server::start_with(custom);
    let list = server.cli_json(&["connector", "list"]);
    let list = list.as_array().unwrap();
    let find = |identity: &str| {
        list.iter()
            .find(|c| c["Identity"] == identity)
            .unwrap_or_else(|| panic!("no {identity} in {list:#?}"))
    };
    let bound = Ports::bound(&server.data_dir()).unwrap();
    for (identity, role, port) in [
        (
            "MBX1\\Default Frontend MBX1",
            "FrontendTransport",
            bound.frontend,
        ),
        (
            "MBX1\\Client Frontend MBX1",
            "FrontendTransport",
            bound.client_frontend,
        ),
        (
            "MBX1\\Outbound Proxy Frontend MBX1",
            "FrontendTransport",
            bound.outbound_proxy,
        ),
        ("MBX1\\Default MBX1", "HubTransport", bound.transport),
        (
            "MBX1\\Client Proxy MBX1",
            "HubTransport",
            bound.client_proxy,
        ),
        (
            "MBX1\\Default Mailbox Delivery MBX1",
            "MailboxDelivery",
            bound.mailbox_delivery,
        ),
        (
            "MBX1\\Relay MBX1",
            "HubTransport",
            server.listener_port("Relay MBX1"),
        ),
    ] {
        let c = find(identity);
        assert_eq!(
            (c["Kind"].as_str(), c["TransportRole"].as_str()),
            (Some("Receive"), Some(role))
        );
        // The file says port 0: a running server's bound port comes from listeners.json.
        assert_ne!(port, 0);
        assert_eq!(
            c["Bindings"],
            serde_json::json!([format!("127.0.0.1:{port}")]),
            "{c:#}"
        );
    }
    assert_eq!(
        find("MBX1\\Default Frontend MBX1")["PermissionGroups"],
        serde_json::json!(["AnonymousUsers"])
    );
    assert_eq!(
        find("MBX1\\Default Frontend MBX1")["ProtocolLoggingLevel"],
        "Verbose"
    );
    assert_eq!(
        find("MBX1\\Default MBX1")["PermissionGroups"],
        serde_json::json!(["ExchangeServers"])
    );
    assert_eq!(
        find("MBX1\\Default MBX1")["ProtocolLoggingLevel"],
        "Verbose",
        "the test file sets it"
    );
    let relay = find("MBX1\\Relay MBX1");
    assert_eq!(relay["Implicit"], false);
    assert_eq!(relay["RemoteIPRanges"], serde_json::json!(["127.0.0.0/8"]));
    assert_eq!(relay["ProtocolLoggingLevel"], "Verbose");
    let internet = find("Internet");
    assert_eq!(internet["Kind"], "Send");
    assert_eq!(internet["AddressSpaces"], serde_json::json!(["SMTP:*;1"]));
    assert_eq!(internet["TlsAuthLevel"], "EncryptionOnly");
    for implicit in [
        "MBX1\\Intra-Organization SMTP Send Connector",
        "MBX1\\Inbound Proxy Internal Send Connector",
    ] {
        let c = find(implicit);
        assert_eq!(
            (c["Kind"].as_str(), c["Implicit"].as_bool()),
            (Some("Send"), Some(true))
        );
    }
    assert_eq!(
        find("MBX1\\Intra-Organization SMTP Send Connector")["ProtocolLoggingLevel"],
        "Verbose",
        "intra_org_connector_protocol_logging of the test file"
    );

    // Stopped, the file's bindings; the table names every connector.
    let mut server = server;
    server.stop();
    let out = server.cli(&["connector", "list"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(text.starts_with("Identity "), "{text}");
    assert!(
        text.contains("MBX1\\Default Mailbox Delivery MBX1") && text.contains("127.0.0.1:0"),
        "{text}"
    );
    let stopped = server.cli_json(&["connector", "list"]);
    let delivery = stopped
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["Identity"] == "MBX1\\Default Mailbox Delivery MBX1")
        .cloned()
        .unwrap();
    assert_eq!(delivery["Bindings"], serde_json::json!(["127.0.0.1:0"]));
}

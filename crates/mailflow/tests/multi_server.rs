//! Several servers of one organisation on loopback: least-cost routing between sites,
//! hub sites, DAGs and switchovers, Front End hub selection, queueing at the point of
//! failure.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

/// The organisation and fast retries, shared by the organisations of these tests.
const ORG_HEAD: &str = r#"[organization]
name = "contoso"
secret_file = "secret.key"
accepted_domains = ["contoso.test"]

[transport]
queue_glitch_retry_interval = "1s"
transient_failure_retry_interval = "1s"
outbound_connection_failure_retry_interval = "1s"
"#;

/// Sites A, B, C with links A–B 10, B–C 10 and A–C `ac`; one server per site; carol's
/// database on SC. `team@` (no mailbox) makes Front End on SA use SA's Transport.
fn three_sites(b_hub: bool, ac: u32) -> impl Fn(&HashMap<String, Ports>) -> String {
    move |p| {
        let mut org = ORG_HEAD.to_string();
        org.push_str(&format!(
            r#"
[[sites]]
name = "A"
[[sites]]
name = "B"
hub_site = {b_hub}
[[sites]]
name = "C"

[[site_links]]
sites = ["A", "B"]
cost = 10
[[site_links]]
sites = ["B", "C"]
cost = 10
[[site_links]]
sites = ["A", "C"]
cost = {ac}
"#
        ));
        for (name, site) in [("SA", "A"), ("SB", "B"), ("SC", "C")] {
            org.push_str(&server_entry(name, site, &p[name]));
        }
        org.push_str(&database_and_group(
            ("DBC", "SC"),
            "carol@contoso.test",
            ("team@contoso.test", "carol@contoso.test"),
        ));
        org
    }
}

/// A database with one copy holding one mailbox, and a group with one member.
fn database_and_group(
    (database, copy): (&str, &str),
    mailbox: &str,
    (group, member): (&str, &str),
) -> String {
    format!(
        r#"
[[databases]]
name = "{database}"
copies = ["{copy}"]

[[mailboxes]]
address = "{mailbox}"
database = "{database}"

[[groups]]
address = "{group}"
members = ["{member}"]
require_sender_authentication = false
"#
    )
}

fn route_to(cluster: &Cluster, server: &str, destination: &str) -> serde_json::Value {
    let table = cluster.cli_json(&["--server", server, "route", "show"]);
    table
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Destination"] == destination)
        .cloned()
        .unwrap_or_else(|| panic!("no route to {destination}: {table:#}"))
}

#[test]
fn site_links_price_paths_but_do_not_relay_unless_a_hub_site_is_on_the_path() {
    // B is not a hub site: A→C costs 20 through B, but SA connects straight to SC.
    let mut c = Cluster::new(&["SA", "SB", "SC"], three_sites(false, 30));
    c.start_all();
    let r = route_to(&c, "SA", "Database DBC");
    assert_eq!(r["Cost"], 20);
    assert_eq!(r["Path"], serde_json::json!(["A", "B", "C"]));
    assert_eq!(
        r["NextHop"],
        "SmtpRelayToMailboxDeliveryGroup:Site:C;Version:15"
    );
    send_via(c.frontend("SA"), &["team@contoso.test"], "direct to C");
    c.wait_delivered("direct to C", 1);
    assert_eq!(
        c.event_ids("SA", "direct to C"),
        ["RECEIVE", "EXPAND", "AGENTINFO", "SEND"]
    );
    assert!(
        c.event_ids("SB", "direct to C").is_empty(),
        "B must see nothing"
    );
    assert_eq!(
        c.event_ids("SC", "direct to C"),
        ["RECEIVE", "AGENTINFO", "SEND", "RECEIVE", "DELIVER"]
    );
    let send = c.track(
        Some("SA"),
        &["--event-id", "SEND", "--subject", "direct to C"],
    );
    assert_eq!(send[0]["ServerHostname"], "sc.contoso.test");
}

#[test]
fn a_hub_site_on_the_least_cost_path_is_a_stop_and_queues_while_the_destination_is_down() {
    let mut c = Cluster::new(&["SA", "SB", "SC"], three_sites(true, 30));
    c.start_all();
    assert_eq!(
        route_to(&c, "SA", "Database DBC")["NextHop"],
        "SmtpRelayToRemoteAdSite:B"
    );
    send_via(c.frontend("SA"), &["team@contoso.test"], "through hub B");
    c.wait_delivered("through hub B", 1);
    assert_eq!(
        c.event_ids("SB", "through hub B"),
        ["RECEIVE", "AGENTINFO", "SEND"]
    );
    let send = c.track(
        Some("SA"),
        &["--event-id", "SEND", "--subject", "through hub B"],
    );
    assert_eq!(send[0]["ServerHostname"], "sb.contoso.test");

    // Every server of C down: the message waits as close to C as possible, in B.
    c.kill9("SC");
    send_via(c.frontend("SA"), &["team@contoso.test"], "while C is down");
    let queued = wait_for("the message to queue in B", Duration::from_secs(20), || {
        c.queues("SB").into_iter().find(|q| {
            q["NextHopDomain"] == "Site:C;Version:15"
                && q["MessageCount"] == 1
                && q["Status"] == "Retry"
        })
    });
    assert!(
        queued["LastError"].as_str().unwrap().contains("4.4.1"),
        "{queued:#}"
    );
    assert!(
        c.queues("SA").iter().all(|q| q["MessageCount"] == 0),
        "A must have handed it to B"
    );
    c.start("SC");
    c.wait_delivered("while C is down", 1);
}

#[test]
fn a_cheaper_direct_link_skips_the_hub_site_once_the_file_is_reloaded() {
    let mut c = Cluster::new(&["SA", "SB", "SC"], three_sites(true, 30));
    c.start_all();
    send_via(
        c.frontend("SA"),
        &["team@contoso.test"],
        "before the change",
    );
    c.wait_delivered("before the change", 1);
    assert_eq!(
        c.event_ids("SB", "before the change"),
        ["RECEIVE", "AGENTINFO", "SEND"],
        "the hub site B is a stop while A-C costs 30"
    );
    // The administrator lowers A-C to 15 and reloads: no restart.
    std::fs::write(c.config(), three_sites(true, 15)(&c.ports)).unwrap();
    let out = c.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for server in ["SA", "SB", "SC"] {
        assert!(text.contains(&format!("{server}: reloaded")), "{text}");
    }
    let r = route_to(&c, "SA", "Database DBC");
    assert_eq!(
        (r["Cost"].clone(), r["Path"].clone()),
        (serde_json::json!(15), serde_json::json!(["A", "C"]))
    );
    // The running server routes by the new table, and its routing log says so.
    let live = c.cli_json(&["--server", "SA", "route", "show", "--live"]);
    let live_dbc = live
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Destination"] == "Database DBC")
        .cloned()
        .unwrap();
    assert_eq!(live_dbc["Cost"], 15, "{live:#}");
    send_via(c.frontend("SA"), &["team@contoso.test"], "A to C directly");
    c.wait_delivered("A to C directly", 1);
    assert!(c.event_ids("SB", "A to C directly").is_empty());
    // A file that does not validate changes nothing, and says where it is wrong.
    let good = std::fs::read_to_string(c.config()).unwrap();
    std::fs::write(c.config(), good.replace("cost = 15", "cost = \"cheap\"")).unwrap();
    let out = c.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mailflow.toml:") && err.contains("cost"),
        "{err}"
    );
    std::fs::write(c.config(), good).unwrap();
}

#[test]
fn without_a_hub_site_the_message_queues_in_the_source_site_and_flows_when_c_returns() {
    let mut c = Cluster::new(&["SA", "SB", "SC"], three_sites(false, 30));
    c.start_all();
    c.kill9("SC");
    send_via(c.frontend("SA"), &["team@contoso.test"], "C down, no hub");
    let q = wait_for("the message to queue in A", Duration::from_secs(20), || {
        c.queues("SA")
            .into_iter()
            .find(|q| q["MessageCount"] == 1 && q["Status"] == "Retry")
    });
    assert!(q["LastError"].as_str().unwrap().contains("4.4.1"), "{q:#}");
    c.start("SC");
    c.wait_delivered("C down, no hub", 1);
    assert!(c.event_ids("SB", "C down, no hub").is_empty());
}

#[test]
fn equal_cost_paths_are_decided_by_the_site_name_nearest_the_destination() {
    // A–Y–Z and A–X–Z both cost 20 with one hub each way: X sorts first, so the
    // message stops in X.
    let org = |p: &HashMap<String, Ports>| {
        let mut org = String::from(
            "[organization]\nname = \"contoso\"\nsecret_file = \"secret.key\"\naccepted_domains = [\"contoso.test\"]\n\n[[sites]]\nname = \"A\"\n[[sites]]\nname = \"Y\"\nhub_site = true\n[[sites]]\nname = \"X\"\nhub_site = true\n[[sites]]\nname = \"Z\"\n",
        );
        for (a, b) in [("A", "Y"), ("Y", "Z"), ("A", "X"), ("X", "Z")] {
            org.push_str(&format!(
                "[[site_links]]\nsites = [\"{a}\", \"{b}\"]\ncost = 10\n"
            ));
        }
        for (name, site) in [("SA", "A"), ("SX", "X"), ("SY", "Y"), ("SZ", "Z")] {
            org.push_str(&server_entry(name, site, &p[name]));
        }
        org.push_str("\n[[databases]]\nname = \"DBZ\"\ncopies = [\"SZ\"]\n\n[[mailboxes]]\naddress = \"zoe@contoso.test\"\ndatabase = \"DBZ\"\n\n[[groups]]\naddress = \"zteam@contoso.test\"\nmembers = [\"zoe@contoso.test\"]\nrequire_sender_authentication = false\n");
        org
    };
    let mut c = Cluster::new(&["SA", "SX", "SY", "SZ"], org);
    c.start_all();
    let r = route_to(&c, "SA", "Database DBZ");
    assert_eq!(r["Path"], serde_json::json!(["A", "X", "Z"]));
    assert_eq!(r["NextHop"], "SmtpRelayToRemoteAdSite:X");
    send_via(c.frontend("SA"), &["zteam@contoso.test"], "tie break");
    c.wait_delivered("tie break", 1);
    assert_eq!(
        c.event_ids("SX", "tie break"),
        ["RECEIVE", "AGENTINFO", "SEND"]
    );
    assert!(c.event_ids("SY", "tie break").is_empty());
}

/// A DAG spanning sites A and B (M1, M2) holding DB01 (alice); M3 in site A and M4 in
/// site B outside the DAG; bob's database DBB is on M4.
fn dag_org(p: &HashMap<String, Ports>) -> String {
    let mut org = String::from(
        "[organization]\nname = \"contoso\"\nsecret_file = \"secret.key\"\naccepted_domains = [\"contoso.test\"]\n\n[transport]\nqueue_glitch_retry_interval = \"1s\"\n\n[[sites]]\nname = \"A\"\n[[sites]]\nname = \"B\"\n[[site_links]]\nsites = [\"A\", \"B\"]\ncost = 10\n",
    );
    for (name, site) in [("M1", "A"), ("M2", "B"), ("M3", "A"), ("M4", "B")] {
        org.push_str(&server_entry(name, site, &p[name]));
    }
    org.push_str("\n[[dags]]\nname = \"DAG1\"\nservers = [\"M1\", \"M2\"]\n\n[[databases]]\nname = \"DB01\"\ncopies = [\"M1\", \"M2\"]\n\n[[databases]]\nname = \"DBB\"\ncopies = [\"M4\"]\n\n[[mailboxes]]\naddress = \"alice@contoso.test\"\ndatabase = \"DB01\"\n\n[[mailboxes]]\naddress = \"bob@contoso.test\"\ndatabase = \"DBB\"\n");
    org
}

#[test]
fn front_end_proxies_to_a_transport_server_of_the_recipients_delivery_group() {
    let mut c = Cluster::new(&["M1", "M2", "M3", "M4"], dag_org);
    c.start_all();
    // M3 (site A, no DAG) receives mail for bob, whose database is on M4 in site B:
    // its Front End proxies to a Transport server of site B's mailbox delivery group.
    send_via(c.frontend("M3"), &["bob@contoso.test"], "front end picks B");
    c.wait_delivered("front end picks B", 1);
    for s in ["M1", "M3"] {
        assert!(
            c.event_ids(s, "front end picks B").is_empty(),
            "{s}'s Transport must not be used"
        );
    }
    let transport_receives: Vec<String> = ["M2", "M4"]
        .iter()
        .flat_map(|s| {
            c.track(
                Some(s),
                &["--event-id", "RECEIVE", "--subject", "front end picks B"],
            )
        })
        .map(|e| e["ConnectorId"].as_str().unwrap().to_string())
        .filter(|id| !id.contains("Mailbox Delivery"))
        .collect();
    assert!(
        transport_receives == ["M2\\Default M2"] || transport_receives == ["M4\\Default M4"],
        "{transport_receives:?}"
    );
    // Alice's database is in the DAG: M3's Front End picks a DAG member.
    send_via(
        c.frontend("M3"),
        &["alice@contoso.test"],
        "front end picks the DAG",
    );
    c.wait_delivered("front end picks the DAG", 1);
    assert!(c.event_ids("M3", "front end picks the DAG").is_empty());
}

#[test]
fn database_move_switches_delivery_to_the_new_active_copy_and_in_flight_mail_arrives_once() {
    let mut c = Cluster::new(&["M1", "M2", "M3", "M4"], dag_org);
    c.start_all();
    send_via(c.frontend("M1"), &["alice@contoso.test"], "before the move");
    let d = c.wait_delivered("before the move", 1);
    // DELIVER rows name the delivering server short, as Exchange does (seed 003).
    assert_eq!(d[0]["ServerHostname"], "M1");

    // Hold M1's queue for DB01 so messages are in flight when the copy moves.
    let out = c.cli(&["--server", "M1", "queue", "suspend", "DB01"]);
    assert_success(&out);
    for i in 0..5 {
        send_via(
            c.frontend("M1"),
            &["alice@contoso.test"],
            &format!("in flight {i}"),
        );
    }
    wait_for("5 messages held on M1", Duration::from_secs(20), || {
        c.queues("M1")
            .into_iter()
            .find(|q| q["NextHopDomain"] == "DB01" && q["MessageCount"] == 5)
    });
    let out = c.cli(&["database", "move", "DB01", "--to", "M2"]);
    assert_success(&out);
    assert_eq!(
        route_to(&c, "M3", "Database DB01")["NextHop"],
        "SmtpRelayToDag:DAG1"
    );
    let out = c.cli(&["--server", "M1", "queue", "resume", "DB01"]);
    assert!(out.status.success());
    // And more while everything flows, through both Front Ends.
    for i in 0..5 {
        send_via(
            c.frontend(if i % 2 == 0 { "M1" } else { "M3" }),
            &["alice@contoso.test"],
            &format!("after move {i}"),
        );
    }
    for i in 0..5 {
        let d = c.wait_delivered(&format!("in flight {i}"), 1);
        assert_eq!(
            d[0]["ServerHostname"], "M2",
            "delivered by the new active copy"
        );
        let d = c.wait_delivered(&format!("after move {i}"), 1);
        assert_eq!(d[0]["ServerHostname"], "M2");
    }
    let alice_delivered = || {
        c.track(
            None,
            &[
                "--event-id",
                "DELIVER",
                "--recipients",
                "alice@contoso.test",
            ],
        )
    };
    // A second delivery by the old active copy would show within a second.
    assert_for("eleven deliveries to alice", Duration::from_secs(1), || {
        let n = alice_delivered().len();
        (n == 11).then_some(()).ok_or(format!("{n} DELIVER events"))
    });
    let all = alice_delivered();
    let mut subjects: Vec<&str> = all
        .iter()
        .map(|e| e["MessageSubject"].as_str().unwrap())
        .collect();
    subjects.sort();
    let before = subjects.len();
    subjects.dedup();
    assert_eq!(
        (before, subjects.len()),
        (11, 11),
        "each message exactly once: {subjects:?}"
    );
}

/// The PostgreSQL that scripts/test starts (`MAILFLOW_TEST_POSTGRES`), or None (the
/// test says it is skipped).
fn postgres_url() -> Option<String> {
    let url = std::env::var("MAILFLOW_TEST_POSTGRES").ok();
    if url.is_none() {
        eprintln!("skipped: MAILFLOW_TEST_POSTGRES not set (scripts/test starts a PostgreSQL)");
    }
    url
}

#[test]
fn a_dag_database_on_postgresql_is_one_mailbox_whichever_copy_is_active() {
    let Some(url) = postgres_url() else {
        return;
    };
    // A database name of its own, so parallel runs on one PostgreSQL never mix.
    let db = format!("DBPG{}", std::process::id());
    let org = move |p: &HashMap<String, Ports>| {
        dag_org(p)
            .replace(
                "name = \"DB01\"\ncopies = [\"M1\", \"M2\"]",
                &format!("name = \"{db}\"\ncopies = [\"M1\", \"M2\"]\nstore = \"{url}\""),
            )
            .replace("database = \"DB01\"", &format!("database = \"{db}\""))
    };
    let mut c = Cluster::new(&["M1", "M2", "M3", "M4"], org);
    c.start_all();
    for i in 0..3 {
        send_via(
            c.frontend("M1"),
            &["alice@contoso.test"],
            &format!("pg before {i}"),
        );
    }
    let queue = format!("DBPG{}", std::process::id());
    wait_for("3 deliveries on M1", Duration::from_secs(30), || {
        (c.track(None, &["--event-id", "DELIVER", "--subject", "pg before"])
            .len()
            == 3)
            .then_some(())
    });
    let out = c.cli(&["--server", "M1", "queue", "suspend", &queue]);
    assert_success(&out);
    for i in 0..3 {
        send_via(
            c.frontend("M1"),
            &["alice@contoso.test"],
            &format!("pg in flight {i}"),
        );
    }
    let out = c.cli(&["database", "move", &queue, "--to", "M2"]);
    assert_success(&out);
    assert!(
        c.cli(&["--server", "M1", "queue", "resume", &queue])
            .status
            .success()
    );
    let delivered = wait_for(
        "3 in-flight deliveries on M2",
        Duration::from_secs(30),
        || {
            let d = c.track(
                None,
                &["--event-id", "DELIVER", "--subject", "pg in flight"],
            );
            (d.len() == 3).then_some(d)
        },
    );
    assert!(
        delivered.iter().all(|d| d["ServerHostname"] == "M2"),
        "{delivered:#?}"
    );
    // One mailbox, whichever server delivered: the export sees all six, once each.
    let mut subjects: Vec<String> = c
        .export(None, "alice@contoso.test", None)
        .unwrap_or_else(|e| panic!("export failed: {e}"))
        .iter()
        .map(|m| header_values(m, "Subject")[0].clone())
        .collect();
    subjects.sort();
    let expected: Vec<String> = (0..3)
        .map(|i| format!("pg before {i}"))
        .chain((0..3).map(|i| format!("pg in flight {i}")))
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(subjects, expected);
}

/// One site with servers `names`, alice's database on the first, a group whose only
/// member is outside (so mail to it leaves the organisation), and `extra` appended.
fn one_site(p: &HashMap<String, Ports>, names: &[&str], extra: &str) -> String {
    let mut org = format!("{ORG_HEAD}\n[[sites]]\nname = \"A\"\n");
    for name in names {
        org.push_str(&server_entry(name, "A", &p[*name]));
    }
    org.push_str(&database_and_group(
        ("DBA", names[0]),
        "alice@contoso.test",
        ("partners@contoso.test", "someone@fabrikam.test"),
    ));
    org.push_str(extra);
    org
}

#[test]
fn without_a_connector_the_recipient_waits_in_unreachable_until_one_is_added_and_reloaded() {
    let sink = Sink::start();
    let mut c = Cluster::new(&["SA"], |p| one_site(p, &["SA"], ""));
    c.start_all();
    send_via(
        c.frontend("SA"),
        &["partners@contoso.test"],
        "no connector yet",
    );
    let q = wait_for("the Unreachable queue", Duration::from_secs(20), || {
        c.queues("SA")
            .into_iter()
            .find(|q| q["DeliveryType"] == "Unreachable" && q["MessageCount"] == 1)
    });
    assert!(q["LastError"].as_str().unwrap().contains("5.4.4"), "{q:#}");
    assert!(sink.transactions().is_empty());
    // The administrator adds a send connector for the domain and reloads.
    let connector = smart_host_connector("Fabrikam", "fabrikam.test", "SA", sink.port, "");
    std::fs::write(c.config(), one_site(&c.ports, &["SA"], &connector)).unwrap();
    let out = c.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let delivered = sink.wait_transactions(1);
    assert!(
        delivered[0].contains("someone@fabrikam.test"),
        "{delivered:?}"
    );
    wait_for("the queues to empty", Duration::from_secs(20), || {
        c.queues("SA")
            .iter()
            .all(|q| q["MessageCount"] == 0)
            .then_some(())
    });
    let events = c.event_ids("SA", "no connector yet");
    assert!(events.contains(&"SEND".to_string()), "{events:?}");
    assert!(!events.contains(&"FAIL".to_string()), "{events:?}");
}

#[test]
fn a_forwarding_loop_between_two_servers_ends_with_5_4_6_and_one_ndr() {
    // A misconfiguration: each server relays loop.test to the other's relay connector.
    let relay = free_ports(2);
    let ports = relay.clone();
    let org = move |p: &HashMap<String, Ports>| {
        let mut extra = String::new();
        for (i, (me, other)) in [("SA", "SB"), ("SB", "SA")].into_iter().enumerate() {
            extra.push_str(&format!(
                "\n[[receive_connectors]]\nname = \"Relay {me}\"\nserver = \"{me}\"\nservice = \"frontend\"\nbind = \"127.0.0.1:{port}\"\nremote_ranges = [\"127.0.0.1\"]\npermissions = [\"relay\"]\n",
                port = ports[i]
            ));
            extra.push_str(&smart_host_connector(
                &format!("Loop via {other}"),
                "loop.test",
                me,
                ports[1 - i],
                "",
            ));
        }
        one_site(p, &["SA", "SB"], &extra)
    };
    let mut c = Cluster::new(&["SA", "SB"], org);
    c.start_all();
    let mut s = Smtp::connect(relay[0]);
    s.cmd("EHLO app.contoso.test");
    let r = s.send(
        "alice@contoso.test",
        &["x@loop.test"],
        &message("round and round", "a loop\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    s.cmd("QUIT");
    // Alice receives one NDR with 5.4.6, and the loop is over: nothing stays queued.
    let ndr = wait_for("the NDR", Duration::from_secs(60), || {
        let fails = c.track(
            None,
            &["--event-id", "FAIL", "--subject", "round and round"],
        );
        let ndr = c.track(
            None,
            &[
                "--event-id",
                "DELIVER",
                "--recipients",
                "alice@contoso.test",
            ],
        );
        (!fails.is_empty() && !ndr.is_empty()).then_some((fails, ndr))
    });
    let (fails, delivered) = ndr;
    assert_eq!(fails.len(), 1, "{fails:#?}");
    assert!(
        fails[0]["RecipientStatus"].to_string().contains("5.4.6"),
        "{fails:#?}"
    );
    // A runaway loop would show itself within three seconds.
    assert_for("exactly one NDR", Duration::from_secs(3), || {
        let again = c.track(
            None,
            &[
                "--event-id",
                "DELIVER",
                "--recipients",
                "alice@contoso.test",
            ],
        );
        (again.len() == 1)
            .then_some(())
            .ok_or(format!("{again:#?}"))
    });
    assert_eq!(delivered.len(), 1);
    let files = c
        .export(Some("SA"), "alice@contoso.test", None)
        .unwrap_or_else(|e| panic!("export failed: {e}"));
    assert_eq!(files.len(), 1);
    let text = String::from_utf8_lossy(&files[0]);
    assert!(text.contains("Status: 5.4.6"), "{text}");
    assert!(text.contains("x@loop.test"), "{text}");
    for server in ["SA", "SB"] {
        assert!(
            c.queues(server).iter().all(|q| q["MessageCount"] == 0),
            "{server}: {:#?}",
            c.queues(server)
        );
    }
}

#[test]
fn when_the_active_copys_server_dies_the_next_copy_takes_over_and_the_returning_server_learns_it() {
    let Some(url) = postgres_url() else {
        return;
    };
    let db = format!("DBFO{}", std::process::id());
    let org = move |p: &HashMap<String, Ports>| {
        dag_org(p)
            .replace(
                "servers = [\"M1\", \"M2\"]\n",
                "servers = [\"M1\", \"M2\"]\nfailover_after = \"2s\"\n",
            )
            .replace(
                "name = \"DB01\"\ncopies = [\"M1\", \"M2\"]",
                &format!("name = \"{db}\"\ncopies = [\"M1\", \"M2\"]\nstore = \"{url}\""),
            )
            .replace("database = \"DB01\"", &format!("database = \"{db}\""))
    };
    let mut c = Cluster::new(&["M1", "M2", "M3", "M4"], org);
    c.start_all();
    send_via(c.frontend("M3"), &["alice@contoso.test"], "fo before");
    let d = c.wait_delivered("fo before", 1);
    assert_eq!(d[0]["ServerHostname"], "M1");

    // M1 dies: after failover_after, M2 (next in activation preference) takes over and
    // the message sent meanwhile is delivered there.
    c.kill9("M1");
    send_via(c.frontend("M3"), &["alice@contoso.test"], "fo during");
    let d = c.wait_delivered("fo during", 1);
    assert_eq!(d[0]["ServerHostname"], "M2", "{d:#?}");
    assert!(c.logs().contains("failover"), "M2 says why");

    // M1 returns and learns from M2 that the active copy is on M2: mail entering at M1
    // (whose own Transport would otherwise deliver locally) is delivered on M2.
    c.start("M1");
    send_via(c.frontend("M1"), &["alice@contoso.test"], "fo after");
    let d = c.wait_delivered("fo after", 1);
    assert_eq!(d[0]["ServerHostname"], "M2", "{d:#?}");
    let all = c.track(None, &["--event-id", "DELIVER", "--subject", "fo "]);
    assert_eq!(all.len(), 3, "each message once: {all:#?}");
}

/// Transport keeps an idle session inside the organisation for
/// `intra_org_connection_cache_time`. When the server at the other end restarts
/// meanwhile, the next message goes out at once on a new connection: the lost session
/// is not a failure of the next hop, so the queue does not wait its retry interval
/// (30 s here, longer than the test waits).
#[test]
fn a_cached_session_to_a_restarted_server_is_replaced_at_once_without_a_retry() {
    let org = |p: &HashMap<String, Ports>| {
        three_sites(false, 30)(p)
            .replace(
                "queue_glitch_retry_interval = \"1s\"",
                "queue_glitch_retry_interval = \"30s\"\nintra_org_connection_cache_time = \"60s\"",
            )
            .replace(
                "transient_failure_retry_interval = \"1s\"",
                "transient_failure_retry_interval = \"30s\"",
            )
    };
    let mut c = Cluster::new(&["SA", "SB", "SC"], org);
    c.start("SA");
    c.start("SC");
    // team@ has no mailbox: SA's Front End hands it to SA's Transport, which relays
    // it straight to SC (no hub site) and keeps that session.
    send_via(
        c.frontend("SA"),
        &["team@contoso.test"],
        "before the restart",
    );
    c.wait_delivered("before the restart", 1);
    c.kill9("SC");
    c.start("SC");
    send_via(
        c.frontend("SA"),
        &["team@contoso.test"],
        "after the restart",
    );
    let delivered = wait_for("delivery without a retry", Duration::from_secs(15), || {
        let d = c.track(
            None,
            &["--event-id", "DELIVER", "--subject", "after the restart"],
        );
        (!d.is_empty()).then_some(d)
    });
    assert_eq!(delivered.len(), 1);
    assert!(
        file_text(&c.dir.path().join("SA.log")).contains("cached session to sc.contoso.test lost"),
        "the test must have used the cached session:\n{}",
        c.logs()
    );
    assert!(
        c.queues("SA").iter().all(|q| q["Status"] != "Retry"),
        "{:#?}",
        c.queues("SA")
    );
}

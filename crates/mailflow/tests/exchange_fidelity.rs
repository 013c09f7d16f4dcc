//! Exchange fidelity (issue 15): what mailflow shows an administrator and a client has
//! the shape and values Exchange's has — the seeds' tracking rows, greetings, NDRs.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Exchange greets `220 <fqdn> Microsoft ESMTP MAIL Service ready at <RFC 5322 date>`
/// and answers EHLO with `250-<fqdn> Hello [<client IP>]`, whatever name the client
/// gave. Checked with Python's smtplib, which parses the date with the standard library.
#[test]
fn the_greeting_carries_the_date_and_ehlo_names_the_clients_address() {
    let server = Server::start();
    let script = format!(
        r#"
import smtplib, email.utils, datetime, re, sys
s = smtplib.SMTP()
code, banner = s.connect("127.0.0.1", {port})
banner = banner.decode()
m = re.fullmatch(r"(\S+) mailflow ESMTP MAIL Service ready at (.+)", banner)
assert code == 220 and m, banner
when = email.utils.parsedate_to_datetime(m.group(2))
assert when.tzinfo is not None, banner
now = datetime.datetime.now(datetime.timezone.utc)
assert abs((now - when).total_seconds()) < 300, (banner, now)
code, ehlo = s.ehlo("client.fabrikam.test")
first = ehlo.decode().splitlines()[0]
assert code == 250 and first == m.group(1) + " Hello [127.0.0.1]", first
code, helo = s.helo("client.fabrikam.test")
assert code == 250 and helo.decode() == m.group(1) + " Hello [127.0.0.1]", helo
s.quit()
print(banner)
"#,
        port = server.ports.frontend
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reference §3.2: reports to internal senders come from the Microsoft Exchange
/// recipient, not from postmaster@ (which remains the sender for external senders).
#[test]
fn an_internal_senders_ndr_comes_from_the_microsoft_exchange_recipient() {
    let rule = "\n[[transport_rules]]\nname = \"No offers\"\nif = { subject_contains_words = [\"special offer\"] }\nthen = { reject_message = \"Offers are not allowed\" }\n";
    let server = Server::start_custom("", rule);
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.contoso.test");
    let r = c.send(
        "alice@contoso.test",
        &["bob@contoso.test"],
        "From: alice@contoso.test\r\nSubject: A special offer\r\n\r\nbuy\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    let ndr = wait_for("the NDR", Duration::from_secs(20), || {
        server
            .export("alice@contoso.test")
            .into_iter()
            .find(|m| String::from_utf8_lossy(m).contains("multipart/report"))
    });
    assert_eq!(
        header_values(&ndr, "From"),
        ["Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.test>"]
    );
    let rows = server.track(&["--event-id", "RECEIVE", "--source", "DSN"]);
    assert_eq!(
        rows[0]["Sender"], "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.test",
        "{rows:#?}"
    );
}

/// `route show` gives each send connector's address spaces with their costs, as
/// Exchange's routing table does (issue 15 item 10).
#[test]
fn route_show_lists_each_address_space_of_a_connector_with_its_cost() {
    let connector = "\n[[send_connectors]]\nname = \"Partners\"\naddress_spaces = [{ domain = \"*.fabrikam.test\", cost = 5 }, { domain = \"*\", cost = 10 }]\nsmart_hosts = [\"[127.0.0.1]:9\"]\n";
    let server = Server::start_custom("", connector);
    let table = server.cli_json(&["route", "show"]);
    let spaces: Vec<&str> = table
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["Destination"] == "Connector Partners")
        .map(|r| r["AddressSpace"].as_str().unwrap())
        .collect();
    assert_eq!(spaces, ["SMTP:*.fabrikam.test;5", "SMTP:*;10"], "{table:#}");
    let out = server.cli(&["route", "show"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().next().unwrap_or("").contains("AddressSpace"),
        "{text}"
    );
}

/// Get-Message identities name the Unreachable queue (`MBX1\Unreachable\<id>`), and an
/// empty delivery queue goes away after QueueMaxIdleTime; the next message for its
/// next hop gets a new queue (issue 15 item 5).
#[test]
fn unreachable_messages_are_named_by_their_queue_and_idle_queues_go_away() {
    let server = Server::start_edited(|org| {
        org.replace("[transport]\n", "[transport]\nqueue_max_idle_time = \"2s\"\n")
            .replace(
                "[[send_connectors]]\nname = \"Internet\"\naddress_spaces = [{ domain = \"*\", cost = 1 }]\nsource_servers = [\"MBX1\"]\n",
                "",
            )
    });
    server.send_from_outbox(
        "alice@contoso.test",
        "From: alice@contoso.test\r\nTo: partner@fabrikam.test\r\nSubject: nowhere to go\r\n\r\nx\r\n",
    );
    let listed = wait_for(
        "the message in Unreachable",
        Duration::from_secs(20),
        || {
            let list = server.cli_json(&["message", "list"]);
            list.as_array()
                .unwrap()
                .iter()
                .find(|m| m["Subject"] == "nowhere to go")
                .cloned()
        },
    );
    let identity = listed["Identity"].as_str().unwrap();
    assert!(identity.starts_with("MBX1\\Unreachable\\"), "{listed:#}");
    assert_eq!(listed["Queue"], "MBX1\\Unreachable");

    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    let first = |server: &Server| {
        server
            .queues()
            .into_iter()
            .find(|q| {
                q["NextHopDomain"]
                    .as_str()
                    .is_some_and(|d| d.eq_ignore_ascii_case("db01"))
            })
            .map(|q| q["Identity"].as_str().unwrap().to_string())
    };
    assert!(
        c.send(
            "sender@fabrikam.test",
            &["carol@contoso.test"],
            &message("one", "x\r\n")
        )
        .starts_with("250")
    );
    server.wait_inbox("carol@contoso.test", 1);
    let before = first(&server).expect("DB01's delivery queue");
    // Gone after 2 s idle (checked every 0.5 s), not at once.
    let gone = poll_until(Duration::from_secs(15), || {
        first(&server).is_none().then_some(())
    });
    assert!(gone.is_some(), "{:#?}", server.queues());
    assert!(
        c.send(
            "sender@fabrikam.test",
            &["carol@contoso.test"],
            &message("two", "x\r\n")
        )
        .starts_with("250")
    );
    server.wait_inbox("carol@contoso.test", 2);
    let after = first(&server).expect("a new queue for DB01");
    assert_ne!(before, after, "a new queue, with a new number");
}

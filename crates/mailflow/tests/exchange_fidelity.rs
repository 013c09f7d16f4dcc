//! Exchange fidelity (issue 15): what mailflow shows an administrator and a client has
//! the shape and values Exchange's has — the seeds' tracking rows, greetings, NDRs.

mod common;

use std::process::Command;

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
    let ndr = wait_for("the NDR", std::time::Duration::from_secs(20), || {
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

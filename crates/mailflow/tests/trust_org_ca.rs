//! The organisation CA (DESIGN §7, issue 13 items 2 and 5): `mailflow init` makes it
//! and signs the server's certificate; servers of one organisation on 127.0.0.1 and
//! 127.0.0.2 talk over TLS verified against it, both ways; internal listeners refuse a
//! client certificate it did not sign (and none); a server presenting another CA's
//! certificate gets nothing; a file made before the CA keeps working, is warned about,
//! and is upgraded by `mailflow init --add-ca`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// The internal listeners of a server: Default <server> :2525, Client Proxy :465,
/// Mailbox Delivery :475, Outbound Proxy Frontend :717.
fn internal(p: &Ports) -> [(&'static str, u16); 4] {
    [
        ("transport", p.transport),
        ("client_proxy", p.client_proxy),
        ("mailbox_delivery", p.mailbox_delivery),
        ("outbound_proxy", p.outbound_proxy),
    ]
}

/// MBX1 (site A, 127.0.0.1, alice) and MBX2 (site B, 127.0.0.2, bob); groups with no
/// mailbox of their own make the Front End use its own site's Transport, so the hop
/// between the servers is Transport's. `ca` adds the [organization] CA keys.
fn org_text(p1: &Ports, p2: &Ports, ca: bool) -> String {
    let ca = if ca {
        "ca_certificate = \"ca/org-ca.pem\"\nca_key = \"ca/org-ca.key\"\n"
    } else {
        ""
    };
    let server = |name: &str, site: &str, ip: &str, p: &Ports| {
        format!(
            "\n# server {name}\n[[servers]]\nname = \"{name}\"\nsite = \"{site}\"\nfqdn = \"{}.contoso.test\"\naddress = \"{ip}\"\ndata_dir = \"data/{name}\"\ntransport_protocol_logging = \"verbose\"\n{}",
            name.to_lowercase(),
            p.toml()
        )
    };
    format!(
        r#"# A two-server organisation (comments must survive `mailflow init --add-*`).
[organization]
name = "contoso"
secret_file = "secret.key"
{ca}accepted_domains = ["contoso.test"]

[transport]
queue_glitch_retry_interval = "1s"
transient_failure_retry_interval = "1s"
outbound_connection_failure_retry_interval = "1s"
intra_org_connector_protocol_logging = "verbose"
mailbox_delivery_connector_protocol_logging = "verbose"
external_dns_servers = ["127.0.0.1:9"]

[[sites]]
name = "A"
[[sites]]
name = "B"
[[site_links]]
sites = ["A", "B"]
cost = 10
{s1}{s2}
[[databases]]
name = "DB1"
copies = ["MBX1"]
[[databases]]
name = "DB2"
copies = ["MBX2"]

[[mailboxes]]
address = "alice@contoso.test"
database = "DB1"
[[mailboxes]]
address = "bob@contoso.test"
database = "DB2"

[[groups]]
address = "to-bob@contoso.test"
members = ["bob@contoso.test"]
require_sender_authentication = false
[[groups]]
address = "to-alice@contoso.test"
members = ["alice@contoso.test"]
require_sender_authentication = false
"#,
        s1 = server("MBX1", "A", "127.0.0.1", p1),
        s2 = server("MBX2", "B", "127.0.0.2", p2),
    )
}

fn mailflow(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(o: Output) -> String {
    assert_success(&o);
    output_text(&o)
}

fn init(dir: &Path, domain: &str, server: &str) -> PathBuf {
    ok(mailflow(&[
        "init",
        "--domain",
        domain,
        "--server",
        server,
        "--dir",
        dir.to_str().unwrap(),
    ]));
    dir.join("mailflow.toml")
}

fn check_config(file: &Path) -> Output {
    mailflow(&["check-config", "--config", file.to_str().unwrap()])
}

/// One message through the Front End at `ip:port` to `to`.
fn send(ip: &str, port: u16, to: &str, subject: &str) {
    let mut c = Smtp::connect_to(ip, port);
    let r = c.cmd("EHLO client.fabrikam.test");
    assert!(r.starts_with("250"), "{subject}: EHLO: {r}");
    let r = c.send(
        "sender@fabrikam.test",
        &[to],
        &message(subject, "trust\r\n"),
    );
    assert!(r.starts_with("250"), "{subject}: end of data: {r}");
    let r = c.cmd("QUIT");
    assert!(r.starts_with("221"), "{subject}: QUIT: {r}");
}

/// Every protocol log line of `server` (all its SmtpSend / SmtpReceive folders).
fn protocol_logs(root: &Path, server: &str) -> String {
    tree_text(&root.join("data").join(server).join("Logs"), "ProtocolLog")
}

/// The messages in `address`'s Inbox on `server` (none while the export fails).
fn inbox(cluster: &Cluster, server: &str, address: &str) -> Vec<String> {
    cluster
        .export(Some(server), address, Some("Inbox"))
        .unwrap_or_default()
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

fn wait_message(cluster: &Cluster, server: &str, address: &str, subject: &str) -> String {
    wait_for(
        &format!("{subject:?} in {address}'s Inbox on {server}"),
        Duration::from_secs(60),
        || {
            inbox(cluster, server, address)
                .into_iter()
                .find(|m| m.contains(&format!("Subject: {subject}")))
        },
    )
}

/// The Received header `by` wrote, unfolded.
fn received_by(message: &str, by: &str) -> Vec<String> {
    header_values(message.as_bytes(), "Received")
        .into_iter()
        .filter(|r| r.contains(&format!("by {by} ")))
        .collect()
}

/// A two-server CA organisation as an operator makes it: `mailflow init` (the CA),
/// the organisation file naming it, `--add-server` for each server.
fn ca_cluster() -> (Cluster, Ports, Ports) {
    let (p1, p2) = (Ports::new(), Ports::new());
    let org = org_text(&p1, &p2, true);
    let cluster = Cluster::new(&["MBX1", "MBX2"], |_| org.clone());
    let boot = tempfile::tempdir().unwrap();
    init(boot.path(), "contoso.test", "BOOT");
    std::fs::create_dir(cluster.dir.path().join("ca")).unwrap();
    for f in ["org-ca.pem", "org-ca.key"] {
        std::fs::copy(
            boot.path().join("ca").join(f),
            cluster.dir.path().join("ca").join(f),
        )
        .unwrap();
    }
    let file = cluster.config();
    for name in ["MBX1", "MBX2"] {
        let out = ok(mailflow(&[
            "init",
            "--add-server",
            name,
            "--config",
            file.to_str().unwrap(),
        ]));
        assert!(
            out.contains(&format!("certs/{}.pem", name.to_lowercase())),
            "{out}"
        );
    }
    let text = file_text(&file);
    assert!(
        text.contains("# server MBX2") && text.contains("# A two-server"),
        "{text}"
    );
    assert!(
        text.contains("tls_certificate = \"certs/mbx2.pem\""),
        "{text}"
    );
    (cluster, p1, p2)
}

#[test]
fn init_makes_a_private_ca_and_a_server_certificate_it_signed() {
    let dir = tempfile::tempdir().unwrap();
    let file = init(dir.path(), "fabrikam.test", "EX1");
    let written = file_text(&file);
    assert!(
        written.contains("ca_certificate = \"ca/org-ca.pem\"")
            && written.contains("ca_key = \"ca/org-ca.key\""),
        "{written}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    for f in [
        "ca/org-ca.pem",
        "ca/org-ca.key",
        "certs/ex1.pem",
        "certs/ex1.key",
    ] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
    assert_eq!(mode("ca"), 0o700);
    assert_eq!(mode("certs"), 0o700);

    // openssl agrees: the server certificate chains to the CA, with the SANs and EKUs
    // internal hops need.
    let ca = dir.path().join("ca/org-ca.pem");
    let cert = dir.path().join("certs/ex1.pem");
    openssl_verify(&ca, &cert, Some("sslserver"));
    openssl_verify(&ca, &cert, Some("sslclient"));
    let shown = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let shown = output_text(&shown);
    assert!(
        shown.contains("DNS:ex1.fabrikam.test")
            && shown.contains("DNS:ex1")
            && shown.contains("IP Address:127.0.0.1"),
        "{shown}"
    );
    let ca_shown = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(output_text(&ca_shown).contains("CA:TRUE"));

    let out = check_config(&file);
    assert!(out.status.success());
    assert!(
        !output_text(&out).contains("warning"),
        "{}",
        output_text(&out)
    );

    // A certificate from another organisation's CA: serve refuses to start, naming the
    // file and the command that issues a good one (before binding anything).
    let other = tempfile::tempdir().unwrap();
    init(other.path(), "contoso.test", "EX1");
    for f in ["ex1.pem", "ex1.key"] {
        std::fs::copy(
            other.path().join("certs").join(f),
            dir.path().join("certs").join(f),
        )
        .unwrap();
    }
    let out = mailflow(&["serve", "--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = output_text(&out);
    assert!(
        err.contains(&format!("{}", cert.display()))
            && err.contains("not signed by the organisation CA")
            && err.contains(&format!(
                "mailflow init --add-server EX1 --config {}",
                file.display()
            )),
        "{err}"
    );
    // That command fixes it (the refused pair kept as .old).
    ok(mailflow(&[
        "init",
        "--add-server",
        "EX1",
        "--config",
        file.to_str().unwrap(),
    ]));
    assert!(dir.path().join("certs/ex1.pem.old").exists());
    openssl_verify(&ca, &cert, None);
    // An unknown server is a precise error.
    let out = mailflow(&[
        "init",
        "--add-server",
        "EX9",
        "--config",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("no [[servers]] entry named EX9"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn two_servers_of_a_ca_organisation_deliver_over_verified_tls_both_ways() {
    let (mut cluster, p1, p2) = ca_cluster();
    cluster.start_all();
    // A's Front End to a mailbox on B: the Front End proxies to B's Transport.
    send("127.0.0.1", p1.frontend, "bob@contoso.test", "A to bob");
    // Through A's own Transport (a group): A's Transport relays to B.
    send(
        "127.0.0.1",
        p1.frontend,
        "to-bob@contoso.test",
        "A hub to bob",
    );
    // The reverse, both ways.
    send("127.0.0.2", p2.frontend, "alice@contoso.test", "B to alice");
    send(
        "127.0.0.2",
        p2.frontend,
        "to-alice@contoso.test",
        "B hub to alice",
    );

    let m = wait_message(&cluster, "MBX2", "bob@contoso.test", "A to bob");
    let hops = received_by(&m, "mbx2.contoso.test");
    assert!(
        hops.iter()
            .any(|r| r.contains("from mbx1.contoso.test") && r.contains("version=TLS1_3")),
        "{m}"
    );
    wait_message(&cluster, "MBX2", "bob@contoso.test", "A hub to bob");
    let m = wait_message(&cluster, "MBX1", "alice@contoso.test", "B to alice");
    let hops = received_by(&m, "mbx1.contoso.test");
    assert!(
        hops.iter()
            .any(|r| r.contains("from mbx2.contoso.test") && r.contains("version=TLS1_3")),
        "{m}"
    );
    wait_message(&cluster, "MBX1", "alice@contoso.test", "B hub to alice");

    // The send logs name the peer's certificate, verified for its fqdn; the receive
    // logs the client certificate the internal listener verified.
    let root = cluster.dir.path();
    let (a, b) = (protocol_logs(root, "MBX1"), protocol_logs(root, "MBX2"));
    let verified = |log: &str, peer: &str| {
        log.lines().any(|l| {
            l.contains("Remote certificate verified")
                && l.contains(&format!("subject=CN={peer}"))
                && l.contains("issuer=CN=contoso Organization CA")
        })
    };
    assert!(verified(&a, "mbx2.contoso.test"), "MBX1 logs:\n{a}");
    assert!(verified(&b, "mbx1.contoso.test"), "MBX2 logs:\n{b}");
    assert!(
        a.contains("verified for mbx2.contoso.test by the organisation CA"),
        "{a}"
    );
    assert!(
        b.contains("verified for mbx1.contoso.test by the organisation CA"),
        "{b}"
    );
    // Services of one server on its own loopback address stay plain: nothing of MBX1
    // was verified against MBX1 itself.
    assert!(!verified(&a, "mbx1.contoso.test"), "{a}");
}

/// Runs STARTTLS on each port of `ports` at 127.0.0.2 with Python's ssl module,
/// presenting `cert`/`key` (or no certificate): per port, `accepted` when EHLO inside
/// TLS got 250, else `refused: <why>`.
fn python_starttls(ports: &[(&str, u16)], cert: Option<(&Path, &Path)>) -> Vec<(String, String)> {
    const SCRIPT: &str = r#"
import socket, ssl, sys
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.2", port), timeout=10)
f = s.makefile("rb")
def reply():
    out = b""
    while True:
        line = f.readline()
        if not line:
            return out.decode()
        out += line
        if len(line) < 4 or line[3:4] != b"-":
            return out.decode()
assert reply().startswith("220")
s.sendall(b"EHLO probe.contoso.test\r\n"); assert reply().startswith("250")
s.sendall(b"STARTTLS\r\n"); r = reply(); assert r.startswith("220"), r
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if cert != "-":
    ctx.load_cert_chain(cert, key)
try:
    t = ctx.wrap_socket(s, server_hostname="mbx2.contoso.test")
    # TLS 1.3: the server judges the client certificate after the client's Finished;
    # its verdict arrives with the first read.
    t.sendall(b"EHLO probe.contoso.test\r\n")
    data = t.recv(4096)
    if data.startswith(b"250"):
        print("accepted")
    else:
        print("refused: closed" if not data else "refused: " + data.decode(errors="replace").strip())
except (ssl.SSLError, OSError) as e:
    print("refused: " + str(e))
"#;
    let (c, k) = match cert {
        Some((c, k)) => (
            c.to_str().unwrap().to_string(),
            k.to_str().unwrap().to_string(),
        ),
        None => ("-".to_string(), "-".to_string()),
    };
    ports
        .iter()
        .map(|(name, port)| {
            let out = Command::new("python3")
                .args(["-c", SCRIPT, &port.to_string(), &c, &k])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "python on {name}: {}",
                output_text(&out)
            );
            (
                name.to_string(),
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            )
        })
        .collect()
}

#[test]
fn internal_listeners_refuse_client_certificates_the_ca_did_not_sign() {
    let (mut cluster, _p1, p2) = ca_cluster();
    cluster.start("MBX2");
    let foreign = tempfile::tempdir().unwrap();
    // Another organisation with the same names: a certificate for mbx1.contoso.test
    // from a CA that is not ours.
    init(foreign.path(), "contoso.test", "MBX1");
    let foreign_pair = (
        foreign.path().join("certs/mbx1.pem"),
        foreign.path().join("certs/mbx1.key"),
    );
    let ours = (
        cluster.dir.path().join("certs/mbx1.pem"),
        cluster.dir.path().join("certs/mbx1.key"),
    );
    let ports = internal(&p2);
    for (port, verdict) in python_starttls(&ports, Some((&foreign_pair.0, &foreign_pair.1))) {
        assert!(
            verdict.starts_with("refused"),
            "foreign certificate on {port}: {verdict}"
        );
    }
    for (port, verdict) in python_starttls(&ports, None) {
        assert!(
            verdict.starts_with("refused"),
            "no certificate on {port}: {verdict}"
        );
    }
    // The same client with MBX1's real certificate gets in: the refusals above are
    // about the certificate, not the client.
    for (port, verdict) in python_starttls(&ports, Some((&ours.0, &ours.1))) {
        assert_eq!(verdict, "accepted", "MBX1's certificate on {port}");
    }
    // The Front End keeps no client authentication: internet clients have no
    // certificate.
    let fe = [
        ("frontend", p2.frontend),
        ("client_frontend", p2.client_frontend),
    ];
    for (port, verdict) in python_starttls(&fe, None) {
        assert_eq!(verdict, "accepted", "no certificate on {port}");
    }
    let log = protocol_logs(cluster.dir.path(), "MBX2");
    assert!(log.contains("TLS negotiation failed"), "{log}");
}

#[test]
fn a_server_with_another_cas_certificate_gets_nothing_and_the_queue_names_it() {
    let (mut cluster, p1, _p2) = ca_cluster();
    cluster.start("MBX1");
    // MBX2 runs from a copy of the organisation whose CA is another one (its own
    // certificate passes its own check, so it starts): MBX1 must not trust it.
    let rogue = tempfile::tempdir().unwrap();
    let rogue_file = rogue.path().join("mailflow.toml");
    std::fs::copy(cluster.config(), &rogue_file).unwrap();
    std::fs::copy(
        cluster.dir.path().join("secret.key"),
        rogue.path().join("secret.key"),
    )
    .unwrap();
    let out = ok(mailflow(&[
        "init",
        "--add-ca",
        "--config",
        rogue_file.to_str().unwrap(),
    ]));
    assert!(out.contains("(new)"), "{out}");
    let log_path = rogue.path().join("MBX2.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut b = Command::new(BIN)
        .args([
            "serve",
            "--config",
            rogue_file.to_str().unwrap(),
            "--server",
            "MBX2",
        ])
        .env("MAILFLOW_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let b = Kill(&mut b);
    wait_for(
        "the rogue MBX2 to be ready",
        Duration::from_secs(30),
        || file_text(&log_path).contains("ready").then_some(()),
    );

    send(
        "127.0.0.1",
        p1.frontend,
        "to-bob@contoso.test",
        "to the impostor",
    );
    let queue = wait_for(
        "the message to wait in MBX1's queue with a certificate error",
        Duration::from_secs(30),
        || {
            cluster.queues("MBX1").into_iter().find(|q| {
                q["MessageCount"] == 1
                    && q["LastError"]
                        .as_str()
                        .is_some_and(|e| e.contains("4.4.317"))
            })
        },
    );
    let last = queue["LastError"].as_str().unwrap();
    assert!(
        last.contains("TLS certificate validation failed for MBX2")
            && last.contains("subject=CN=mbx2.contoso.test")
            && last.contains("issuer=CN=contoso Organization CA")
            && last.contains("not signed by the organisation CA"),
        "{last}"
    );
    // Nothing reaches the impostor: no transaction, no mailbox delivery.
    assert_for(
        "no transaction at the impostor",
        Duration::from_secs(2),
        || {
            let rogue_logs = protocol_logs(rogue.path(), "MBX2");
            let clean = !rogue_logs.contains(",<,MAIL FROM") && !rogue_logs.contains(",<,AUTH");
            clean.then_some(()).ok_or(rogue_logs)
        },
    );
    let rogue_logs = protocol_logs(rogue.path(), "MBX2");
    assert!(
        rogue_logs.contains("TLS negotiation failed"),
        "{rogue_logs}"
    );
    let a = protocol_logs(cluster.dir.path(), "MBX1");
    assert!(a.contains("Remote certificate refused"), "{a}");
    drop(b);
}

#[test]
fn a_legacy_file_keeps_delivering_is_warned_about_and_add_ca_upgrades_it() {
    let (p1, p2) = (Ports::new(), Ports::new());
    let org = org_text(&p1, &p2, false);
    let mut cluster = Cluster::new(&["MBX1", "MBX2"], |_| org.clone());
    let file = cluster.config();
    let out = check_config(&file);
    assert!(out.status.success(), "{}", output_text(&out));
    let command = format!("mailflow init --add-ca --config {}", file.display());
    assert!(
        output_text(&out).contains(&command),
        "{}",
        output_text(&out)
    );

    cluster.start_all();
    assert!(cluster.logs().contains(&command), "{}", cluster.logs());
    send(
        "127.0.0.1",
        p1.frontend,
        "to-bob@contoso.test",
        "legacy A to B",
    );
    send(
        "127.0.0.2",
        p2.frontend,
        "alice@contoso.test",
        "legacy B to A",
    );
    let m = wait_message(&cluster, "MBX2", "bob@contoso.test", "legacy A to B");
    // Between the two addresses it is TLS (not verified), never plain.
    assert!(
        received_by(&m, "mbx2.contoso.test")
            .iter()
            .any(|r| r.contains("from mbx1.contoso.test") && r.contains("version=TLS")),
        "{m}"
    );
    wait_message(&cluster, "MBX1", "alice@contoso.test", "legacy B to A");
    assert!(!protocol_logs(cluster.dir.path(), "MBX1").contains("Remote certificate verified"));

    // The upgrade: one command, then restart.
    let before = file_text(&file);
    let out = ok(mailflow(&[
        "init",
        "--add-ca",
        "--config",
        file.to_str().unwrap(),
    ]));
    assert!(
        out.contains("MBX1: issued") && out.contains("MBX2: issued"),
        "{out}"
    );
    let after = file_text(&file);
    assert!(
        after.contains("# server MBX2") && after.contains("ca_certificate = "),
        "{after}"
    );
    assert_ne!(before, after);
    let out = check_config(&file);
    assert!(out.status.success());
    assert!(
        !output_text(&out).contains("warning"),
        "{}",
        output_text(&out)
    );
    // Again: nothing to do.
    let again = ok(mailflow(&[
        "init",
        "--add-ca",
        "--config",
        file.to_str().unwrap(),
    ]));
    assert!(
        again.contains("(kept)") && !again.contains("issued"),
        "{again}"
    );
    assert_eq!(file_text(&file), after);

    cluster.kill9("MBX1");
    cluster.kill9("MBX2");
    cluster.start_all();
    send(
        "127.0.0.1",
        p1.frontend,
        "to-bob@contoso.test",
        "upgraded A to B",
    );
    send(
        "127.0.0.2",
        p2.frontend,
        "to-alice@contoso.test",
        "upgraded B to A",
    );
    wait_message(&cluster, "MBX2", "bob@contoso.test", "upgraded A to B");
    wait_message(&cluster, "MBX1", "alice@contoso.test", "upgraded B to A");
    let a = protocol_logs(cluster.dir.path(), "MBX1");
    assert!(
        a.contains("verified for mbx2.contoso.test by the organisation CA"),
        "{a}"
    );
    let b = protocol_logs(cluster.dir.path(), "MBX2");
    assert!(
        b.contains("verified for mbx1.contoso.test by the organisation CA"),
        "{b}"
    );
}

#[test]
fn a_lone_server_issues_its_missing_certificate_at_start_when_it_can_read_the_ca_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = init(dir.path(), "contoso.test", "MBX1");
    with_system_ports(&file, "");
    for f in ["certs/mbx1.pem", "certs/mbx1.key"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let (mut child, log_path) = serve_lone(&file);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        file_text(&log_path).contains("from the organisation CA"),
        "{}",
        file_text(&log_path)
    );
    openssl_verify(
        dir.path().join("ca/org-ca.pem"),
        dir.path().join("certs/mbx1.pem"),
        None,
    );
}

/// Gives the file `mailflow init` wrote port 0 for every listener (the server reports
/// what it bound, [`Ports::bound`]), and `extra` keys for its server.
fn with_system_ports(file: &Path, extra: &str) {
    let p = Ports::system();
    let original = file_text(file);
    let ports_at = original.find("[servers.ports]").unwrap();
    let ports_end = original[ports_at..].find("\n\n").unwrap() + ports_at + 1;
    let edited = format!(
        "{}{extra}{}{}",
        &original[..ports_at],
        p.toml(),
        &original[ports_end..]
    );
    std::fs::write(file, edited).unwrap();
}

/// `mailflow serve` of a one-server file, once it says it is ready (the log's path).
fn serve_lone(file: &Path) -> (std::process::Child, PathBuf) {
    let log_path = file.with_file_name("serve.log");
    let child = spawn_serve(file, None, &log_path, &[])
        .unwrap_or_else(|| panic!("serve did not start:\n{}", file_text(&log_path)));
    (child, log_path)
}

/// `openssl verify` (for `purpose`, e.g. `sslserver`, when given): `cert` chains to
/// `ca`; the test fails otherwise.
fn openssl_verify(ca: impl AsRef<Path>, cert: impl AsRef<Path>, purpose: Option<&str>) {
    let mut c = Command::new("openssl");
    c.arg("verify");
    if let Some(purpose) = purpose {
        c.args(["-purpose", purpose]);
    }
    let out = c
        .arg("-CAfile")
        .arg(ca.as_ref())
        .arg(cert.as_ref())
        .output()
        .unwrap();
    assert_success(&out);
}

/// The SHA-256 fingerprint of a PEM certificate file, or of the certificate a STARTTLS
/// listener presents (`openssl s_client`, with a client certificate when given).
fn fingerprint(listener: Option<(u16, Option<(&Path, &Path)>)>, file: Option<&Path>) -> String {
    let pem = match (listener, file) {
        (Some((port, client)), _) => {
            let mut c = Command::new("openssl");
            c.args(["s_client", "-starttls", "smtp", "-connect"])
                .arg(format!("127.0.0.1:{port}"));
            if let Some((cert, key)) = client {
                c.arg("-cert").arg(cert).arg("-key").arg(key);
            }
            let out = c.stdin(std::process::Stdio::null()).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        (None, Some(f)) => file_text(f),
        (None, None) => unreachable!(),
    };
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    x509.stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = x509.wait_with_output().unwrap();
    assert!(out.status.success(), "no certificate in: {pem}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_front_end_presents_its_public_certificate_and_internal_listeners_the_organisation_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = init(dir.path(), "contoso.test", "MBX1");
    // A certificate from another CA stands in for a public CA's.
    let public = tempfile::tempdir().unwrap();
    init(public.path(), "contoso.test", "MAIL");
    let (pub_cert, pub_key) = (
        public.path().join("certs/mail.pem"),
        public.path().join("certs/mail.key"),
    );
    with_system_ports(
        &file,
        &format!(
            "frontend_tls_certificate = {:?}\nfrontend_tls_key = {:?}\n",
            pub_cert, pub_key
        ),
    );
    ok(check_config(&file));
    let (mut child, log) = serve_lone(&file);
    let p = Ports::bound(&dir.path().join("data/MBX1"))
        .unwrap_or_else(|| panic!("no listeners.json:\n{}", file_text(&log)));
    let (own_cert, own_key) = (
        dir.path().join("certs/mbx1.pem"),
        dir.path().join("certs/mbx1.key"),
    );
    let seen = [
        fingerprint(Some((p.frontend, None)), None),
        fingerprint(Some((p.client_frontend, None)), None),
        fingerprint(Some((p.transport, Some((&own_cert, &own_key)))), None),
    ];
    let _ = child.kill();
    let _ = child.wait();
    let public_fp = fingerprint(None, Some(&pub_cert));
    let own_fp = fingerprint(None, Some(&own_cert));
    assert_ne!(public_fp, own_fp);
    assert_eq!(seen[0], public_fp, "Default Frontend :25");
    assert_eq!(seen[1], public_fp, "Client Frontend :587");
    assert_eq!(seen[2], own_fp, "Default MBX1 :2525");
}

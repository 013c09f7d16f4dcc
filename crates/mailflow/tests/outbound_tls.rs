//! TLS toward the internet: a send connector's `tls_auth_level` (Exchange's
//! TlsAuthLevel) decides whether the peer's certificate is good enough, and smart-host
//! credentials and mail go only to a peer that passed. Real TLS, with certificates
//! made here with rcgen, against a Python peer and against Postfix.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::postfix::{Postfix, PostfixOptions};
use common::*;

/// The name the smart host's certificate must carry (`tls_domain`).
const RELAY: &str = "relay.fabrikam.test";

/// A smart host that offers STARTTLS with the given certificate and AUTH, accepts
/// everything, and writes every line it receives to a transcript (`TLS ` before the
/// lines received inside TLS).
const PEER: &str = r#"
import socket, ssl, sys, threading
cert, key, transcript = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
log_lock = threading.Lock()
def log(line):
    with log_lock:
        with open(transcript, "a") as f:
            f.write(line + "\n")
def serve(conn):
    tls = False
    f = conn.makefile("rwb")
    def reply(text):
        f.write(text.encode() + b"\r\n"); f.flush()
    reply("220 relay.fabrikam.test ESMTP test peer")
    while True:
        line = f.readline()
        if not line:
            log("CLOSED"); return
        cmd = line.decode(errors="replace").rstrip("\r\n")
        log(("TLS " if tls else "") + cmd)
        verb = cmd.split(" ")[0].upper()
        if verb in ("EHLO", "HELO"):
            reply("250-relay.fabrikam.test\r\n250-AUTH PLAIN LOGIN\r\n250-PIPELINING\r\n250 STARTTLS")
        elif verb == "STARTTLS":
            reply("220 go ahead")
            try:
                conn = ctx.wrap_socket(conn, server_side=True)
            except Exception as e:
                log("HANDSHAKE FAILED " + str(e)); return
            tls = True
            f = conn.makefile("rwb")
        elif verb == "AUTH":
            reply("235 2.7.0 ok")
        elif verb == "DATA":
            reply("354 go")
            while True:
                l = f.readline()
                if not l or l == b".\r\n": break
            log(("TLS " if tls else "") + "<content>")
            reply("250 2.0.0 queued")
        elif verb == "QUIT":
            reply("221 bye"); conn.close(); log("QUIT"); return
        else:
            reply("250 ok")
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

struct PythonPeer {
    child: Child,
    port: u16,
    transcript: PathBuf,
}

impl PythonPeer {
    fn start(pki: &Pki, (cert, key): (PathBuf, PathBuf)) -> PythonPeer {
        let transcript = pki.dir.path().join(format!(
            "transcript-{}",
            cert.file_name().unwrap().to_string_lossy()
        ));
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(PEER)
            .arg(&cert)
            .arg(&key)
            .arg(&transcript)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the peer prints its port");
        PythonPeer {
            child,
            port,
            transcript,
        }
    }

    fn transcript(&self) -> String {
        std::fs::read_to_string(&self.transcript).unwrap_or_default()
    }
}

impl Drop for PythonPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The connector under test: smart host on `port`, TLS required with
/// domain_validation for [`RELAY`] against the test CA, and credentials.
fn validating_connector(port: u16, ca: &Path) -> String {
    smart_host_connector(
        "Validated",
        "fabrikam.test",
        "MBX1",
        port,
        &format!(
            "tls = \"required\"\ntls_auth_level = \"domain_validation\"\ntls_domain = \"{RELAY}\"\ntls_ca_file = \"{}\"\nsmart_host_auth = {{ username = \"mailflow\", password = \"s3cret-pass\" }}\nprotocol_logging = \"verbose\"\n",
            ca.display()
        ),
    )
}

/// Alice sends to the outside from her mailbox (Mailbox Transport Submission).
fn alice_sends(server: &Server, subject: &str) {
    server.send_from_outbox(
        "alice@contoso.test",
        &format!("From: Alice <alice@contoso.test>\r\nTo: partner@fabrikam.test\r\nSubject: {subject}\r\n\r\nhello\r\n"),
    );
}

/// The message waits with the 4.4.317 LastError, then NDRs to Alice at expiry; the
/// SEND log names the certificate and why it was refused.
fn assert_waits_then_ndrs(server: &Server, subject: &str) {
    let m = wait_for(
        "the message waiting with a 4.4.317 LastError",
        Duration::from_secs(20),
        || {
            server
                .cli_json(&["message", "list"])
                .as_array()?
                .iter()
                .find(|m| {
                    m["Subject"] == subject
                        && m["LastError"]
                            .as_str()
                            .is_some_and(|e| e.starts_with("451 4.4.317"))
                })
                .cloned()
        },
    );
    let last = m["LastError"].as_str().unwrap();
    assert!(
        last.contains(
            "Cannot connect to remote server: TLS certificate validation failed for 127.0.0.1:"
        ),
        "{m:#}"
    );
    let log = server.send_log("Validated").join("\n");
    assert!(log.contains("Remote certificate"), "{log}");
    assert!(log.contains("Remote certificate refused"), "{log}");
    assert!(!log.contains(",>,AUTH"), "{log}");
    assert!(!log.contains(",>,MAIL"), "{log}");
    // The session ends with QUIT right after the handshake.
    let after_refusal = log
        .split("Remote certificate refused")
        .nth(1)
        .unwrap_or_default();
    assert!(after_refusal.contains(",>,QUIT,"), "{log}");
    assert!(!after_refusal.contains(",>,EHLO"), "{log}");
    // At expiry, an NDR as for any transient failure.
    server.wait_inbox("alice@contoso.test", 1);
    let inbox = server.export("alice@contoso.test");
    let ndr = inbox
        .iter()
        .map(|m| String::from_utf8_lossy(m).to_string())
        .find(|m| m.contains(&format!("Undeliverable: {subject}")))
        .unwrap_or_else(|| panic!("no NDR in {inbox:?}"));
    assert!(ndr.contains("Status: 4.4.7\r\n"), "{ndr}");
}

const EXPIRES_SOON: &str = "message_expiration_timeout = \"6s\"";

#[test]
fn a_smart_host_with_a_self_signed_certificate_for_another_name_gets_no_auth_and_no_mail() {
    let pki = Pki::new("Fabrikam Test CA");
    let peer = PythonPeer::start(&pki, pki.self_signed("wrong", "wrong.example.test"));
    let server = Server::start_custom(
        EXPIRES_SOON,
        &validating_connector(peer.port, &pki.ca_file()),
    );
    alice_sends(&server, "to an impostor");
    assert_waits_then_ndrs(&server, "to an impostor");
    let t = peer.transcript();
    assert!(t.contains("STARTTLS"), "{t}");
    assert!(!t.contains("AUTH"), "the impostor got credentials: {t}");
    assert!(!t.contains("MAIL"), "the impostor got mail: {t}");
    // Inside TLS the impostor got QUIT and nothing else.
    let inside: Vec<&str> = t.lines().filter(|l| l.starts_with("TLS ")).collect();
    assert!(
        !inside.is_empty() && inside.iter().all(|l| *l == "TLS QUIT"),
        "{t}"
    );
}

#[test]
fn a_smart_host_whose_certificate_chains_to_the_connector_ca_gets_auth_inside_tls_and_the_mail() {
    let pki = Pki::new("Fabrikam Test CA");
    let peer = PythonPeer::start(&pki, pki.signed("relay", &[RELAY]));
    let server = Server::start_custom("", &validating_connector(peer.port, &pki.ca_file()));
    alice_sends(&server, "to the relay");
    let t = wait_for("the relay has the content", Duration::from_secs(20), || {
        let t = peer.transcript();
        t.contains("TLS <content>").then_some(t)
    });
    assert!(t.contains("TLS AUTH PLAIN"), "{t}");
    // Nothing but EHLO and STARTTLS before TLS.
    for line in t.lines().take_while(|l| !l.starts_with("TLS ")) {
        assert!(
            line.starts_with("EHLO") || line == "STARTTLS",
            "sent in clear: {line}\n{t}"
        );
    }
    let log = server.send_log("Validated").join("\n");
    assert!(log.contains("CN=relay.fabrikam.test"), "{log}");
    assert!(log.contains("Fabrikam Test CA"), "{log}");
}

/// A Postfix smart host presenting `cert` instead of the fixture's own.
fn postfix_with((cert, key): (PathBuf, PathBuf)) -> Postfix {
    // The last definition in main.cf wins: the fixture's own pair is replaced.
    Postfix::start(PostfixOptions {
        tls: true,
        main_cf: format!(
            "smtpd_tls_chain_files = {}, {}\n",
            key.display(),
            cert.display()
        ),
        ..Default::default()
    })
}

/// The Postfix variant of the connector: without credentials, since this Postfix
/// offers no AUTH (validation alone is tested here).
fn validating_connector_no_auth(port: u16, ca: &Path) -> String {
    validating_connector(port, ca).replace(
        "smart_host_auth = { username = \"mailflow\", password = \"s3cret-pass\" }\n",
        "",
    )
}

#[test]
fn postfix_with_a_ca_signed_certificate_for_another_name_gets_no_mail_under_domain_validation() {
    let pki = Pki::new("Fabrikam Test CA");
    let postfix = postfix_with(pki.signed("other", &["other.fabrikam.test"]));
    let server = Server::start_custom(
        EXPIRES_SOON,
        &validating_connector_no_auth(postfix.port, &pki.ca_file()),
    );
    alice_sends(&server, "to the wrong postfix");
    assert_waits_then_ndrs(&server, "to the wrong postfix");
    let log = server.send_log("Validated").join("\n");
    assert!(log.contains("not valid for"), "{log}");
    assert!(postfix.messages().is_empty());
    let plog = postfix.log();
    assert!(!plog.contains("MAIL FROM"), "{plog}");
}

#[test]
fn postfix_with_a_certificate_for_the_name_from_the_connector_ca_gets_the_mail() {
    let pki = Pki::new("Fabrikam Test CA");
    let postfix = postfix_with(pki.signed("relay", &[RELAY]));
    let server = Server::start_custom(
        "",
        &validating_connector_no_auth(postfix.port, &pki.ca_file()),
    );
    alice_sends(&server, "to the right postfix");
    let got = postfix.wait_messages(1);
    assert!(
        String::from_utf8_lossy(&got[0]).contains("to the right postfix"),
        "{}",
        String::from_utf8_lossy(&got[0])
    );
    assert!(
        postfix.log().contains("TLS connection established from"),
        "{}",
        postfix.log()
    );
    let log = server.send_log("Validated").join("\n");
    assert!(log.contains("CN=relay.fabrikam.test"), "{log}");
}

#[test]
fn credentials_with_encryption_only_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::system();
    let connector = |level: &str| {
        format!(
            "\n[[send_connectors]]\nname = \"Careless\"\naddress_spaces = [{{ domain = \"fabrikam.test\", cost = 1 }}]\nsource_servers = [\"MBX1\"]\nsmart_hosts = [\"relay.fabrikam.test\"]\ntls = \"required\"\n{level}smart_host_auth = {{ username = \"u\", password = \"p\" }}\n"
        )
    };
    let file = dir.path().join("mailflow.toml");
    let check = |connector: String| {
        std::fs::write(&file, org_file(&ports, &connector)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_mailflow"))
            .args(["--config", file.to_str().unwrap(), "check-config"])
            .output()
            .unwrap()
    };
    // A file written before tls_auth_level existed keeps loading: credentials imply
    // certificate_validation.
    let out = check(connector(""));
    assert_success(&out);
    let out = check(connector("tls_auth_level = \"encryption_only\"\n"));
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("send_connectors.tls_auth_level") && err.contains("smart_host_auth"),
        "{err}"
    );
}

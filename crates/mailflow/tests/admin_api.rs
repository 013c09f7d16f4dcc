//! The admin API (issue 13 item 4): per-operator tokens and their revocation, HTTPS off
//! loopback verified against the organisation CA (and no start without one), and the
//! listener's limits. Real server, real sockets, curl and the mailflow CLI.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Pki, Server, have, poll_until, wait_for};

/// `curl` with extra arguments; returns (HTTP status or 0, body, curl's exit code).
fn curl(args: &[&str]) -> (u16, String, i32) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        out.status.code().unwrap_or(-1),
    )
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The CLI with `MAILFLOW_ADMIN_TOKEN` set.
fn cli_with_token(server: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(server.config())
        .args(args)
        .env("MAILFLOW_ADMIN_TOKEN", token)
        .output()
        .unwrap()
}

#[test]
fn an_operator_token_works_until_revoked_and_the_cli_with_the_secret_still_works() {
    assert!(have("curl"), "curl is needed");
    let server = Server::start();
    let url = format!("http://127.0.0.1:{}", server.ports.admin);
    let queues = format!("{url}/api/queues");

    let out = server.cli(&["admin", "token", "create", "--name", "alice"]);
    assert!(out.status.success(), "create: {}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    assert!(token.starts_with("mfa_") && token.len() == 68, "{token:?}");
    let file = server.dir.path().join("admin-tokens.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !std::fs::read_to_string(&file)
            .unwrap()
            .contains(&token[4..]),
        "only a hash of the token is stored"
    );
    let again = server.cli(&["admin", "token", "create", "--name", "alice"]);
    assert!(!again.status.success(), "a second active token of one name");

    // The token works: a read, and a call that changes something, logged with its name.
    let (code, body, _) = curl(&["-H", &bearer(&token), &queues]);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with('['), "{body}");
    let (code, body, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &bearer(&token),
        &format!("{url}/api/reload"),
    ]);
    assert_eq!(code, 200, "{body}");
    wait_for(
        "the reload logged with the operator's name",
        Duration::from_secs(5),
        || {
            let log = server.log();
            log.lines()
                .any(|l| l.contains("operator alice") && l.contains("POST /api/reload"))
                .then_some(())
        },
    );
    // The CLI sends MAILFLOW_ADMIN_TOKEN.
    let out = cli_with_token(&server, &token, &["queue", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Wrong, missing and forged tokens: 401.
    for header in [
        bearer("mfa_0000000000000000000000000000000000000000000000000000000000000000"),
        bearer("00112233"),
        bearer(&format!("v1.cli.{}.00.00", u32::MAX)),
        "X-None: 1".to_string(),
    ] {
        let (code, body, _) = curl(&["-H", &header, &queues]);
        assert_eq!(code, 401, "{header}: {body}");
    }
    // A body past the cap is refused (with a valid token).
    let big = "x".repeat(100 * 1024);
    let (code, body, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &bearer(&token),
        "--data-binary",
        &big,
        &format!("{url}/api/reload"),
    ]);
    assert_eq!(code, 413, "{body}");

    // Revoked: refused at the next request, without a reload.
    let out = server.cli(&["admin", "token", "revoke", "alice"]);
    assert!(out.status.success(), "revoke: {}", stderr(&out));
    let (code, body, _) = curl(&["-H", &bearer(&token), &queues]);
    assert_eq!(code, 401, "revoked token: {body}");
    let out = cli_with_token(&server, &token, &["queue", "list"]);
    assert!(!out.status.success(), "the CLI with a revoked token");
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
    let out = server.cli(&["admin", "token", "list"]);
    assert!(out.status.success());
    let listed = stdout(&out);
    let line = listed
        .lines()
        .find(|l| l.starts_with("alice"))
        .unwrap_or_else(|| panic!("alice in the list: {listed}"));
    assert!(line.contains("revoked"), "{listed}");
    assert!(line.contains(&token[token.len() - 4..]), "{listed}");
    assert!(!listed.contains(&token[4..]), "list never shows a token");
    let out = server.cli(&["admin", "token", "revoke", "alice"]);
    assert!(!out.status.success(), "nothing left to revoke");

    // The CLI's own commands, with the organisation secret, still work.
    let out = server.cli(&["queue", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = server.cli(&["route", "show", "--live"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The standard organisation with the server listening on every interface, and more
/// lines for `[organization]` and the server.
fn off_loopback(org: String, organization: &str, server: &str) -> String {
    org.replacen(
        "[organization]\n",
        &format!("[organization]\n{organization}"),
        1,
    )
    .replacen(
        "address = \"127.0.0.1\"\n",
        &format!("address = \"127.0.0.1\"\nbind = \"0.0.0.0\"\n{server}"),
        1,
    )
}

#[test]
fn off_loopback_without_an_organisation_ca_serve_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let ports = common::Ports::system();
    let config = dir.path().join("mailflow.toml");
    std::fs::write(&config, off_loopback(common::org_file(&ports, ""), "", "")).unwrap();
    std::fs::write(
        dir.path().join("secret.key"),
        "00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = poll_until(Duration::from_secs(30), || child.try_wait().unwrap()) else {
        let _ = child.kill();
        panic!("serve kept running off loopback without a CA");
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    let expected = format!(
        "admin API: refusing to listen on 0.0.0.0:{} without TLS",
        ports.admin
    );
    assert!(err.contains(&expected), "{err}");
    assert!(
        err.contains(&config.display().to_string()),
        "names the file: {err}"
    );
    assert!(err.contains("ca_certificate"), "says what to do: {err}");
}

/// An organisation CA and a server certificate it signs (for 127.0.0.1 and the fqdn):
/// (ca.pem, ca.key, mbx1.pem, mbx1.key), and the folder that holds them.
fn make_ca() -> ([PathBuf; 4], Pki) {
    let pki = Pki::new("contoso organisation CA");
    let (cert, key) = pki.signed("mbx1", &["mbx1.contoso.test", "127.0.0.1"]);
    ([pki.ca_file(), pki.ca_key_file(), cert, key], pki)
}

#[test]
fn with_an_organisation_ca_the_api_is_https_and_verified_by_curl_and_the_cli() {
    assert!(have("curl"), "curl is needed");
    let ([ca, ca_key, cert, key], _pki) = make_ca();
    let (organization, server_lines) = (
        format!(
            "ca_certificate = \"{}\"\nca_key = \"{}\"\n",
            ca.display(),
            ca_key.display()
        ),
        format!(
            "tls_certificate = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let server = Server::start_edited(|org| off_loopback(org, &organization, &server_lines));
    assert!(
        server.log().contains("admin API (https)"),
        "{}",
        server.log()
    );
    let out = server.cli(&["admin", "token", "create", "--name", "bob"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    let https = format!("https://127.0.0.1:{}/api/queues", server.ports.admin);
    let ca_arg = ca.to_str().unwrap();

    let (code, body, _) = curl(&["--cacert", ca_arg, "-H", &bearer(&token), &https]);
    assert_eq!(code, 200, "{body}");
    let (code, body, _) = curl(&["--cacert", ca_arg, &https]);
    assert_eq!(code, 401, "no token over https: {body}");
    // Without the CA curl does not trust the server; plain HTTP gets no answer.
    let (code, _, exit) = curl(&["-H", &bearer(&token), &https]);
    assert_eq!((code, exit), (0, 60), "curl verifies against its own roots");
    let http = format!("http://127.0.0.1:{}/api/queues", server.ports.admin);
    let (code, body, exit) = curl(&["-H", &bearer(&token), &http]);
    assert!(
        code != 200 && exit != 0,
        "plain http answered: {code} {body}"
    );

    // The CLI speaks https and verifies against the organisation CA.
    let out = server.cli(&["queue", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli_with_token(&server, &token, &["queue", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Another CA in the organisation file's place: the CLI refuses the server.
    let ([other_ca, ..], _other) = make_ca();
    std::fs::copy(&other_ca, &ca).unwrap();
    let out = server.cli(&["queue", "list"]);
    assert!(
        !out.status.success(),
        "the CLI accepted a certificate its CA did not sign"
    );
    assert!(
        stderr(&out).contains("https://127.0.0.1"),
        "{}",
        stderr(&out)
    );
}

/// A plain HTTP request's answer on `s`: what is read until the server closes (or 5 s).
fn request(s: &mut TcpStream, path: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

#[test]
fn connections_past_the_cap_are_not_served_and_a_slow_client_is_cut_off() {
    let server = Server::start();
    let port = server.ports.admin;
    // The cap: 64 idle connections hold every slot; the next is closed unserved.
    let held: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Once the server has taken the 64 (they may still sit in the backlog at first),
    // a further connection is closed unserved.
    wait_for(
        "a connection past the cap to go unserved",
        Duration::from_secs(10),
        || {
            let mut extra = TcpStream::connect(("127.0.0.1", port)).ok()?;
            (!request(&mut extra, "/api/health").contains("200 OK")).then_some(())
        },
    );
    drop(held);
    wait_for("a slot to be free again", Duration::from_secs(5), || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        request(&mut s, "/api/health")
            .contains("200 OK")
            .then_some(())
    });

    // Headers sent one line a second: cut off after the 10 s header read timeout. The
    // server may not have noticed every dropped connection yet: a connection refused
    // at once for the cap is not the slow client's cut-off, so it is tried again.
    let closed_after = (0..20)
        .map(|_| trickle_headers(port))
        .find(|closed| *closed >= Duration::from_secs(1))
        .expect("every connection was refused at once: the cap never freed");
    assert!(
        closed_after >= Duration::from_secs(8) && closed_after <= Duration::from_secs(15),
        "closed after {closed_after:?}"
    );
    // Others are served meanwhile and after.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(request(&mut s, "/api/health").contains("200 OK"));
}

/// Connects to the admin API and sends header lines, one every 0.9 s, until the server
/// closes the connection; returns how long that took (bounded: 20 s).
fn trickle_headers(port: u16) -> Duration {
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(900)))
        .unwrap();
    let started = Instant::now();
    if slow
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        .is_err()
    {
        return started.elapsed();
    }
    loop {
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(20),
            "a client trickling headers was still connected after {elapsed:?}"
        );
        if slow.write_all(b"X-Slow: 1\r\n").is_err() {
            return elapsed;
        }
        let mut buf = [0u8; 512];
        match slow.read(&mut buf) {
            Ok(0) => return elapsed,
            Ok(_) => {
                // hyper may answer 408 before closing: the end is what counts.
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return elapsed,
        }
    }
}

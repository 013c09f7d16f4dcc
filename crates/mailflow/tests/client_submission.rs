//! Sending mail as a user: Client Frontend (587, STARTTLS + AUTH) → Client Proxy (465),
//! an implicit-TLS submission connector, Send As, logon throttling, and the open-relay
//! matrix over every listener.

mod common;

use common::*;

/// A Python smtplib session description → JSON result, for one matrix cell or a send.
const CLIENT: &str = r#"
import json, smtplib, ssl, sys
cell = json.loads(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
out = {}
try:
    if cell.get("implicit"):
        s = smtplib.SMTP_SSL("127.0.0.1", cell["port"], context=ctx, timeout=20)
    else:
        s = smtplib.SMTP("127.0.0.1", cell["port"], timeout=20)
    s.ehlo("client.example")
    out["auth_before_tls"] = s.has_extn("auth")
    if cell.get("starttls") and s.has_extn("starttls"):
        s.starttls(context=ctx)
        s.ehlo("client.example")
    if cell.get("user"):
        try:
            s.login(cell["user"], cell["password"])
            out["auth"] = "235"
        except smtplib.SMTPAuthenticationError as e:
            out["auth"] = f"{e.smtp_code} {e.smtp_error.decode()}"
        except smtplib.SMTPNotSupportedError as e:
            out["auth"] = "not offered"
        except smtplib.SMTPResponseException as e:
            out["auth"] = f"{e.smtp_code} {e.smtp_error.decode()}"
    code, msg = s.mail(cell["from"])
    out["mail"] = f"{code} {msg.decode()}"
    if code == 250:
        code, msg = s.rcpt(cell["to"])
        out["rcpt"] = f"{code} {msg.decode()}"
        if code == 250:
            code, msg = s.data(("From: %s\r\nTo: %s\r\nSubject: %s\r\n\r\nbody\r\n" % (cell["from"], cell["to"], cell.get("subject", "matrix"))).encode())
            out["data"] = f"{code} {msg.decode()}"
    s.quit()
except Exception as e:
    out["error"] = repr(e)
print(json.dumps(out))
"#;

fn client(cell: serde_json::Value) -> serde_json::Value {
    python_json(CLIENT, &[&cell.to_string()])
}

fn start_with_submission() -> (Server, Sink, u16) {
    let sink = Sink::start();
    let extra = smart_host_connector(
        "Fabrikam",
        "fabrikam.test",
        "MBX1",
        sink.port,
        "\n[[receive_connectors]]\nname = \"Implicit TLS MBX1\"\nserver = \"MBX1\"\nservice = \"frontend\"\nbind = \"127.0.0.1:0\"\npermissions = [\"users\"]\ntls = \"implicit\"\n",
    );
    let server = Server::start_custom("", &extra);
    let implicit = server.listener_port("Implicit TLS MBX1");
    // Set while the server runs: it reads the new hash without a restart.
    let out = server.cli(&[
        "mailbox",
        "set-password",
        "alice@contoso.test",
        "--password",
        "Pa55word!",
    ]);
    assert_success(&out);
    (server, sink, implicit)
}

fn ports(server: &Server) -> (u16, u16) {
    (server.ports.client_frontend, server.ports.client_proxy)
}

#[test]
fn smtplib_submits_on_587_with_starttls_and_auth_and_on_an_implicit_tls_connector() {
    let (server, sink, implicit) = start_with_submission();
    let (submission, _) = ports(&server);
    let base = serde_json::json!({"port": submission, "starttls": true, "user": "alice@contoso.test", "password": "Pa55word!", "from": "alice@contoso.test"});
    // AUTH is not offered before STARTTLS.
    let r = client(
        serde_json::json!({"port": submission, "from": "alice@contoso.test", "to": "bob@contoso.test"}),
    );
    assert_eq!(r["auth_before_tls"], false, "{r}");
    assert!(r["mail"].as_str().unwrap().starts_with("530 5.7.57"), "{r}");
    // Internal and external recipients through 587.
    for (to, subject) in [
        ("bob@contoso.test", "587 internal"),
        ("partner@fabrikam.test", "587 external"),
    ] {
        let mut cell = base.clone();
        cell["to"] = to.into();
        cell["subject"] = subject.into();
        let r = client(cell);
        assert_eq!(r["auth"], "235", "{r}");
        assert!(
            r["data"].as_str().unwrap().starts_with("2.6.0")
                || r["data"].as_str().unwrap().contains("Queued"),
            "{r}"
        );
    }
    server.wait_inbox("bob@contoso.test", 1);
    let t = sink.wait_transactions(1);
    assert!(
        t[0].contains("partner@fabrikam.test") && t[0].contains("Subject: 587 external"),
        "{}",
        t[0]
    );
    let receive = server.track(&["--event-id", "RECEIVE", "--subject", "587 internal"]);
    assert_eq!(receive[0]["ConnectorId"], "MBX1\\Client Proxy MBX1");
    assert_eq!(receive[0]["Directionality"], "Originating");
    // Implicit TLS (RFC 8314) on the custom connector.
    let r = client(
        serde_json::json!({"port": implicit, "implicit": true, "user": "a.smith@contoso.test", "password": "Pa55word!", "from": "a.smith@contoso.test", "to": "carol@contoso.test", "subject": "implicit tls"}),
    );
    assert_eq!(r["auth"], "235", "{r}");
    assert!(r["data"].as_str().unwrap().contains("Queued"), "{r}");
    server.wait_inbox("carol@contoso.test", 1);
    // Wrong password: 535 5.7.8. Another sender's address: 550 5.7.60.
    let mut cell = base.clone();
    cell["password"] = "wrong".into();
    cell["to"] = "bob@contoso.test".into();
    let r = client(cell);
    assert!(r["auth"].as_str().unwrap().starts_with("535 5.7.8"), "{r}");
    let mut cell = base.clone();
    cell["from"] = "bob@contoso.test".into();
    cell["to"] = "carol@contoso.test".into();
    let r = client(cell);
    assert!(r["mail"].as_str().unwrap().starts_with("550 5.7.60"), "{r}");
}

#[test]
fn failed_logons_are_throttled_per_client_address() {
    let (server, _sink, _) = start_with_submission();
    let (submission, _) = ports(&server);
    // smtplib tries PLAIN then LOGIN on each login(): up to two failures per call.
    for _ in 0..2 {
        let r = client(
            serde_json::json!({"port": submission, "starttls": true, "user": "alice@contoso.test", "password": "guess", "from": "alice@contoso.test", "to": "bob@contoso.test"}),
        );
        let auth = r["auth"].as_str().unwrap();
        assert!(
            auth.starts_with("535 5.7.8") || auth.starts_with("454 4.7.0"),
            "{r}"
        );
    }
    // Even the right password is refused now, without being checked.
    let r = client(
        serde_json::json!({"port": submission, "starttls": true, "user": "alice@contoso.test", "password": "Pa55word!", "from": "alice@contoso.test", "to": "bob@contoso.test"}),
    );
    assert!(r["auth"].as_str().unwrap().starts_with("454 4.7.0"), "{r}");
}

#[test]
fn open_relay_matrix_every_listener_gives_the_documented_outcome() {
    let (server, _sink, implicit) = start_with_submission();
    let (submission, client_proxy) = ports(&server);
    let p = &server.ports;
    // (listener, port, implicit TLS, STARTTLS first)
    let listeners = [
        ("25 Default Frontend", p.frontend, false, true),
        ("587 Client Frontend", submission, false, true),
        ("465 Client Proxy", client_proxy, false, true),
        ("2525 Default", p.transport, false, true),
        ("implicit-TLS connector", implicit, true, false),
    ];
    let mut failures = Vec::new();
    for (name, port, implicit, starttls) in listeners {
        for authenticated in [false, true] {
            for (to, internal) in [("bob@contoso.test", true), ("victim@example.org", false)] {
                let mut cell = serde_json::json!({"port": port, "implicit": implicit, "starttls": starttls, "from": "alice@contoso.test", "to": to, "subject": format!("matrix {name}")});
                if authenticated {
                    cell["user"] = "alice@contoso.test".into();
                    cell["password"] = "Pa55word!".into();
                }
                let r = client(cell);
                let accepted = r["data"].as_str().is_some_and(|d| d.contains("Queued"));
                // The documented outcome: only authenticated users on the user-facing
                // submission listeners may relay; :25 takes mail for the organisation from
                // anyone; internal listeners take nothing from non-servers.
                let user_listener = name.starts_with("587") || name.starts_with("implicit");
                let expected = match (name.starts_with("25 "), user_listener) {
                    (true, _) => internal,
                    (false, true) => authenticated,
                    (false, false) => false,
                };
                if accepted != expected {
                    failures.push(format!(
                        "{name} auth={authenticated} to={to}: expected accepted={expected}, got {r}"
                    ));
                }
                if !internal && !accepted && name.starts_with("25 ") {
                    let rcpt = r["rcpt"].as_str().unwrap_or("");
                    if !rcpt.starts_with("550 5.7.54") {
                        failures.push(format!(
                            "{name}: relay refusal should be 550 5.7.54, got {r}"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

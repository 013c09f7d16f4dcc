//! Server authentication that cannot be replayed (issue 13 item 3, DESIGN §7):
//! `X-MAILFLOW-SERVER` on the internal listeners of a real `mailflow serve`, driven
//! by a test client over real sockets (plain loopback, and STARTTLS with rustls for
//! the TLS exporter). The responses are computed here from the secret file, with the
//! transcript as docs/security.md specifies it (tests/common/server_auth.rs).

mod common;
#[path = "common/server_auth.rs"]
mod server_auth;

use std::sync::Arc;

use common::*;
use server_auth::{auth_line, b64, challenge, response};

/// MBX1's name in its EHLO reply (the receiving server in the transcript).
const MBX1: &str = "mbx1.contoso.test";
const HUB: &str = "HubTransport";
const FRONTEND: &str = "FrontendTransport";
const SUBMISSION: &str = "MailboxSubmission";

fn not_authenticated(r: &str) {
    assert!(
        r.starts_with("530 5.7.1 Client was not authenticated"),
        "MAIL must be refused: {r}"
    );
}

#[test]
fn a_recorded_exchange_does_not_authenticate_a_second_session() {
    let server = Server::start();
    let secret = server_auth::secret(server.dir.path());
    let port = server.ports.transport;

    // Session 1: the exchange a listener on the path would record.
    let mut first = Smtp::connect(port);
    first.cmd("EHLO mbx2.contoso.test");
    let initial = auth_line(HUB, "MBX1");
    let old_challenge = challenge(&first.cmd(&initial));
    let old_response = b64(&response(&secret, &old_challenge, "MBX1", HUB, MBX1, None));
    let r = first.cmd(&old_response);
    assert!(r.starts_with("235 2.7.0 Authentication successful"), "{r}");
    assert!(first.cmd("MAIL FROM:<>").starts_with("250"));

    // Session 2: the same claim, the recorded answer.
    let mut second = Smtp::connect(port);
    second.cmd("EHLO mbx2.contoso.test");
    let new_challenge = challenge(&second.cmd(&initial));
    assert_ne!(new_challenge, old_challenge, "a challenge is never reused");
    let r = second.cmd(&old_response);
    assert!(
        r.starts_with("535 5.7.8 Authentication credentials invalid"),
        "the recorded response must not authenticate: {r}"
    );
    not_authenticated(&second.cmd("MAIL FROM:<>"));

    // A correct response for an earlier challenge (this session's own last one).
    let next = challenge(&second.cmd(&initial));
    assert_ne!(next, new_challenge);
    let stale = response(&secret, &new_challenge, "MBX1", HUB, MBX1, None);
    let r = second.cmd(&b64(&stale));
    assert!(r.starts_with("535 5.7.8"), "{r}");
    not_authenticated(&second.cmd("MAIL FROM:<>"));

    // The recorded response sent straight with a new AUTH (no challenge read) is
    // taken as the answer to that AUTH's new challenge: refused all the same.
    second.send_raw(format!("{initial}\r\n{old_response}\r\n").as_bytes());
    challenge(&second.read_reply());
    let r = second.read_reply();
    assert!(r.starts_with("535 5.7.8"), "{r}");

    // The same session with a correct response to its current challenge: accepted,
    // so the refusals above are the challenge's doing, not a broken exchange.
    let current = challenge(&second.cmd(&initial));
    let r = second.cmd(&b64(&response(&secret, &current, "MBX1", HUB, MBX1, None)));
    assert!(r.starts_with("235 2.7.0"), "{r}");
    assert!(second.cmd("MAIL FROM:<>").starts_with("250"));
    second.cmd("QUIT");

    // The refusal says why in the protocol log (the client only sees 535).
    server.wait_log(HUB_LOG,
        "MBX1 HubTransport,organisation server authentication refused: the response does not verify",
    );
}

#[test]
fn the_old_auth_plain_token_no_longer_authenticates() {
    use hmac::{Hmac, Mac};
    let server = Server::start();
    let secret = server_auth::secret(server.dir.path());
    // The token of the previous scheme: hex(HMAC(secret, label NUL server)).
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
    mac.update(b"mailflow ExchangeServer authentication\0");
    mac.update(b"mbx1");
    let password = hex::encode(mac.finalize().into_bytes());
    let token = b64(format!("{HUB}\0MBX1\0{password}").as_bytes());
    for port in [server.ports.transport, server.ports.mailbox_delivery] {
        let mut c = Smtp::connect(port);
        let ehlo = c.cmd("EHLO mbx1.contoso.test");
        assert!(ehlo.contains("AUTH X-MAILFLOW-SERVER\r\n"), "{ehlo}");
        assert!(!ehlo.contains("PLAIN"), "{ehlo}");
        let r = c.cmd(&format!("AUTH PLAIN {token}"));
        assert!(
            r.starts_with("504 5.7.4 Unrecognized authentication type"),
            "{r}"
        );
        not_authenticated(&c.cmd("MAIL FROM:<>"));
        // Nor as the answer to a challenge.
        let _ = challenge(&c.cmd(&auth_line(HUB, "MBX1")));
        let r = c.cmd(&b64(password.as_bytes()));
        assert!(r.starts_with("535 5.7.8"), "{r}");
        not_authenticated(&c.cmd("MAIL FROM:<>"));
    }
}

#[test]
fn each_internal_listener_accepts_only_its_services() {
    let server = Server::start();
    let secret = server_auth::secret(server.dir.path());
    let transport = server.ports.transport;
    let delivery = server.ports.mailbox_delivery;
    let client_proxy = server.ports.client_proxy;
    let outbound_proxy = server.ports.outbound_proxy;
    let cases = [
        (transport, FRONTEND, true),
        (transport, HUB, true),
        (transport, SUBMISSION, true),
        (transport, "SomethingElse", false),
        (client_proxy, FRONTEND, true),
        (client_proxy, HUB, false),
        (client_proxy, SUBMISSION, false),
        (delivery, HUB, true),
        (delivery, FRONTEND, false),
        (delivery, SUBMISSION, false),
        (outbound_proxy, HUB, true),
        (outbound_proxy, FRONTEND, false),
        (outbound_proxy, SUBMISSION, false),
    ];
    for (port, service, allowed) in cases {
        let mut c = Smtp::connect(port);
        c.cmd("EHLO mbx1.contoso.test");
        let r = server_auth::authenticate_plain(&mut c, &secret, service, "MBX1", MBX1);
        if allowed {
            assert!(r.starts_with("235 2.7.0"), "{service} on {port}: {r}");
            assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
        } else {
            // Refused at AUTH, before any challenge: the secret is never used.
            assert!(
                r.starts_with("535 5.7.8 Authentication credentials invalid"),
                "{service} on {port}: {r}"
            );
            not_authenticated(&c.cmd("MAIL FROM:<>"));
        }
    }
    // A server the organisation does not have, with the right key all the same.
    let mut c = Smtp::connect(transport);
    c.cmd("EHLO mbx9.contoso.test");
    let r = server_auth::authenticate_plain(&mut c, &secret, HUB, "MBX9", MBX1);
    assert!(r.starts_with("535 5.7.8"), "{r}");
    server.wait_log("Logs/Mailbox/ProtocolLog/SmtpReceive/Delivery",
        "MBX1 FrontendTransport,organisation server authentication refused: service not allowed on this connector (allowed: HubTransport)",
    );
    server.wait_log("Logs/FrontEnd/ProtocolLog/SmtpReceive",
        "MBX1 FrontendTransport,organisation server authentication refused: service not allowed on this connector (allowed: HubTransport)",
    );
    server.wait_log(HUB_LOG,
        "MBX9 HubTransport,organisation server authentication refused: no such server in the organisation",
    );
}

#[test]
fn the_response_is_bound_to_the_tls_session() {
    let server = Server::start();
    let secret = server_auth::secret(server.dir.path());
    let port = server.ports.transport;
    let (mut a, a_exporter) = starttls(port, None);
    let (_b, b_exporter) = starttls(port, None);
    assert_ne!(
        a_exporter, b_exporter,
        "each TLS session has its own exporter"
    );
    let auth = |c: &mut Smtp<TlsStream>, exporter: Option<&[u8]>| {
        let ch = challenge(&c.cmd(&auth_line(HUB, "MBX1")));
        c.cmd(&b64(&response(&secret, &ch, "MBX1", HUB, MBX1, exporter)))
    };
    // Computed as for a plain session: refused inside TLS.
    let r = auth(&mut a, None);
    assert!(r.starts_with("535 5.7.8"), "{r}");
    not_authenticated(&a.cmd("MAIL FROM:<>"));
    // Computed with another session's exporter (a relay between two sessions).
    let other = b_exporter.to_vec();
    let r = auth(&mut a, Some(&other));
    assert!(r.starts_with("535 5.7.8"), "{r}");
    not_authenticated(&a.cmd("MAIL FROM:<>"));
    // Computed with an exporter of this session under another label.
    let wrong_label = a.export(b"EXPORTER-something-else");
    let r = auth(&mut a, Some(&wrong_label));
    assert!(r.starts_with("535 5.7.8"), "{r}");
    // This session's exporter: accepted.
    let mine = a_exporter.to_vec();
    let r = auth(&mut a, Some(&mine));
    assert!(r.starts_with("235 2.7.0"), "{r}");
    assert!(a.cmd("MAIL FROM:<>").starts_with("250"));
    a.cmd("QUIT");
}

#[test]
fn tls_1_2_is_refused_for_server_authentication() {
    let server = Server::start();
    let (mut c, _) = starttls(server.ports.transport, Some(&rustls::version::TLS12));
    // Refused at AUTH: a TLS 1.2 exporter is not trusted as a channel binding.
    let r = c.cmd(&auth_line(HUB, "MBX1"));
    assert!(r.starts_with("535 5.7.8"), "{r}");
    not_authenticated(&c.cmd("MAIL FROM:<>"));
    c.cmd("QUIT");
    server.wait_log(HUB_LOG, "TLS 1.3 is required");
}

/// The receive protocol log of `Default MBX1` and `Client Proxy MBX1`.
const HUB_LOG: &str = "Logs/Hub/ProtocolLog/SmtpReceive";

/// A session on `port` after STARTTLS with rustls (any certificate: the test is about
/// the binding, not about certificates), with its exporter under the mechanism's
/// label; `version` limits the TLS versions offered.
fn starttls(
    port: u16,
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> (Smtp<TlsStream>, [u8; 32]) {
    let mut c = Smtp::connect(port);
    let ehlo = c.cmd("EHLO mbx1.contoso.test");
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match version {
        Some(v) => vec![v],
        None => rustls::DEFAULT_VERSIONS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    let mut c = c.starttls(Arc::new(config), "mbx1.contoso.test");
    let exporter = c.export(server_auth::EXPORTER_LABEL);
    assert!(
        c.cmd("EHLO mbx1.contoso.test")
            .contains("AUTH X-MAILFLOW-SERVER")
    );
    (c, exporter)
}

#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

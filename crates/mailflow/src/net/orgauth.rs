//! Servers prove they belong to the organisation (DESIGN §1, §7), as Exchange's
//! `ExchangeServer` authentication does, with a challenge–response SASL mechanism,
//! `X-MAILFLOW-SERVER`, instead of a password: a password (a fixed token) captured
//! once would open every internal listener forever.
//!
//! ```text
//! C: AUTH X-MAILFLOW-SERVER base64(service NUL server)
//! S: 334 base64(challenge)              32 fresh random bytes per AUTH command
//! C: base64(HMAC-SHA256(key, transcript))
//! S: 235 2.7.0 Authentication successful  |  535 5.7.8 Authentication credentials invalid
//! ```
//!
//! `key` is derived from the organisation secret, and the transcript binds the
//! challenge, both servers' names, the service, and the TLS session (the TLS exporter,
//! RFC 9266 style) — see [`Transcript`]. A recorded exchange is worth nothing in a
//! second session: the challenge is new, and so is the TLS session. On loopback, where
//! sessions between one address's services are plain, a fixed marker stands for the
//! channel binding and the challenge still makes every exchange single-use. An address
//! in the organisation file is never a credential.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

use super::stream::Stream;

/// The services that authenticate (Exchange's names; the authorization identity).
pub const FRONTEND: &str = "FrontendTransport";
pub const HUB: &str = "HubTransport";
pub const SUBMISSION: &str = "MailboxSubmission";

/// The SASL mechanism organisation servers authenticate with. AUTH PLAIN is never
/// offered to servers.
pub const MECHANISM: &str = "X-MAILFLOW-SERVER";

/// Who may authenticate on each internal listener: a service is accepted only where
/// it has business, so a session that does authenticate cannot use a listener meant
/// for another hop (e.g. a Front End relaying to the internet through :717).
/// `Default <server>` (:2525): Front End proxying, Transport to Transport, Mailbox
/// Transport Submission.
pub const TRANSPORT_SERVICES: &[&str] = &[FRONTEND, HUB, SUBMISSION];
/// `Client Proxy <server>` (:465): only Front Ends proxying client submission.
pub const CLIENT_PROXY_SERVICES: &[&str] = &[FRONTEND];
/// `Default Mailbox Delivery <server>` (:475): only Transport delivering.
pub const MAILBOX_DELIVERY_SERVICES: &[&str] = &[HUB];
/// `Outbound Proxy Frontend <server>` (:717): only Transport sending through a send
/// connector with `front_end_proxy = true`.
pub const OUTBOUND_PROXY_SERVICES: &[&str] = &[HUB];

/// Bytes of the server's challenge.
pub const CHALLENGE_LEN: usize = 32;
/// The TLS exporter label both ends use (RFC 5705; RFC 9266 uses the same construction
/// for `tls-exporter`, with its own label).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-mailflow-server-auth";
/// Derives the mechanism's key from the organisation secret: HMAC(secret, this).
const KEY_LABEL: &[u8] = b"mailflow X-MAILFLOW-SERVER key v1";
/// Starts every transcript: the mechanism and its version.
const TRANSCRIPT_LABEL: &[u8] = b"mailflow X-MAILFLOW-SERVER v1";
/// The channel binding of a plain (loopback) session.
const NO_TLS: &[u8] = b"no TLS";
/// Prefixes the exporter in the transcript, so a TLS binding can never equal the plain
/// marker.
const TLS_EXPORTER: &[u8] = b"tls-exporter:";

/// What ties an exchange to its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// The TLS exporter ([`EXPORTER_LABEL`], 32 bytes, no context) of the session.
    Tls([u8; 32]),
    /// A plain session (allowed only on loopback).
    Plain,
}

impl Binding {
    /// The binding of `stream`. TLS must be 1.3: a TLS 1.2 exporter is unique to its
    /// session only with the extended master secret (RFC 7627), which rustls does not
    /// report, and a man in the middle could otherwise give two sessions one exporter
    /// (the triple-handshake attack). Between mailflow servers TLS 1.3 is what rustls
    /// negotiates anyway.
    pub fn of(stream: &Stream) -> Result<Binding, String> {
        match stream.tls_version() {
            None => Ok(Binding::Plain),
            Some(rustls::ProtocolVersion::TLSv1_3) => stream
                .tls_exporter(EXPORTER_LABEL)
                .map(Binding::Tls)
                .ok_or_else(|| "the TLS exporter is not available".to_string()),
            Some(v) => Err(format!(
                "{v:?} gives no channel binding this mechanism trusts; TLS 1.3 is required"
            )),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Binding::Tls(exporter) => [TLS_EXPORTER, &exporter[..]].concat(),
            Binding::Plain => NO_TLS.to_vec(),
        }
    }
}

/// Everything an `X-MAILFLOW-SERVER` response proves. The MAC input is
/// [`TRANSCRIPT_LABEL`] followed by each field as a 4-byte big-endian length and its
/// bytes, in this order: the challenge, the authenticating server's name (lowercase),
/// the service, the receiving server's name as announced in its EHLO reply
/// (lowercase), and the channel binding (`tls-exporter:` + the 32-byte exporter, or
/// `no TLS`).
pub struct Transcript<'a> {
    pub challenge: &'a [u8],
    pub server: &'a str,
    pub service: &'a str,
    pub receiver: &'a str,
    pub binding: &'a Binding,
}

impl Transcript<'_> {
    fn bytes(&self) -> Vec<u8> {
        let mut out = TRANSCRIPT_LABEL.to_vec();
        let binding = self.binding.bytes();
        for field in [
            self.challenge,
            self.server.to_ascii_lowercase().as_bytes(),
            self.service.as_bytes(),
            self.receiver.to_ascii_lowercase().as_bytes(),
            &binding,
        ] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }
}

/// The initial response: `service NUL server`.
pub fn initial_response(service: &str, server: &str) -> Vec<u8> {
    format!("{service}\0{server}").into_bytes()
}

/// Splits an initial response into (service, server); `None` unless it is exactly two
/// non-empty UTF-8 names around one NUL.
pub fn parse_initial_response(bytes: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (service, server) = text.split_once('\0')?;
    if service.is_empty() || server.is_empty() || server.contains('\0') {
        return None;
    }
    Some((service.to_string(), server.to_string()))
}

#[derive(Clone)]
pub struct OrgSecret(Vec<u8>);

impl OrgSecret {
    /// Reads the secret, creating it (32 random bytes, hex) when the file is missing and
    /// `create` allows it (a lone server makes its own at start).
    pub fn load(path: &Path, create: bool) -> anyhow::Result<OrgSecret> {
        match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Ok(OrgSecret(text.trim().as_bytes().to_vec())),
            Ok(_) => anyhow::bail!("{}: the organisation secret file is empty", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let bytes: [u8; 32] = rand::random();
                let text = hex::encode(bytes);
                if let Some(dir) = path.parent() {
                    crate::files::create_private_dir_all(dir)?;
                }
                crate::files::write_private(path, format!("{text}\n").as_bytes())?;
                Ok(OrgSecret(text.into_bytes()))
            }
            Err(e) => anyhow::bail!(
                "{}: cannot read the organisation secret: {e}",
                path.display()
            ),
        }
    }

    /// The MAC over `transcript` with the mechanism's key (not the secret itself: a key
    /// per purpose, so no other use of the secret can produce a response).
    fn server_auth_mac(&self, transcript: &Transcript<'_>) -> Hmac<Sha256> {
        let mut kdf = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        kdf.update(KEY_LABEL);
        let key = kdf.finalize().into_bytes();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(&transcript.bytes());
        mac
    }

    /// The response an authenticating server sends.
    pub fn server_auth_response(&self, transcript: &Transcript<'_>) -> [u8; 32] {
        self.server_auth_mac(transcript)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a response in constant time.
    pub fn verify_server_auth(&self, transcript: &Transcript<'_>, response: &[u8]) -> bool {
        self.server_auth_mac(transcript)
            .verify_slice(response)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_verifies_only_for_its_own_transcript() {
        let dir = tempfile::tempdir().unwrap();
        let s = OrgSecret::load(&dir.path().join("secret.key"), true).unwrap();
        let again = OrgSecret::load(&dir.path().join("secret.key"), false).unwrap();
        let tls = Binding::Tls([7; 32]);
        let t = Transcript {
            challenge: &[1; 32],
            server: "MBX1",
            service: HUB,
            receiver: "mbx2.contoso.test",
            binding: &tls,
        };
        let response = s.server_auth_response(&t);
        // Names are compared without case, as everywhere in the directory.
        let same = Transcript {
            server: "mbx1",
            receiver: "MBX2.contoso.test",
            ..t
        };
        assert!(again.verify_server_auth(&same, &response));
        let other_tls = Binding::Tls([8; 32]);
        for changed in [
            Transcript {
                challenge: &[2; 32],
                ..t
            },
            Transcript {
                server: "MBX2",
                ..t
            },
            Transcript {
                service: FRONTEND,
                ..t
            },
            Transcript {
                receiver: "mbx3.contoso.test",
                ..t
            },
            Transcript {
                binding: &other_tls,
                ..t
            },
            Transcript {
                binding: &Binding::Plain,
                ..t
            },
        ] {
            assert!(!again.verify_server_auth(&changed, &response));
        }
        assert!(!again.verify_server_auth(&t, &response[..31]));
        // Another organisation's secret.
        let other = OrgSecret::load(&dir.path().join("other.key"), true).unwrap();
        assert!(!other.verify_server_auth(&t, &response));
    }

    /// The client and the receive connector together, over a real socket: the path
    /// `OrgConnector::connect` takes between two addresses (STARTTLS, then the exporter).
    mod over_sockets {
        use super::super::*;
        use crate::net::client::{ClientError, SmtpClient};
        use crate::net::receive::{AuthPolicy, Limits, ReceiveConnector, SessionInfo, SmtpHandler};
        use mailflow_smtp::{
            Address, Enhanced, MailParams, RcptParams, Reply, SessionConfig, replies,
        };
        use std::net::SocketAddr;
        use std::sync::Arc;
        use std::time::Duration;

        struct Accept;

        #[async_trait::async_trait]
        impl SmtpHandler for Accept {
            async fn mail(&mut self, _: &SessionInfo, _: Option<Address>, _: MailParams) -> Reply {
                replies::sender_ok()
            }
            async fn rcpt(&mut self, _: &SessionInfo, _: Address, _: RcptParams) -> Reply {
                replies::recipient_ok()
            }
            async fn data_start(&mut self, _: &SessionInfo) -> Reply {
                Reply::plain(354, "go")
            }
            async fn data(&mut self, _: Vec<u8>) {}
            async fn data_end(&mut self, _: &SessionInfo) -> Reply {
                Reply::new(250, Enhanced(2, 6, 0), "Queued")
            }
            async fn reset(&mut self) {}
        }

        /// MBX2's listener on 127.0.0.1 (TLS offered), with `auth`.
        async fn listener(dir: &Path, auth: AuthPolicy) -> SocketAddr {
            let (cert, key) = (dir.join("mbx2.pem"), dir.join("mbx2.key"));
            crate::net::tls::ensure_self_signed(&cert, &key, "mbx2.contoso.test").unwrap();
            let connector = ReceiveConnector {
                id: "MBX2\\Default MBX2".into(),
                bind: "127.0.0.1:0".parse().unwrap(),
                session: SessionConfig {
                    hostname: "mbx2.contoso.test".into(),
                    banner: "mbx2.contoso.test ESMTP".into(),
                    ..SessionConfig::default()
                },
                tls: Some(crate::net::tls::server_config(&cert, &key).unwrap()),
                auth,
                protocol_log: None,
                inactivity_timeout: Duration::from_secs(10),
                connection_timeout: Duration::from_secs(60),
                limits: Limits::resolve(&Default::default(), true, 100),
                default_domain: "contoso.test".into(),
                implicit_tls: false,
                remote_ranges: Vec::new(),
                handler: Arc::new(|| Box::new(Accept)),
            };
            connector.bind().await.unwrap().0
        }

        fn org(secret: &OrgSecret, services: &'static [&'static str]) -> AuthPolicy {
            AuthPolicy::OrgServers {
                secret: secret.clone(),
                servers: Arc::new(vec!["MBX1".into(), "MBX2".into()]),
                services,
            }
        }

        async fn connect(addr: SocketAddr, tls: bool) -> SmtpClient {
            let log = crate::logs::protocol::ProtocolSession::disabled();
            let mut c = SmtpClient::connect(addr, "mbx1.contoso.test", Duration::from_secs(5), log)
                .await
                .unwrap();
            if tls {
                c.starttls("mbx1.contoso.test", "127.0.0.1").await.unwrap();
                assert!(c.is_tls());
            }
            c
        }

        fn refused(r: Result<(), ClientError>) -> u16 {
            match r {
                Err(ClientError::Refused(reply)) => reply.code,
                other => panic!("expected a refusal, got {other:?}"),
            }
        }

        #[tokio::test]
        async fn the_client_authenticates_inside_tls_and_in_plain_on_loopback() {
            let dir = tempfile::tempdir().unwrap();
            let secret = OrgSecret::load(&dir.path().join("secret.key"), true).unwrap();
            let addr = listener(dir.path(), org(&secret, TRANSPORT_SERVICES)).await;
            for tls in [true, false] {
                let mut c = connect(addr, tls).await;
                assert_eq!(c.server_name, "mbx2.contoso.test");
                c.auth_org_server(&secret, HUB, "MBX1").await.unwrap();
                assert_eq!(
                    c.command("MAIL FROM:<>").await.unwrap().code,
                    250,
                    "tls: {tls}"
                );
            }
            // Another organisation's secret, a service the listener does not take, an
            // unknown server: 535.
            let other = OrgSecret::load(&dir.path().join("other.key"), true).unwrap();
            let mut c = connect(addr, true).await;
            assert_eq!(refused(c.auth_org_server(&other, HUB, "MBX1").await), 535);
            assert_eq!(c.command("MAIL FROM:<>").await.unwrap().code, 530);
            let addr = listener(dir.path(), org(&secret, MAILBOX_DELIVERY_SERVICES)).await;
            let mut c = connect(addr, true).await;
            assert_eq!(
                refused(c.auth_org_server(&secret, FRONTEND, "MBX1").await),
                535
            );
            let mut c = connect(addr, true).await;
            assert_eq!(refused(c.auth_org_server(&secret, HUB, "MBX9").await), 535);
            let mut c = connect(addr, true).await;
            c.auth_org_server(&secret, HUB, "MBX1").await.unwrap();
        }

        #[tokio::test]
        async fn no_fallback_to_a_password_where_the_mechanism_is_not_offered() {
            let dir = tempfile::tempdir().unwrap();
            let secret = OrgSecret::load(&dir.path().join("secret.key"), true).unwrap();
            let addr = listener(dir.path(), AuthPolicy::None).await;
            let mut c = connect(addr, true).await;
            match c.auth_org_server(&secret, HUB, "MBX1").await {
                Err(ClientError::Protocol(e)) => {
                    assert!(e.contains("does not offer AUTH X-MAILFLOW-SERVER"), "{e}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn initial_responses_are_service_nul_server() {
        assert_eq!(
            parse_initial_response(&initial_response(HUB, "MBX1")),
            Some((HUB.to_string(), "MBX1".to_string()))
        );
        for bad in [
            &b"HubTransport"[..],
            b"\0MBX1",
            b"HubTransport\0",
            b"a\0b\0c",
            b"\xff\0b",
        ] {
            assert_eq!(parse_initial_response(bad), None, "{bad:?}");
        }
    }
}

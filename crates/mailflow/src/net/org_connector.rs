//! The implicit `Intra-Organization SMTP Send Connector` (reference §1.7): an
//! authenticated SMTP session from one of this server's services to a service of the
//! organisation (Transport, Mailbox Delivery, Client Proxy, Outbound Proxy). Transport,
//! Front End and Mailbox Transport Submission each hold one `OrgConnector`; it carries
//! the organisation key and this server's TLS, and writes to the send log its caller
//! passes. Must not import a service (scripts/check-arrows).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::client::{ClientError, SmtpClient};
use super::orgauth::OrgSecret;
use super::orgca::ServerTls;
use crate::directory::live::LiveDirectory;
use crate::logs::LoggingLevel;
use crate::logs::protocol::{ProtocolLog, ProtocolSession};

/// The implicit send connector's name in tracking and protocol logs (reference §1.7).
pub const INTRA_ORG_SEND_CONNECTOR: &str = "Intra-Organization SMTP Send Connector";
const INTRA_ORG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const INTRA_ORG_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// What this server brings to a session with another service of the organisation.
pub struct OrgConnector {
    directory: Arc<LiveDirectory>,
    secret: OrgSecret,
    /// This server's TLS (certificate, organisation CA), built once at start; `None`
    /// only where no TLS hop can happen (the fuzz harness).
    tls: Option<Arc<ServerTls>>,
}

impl OrgConnector {
    pub fn new(
        directory: Arc<LiveDirectory>,
        secret: OrgSecret,
        tls: Option<Arc<ServerTls>>,
    ) -> OrgConnector {
        OrgConnector {
            directory,
            secret,
            tls,
        }
    }

    /// An SMTP session to another service of the organisation, authenticated as this
    /// server's `service` with the organisation key. It is plain only to this server's
    /// own loopback address (services of one server talking to each other); to any
    /// other address, loopback included, STARTTLS comes first (DESIGN §7). With an
    /// organisation CA the peer's certificate must verify against it for the peer's
    /// fqdn ([`LiveDirectory::peer_name`]) and this server presents its own as client
    /// certificate; a refusal is [`ClientError::CertificateRefused`] naming the
    /// certificate seen. Without a CA (a legacy file) the certificate is not checked.
    pub async fn connect(
        &self,
        target: SocketAddr,
        service: &str,
        log: ProtocolSession,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<SmtpClient, ClientError> {
        let local = &self.directory;
        let mut client = SmtpClient::connect(target, local.fqdn(), connect_timeout, log).await?;
        client.timeout_for_commands(command_timeout);
        let own_loopback = target.ip().is_loopback() && target.ip() == local.ip();
        if !own_loopback {
            // Never send the organisation key in clear text: no STARTTLS, no session.
            if !client.has_extension("STARTTLS") {
                return Err(ClientError::Protocol(format!(
                    "{target} offers no STARTTLS; organisation credentials are only sent inside TLS"
                )));
            }
            let (config, verified) = match &self.tls {
                Some(t) => (t.client.clone(), t.verified),
                None if local.dir().org_ca_certificate_path().is_some() => {
                    return Err(ClientError::Protocol(
                        "the organisation CA is not loaded; internal TLS cannot be verified".into(),
                    ));
                }
                None => (super::tls::client_config(), false),
            };
            let name = local.peer_name(target);
            client
                .starttls_org(local.fqdn(), &name, config, verified)
                .await?;
        }
        client
            .auth_org_server(&self.secret, service, local.name())
            .await?;
        Ok(client)
    }

    /// A session through the implicit intra-organisation send connector (to Mailbox
    /// Delivery or Transport) as `service`, logged to `send_log` when the organisation's
    /// `intra_org_connector_protocol_logging` is verbose; off loopback, inside TLS.
    pub async fn connect_intra_org(
        &self,
        target: SocketAddr,
        service: &str,
        send_log: &ProtocolLog,
    ) -> Result<SmtpClient, ClientError> {
        let verbose = self
            .directory
            .dir()
            .transport()
            .intra_org_connector_protocol_logging
            == LoggingLevel::Verbose;
        let log = if verbose {
            send_log.session(
                INTRA_ORG_SEND_CONNECTOR,
                SocketAddr::new(self.directory.ip(), 0),
                target,
            )
        } else {
            ProtocolSession::disabled()
        };
        let mut client = self
            .connect(
                target,
                service,
                log,
                INTRA_ORG_CONNECT_TIMEOUT,
                INTRA_ORG_COMMAND_TIMEOUT,
            )
            .await?;
        // Exchange servers send to each other with BDAT: the envelope and a small message
        // travel in one write and come back as one round trip, with no dot-stuffing.
        client.use_chunking(true);
        Ok(client)
    }
}

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
use crate::logs::connectivity::{ConnectivityLog, ConnectivitySession};
use crate::logs::protocol::{ProtocolLog, ProtocolSession};

/// The implicit send connector's name in tracking and protocol logs (reference §1.7).
pub const INTRA_ORG_SEND_CONNECTOR: &str = "Intra-Organization SMTP Send Connector";
const INTRA_ORG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const INTRA_ORG_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// The service an [`OrgConnector`] connects for: it decides the implicit connector's
/// logging level and how the connectivity log names the destination (reference §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgService {
    /// The Transport service: IntraOrgConnectorProtocolLoggingLevel of
    /// `[servers.transport_service]`; destination the peer server's fqdn.
    Transport,
    /// Front End Transport: its own IntraOrgConnectorProtocolLoggingLevel;
    /// destination `internalproxy`.
    FrontEnd,
    /// Mailbox Transport Submission: Transport's level (the same implicit connector);
    /// destination `mailboxtransportsubmissioninternalproxy`.
    MailboxSubmission,
}

/// What this server brings to a session with another service of the organisation.
pub struct OrgConnector {
    directory: Arc<LiveDirectory>,
    secret: OrgSecret,
    /// This server's TLS (certificate, organisation CA), built once at start; `None`
    /// only where no TLS hop can happen (the fuzz harness).
    tls: Option<Arc<ServerTls>>,
    service: OrgService,
    /// The calling service's connectivity log; `None` logs no connection (fuzz).
    connectivity: Option<ConnectivityLog>,
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
            service: OrgService::Transport,
            connectivity: None,
        }
    }

    /// The same, connecting for `service` and logging its connections to
    /// `connectivity`.
    pub fn logged(mut self, service: OrgService, connectivity: ConnectivityLog) -> OrgConnector {
        self.service = service;
        self.connectivity = Some(connectivity);
        self
    }

    /// The implicit intra-organisation send connector's ProtocolLoggingLevel for this
    /// service, as the organisation file says now.
    pub fn intra_org_logging(&self) -> LoggingLevel {
        let local = self.directory.local();
        match self.service {
            OrgService::FrontEnd => local.frontend_intra_org_logging(),
            OrgService::Transport | OrgService::MailboxSubmission => {
                local.transport_intra_org_logging(self.directory.dir().transport())
            }
        }
    }

    /// A connectivity log session for a connection to `target`, with its `+` line.
    fn connectivity_session(&self, target: SocketAddr, service: &str) -> ConnectivitySession {
        let Some(log) = &self.connectivity else {
            return ConnectivitySession::disabled();
        };
        let peer = self.directory.peer_name(target);
        let destination = match self.service {
            OrgService::Transport => peer.as_str(),
            OrgService::FrontEnd => "internalproxy",
            OrgService::MailboxSubmission => "mailboxtransportsubmissioninternalproxy",
        };
        log.session(
            destination,
            &format!("{INTRA_ORG_SEND_CONNECTOR} to {peer} [{target}] as {service}"),
        )
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
        let mut connectivity = self.connectivity_session(target, service);
        match self
            .connect_logged(
                target,
                service,
                log,
                connect_timeout,
                command_timeout,
                &mut connectivity,
            )
            .await
        {
            Ok(mut client) => {
                client.attach_connectivity(connectivity);
                Ok(client)
            }
            Err(e) => {
                connectivity.failed(&e.to_string());
                Err(e)
            }
        }
    }

    async fn connect_logged(
        &self,
        target: SocketAddr,
        service: &str,
        log: ProtocolSession,
        connect_timeout: Duration,
        command_timeout: Duration,
        connectivity: &mut ConnectivitySession,
    ) -> Result<SmtpClient, ClientError> {
        let local = &self.directory;
        let mut client = SmtpClient::connect(target, local.fqdn(), connect_timeout, log).await?;
        connectivity.info(&format!(
            "Established connection to {target} from {}",
            client.local
        ));
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
            connectivity.info(&format!(
                "TLS negotiated with {name} (certificate {})",
                if verified {
                    "verified against the organisation CA"
                } else {
                    "not verified"
                }
            ));
        }
        client
            .auth_org_server(&self.secret, service, local.name())
            .await?;
        Ok(client)
    }

    /// A session through the implicit intra-organisation send connector (to Mailbox
    /// Delivery or Transport) as `service`, logged to `send_log` when this service's
    /// IntraOrgConnectorProtocolLoggingLevel is verbose ([`OrgConnector::intra_org_logging`]);
    /// off loopback, inside TLS.
    pub async fn connect_intra_org(
        &self,
        target: SocketAddr,
        service: &str,
        send_log: &ProtocolLog,
    ) -> Result<SmtpClient, ClientError> {
        let log = if self.intra_org_logging() == LoggingLevel::Verbose {
            // The local port is filled in once connected.
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

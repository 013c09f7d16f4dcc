//! The organisation file (DESIGN §2): plain data, deserialized once and validated.
//!
//! Array-of-tables entries are wrapped in [`Spanned`] so validation errors can name the
//! line of the entry and of the offending key.

use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use toml::Spanned;

use crate::logs::LoggingLevel;
use crate::logs::retention::Retention;
use crate::logs::service_logs::{LogFolder, LogPaths, PipelineTracingPaths, ServiceLogPaths};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgFile {
    pub organization: Organization,
    #[serde(default)]
    pub transport: TransportSettings,
    #[serde(default)]
    pub sites: Vec<Spanned<Site>>,
    #[serde(default)]
    pub site_links: Vec<Spanned<SiteLink>>,
    #[serde(default)]
    pub servers: Vec<Spanned<Server>>,
    #[serde(default)]
    pub dags: Vec<Spanned<Dag>>,
    #[serde(default)]
    pub databases: Vec<Spanned<Database>>,
    #[serde(default)]
    pub mailboxes: Vec<Spanned<Mailbox>>,
    #[serde(default)]
    pub groups: Vec<Spanned<Group>>,
    #[serde(default)]
    pub send_connectors: Vec<Spanned<SendConnector>>,
    #[serde(default)]
    pub receive_connectors: Vec<Spanned<ReceiveConnectorEntry>>,
    /// Mail flow rules (the Transport Rule agent reads them, see transport/agents).
    #[serde(default)]
    pub transport_rules: Vec<Spanned<toml::Table>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Organization {
    pub name: String,
    /// Servers authenticate to each other with a key derived from this file's bytes.
    #[serde(default)]
    pub secret_file: Option<String>,
    /// The organisation CA's certificate (PEM): every server's certificate is signed by
    /// it, and servers verify each other against it on internal hops (DESIGN §7).
    /// Unset in files made before the CA existed: internal certificates are then not
    /// verified, and `mailflow check-config` names the command that adds the CA.
    #[serde(default)]
    pub ca_certificate: Option<String>,
    /// The CA's private key (PEM). Only where certificates are issued
    /// (`mailflow init --add-server`); servers do not need it.
    #[serde(default)]
    pub ca_key: Option<String>,
    pub accepted_domains: Vec<String>,
    /// Set-TransportConfig MaxReceiveSize/MaxSendSize.
    #[serde(default = "default_max_message_size", deserialize_with = "de_size")]
    pub max_message_size: u64,
    /// Set-TransportConfig MaxRecipientEnvelopeLimit.
    #[serde(default = "default_max_recipients")]
    pub max_recipients_per_message: usize,
    /// MaxHopCount: `Received:` headers (reference §11.3).
    #[serde(default = "default_max_hop_count")]
    pub max_hop_count: usize,
    /// MaxLocalHopCount.
    #[serde(default = "default_max_local_hop_count")]
    pub max_local_hop_count: usize,
}

fn default_max_message_size() -> u64 {
    10 * 1024 * 1024
}
fn default_max_recipients() -> usize {
    500
}
fn default_max_hop_count() -> usize {
    30
}
fn default_max_local_hop_count() -> usize {
    8
}

/// Retry, expiration and timeout settings of the Transport service (reference §6),
/// organisation-wide. Durations are written like `90s`, `5m`, `4h`, `2d`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportSettings {
    pub queue_glitch_retry_count: u32,
    #[serde(deserialize_with = "de_duration")]
    pub queue_glitch_retry_interval: Duration,
    pub transient_failure_retry_count: u32,
    #[serde(deserialize_with = "de_duration")]
    pub transient_failure_retry_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub outbound_connection_failure_retry_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub mailbox_delivery_queue_retry_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub message_expiration_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub delay_notification_timeout: Duration,
    /// ExternalDelayDSNEnabled (Set-TransportConfig, default true): delay notices for
    /// messages that entered anonymously.
    pub external_delay_dsn_enabled: bool,
    /// InternalDelayDSNEnabled (default true): delay notices for the organisation's own
    /// senders.
    pub internal_delay_dsn_enabled: bool,
    /// Receive connectors' ConnectionInactivityTimeout (5 min on Mailbox servers).
    #[serde(deserialize_with = "de_duration")]
    pub connection_inactivity_timeout: Duration,
    /// Receive connectors' ConnectionTimeout (absolute, 10 min).
    #[serde(deserialize_with = "de_duration")]
    pub connection_timeout: Duration,
    /// IntraOrgConnectorProtocolLoggingLevel (Set-TransportService) of every server
    /// whose `[servers.transport_service]` does not set its own.
    pub intra_org_connector_protocol_logging: LoggingLevel,
    /// MailboxDeliveryConnectorProtocolLoggingLevel (Set-MailboxTransportService) of
    /// every server whose `[servers.mailbox_transport_service]` does not set its own.
    pub mailbox_delivery_connector_protocol_logging: LoggingLevel,
    /// How often each server deletes log files past their MaxAge and
    /// MaxDirectorySize (mailflow's; Exchange does not say). Also once at start.
    #[serde(deserialize_with = "de_duration")]
    pub log_retention_interval: Duration,
    /// How often Transport writes a snapshot of its queues in the queue log when
    /// something changed (mailflow's; Exchange does not say). 1 minute.
    #[serde(deserialize_with = "de_duration")]
    pub queue_log_interval: Duration,
    /// How often the Pickup and Replay directories are read (Exchange: fixed 5 s).
    #[serde(deserialize_with = "de_duration")]
    pub pickup_directory_poll_interval: Duration,
    /// ExternalDNSServers: `ip` or `ip:port`; empty uses the system's resolvers.
    pub external_dns_servers: Vec<String>,
    /// MaxPerDomainOutboundConnections (reference §6 lists 20 and 40; we take 20).
    pub max_per_domain_outbound_connections: usize,
    /// MaxOutboundConnections.
    pub max_outbound_connections: usize,
    /// How long a session inside the organisation waits for the next message of its
    /// queue before it closes (mailflow's; Postfix's `smtp_connection_cache_time_limit`).
    #[serde(deserialize_with = "de_duration")]
    pub intra_org_connection_cache_time: Duration,
    /// QueueMaxIdleTime (EdgeTransport.exe.config, 3 min): an empty delivery queue is
    /// removed after this long without activity.
    #[serde(deserialize_with = "de_duration")]
    pub queue_max_idle_time: Duration,
}

impl Default for TransportSettings {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(60 * m);
        TransportSettings {
            queue_glitch_retry_count: 4,
            queue_glitch_retry_interval: min(1),
            transient_failure_retry_count: 6,
            transient_failure_retry_interval: min(5),
            outbound_connection_failure_retry_interval: min(10),
            mailbox_delivery_queue_retry_interval: min(5),
            message_expiration_timeout: min(2 * 24 * 60),
            delay_notification_timeout: min(4 * 60),
            external_delay_dsn_enabled: true,
            internal_delay_dsn_enabled: true,
            connection_inactivity_timeout: min(5),
            connection_timeout: min(10),
            intra_org_connector_protocol_logging: LoggingLevel::None,
            mailbox_delivery_connector_protocol_logging: LoggingLevel::None,
            log_retention_interval: min(5),
            queue_log_interval: min(1),
            pickup_directory_poll_interval: Duration::from_secs(5),
            external_dns_servers: Vec::new(),
            max_per_domain_outbound_connections: 20,
            max_outbound_connections: 1000,
            intra_org_connection_cache_time: Duration::from_secs(2),
            queue_max_idle_time: min(3),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub name: String,
    #[serde(default)]
    pub hub_site: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteLink {
    pub sites: Vec<String>,
    /// Exchange's default site link cost is 100.
    #[serde(default = "default_link_cost")]
    pub cost: u32,
}

fn default_link_cost() -> u32 {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub name: String,
    #[serde(default)]
    pub site: Option<String>,
    pub fqdn: String,
    /// Where other servers reach this one.
    pub address: Parsed<IpAddr>,
    /// Where this server's listeners bind; defaults to `address`.
    #[serde(default)]
    pub bind: Option<Parsed<IpAddr>>,
    pub data_dir: String,
    #[serde(default)]
    pub ports: Ports,
    /// PEM certificate and key for STARTTLS; made (self-signed) at start if absent.
    #[serde(default)]
    pub tls_certificate: Option<String>,
    #[serde(default)]
    pub tls_key: Option<String>,
    /// The certificate the internet sees (PEM): the Front End (:25, :587) and custom
    /// receive connectors present it instead of `tls_certificate`, e.g. one from a
    /// public CA, as Exchange assigns a certificate to the SMTP service. Internal
    /// listeners and the admin API keep the organisation CA's certificate.
    #[serde(default)]
    pub frontend_tls_certificate: Option<String>,
    #[serde(default)]
    pub frontend_tls_key: Option<String>,
    /// Protocol logging of `Default Frontend <server>` (Verbose by default, reference §1.2).
    #[serde(default = "verbose")]
    pub frontend_protocol_logging: LoggingLevel,
    /// `success_dsn_for_anonymous` of `Default Frontend <server>` (see
    /// [`ReceiveConnectorEntry::success_dsn_for_anonymous`]).
    #[serde(default = "yes")]
    pub frontend_success_dsn_for_anonymous: bool,
    /// Protocol logging of `Default <server>` (None by default).
    #[serde(default)]
    pub transport_protocol_logging: LoggingLevel,
    /// MaxInboundConnection of each receive connector (reference §1.2: 5000) unless
    /// `connector_limits` sets it. Past it, new clients get `421 4.3.2`.
    #[serde(default = "max_inbound")]
    pub max_inbound_connections: usize,
    /// PickupDirectoryPath (default `<data_dir>/Pickup`).
    #[serde(default)]
    pub pickup_directory: Option<String>,
    /// ReplayDirectoryPath (default `<data_dir>/Replay`).
    #[serde(default)]
    pub replay_directory: Option<String>,
    /// Limits of the built-in receive connectors, one table per listener (the names of
    /// `[servers.ports]`).
    #[serde(default)]
    pub connector_limits: BuiltinConnectorLimits,
    /// Set-TransportService's log settings for this server.
    #[serde(default)]
    pub transport_service: TransportServiceLogs,
    /// Set-FrontendTransportService's log settings for this server.
    #[serde(default)]
    pub frontend_transport_service: FrontendTransportServiceLogs,
    /// Set-MailboxTransportService's log settings for this server.
    #[serde(default)]
    pub mailbox_transport_service: MailboxTransportServiceLogs,
}

/// One log kind's `…LogPath`, `…LogMaxAge`, `…LogMaxDirectorySize` and
/// `…LogMaxFileSize` (e.g. `[servers.transport_service.connectivity_log]` is
/// Set-TransportService's `ConnectivityLogPath`, `ConnectivityLogMaxAge`, …). Unset
/// keys keep Exchange's defaults (reference §7.1, §8.1, §8.3, §8.4); a relative path is
/// read from the organisation file's folder.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub path: Option<String>,
    /// `"0s"` keeps files whatever their age (Exchange's `00:00:00`).
    #[serde(deserialize_with = "de_opt_duration")]
    pub max_age: Option<Duration>,
    #[serde(deserialize_with = "de_opt_size")]
    pub max_directory_size: Option<u64>,
    #[serde(deserialize_with = "de_opt_size")]
    pub max_file_size: Option<u64>,
}

impl LogSettings {
    /// `default` with what this table sets.
    fn apply(&self, default: &LogFolder, resolve: &dyn Fn(&str) -> PathBuf) -> LogFolder {
        let r = default.retention;
        LogFolder {
            enabled: default.enabled,
            dir: self
                .path
                .as_deref()
                .map_or_else(|| default.dir.clone(), resolve),
            retention: Retention {
                max_age: self.max_age.unwrap_or(r.max_age),
                max_directory_size: self.max_directory_size.unwrap_or(r.max_directory_size),
                max_file_size: self.max_file_size.unwrap_or(r.max_file_size),
            },
        }
    }
}

/// A log kind Exchange can turn off (`ConnectivityLogEnabled`, `AgentLogEnabled`):
/// [`LogSettings`]' keys and `enabled` (on when unset). mailflow also takes `enabled`
/// for the queue log, which Exchange turns off with `QueueLogPath $null`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwitchedLogSettings {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub max_age: Option<Duration>,
    #[serde(deserialize_with = "de_opt_size")]
    pub max_directory_size: Option<u64>,
    #[serde(deserialize_with = "de_opt_size")]
    pub max_file_size: Option<u64>,
}

impl SwitchedLogSettings {
    fn apply(&self, default: &LogFolder, resolve: &dyn Fn(&str) -> PathBuf) -> LogFolder {
        let settings = LogSettings {
            path: self.path.clone(),
            max_age: self.max_age,
            max_directory_size: self.max_directory_size,
            max_file_size: self.max_file_size,
        };
        LogFolder {
            enabled: self.enabled.unwrap_or(default.enabled),
            ..settings.apply(default, resolve)
        }
    }
}

/// `[servers.transport_service.message_tracking_log]`: MessageTrackingLogPath,
/// …MaxAge, …MaxDirectorySize, …MaxFileSize, MessageTrackingLogEnabled (`enabled`) and
/// MessageTrackingLogSubjectLoggingEnabled (`subject_logging_enabled`), both on when
/// unset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessageTrackingLogSettings {
    pub enabled: Option<bool>,
    pub subject_logging_enabled: Option<bool>,
    pub path: Option<String>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub max_age: Option<Duration>,
    #[serde(deserialize_with = "de_opt_size")]
    pub max_directory_size: Option<u64>,
    #[serde(deserialize_with = "de_opt_size")]
    pub max_file_size: Option<u64>,
}

impl MessageTrackingLogSettings {
    fn switched(&self) -> SwitchedLogSettings {
        SwitchedLogSettings {
            enabled: self.enabled,
            path: self.path.clone(),
            max_age: self.max_age,
            max_directory_size: self.max_directory_size,
            max_file_size: self.max_file_size,
        }
    }
}

/// `[servers.transport_service.pipeline_tracing]`: PipelineTracingEnabled (`enabled`,
/// off), PipelineTracingPath (`path`, `Logs/Hub/PipelineTracing`) and
/// PipelineTracingSenderAddress (`sender_address`: only this envelope sender's
/// messages are traced; none, nothing is).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineTracingSettings {
    pub enabled: bool,
    pub path: Option<String>,
    pub sender_address: Option<String>,
}

/// `[servers.transport_service]`: Set-TransportService's logging for this server's
/// Transport service (`Logs/Hub`, and `Logs/MessageTracking`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportServiceLogs {
    /// IntraOrgConnectorProtocolLoggingLevel: the `Intra-Organization SMTP Send
    /// Connector`'s sessions in this server's Hub send log. Unset: `[transport]`'s
    /// `intra_org_connector_protocol_logging`.
    pub intra_org_connector_protocol_logging_level: Option<LoggingLevel>,
    pub message_tracking_log: MessageTrackingLogSettings,
    pub receive_protocol_log: LogSettings,
    pub send_protocol_log: LogSettings,
    pub connectivity_log: SwitchedLogSettings,
    pub routing_table_log: LogSettings,
    pub agent_log: SwitchedLogSettings,
    /// QueueLogPath, QueueLogMaxAge, QueueLogMaxDirectorySize, QueueLogMaxFileSize.
    pub queue_log: SwitchedLogSettings,
    pub pipeline_tracing: PipelineTracingSettings,
}

/// `[servers.frontend_transport_service]`: Set-FrontendTransportService's logging
/// (`Logs/FrontEnd`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrontendTransportServiceLogs {
    /// IntraOrgConnectorProtocolLoggingLevel: the Front End's sessions to Transport
    /// (`Inbound Proxy Internal Send Connector`) in its send log. Unset: the server's
    /// `frontend_protocol_logging` (Verbose, as Exchange logs the Front End's implicit
    /// send connector by default).
    pub intra_org_connector_protocol_logging_level: Option<LoggingLevel>,
    pub receive_protocol_log: LogSettings,
    pub send_protocol_log: LogSettings,
    pub connectivity_log: SwitchedLogSettings,
    pub routing_table_log: LogSettings,
    pub agent_log: SwitchedLogSettings,
}

/// `[servers.mailbox_transport_service]`: Set-MailboxTransportService's logging
/// (`Logs/Mailbox`; Delivery and Submission write in subfolders of each path).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailboxTransportServiceLogs {
    /// MailboxDeliveryConnectorProtocolLoggingLevel: `Default Mailbox Delivery
    /// <server>`'s receive log. Unset: `[transport]`'s
    /// `mailbox_delivery_connector_protocol_logging`.
    pub mailbox_delivery_connector_protocol_logging_level: Option<LoggingLevel>,
    pub receive_protocol_log: LogSettings,
    pub send_protocol_log: LogSettings,
    pub connectivity_log: SwitchedLogSettings,
    pub routing_table_log: LogSettings,
    pub agent_log: SwitchedLogSettings,
}

impl Server {
    /// Where this server's logs go: Exchange's layout under `data_dir/Logs` with what
    /// the `[servers.*_service]` tables set; `resolve` reads a path of the file.
    pub fn log_paths(&self, data_dir: &Path, resolve: &dyn Fn(&str) -> PathBuf) -> LogPaths {
        let d = LogPaths::new(data_dir);
        let (t, f, m) = (
            &self.transport_service,
            &self.frontend_transport_service,
            &self.mailbox_transport_service,
        );
        let service = |d: &ServiceLogPaths,
                       [receive, send, routing]: [&LogSettings; 3],
                       [connectivity, agent]: [&SwitchedLogSettings; 2]| {
            ServiceLogPaths {
                receive_protocol: receive.apply(&d.receive_protocol, resolve),
                send_protocol: send.apply(&d.send_protocol, resolve),
                connectivity: connectivity.apply(&d.connectivity, resolve),
                routing_table: routing.apply(&d.routing_table, resolve),
                agent: agent.apply(&d.agent, resolve),
            }
        };
        let pt = &t.pipeline_tracing;
        LogPaths {
            message_tracking: t
                .message_tracking_log
                .switched()
                .apply(&d.message_tracking, resolve),
            message_tracking_subjects: t
                .message_tracking_log
                .subject_logging_enabled
                .unwrap_or(d.message_tracking_subjects),
            queue: t.queue_log.apply(&d.queue, resolve),
            pipeline_tracing: PipelineTracingPaths {
                enabled: pt.enabled,
                dir: pt
                    .path
                    .as_deref()
                    .map_or_else(|| d.pipeline_tracing.dir.clone(), resolve),
                sender_address: pt.sender_address.clone().unwrap_or_default(),
            },
            transport: service(
                &d.transport,
                [
                    &t.receive_protocol_log,
                    &t.send_protocol_log,
                    &t.routing_table_log,
                ],
                [&t.connectivity_log, &t.agent_log],
            ),
            frontend: service(
                &d.frontend,
                [
                    &f.receive_protocol_log,
                    &f.send_protocol_log,
                    &f.routing_table_log,
                ],
                [&f.connectivity_log, &f.agent_log],
            ),
            mailbox: service(
                &d.mailbox,
                [
                    &m.receive_protocol_log,
                    &m.send_protocol_log,
                    &m.routing_table_log,
                ],
                [&m.connectivity_log, &m.agent_log],
            ),
        }
    }

    /// Transport's IntraOrgConnectorProtocolLoggingLevel (also used by Mailbox
    /// Transport Submission's sends through the same implicit connector).
    pub fn transport_intra_org_logging(&self, org: &TransportSettings) -> LoggingLevel {
        self.transport_service
            .intra_org_connector_protocol_logging_level
            .unwrap_or(org.intra_org_connector_protocol_logging)
    }

    /// The Front End's IntraOrgConnectorProtocolLoggingLevel.
    pub fn frontend_intra_org_logging(&self) -> LoggingLevel {
        self.frontend_transport_service
            .intra_org_connector_protocol_logging_level
            .unwrap_or(self.frontend_protocol_logging)
    }

    /// MailboxDeliveryConnectorProtocolLoggingLevel.
    pub fn mailbox_delivery_connector_logging(&self, org: &TransportSettings) -> LoggingLevel {
        self.mailbox_transport_service
            .mailbox_delivery_connector_protocol_logging_level
            .unwrap_or(org.mailbox_delivery_connector_protocol_logging)
    }
}

impl Server {
    /// `address` as an IP. The validator rejects a file whose `address` is not one, so
    /// a loaded directory's servers always have it; UNSPECIFIED only for an entry that
    /// did not come through [`super::Directory::parse`].
    pub fn ip(&self) -> IpAddr {
        self.address
            .value()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// `bind` as an IP, when the file sets it (validated at load like `address`).
    pub fn bind_ip(&self) -> Option<IpAddr> {
        self.bind.as_ref().and_then(|b| b.value().copied())
    }

    /// Where the server's listeners bind: `bind`, else `address`.
    pub fn listen_ip(&self) -> IpAddr {
        self.bind_ip().unwrap_or_else(|| self.ip())
    }
}

/// `[servers.connector_limits.<listener>]`: Set-ReceiveConnector's limits for the
/// built-in connectors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinConnectorLimits {
    pub frontend: ConnectorLimits,
    pub client_frontend: ConnectorLimits,
    pub client_proxy: ConnectorLimits,
    pub outbound_proxy: ConnectorLimits,
    pub transport: ConnectorLimits,
    pub mailbox_delivery: ConnectorLimits,
}

/// Limits of one receive connector (reference §1.2); unset keys take the connector's
/// default (net::receive::Limits).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectorLimits {
    /// MaxInboundConnection.
    #[serde(deserialize_with = "de_opt_count")]
    pub max_inbound_connection: Option<usize>,
    /// MaxInboundConnectionPerSource (`"unlimited"` allowed).
    #[serde(deserialize_with = "de_opt_count")]
    pub max_inbound_connection_per_source: Option<usize>,
    /// MaxInboundConnectionPercentagePerSource (1-100).
    pub max_inbound_connection_percentage_per_source: Option<u32>,
    /// TarpitInterval (`"0s"` turns the tarpit off).
    #[serde(deserialize_with = "de_opt_duration")]
    pub tarpit_interval: Option<Duration>,
    /// Least content bytes per second during DATA/BDAT (a size such as `"1KB"`; 0 off).
    #[serde(deserialize_with = "de_opt_size")]
    pub min_data_rate: Option<u64>,
    /// The window the rate is measured over, the first one being the grace period.
    #[serde(deserialize_with = "de_opt_duration")]
    pub min_data_rate_interval: Option<Duration>,
}

fn max_inbound() -> usize {
    5000
}

fn verbose() -> LoggingLevel {
    LoggingLevel::Verbose
}

/// Every listener of a server (DESIGN §1), Exchange's ports by default.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    pub frontend: u16,
    pub client_frontend: u16,
    pub client_proxy: u16,
    pub outbound_proxy: u16,
    pub transport: u16,
    pub mailbox_delivery: u16,
    pub admin: u16,
}

impl Ports {
    /// Every port, in declaration order.
    pub fn all(&self) -> [u16; 7] {
        [
            self.frontend,
            self.client_frontend,
            self.client_proxy,
            self.outbound_proxy,
            self.transport,
            self.mailbox_delivery,
            self.admin,
        ]
    }

    /// These ports, each `0` (left to the system) replaced by the one in `bound`.
    pub fn or_bound(&self, bound: &Ports) -> Ports {
        let pick = |file: u16, bound: u16| if file == 0 { bound } else { file };
        Ports {
            frontend: pick(self.frontend, bound.frontend),
            client_frontend: pick(self.client_frontend, bound.client_frontend),
            client_proxy: pick(self.client_proxy, bound.client_proxy),
            outbound_proxy: pick(self.outbound_proxy, bound.outbound_proxy),
            transport: pick(self.transport, bound.transport),
            mailbox_delivery: pick(self.mailbox_delivery, bound.mailbox_delivery),
            admin: pick(self.admin, bound.admin),
        }
    }
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            frontend: 25,
            client_frontend: 587,
            client_proxy: 465,
            outbound_proxy: 717,
            transport: 2525,
            mailbox_delivery: 475,
            admin: 8025,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dag {
    pub name: String,
    pub servers: Vec<String>,
    /// How long the server holding a database's active copy may be unreachable before
    /// the next copy in activation preference takes over (Active Manager's failover;
    /// only for databases on PostgreSQL, whose copies are one set of data).
    #[serde(default = "default_failover_after", deserialize_with = "de_duration")]
    pub failover_after: Duration,
}

fn default_failover_after() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub name: String,
    /// Activation preference; the first is active at start.
    pub copies: Vec<String>,
    #[serde(default)]
    pub store: StoreSpec,
}

/// A mailbox database's `store`: where its items live (DESIGN §4). Read from the
/// file's text as it is deserialized; a text that names no backend is
/// [`StoreSpec::Unknown`], which the validator refuses, so a loaded directory has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum StoreSpec {
    /// `"sqlite"`: the embedded SQLite file, one per copy on its server.
    #[default]
    Sqlite,
    /// A `postgres://` or `postgresql://` URL: one PostgreSQL database every copy's
    /// server reaches.
    Postgres(String),
    /// Anything else, as written.
    Unknown(String),
}

impl From<String> for StoreSpec {
    fn from(text: String) -> Self {
        if text == "sqlite" {
            StoreSpec::Sqlite
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            StoreSpec::Postgres(text)
        } else {
            StoreSpec::Unknown(text)
        }
    }
}

impl From<&str> for StoreSpec {
    fn from(text: &str) -> Self {
        StoreSpec::from(text.to_owned())
    }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSpec::Sqlite => f.write_str("sqlite"),
            StoreSpec::Postgres(text) | StoreSpec::Unknown(text) => f.write_str(text),
        }
    }
}

/// A value the file writes as text (an IP address), parsed once as it is read: the
/// text stays for messages, the value is what the rest of the crate uses. A text that
/// does not parse has no value; the validator refuses it, so in a loaded directory
/// every value is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<T> {
    text: String,
    value: Option<T>,
}

impl<T: FromStr> Parsed<T> {
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let value = text.parse().ok();
        Parsed { text, value }
    }
}

impl<T> Parsed<T> {
    /// As written in the file.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parsed value; None only before validation, for a text that does not parse.
    pub fn value(&self) -> Option<&T> {
        self.value.as_ref()
    }
}

impl<'de, T: FromStr> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Parsed::new)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    pub address: String,
    pub database: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub address: String,
    pub members: Vec<String>,
    #[serde(default)]
    pub expansion_server: Option<String>,
    /// RequireSenderAuthenticationEnabled (Exchange's default: true): anonymous
    /// senders get `550 5.7.133` at RCPT on Front End and from the categorizer.
    #[serde(default = "yes")]
    pub require_sender_authentication: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressSpace {
    pub domain: String,
    #[serde(default = "one")]
    pub cost: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendConnector {
    pub name: String,
    pub address_spaces: Vec<AddressSpace>,
    #[serde(default)]
    pub source_servers: Vec<String>,
    #[serde(default)]
    pub smart_hosts: Vec<String>,
    /// Port for smart hosts and MX hosts (Exchange's `Port`, default 25).
    #[serde(default = "smtp_port")]
    pub port: u16,
    /// Credentials for smart hosts (SmartHostAuthMechanism BasicAuth), sent only inside
    /// TLS.
    #[serde(default)]
    pub smart_host_auth: Option<SmartHostAuth>,
    #[serde(default)]
    pub front_end_proxy: bool,
    #[serde(default = "opportunistic")]
    pub tls: String,
    /// Exchange's TlsAuthLevel: how the peer's certificate is checked after STARTTLS.
    /// `encryption_only` checks nothing; `certificate_validation` needs a chain to the
    /// system roots (or to `tls_ca_file`), any name; `domain_validation` also needs the
    /// certificate to match `tls_domain` (or the host's name). With a validation level,
    /// a peer that fails it gets nothing (Exchange: TlsAuthLevel implies RequireTLS).
    /// Unset: `certificate_validation` for a connector with `smart_host_auth`
    /// (credentials only to a validated peer, DESIGN §7; files written before the key
    /// existed keep loading and become safe), `encryption_only` otherwise.
    #[serde(default)]
    pub tls_auth_level: Option<String>,
    /// Exchange's TlsDomain: the name the certificate must match under
    /// `domain_validation`; None: the smart host's or MX host's name.
    #[serde(default)]
    pub tls_domain: Option<String>,
    /// A PEM CA bundle trusted instead of the system roots (relative to the
    /// organisation file's folder).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// MaxMessageSize: a message larger than this is not sent through the connector
    /// (reference §4.4); None: unlimited.
    #[serde(default, deserialize_with = "de_opt_size")]
    pub max_message_size: Option<u64>,
    #[serde(default)]
    pub protocol_logging: LoggingLevel,
}

fn smtp_port() -> u16 {
    25
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmartHostAuth {
    pub username: String,
    pub password: String,
}

fn opportunistic() -> String {
    "opportunistic".into()
}

/// A send connector's [`SendConnector::tls_auth_level`], parsed (the file's value was
/// checked at load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsAuthLevel {
    EncryptionOnly,
    CertificateValidation,
    DomainValidation,
}

impl TlsAuthLevel {
    pub fn parse(s: &str) -> Option<TlsAuthLevel> {
        match s {
            "encryption_only" => Some(TlsAuthLevel::EncryptionOnly),
            "certificate_validation" => Some(TlsAuthLevel::CertificateValidation),
            "domain_validation" => Some(TlsAuthLevel::DomainValidation),
            _ => None,
        }
    }
}

impl SendConnector {
    /// `tls = "required"`: no STARTTLS, no delivery (the validator accepts only
    /// `"required"` and `"opportunistic"`).
    pub fn tls_required(&self) -> bool {
        self.tls == "required"
    }

    /// The level in force: the file's value (checked at load), else the default that
    /// [`SendConnector::tls_auth_level`]'s field documents.
    pub fn tls_auth_level(&self) -> TlsAuthLevel {
        match self.tls_auth_level.as_deref().and_then(TlsAuthLevel::parse) {
            Some(level) => level,
            None if self.smart_host_auth.is_some() => TlsAuthLevel::CertificateValidation,
            None => TlsAuthLevel::EncryptionOnly,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
/// As written; the rest of the crate sees [`super::ReceiveConnector`], made from it
/// at load.
pub struct ReceiveConnectorEntry {
    pub name: String,
    pub server: String,
    /// `frontend` or `transport`.
    pub service: String,
    pub bind: String,
    #[serde(default)]
    pub remote_ranges: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub protocol_logging: LoggingLevel,
    #[serde(default)]
    pub tls: Option<String>,
    #[serde(default, deserialize_with = "de_opt_count")]
    pub max_inbound_connection: Option<usize>,
    #[serde(default, deserialize_with = "de_opt_count")]
    pub max_inbound_connection_per_source: Option<usize>,
    #[serde(default)]
    pub max_inbound_connection_percentage_per_source: Option<u32>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub tarpit_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_size")]
    pub min_data_rate: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub min_data_rate_interval: Option<Duration>,
    /// Whether anonymous senders on this connector get success notices
    /// (`NOTIFY=SUCCESS`); with false the request is dropped at RCPT, so a forged
    /// sender cannot turn the server into a reflector. Failure and delay notices are
    /// not affected.
    #[serde(default = "yes")]
    pub success_dsn_for_anonymous: bool,
}

impl ReceiveConnectorEntry {
    /// The connector's limit keys, as for a built-in connector.
    pub fn limits(&self) -> ConnectorLimits {
        ConnectorLimits {
            max_inbound_connection: self.max_inbound_connection,
            max_inbound_connection_per_source: self.max_inbound_connection_per_source,
            max_inbound_connection_percentage_per_source: self
                .max_inbound_connection_percentage_per_source,
            tarpit_interval: self.tarpit_interval,
            min_data_rate: self.min_data_rate,
            min_data_rate_interval: self.min_data_rate_interval,
        }
    }
}

/// A connection count, or `"unlimited"` (Exchange's word), which is `usize::MAX`.
fn de_opt_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Count {
        Int(usize),
        Text(String),
    }
    match Count::deserialize(d)? {
        Count::Int(n) => Ok(Some(n)),
        Count::Text(s) if s.eq_ignore_ascii_case("unlimited") => Ok(Some(usize::MAX)),
        Count::Text(s) => Err(serde::de::Error::custom(format!(
            "invalid count {s:?}: expected a number or \"unlimited\""
        ))),
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// Sizes like `10MB`, `36MB`, `512KB` or a plain byte count. Exchange's MB is 1024² bytes
/// (its limits read "10 MB (10,485,760 bytes)"), so units here are binary.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "KIB" => 1024,
        "MB" | "MIB" => 1024 * 1024,
        "GB" | "GIB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Int(u64),
    Text(String),
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match SizeValue::deserialize(d)? {
        SizeValue::Int(n) => Ok(n),
        SizeValue::Text(s) => parse_size(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("invalid size {s:?}: expected e.g. \"10MB\""))
        }),
    }
}

fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?} ({e}): expected e.g. \"5m\""
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::{Server, parse_size};
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    fn server(tables: &str) -> Server {
        toml::from_str(&format!(
            "name = \"S\"\nfqdn = \"s.c.test\"\naddress = \"127.0.0.1\"\ndata_dir = \"d\"\n{tables}"
        ))
        .unwrap()
    }

    /// The queue log, pipeline tracing and the switches: Exchange's defaults, and
    /// what the `[servers.transport_service]` tables set.
    #[test]
    fn queue_log_pipeline_tracing_and_switches() {
        let resolve = |p: &str| Path::new("/org").join(p);
        let d = server("").log_paths(Path::new("/data"), &resolve);
        assert_eq!(d.queue.dir, PathBuf::from("/data/Logs/Hub/QueueViewer"));
        assert_eq!(d.queue.retention.max_age, Duration::from_secs(7 * 86_400));
        assert!(d.queue.enabled && d.message_tracking.enabled && d.message_tracking_subjects);
        assert!(d.transport.connectivity.enabled && d.frontend.agent.enabled);
        assert!(!d.pipeline_tracing.enabled);
        assert_eq!(
            d.pipeline_tracing.dir,
            PathBuf::from("/data/Logs/Hub/PipelineTracing")
        );
        let set = server(
            "[transport_service]\n\
             message_tracking_log = { enabled = false, subject_logging_enabled = false }\n\
             connectivity_log = { enabled = false, max_age = \"1d\" }\n\
             queue_log = { path = \"q\", max_directory_size = \"1MB\" }\n\
             pipeline_tracing = { enabled = true, sender_address = \"t@c.test\" }\n\
             [mailbox_transport_service]\nconnectivity_log.enabled = false\n",
        )
        .log_paths(Path::new("/data"), &resolve);
        assert!(!set.message_tracking.enabled && !set.message_tracking_subjects);
        assert!(!set.transport.connectivity.enabled && !set.mailbox.connectivity.enabled);
        assert!(set.frontend.connectivity.enabled && set.transport.agent.enabled);
        assert_eq!(
            set.transport.connectivity.retention.max_age,
            Duration::from_secs(86_400)
        );
        assert_eq!(set.queue.dir, PathBuf::from("/org/q"));
        assert_eq!(set.queue.retention.max_directory_size, 1 << 20);
        assert!(set.queue.enabled);
        assert!(set.pipeline_tracing.enabled);
        assert_eq!(set.pipeline_tracing.sender_address, "t@c.test");
    }

    #[test]
    fn sizes_are_binary() {
        assert_eq!(parse_size("10MB"), Some(10 * 1024 * 1024));
        assert_eq!(parse_size("512 KB"), Some(512 * 1024));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("5XB"), None);
    }
}

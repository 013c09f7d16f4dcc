//! Custom receive connectors (`[[receive_connectors]]`) as typed values: the file's
//! strings (service, bind address, remote ranges, TLS mode, permissions) are checked
//! by the validator in directory/mod.rs and turned into these once, at load, so no
//! caller parses them again. Must not import net, context or a service
//! (scripts/check-arrows).

use std::fmt;
use std::net::SocketAddr;

use ipnet::IpNet;

use super::config::{ConnectorLimits, ReceiveConnectorEntry};
use super::parse_ip_range;
use crate::logs::LoggingLevel;

/// Which service a custom connector hands its mail to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveService {
    /// Front End Transport: the sender is checked like on :25/:587.
    Frontend,
    /// Straight into Transport, anonymously (so `remote_ranges` is required).
    Transport,
}

impl fmt::Display for ReceiveService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReceiveService::Frontend => "frontend",
            ReceiveService::Transport => "transport",
        })
    }
}

/// How a custom connector offers TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveTls {
    /// STARTTLS after the greeting (the default).
    StartTls,
    /// TLS from the first byte (like :465).
    Implicit,
}

/// One `[[receive_connectors]]` entry, validated.
#[derive(Debug, Clone)]
pub struct ReceiveConnector {
    pub name: String,
    pub server: String,
    pub service: ReceiveService,
    pub bind: SocketAddr,
    pub remote_ranges: Vec<IpNet>,
    /// The permissions as written (for the start-up summary).
    pub permissions: Vec<String>,
    /// `relay` is among the permissions: anonymous relay for `remote_ranges`.
    pub relay: bool,
    /// `users` is among the permissions: authenticated submission.
    pub users: bool,
    pub protocol_logging: LoggingLevel,
    pub tls: ReceiveTls,
    /// The connector's limit keys, as for a built-in connector.
    pub limits: ConnectorLimits,
    /// See [`ReceiveConnectorEntry::success_dsn_for_anonymous`].
    pub success_dsn_for_anonymous: bool,
}

impl ReceiveConnector {
    /// The typed connector of an entry the validator accepted (None if it did not).
    pub(super) fn from_entry(e: &ReceiveConnectorEntry) -> Option<ReceiveConnector> {
        let has = |name: &str| e.permissions.iter().any(|p| p.eq_ignore_ascii_case(name));
        Some(ReceiveConnector {
            name: e.name.clone(),
            server: e.server.clone(),
            service: match e.service.as_str() {
                "frontend" => ReceiveService::Frontend,
                "transport" => ReceiveService::Transport,
                _ => return None,
            },
            bind: e.bind.parse().ok()?,
            remote_ranges: e
                .remote_ranges
                .iter()
                .map(|r| parse_ip_range(r))
                .collect::<Option<_>>()?,
            permissions: e.permissions.clone(),
            relay: has("relay"),
            users: has("users"),
            protocol_logging: e.protocol_logging,
            tls: match e.tls.as_deref() {
                None | Some("starttls") => ReceiveTls::StartTls,
                Some("implicit") => ReceiveTls::Implicit,
                Some(_) => return None,
            },
            limits: e.limits(),
            success_dsn_for_anonymous: e.success_dsn_for_anonymous,
        })
    }
}

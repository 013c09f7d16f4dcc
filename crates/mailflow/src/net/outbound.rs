//! Connecting through a send connector to the internet: smart hosts or the recipient
//! domain's MX hosts, STARTTLS (`tls = "opportunistic" | "required"`) with the peer's
//! certificate checked as `tls_auth_level` says (Exchange's TlsAuthLevel), and AUTH to
//! a smart host when the connector has credentials, only once that check passed.
//! Shared by Transport's send connectors and the Front End's :717 Outbound Proxy: it
//! takes the destination and what the local server brings ([`Local`]), never a queue's
//! next hop or the server context (net/ imports no service: not context, transport,
//! frontend or mailbox).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mailflow_smtp::{Enhanced, Reply, replies};

use super::dns::{Dns, DnsFailure};
use crate::directory::{SendConnector, TlsAuthLevel};
use crate::logs::LoggingLevel;
use crate::logs::connectivity::{ConnectivityLog, ConnectivitySession};
use crate::logs::protocol::{ProtocolLog, ProtocolSession};
use crate::net::client::{ClientError, SmtpClient};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Exchange's send connector ConnectionInactivityTimeOut is 10 minutes.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// Why no connection could be made, as the reply that says so: built once here, and
/// printed as it is by every caller (the queue's LastError, the NDR, the :717 Outbound
/// Proxy's answer to RCPT), so no caller formats or trims a status again. A 4xx reply:
/// retry later (the queue goes to Retry); a 5xx reply: the destination cannot exist,
/// its recipients fail with an NDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectFailure(pub Reply);

impl ConnectFailure {
    /// `451 <enhanced> <text>`: the next hop may answer later.
    pub fn transient(enhanced: Enhanced, text: impl Into<String>) -> ConnectFailure {
        ConnectFailure(Reply::new(451, enhanced, text))
    }

    /// `550 5.4.4 <text>`: the destination does not exist (NXDOMAIN, null MX).
    pub fn permanent(text: impl Into<String>) -> ConnectFailure {
        ConnectFailure(Reply::new(550, Enhanced(5, 4, 4), text))
    }
}

/// Where a send connector's session goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'a> {
    /// The connector's smart hosts.
    SmartHosts,
    /// The MX hosts of the domain (its own A/AAAA without MX).
    Domain(&'a str),
}

/// What the local server brings to an outbound session.
pub struct Local<'a> {
    /// The name said in EHLO.
    pub fqdn: &'a str,
    /// The server's address, for the protocol log.
    pub ip: IpAddr,
    /// The sending service's send protocol log (written when the connector logs
    /// verbosely): Transport's, or the Front End's for the Outbound Proxy.
    pub log: &'a ProtocolLog,
    /// The sending service's connectivity log (every connection, reference §8.3).
    pub connectivity: &'a ConnectivityLog,
    /// The connector's `tls_ca_file`, resolved against the organisation file's folder.
    pub ca_file: Option<PathBuf>,
}

impl<'a> Local<'a> {
    /// What this server brings to an outbound session through `connector`, logged to
    /// the calling service's `log`.
    pub fn new(
        local: &'a crate::directory::live::LiveDirectory,
        connector: &crate::directory::SendConnector,
        log: &'a ProtocolLog,
        connectivity: &'a ConnectivityLog,
    ) -> Local<'a> {
        Local {
            fqdn: local.fqdn(),
            ip: local.ip(),
            log,
            connectivity,
            ca_file: connector
                .tls_ca_file
                .as_deref()
                .map(|f| local.dir().path(f)),
        }
    }
}

/// A `host`, `host:port`, `[ip]` or `[ip]:port` smart host with the connector's port
/// as default.
fn parse_smart_host(s: &str, default_port: u16) -> (String, u16) {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[')
        && let Some((host, after)) = rest.split_once(']')
    {
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        return (host.to_string(), port);
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            (host.to_string(), port.parse().unwrap_or(default_port))
        }
        _ => (s.to_string(), default_port),
    }
}

/// Connects to the first host of the next hop that accepts a session. The attempt is
/// one session of the connectivity log: the DNS answers, each host tried, the
/// connection and TLS, then (carried by the client) the messages and the end.
pub async fn connect(
    local: &Local<'_>,
    dns: &Dns,
    connector: &SendConnector,
    destination: Destination<'_>,
) -> Result<(String, SmtpClient), ConnectFailure> {
    let name = match destination {
        Destination::SmartHosts => connector.smart_hosts.join(";"),
        Destination::Domain(domain) => domain.to_string(),
    };
    let mut connectivity = local
        .connectivity
        .session(&name, &format!("Send connector {}", connector.name));
    match connect_logged(local, dns, connector, destination, &mut connectivity).await {
        Ok((host, mut client)) => {
            client.attach_connectivity(connectivity);
            Ok((host, client))
        }
        Err(e) => {
            connectivity.failed(&e.0.one_line());
            Err(e)
        }
    }
}

async fn connect_logged(
    local: &Local<'_>,
    dns: &Dns,
    connector: &SendConnector,
    destination: Destination<'_>,
    connectivity: &mut ConnectivitySession,
) -> Result<(String, SmtpClient), ConnectFailure> {
    let hosts: Vec<(String, u16)> = match destination {
        Destination::SmartHosts => connector
            .smart_hosts
            .iter()
            .map(|h| parse_smart_host(h, connector.port))
            .collect(),
        Destination::Domain(domain) => match dns.mail_hosts(domain).await {
            Ok(hosts) => {
                connectivity.info(&format!("DNS: MX {domain}: {}", hosts.join(" ")));
                hosts.into_iter().map(|h| (h, connector.port)).collect()
            }
            Err(DnsFailure::Permanent(e)) => {
                connectivity.info(&format!("DNS: MX {domain}: {e}"));
                return Err(ConnectFailure::permanent(e));
            }
            Err(DnsFailure::Transient(e)) => {
                connectivity.info(&format!("DNS: MX {domain}: {e}"));
                return Err(ConnectFailure::transient(Enhanced(4, 4, 0), e));
            }
        },
    };
    let mut errors = Vec::new();
    // A host whose certificate was refused: the reason that outranks the others, as
    // it needs the operator (Exchange logs it as 4.4.317).
    let mut refused = None;
    for (host, port) in hosts {
        let addrs = match dns.addresses(&host).await {
            Ok(a) => a,
            Err(DnsFailure::Permanent(e) | DnsFailure::Transient(e)) => {
                connectivity.info(&format!("DNS: A/AAAA {host}: {e}"));
                errors.push(e);
                continue;
            }
        };
        let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
        connectivity.info(&format!("DNS: A/AAAA {host}: {}", list.join(" ")));
        for ip in addrs {
            let addr = SocketAddr::new(ip, port);
            match session(local, connector, &host, addr).await {
                Ok(client) => {
                    connectivity.info(&format!(
                        "Established connection to {host} [{addr}] from {}",
                        client.local
                    ));
                    if client.is_tls() {
                        connectivity.info(&format!("TLS negotiated with {host}"));
                    }
                    return Ok((host, client));
                }
                Err(SessionFailure::Certificate(reason)) => {
                    connectivity.info(&format!("Failed connection to {host} [{addr}]: {reason}"));
                    errors.push(format!("{host} [{addr}]: {reason}"));
                    refused.get_or_insert_with(|| format!("{host}: {reason}"));
                }
                Err(SessionFailure::Other(e)) => {
                    connectivity.info(&format!("Failed connection to {host} [{addr}]: {e}"));
                    errors.push(format!("{host} [{addr}]: {e}"));
                }
            }
        }
    }
    if let Some(why) = refused {
        return Err(ConnectFailure(replies::certificate_validation_failed(&why)));
    }
    Err(ConnectFailure::transient(
        Enhanced(4, 4, 1),
        format!("Connection failed: {}", errors.join("; ")),
    ))
}

/// Why one host gave no session.
enum SessionFailure {
    /// Its certificate failed the connector's `tls_auth_level`: the reason.
    Certificate(String),
    Other(String),
}

impl From<String> for SessionFailure {
    fn from(s: String) -> Self {
        SessionFailure::Other(s)
    }
}

async fn session(
    local: &Local<'_>,
    connector: &SendConnector,
    host: &str,
    addr: SocketAddr,
) -> Result<SmtpClient, SessionFailure> {
    let log = if connector.protocol_logging == LoggingLevel::Verbose {
        local
            .log
            .session(&connector.name, SocketAddr::new(local.ip, 0), addr)
    } else {
        ProtocolSession::disabled()
    };
    let level = connector.tls_auth_level();
    // Built before connecting: a CA file that became unreadable since the load is
    // the operator's to fix, and no peer should see a session for it.
    let validating = match level {
        TlsAuthLevel::EncryptionOnly => None,
        level => {
            let ca = local.ca_file.as_deref();
            let check_name = level == TlsAuthLevel::DomainValidation;
            Some(
                crate::net::tls::validating_client(ca, check_name)
                    .map_err(SessionFailure::Certificate)?,
            )
        }
    };
    let mut client = SmtpClient::connect(addr, local.fqdn, CONNECT_TIMEOUT, log)
        .await
        .map_err(|e| e.to_string())?;
    client.timeout_for_commands(COMMAND_TIMEOUT);
    // BDAT where the server offers CHUNKING, as Exchange's send connectors do.
    client.use_chunking(true);
    if client.has_extension("STARTTLS") {
        match validating {
            None => client
                .starttls(local.fqdn, host)
                .await
                .map_err(|e| format!("STARTTLS failed: {e}"))?,
            Some(check) => {
                let name = connector.tls_domain.as_deref().unwrap_or(host);
                match client.starttls_validated(local.fqdn, name, check).await {
                    Ok(()) => {}
                    Err(ClientError::CertificateRefused(why)) => {
                        return Err(SessionFailure::Certificate(why));
                    }
                    Err(e) => return Err(format!("STARTTLS failed: {e}").into()),
                }
            }
        }
    } else if connector.tls_required() || level != TlsAuthLevel::EncryptionOnly {
        // Exchange: a TlsAuthLevel implies RequireTLS.
        client.quit().await;
        return Err(format!(
            "send connector {} requires TLS and {host} does not offer STARTTLS",
            connector.name
        )
        .into());
    }
    if let Some(auth) = &connector.smart_host_auth {
        // Credentials go only to a peer whose certificate was validated (the load
        // refuses credentials with encryption_only); never in clear text.
        if !client.is_tls() || level == TlsAuthLevel::EncryptionOnly {
            client.quit().await;
            return Err(
                format!("{host} is not a validated TLS peer; credentials are not sent").into(),
            );
        }
        client
            .authenticate(&auth.username, &auth.password)
            .await
            .map_err(|e| format!("AUTH failed: {e}"))?;
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::parse_smart_host;

    #[test]
    fn smart_host_forms() {
        assert_eq!(
            parse_smart_host("relay.x.test", 25),
            ("relay.x.test".into(), 25)
        );
        assert_eq!(
            parse_smart_host("relay.x.test:2525", 25),
            ("relay.x.test".into(), 2525)
        );
        assert_eq!(
            parse_smart_host("[127.0.0.1]:2600", 25),
            ("127.0.0.1".into(), 2600)
        );
        assert_eq!(parse_smart_host("[::1]", 587), ("::1".into(), 587));
    }
}

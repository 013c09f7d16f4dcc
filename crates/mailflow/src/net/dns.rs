//! DNS for send connectors without smart hosts: MX lookup in preference order, the
//! implicit MX (the domain's own A/AAAA) when there is none, and null MX (RFC 7505).

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

/// Why a lookup gave no host to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsFailure {
    /// The domain does not exist or accepts no mail: an NDR (reference §11.2, 5.4.4).
    Permanent(String),
    /// A server failure or timeout: retry later.
    Transient(String),
}

pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// The system's resolvers, or `servers` (`ip` or `ip:port`; Exchange's
    /// ExternalDNSServers) when given.
    pub fn new(servers: &[String]) -> anyhow::Result<Dns> {
        let provider = TokioRuntimeProvider::default();
        let builder = if servers.is_empty() {
            TokioResolver::builder(provider)?
        } else {
            let mut name_servers = Vec::new();
            for s in servers {
                let addr: SocketAddr = s
                    .parse()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| anyhow::anyhow!("DNS server {s:?} is not ip or ip:port"))?;
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                name_servers.push(NameServerConfig::new(addr.ip(), true, vec![udp, tcp]));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], name_servers),
                provider,
            )
        };
        Ok(Dns {
            resolver: builder.build()?,
        })
    }

    /// Mail hosts of a domain, most preferred first (RFC 5321 §5.1).
    pub async fn mail_hosts(&self, domain: &str) -> Result<Vec<String>, DnsFailure> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut mx: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                // RFC 7505: a single MX of "." means the domain accepts no mail.
                if mx.len() == 1 && (mx[0].1 == "." || mx[0].1.is_empty()) {
                    return Err(DnsFailure::Permanent(format!(
                        "SMTPSEND.DNS.NullMX; {domain} does not accept mail (null MX)"
                    )));
                }
                if mx.is_empty() {
                    return Ok(vec![domain.to_string()]);
                }
                mx.sort_by_key(|(pref, _)| *pref);
                Ok(mx
                    .into_iter()
                    .map(|(_, host)| host.trim_end_matches('.').to_string())
                    .collect())
            }
            Err(e) if e.is_nx_domain() => Err(DnsFailure::Permanent(format!(
                "SMTPSEND.DNS.NonExistentDomain; nonexistent domain {domain}"
            ))),
            // No MX records: the domain itself is the implicit MX (RFC 5321 §5.1).
            Err(e) if e.is_no_records_found() => Ok(vec![domain.to_string()]),
            Err(e) => Err(DnsFailure::Transient(format!(
                "DNS lookup of MX {domain} failed: {e}"
            ))),
        }
    }

    /// Addresses of a host (an IP literal is returned as is).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(ips) => Ok(ips.iter().collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
                Err(DnsFailure::Transient(format!("host {host} has no address")))
            }
            Err(e) => Err(DnsFailure::Transient(format!(
                "DNS lookup of {host} failed: {e}"
            ))),
        }
    }
}

//! Routing resolution: the next hop for a resolved recipient (reference §4). This
//! release routes within one organisation of any size to the server holding the active
//! copy of a mailbox's database, and external recipients to the send connector whose
//! address space matches best (reference §4.4); least-cost routing between sites builds
//! on this.

use crate::context::ServerContext;
use crate::directory::SendConnector;
use crate::transport::queue::{DeliveryType, NextHop};

/// The next hop for a mailbox in `database`.
pub fn mailbox_next_hop(ctx: &ServerContext, database: &str) -> NextHop {
    let target = ctx
        .active
        .active_server(database)
        .and_then(|s| ctx.dir.server(&s).cloned())
        .and_then(|s| ServerContext::mailbox_delivery_endpoint(&s));
    match target {
        Some(target) => NextHop {
            delivery_type: DeliveryType::SmtpDeliveryToMailbox,
            domain: database.to_string(),
            connector: None,
            target: Some(target),
        },
        None => NextHop::unreachable(),
    }
}

/// How well an address space matches a domain: `None` for no match; higher is more
/// specific (`a.b.c` > `*.b.c` > `*`).
fn specificity(space: &str, domain: &str) -> Option<usize> {
    let space = space.to_ascii_lowercase();
    let domain = domain.to_ascii_lowercase();
    if space == "*" {
        return Some(0);
    }
    if let Some(parent) = space.strip_prefix("*.") {
        if domain == parent || domain.ends_with(&format!(".{parent}")) {
            return Some(2 * parent.split('.').count());
        }
        return None;
    }
    (space == domain).then(|| 2 * space.split('.').count() + 1)
}

/// Send connector selection (reference §4.4): most specific address space, then lowest
/// cost, then name.
pub fn select_connector<'a>(
    connectors: impl Iterator<Item = &'a SendConnector>,
    domain: &str,
) -> Option<&'a SendConnector> {
    connectors
        .filter_map(|c| {
            c.address_spaces
                .iter()
                .filter_map(|s| specificity(&s.domain, domain).map(|spec| (spec, s.cost)))
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                .map(|(spec, cost)| (spec, cost, c))
        })
        .max_by(|a, b| {
            a.0.cmp(&b.0)
                .then(b.1.cmp(&a.1))
                .then(b.2.name.cmp(&a.2.name))
        })
        .map(|(_, _, c)| c)
}

/// The next hop for an external recipient domain; Unreachable when no connector matches
/// (reference §14.6: not an NDR).
pub fn external_next_hop(ctx: &ServerContext, domain: &str) -> NextHop {
    match select_connector(ctx.dir.send_connectors(), domain) {
        Some(c) => NextHop {
            delivery_type: if c.smart_hosts.is_empty() {
                DeliveryType::DnsConnectorDelivery
            } else {
                DeliveryType::SmartHostConnectorDelivery
            },
            domain: if c.smart_hosts.is_empty() {
                domain.to_ascii_lowercase()
            } else {
                c.smart_hosts.join(",")
            },
            connector: Some(c.name.clone()),
            target: None,
        },
        None => NextHop::unreachable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::AddressSpace;

    fn conn(name: &str, spaces: &[(&str, u32)]) -> SendConnector {
        SendConnector {
            name: name.into(),
            address_spaces: spaces
                .iter()
                .map(|(d, c)| AddressSpace {
                    domain: d.to_string(),
                    cost: *c,
                })
                .collect(),
            source_servers: vec![],
            smart_hosts: vec![],
            front_end_proxy: false,
            tls: "opportunistic".into(),
            max_message_size: None,
            protocol_logging: Default::default(),
        }
    }

    #[test]
    fn most_specific_then_cheapest_then_name() {
        let cs = [
            conn("Any", &[("*", 1)]),
            conn("Sub", &[("*.contoso.test", 5)]),
            conn("Exact", &[("mkt.contoso.test", 9)]),
            conn("B", &[("*", 1)]),
        ];
        let pick = |d| select_connector(cs.iter(), d).map(|c| c.name.as_str());
        assert_eq!(pick("mkt.contoso.test"), Some("Exact"));
        assert_eq!(pick("x.contoso.test"), Some("Sub"));
        assert_eq!(pick("contoso.test"), Some("Sub"));
        assert_eq!(pick("fabrikam.test"), Some("Any"));
        assert_eq!(
            select_connector([conn("X", &[("contoso.test", 1)])].iter(), "fabrikam.test")
                .map(|c| c.name.clone()),
            None
        );
    }
}

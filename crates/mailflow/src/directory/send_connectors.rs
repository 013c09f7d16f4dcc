//! Send connector selection (reference §4.4): which of the organisation's send
//! connectors takes a message to a domain. A lookup on the directory's model, shared by
//! Transport's routing and the Front End's :717 Outbound Proxy; it imports no service
//! (not transport, frontend, mailbox or cli).

use super::SendConnector;

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

/// Why no send connector takes a message to a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoConnector {
    /// No address space matches the domain: the recipient waits in the Unreachable
    /// queue (reference §4.4, §14.6).
    NoAddressSpace,
    /// Connectors match, but the message exceeds the MaxMessageSize of every one of
    /// them: an NDR 5.3.4 (reference §4.4, §11.2).
    TooBig,
}

/// Send connector selection (reference §4.4): connectors whose MaxMessageSize is below
/// the message's `size` are removed first, then the most specific address space wins,
/// then the lowest cost, then the name.
pub fn select_connector<'a>(
    connectors: impl Iterator<Item = &'a SendConnector>,
    domain: &str,
    size: u64,
) -> Result<&'a SendConnector, NoConnector> {
    let mut matched = false;
    connectors
        .filter_map(|c| {
            c.address_spaces
                .iter()
                .filter_map(|s| specificity(&s.domain, domain).map(|spec| (spec, s.cost)))
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                .map(|(spec, cost)| (spec, cost, c))
        })
        .inspect(|_| matched = true)
        .filter(|(_, _, c)| c.max_message_size.is_none_or(|limit| size <= limit))
        .max_by(|a, b| {
            a.0.cmp(&b.0)
                .then(b.1.cmp(&a.1))
                .then(b.2.name.cmp(&a.2.name))
        })
        .map(|(_, _, c)| c)
        .ok_or(if matched {
            NoConnector::TooBig
        } else {
            NoConnector::NoAddressSpace
        })
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
            port: 25,
            smart_host_auth: None,
            front_end_proxy: false,
            tls: "opportunistic".into(),
            tls_auth_level: None,
            tls_domain: None,
            tls_ca_file: None,
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
        let pick = |d| {
            select_connector(cs.iter(), d, 0)
                .ok()
                .map(|c| c.name.as_str())
        };
        assert_eq!(pick("mkt.contoso.test"), Some("Exact"));
        assert_eq!(pick("x.contoso.test"), Some("Sub"));
        assert_eq!(pick("contoso.test"), Some("Sub"));
        assert_eq!(pick("fabrikam.test"), Some("Any"));
        assert_eq!(
            select_connector(
                [conn("X", &[("contoso.test", 1)])].iter(),
                "fabrikam.test",
                0
            )
            .map(|c| c.name.clone()),
            Err(NoConnector::NoAddressSpace)
        );
    }

    #[test]
    fn a_connector_too_small_for_the_message_is_not_a_candidate() {
        let mut small = conn("Exact small", &[("fabrikam.test", 1)]);
        small.max_message_size = Some(1024);
        let mut tiny = conn("Any tiny", &[("*", 1)]);
        tiny.max_message_size = Some(10);
        let big = conn("Any", &[("*", 5)]);
        let pick = |cs: &[SendConnector], size| {
            select_connector(cs.iter(), "fabrikam.test", size).map(|c| c.name.clone())
        };
        let all = [small.clone(), tiny.clone(), big];
        // Reference §4.4: the size filter comes before specificity.
        assert_eq!(pick(&all, 1024), Ok("Exact small".into()));
        assert_eq!(pick(&all, 1025), Ok("Any".into()));
        // Every matching connector too small: an NDR, not the Unreachable queue.
        assert_eq!(pick(&[small, tiny], 5000), Err(NoConnector::TooBig));
    }
}

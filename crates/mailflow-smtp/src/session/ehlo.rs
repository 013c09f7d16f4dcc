//! HELO and EHLO: the check of the client's name and the greeting with the
//! extensions this session offers. Imports only its parent and the reply types.

use crate::reply::Reply;

use super::{Event, Session, Transaction, r};

impl Session {
    pub(super) fn hello(&mut self, domain: String, extended: bool) -> Option<Event> {
        if !is_hello_argument(&domain) {
            // The name goes into Received: headers and logs: control characters or
            // anything else that is not a name must never get that far.
            return self.error(invalid_domain_reply());
        }
        self.tx = Transaction::default();
        self.helo = Some(domain.clone());
        let host = &self.config.hostname;
        let client = if self.config.client_ip.is_empty() {
            &domain
        } else {
            &self.config.client_ip
        };
        if !extended {
            self.send(Reply::plain(250, format!("{host} Hello [{client}]")));
        } else {
            let c = &self.config;
            let mut lines = vec![
                format!("{host} Hello [{client}]"),
                format!("SIZE {}", c.max_message_size),
                "PIPELINING".into(),
            ];
            if c.dsn {
                lines.push("DSN".into());
            }
            lines.push("ENHANCEDSTATUSCODES".into());
            if c.starttls && !self.tls {
                lines.push("STARTTLS".into());
            }
            if !c.auth_mechanisms.is_empty() && (self.tls || !c.auth_requires_tls) {
                lines.push(format!("AUTH {}", c.auth_mechanisms.join(" ")));
            }
            lines.push("8BITMIME".into());
            if c.chunking {
                lines.push("CHUNKING".into());
            }
            if c.smtputf8 {
                lines.push("SMTPUTF8".into());
            }
            self.send(Reply::multiline(250, lines));
        }
        Some(Event::Hello { domain, extended })
    }
}

/// `501 5.5.4 Invalid domain name`, Exchange's answer to a HELO/EHLO argument that is
/// neither a domain nor an address literal.
pub fn invalid_domain_reply() -> Reply {
    r(501, (5, 5, 4), "Invalid domain name")
}

/// RFC 5321 §4.1.1.1: `Domain / address-literal`. Labels are letters, digits and
/// hyphens; underscores and UTF-8 (RFC 6531) are tolerated, as real clients send
/// them (Windows machine names). An address literal is `[IPv4]` or `[IPv6:…]`.
pub fn is_hello_argument(s: &str) -> bool {
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Some(v6) = inner
            .strip_prefix("IPv6:")
            .or_else(|| inner.strip_prefix("ipv6:"))
        {
            return v6.parse::<std::net::Ipv6Addr>().is_ok();
        }
        return inner.parse::<std::net::Ipv4Addr>().is_ok();
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
                && !label.chars().any(char::is_control)
        })
}

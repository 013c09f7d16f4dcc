//! SMTP over sockets, shared by every service: the stream type (plain or TLS), TLS
//! configuration, the organisation's server-to-server authentication, the receive
//! connector (listener + session driver), the SMTP client used by the implicit send
//! connectors, and the outbound connection (DNS, MX, TLS policy) shared by Transport's
//! send connectors and the :717 Outbound Proxy. Must not import a service (context,
//! frontend, transport, mailbox) or cli (scripts/check-arrows).

pub mod client;
pub mod dns;
pub mod listeners;
pub mod org_connector;
pub mod orgauth;
pub mod orgca;
pub mod outbound;
pub mod receive;
pub mod stream;
pub mod tls;

/// Exchange's `Received:` date format (RFC 5322 §3.3), e.g. `Thu, 9 Jun 2022 01:30:37 +0000`.
///
/// Every greeting and every `Received:` line takes one, so it is formatted once per
/// second and thread (chrono parses its pattern on each call).
pub fn rfc2822_now() -> String {
    thread_local! {
        static SECOND: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = chrono::Utc::now();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != now.timestamp() {
            *second = now.timestamp();
            *text = now.format("%a, %-d %b %Y %H:%M:%S +0000").to_string();
        }
        text.clone()
    })
}

/// A `Received:` header line in the shape Exchange writes (reference §11.3).
pub fn received_header(
    helo: &str,
    client_ip: std::net::IpAddr,
    by_fqdn: &str,
    by_ip: std::net::IpAddr,
    tls: Option<&str>,
    id: &str,
    via: Option<&str>,
) -> String {
    let tls = tls.map(|t| format!(" ({t})")).unwrap_or_default();
    let via = via.map(|v| format!(" via {v}")).unwrap_or_default();
    format!(
        "Received: from {helo} ({client_ip}) by {by_fqdn} ({by_ip}) with mailflow SMTP Server{tls}\r\n id {id}{via}; {}\r\n",
        rfc2822_now()
    )
}

//! Every answer and rejection the product's services send, built once per cause.
//!
//! A service never spells a reply code, an enhanced status code (RFC 3463) and a text at
//! its call site: it calls the function named for the cause here, so the same cause
//! reads the same on every listener, in tracking logs and in NDRs. Texts follow
//! Exchange's where Exchange has one (reference exchange-transport.md §11.2); tests and
//! operators match them, so change none without changing both. Replies that carry data
//! (an address, a size, a database) take it as parameters.
//!
//! The session's own protocol replies (syntax, sequence, limits of the state machine)
//! stay in `session.rs` and `command.rs`. Like the rest of this crate this module
//! imports no I/O, no clock and no service.

use crate::reply::{Enhanced, Reply};

// ---- Connections (SMTP Receive) -------------------------------------------------

/// `421 4.3.2`: past a receive connector's MaxInboundConnection (Exchange's text).
pub fn too_many_connections() -> Reply {
    Reply::new(
        421,
        Enhanced(4, 3, 2),
        "The maximum number of concurrent server connections has exceeded a limit, closing transmission channel",
    )
}

/// `421 4.3.2`: the service is stopping or stopped (Stop-Service); a session opened
/// before the stop is told at its next MAIL and closed, so the client tries another
/// server.
pub fn service_not_available() -> Reply {
    Reply::new(
        421,
        Enhanced(4, 3, 2),
        "Service not available, closing transmission channel",
    )
}

/// `421 4.3.2`: past MaxInboundConnectionPerSource (Exchange's text).
pub fn too_many_connections_from_source() -> Reply {
    Reply::new(
        421,
        Enhanced(4, 3, 2),
        "The maximum number of concurrent connections has exceeded a limit, closing transmission channel",
    )
}

/// `421 4.4.2`: the client sends slower than the connector's MinDataRate, so it cannot
/// hold a session (and its file descriptor) for the full ConnectionTimeout.
pub fn data_rate_too_low() -> Reply {
    Reply::new(
        421,
        Enhanced(4, 4, 2),
        "Data rate too low, closing transmission channel",
    )
}

/// `421 4.4.2`: the session outlived the connector's ConnectionTimeout.
pub fn connection_timed_out() -> Reply {
    Reply::new(
        421,
        Enhanced(4, 4, 2),
        "Connection timed out, closing transmission channel",
    )
}

/// `421 4.4.2`: the client said nothing for ConnectionInactivityTimeout.
pub fn connection_inactivity_timeout() -> Reply {
    Reply::new(
        421,
        Enhanced(4, 4, 2),
        "Connection inactivity timeout, closing transmission channel",
    )
}

/// `554 5.7.1`: the client's address is outside the connector's RemoteIPRanges.
pub fn host_not_permitted() -> Reply {
    Reply::new(
        554,
        Enhanced(5, 7, 1),
        "Client host is not permitted on this connector",
    )
}

// ---- Authentication -------------------------------------------------------------

/// `530 5.7.1`: MAIL on a connector that needs organisation-server (or Transport)
/// authentication from a client that did not authenticate so (reference §11.2).
pub fn not_authenticated() -> Reply {
    Reply::new(530, Enhanced(5, 7, 1), "Client was not authenticated")
}

/// `530 5.7.57`: MAIL from an anonymous client on a Client (submission) connector.
pub fn anonymous_mail_not_permitted() -> Reply {
    Reply::new(
        530,
        Enhanced(5, 7, 57),
        "SMTP; Client was not authenticated to send anonymous mail during MAIL FROM",
    )
}

/// `235 2.7.0`: AUTH succeeded (RFC 4954 §6).
pub fn authentication_successful() -> Reply {
    Reply::new(235, Enhanced(2, 7, 0), "Authentication successful")
}

/// `535 5.7.8`: AUTH with wrong credentials (RFC 4954 §6).
pub fn credentials_invalid() -> Reply {
    Reply::new(535, Enhanced(5, 7, 8), "Authentication credentials invalid")
}

/// `504 5.7.4`: an AUTH mechanism the connector does not offer (RFC 4954 §6).
pub fn unrecognized_auth_type() -> Reply {
    Reply::new(504, Enhanced(5, 7, 4), "Unrecognized authentication type")
}

/// `454 4.7.0`: too many failed logons from this client; it may try later.
pub fn logon_throttled() -> Reply {
    Reply::new(
        454,
        Enhanced(4, 7, 0),
        "Too many failed logons; try again later",
    )
}

/// `501 5.5.2`: `AUTH X-MAILFLOW-SERVER` without its initial response.
pub fn server_auth_needs_initial_response() -> Reply {
    Reply::new(
        501,
        Enhanced(5, 5, 2),
        "X-MAILFLOW-SERVER needs an initial response",
    )
}

/// `501 5.5.2`: an `AUTH X-MAILFLOW-SERVER` initial response that does not parse.
pub fn server_auth_invalid_response() -> Reply {
    Reply::new(
        501,
        Enhanced(5, 5, 2),
        "Invalid AUTH X-MAILFLOW-SERVER response",
    )
}

// ---- Envelope -------------------------------------------------------------------

/// `250 2.1.0`: MAIL accepted.
pub fn sender_ok() -> Reply {
    Reply::new(250, Enhanced(2, 1, 0), "Sender OK")
}

/// `250 2.1.5`: RCPT accepted.
pub fn recipient_ok() -> Reply {
    Reply::new(250, Enhanced(2, 1, 5), "Recipient OK")
}

/// `550 5.1.1`: an accepted-domain address the directory does not know (reference
/// §11.2), at RCPT or as the categorizer's NDR.
pub fn recipient_not_found() -> Reply {
    Reply::new(
        550,
        Enhanced(5, 1, 1),
        "RESOLVER.ADR.ExRecipNotFound; not found",
    )
}

/// `550 5.7.54`: an anonymous client's recipient outside the accepted domains (no
/// SMTP-Accept-Any-Recipient: never relay).
pub fn unable_to_relay() -> Reply {
    Reply::new(
        550,
        Enhanced(5, 7, 54),
        "SMTP; Unable to relay recipient in non-accepted domain",
    )
}

/// `550 5.7.60`: the sender (envelope, `From:` or `Sender:`) is not one of the
/// authenticated mailbox's addresses.
pub fn send_as_denied() -> Reply {
    Reply::new(
        550,
        Enhanced(5, 7, 60),
        "SMTP; Client does not have permissions to send as this sender",
    )
}

/// `550 5.7.133`: an anonymous sender to a group with `require_sender_authentication`.
pub fn sender_not_authenticated_for_group() -> Reply {
    Reply::new(
        550,
        Enhanced(5, 7, 133),
        "RESOLVER.RST.SenderNotAuthenticatedForGroup; authentication required",
    )
}

/// `452 4.5.3`: the :717 Outbound Proxy takes one destination domain per transaction,
/// as Transport's delivery queues are per domain.
pub fn one_destination_per_transaction() -> Reply {
    Reply::new(
        452,
        Enhanced(4, 5, 3),
        "One destination domain per transaction",
    )
}

// ---- Content and limits ---------------------------------------------------------

/// `554 5.4.6`: MaxHopCount or MaxLocalHopCount `Received:` fields (reference §11.3).
pub fn hop_count_exceeded() -> Reply {
    Reply::new(
        554,
        Enhanced(5, 4, 6),
        "Hop count exceeded - possible mail loop",
    )
}

/// `550 5.3.4`: larger than every send connector toward the destination takes
/// (reference §4.4, §11.2).
pub fn size_limit_for_route() -> Reply {
    Reply::new(
        550,
        Enhanced(5, 3, 4),
        "ROUTING.SizeLimit; message size exceeds fixed maximum message size for route",
    )
}

/// `552 5.3.4`: larger than the SIZE the next hop `host` announced (`limit` bytes).
pub fn size_exceeds_host_limit(host: &str, limit: u64) -> Reply {
    Reply::new(
        552,
        Enhanced(5, 3, 4),
        format!("Message size exceeds the limit of {host} ({limit} bytes)"),
    )
}

/// `553 5.6.7`: the message needs SMTPUTF8 and the next hop `host` lacks it (RFC 6531
/// §3.4).
pub fn smtputf8_not_supported(host: &str) -> Reply {
    Reply::new(
        553,
        Enhanced(5, 6, 7),
        format!("{host} does not support SMTPUTF8, which this message needs"),
    )
}

// ---- Transport ------------------------------------------------------------------

/// `250 2.6.0`: the message is in the submission queue; Exchange's text with the
/// Message-ID, the queue's id and this server's FQDN.
pub fn queued_for_delivery(message_id: &str, id: impl std::fmt::Display, fqdn: &str) -> Reply {
    Reply::new(
        250,
        Enhanced(2, 6, 0),
        format!("{message_id} [InternalId={id}, Hostname={fqdn}] Queued mail for delivery"),
    )
}

/// `451 4.3.1`: the queue database could not take the message (back pressure).
pub fn insufficient_system_resources() -> Reply {
    Reply::new(451, Enhanced(4, 3, 1), "Insufficient system resources")
}

/// `451 4.3.0`: SMTP Send panicked on the message below PoisonThreshold; deferred.
pub fn transport_failed_while_sending() -> Reply {
    Reply::new(
        451,
        Enhanced(4, 3, 0),
        "Transport failed while sending this message; it will be retried",
    )
}

/// `550 5.3.0`: Remove-Message by an administrator.
pub fn deleted_by_administrator() -> Reply {
    Reply::new(
        550,
        Enhanced(5, 3, 0),
        "QUEUE.Admin; message deleted by administrative action",
    )
}

/// `550 5.7.1 <reason>`: a transport rule rejected the message (reference: the rule's
/// RejectMessageReasonText, default code 5.7.1).
pub fn rejected_by_rule(reason: impl Into<String>) -> Reply {
    Reply::new(550, Enhanced(5, 7, 1), reason)
}

/// `550 4.4.7`: MessageExpirationTimeout reached with no delivery attempt's error to
/// quote (Exchange's tracking text).
pub fn message_expired() -> Reply {
    Reply::new(550, Enhanced(4, 4, 7), "QUEUE.Expired; message expired")
}

/// `550 4.4.7`: MessageExpirationTimeout reached; `last_error` is the last attempt's.
pub fn message_expired_with(last_error: &str) -> Reply {
    Reply::new(
        550,
        Enhanced(4, 4, 7),
        format!("QUEUE.Expired; message expired; last error: {last_error}"),
    )
}

/// `451 4.4.7`: the delay notice's diagnostic when no attempt left an error.
pub fn message_delayed() -> Reply {
    Reply::new(451, Enhanced(4, 4, 7), "Message delayed")
}

/// `451 4.4.1`: the next hop timed out or refused the connection (retried, later NDR).
pub fn connection_timed_out_or_refused(detail: impl std::fmt::Display) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 1),
        format!("Connection timed out or refused: {detail}"),
    )
}

/// `451 4.4.2`: the connection to the next hop broke mid-session.
pub fn connection_dropped(detail: impl std::fmt::Display) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 2),
        format!("Connection dropped: {detail}"),
    )
}

/// `451 4.4.2`: the :717 Outbound Proxy lost its connection to the destination.
pub fn connection_to_destination_lost() -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 2),
        "Connection to the destination was lost",
    )
}

/// `451 4.4.317`: no host of the next hop presented a certificate the connector's TLS
/// policy accepts; `why` names the first host and its reason.
pub fn certificate_validation_failed(why: &str) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 317),
        format!("Cannot connect to remote server: TLS certificate validation failed for {why}"),
    )
}

/// `451 4.4.0`: a queue's send connector was removed from the organisation file. The
/// name is shown as the queue holds it, `Some("name")` (kept as it always read).
pub fn send_connector_gone(connector: Option<&str>) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 0),
        format!("Send connector {connector:?} no longer exists"),
    )
}

/// `451 4.4.0`: routing names no server for the next hop (none in its delivery group).
pub fn no_server_for_next_hop(domain: &str) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 0),
        format!("No server is available for next hop {domain}"),
    )
}

/// `451 4.4.1`: no server of an organisation next hop answered; `errors` are theirs.
pub fn next_hop_unreachable(errors: &str) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 1),
        format!("Connection timed out or refused ({errors})"),
    )
}

/// `451 4.4.1`: no Outbound Proxy Frontend of the site answered; `errors` are theirs.
pub fn no_outbound_proxy_answered(errors: &str) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 1),
        format!("No Outbound Proxy Frontend answered ({errors})"),
    )
}

/// `451 4.4.0`: SMTP Send panicked while connecting; the queue retries.
pub fn transport_failed_while_connecting() -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 0),
        "Transport failed while connecting to the next hop",
    )
}

/// `550 5.4.4`: no send connector's address space covers `domain`.
pub fn no_send_connector(domain: &str) -> Reply {
    Reply::new(
        550,
        Enhanced(5, 4, 4),
        format!("No send connector for {domain}"),
    )
}

// ---- Front End Transport --------------------------------------------------------

/// `451 4.4.0`: Front End reached no Transport service; the sender retries (reference
/// §2).
pub fn transport_unavailable(detail: &str) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 0),
        format!("Unable to reach a Transport service; try again later ({detail})"),
    )
}

/// `451 4.4.0`: Transport refused one of the proxied recipients; the client retries
/// rather than lose it silently.
pub fn transport_refused_recipient(refused: &Reply) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 0),
        format!("Transport refused a recipient; try again later ({refused})"),
    )
}

/// `451 4.4.0`: Transport did not answer DATA/BDAT for the proxied content.
pub fn transport_did_not_accept_content() -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 0),
        "Transport did not accept the content",
    )
}

// ---- Mailbox Transport Delivery (store driver) ----------------------------------

/// `451 4.3.2` at RCPT: the recipient's database has no active copy on this server, so
/// the sending Transport must route again (reference §5: "reroute the message").
pub fn database_not_active(database: &str, active: &str) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 3, 2),
        format!(
            "STOREDRV.Deliver; database {database} is not active on this server (active copy: {active}); reroute"
        ),
    )
}

/// `451 4.3.2` after DATA: the database's store is not open on this server.
pub fn database_not_available(database: &str) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 3, 2),
        format!("STOREDRV.Deliver; database {database} is not available"),
    )
}

/// `451 4.3.2` after DATA: the store driver's commit failed; Transport retries.
pub fn database_commit_failed(database: &str, error: impl std::fmt::Display) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 3, 2),
        format!("STOREDRV.Deliver; database {database} could not commit: {error}"),
    )
}

/// `250 2.0.0`: the message is in every recipient's mailbox database.
pub fn delivered_to_mailbox(message_id: &str) -> Reply {
    Reply::new(
        250,
        Enhanced(2, 0, 0),
        format!("{message_id} Delivered to mailbox database"),
    )
}

/// `550 5.1.3`: Mailbox Transport Submission found no recipient in an Outbox item.
pub fn submit_no_recipients() -> Reply {
    Reply::new(550, Enhanced(5, 1, 3), "STOREDRV.Submit; no recipients")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts that tests and operators match, exactly as on the wire.
    #[test]
    fn replies_keep_their_exact_wire_form() {
        let cases = [
            (
                not_authenticated(),
                "530 5.7.1 Client was not authenticated",
            ),
            (
                recipient_not_found(),
                "550 5.1.1 RESOLVER.ADR.ExRecipNotFound; not found",
            ),
            (
                send_as_denied(),
                "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
            ),
            (
                database_not_active("DB1", "none"),
                "451 4.3.2 STOREDRV.Deliver; database DB1 is not active on this server (active copy: none); reroute",
            ),
            (
                message_expired_with("451 4.4.1 x"),
                "550 4.4.7 QUEUE.Expired; message expired; last error: 451 4.4.1 x",
            ),
            (
                size_exceeds_host_limit("mx.example", 10),
                "552 5.3.4 Message size exceeds the limit of mx.example (10 bytes)",
            ),
            (message_delayed(), "451 4.4.7 Message delayed"),
            (
                send_connector_gone(Some("To Internet")),
                "451 4.4.0 Send connector Some(\"To Internet\") no longer exists",
            ),
            (
                submit_no_recipients(),
                "550 5.1.3 STOREDRV.Submit; no recipients",
            ),
        ];
        for (reply, wire) in cases {
            assert_eq!(reply.one_line(), wire);
            assert_eq!(reply.to_bytes(), format!("{wire}\r\n").into_bytes());
        }
    }
}

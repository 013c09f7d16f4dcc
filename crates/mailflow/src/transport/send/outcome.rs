//! What one recipient's delivery attempt came to, as a type: SMTP Send decides it once
//! from the next hop's reply code, enhanced status code and the stage of the
//! transaction that gave it, and acts on the variant. No caller reads a reply's text
//! to find out what happened (STYLE: outcomes are types).
//!
//! This module knows replies and the SMTP client's stages only; it imports no queue,
//! no store and no other service.

use mailflow_smtp::{Enhanced, Reply};

use crate::net::client::Stage;

/// The outcome of delivering to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The next hop took responsibility (2xx).
    Delivered,
    /// A transient failure: the recipient waits in its delivery queue for a retry.
    Retry,
    /// Mailbox Transport Delivery no longer holds the recipient's active database copy:
    /// the recipient goes back through the categorizer to be routed again
    /// (reference §5, "reroute the message").
    Reroute,
    /// A permanent failure: the recipient fails with a non-delivery report carrying
    /// this status.
    Ndr(Enhanced),
}

/// The enhanced status of Mailbox Transport Delivery's reroute answer
/// ([`mailflow_smtp::replies::database_not_active`]), given at RCPT.
const REROUTE: Enhanced = Enhanced(4, 3, 2);

impl DeliveryOutcome {
    /// Classifies `reply`, given at `stage`, from a next hop inside the organisation
    /// (`internal`) or outside it. Only an organisation hop can ask for a reroute, and
    /// only at RCPT: the same 4.3.2 after DATA (a store that could not commit) is a
    /// retry.
    pub fn of(reply: &Reply, stage: Stage, internal: bool) -> DeliveryOutcome {
        if reply.is_positive() {
            DeliveryOutcome::Delivered
        } else if reply.is_permanent() {
            // RFC 3463 §3.1: without an enhanced code, the class alone.
            DeliveryOutcome::Ndr(reply.enhanced.unwrap_or(Enhanced(5, 0, 0)))
        } else if internal && stage == Stage::Rcpt && reply.enhanced == Some(REROUTE) {
            DeliveryOutcome::Reroute
        } else {
            DeliveryOutcome::Retry
        }
    }
}

#[cfg(test)]
mod tests {
    use mailflow_smtp::replies;

    use super::*;

    #[test]
    fn outcomes_follow_code_enhanced_status_and_stage() {
        use DeliveryOutcome::*;
        let not_active = replies::database_not_active("DB1", "MBX2");
        let cases = [
            (replies::recipient_ok(), Stage::Data, true, Delivered),
            (
                replies::delivered_to_mailbox("<a@b>"),
                Stage::Data,
                false,
                Delivered,
            ),
            (
                replies::recipient_not_found(),
                Stage::Rcpt,
                true,
                Ndr(Enhanced(5, 1, 1)),
            ),
            (
                Reply::plain(554, "no"),
                Stage::Mail,
                false,
                Ndr(Enhanced(5, 0, 0)),
            ),
            // Exchange's expiry text keeps its 4.4.7 under a 550.
            (
                replies::message_expired(),
                Stage::Data,
                true,
                Ndr(Enhanced(4, 4, 7)),
            ),
            (not_active.clone(), Stage::Rcpt, true, Reroute),
            // Outside the organisation a 4.3.2 is a busy server, not a moved database.
            (not_active, Stage::Rcpt, false, Retry),
            (
                replies::database_commit_failed("DB1", "disk"),
                Stage::Data,
                true,
                Retry,
            ),
            (
                replies::database_not_available("DB1"),
                Stage::Data,
                true,
                Retry,
            ),
            (replies::too_many_connections(), Stage::Mail, true, Retry),
            (Reply::plain(450, "busy"), Stage::Rcpt, true, Retry),
        ];
        for (reply, stage, internal, want) in cases {
            assert_eq!(
                DeliveryOutcome::of(&reply, stage, internal),
                want,
                "{reply} at {stage:?}, internal {internal}"
            );
        }
    }
}

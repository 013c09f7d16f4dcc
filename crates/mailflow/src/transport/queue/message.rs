//! A queued message and where its recipients go: [`QueuedMessage`] (shared by the
//! delivery queues its recipients were bifurcated into), the next hop
//! ([`NextHop`], reference §3.4) and the [`Item`] a delivery queue holds. Plain data: it
//! must not import the delivery queues, routing or send/.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::retry::arrival_time;
use super::store::{Envelope, QueuedRecipient};

/// A message in the Transport service, shared by the delivery queues its recipients
/// were bifurcated into. When the last recipient is done it leaves the queue database.
pub struct QueuedMessage {
    /// The per-server internal message id (tracking's internal-message-id).
    pub id: i64,
    /// When the message entered this server (expiration and delay notices count from
    /// here).
    pub arrival: SystemTime,
    pub envelope: Envelope,
    pub content: Arc<[u8]>,
    /// Recipients not yet delivered or failed, across all queues.
    pending: AtomicUsize,
    /// Times handling this message crashed the server or panicked (poison detection):
    /// the envelope's `crash_count` at load, counted on in memory.
    crashes: AtomicU32,
}

impl QueuedMessage {
    pub fn new(id: i64, envelope: Envelope, content: Arc<[u8]>) -> Arc<QueuedMessage> {
        let arrival = arrival_time(&envelope.received_at, SystemTime::now());
        Arc::new(QueuedMessage {
            id,
            arrival,
            crashes: AtomicU32::new(envelope.crash_count),
            envelope,
            content,
            pending: AtomicUsize::new(0),
        })
    }

    /// The same message with new content (mail flow rules edited it); the crash count
    /// goes along.
    pub fn with_content(&self, content: Arc<[u8]>) -> Arc<QueuedMessage> {
        let m = QueuedMessage::new(self.id, self.envelope.clone(), content);
        m.crashes
            .store(self.crashes.load(Ordering::Acquire), Ordering::Release);
        m
    }

    /// Counts one more crash; returns the new count.
    pub fn record_crash(&self) -> u32 {
        self.crashes.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Recipients entering delivery queues (the categorizer adds before it subtracts
    /// what it consumed, so the count never reaches zero early).
    pub fn add_pending(&self, n: usize) {
        self.pending.fetch_add(n, Ordering::AcqRel);
    }

    /// Marks `n` recipients finished; true when that was the last of them.
    pub fn finish(&self, n: usize) -> bool {
        n > 0 && self.pending.fetch_sub(n, Ordering::AcqRel) == n
    }
}

/// DeliveryType of a queue (reference §3.4), the ones mailflow creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum DeliveryType {
    /// A database on this server, in this server's DAG, or in this site outside DAGs.
    SmtpDeliveryToMailbox,
    /// A database in a DAG this server is not a member of.
    SmtpRelayToDag,
    /// A database outside DAGs in another site.
    SmtpRelayToMailboxDeliveryGroup,
    /// A hub site on the least-cost path.
    SmtpRelayToRemoteAdSite,
    /// A distribution group's expansion server.
    SmtpRelayToServers,
    /// A send connector hosted on other source servers.
    SmtpRelayToConnectorSourceServers,
    DnsConnectorDelivery,
    SmartHostConnectorDelivery,
    Unreachable,
    /// The poison message queue: messages the server died on twice (reference §3.3).
    Poison,
}

impl DeliveryType {
    pub fn is_external(self) -> bool {
        matches!(
            self,
            DeliveryType::DnsConnectorDelivery | DeliveryType::SmartHostConnectorDelivery
        )
    }
}

/// Where a recipient goes: the NextHopSolutionKey (reference §3.4). Which server to
/// connect to is resolved when connecting (see `routing::RoutingView::targets`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NextHop {
    pub delivery_type: DeliveryType,
    /// NextHopDomain: the queue's name (a database, DAG, site, domain…).
    pub domain: String,
    /// The send connector, for external next hops.
    pub connector: Option<String>,
}

impl NextHop {
    pub fn key(&self) -> String {
        format!("{:?}:{}", self.delivery_type, self.domain)
    }
    pub fn poison() -> NextHop {
        NextHop {
            delivery_type: DeliveryType::Poison,
            domain: "Poison Message".into(),
            connector: None,
        }
    }

    pub fn unreachable() -> NextHop {
        NextHop {
            delivery_type: DeliveryType::Unreachable,
            domain: "Unreachable Domain".into(),
            connector: None,
        }
    }
}

/// Recipients of one message waiting in one delivery queue.
pub struct Item {
    pub message: Arc<QueuedMessage>,
    pub recipients: Vec<QueuedRecipient>,
    /// Not before this time (a per-recipient transient failure).
    pub not_before: Option<Instant>,
}

#[cfg(test)]
impl QueuedMessage {
    /// A message that arrived at `arrival`, for tests of what counts from arrival.
    pub(crate) fn arrived_at(id: i64, arrival: SystemTime) -> Arc<QueuedMessage> {
        Arc::new(QueuedMessage {
            id,
            arrival,
            envelope: Envelope::default(),
            content: Arc::from(&b""[..]),
            pending: AtomicUsize::new(0),
            crashes: AtomicU32::new(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_finishes_once_all_parts_are_done() {
        let m = QueuedMessage::new(1, Envelope::default(), Arc::from(&b""[..]));
        m.add_pending(3);
        assert!(!m.finish(2));
        assert!(m.finish(1));
    }
}

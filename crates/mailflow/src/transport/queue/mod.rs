//! Transport's queues (reference §3.3–3.5): the Submission queue (messages not yet
//! categorized), one delivery queue per next hop, and the Unreachable queue. The queue
//! database ([`store::QueueDb`]) is the durable truth; this module is the in-memory view
//! that schedules delivery: statuses, retry times and the items waiting in each queue.

pub mod store;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::Notify;

use self::store::{Envelope, QueueDb, QueuedRecipient};

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
        let arrival = chrono::DateTime::parse_from_rfc3339(&envelope.received_at)
            .map(SystemTime::from)
            .unwrap_or_else(|_| SystemTime::now());
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

/// Queue status (reference §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum QueueStatus {
    Active,
    Ready,
    Retry,
    Suspended,
}

/// Recipients of one message waiting in one delivery queue.
pub struct Item {
    pub message: Arc<QueuedMessage>,
    pub recipients: Vec<QueuedRecipient>,
    /// Not before this time (a per-recipient transient failure).
    pub not_before: Option<Instant>,
}

struct QueueState {
    items: VecDeque<Item>,
    /// Messages being transmitted right now.
    in_flight: usize,
    suspended: bool,
    last_error: Option<String>,
    retry_count: u32,
    next_retry: Option<(Instant, SystemTime)>,
}

impl QueueState {
    /// Where the item `pop` would take now is, if the queue may transmit (not
    /// suspended, not waiting for its next retry) and an item is due.
    fn due_item(&self, now: Instant) -> Option<usize> {
        if self.suspended || self.next_retry.is_some_and(|(at, _)| at > now) {
            return None;
        }
        self.items
            .iter()
            .position(|i| i.not_before.is_none_or(|t| t <= now))
    }
}

/// One delivery queue.
pub struct DeliveryQueue {
    /// Identity number: `Server\<n>` as Get-Queue shows it.
    pub number: u32,
    pub next_hop: NextHop,
    state: Mutex<QueueState>,
    notify: Notify,
    /// Wakes a session that waits with an open connection (connection caching); such
    /// sessions get new items before sessions that would have to connect.
    cached: Notify,
    cached_waiting: AtomicUsize,
}

/// What `queue list` shows (Get-Queue properties, reference §3.5).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueueInfo {
    pub identity: String,
    pub delivery_type: String,
    pub status: QueueStatus,
    pub message_count: usize,
    pub next_hop_domain: String,
    pub next_hop_category: String,
    pub last_error: Option<String>,
    pub next_retry_time: Option<String>,
}

/// What `message list` shows (Get-Message properties, reference §3.5).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MessageInfo {
    pub identity: String,
    pub internal_id: i64,
    pub queue: String,
    pub from_address: String,
    pub status: String,
    pub size: u64,
    pub subject: String,
    pub internet_message_id: String,
    pub date_received: String,
    pub recipients: Vec<String>,
    pub last_error: Option<String>,
}

/// Retry intervals (reference §6): glitch retries, then transient ones, then the
/// outbound-connection-failure interval until expiry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub glitch_count: u32,
    pub glitch_interval: Duration,
    pub transient_count: u32,
    pub transient_interval: Duration,
    pub failure_interval: Duration,
}

impl RetryPolicy {
    pub fn interval(&self, attempt: u32) -> Duration {
        if attempt < self.glitch_count {
            self.glitch_interval
        } else if attempt < self.glitch_count + self.transient_count {
            self.transient_interval
        } else {
            self.failure_interval
        }
    }
}

impl DeliveryQueue {
    fn new(number: u32, next_hop: NextHop) -> DeliveryQueue {
        DeliveryQueue {
            number,
            next_hop,
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                in_flight: 0,
                suspended: false,
                last_error: None,
                retry_count: 0,
                next_retry: None,
            }),
            notify: Notify::new(),
            cached: Notify::new(),
            cached_waiting: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, item: Item) {
        self.lock().items.push_back(item);
        if self.cached_waiting.load(Ordering::SeqCst) > 0 {
            self.cached.notify_one();
        } else {
            self.notify.notify_one();
        }
    }

    /// Wakes a session without a connection: an item a cached session cannot take.
    pub fn hand_off(&self) {
        self.notify.notify_one();
    }

    /// Whether `pop` would return an item now.
    fn has_due_item(&self) -> bool {
        self.lock().due_item(Instant::now()).is_some()
    }

    /// For a session with an open connection: waits until an item is due or until
    /// `deadline`; false when the deadline passed first. While it waits, new items wake
    /// it rather than a session without a connection.
    pub async fn wait_for_work_cached(&self, deadline: tokio::time::Instant) -> bool {
        self.cached_waiting.fetch_add(1, Ordering::SeqCst);
        let found = loop {
            // Registered before the check, so a push in between is not lost.
            let notified = self.cached.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_due_item() {
                break true;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => break false,
            }
        };
        self.cached_waiting.fetch_sub(1, Ordering::SeqCst);
        if !found && self.has_due_item() {
            // An item pushed while this session gave up was meant for it.
            self.hand_off();
        }
        found
    }

    /// Puts items back at the front after a failed connection (order kept).
    pub fn requeue_front(&self, items: Vec<Item>) {
        let mut s = self.lock();
        for item in items.into_iter().rev() {
            s.items.push_front(item);
        }
    }

    /// Waits until this queue may transmit and has a due item.
    pub async fn wait_for_work(&self) {
        loop {
            // Registered before the state is read, so a wake-up between the check and
            // the wait (Resume, Retry-Queue) is never lost.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let sleep_until = {
                let s = self.lock();
                let now = Instant::now();
                if s.suspended {
                    None
                } else if let Some((at, _)) = s.next_retry.filter(|(at, _)| *at > now) {
                    Some(at)
                } else if s.due_item(now).is_some() {
                    return;
                } else {
                    s.items.iter().filter_map(|i| i.not_before).min()
                }
            };
            match sleep_until {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Takes the next due item, if the queue may transmit.
    pub fn pop(&self) -> Option<Item> {
        let mut s = self.lock();
        let pos = s.due_item(Instant::now())?;
        let item = s.items.remove(pos)?;
        s.in_flight += 1;
        Some(item)
    }

    /// Removes every waiting item (not those being transmitted): a reload routes them
    /// again.
    pub fn take_all(&self) -> Vec<Item> {
        self.lock().items.drain(..).collect()
    }

    pub fn is_suspended(&self) -> bool {
        self.lock().suspended
    }

    /// Removes the items of messages that arrived at or before `cutoff` (expired).
    pub fn take_expired(&self, cutoff: SystemTime) -> Vec<Item> {
        let mut s = self.lock();
        let (expired, kept): (Vec<Item>, Vec<Item>) =
            s.items.drain(..).partition(|i| i.message.arrival <= cutoff);
        s.items = kept.into();
        expired
    }

    /// Recipients owed a delay notice: their message arrived at or before `cutoff` and
    /// none was sent yet. They are marked so the notice goes once.
    pub fn take_delay_due(
        &self,
        cutoff: SystemTime,
    ) -> Vec<(Arc<QueuedMessage>, Vec<QueuedRecipient>)> {
        let mut s = self.lock();
        let mut due = Vec::new();
        for item in s.items.iter_mut().filter(|i| i.message.arrival <= cutoff) {
            let fresh: Vec<QueuedRecipient> = item
                .recipients
                .iter_mut()
                .filter(|r| !r.delay_notified)
                .map(|r| {
                    r.delay_notified = true;
                    r.clone()
                })
                .collect();
            if !fresh.is_empty() {
                due.push((item.message.clone(), fresh));
            }
        }
        due
    }

    /// Get-Message rows for the messages waiting in this queue (in-flight ones are
    /// shown Active).
    pub fn messages(&self, server: &str) -> Vec<MessageInfo> {
        let s = self.lock();
        let status = if s.suspended {
            "Suspended"
        } else if s.next_retry.is_some_and(|(at, _)| at > Instant::now()) {
            "Retry"
        } else {
            "Ready"
        };
        s.items
            .iter()
            .map(|i| {
                let m = &i.message;
                MessageInfo {
                    identity: format!("{server}\\{}\\{}", self.number, m.id),
                    internal_id: m.id,
                    queue: format!("{server}\\{}", self.number),
                    from_address: m.envelope.return_path.clone(),
                    status: status.into(),
                    size: m.content.len() as u64,
                    subject: m.envelope.subject.clone(),
                    internet_message_id: m.envelope.message_id.clone(),
                    date_received: m.envelope.received_at.clone(),
                    recipients: i.recipients.iter().map(|r| r.address.clone()).collect(),
                    last_error: i
                        .recipients
                        .iter()
                        .find_map(|r| r.last_error.clone())
                        .or_else(|| s.last_error.clone()),
                }
            })
            .collect()
    }

    /// Remove-Message: takes the waiting items of message `id` out of this queue.
    pub fn remove_message(&self, id: i64) -> Vec<Item> {
        let mut s = self.lock();
        let (removed, kept): (Vec<Item>, Vec<Item>) =
            s.items.drain(..).partition(|i| i.message.id == id);
        s.items = kept.into();
        removed
    }

    /// The content of message `id` if it waits in this queue.
    pub fn content_of(&self, id: i64) -> Option<Arc<[u8]>> {
        self.lock()
            .items
            .iter()
            .find(|i| i.message.id == id)
            .map(|i| i.message.content.clone())
    }

    /// A transmission attempt ended (whatever its outcome).
    pub fn done(&self) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
    }

    /// The next hop answered: the queue leaves Retry.
    pub fn connected(&self) {
        let mut s = self.lock();
        s.retry_count = 0;
        s.next_retry = None;
        s.last_error = None;
    }

    /// The connection failed: status Retry until the next retry time.
    pub fn connection_failed(&self, error: String, policy: &RetryPolicy) {
        let mut s = self.lock();
        // Several connections of one queue fail together: one failed attempt, one step
        // on the retry ladder.
        if s.next_retry.is_some_and(|(at, _)| at > Instant::now()) {
            s.last_error = Some(error);
            return;
        }
        let wait = policy.interval(s.retry_count);
        s.retry_count += 1;
        s.last_error = Some(error);
        s.next_retry = Some((Instant::now() + wait, SystemTime::now() + wait));
    }

    /// Records an error without putting the queue in Retry (e.g. a queue with no
    /// transmitter yet).
    pub fn set_last_error(&self, error: &str) {
        self.lock().last_error = Some(error.to_string());
    }

    pub fn set_suspended(&self, suspended: bool) {
        self.lock().suspended = suspended;
        self.notify.notify_waiters();
    }

    /// Retry-Queue: retry now (only meaningful in Retry).
    pub fn retry_now(&self) {
        self.lock().next_retry = None;
        self.notify.notify_waiters();
    }

    pub fn info(&self, server: &str) -> QueueInfo {
        let s = self.lock();
        let now = Instant::now();
        let status = if s.suspended {
            QueueStatus::Suspended
        } else if s.next_retry.is_some_and(|(at, _)| at > now) {
            QueueStatus::Retry
        } else if s.in_flight > 0 {
            QueueStatus::Active
        } else {
            QueueStatus::Ready
        };
        let (delivery_type, category) = match self.next_hop.delivery_type {
            DeliveryType::Unreachable => ("Unreachable".to_string(), "Internal"),
            DeliveryType::Poison => ("Undefined".to_string(), "Internal"),
            t if t.is_external() => (format!("{t:?}"), "External"),
            t => (format!("{t:?}"), "Internal"),
        };
        let identity = match self.next_hop.delivery_type {
            DeliveryType::Unreachable => format!("{server}\\Unreachable"),
            DeliveryType::Poison => format!("{server}\\Poison"),
            _ => format!("{server}\\{}", self.number),
        };
        QueueInfo {
            identity,
            delivery_type,
            status,
            message_count: s.items.len() + s.in_flight,
            next_hop_domain: self.next_hop.domain.clone(),
            next_hop_category: category.into(),
            last_error: s.last_error.clone(),
            next_retry_time: s.next_retry.filter(|(at, _)| *at > now).map(|(_, t)| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .format("%Y-%m-%dT%H:%M:%SZ")
                    .to_string()
            }),
        }
    }
}

/// All delivery queues of the server, created on demand per next hop.
pub struct Queues {
    pub db: QueueDb,
    server: String,
    inner: Mutex<QueuesInner>,
    /// Messages accepted but not yet categorized (the Submission queue's count).
    pub submission: AtomicUsize,
    /// Starts a transmitter for a new queue (set by the Transport service).
    on_new_queue: Box<dyn Fn(Arc<DeliveryQueue>) + Send + Sync>,
}

struct QueuesInner {
    by_key: HashMap<String, Arc<DeliveryQueue>>,
    next_number: u32,
}

impl Queues {
    pub fn new(
        db: QueueDb,
        server: &str,
        on_new_queue: Box<dyn Fn(Arc<DeliveryQueue>) + Send + Sync>,
    ) -> Queues {
        Queues {
            db,
            server: server.to_string(),
            inner: Mutex::new(QueuesInner {
                by_key: HashMap::new(),
                next_number: 1,
            }),
            submission: AtomicUsize::new(0),
            on_new_queue,
        }
    }

    /// The queue for a next hop, created (and its transmitter started) if new.
    pub fn queue_for(&self, next_hop: &NextHop) -> Arc<DeliveryQueue> {
        let key = next_hop.key();
        let (queue, created) = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(q) = inner.by_key.get(&key) {
                (q.clone(), false)
            } else {
                let number = inner.next_number;
                inner.next_number += 1;
                let q = Arc::new(DeliveryQueue::new(number, next_hop.clone()));
                inner.by_key.insert(key, q.clone());
                (q, true)
            }
        };
        if created {
            (self.on_new_queue)(queue.clone());
        }
        queue
    }

    pub fn all(&self) -> Vec<Arc<DeliveryQueue>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = inner.by_key.values().cloned().collect();
        v.sort_by_key(|q| q.number);
        v
    }

    /// Get-Queue: the Submission queue, then every delivery queue (Unreachable only
    /// when it holds messages, as Exchange hides it when empty).
    pub fn list(&self) -> Vec<QueueInfo> {
        let mut out = vec![QueueInfo {
            identity: format!("{}\\Submission", self.server),
            delivery_type: "Undefined".into(),
            status: QueueStatus::Ready,
            message_count: self.submission.load(Ordering::Relaxed),
            next_hop_domain: "Submission".into(),
            next_hop_category: "Internal".into(),
            last_error: None,
            next_retry_time: None,
        }];
        for q in self.all() {
            let info = q.info(&self.server);
            let hidden_when_empty = matches!(
                q.next_hop.delivery_type,
                DeliveryType::Unreachable | DeliveryType::Poison
            );
            if hidden_when_empty && info.message_count == 0 {
                continue;
            }
            out.push(info);
        }
        out
    }

    /// Finds a queue by identity (`Server\3`, `3`, `Unreachable`) or next-hop domain.
    pub fn find(&self, identity: &str) -> Option<Arc<DeliveryQueue>> {
        let id = identity.rsplit('\\').next().unwrap_or(identity);
        self.all().into_iter().find(|q| {
            q.number.to_string() == id
                || q.next_hop.domain.eq_ignore_ascii_case(id)
                || (id.eq_ignore_ascii_case("Unreachable")
                    && q.next_hop.delivery_type == DeliveryType::Unreachable)
                || (id.eq_ignore_ascii_case("Poison")
                    && q.next_hop.delivery_type == DeliveryType::Poison)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_ladder_follows_the_reference() {
        let p = RetryPolicy {
            glitch_count: 4,
            glitch_interval: Duration::from_secs(60),
            transient_count: 6,
            transient_interval: Duration::from_secs(300),
            failure_interval: Duration::from_secs(600),
        };
        let ladder: Vec<u64> = (0..12).map(|i| p.interval(i).as_secs()).collect();
        assert_eq!(
            ladder,
            [60, 60, 60, 60, 300, 300, 300, 300, 300, 300, 600, 600]
        );
    }

    #[test]
    fn message_finishes_once_all_parts_are_done() {
        let m = QueuedMessage::new(1, Envelope::default(), Arc::from(&b""[..]));
        m.add_pending(3);
        assert!(!m.finish(2));
        assert!(m.finish(1));
    }
}

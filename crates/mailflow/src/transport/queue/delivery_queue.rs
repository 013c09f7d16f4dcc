//! One delivery queue (reference §3.3–3.5): the items waiting for one next hop, its
//! status (Get-Queue), its retry state and what `message list` shows of it. The
//! transmitter side (send/) takes items from it; it must not import send/ or routing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio::sync::Notify;

use super::message::{DeliveryType, Item, NextHop, QueuedMessage};
use super::retry::{Expiry, RetryPolicy};
use super::store::QueuedRecipient;
use crate::logs::queue::{QueueEvent, QueueLog, QueueRow};

/// Queue status (reference §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum QueueStatus {
    Active,
    Ready,
    Retry,
    Suspended,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Item>,
    /// Messages being transmitted right now.
    in_flight: usize,
    suspended: bool,
    last_error: Option<String>,
    retry_count: u32,
    next_retry: Option<(Instant, SystemTime)>,
    /// When an item last came or went (QueueMaxIdleTime counts from here).
    last_active: Option<Instant>,
    /// Removed after QueueMaxIdleTime: its transmitters end, and a new item for its
    /// next hop goes to a new queue (`Queues::enqueue`).
    retired: bool,
}

impl QueueState {
    /// Where the item `pop` would take now is, if the queue may transmit (not
    /// suspended, not waiting for its next retry) and an item is due.
    fn due_item(&self, now: Instant) -> Option<usize> {
        if self.suspended || self.in_retry(now) {
            return None;
        }
        self.items
            .iter()
            .position(|i| i.not_before.is_none_or(|t| t <= now))
    }

    /// Whether the queue waits for its next retry time at `now`.
    fn in_retry(&self, now: Instant) -> bool {
        self.next_retry.is_some_and(|(at, _)| at > now)
    }

    /// Get-Queue's status at `now`.
    fn status(&self, now: Instant) -> QueueStatus {
        if self.suspended {
            QueueStatus::Suspended
        } else if self.in_retry(now) {
            QueueStatus::Retry
        } else if self.in_flight > 0 {
            QueueStatus::Active
        } else {
            QueueStatus::Ready
        }
    }

    /// A connection to the next hop failed at `now` (`wall` is the same instant on the
    /// wall clock, for Get-Queue's NextRetryTime): Retry until the next step of the
    /// retry ladder. Several connections of one queue fail together: one failed
    /// attempt, one step on the ladder.
    fn connection_failed(
        &mut self,
        error: String,
        policy: &RetryPolicy,
        now: Instant,
        wall: SystemTime,
    ) {
        self.last_error = Some(error);
        if self.in_retry(now) {
            return;
        }
        let wait = policy.interval(self.retry_count);
        self.retry_count += 1;
        self.next_retry = Some((now + wait, wall + wait));
    }

    /// Removes the items whose message has expired at `now`.
    fn take_expired(&mut self, expiry: &Expiry, now: SystemTime) -> Vec<Item> {
        let (expired, kept): (Vec<Item>, Vec<Item>) = self
            .items
            .drain(..)
            .partition(|i| expiry.expired(i.message.arrival, now));
        self.items = kept.into();
        expired
    }

    /// Recipients owed a delay notice at `now` (their message waited past the delay
    /// notification timeout and none was sent yet), marked so the notice goes once.
    fn take_delay_due(
        &mut self,
        expiry: &Expiry,
        now: SystemTime,
    ) -> Vec<(Arc<QueuedMessage>, Vec<QueuedRecipient>)> {
        let mut due = Vec::new();
        for item in self
            .items
            .iter_mut()
            .filter(|i| expiry.delay_due(i.message.arrival, now))
        {
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
    /// The queue log and this server's name, for the lines of Suspend-Queue,
    /// Resume-Queue and Retry-Queue (None when the queue log is off).
    log: Option<(QueueLog, String)>,
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

impl QueueInfo {
    /// This queue as the queue log writes it.
    pub fn row(&self) -> QueueRow {
        QueueRow {
            identity: self.identity.clone(),
            delivery_type: self.delivery_type.clone(),
            status: format!("{:?}", self.status),
            message_count: self.message_count,
            next_hop_domain: self.next_hop_domain.clone(),
            next_hop_category: self.next_hop_category.clone(),
            last_error: self.last_error.clone().unwrap_or_default(),
            next_retry_time: self.next_retry_time.clone().unwrap_or_default(),
        }
    }
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

impl DeliveryQueue {
    pub(super) fn new(number: u32, next_hop: NextHop) -> DeliveryQueue {
        DeliveryQueue {
            number,
            next_hop,
            state: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            cached: Notify::new(),
            cached_waiting: AtomicUsize::new(0),
            log: None,
        }
    }

    /// This queue, writing its events in `log` (Transport's queue log) as `server`'s.
    pub(super) fn logged(mut self, log: Option<(QueueLog, String)>) -> DeliveryQueue {
        self.log = log;
        self
    }

    /// Writes one line of the queue log for this queue (its state now), if it is on.
    pub(super) fn log_event(&self, event: QueueEvent) {
        if let Some((log, server)) = &self.log {
            log.event(chrono::Utc::now(), event, &self.info(server).row());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an item; a retired queue gives it back (`Queues::enqueue` then makes a new
    /// queue for the next hop).
    #[must_use = "a retired queue gives the item back"]
    pub fn push(&self, item: Item) -> Result<(), Item> {
        {
            let mut s = self.lock();
            if s.retired {
                return Err(item);
            }
            s.items.push_back(item);
            s.last_active = Some(Instant::now());
        }
        if self.cached_waiting.load(Ordering::SeqCst) > 0 {
            self.cached.notify_one();
        } else {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// QueueMaxIdleTime (EdgeTransport.exe.config, 3 min): an empty queue with nothing
    /// in flight and no activity for `max_idle` at `now` is retired, and true is
    /// returned. Suspended queues stay as the operator left them; Unreachable and
    /// Poison are never retired (Get-Queue hides them when empty).
    pub(super) fn retire_if_idle(&self, now: Instant, max_idle: std::time::Duration) -> bool {
        if matches!(
            self.next_hop.delivery_type,
            DeliveryType::Unreachable | DeliveryType::Poison
        ) {
            return false;
        }
        let mut s = self.lock();
        let idle = s.items.is_empty()
            && s.in_flight == 0
            && !s.suspended
            && s.last_active
                .is_none_or(|t| now.saturating_duration_since(t) >= max_idle);
        if idle {
            s.retired = true;
            drop(s);
            // Every transmitter waiting for work sees the queue is gone.
            self.notify.notify_waiters();
            self.cached.notify_waiters();
        }
        idle
    }

    pub fn is_retired(&self) -> bool {
        self.lock().retired
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
                if s.retired {
                    return;
                } else if s.suspended {
                    None
                } else if let Some((at, _)) = s.next_retry.filter(|_| s.in_retry(now)) {
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

    /// Removes the waiting items whose message has expired at `now`.
    pub fn take_expired(&self, expiry: &Expiry, now: SystemTime) -> Vec<Item> {
        self.lock().take_expired(expiry, now)
    }

    /// Recipients owed a delay notice at `now`, marked so the notice goes once.
    pub fn take_delay_due(
        &self,
        expiry: &Expiry,
        now: SystemTime,
    ) -> Vec<(Arc<QueuedMessage>, Vec<QueuedRecipient>)> {
        self.lock().take_delay_due(expiry, now)
    }

    /// Get-Message rows for the messages waiting in this queue (in-flight ones are
    /// shown Active).
    pub fn messages(&self, server: &str) -> Vec<MessageInfo> {
        let s = self.lock();
        let status = if s.suspended {
            "Suspended"
        } else if s.in_retry(Instant::now()) {
            "Retry"
        } else {
            "Ready"
        };
        s.items
            .iter()
            .map(|i| {
                let m = &i.message;
                MessageInfo {
                    identity: format!("{}\\{}", self.identity(server), m.id),
                    internal_id: m.id,
                    queue: self.identity(server),
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
        s.last_active = Some(Instant::now());
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
        self.lock()
            .connection_failed(error, policy, Instant::now(), SystemTime::now());
    }

    /// Records an error without putting the queue in Retry (e.g. a queue with no
    /// transmitter yet).
    pub fn set_last_error(&self, error: &str) {
        self.lock().last_error = Some(error.to_string());
    }

    /// Suspend-Queue and Resume-Queue; a change is written in the queue log.
    pub fn set_suspended(&self, suspended: bool) {
        let changed = std::mem::replace(&mut self.lock().suspended, suspended) != suspended;
        self.notify.notify_waiters();
        if changed {
            self.log_event(if suspended {
                QueueEvent::Suspended
            } else {
                QueueEvent::Resumed
            });
        }
    }

    /// Retry-Queue: retry now (only meaningful in Retry). Written in the queue log.
    pub fn retry_now(&self) {
        self.lock().next_retry = None;
        self.notify.notify_waiters();
        self.log_event(QueueEvent::Retried);
    }

    /// Get-Queue's identity: `Server\Unreachable`, `Server\Poison`, or
    /// `Server\<number>` for a delivery queue; messages add `\<id>` (Get-Message).
    pub fn identity(&self, server: &str) -> String {
        match self.next_hop.delivery_type {
            DeliveryType::Unreachable => format!("{server}\\Unreachable"),
            DeliveryType::Poison => format!("{server}\\Poison"),
            _ => format!("{server}\\{}", self.number),
        }
    }

    pub fn info(&self, server: &str) -> QueueInfo {
        let s = self.lock();
        let now = Instant::now();
        let status = s.status(now);
        let (delivery_type, category) = match self.next_hop.delivery_type {
            DeliveryType::Unreachable => ("Unreachable".to_string(), "Internal"),
            DeliveryType::Poison => ("Undefined".to_string(), "Internal"),
            t if t.is_external() => (format!("{t:?}"), "External"),
            t => (format!("{t:?}"), "Internal"),
        };
        QueueInfo {
            identity: self.identity(server),
            delivery_type,
            status,
            message_count: s.items.len() + s.in_flight,
            next_hop_domain: self.next_hop.domain.clone(),
            next_hop_category: category.into(),
            last_error: s.last_error.clone(),
            next_retry_time: s.next_retry.filter(|_| s.in_retry(now)).map(|(_, t)| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .format("%Y-%m-%dT%H:%M:%SZ")
                    .to_string()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::queue::retry::tests::{reference_policy, secs};
    use crate::transport::queue::store;
    use std::time::Duration;

    fn message(id: i64, arrival: SystemTime) -> Arc<QueuedMessage> {
        QueuedMessage::arrived_at(id, arrival)
    }

    fn item(message: Arc<QueuedMessage>, recipients: &[&str]) -> Item {
        Item {
            message,
            recipients: recipients
                .iter()
                .map(|a| QueuedRecipient {
                    address: a.to_string(),
                    orcpt: None,
                    notify: Vec::new(),
                    next_hop: None,
                    state: store::RecipientState::Ready,
                    last_error: None,
                    delay_notified: false,
                })
                .collect(),
            not_before: None,
        }
    }

    fn hop(t: DeliveryType) -> NextHop {
        NextHop {
            delivery_type: t,
            domain: "db01".into(),
            connector: None,
        }
    }

    #[test]
    fn an_idle_queue_retires_after_queue_max_idle_time_and_gives_items_back() {
        let q = DeliveryQueue::new(3, hop(DeliveryType::SmtpDeliveryToMailbox));
        let wall = SystemTime::UNIX_EPOCH + secs(1_000_000);
        assert!(q.push(item(message(1, wall), &["a@x.test"])).is_ok());
        let t0 = Instant::now();
        assert!(
            !q.retire_if_idle(t0 + secs(3600), secs(180)),
            "it holds an item"
        );
        let taken = q.pop().unwrap();
        assert!(
            !q.retire_if_idle(t0 + secs(3600), secs(180)),
            "one in flight"
        );
        drop(taken);
        q.done();
        let done_at = Instant::now();
        assert!(!q.retire_if_idle(done_at + secs(179), secs(180)));
        assert!(q.retire_if_idle(done_at + secs(180), secs(180)));
        assert!(q.is_retired());
        assert!(q.push(item(message(2, wall), &["b@x.test"])).is_err());
        assert_eq!(q.identity("MBX1"), "MBX1\\3");
    }

    #[test]
    fn unreachable_poison_and_suspended_queues_are_never_retired() {
        let later = Instant::now() + secs(3600);
        for t in [DeliveryType::Unreachable, DeliveryType::Poison] {
            let q = DeliveryQueue::new(1, hop(t));
            assert!(!q.retire_if_idle(later, secs(180)), "{t:?}");
        }
        let q = DeliveryQueue::new(2, hop(DeliveryType::SmtpDeliveryToMailbox));
        q.set_suspended(true);
        assert!(!q.retire_if_idle(later, secs(180)));
    }

    /// Suspend-Queue, Resume-Queue and Retry-Queue each write one line of the queue
    /// log with the queue's state after it; suspending a suspended queue writes none.
    #[test]
    fn suspend_resume_and_retry_are_in_the_queue_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), 10 << 20).unwrap();
        let q = DeliveryQueue::new(4, hop(DeliveryType::SmtpDeliveryToMailbox))
            .logged(Some((log.clone(), "MBX2".into())));
        let wall = SystemTime::UNIX_EPOCH + secs(1_000_000);
        assert!(q.push(item(message(7, wall), &["a@x.test"])).is_ok());
        q.set_suspended(true);
        q.set_suspended(true);
        q.set_suspended(false);
        q.retry_now();
        // Unlogged queues write nothing (and need no log).
        DeliveryQueue::new(5, hop(DeliveryType::SmtpDeliveryToMailbox)).set_suspended(true);
        log.flush();
        let text = std::fs::read_to_string(crate::logs::only_file(dir.path())).unwrap();
        let rows: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_once(',').unwrap().1.to_string())
            .collect();
        assert_eq!(
            rows,
            [
                "Suspended,MBX2\\4,SmtpDeliveryToMailbox,Suspended,1,db01,Internal,,",
                "Resumed,MBX2\\4,SmtpDeliveryToMailbox,Ready,1,db01,Internal,,",
                "Retried,MBX2\\4,SmtpDeliveryToMailbox,Ready,1,db01,Internal,,",
            ]
        );
    }

    #[test]
    fn message_identities_name_unreachable_and_poison_by_name() {
        let wall = SystemTime::UNIX_EPOCH + secs(1_000_000);
        for (t, want) in [
            (DeliveryType::Unreachable, "MBX2\\Unreachable\\7"),
            (DeliveryType::Poison, "MBX2\\Poison\\7"),
            (DeliveryType::SmtpDeliveryToMailbox, "MBX2\\4\\7"),
        ] {
            let q = DeliveryQueue::new(4, hop(t));
            assert!(q.push(item(message(7, wall), &["a@x.test"])).is_ok());
            let m = q.messages("MBX2");
            assert_eq!(m[0].identity, want);
            assert_eq!(format!("{}\\7", m[0].queue), want);
        }
    }

    #[test]
    fn connection_failures_climb_the_ladder_on_a_simulated_clock() {
        let p = reference_policy();
        let (t0, wall0) = (Instant::now(), SystemTime::UNIX_EPOCH + secs(1_000_000));
        let mut s = QueueState::default();
        s.items.push_back(item(message(1, wall0), &["a@x.test"]));
        // (seconds after t0 a connection fails, retry count after it, next retry at
        // seconds after t0): a failure while the queue waits for its retry is the same
        // attempt; after the retry time it is the next one.
        let steps = [
            (0, 1, 60),
            (10, 1, 60),
            (59, 1, 60),
            (60, 2, 120),
            (121, 3, 181),
            (200, 4, 260),
            (260, 5, 560),
            (300, 5, 560),
        ];
        for (at, count, next) in steps {
            let now = t0 + secs(at);
            s.connection_failed(format!("failed at {at}"), &p, now, wall0 + secs(at));
            assert_eq!(s.retry_count, count, "failure at {at}s");
            let (next_at, next_wall) = s.next_retry.unwrap();
            assert_eq!(next_at, t0 + secs(next), "failure at {at}s");
            assert_eq!(next_wall, wall0 + secs(next), "failure at {at}s");
            assert_eq!(
                s.last_error.as_deref(),
                Some(format!("failed at {at}").as_str())
            );
            // Nothing leaves the queue until the retry time, then the item is due.
            assert_eq!(s.status(now), QueueStatus::Retry);
            assert_eq!(s.due_item(t0 + secs(next) - Duration::from_millis(1)), None);
            assert_eq!(s.due_item(t0 + secs(next)), Some(0));
            assert_eq!(s.status(t0 + secs(next)), QueueStatus::Ready);
        }
    }

    #[test]
    fn due_items_respect_not_before_suspension_and_in_flight() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut s = QueueState::default();
        let mut later = item(message(1, wall), &["a@x.test"]);
        later.not_before = Some(reference_policy().not_before(0, t0));
        s.items.push_back(later);
        s.items.push_back(item(message(2, wall), &["b@x.test"]));
        // (now, suspended, in flight, due item, status)
        let cases = [
            (t0, false, 0, Some(1), QueueStatus::Ready),
            (t0 + secs(59), false, 1, Some(1), QueueStatus::Active),
            (t0 + secs(60), false, 0, Some(0), QueueStatus::Ready),
            (t0 + secs(60), true, 0, None, QueueStatus::Suspended),
        ];
        for (now, suspended, in_flight, due, status) in cases {
            s.suspended = suspended;
            s.in_flight = in_flight;
            assert_eq!(s.due_item(now), due);
            assert_eq!(s.status(now), status);
        }
    }

    #[test]
    fn the_sweep_takes_expired_items_and_gives_each_delay_notice_once() {
        let e = Expiry {
            expiration: secs(100),
            delay: secs(10),
        };
        let t0 = SystemTime::UNIX_EPOCH + secs(1_000_000);
        let mut s = QueueState::default();
        s.items
            .push_back(item(message(1, t0), &["old@x.test", "old2@x.test"]));
        s.items
            .push_back(item(message(2, t0 + secs(50)), &["new@x.test"]));
        let ids = |v: &[(Arc<QueuedMessage>, Vec<QueuedRecipient>)]| -> Vec<(i64, usize)> {
            v.iter().map(|(m, r)| (m.id, r.len())).collect()
        };
        assert!(s.take_delay_due(&e, t0 + secs(9)).is_empty());
        assert_eq!(ids(&s.take_delay_due(&e, t0 + secs(10))), [(1, 2)]);
        // Once per recipient: the next sweep finds only the newer message.
        assert_eq!(ids(&s.take_delay_due(&e, t0 + secs(60))), [(2, 1)]);
        assert!(s.take_delay_due(&e, t0 + secs(61)).is_empty());
        assert!(s.take_expired(&e, t0 + secs(99)).is_empty());
        let expired = s.take_expired(&e, t0 + secs(100));
        assert_eq!(
            expired.iter().map(|i| i.message.id).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(s.items.len(), 1);
        assert_eq!(s.take_expired(&e, t0 + secs(150)).len(), 1);
        assert!(s.items.is_empty());
    }
}

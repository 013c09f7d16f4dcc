//! Every delivery queue of one server, created on demand per next hop, and the
//! Submission queue's count (Get-Queue). A new queue is announced to whoever starts its
//! transmitter through [`NewQueues`]; queue/ must not import send/.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::delivery_queue::{DeliveryQueue, QueueInfo, QueueStatus};
use super::message::{DeliveryType, Item, NextHop};
use super::store::QueueDb;
use crate::logs::queue::{QueueEvent, QueueLog};

/// All delivery queues of the server, created on demand per next hop.
pub struct Queues {
    pub db: QueueDb,
    server: String,
    inner: Mutex<QueuesInner>,
    /// Messages accepted but not yet categorized (the Submission queue's count).
    pub submission: AtomicUsize,
    /// Starts a transmitter for a new queue (send/'s, given by the Transport service).
    transmitters: Box<dyn NewQueues>,
    /// The queue log (QueueLogPath): queues created and retired, snapshots; None when
    /// it is off.
    log: Option<QueueLog>,
}

/// What is told of each delivery queue [`Queues`] creates: send/'s transmitter, which
/// starts emptying it. queue/ knows nothing more of what it starts.
pub trait NewQueues: Send + Sync {
    /// `queue` was just created.
    fn created(&self, queue: Arc<DeliveryQueue>);
}

struct QueuesInner {
    by_key: HashMap<String, Arc<DeliveryQueue>>,
    next_number: u32,
}

impl Queues {
    pub fn new(db: QueueDb, server: &str, transmitters: Box<dyn NewQueues>) -> Queues {
        Queues {
            db,
            server: server.to_string(),
            inner: Mutex::new(QueuesInner {
                by_key: HashMap::new(),
                next_number: 1,
            }),
            submission: AtomicUsize::new(0),
            transmitters,
            log: None,
        }
    }

    /// These queues, writing their events and snapshots in `log` (Transport's queue
    /// log, None when it is off).
    pub fn logged(mut self, log: Option<QueueLog>) -> Queues {
        self.log = log;
        self
    }

    /// Writes a snapshot of every queue (Get-Queue's view) in the queue log at `now`,
    /// unless nothing changed since the last one. True when a snapshot was written.
    pub fn log_snapshot(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        let Some(log) = &self.log else {
            return false;
        };
        log.snapshot(now, self.list().iter().map(QueueInfo::row).collect())
    }

    /// Whether the queue log is on (its snapshots need a timer).
    pub fn is_logged(&self) -> bool {
        self.log.is_some()
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
                let log = self.log.clone().map(|l| (l, self.server.clone()));
                let q = Arc::new(DeliveryQueue::new(number, next_hop.clone()).logged(log));
                inner.by_key.insert(key, q.clone());
                (q, true)
            }
        };
        if created {
            queue.log_event(QueueEvent::Created);
            self.transmitters.created(queue.clone());
        }
        queue
    }

    /// Starts the transmitters of every queue again, after the Transport service's
    /// tasks stopped (Start-Service MSExchangeTransport).
    /// The poison queue has none: it stays as the operator left it.
    pub fn restart_transmitters(&self) {
        for queue in self.all() {
            if queue.next_hop.delivery_type != super::DeliveryType::Poison {
                self.transmitters.created(queue);
            }
        }
    }

    /// Puts `item` in the queue for `next_hop`. A queue retired for idleness meanwhile
    /// gives it back and a new queue is made for it (a retired queue is out of the map
    /// before it refuses items, so the second try finds a live one).
    pub fn enqueue(&self, next_hop: &NextHop, item: Item) {
        let mut item = item;
        loop {
            match self.queue_for(next_hop).push(item) {
                Ok(()) => return,
                Err(back) => item = back,
            }
        }
    }

    /// Retires `queue` if it has been idle for `max_idle` at `now` (QueueMaxIdleTime)
    /// and takes it out of the set; true when it did. Under the set's lock, so
    /// `queue_for` never hands out a queue being retired.
    pub fn retire_if_idle(
        &self,
        queue: &Arc<DeliveryQueue>,
        now: std::time::Instant,
        max_idle: std::time::Duration,
    ) -> bool {
        let retired = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let key = queue.next_hop.key();
            let current = inner
                .by_key
                .get(&key)
                .is_some_and(|q| Arc::ptr_eq(q, queue));
            let retired = current && queue.retire_if_idle(now, max_idle);
            if retired {
                inner.by_key.remove(&key);
            }
            retired
        };
        if retired {
            queue.log_event(QueueEvent::Retired);
        }
        retired
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

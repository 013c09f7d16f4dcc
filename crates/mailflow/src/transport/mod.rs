//! The Transport service (DESIGN §1, reference §3): the only service with a queue.
//! SMTP Receive on `Default <server>` → Submission queue (durable) → categorizer →
//! one delivery queue per next hop → SMTP Send through the implicit
//! `Intra-Organization SMTP Send Connector`.

pub mod agents;
pub mod categorizer;
pub mod context;
pub mod pickup;
pub mod queue;
pub mod receive;
pub mod routing;
pub mod send;
pub mod supervisor;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use crate::logs::tracking::TrackingEvent;
use crate::transport::context::TransportContext;
use queue::store::{Loaded, QueueDb, QueuedRecipient, RecipientState};
use queue::{Item, QueuedMessage, Queues, RetryPolicy};
use supervisor::POISON_THRESHOLD;

/// Which message the categorizer is working on, in a file beside the queue database:
/// after a crash, the next start knows which message was in hand. Written without
/// fsync: a process crash keeps the page cache, and only process crashes are counted.
/// The file stays open and is overwritten in place with a fixed-width number: it is
/// written twice per message, and truncating and rewriting a file makes ext4 flush it
/// (auto_da_alloc), which once cost an eighth of the server's time.
pub struct PoisonMarker {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl PoisonMarker {
    fn open(path: std::path::PathBuf) -> PoisonMarker {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| tracing::warn!("cannot open {}: {e}", path.display()))
            .ok();
        PoisonMarker { path, file }
    }

    fn read(&self) -> Option<i64> {
        std::fs::read_to_string(&self.path)
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|&id| id > 0)
    }

    fn set(&self, id: i64) {
        use std::os::unix::fs::FileExt;
        if let Some(f) = &self.file {
            // 20 digits hold any i64; the newline keeps the file readable.
            let _ = f.write_all_at(format!("{id:>20}\n").as_bytes(), 0);
        }
    }
}

/// Writes a snapshot of the queues in the queue log every `queue_log_interval` (read
/// at each pass, so a reload applies), until the service stops.
async fn queue_log_snapshots(service: Arc<TransportService>) {
    loop {
        let every = service.ctx.dir().transport().queue_log_interval;
        tokio::select! {
            _ = tokio::time::sleep(every.max(std::time::Duration::from_millis(100))) => {}
            _ = service.stopping() => return,
        }
        service.queues.log_snapshot(chrono::Utc::now());
    }
}

/// A running Transport service.
pub struct TransportService {
    pub ctx: Arc<TransportContext>,
    pub queues: Arc<Queues>,
    submit_tx: mpsc::UnboundedSender<Submission>,
    dsn: send::dsn::DsnSubmitter,
    poison_marker: PoisonMarker,
    retry: RetryPolicy,
    /// Every task this service spawns, and their stop signal (`stop`, `stopped`).
    tasks: supervisor::Tasks,
    /// The Submission queue's receiving end: the categorizer holds it while it runs,
    /// and the next run's categorizer takes it up after a stop (what waits in it is in
    /// the queue database too).
    submissions: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Submission>>>,
}

/// Messages read from the queue database at start, waiting for
/// [`TransportService::resume`].
pub struct Resume(Vec<Loaded>);

/// An entry of the Submission queue.
pub struct Submission {
    pub message: Arc<QueuedMessage>,
    pub recipients: Vec<QueuedRecipient>,
    pub origin: Origin,
}

/// How an entry came to the Submission queue; it decides whether the entry is in the
/// queue's message count, whether its recipients are new to the message, and when
/// they may be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A new message from SMTP Receive or Pickup (or resumed at start): counted in the
    /// Submission queue's message count.
    Received,
    /// A DSN this server generated: a new message, not counted.
    Report,
    /// Recipients coming back from a delivery queue (a reroute reply): already counted
    /// in the message's pending recipients, they keep the message's other recipients
    /// and wait a glitch-retry interval before their next attempt.
    Rerouted,
    /// Recipients sent back through the categorizer by a reload: like a reroute, but
    /// tried at once.
    Resubmitted,
    /// Deferred after the categorizer panicked on it, back after a glitch-retry
    /// interval: counted while it waits, and otherwise as it came the first time.
    Deferred(Box<Origin>),
}

impl Origin {
    /// Counted in the Submission queue's message count while it waits there.
    pub fn counted(&self) -> bool {
        matches!(self, Origin::Received | Origin::Deferred(_))
    }

    /// Its recipients are already counted in the message's pending recipients (and
    /// the message has others): they were through the agents before.
    pub fn rerouted(&self) -> bool {
        match self {
            Origin::Rerouted | Origin::Resubmitted => true,
            Origin::Received | Origin::Report => false,
            Origin::Deferred(first) => first.rerouted(),
        }
    }

    /// Its recipients wait a glitch-retry interval before their next attempt.
    pub fn held(&self) -> bool {
        match self {
            Origin::Rerouted => true,
            Origin::Received | Origin::Report | Origin::Resubmitted => false,
            Origin::Deferred(first) => first.held(),
        }
    }

    /// The same entry deferred after a categorizer panic.
    pub fn deferred(self) -> Origin {
        match self {
            Origin::Deferred(first) => Origin::Deferred(first),
            first => Origin::Deferred(Box::new(first)),
        }
    }
}

/// Puts recipients back through the categorizer (reroute after a switchover).
#[derive(Clone)]
pub struct Resubmitter(mpsc::UnboundedSender<Submission>);

impl Resubmitter {
    pub fn resubmit(&self, message: Arc<QueuedMessage>, recipients: Vec<QueuedRecipient>) {
        let _ = self.0.send(Submission {
            message,
            recipients,
            origin: Origin::Rerouted,
        });
    }
}

impl TransportService {
    /// Opens the queue database and starts the categorizer. What the database holds is
    /// handed back with the service and goes to the queues only at [`Self::resume`],
    /// once the server's listeners are bound: resumed mail must not meet its own
    /// server's Mailbox Delivery not yet listening and wait a retry interval.
    pub fn start(ctx: Arc<TransportContext>) -> anyhow::Result<(Arc<TransportService>, Resume)> {
        let (db, loaded) = QueueDb::open(&ctx.data_dir().join("Queue").join("mail.db"))?;
        let policy = retry_policy(&ctx);
        let (submit_tx, submit_rx) = mpsc::unbounded_channel();
        let dsn = send::dsn::DsnSubmitter {
            ctx: ctx.clone(),
            db: db.clone(),
            submit: submit_tx.clone(),
        };
        let dns = Arc::new(crate::net::dns::Dns::new(
            &ctx.dir().transport().external_dns_servers,
        )?);
        let outbound = Arc::new(tokio::sync::Semaphore::new(
            ctx.dir().transport().max_outbound_connections.max(1),
        ));
        let tasks = supervisor::Tasks::default();
        // The transmitters park poison messages in a queue of the set they serve.
        let queues = Arc::new_cyclic(|queues| {
            let transmitter = send::Transmitter {
                ctx: ctx.clone(),
                db: db.clone(),
                policy,
                resubmit: Resubmitter(submit_tx.clone()),
                dsn: dsn.clone(),
                dns,
                outbound,
                runtime: tokio::runtime::Handle::current(),
                queues: queues.clone(),
                tasks: tasks.clone(),
            };
            Queues::new(db, ctx.name(), Box::new(transmitter)).logged(ctx.logs.queue.clone())
        });
        let service = Arc::new(TransportService {
            ctx: ctx.clone(),
            queues,
            submit_tx,
            dsn,
            poison_marker: PoisonMarker::open(ctx.data_dir().join("Queue").join("categorizing")),
            retry: retry_policy(&ctx),
            tasks,
            submissions: Arc::new(tokio::sync::Mutex::new(submit_rx)),
        });
        // It stops between messages (stopping mid-message would count a crash against
        // the message: the poison marker).
        service.spawn_categorizer();
        Ok((service, Resume(loaded)))
    }

    /// Starts the service again after [`Self::stop`] and [`Self::stopped`]
    /// (Start-Service MSExchangeTransport): the transmitters and sweeper of every
    /// delivery queue, then the categorizer, so what stayed queued moves again. Call it
    /// inside the runtime the categorizer runs on (the transmitters keep their own).
    pub fn restart(self: &Arc<Self>) {
        self.tasks.restart();
        self.queues.restart_transmitters();
        self.spawn_categorizer();
    }

    /// The categorizer, and the queue log's snapshots when the queue log is on: the
    /// tasks that run while the service runs, besides the queues' own.
    fn spawn_categorizer(self: &Arc<Self>) {
        self.spawn(categorizer::pipeline::categorizer_loop(self.clone()));
        if self.queues.is_logged() {
            self.spawn(queue_log_snapshots(self.clone()));
        }
    }

    /// Whether the service's tasks are stopped or stopping (Stop-Service).
    pub fn is_stopped(&self) -> bool {
        self.tasks.is_stopping()
    }

    /// Spawns `task` on the current runtime, owned by this service (stopped by
    /// [`Self::stop`], awaited by [`Self::stopped`]).
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .spawn_on(&tokio::runtime::Handle::current(), task);
    }

    /// Resolves once the service is stopping (for its tasks' waits).
    pub async fn stopping(&self) {
        self.tasks.stopping().await
    }

    /// Tells every task of the service to stop at its next waiting point: the
    /// categorizer between messages, each transmitter between messages, the sweepers
    /// between sweeps. Called by `server.rs` once the listeners are closed.
    pub fn stop(&self) {
        self.tasks.stop();
    }

    /// Resolves when every task of the service has ended (after [`Self::stop`]).
    pub async fn stopped(&self) {
        self.tasks.stopped().await
    }

    /// Resumes the queues with what the queue database held at start: uncategorized
    /// messages go back to the categorizer, the rest to their delivery queues (routing
    /// is redone: the configuration may have changed). A message the server died on
    /// while categorizing counts a crash; at PoisonThreshold (2, reference §3.3) it is
    /// parked in the poison queue. Called once every listener of the server is bound.
    pub fn resume(self: &Arc<Self>, Resume(loaded): Resume) {
        let (ctx, queues) = (&self.ctx, &self.queues);
        let crashed = self.poison_marker.read();
        let count = loaded.len();
        for mut m in loaded {
            let pending: Vec<QueuedRecipient> = m
                .recipients
                .into_iter()
                .filter(|r| matches!(r.state, RecipientState::Submitted | RecipientState::Ready))
                .collect();
            if pending.is_empty() {
                queues.db.delete(m.id);
                continue;
            }
            if crashed == Some(m.id) || m.envelope.crash_count >= POISON_THRESHOLD {
                if crashed == Some(m.id) {
                    m.envelope.crash_count += 1;
                    queues.db.update_envelope(m.id, m.envelope.clone());
                }
                if m.envelope.crash_count >= POISON_THRESHOLD {
                    let msg = QueuedMessage::new(m.id, m.envelope, m.content);
                    msg.add_pending(pending.len());
                    let why = format!(
                        "crashed or panicked the server {} times",
                        msg.envelope.crash_count
                    );
                    supervisor::park_in_poison(ctx, queues, msg, pending, why);
                    continue;
                }
            }
            let msg = QueuedMessage::new(m.id, m.envelope, m.content);
            if crashed == Some(msg.id) {
                // The crash count must be on disk before the message is tried again,
                // or a second crash would forget the first.
                let (service, db) = (self.clone(), queues.db.clone());
                // One-shot, bounded by one queue database barrier.
                self.spawn(async move {
                    db.barrier().await;
                    service.submit(msg, pending);
                });
                continue;
            }
            self.submit(msg, pending);
        }
        if count > 0 {
            tracing::info!(count, "resumed messages from the queue database");
        }
    }

    /// Follows Active Manager: each time the active copies change (a switchover or a
    /// failover), the routing table is written again and every queue retried at once,
    /// so queued mail follows the new active copy. Ends when Active Manager is dropped;
    /// server.rs owns the task.
    pub async fn follow_active_copies(self: Arc<Self>) {
        let mut active = self.ctx.active.clone();
        while active.changed().await.is_ok() {
            routing::log_routing_table(&self.ctx);
            for q in self.queues.all() {
                q.retry_now();
            }
        }
    }

    /// After the organisation file was read again (`LiveDirectory::reload`): writes the
    /// new routing table, and routes again what waits on routing: the Unreachable queue
    /// and the queues of send connectors go back through the categorizer (a connector
    /// may have been added, removed or re-priced); every other queue is retried now, so
    /// changed sites, links and copies are used at once. Suspended queues stay as the
    /// operator left them. `restart` is what changed that needs a restart (logged).
    pub fn reloaded(&self, restart: &[String]) {
        let ctx = &self.ctx;
        routing::log_routing_table(ctx);
        let mut rerouted = 0;
        for queue in self.queues.all() {
            let t = queue.next_hop.delivery_type;
            if t == queue::DeliveryType::Poison || queue.is_suspended() {
                continue;
            }
            if t == queue::DeliveryType::Unreachable || t.is_external() {
                for item in queue.take_all() {
                    rerouted += 1;
                    let _ = self.submit_tx.send(Submission {
                        message: item.message,
                        recipients: item.recipients,
                        origin: Origin::Resubmitted,
                    });
                }
            }
            queue.retry_now();
        }
        tracing::info!(rerouted, "organisation file reloaded");
        if !restart.is_empty() {
            tracing::warn!(
                "changed in the organisation file but applied only at the next start: {}",
                restart.join("; ")
            );
        }
    }

    /// Remove-Message for one queue item: the recipients fail with an administrator's
    /// reason, with an NDR unless asked otherwise.
    pub async fn remove_item(&self, item: Item, with_ndr: bool) {
        let ctx = &self.ctx;
        let msg = &item.message;
        let reply = mailflow_smtp::replies::deleted_by_administrator();
        let mut ev = tracking_event(ctx, msg, "FAIL", "ADMIN");
        ev.recipient_address = item.recipients.iter().map(|r| r.address.clone()).collect();
        ev.recipient_status = vec![reply.one_line()];
        ctx.logs.tracking.log(ev);
        self.queues.db.update_recipients(
            msg.id,
            item.recipients
                .iter()
                .map(|r| {
                    (
                        r.address.clone(),
                        RecipientState::Failed,
                        Some(reply.one_line()),
                    )
                })
                .collect(),
        );
        if with_ndr {
            let list = item
                .recipients
                .iter()
                .map(|r| {
                    (
                        r.clone(),
                        send::dsn::DsnRecipient::from_reply(r, &reply, None),
                    )
                })
                .collect();
            self.dsn.report(send::dsn::DsnKind::Failed, msg, list).await;
        }
        if msg.finish(item.recipients.len()) {
            self.queues.db.delete(msg.id);
        }
    }

    /// Submits a message made on this server (Pickup, Replay): durable in the queue
    /// database first, then to the categorizer; RECEIVE is logged with `source`.
    pub async fn submit_local(
        &self,
        from: String,
        content: Vec<u8>,
        recipients: Vec<QueuedRecipient>,
        source: &str,
    ) -> Result<(), String> {
        let mut envelope = pickup::envelope(from, &content, source);
        // An administrator wrote these files: inside the organisation (Exchange stamps
        // Pickup mail as authenticated).
        let content = crate::message::AuthAs::unstamped(content);
        // The id travels in the header too, so every hop (and the store's duplicate
        // detection) sees the same message.
        let mut with_id = format!(
            "{}: {}\r\n{}",
            crate::message::NETWORK_MESSAGE_ID_HEADER,
            envelope.network_message_id,
            crate::message::AuthAs::Internal.header_line()
        )
        .into_bytes();
        with_id.extend_from_slice(&content);
        let content: Arc<[u8]> = with_id.into();
        envelope.subject = crate::message::subject(&content);
        let id = self
            .queues
            .db
            .insert(envelope.clone(), content.clone(), recipients.clone())
            .await?;
        let msg = QueuedMessage::new(id, envelope, content);
        let mut ev = tracking_event(&self.ctx, &msg, "RECEIVE", source);
        ev.recipient_address = recipients.iter().map(|r| r.address.clone()).collect();
        self.ctx.logs.tracking.log(ev);
        self.submit(msg, recipients);
        Ok(())
    }

    /// Hands an accepted (durable) message to the categorizer via the Submission queue.
    pub fn submit(&self, msg: Arc<QueuedMessage>, recipients: Vec<QueuedRecipient>) {
        self.queues.submission.fetch_add(1, Ordering::Relaxed);
        let _ = self.submit_tx.send(Submission {
            message: msg,
            recipients,
            origin: Origin::Received,
        });
    }
}

fn retry_policy(ctx: &TransportContext) -> RetryPolicy {
    let dir = ctx.dir();
    let t = dir.transport();
    RetryPolicy {
        glitch_count: t.queue_glitch_retry_count,
        glitch_interval: t.queue_glitch_retry_interval,
        transient_count: t.transient_failure_retry_count,
        transient_interval: t.transient_failure_retry_interval,
        failure_interval: t.outbound_connection_failure_retry_interval,
    }
}

/// The tracking event every Transport row starts from.
pub fn tracking_event(
    ctx: &TransportContext,
    msg: &QueuedMessage,
    event_id: &str,
    source: &str,
) -> TrackingEvent {
    let e = &msg.envelope;
    TrackingEvent {
        server_ip: ctx.ip().to_string(),
        // Exchange writes its own server's name short, a peer's as its FQDN (seed 003).
        server_hostname: ctx.name().to_string(),
        source: source.into(),
        event_id: event_id.into(),
        internal_message_id: msg.id.to_string(),
        message_id: e.message_id.clone(),
        network_message_id: e.network_message_id.clone(),
        total_bytes: msg.content.len() as u64,
        message_subject: e.subject.clone(),
        sender_address: e.sender_header.clone(),
        return_path: if e.return_path.is_empty() {
            "<>".into()
        } else {
            e.return_path.clone()
        },
        message_info: e.received_at.clone(),
        directionality: e.directionality.clone(),
        transport_traffic_type: "Email".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::Origin;

    #[test]
    fn each_origin_says_how_it_is_counted_and_held() {
        // (origin, counted, rerouted, held)
        let cases = [
            (Origin::Received, true, false, false),
            (Origin::Report, false, false, false),
            (Origin::Rerouted, false, true, true),
            (Origin::Resubmitted, false, true, false),
            (Origin::Received.deferred(), true, false, false),
            (Origin::Report.deferred(), true, false, false),
            (Origin::Rerouted.deferred(), true, true, true),
            (Origin::Resubmitted.deferred(), true, true, false),
        ];
        for (origin, counted, rerouted, held) in cases {
            assert_eq!(origin.counted(), counted, "{origin:?}");
            assert_eq!(origin.rerouted(), rerouted, "{origin:?}");
            assert_eq!(origin.held(), held, "{origin:?}");
        }
    }

    #[test]
    fn a_second_deferral_keeps_the_first_origin() {
        let twice = Origin::Rerouted.deferred().deferred();
        assert_eq!(twice, Origin::Deferred(Box::new(Origin::Rerouted)));
    }
}

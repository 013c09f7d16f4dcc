//! Supervision of the Transport service's tasks (DESIGN §7): a panic while handling one
//! message never stops anything else. The categorizer and each delivery queue's
//! transmitters catch a panic per message; the message is deferred and counted toward
//! the poison queue, exactly as a process crash while categorizing is (reference §3.3,
//! PoisonThreshold 2), and at the threshold it is parked there. A task that panics
//! outside a message is replaced. This module imports only the Transport's queues and
//! the tracking log writer.

use std::any::Any;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use super::queue::store::{QueueDb, QueuedRecipient};
use super::queue::{Item, NextHop, QueuedMessage, Queues};
use super::tracking_event;
use crate::transport::context::TransportContext;

/// PoisonThreshold (reference §3.3, §6): crashes before a message is parked.
pub const POISON_THRESHOLD: u32 = 2;

/// How long a task that panicked outside any message waits before it is replaced, so a
/// task that fails at once cannot spin.
const REPLACE_AFTER: Duration = Duration::from_secs(1);

/// The text of a caught panic, for the operator's log.
pub fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The owner of every task the Transport service spawns — the categorizer, each
/// delivery queue's transmitters and sweeper, one-shot resubmissions — and their stop
/// signal. `TransportService::stop` cancels it; the tasks end at their next waiting
/// point (never in the middle of a message), and `server.rs` awaits them before it
/// closes the queue database. Clones share one run: after [`Tasks::restart`]
/// (Start-Service MSExchangeTransport) every clone spawns into, and stops, the new one.
#[derive(Clone, Default)]
pub struct Tasks {
    run: Arc<std::sync::Mutex<Run>>,
}

/// One run of the service, from its start to its stop.
#[derive(Clone, Default)]
struct Run {
    tracker: tokio_util::task::TaskTracker,
    stop: tokio_util::sync::CancellationToken,
}

impl Tasks {
    fn current(&self) -> Run {
        self.run.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Spawns `task` on `runtime`, owned here.
    pub fn spawn_on<F>(&self, runtime: &tokio::runtime::Handle, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.current().tracker.spawn_on(task, runtime);
    }

    /// Resolves once the service is stopping: every task's waits select on it.
    pub async fn stopping(&self) {
        let stop = self.current().stop;
        stop.cancelled().await
    }

    pub fn is_stopping(&self) -> bool {
        self.current().stop.is_cancelled()
    }

    /// Tells every task to stop at its next waiting point; no new task is counted as
    /// running after this for [`Tasks::stopped`].
    pub fn stop(&self) {
        let run = self.current();
        run.stop.cancel();
        run.tracker.close();
    }

    /// Resolves when every task spawned here has ended.
    pub async fn stopped(&self) {
        let tracker = self.current().tracker;
        tracker.wait().await
    }

    /// A new run after [`Tasks::stop`]: tasks spawned from now on are owned by it and
    /// run until the next stop. The caller makes sure the old run's tasks have ended.
    pub fn restart(&self) {
        *self.run.lock().unwrap_or_else(|p| p.into_inner()) = Run::default();
    }
}

/// Runs the task `make` builds on `runtime`, and builds and runs a new one each time a
/// task panics (logged as an error). Returns when a task ends normally, or when
/// `tasks` stops. Owned by `tasks`.
pub fn spawn_supervised<F, Fut>(
    tasks: &Tasks,
    runtime: &tokio::runtime::Handle,
    what: String,
    make: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt = runtime.clone();
    let owner = tasks.clone();
    tasks.spawn_on(runtime, async move {
        loop {
            match rt.spawn(make()).await {
                Err(e) if e.is_panic() && !owner.is_stopping() => {
                    let panic = e.into_panic();
                    tracing::error!(
                        "{what} panicked ({}); replacing it",
                        panic_text(panic.as_ref())
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(REPLACE_AFTER) => {}
                        _ = owner.stopping() => return,
                    }
                }
                _ => return,
            }
        }
    });
}

/// Counts one more crash against `msg` and writes the count to the queue database, so
/// a process crash afterwards does not forget it (at start, a message whose count
/// reached the threshold is parked again). Returns the new count.
pub fn record_crash(db: &QueueDb, msg: &QueuedMessage) -> u32 {
    let count = msg.record_crash();
    let mut envelope = msg.envelope.clone();
    envelope.crash_count = count;
    db.update_envelope(msg.id, envelope);
    count
}

/// Parks recipients of `msg` in the poison queue (reference §3.3: never retried or
/// expired automatically): a POISONMESSAGE tracking event whose source context says
/// `why`, and an error for the operator.
pub fn park_in_poison(
    ctx: &TransportContext,
    queues: &Queues,
    msg: Arc<QueuedMessage>,
    recipients: Vec<QueuedRecipient>,
    why: String,
) {
    let mut ev = tracking_event(ctx, &msg, "POISONMESSAGE", "POISONMESSAGE");
    ev.recipient_address = recipients.iter().map(|r| r.address.clone()).collect();
    ev.source_context = why.clone();
    ctx.logs.tracking.log(ev);
    tracing::error!(id = msg.id, "message parked in the poison queue: {why}");
    queues.enqueue(
        &NextHop::poison(),
        Item {
            message: msg,
            recipients,
            not_before: None,
        },
    );
}

/// Where the test hooks can make handling panic.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    Categorizing,
    Delivering,
    Receiving,
}

/// Test hook (fault injection for the supervision tests, never set in production):
/// panics while handling a message whose subject starts with the value of
/// `MAILFLOW_TEST_PANIC_IN_CATEGORIZER_ON_SUBJECT` (in the categorizer) or
/// `MAILFLOW_TEST_PANIC_IN_DELIVERY_ON_SUBJECT` (in SMTP Send, before the message is
/// sent), or `MAILFLOW_TEST_PANIC_IN_RECEIVE_ON_SUBJECT` (in SMTP Receive, before the
/// message is queued). Read once: the check is on every message's path.
pub fn test_panic_hook(stage: Stage, subject: &str) {
    static HOOKS: LazyLock<[Option<String>; 3]> = LazyLock::new(|| {
        let var = |name| std::env::var(name).ok().filter(|s| !s.is_empty());
        [
            var("MAILFLOW_TEST_PANIC_IN_CATEGORIZER_ON_SUBJECT"),
            var("MAILFLOW_TEST_PANIC_IN_DELIVERY_ON_SUBJECT"),
            var("MAILFLOW_TEST_PANIC_IN_RECEIVE_ON_SUBJECT"),
        ]
    });
    if let Some(prefix) = &HOOKS[stage as usize]
        && subject.starts_with(prefix.as_str())
    {
        panic!("test hook: panic while {stage:?} a message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that runs until its run stops, counting itself in `alive`.
    fn waiter(tasks: &Tasks, alive: &Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        let (owner, alive) = (tasks.clone(), alive.clone());
        alive.fetch_add(1, Ordering::SeqCst);
        tasks.spawn_on(&tokio::runtime::Handle::current(), async move {
            owner.stopping().await;
            alive.fetch_sub(1, Ordering::SeqCst);
        });
    }

    #[tokio::test]
    async fn a_restarted_run_owns_new_tasks_and_every_clone_stops_it() {
        use std::sync::atomic::Ordering;
        let tasks = Tasks::default();
        let clone = tasks.clone();
        let alive = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        waiter(&tasks, &alive);
        tasks.stop();
        tokio::time::timeout(Duration::from_secs(5), tasks.stopped())
            .await
            .expect("the first run's task ends at the stop");
        assert_eq!(alive.load(Ordering::SeqCst), 0);
        assert!(clone.is_stopping());

        tasks.restart();
        assert!(!clone.is_stopping(), "a clone sees the new run");
        // Spawned through the clone (as the transmitters do): owned by the new run.
        waiter(&clone, &alive);
        tokio::task::yield_now().await;
        assert_eq!(alive.load(Ordering::SeqCst), 1);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), tasks.stopped())
                .await
                .is_err(),
            "the new run's task keeps running until its stop"
        );
        clone.stop();
        tokio::time::timeout(Duration::from_secs(5), tasks.stopped())
            .await
            .expect("the second run's task ends at the stop through a clone");
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }
}

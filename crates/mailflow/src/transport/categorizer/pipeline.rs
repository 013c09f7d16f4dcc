//! The categorizer's loop: takes one message at a time from the Submission queue,
//! categorizes it (`super::categorize`), runs the OnResolvedMessage agents, and hands
//! the message to its delivery queues (reference §3.1). It reaches the queues and
//! DSNs through the `TransportService`; it must not import SMTP Receive, Pickup or a
//! mailbox store.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::FutureExt;
use tokio::sync::mpsc;

use crate::transport::queue::store::{QueuedRecipient, RecipientState};
use crate::transport::queue::{Item, QueuedMessage};
use crate::transport::supervisor::{self, POISON_THRESHOLD, Stage};
use crate::transport::{Submission, TransportService, agents, categorizer, send, tracking_event};

/// Takes one message at a time from the Submission queue (reference §3.1). A panic
/// while handling one is caught here (DESIGN §7): the loop goes on with the next.
pub(crate) async fn categorizer_loop(
    service: Arc<TransportService>,
    mut rx: mpsc::UnboundedReceiver<Submission>,
) {
    while let Some(submission) = rx.recv().await {
        if submission.counted {
            service.queues.submission.fetch_sub(1, Ordering::Relaxed);
        }
        // What is needed to defer the message if its handling panics.
        let salvage = Submission {
            message: submission.message.clone(),
            recipients: submission.recipients.clone(),
            counted: false,
            ..submission
        };
        let handled = std::panic::AssertUnwindSafe(categorize_one(&service, submission))
            .catch_unwind()
            .await;
        if let Err(panic) = handled {
            service.poison_marker.set(0);
            service.categorizer_panicked(salvage, supervisor::panic_text(panic.as_ref()));
        }
    }
}

impl TransportService {
    /// A panic while categorizing: the message counts a crash; below PoisonThreshold it
    /// is deferred (DEFER) and goes through the categorizer again after a glitch-retry
    /// interval, at the threshold it is parked in the poison queue.
    fn categorizer_panicked(self: &Arc<Self>, submission: Submission, panic: &str) {
        let ctx = &self.ctx;
        let msg = submission.message.clone();
        let crashes = supervisor::record_crash(&self.queues.db, &msg);
        tracing::error!(
            id = msg.id,
            crashes,
            "the categorizer panicked on a message ({panic}); the categorizer goes on"
        );
        if crashes >= POISON_THRESHOLD {
            if !submission.resubmit {
                // Rerouted recipients are counted already; new ones enter the queue.
                msg.add_pending(submission.recipients.len());
            }
            let why = format!("the categorizer panicked on it {crashes} times");
            supervisor::park_in_poison(ctx, &self.queues, msg, submission.recipients, why);
            return;
        }
        let mut ev = tracking_event(ctx, &msg, "DEFER", "ROUTING");
        ev.recipient_address = submission
            .recipients
            .iter()
            .map(|r| r.address.clone())
            .collect();
        ev.source_context = format!(
            "categorizer panicked (crash {crashes} of PoisonThreshold {POISON_THRESHOLD}); deferred"
        );
        ctx.logs.tracking.log(ev);
        // Counted in the Submission queue while it waits, so Get-Queue shows it.
        self.queues.submission.fetch_add(1, Ordering::Relaxed);
        let delay = self.retry.interval(crashes - 1);
        let submit = self.submit_tx.clone();
        // One-shot, bounded by the retry interval; the message stays in the queue
        // database, so a shutdown meanwhile loses nothing.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = submit.send(Submission {
                counted: true,
                ..submission
            });
        });
    }
}

/// Categorizes one message of the Submission queue and hands it to its delivery queues.
async fn categorize_one(service: &Arc<TransportService>, submission: Submission) {
    let ctx = &service.ctx;
    let Submission {
        message: msg,
        recipients,
        resubmit,
        hold,
        counted: _,
    } = submission;
    let consumed = if resubmit { recipients.len() } else { 0 };
    service.poison_marker.set(msg.id);
    // Fault injection for the poison-queue test: a message that kills the server.
    if std::env::var("MAILFLOW_TEST_ABORT_ON_SUBJECT")
        .is_ok_and(|s| !s.is_empty() && msg.envelope.subject == s)
    {
        std::process::abort();
    }
    supervisor::test_panic_hook(Stage::Categorizing, &msg.envelope.subject);
    let auth = crate::message::AuthAs::of(&msg.content);
    let mut result = categorizer::categorize(ctx, recipients, msg.content.len() as u64, auth);
    service.poison_marker.set(0);
    for (resolved, original) in &result.resolved {
        let mut ev = tracking_event(ctx, &msg, "RESOLVE", "ROUTING");
        ev.recipient_address = vec![resolved.clone()];
        ev.related_recipient_address = original.clone();
        ctx.logs.tracking.log(ev);
    }
    for (group, members) in &result.expanded {
        let mut ev = tracking_event(ctx, &msg, "EXPAND", "ROUTING");
        ev.recipient_address = members.clone();
        ev.related_recipient_address = group.clone();
        ctx.logs.tracking.log(ev);
    }
    // OnResolvedMessage: the Transport Rule agent (reference §9.3, §10). Rerouted
    // recipients were through it already; reports (null sender) are not subject to
    // rules, so a rule can never bounce its own NDR.
    let mut msg = msg;
    if !resubmit && !msg.envelope.return_path.is_empty() {
        match apply_rules(service, &msg, auth, &mut result).await {
            RulesVerdict::Continue(Some(content)) => {
                msg = msg.with_content(content.into());
            }
            RulesVerdict::Continue(None) => {}
            RulesVerdict::Done => return,
        }
    }
    let mut all: Vec<QueuedRecipient> = Vec::new();
    for (r, reply) in &result.failed {
        let mut ev = tracking_event(ctx, &msg, "FAIL", "ROUTING");
        ev.recipient_address = vec![r.address.clone()];
        ev.recipient_status = vec![reply.one_line()];
        ctx.logs.tracking.log(ev);
        all.push(r.clone());
    }
    if !result.failed.is_empty() {
        let list = result
            .failed
            .iter()
            .map(|(r, reply)| {
                (
                    r.clone(),
                    send::dsn::DsnRecipient::from_reply(r, reply, None),
                )
            })
            .collect();
        service
            .dsn
            .report(send::dsn::DsnKind::Failed, &msg, list)
            .await;
    }
    let routed: usize = result.routed.iter().map(|(_, r)| r.len()).sum();
    for (_, rs) in &result.routed {
        all.extend(rs.iter().cloned());
    }
    if resubmit {
        // Only these recipients change; the message's others stay as they are.
        service.queues.db.upsert_recipients(msg.id, all);
    } else {
        service.queues.db.categorized(msg.id, all);
    }
    // Add before subtracting, so the count cannot touch zero while recipients of
    // this message are still to be delivered.
    msg.add_pending(routed);
    // Rerouted recipients wait a glitch-retry interval: if the servers disagree
    // about the active copy, mail must not bounce between them at full speed.
    let not_before = hold.then(|| service.retry.not_before(0, std::time::Instant::now()));
    for (hop, recipients) in result.routed {
        let queue = service.queues.queue_for(&hop);
        queue.push(Item {
            message: msg.clone(),
            recipients,
            not_before,
        });
    }
    if routed == 0 && consumed == 0 && !resubmit {
        // Every recipient failed: nothing to deliver (NDRs arrive with outbound DSNs).
        service.queues.db.delete(msg.id);
    } else if msg.finish(consumed) {
        service.queues.db.delete(msg.id);
    }
}

enum RulesVerdict {
    /// Go on, with new content if the rules edited it.
    Continue(Option<Vec<u8>>),
    /// The rules rejected or deleted the message; it is finished.
    Done,
}

/// Runs the mail flow rules over a resolved message; logs AGENTINFO (and DROP or FAIL
/// for delete and reject actions).
async fn apply_rules(
    service: &TransportService,
    msg: &Arc<QueuedMessage>,
    auth: crate::message::AuthAs,
    result: &mut categorizer::Categorized,
) -> RulesVerdict {
    let ctx = &service.ctx;
    // The agent runs for every message, rules or not, and says so (AGENTINFO).
    let recipients: Vec<String> = result
        .routed
        .iter()
        .flat_map(|(_, rs)| rs.iter().map(|r| r.address.clone()))
        .collect();
    // SenderAddressLocation defaults to Header: the From/Sender address.
    let sender = if msg.envelope.sender_header.is_empty() {
        &msg.envelope.return_path
    } else {
        &msg.envelope.sender_header
    };
    let started = std::time::Instant::now();
    let cfg = ctx.config();
    let outcome = agents::rules::apply(
        &cfg.rules,
        &cfg.dir,
        auth,
        sender,
        &recipients,
        &msg.content,
    );
    let mut ev = tracking_event(ctx, msg, "AGENTINFO", "AGENT");
    // Exchange leaves connector-id empty on AGENTINFO and names the agent in
    // source-context (seed 003).
    ev.source_context = "Transport Rule Agent".into();
    ev.recipient_address = recipients.clone();
    let mut custom = vec![format!(
        "S:TRA=ETRP|ETR={}|EM={}|ETMS={}",
        outcome.evaluated,
        outcome.matched.len(),
        started.elapsed().as_millis()
    )];
    custom.extend(
        outcome
            .matched
            .iter()
            .map(|(name, mode)| format!("S:TRA=ETRI|rule={name}|mode={mode}")),
    );
    ev.custom_data = custom.join(";");
    ctx.logs.tracking.log(ev);
    let every: Vec<QueuedRecipient> = result
        .routed
        .iter()
        .flat_map(|(_, rs)| rs.iter().cloned())
        .collect();
    if outcome.delete {
        let mut ev = tracking_event(ctx, msg, "DROP", "AGENT");
        ev.recipient_address = recipients;
        ctx.logs.tracking.log(ev);
        service.queues.db.delete(msg.id);
        return RulesVerdict::Done;
    }
    if let Some(reason) = outcome.reject {
        let reply = mailflow_smtp::replies::rejected_by_rule(reason);
        let mut ev = tracking_event(ctx, msg, "FAIL", "AGENT");
        ev.recipient_address = recipients;
        ev.recipient_status = vec![reply.one_line()];
        ctx.logs.tracking.log(ev);
        let list = every
            .iter()
            .map(|r| {
                (
                    r.clone(),
                    send::dsn::DsnRecipient::from_reply(r, &reply, None),
                )
            })
            .collect();
        service
            .dsn
            .report(send::dsn::DsnKind::Failed, msg, list)
            .await;
        service.queues.db.delete(msg.id);
        return RulesVerdict::Done;
    }
    if !outcome.add_recipients.is_empty() {
        let added = outcome
            .add_recipients
            .iter()
            .filter(|a| !recipients.iter().any(|r| r.eq_ignore_ascii_case(a)))
            .map(|a| QueuedRecipient {
                address: a.clone(),
                orcpt: None,
                notify: vec!["NEVER".into()],
                next_hop: None,
                state: RecipientState::Submitted,
                last_error: None,
                delay_notified: false,
            })
            .collect();
        // Recipients an administrator's rule adds are the organisation's own choice.
        let more = categorizer::categorize(
            ctx,
            added,
            msg.content.len() as u64,
            crate::message::AuthAs::Internal,
        );
        for (hop, rs) in more.routed {
            match result.routed.iter_mut().find(|(h, _)| *h == hop) {
                Some((_, existing)) => existing.extend(rs),
                None => result.routed.push((hop, rs)),
            }
        }
    }
    RulesVerdict::Continue(outcome.content)
}

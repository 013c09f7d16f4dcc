//! The categorizer's loop: takes one message at a time from the Submission queue,
//! runs the stages of `super` over it (resolve, the OnResolvedMessage agents, route,
//! bifurcate), logs their tracking rows and hands the message to its delivery queues (reference §3.1). It reaches the queues and
//! DSNs through the `TransportService`; it must not import SMTP Receive, Pickup or a
//! mailbox store.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::FutureExt;

use crate::transport::queue::store::{QueuedRecipient, RecipientState};
use crate::transport::queue::{Item, QueuedMessage};
use crate::transport::supervisor::{self, POISON_THRESHOLD, Stage};
use crate::transport::{
    Submission, TransportService, agents, categorizer, routing, send, tracking_event,
};

/// Takes one message at a time from the Submission queue (reference §3.1). A panic
/// while handling one is caught here (DESIGN §7): the loop goes on with the next.
pub(crate) async fn categorizer_loop(service: Arc<TransportService>) {
    // Held while this run lasts; a restart's categorizer waits for it.
    let submissions = service.submissions.clone();
    let mut rx = submissions.lock().await;
    loop {
        // Stops between messages when the service stops; what waits in the channel is
        // in the queue database and is resumed at the next start.
        let submission = tokio::select! {
            biased;
            _ = service.stopping() => return,
            next = rx.recv() => match next {
                Some(s) => s,
                None => return,
            },
        };
        if submission.origin.counted() {
            service.queues.submission.fetch_sub(1, Ordering::Relaxed);
        }
        // What is needed to defer the message if its handling panics.
        let salvage = Submission {
            message: submission.message.clone(),
            recipients: submission.recipients.clone(),
            origin: submission.origin.clone(),
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
            if !submission.origin.rerouted() {
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
        // database, so a shutdown meanwhile loses nothing (it is resumed at start). At
        // a stop it goes back to the Submission queue at once, where the categorizer of
        // the next Start-Service finds it.
        let service = self.clone();
        self.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = service.stopping() => {}
            }
            let _ = submit.send(Submission {
                origin: submission.origin.deferred(),
                ..submission
            });
        });
    }
}

/// Categorizes one message of the Submission queue and hands it to its delivery queues:
/// resolution, the OnResolvedMessage agents, routing, bifurcation (reference §3.1).
async fn categorize_one(service: &Arc<TransportService>, submission: Submission) {
    let ctx = &service.ctx;
    let Submission {
        message: msg,
        recipients,
        origin,
    } = submission;
    let (resubmit, hold) = (origin.rerouted(), origin.held());
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
    // Size limits are checked against the message as it arrived (reference §3.2).
    let size = msg.content.len() as u64;
    let cfg = ctx.config();
    let active = ctx.active_copies();
    let view = routing::RoutingView::of(&cfg, &active);
    let mut resolver = categorizer::Resolver::new(&view);
    resolver.resolve(recipients, auth);
    service.poison_marker.set(0);
    for (resolved, original) in &resolver.resolved {
        let mut ev = tracking_event(ctx, &msg, "RESOLVE", "ROUTING");
        ev.recipient_address = vec![resolved.clone()];
        ev.related_recipient_address = original.clone();
        ctx.logs.tracking.log(ev);
    }
    for (group, members) in &resolver.expanded {
        let mut ev = tracking_event(ctx, &msg, "EXPAND", "ROUTING");
        ev.recipient_address = members.clone();
        ev.related_recipient_address = group.clone();
        ctx.logs.tracking.log(ev);
    }
    // Recipients from here on were added by agents: they are resolved and routed with
    // the others, but their failures are not reported (no FAIL row, no NDR), and their
    // RESOLVE and EXPAND rows are not written, as before agents had a trait.
    let added_from = resolver.recipients.len();
    // OnResolvedMessage (reference §9.3): the Transport Rule agent. Rerouted
    // recipients were through it already; reports (null sender) are not subject to
    // rules, so a rule can never bounce its own NDR.
    let mut msg = msg;
    if !resubmit && !msg.envelope.return_path.is_empty() {
        let org = agents::Org {
            dir: &cfg.dir,
            rules: &cfg.rules,
        };
        let deliverable: Vec<QueuedRecipient> = resolver.deliverable().cloned().collect();
        match on_resolved_message(service, &org, &msg, auth, deliverable).await {
            AgentsVerdict::Continue(edits) => {
                if let Some(content) = edits.content {
                    msg = msg.with_content(content.into());
                }
                let added: Vec<QueuedRecipient> = edits
                    .add_recipients
                    .into_iter()
                    .map(|address| QueuedRecipient {
                        address,
                        orcpt: None,
                        notify: vec!["NEVER".into()],
                        next_hop: None,
                        state: RecipientState::Submitted,
                        last_error: None,
                        delay_notified: false,
                    })
                    .collect();
                // Recipients an administrator's rule adds are the organisation's own
                // choice.
                resolver.resolve(added, crate::message::AuthAs::Internal);
            }
            AgentsVerdict::Done => return,
        }
    }
    // One routing pass for every recipient, then one delivery queue per next hop.
    let routed = categorizer::route(&view, size, std::mem::take(&mut resolver.recipients))
        .into_iter()
        .enumerate()
        .filter(|(i, (_, hop))| *i < added_from || hop.is_ok())
        .map(|(_, routed)| routed)
        .collect();
    let result = categorizer::bifurcate(routed);
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
        service.queues.enqueue(
            &hop,
            Item {
                message: msg.clone(),
                recipients,
                not_before,
            },
        );
    }
    if routed == 0 && consumed == 0 && !resubmit {
        // Every recipient failed: nothing to deliver (NDRs arrive with outbound DSNs).
        service.queues.db.delete(msg.id);
    } else if msg.finish(consumed) {
        service.queues.db.delete(msg.id);
    }
}

/// What the OnResolvedMessage agents decided.
enum AgentsVerdict {
    /// Go on, with the agents' edits (new content, recipients to add).
    Continue(agents::Edits),
    /// An agent rejected or deleted the message; it is finished.
    Done,
}

/// Runs the OnResolvedMessage agents, in priority order, over a resolved message; logs
/// each agent's AGENTINFO (and DROP or FAIL for delete and reject verdicts).
async fn on_resolved_message(
    service: &TransportService,
    org: &agents::Org<'_>,
    msg: &Arc<QueuedMessage>,
    auth: crate::message::AuthAs,
    deliverable: Vec<QueuedRecipient>,
) -> AgentsVerdict {
    let ctx = &service.ctx;
    let recipients: Vec<String> = deliverable.iter().map(|r| r.address.clone()).collect();
    // SenderAddressLocation defaults to Header: the From/Sender address.
    let sender = if msg.envelope.sender_header.is_empty() {
        &msg.envelope.return_path
    } else {
        &msg.envelope.sender_header
    };
    // Pipeline tracing (reference §8.4): the traced sender's message before the
    // agents, then after each one that ran.
    let trace = ctx
        .logs
        .pipeline_tracing
        .as_ref()
        .and_then(|t| t.message(&msg.envelope.return_path, &msg.envelope.network_message_id));
    if let Some(t) = &trace {
        t.original(&msg.content);
    }
    let mut edits = agents::Edits::default();
    let mut ran = 0;
    for agent in agents::installed() {
        if !agent.events().contains(&agents::Event::ResolvedMessage) {
            continue;
        }
        let item = agents::MailItem {
            auth,
            sender,
            recipients: &recipients,
            content: edits.content.as_deref().unwrap_or(&msg.content),
        };
        let handled = agent.on_message(agents::Event::ResolvedMessage, org, &item);
        ran += 1;
        if let Some(t) = &trace {
            let after = match &handled.verdict {
                agents::Verdict::Edit(agents::Edits {
                    content: Some(c), ..
                }) => c.as_slice(),
                _ => item.content,
            };
            t.after_agent(&agents::Event::ResolvedMessage.name(), ran, after);
        }
        // The agent log (reference §8.4): a line when the agent acted on the message.
        // Exchange lets only its anti-spam agents and the Edge Rules agent write there;
        // the Transport Rule agent writes as the Edge Rules agent does, when its verdict
        // changed the message's course, so a message no rule touched costs no line.
        let acted = !matches!(handled.verdict, agents::Verdict::Continue);
        if acted && ctx.logs.agent.enabled() {
            let (action, response) = match &handled.verdict {
                agents::Verdict::Continue | agents::Verdict::Edit(_) => {
                    ("AcceptMessage", String::new())
                }
                agents::Verdict::Delete => ("DeleteMessage", String::new()),
                agents::Verdict::Reject(reply) => ("RejectMessage", reply.one_line()),
            };
            ctx.logs.agent.log(&crate::logs::agent::AgentLogEntry {
                message_id: msg.envelope.message_id.clone(),
                p1_from: msg.envelope.return_path.clone(),
                p2_from: vec![msg.envelope.sender_header.clone()],
                recipients: recipients.clone(),
                agent: agent.identity().into(),
                event: agents::Event::ResolvedMessage.name(),
                action: action.into(),
                smtp_response: response,
                network_message_id: msg.envelope.network_message_id.clone(),
                directionality: msg.envelope.directionality.clone(),
                ..Default::default()
            });
        }
        if let Some(info) = handled.info {
            let mut ev = tracking_event(ctx, msg, "AGENTINFO", "AGENT");
            // Exchange leaves connector-id empty on AGENTINFO and names the agent in
            // source-context (seed 003).
            ev.source_context = agent.identity().into();
            ev.recipient_address = recipients.clone();
            ev.custom_data = info;
            ctx.logs.tracking.log(ev);
        }
        match handled.verdict {
            agents::Verdict::Continue => {}
            agents::Verdict::Edit(e) => {
                if e.content.is_some() {
                    edits.content = e.content;
                }
                edits.add_recipients.extend(e.add_recipients);
            }
            agents::Verdict::Delete => {
                let mut ev = tracking_event(ctx, msg, "DROP", "AGENT");
                ev.recipient_address = recipients;
                ctx.logs.tracking.log(ev);
                service.queues.db.delete(msg.id);
                return AgentsVerdict::Done;
            }
            agents::Verdict::Reject(reply) => {
                let mut ev = tracking_event(ctx, msg, "FAIL", "AGENT");
                ev.recipient_address = recipients;
                ev.recipient_status = vec![reply.one_line()];
                ctx.logs.tracking.log(ev);
                let list = deliverable
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
                return AgentsVerdict::Done;
            }
        }
    }
    AgentsVerdict::Continue(edits)
}

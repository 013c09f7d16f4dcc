//! The categorizer (reference §3.1–3.2): takes one message at a time from the Submission
//! queue, resolves its recipients against the directory (aliases to mailboxes,
//! distribution groups to their members, with loop protection), finds each recipient's
//! next hop, and bifurcates the message into one delivery queue per next hop.

pub(crate) mod pipeline;

use std::collections::{HashMap, HashSet, VecDeque};

use mailflow_smtp::{Reply, replies};

use crate::directory::{Recipient, permissions};
use crate::message::AuthAs;
use crate::transport::context::TransportContext;
use crate::transport::queue::NextHop;
use crate::transport::queue::store::{QueuedRecipient, RecipientState};

/// The result of categorizing one message.
#[derive(Default)]
pub struct Categorized {
    /// Recipients per next hop, in first-seen order of the next hops.
    pub routed: Vec<(NextHop, Vec<QueuedRecipient>)>,
    /// Recipients that cannot be delivered, with the reason.
    pub failed: Vec<(QueuedRecipient, Reply)>,
    /// RESOLVE (alias → mailbox) as (resolved, original) pairs.
    pub resolved: Vec<(String, String)>,
    /// EXPAND: (group, members).
    pub expanded: Vec<(String, Vec<String>)>,
}

/// Upper bound on recipients after expansion: nested groups cannot blow up a message.
const MAX_EXPANDED_RECIPIENTS: usize = 10_000;

/// Categorizes `recipients` of a message of `size` bytes (send connectors too small for
/// it are not candidates, reference §4.4). `auth` is how the message entered the
/// organisation (its AuthAs stamp): groups that require authenticated senders refuse
/// Anonymous mail, nested ones included.
pub fn categorize(
    ctx: &TransportContext,
    recipients: Vec<QueuedRecipient>,
    size: u64,
    auth: AuthAs,
) -> Categorized {
    let dir = &ctx.dir();
    let cfg = ctx.config();
    let active = ctx.active_copies();
    let view = crate::transport::routing::RoutingView::of(&cfg, &active);
    let mut out = Categorized::default();
    let mut hops: HashMap<String, usize> = HashMap::new();
    let mut delivered_to: HashSet<String> = HashSet::new();
    let mut expanded_groups: HashSet<usize> = HashSet::new();
    let mut work: VecDeque<QueuedRecipient> = recipients.into();
    let mut route = |out: &mut Categorized, hop: NextHop, mut r: QueuedRecipient| {
        r.next_hop = Some(hop.key());
        r.state = RecipientState::Ready;
        let i = *hops.entry(hop.key()).or_insert_with(|| {
            out.routed.push((hop, Vec::new()));
            out.routed.len() - 1
        });
        out.routed[i].1.push(r);
    };
    while let Some(mut r) = work.pop_front() {
        let domain = r
            .address
            .rsplit('@')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if !dir.is_accepted_domain(&domain) {
            if delivered_to.insert(r.address.to_lowercase()) {
                match view.route_external(&domain, size) {
                    Ok(hop) => route(&mut out, hop, r),
                    Err(reply) => {
                        r.state = RecipientState::Failed;
                        r.last_error = Some(reply.one_line());
                        out.failed.push((r, reply));
                    }
                }
            }
            continue;
        }
        match dir.lookup(&r.address) {
            Some(Recipient::Mailbox(i)) => {
                let mailbox = dir.mailbox(i);
                if !mailbox.address.eq_ignore_ascii_case(&r.address) {
                    out.resolved
                        .push((mailbox.address.clone(), r.address.clone()));
                    r.address = mailbox.address.clone();
                }
                // The same mailbox reached twice (alias + group) gets one copy.
                if delivered_to.insert(mailbox.address.to_lowercase()) {
                    route(&mut out, view.route_database(&mailbox.database).next_hop, r);
                }
            }
            Some(Recipient::Group(g)) => {
                // A group seen before in this message is a loop or a repeat: its members
                // are already in the work list, so it is skipped, not expanded again.
                if !expanded_groups.insert(g) {
                    continue;
                }
                // The authoritative delivery restriction (Front End refuses at RCPT
                // what it can see; a nested group is only seen here).
                if let Err(reply) = permissions::check_group_sender(dir, g, auth) {
                    r.state = RecipientState::Failed;
                    r.last_error = Some(reply.one_line());
                    out.failed.push((r, reply));
                    continue;
                }
                let group = dir.group(g);
                // A group with an expansion server elsewhere is expanded there
                // (server-list delivery group, reference §3.2).
                if let Some(server) = &group.expansion_server
                    && !view.is_local_server(server)
                {
                    route(&mut out, view.route_expansion_server(server).next_hop, r);
                    continue;
                }
                out.expanded
                    .push((group.address.clone(), group.members.clone()));
                for m in &group.members {
                    if work.len() + delivered_to.len() >= MAX_EXPANDED_RECIPIENTS {
                        break;
                    }
                    work.push_back(QueuedRecipient {
                        address: m.clone(),
                        orcpt: None,
                        notify: r.notify.clone(),
                        next_hop: None,
                        state: RecipientState::Submitted,
                        last_error: None,
                        delay_notified: false,
                    });
                }
            }
            None => {
                let reply = replies::recipient_not_found();
                r.state = RecipientState::Failed;
                r.last_error = Some(reply.one_line());
                out.failed.push((r, reply));
            }
        }
    }
    out
}

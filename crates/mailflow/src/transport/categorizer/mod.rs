//! The categorizer (reference §3.1–3.2): takes one message at a time from the Submission
//! queue (`pipeline.rs`) and runs its stages: resolution against the directory (aliases
//! to mailboxes, distribution groups to their members, with loop protection), the
//! OnResolvedMessage agents, routing (each recipient's next hop) and bifurcation into
//! one delivery queue per next hop. The stages here are pure: they read the directory
//! and the routing view and must not import the queue's store, send/ or the logs.

pub(crate) mod pipeline;

use std::collections::{HashMap, HashSet, VecDeque};

use mailflow_smtp::{Reply, replies};

use crate::directory::{Recipient, permissions};
use crate::message::AuthAs;
use crate::transport::queue::NextHop;
use crate::transport::queue::store::{QueuedRecipient, RecipientState};
use crate::transport::routing::RoutingView;

/// Where a resolved recipient goes, before routing chooses its next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Outside the accepted domains: a send connector's address space.
    External { domain: String },
    /// A mailbox: the server with its database's active copy.
    Mailbox { database: String },
    /// A distribution group whose expansion server is another server (server-list
    /// delivery group, reference §3.2): it is expanded there.
    ExpansionServer { server: String },
}

/// One recipient after resolution, in resolution order: where it goes, or why it
/// cannot be delivered.
pub type Resolution = (QueuedRecipient, Result<Destination, Reply>);

/// One recipient after routing: its next hop, or why it cannot be delivered.
pub type Routed = (QueuedRecipient, Result<NextHop, Reply>);

/// The result of categorizing one message.
#[derive(Default)]
pub struct Categorized {
    /// Recipients per next hop, in first-seen order of the next hops.
    pub routed: Vec<(NextHop, Vec<QueuedRecipient>)>,
    /// Recipients that cannot be delivered, with the reason.
    pub failed: Vec<(QueuedRecipient, Reply)>,
}

/// Upper bound on recipients after expansion: nested groups cannot blow up a message.
const MAX_EXPANDED_RECIPIENTS: usize = 10_000;

/// The resolution stage for one message (reference §3.2). Recipients added later (by
/// an agent) are resolved with the same state, so a mailbox or group reached twice
/// still gets one copy.
pub struct Resolver<'a> {
    view: &'a RoutingView<'a>,
    delivered_to: HashSet<String>,
    expanded_groups: HashSet<usize>,
    /// Every recipient resolved so far, in order.
    pub recipients: Vec<Resolution>,
    /// RESOLVE (alias → mailbox) as (resolved, original) pairs.
    pub resolved: Vec<(String, String)>,
    /// EXPAND: (group, members).
    pub expanded: Vec<(String, Vec<String>)>,
}

impl<'a> Resolver<'a> {
    pub fn new(view: &'a RoutingView<'a>) -> Resolver<'a> {
        Resolver {
            view,
            delivered_to: HashSet::new(),
            expanded_groups: HashSet::new(),
            recipients: Vec::new(),
            resolved: Vec::new(),
            expanded: Vec::new(),
        }
    }

    /// The addresses resolved to a destination so far, in order.
    pub fn deliverable(&self) -> impl Iterator<Item = &QueuedRecipient> {
        self.recipients
            .iter()
            .filter(|(_, d)| d.is_ok())
            .map(|(r, _)| r)
    }

    /// Resolves `recipients`. `auth` is how the message entered the organisation (its
    /// AuthAs stamp): groups that require authenticated senders refuse Anonymous mail,
    /// nested ones included.
    pub fn resolve(&mut self, recipients: Vec<QueuedRecipient>, auth: AuthAs) {
        let dir = self.view.dir;
        let mut work: VecDeque<QueuedRecipient> = recipients.into();
        while let Some(mut r) = work.pop_front() {
            let domain = r
                .address
                .rsplit('@')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            if !dir.is_accepted_domain(&domain) {
                if self.delivered_to.insert(r.address.to_lowercase()) {
                    self.recipients
                        .push((r, Ok(Destination::External { domain })));
                }
                continue;
            }
            match dir.lookup(&r.address) {
                Some(Recipient::Mailbox(i)) => {
                    let mailbox = dir.mailbox(i);
                    if !mailbox.address.eq_ignore_ascii_case(&r.address) {
                        self.resolved
                            .push((mailbox.address.clone(), r.address.clone()));
                        r.address = mailbox.address.clone();
                    }
                    // The same mailbox reached twice (alias + group) gets one copy.
                    if self.delivered_to.insert(mailbox.address.to_lowercase()) {
                        let database = mailbox.database.clone();
                        self.recipients
                            .push((r, Ok(Destination::Mailbox { database })));
                    }
                }
                Some(Recipient::Group(g)) => {
                    // A group seen before in this message is a loop or a repeat: its
                    // members are already in the work list, so it is skipped, not
                    // expanded again.
                    if !self.expanded_groups.insert(g) {
                        continue;
                    }
                    // The authoritative delivery restriction (Front End refuses at RCPT
                    // what it can see; a nested group is only seen here).
                    if let Err(reply) = permissions::check_group_sender(dir, g, auth) {
                        self.recipients.push((r, Err(reply)));
                        continue;
                    }
                    let group = dir.group(g);
                    // A group with an expansion server elsewhere is expanded there
                    // (server-list delivery group, reference §3.2).
                    if let Some(server) = &group.expansion_server
                        && !self.view.is_local_server(server)
                    {
                        let server = server.clone();
                        self.recipients
                            .push((r, Ok(Destination::ExpansionServer { server })));
                        continue;
                    }
                    self.expanded
                        .push((group.address.clone(), group.members.clone()));
                    for m in &group.members {
                        if work.len() + self.delivered_to.len() >= MAX_EXPANDED_RECIPIENTS {
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
                None => self
                    .recipients
                    .push((r, Err(replies::recipient_not_found()))),
            }
        }
    }
}

/// The routing stage: each resolved recipient's next hop (reference §4), in order.
/// Send connectors too small for a message of `size` bytes are not candidates
/// (reference §4.4).
pub fn route(view: &RoutingView, size: u64, recipients: Vec<Resolution>) -> Vec<Routed> {
    recipients
        .into_iter()
        .map(|(r, destination)| {
            let hop = destination.and_then(|d| match d {
                Destination::External { domain } => view.route_external(&domain, size),
                Destination::Mailbox { database } => Ok(view.route_database(&database).next_hop),
                Destination::ExpansionServer { server } => {
                    Ok(view.route_expansion_server(&server).next_hop)
                }
            });
            (r, hop)
        })
        .collect()
}

/// Bifurcation: one list of recipients per next hop, in first-seen order of the next
/// hops; the recipients that cannot be delivered are marked failed with the reason.
pub fn bifurcate(routed: Vec<Routed>) -> Categorized {
    let mut out = Categorized::default();
    let mut hops: HashMap<String, usize> = HashMap::new();
    for (mut r, hop) in routed {
        match hop {
            Ok(hop) => {
                r.next_hop = Some(hop.key());
                r.state = RecipientState::Ready;
                let i = *hops.entry(hop.key()).or_insert_with(|| {
                    out.routed.push((hop, Vec::new()));
                    out.routed.len() - 1
                });
                out.routed[i].1.push(r);
            }
            Err(reply) => {
                r.state = RecipientState::Failed;
                r.last_error = Some(reply.one_line());
                out.failed.push((r, reply));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::queue::DeliveryType;

    fn rcpt(address: &str) -> QueuedRecipient {
        QueuedRecipient {
            address: address.into(),
            orcpt: None,
            notify: Vec::new(),
            next_hop: None,
            state: RecipientState::Submitted,
            last_error: None,
            delay_notified: false,
        }
    }

    fn hop(domain: &str) -> NextHop {
        NextHop {
            delivery_type: DeliveryType::SmtpDeliveryToMailbox,
            domain: domain.into(),
            connector: None,
        }
    }

    #[test]
    fn bifurcation_groups_by_next_hop_in_first_seen_order_and_marks_failures() {
        let routed = vec![
            (rcpt("a@x.test"), Ok(hop("DB1"))),
            (rcpt("b@x.test"), Ok(hop("DB2"))),
            (rcpt("ghost@x.test"), Err(replies::recipient_not_found())),
            (rcpt("c@x.test"), Ok(hop("DB1"))),
        ];
        let out = bifurcate(routed);
        let hops: Vec<(&str, Vec<&str>)> = out
            .routed
            .iter()
            .map(|(h, rs)| {
                (
                    h.domain.as_str(),
                    rs.iter().map(|r| r.address.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            hops,
            [
                ("DB1", vec!["a@x.test", "c@x.test"]),
                ("DB2", vec!["b@x.test"])
            ]
        );
        for (h, rs) in &out.routed {
            for r in rs {
                assert_eq!(r.next_hop.as_deref(), Some(h.key().as_str()));
                assert_eq!(r.state, RecipientState::Ready);
            }
        }
        let [(ghost, reply)] = &out.failed[..] else {
            panic!("one failure");
        };
        assert_eq!(ghost.state, RecipientState::Failed);
        assert_eq!(ghost.last_error.as_deref(), Some(reply.one_line().as_str()));
    }
}

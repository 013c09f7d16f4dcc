//! SMTP Send: the transmitters that empty delivery queues. Internal queues go through
//! the implicit `Intra-Organization SMTP Send Connector` (reference §1.7): to Mailbox
//! Transport Delivery for mailbox queues, to another server's Transport service for
//! relay queues. External queues go through their send connector to smart hosts or MX
//! hosts. Each connection carries up to 20 messages; where to connect is decided at each
//! connection. Beside each queue a sweeper expires old messages and sends delay notices.

pub mod dsn;
pub mod outcome;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime};

use futures_util::FutureExt;
use mailflow_smtp::client::{mail_line, rcpt_line};
use mailflow_smtp::{Body, MailParams, RcptParams, Reply, Ret, replies};
use tokio::sync::Semaphore;

use self::dsn::{DsnKind, DsnRecipient, DsnSubmitter};
use self::outcome::DeliveryOutcome;
use super::queue::store::{QueueDb, QueuedRecipient, RecipientState};
use super::queue::{
    DeliveryQueue, DeliveryType, Expiry, Item, NewQueues, QueuedMessage, Queues, RetryPolicy,
};
use super::supervisor::{self, POISON_THRESHOLD, Stage};
use super::{Resubmitter, tracking_event};
use crate::message::downgrade;
use crate::message::{self, ORG_HEADER_PREFIX};
use crate::net::client::{ClientError, RecipientReply, SmtpClient};
use crate::net::dns::Dns;
use crate::net::org_connector::INTRA_ORG_SEND_CONNECTOR;
use crate::net::orgauth;
use crate::net::outbound::{self, ConnectFailure, Destination, Local};
use crate::transport::context::TransportContext;
use crate::transport::routing::RoutingView;

/// MaxConcurrentMailboxDeliveries (reference §5).
const MAILBOX_DELIVERY_CONNECTIONS: usize = 20;
/// Connections per relay queue to another Transport service.
const RELAY_CONNECTIONS: usize = 10;
/// SmtpMaxMessagesPerConnection (reference §1.6, §1.7).
const MAX_MESSAGES_PER_CONNECTION: usize = 20;

/// What every transmitter of this server needs.
#[derive(Clone)]
pub struct Transmitter {
    pub ctx: Arc<TransportContext>,
    pub db: QueueDb,
    pub policy: RetryPolicy,
    pub resubmit: Resubmitter,
    pub dsn: DsnSubmitter,
    pub dns: Arc<Dns>,
    /// MaxOutboundConnections across all external queues.
    pub outbound: Arc<Semaphore>,
    /// Where the queues' sessions run (see `serve`).
    pub runtime: tokio::runtime::Handle,
    /// The queues these transmitters serve: a poison message is parked in one of them.
    pub queues: Weak<Queues>,
    /// The Transport service's task owner: transmitters and sweepers run under it and
    /// stop between messages when it stops.
    pub tasks: supervisor::Tasks,
}

/// The server a connection reached.
struct Peer {
    host: String,
    client: SmtpClient,
    /// The send connector for external peers (None: intra-organization).
    connector: Option<String>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Transmitter {
    /// Starts what empties a new queue, and its sweeper.
    pub fn start(&self, queue: Arc<DeliveryQueue>) {
        if queue.next_hop.delivery_type == DeliveryType::Poison {
            // Reference §3.3: never retried or expired automatically.
            queue.set_suspended(true);
            return;
        }
        // Supervised: a task that panics is replaced (DESIGN §7).
        let what = |task: &str| format!("{task} of queue {}", queue.next_hop.domain);
        let (this, q) = (self.clone(), queue.clone());
        supervisor::spawn_supervised(&self.tasks, &self.runtime, what("the sweeper"), move || {
            this.clone().sweeper(q.clone())
        });
        let workers = match queue.next_hop.delivery_type {
            DeliveryType::SmtpDeliveryToMailbox => MAILBOX_DELIVERY_CONNECTIONS,
            DeliveryType::Unreachable => {
                // Reference §14.6: held, not bounced; it expires like any message.
                queue.set_last_error("550 5.4.4 SMTPSEND.DNS.NonExistentDomain; no send connector matches the recipient's domain");
                return;
            }
            DeliveryType::DnsConnectorDelivery | DeliveryType::SmartHostConnectorDelivery => self
                .ctx
                .dir()
                .transport()
                .max_per_domain_outbound_connections
                .max(1),
            _ => RELAY_CONNECTIONS,
        };
        for _ in 0..workers {
            let (this, q) = (self.clone(), queue.clone());
            supervisor::spawn_supervised(
                &self.tasks,
                &self.runtime,
                what("a transmitter"),
                move || this.clone().worker(q.clone()),
            );
        }
    }

    /// Connects to the next hop: an organisation server, or through a send connector.
    async fn connect(&self, queue: &DeliveryQueue) -> Result<Peer, ConnectFailure> {
        let hop = &queue.next_hop;
        if hop.delivery_type.is_external() {
            let dir = self.ctx.dir();
            let Some(connector) = hop
                .connector
                .as_deref()
                .and_then(|n| dir.send_connectors().find(|c| c.name == n))
            else {
                return Err(ConnectFailure(replies::send_connector_gone(
                    hop.connector.as_deref(),
                )));
            };
            let permit = self.outbound.clone().acquire_owned().await.ok();
            if connector.front_end_proxy {
                // Through a Front End's Outbound Proxy Frontend (:717) of this site.
                let (host, client) = self.connect_outbound_proxy().await?;
                return Ok(Peer {
                    host,
                    client,
                    connector: Some(connector.name.clone()),
                    _permit: permit,
                });
            }
            let destination = if hop.delivery_type == DeliveryType::SmartHostConnectorDelivery {
                Destination::SmartHosts
            } else {
                Destination::Domain(&hop.domain)
            };
            let local = Local::new(
                &self.ctx.directory,
                connector,
                &self.ctx.logs.send,
                &self.ctx.logs.connectivity,
            );
            let (host, client) =
                outbound::connect(&local, &self.dns, connector, destination).await?;
            return Ok(Peer {
                host,
                client,
                connector: Some(connector.name.clone()),
                _permit: permit,
            });
        }
        let cfg = self.ctx.config();
        let active = self.ctx.active_copies();
        let targets = RoutingView::of(&cfg, &active).targets(hop);
        if targets.is_empty() {
            return Err(ConnectFailure(replies::no_server_for_next_hop(&hop.domain)));
        }
        let mut errors = Vec::new();
        // A server whose certificate the organisation CA does not vouch for: that
        // reason outranks the others (it needs the operator), in the 4.4.317 shape of
        // the send connectors' certificate refusals.
        let mut refused = None;
        for (name, fqdn, addr) in targets {
            match self
                .ctx
                .org
                .connect_intra_org(addr, orgauth::HUB, &self.ctx.logs.send)
                .await
            {
                Ok(client) => {
                    return Ok(Peer {
                        host: fqdn,
                        client,
                        connector: None,
                        _permit: None,
                    });
                }
                Err(ClientError::CertificateRefused(why)) => {
                    tracing::warn!(queue = %hop.domain, server = %name, "{addr}: {why}");
                    errors.push(format!("{name}: {why}"));
                    refused.get_or_insert_with(|| format!("{name} [{addr}]: {why}"));
                }
                Err(e) => {
                    tracing::info!(queue = %hop.domain, server = %name, "cannot connect to {addr}: {e}");
                    errors.push(format!("{name}: {e}"));
                }
            }
        }
        if let Some(why) = refused {
            return Err(ConnectFailure(replies::certificate_validation_failed(&why)));
        }
        Err(ConnectFailure(replies::next_hop_unreachable(
            &errors.join("; "),
        )))
    }

    /// Connects to the Outbound Proxy Frontend of this server or another of its site.
    async fn connect_outbound_proxy(&self) -> Result<(String, SmtpClient), ConnectFailure> {
        let cfg = self.ctx.config();
        let active = self.ctx.active_copies();
        let view = RoutingView::of(&cfg, &active);
        let mut servers: Vec<_> = view.distances().local_site_servers();
        servers.sort_by_key(|s| !s.eq_ignore_ascii_case(self.ctx.name()));
        let mut errors = Vec::new();
        for name in servers {
            let Some(s) = cfg.dir.server(&name) else {
                continue;
            };
            match self
                .ctx
                .org
                .connect_intra_org(
                    SocketAddr::new(s.ip(), s.ports.outbound_proxy),
                    orgauth::HUB,
                    &self.ctx.logs.send,
                )
                .await
            {
                Ok(client) => return Ok((s.fqdn.clone(), client)),
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        Err(ConnectFailure(replies::no_outbound_proxy_answered(
            &errors.join("; "),
        )))
    }

    async fn worker(self, queue: Arc<DeliveryQueue>) {
        loop {
            // Stops here, between messages, when the service stops.
            tokio::select! {
                _ = queue.wait_for_work() => {}
                _ = self.tasks.stopping() => return,
            }
            // Retired after QueueMaxIdleTime: a new queue serves its next hop.
            if queue.is_retired() {
                return;
            }
            // Take the work before connecting, so idle workers never open a session
            // with nothing to send.
            let Some(first) = queue.pop() else { continue };
            // A panic while connecting is no message's fault: the item waits as after a
            // failed connection.
            let connected = AssertUnwindSafe(self.connect(&queue))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    tracing::error!(
                        queue = %queue.next_hop.domain,
                        "panic while connecting ({})",
                        supervisor::panic_text(panic.as_ref())
                    );
                    Err(ConnectFailure(replies::transport_failed_while_connecting()))
                });
            let mut peer = match connected {
                Ok(p) => p,
                Err(ConnectFailure(reply)) if !reply.is_permanent() => {
                    queue.requeue_front(vec![first]);
                    queue.done();
                    queue.connection_failed(reply.one_line(), &self.policy);
                    continue;
                }
                Err(ConnectFailure(reply)) => {
                    // The destination cannot exist (NXDOMAIN, null MX): every message
                    // of this queue fails now rather than after two days.
                    let mut items = vec![first];
                    while let Some(item) = queue.pop() {
                        items.push(item);
                    }
                    for item in items {
                        self.fail_all(&item, reply.clone(), None, "DNS").await;
                        queue.done();
                    }
                    queue.set_last_error(&reply.one_line());
                    continue;
                }
            };
            queue.connected();
            let mut next = Some(first);
            let mut sent = 0;
            let mut broken = false;
            // The session sat idle in the cache before this item.
            let mut was_idle = false;
            while let Some(item) = next.take() {
                // What is needed to defer the item if delivering it panics.
                let salvage = (item.message.clone(), item.recipients.clone());
                let result = AssertUnwindSafe(self.deliver(&queue, &mut peer, item))
                    .catch_unwind()
                    .await;
                queue.done();
                sent += 1;
                let result = match result {
                    Ok(result) => result,
                    Err(panic) => {
                        let (message, recipients) = salvage;
                        self.delivery_panicked(&queue, message, recipients, panic.as_ref());
                        // The session's state is unknown: it is dropped, not reused.
                        broken = true;
                        break;
                    }
                };
                if let Err((item, e)) = result {
                    queue.requeue_front(vec![item]);
                    if was_idle {
                        // The peer closed a cached session while it was idle (a
                        // restart, its inactivity timeout): not a failure of the next
                        // hop. The item goes out at once on a new connection, whose
                        // failure counts as usual.
                        tracing::info!(
                            queue = %queue.next_hop.domain,
                            "cached session to {} lost ({e}); sending on a new connection",
                            peer.host
                        );
                    } else {
                        queue.connection_failed(e.as_reply().one_line(), &self.policy);
                    }
                    broken = true;
                    break;
                }
                if sent >= MAX_MESSAGES_PER_CONNECTION {
                    break;
                }
                next = queue.pop();
                was_idle = false;
                if next.is_none() && peer.connector.is_none() {
                    next = self.wait_cached(&queue, &peer).await;
                    was_idle = next.is_some();
                }
            }
            if !broken {
                peer.client.quit().await;
            }
        }
    }

    /// Connection caching for sessions inside the organisation (Postfix's
    /// `smtp_connection_cache_time_limit`): when the queue runs dry, the session waits
    /// up to `[transport] intra_org_connection_cache_time` (2 s) for the next item
    /// instead of closing. At a few thousand messages a second the queue empties
    /// between messages all the time, and without the cache every message would pay a
    /// connection, EHLO and AUTH on both sides. `None`: close the session (idle time over, or the next hop is now served
    /// by another server, e.g. after a database move).
    async fn wait_cached(&self, queue: &DeliveryQueue, peer: &Peer) -> Option<Item> {
        let idle = self.ctx.dir().transport().intra_org_connection_cache_time;
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            if !queue.wait_for_work_cached(deadline).await {
                return None;
            }
            let cfg = self.ctx.config();
            let active = self.ctx.active_copies();
            let still_a_target = RoutingView::of(&cfg, &active)
                .targets(&queue.next_hop)
                .iter()
                .any(|(_, fqdn, _)| *fqdn == peer.host);
            if !still_a_target {
                // The item was given to this session; a new connection must take it.
                queue.hand_off();
                return None;
            }
            if let Some(item) = queue.pop() {
                return Some(item);
            }
            // Another session took it; wait again until the deadline.
        }
    }

    /// A panic while delivering an item (DESIGN §7): the message counts a crash; below
    /// PoisonThreshold its recipients are deferred (DEFER) for a retry interval, at the
    /// threshold they are parked in the poison queue. The transmitter goes on.
    fn delivery_panicked(
        &self,
        queue: &DeliveryQueue,
        msg: Arc<QueuedMessage>,
        mut recipients: Vec<QueuedRecipient>,
        panic: &(dyn std::any::Any + Send),
    ) {
        let crashes = supervisor::record_crash(&self.db, &msg);
        tracing::error!(
            id = msg.id,
            queue = %queue.next_hop.domain,
            crashes,
            "panic while delivering a message ({}); the transmitter goes on",
            supervisor::panic_text(panic)
        );
        if crashes >= POISON_THRESHOLD
            && let Some(queues) = self.queues.upgrade()
        {
            let why = format!("SMTP Send panicked on it {crashes} times");
            supervisor::park_in_poison(&self.ctx, &queues, msg, recipients, why);
            return;
        }
        let reply = replies::transport_failed_while_sending();
        let mut ev = tracking_event(&self.ctx, &msg, "DEFER", "SMTP");
        ev.recipient_address = recipients.iter().map(|r| r.address.clone()).collect();
        ev.recipient_status = vec![reply.one_line()];
        ev.source_context = format!(
            "SMTP Send panicked (crash {crashes} of PoisonThreshold {POISON_THRESHOLD}); deferred"
        );
        self.ctx.logs.tracking.log(ev);
        for r in &mut recipients {
            r.last_error = Some(reply.one_line());
        }
        self.db.update_recipients(
            msg.id,
            recipients
                .iter()
                .map(|r| {
                    (
                        r.address.clone(),
                        RecipientState::Ready,
                        r.last_error.clone(),
                    )
                })
                .collect(),
        );
        self.requeue(
            queue,
            Item {
                message: msg,
                recipients,
                not_before: Some(
                    self.policy
                        .not_before(crashes.saturating_sub(1), Instant::now()),
                ),
            },
        );
    }

    /// Sends one item; per-recipient outcomes are recorded. A broken connection gives
    /// the item back for another attempt.
    async fn deliver(
        &self,
        queue: &DeliveryQueue,
        peer: &mut Peer,
        item: Item,
    ) -> Result<(), (Item, ClientError)> {
        let ctx = &self.ctx;
        let msg = item.message.clone();
        let env = &msg.envelope;
        supervisor::test_panic_hook(Stage::Delivering, &env.subject);
        let external = peer.connector.is_some();
        // Leaving the organisation: the header firewall removes its private headers.
        let stripped = if external {
            message::strip_prefixed(&msg.content, ORG_HEADER_PREFIX)
        } else {
            None
        };
        // Inside it: what this Transport knows travels on for the next service's tracking
        // rows (message::DIRECTIONALITY_HEADER).
        let stamped = (!external).then(|| {
            message::with_transport_facts(
                &msg.content,
                msg.id,
                &env.received_at,
                &env.directionality,
            )
        });
        let content: &[u8] = stripped
            .as_deref()
            .or(stamped.as_deref())
            .unwrap_or(&msg.content);
        // RFC 6531 §3.4: a message that needs SMTPUTF8 cannot go to a server without it.
        if env.smtputf8 && !peer.client.has_extension("SMTPUTF8") {
            let reply = replies::smtputf8_not_supported(&peer.host);
            self.fail_all(&item, reply, Some(peer), "SMTP").await;
            return Ok(());
        }
        // RFC 6152 §3: 8-bit content goes only to a server that offers 8BITMIME; any
        // other gets it converted to 7-bit MIME (quoted-printable or base64 parts,
        // encoded-words in headers). UTF-8 header fields stay when SMTPUTF8 is used.
        let eight_bit = downgrade::is_8bit(content);
        let peer_8bit = peer.client.has_extension("8BITMIME");
        let downgraded = (eight_bit && !peer_8bit).then(|| {
            tracing::debug!(host = %peer.host, "8BITMIME not offered: converting to 7-bit");
            downgrade::to_7bit(content, !env.smtputf8)
        });
        let content: &[u8] = downgraded.as_deref().unwrap_or(content);
        if let Some(limit) = peer.client.size_limit()
            && content.len() as u64 > limit
        {
            let reply = replies::size_exceeds_host_limit(&peer.host, limit);
            self.fail_all(&item, reply, Some(peer), "SMTP").await;
            return Ok(());
        }
        // DSN parameters travel on when the next hop speaks DSN (RFC 3461 §6).
        let dsn = peer.client.has_extension("DSN");
        // BODY=8BITMIME whenever 8-bit content goes to a peer that takes it, declared or
        // not (RFC 6152 §3). BINARYMIME is not passed on: this client sends no binary
        // (receive refuses bare CR and LF, so such content is 8-bit text at most).
        let declared = matches!(env.body.as_str(), "8BITMIME" | "BINARYMIME");
        let params = MailParams {
            size: Some(content.len() as u64),
            body: if peer_8bit && (declared || eight_bit) {
                Body::EightBitMime
            } else {
                Body::SevenBit
            },
            smtputf8: env.smtputf8 && peer.client.has_extension("SMTPUTF8"),
            ret: env
                .ret
                .as_deref()
                .and_then(Ret::from_keyword)
                .filter(|_| dsn),
            envid: env.envid.clone().filter(|_| dsn),
            auth: None,
        };
        let mail = mail_line(&env.return_path, &params);
        let rcpts: Vec<String> = item
            .recipients
            .iter()
            .map(|r| {
                let params = if dsn {
                    RcptParams {
                        notify: r.notify.clone(),
                        orcpt: r.orcpt.clone(),
                    }
                } else {
                    RcptParams::default()
                };
                rcpt_line(&r.address, &params)
            })
            .collect();
        // SEND is stamped when transmission starts, so it sorts before the next hop's
        // RECEIVE as in Exchange's sequence (reference §7.6).
        let sent_at = crate::logs::tracking::now_timestamp();
        let (_, replies) = match peer.client.send_message(&mail, &rcpts, content).await {
            Ok(r) => r,
            Err(e) => return Err((item, e)),
        };
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        let mut deferred = Vec::new();
        let mut reroute = Vec::new();
        for (r, RecipientReply { reply, stage }) in item.recipients.into_iter().zip(replies) {
            match DeliveryOutcome::of(&reply, stage, !external) {
                DeliveryOutcome::Delivered => delivered.push((r, reply)),
                DeliveryOutcome::Ndr(_) => failed.push((r, reply)),
                // Reference §5: the active copy moved; routing must be redone.
                DeliveryOutcome::Reroute => reroute.push((r, reply)),
                DeliveryOutcome::Retry => deferred.push((r, reply)),
            }
        }
        let event = |event: &str, list: &[(QueuedRecipient, Reply)]| {
            let mut ev = tracking_event(ctx, &msg, event, "SMTP");
            ev.date_time = sent_at.clone();
            self.peer_columns(&mut ev, peer);
            ev.recipient_address = list.iter().map(|(r, _)| r.address.clone()).collect();
            ev.recipient_status = list.iter().map(|(_, reply)| reply.one_line()).collect();
            if event == "SEND" && external {
                ev.source_context = peer.client.tls_description().unwrap_or_default();
            }
            ev
        };
        let mut updates = Vec::new();
        if !delivered.is_empty() {
            ctx.logs.tracking.log(event("SEND", &delivered));
            updates.extend(
                delivered
                    .iter()
                    .map(|(r, _)| (r.address.clone(), RecipientState::Delivered, None)),
            );
        }
        let later: Vec<_> = deferred.iter().chain(&reroute).cloned().collect();
        if !later.is_empty() {
            ctx.logs.tracking.log(event("DEFER", &later));
            updates.extend(later.iter().map(|(r, reply)| {
                (
                    r.address.clone(),
                    RecipientState::Ready,
                    Some(reply.one_line()),
                )
            }));
        }
        if !updates.is_empty() {
            self.db.update_recipients(msg.id, updates);
        }
        if msg.finish(delivered.len()) {
            self.db.delete(msg.id);
        }
        if !failed.is_empty() {
            self.fail(&msg, failed, external.then_some(&*peer), "SMTP")
                .await;
        }
        // Success notices: delivered into a mailbox here, or relayed to a server that
        // will not report (RFC 3461 §5.2).
        let success = match queue.next_hop.delivery_type {
            DeliveryType::SmtpDeliveryToMailbox => Some(DsnKind::Delivered),
            _ if external && !dsn => Some(DsnKind::Relayed),
            _ => None,
        };
        if let Some(kind) = success {
            let list = delivered
                .iter()
                .map(|(r, reply)| {
                    (
                        r.clone(),
                        DsnRecipient::from_reply(r, reply, external.then_some(peer.host.as_str())),
                    )
                })
                .collect();
            self.dsn.report(kind, &msg, list).await;
        }
        if !reroute.is_empty() {
            self.resubmit
                .resubmit(msg.clone(), reroute.into_iter().map(|(r, _)| r).collect());
        }
        if !deferred.is_empty() {
            // Get-Message shows why each recipient waits.
            let recipients = deferred
                .into_iter()
                .map(|(mut r, reply)| {
                    r.last_error = Some(reply.one_line());
                    r
                })
                .collect();
            // Per-recipient retry; the queue itself stays up.
            let not_before = Some(self.policy.not_before(0, Instant::now()));
            self.requeue(
                queue,
                Item {
                    message: msg.clone(),
                    recipients,
                    not_before,
                },
            );
        }
        Ok(())
    }

    /// Every recipient of `item` fails with `reply` (size, SMTPUTF8, DNS).
    /// Puts an item back in `queue` for a later attempt. The queue has it in flight, so
    /// it cannot have been retired; if it somehow was, the set makes a new one.
    fn requeue(&self, queue: &DeliveryQueue, item: Item) {
        if let Err(item) = queue.push(item)
            && let Some(queues) = self.queues.upgrade()
        {
            queues.enqueue(&queue.next_hop, item);
        }
    }

    /// The columns of a row about a session with `peer`: the connector, this server
    /// (short name, as Exchange writes its own) and the peer (its FQDN).
    fn peer_columns(&self, ev: &mut crate::logs::tracking::TrackingEvent, peer: &Peer) {
        ev.connector_id = peer
            .connector
            .clone()
            .unwrap_or_else(|| INTRA_ORG_SEND_CONNECTOR.into());
        ev.server_ip = peer.client.remote.ip().to_string();
        ev.server_hostname = peer.host.clone();
        ev.client_ip = peer.client.local.ip().to_string();
        ev.client_hostname = self.ctx.name().to_string();
    }

    async fn fail_all(&self, item: &Item, reply: Reply, peer: Option<&Peer>, source: &str) {
        let failed = item
            .recipients
            .iter()
            .map(|r| (r.clone(), reply.clone()))
            .collect();
        self.fail(&item.message, failed, peer, source).await;
    }

    /// Recipients that will never be delivered: FAIL, state, and the NDR.
    async fn fail(
        &self,
        msg: &Arc<QueuedMessage>,
        failed: Vec<(QueuedRecipient, Reply)>,
        peer: Option<&Peer>,
        source: &str,
    ) {
        if failed.is_empty() {
            return;
        }
        let mut ev = tracking_event(&self.ctx, msg, "FAIL", source);
        ev.recipient_address = failed.iter().map(|(r, _)| r.address.clone()).collect();
        ev.recipient_status = failed.iter().map(|(_, reply)| reply.one_line()).collect();
        if let Some(peer) = peer {
            self.peer_columns(&mut ev, peer);
        }
        self.ctx.logs.tracking.log(ev);
        self.db.update_recipients(
            msg.id,
            failed
                .iter()
                .map(|(r, reply)| {
                    (
                        r.address.clone(),
                        RecipientState::Failed,
                        Some(reply.one_line()),
                    )
                })
                .collect(),
        );
        let list = failed
            .iter()
            .map(|(r, reply)| {
                (
                    r.clone(),
                    DsnRecipient::from_reply(r, reply, peer.map(|p| p.host.as_str())),
                )
            })
            .collect();
        self.dsn.report(DsnKind::Failed, msg, list).await;
        if msg.finish(failed.len()) {
            self.db.delete(msg.id);
        }
    }

    /// Expires old messages (NDR 4.4.7) and sends one delay notice per recipient once
    /// the delay notification timeout has passed (reference §6).
    async fn sweeper(self, queue: Arc<DeliveryQueue>) {
        let dir = self.ctx.dir();
        let settings = dir.transport();
        let expiry = Expiry {
            expiration: settings.message_expiration_timeout,
            delay: settings.delay_notification_timeout,
        };
        let max_idle = settings.queue_max_idle_time;
        // Often enough to retire an idle queue near QueueMaxIdleTime too.
        let period = expiry
            .sweep_period()
            .min(max_idle / 4)
            .max(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.tasks.stopping() => return,
            }
            if let Some(queues) = self.queues.upgrade()
                && queues.retire_if_idle(&queue, Instant::now(), max_idle)
            {
                tracing::debug!(queue = %queue.next_hop.domain, "idle queue removed (QueueMaxIdleTime)");
                return;
            }
            let now = SystemTime::now();
            for item in queue.take_expired(&expiry, now) {
                let reply = replies::message_expired();
                let last = item
                    .recipients
                    .iter()
                    .filter_map(|r| r.last_error.clone())
                    .next();
                let failed = item
                    .recipients
                    .iter()
                    .map(|r| {
                        let reply = match &last {
                            Some(e) => replies::message_expired_with(e),
                            None => reply.clone(),
                        };
                        (r.clone(), reply)
                    })
                    .collect();
                self.fail(&item.message, failed, None, "QUEUE").await;
            }
            for (msg, recipients) in queue.take_delay_due(&expiry, now) {
                self.db.delay_notified(
                    msg.id,
                    recipients.iter().map(|r| r.address.clone()).collect(),
                );
                let last_error = queue
                    .info(self.ctx.name())
                    .last_error
                    .unwrap_or_else(|| replies::message_delayed().one_line());
                let list: Vec<(QueuedRecipient, DsnRecipient)> = recipients
                    .into_iter()
                    .map(|r| {
                        let diagnostic = r.last_error.clone().unwrap_or_else(|| last_error.clone());
                        // The reason is known as stored text only.
                        let d = DsnRecipient {
                            address: r.address.clone(),
                            orcpt: r.orcpt.clone(),
                            status: dsn::status_in(&diagnostic),
                            diagnostic,
                            remote_mta: None,
                        };
                        (r, d)
                    })
                    .collect();
                let mut ev = tracking_event(&self.ctx, &msg, "DEFER", "QUEUE");
                ev.recipient_address = list.iter().map(|(r, _)| r.address.clone()).collect();
                ev.recipient_status = vec![last_error.clone()];
                self.ctx.logs.tracking.log(ev);
                self.dsn.report(DsnKind::Delayed, &msg, list).await;
            }
        }
    }
}

impl NewQueues for Transmitter {
    /// A new delivery queue: its transmitter and sweeper start.
    fn created(&self, queue: Arc<DeliveryQueue>) {
        self.start(queue);
    }
}

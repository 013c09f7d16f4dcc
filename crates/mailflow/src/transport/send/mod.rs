//! SMTP Send: the transmitters that empty delivery queues through the implicit
//! `Intra-Organization SMTP Send Connector` (reference §1.7): to Mailbox Transport
//! Delivery for mailbox queues, to the Transport service of another server for relay
//! queues (remote DAG, remote site, hub site, expansion server, connector source
//! servers). Each connection carries up to `IntraOrgConnectorSmtpMaxMessagesPerConnection`
//! messages; where to connect is asked of routing at each connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailflow_smtp::Reply;

use super::queue::store::{QueueDb, QueuedRecipient, RecipientState};
use super::queue::{DeliveryQueue, DeliveryType, Item, RetryPolicy};
use super::{INTRA_ORG_SEND_CONNECTOR, Resubmitter, tracking_event};
use crate::context::ServerContext;
use crate::logs::LoggingLevel;
use crate::logs::protocol::ProtocolSession;
use crate::net::client::{ClientError, SmtpClient};
use crate::net::orgauth;

/// MaxConcurrentMailboxDeliveries (reference §5).
const MAILBOX_DELIVERY_CONNECTIONS: usize = 20;
/// Connections per relay queue to another Transport service.
const RELAY_CONNECTIONS: usize = 10;
/// IntraOrgConnectorSmtpMaxMessagesPerConnection (reference §1.7).
const MAX_MESSAGES_PER_CONNECTION: usize = 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// What every transmitter of this server needs.
#[derive(Clone)]
pub struct Transmitter {
    pub ctx: Arc<ServerContext>,
    pub db: QueueDb,
    pub policy: RetryPolicy,
    pub resubmit: Resubmitter,
}

/// The server a connection reached.
struct Peer {
    fqdn: String,
    client: SmtpClient,
}

impl Transmitter {
    /// Starts what empties a new queue.
    pub fn start(&self, queue: Arc<DeliveryQueue>) {
        let workers = match queue.next_hop.delivery_type {
            DeliveryType::SmtpDeliveryToMailbox => MAILBOX_DELIVERY_CONNECTIONS,
            DeliveryType::Unreachable => {
                queue.set_last_error("550 5.4.4 SMTPSEND.DNS.NonExistentDomain; no send connector matches the recipient's domain");
                return;
            }
            DeliveryType::DnsConnectorDelivery | DeliveryType::SmartHostConnectorDelivery => {
                // Honest placeholder until outbound delivery exists: the mail waits here.
                queue.set_last_error(
                    "451 4.4.0 Outbound delivery through send connectors is not available in this release; the message waits in this queue",
                );
                return;
            }
            _ => RELAY_CONNECTIONS,
        };
        for _ in 0..workers {
            tokio::spawn(self.clone().worker(queue.clone()));
        }
    }

    /// Connects to the first target of the next hop that answers.
    async fn connect(&self, queue: &DeliveryQueue) -> Result<Peer, String> {
        let targets = self.ctx.routing().targets(&queue.next_hop);
        if targets.is_empty() {
            return Err(format!(
                "451 4.4.0 No server is available for next hop {}",
                queue.next_hop.domain
            ));
        }
        let mut errors = Vec::new();
        for (name, fqdn, addr) in targets {
            match connect_intra_org(&self.ctx, addr).await {
                Ok(client) => return Ok(Peer { fqdn, client }),
                Err(e) => {
                    tracing::info!(queue = %queue.next_hop.domain, server = %name, "cannot connect to {addr}: {e}");
                    errors.push(format!("{name}: {e}"));
                }
            }
        }
        Err(format!(
            "451 4.4.1 Connection timed out or refused ({})",
            errors.join("; ")
        ))
    }

    async fn worker(self, queue: Arc<DeliveryQueue>) {
        loop {
            queue.wait_for_work().await;
            // Take the work before connecting, so idle workers never open a session
            // with nothing to send.
            let Some(first) = queue.pop() else { continue };
            let mut peer = match self.connect(&queue).await {
                Ok(p) => p,
                Err(e) => {
                    queue.requeue_front(vec![first]);
                    queue.done();
                    queue.connection_failed(e, &self.policy);
                    continue;
                }
            };
            queue.connected();
            let mut next = Some(first);
            let mut sent = 0;
            let mut broken = false;
            while let Some(item) = next.take() {
                let result = self.deliver(&queue, &mut peer, item).await;
                queue.done();
                sent += 1;
                if let Err((item, e)) = result {
                    queue.requeue_front(vec![item]);
                    queue.connection_failed(e.as_reply().one_line(), &self.policy);
                    broken = true;
                    break;
                }
                if sent < MAX_MESSAGES_PER_CONNECTION {
                    next = queue.pop();
                }
            }
            if !broken {
                peer.client.quit().await;
            }
        }
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
        let mut mail = format!("MAIL FROM:<{}> SIZE={}", env.return_path, msg.content.len());
        if !env.body.is_empty() {
            mail.push_str(&format!(" BODY={}", env.body));
        }
        if env.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        let rcpts: Vec<String> = item
            .recipients
            .iter()
            .map(|r| format!("RCPT TO:<{}>", r.address))
            .collect();
        // SEND is stamped when transmission starts, so it sorts before the next hop's
        // RECEIVE as in Exchange's sequence (reference §7.6).
        let sent_at = crate::logs::tracking::now_timestamp();
        let (_, replies) = match peer.client.send_message(&mail, &rcpts, &msg.content).await {
            Ok(r) => r,
            Err(e) => return Err((item, e)),
        };
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        let mut deferred = Vec::new();
        let mut reroute = Vec::new();
        for (r, reply) in item.recipients.into_iter().zip(replies) {
            if reply.is_positive() {
                delivered.push((r, reply));
            } else if reply.is_permanent() {
                failed.push((r, reply));
            } else if reply.text().contains("reroute") {
                // Reference §5: the active copy moved; routing must be redone.
                reroute.push((r, reply));
            } else {
                deferred.push((r, reply));
            }
        }
        let event = |event: &str, list: &[(QueuedRecipient, Reply)]| {
            let mut ev = tracking_event(ctx, &msg, event, "SMTP");
            ev.date_time = sent_at.clone();
            ev.connector_id = INTRA_ORG_SEND_CONNECTOR.into();
            ev.server_ip = peer.client.remote.ip().to_string();
            ev.server_hostname = peer.fqdn.clone();
            ev.client_ip = peer.client.local.ip().to_string();
            ev.client_hostname = ctx.fqdn().to_string();
            ev.recipient_address = list.iter().map(|(r, _)| r.address.clone()).collect();
            ev.recipient_status = list.iter().map(|(_, reply)| reply.one_line()).collect();
            ev
        };
        let mut updates = Vec::new();
        if !delivered.is_empty() {
            ctx.tracking_transport.log(event("SEND", &delivered));
            updates.extend(
                delivered
                    .iter()
                    .map(|(r, _)| (r.address.clone(), RecipientState::Delivered, None)),
            );
        }
        if !failed.is_empty() {
            ctx.tracking_transport.log(event("FAIL", &failed));
            updates.extend(failed.iter().map(|(r, reply)| {
                (
                    r.address.clone(),
                    RecipientState::Failed,
                    Some(reply.one_line()),
                )
            }));
        }
        let later: Vec<_> = deferred.iter().chain(&reroute).collect();
        if !later.is_empty() {
            let list: Vec<(QueuedRecipient, Reply)> = later.into_iter().cloned().collect();
            ctx.tracking_transport.log(event("DEFER", &list));
            updates.extend(list.iter().map(|(r, reply)| {
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
        if msg.finish(delivered.len() + failed.len()) {
            self.db.delete(msg.id);
        }
        if !reroute.is_empty() {
            self.resubmit
                .resubmit(msg.clone(), reroute.into_iter().map(|(r, _)| r).collect());
        }
        if !deferred.is_empty() {
            let recipients = deferred.into_iter().map(|(r, _)| r).collect();
            // Per-recipient retry; the queue itself stays up.
            let not_before = Some(Instant::now() + self.policy.interval(0));
            queue.push(Item {
                message: msg.clone(),
                recipients,
                not_before,
            });
        }
        Ok(())
    }
}

/// Connects to another service of the organisation (Mailbox Delivery or Transport) and
/// authenticates as this server's Transport service.
pub async fn connect_intra_org(
    ctx: &ServerContext,
    target: SocketAddr,
) -> Result<SmtpClient, ClientError> {
    let log = if ctx.dir.org.transport.intra_org_connector_protocol_logging == LoggingLevel::Verbose
    {
        ctx.hub_send_log
            .session(INTRA_ORG_SEND_CONNECTOR, SocketAddr::new(ctx.ip, 0), target)
    } else {
        ProtocolSession::disabled()
    };
    let mut client = SmtpClient::connect(target, ctx.fqdn(), CONNECT_TIMEOUT, log).await?;
    client.timeout_for_commands(COMMAND_TIMEOUT);
    client
        .auth_plain(orgauth::HUB, ctx.name(), &ctx.secret.password(ctx.name()))
        .await?;
    Ok(client)
}

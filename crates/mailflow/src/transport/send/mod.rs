//! SMTP Send: the transmitters that empty delivery queues. Mailbox queues
//! (SmtpDeliveryToMailbox) are sent through the implicit `Intra-Organization SMTP Send
//! Connector` to Mailbox Transport Delivery on the server holding the database's active
//! copy, reusing each connection for up to `IntraOrgConnectorSmtpMaxMessagesPerConnection`
//! messages.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailflow_smtp::Reply;

use super::queue::store::{QueueDb, QueuedRecipient, RecipientState};
use super::queue::{DeliveryQueue, DeliveryType, Item, RetryPolicy};
use super::{INTRA_ORG_SEND_CONNECTOR, tracking_event};
use crate::context::ServerContext;
use crate::logs::LoggingLevel;
use crate::logs::protocol::ProtocolSession;
use crate::net::client::{ClientError, SmtpClient};
use crate::net::orgauth;

/// MaxConcurrentMailboxDeliveries (reference §5).
const MAILBOX_DELIVERY_CONNECTIONS: usize = 20;
/// IntraOrgConnectorSmtpMaxMessagesPerConnection (reference §1.7).
const MAX_MESSAGES_PER_CONNECTION: usize = 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Starts what empties a new queue.
pub fn start_transmitter(
    ctx: Arc<ServerContext>,
    db: QueueDb,
    queue: Arc<DeliveryQueue>,
    policy: RetryPolicy,
) {
    match queue.next_hop.delivery_type {
        DeliveryType::SmtpDeliveryToMailbox => {
            for _ in 0..MAILBOX_DELIVERY_CONNECTIONS {
                tokio::spawn(mailbox_worker(
                    ctx.clone(),
                    db.clone(),
                    queue.clone(),
                    policy.clone(),
                ));
            }
        }
        DeliveryType::Unreachable => {
            queue.set_last_error("550 5.4.4 SMTPSEND.DNS.NonExistentDomain; no send connector matches the recipient's domain");
        }
        DeliveryType::DnsConnectorDelivery | DeliveryType::SmartHostConnectorDelivery => {
            // Honest placeholder until outbound delivery exists: the mail waits here.
            queue.set_last_error("451 4.4.0 Outbound delivery through send connectors is not available in this release; the message waits in this queue");
        }
    }
}

/// Connects to Mailbox Transport Delivery and authenticates as this server's Transport.
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

async fn mailbox_worker(
    ctx: Arc<ServerContext>,
    db: QueueDb,
    queue: Arc<DeliveryQueue>,
    policy: RetryPolicy,
) {
    let Some(target) = queue.next_hop.target else {
        return;
    };
    loop {
        queue.wait_for_work().await;
        let mut client = match connect_intra_org(&ctx, target).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(queue = %queue.next_hop.domain, "cannot reach Mailbox Transport Delivery at {target}: {e}");
                queue.connection_failed(e.as_reply().one_line(), &policy);
                continue;
            }
        };
        queue.connected();
        let mut sent = 0;
        let mut broken = false;
        while sent < MAX_MESSAGES_PER_CONNECTION {
            let Some(item) = queue.pop() else { break };
            let result = deliver(&ctx, &db, &queue, &mut client, item, &policy).await;
            queue.done();
            sent += 1;
            if let Err((item, e)) = result {
                queue.requeue_front(vec![item]);
                queue.connection_failed(e.as_reply().one_line(), &policy);
                broken = true;
                break;
            }
        }
        if !broken {
            client.quit().await;
        }
    }
}

/// Sends one item; per-recipient outcomes are recorded. A broken connection gives the
/// item back for another attempt.
async fn deliver(
    ctx: &ServerContext,
    db: &QueueDb,
    queue: &DeliveryQueue,
    client: &mut SmtpClient,
    item: Item,
    policy: &RetryPolicy,
) -> Result<(), (Item, ClientError)> {
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
    let (_, replies) = match client.send_message(&mail, &rcpts, &msg.content).await {
        Ok(r) => r,
        Err(e) => return Err((item, e)),
    };
    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    let mut deferred = Vec::new();
    for (r, reply) in item.recipients.into_iter().zip(replies) {
        if reply.is_positive() {
            delivered.push((r, reply));
        } else if reply.is_permanent() {
            failed.push((r, reply));
        } else {
            deferred.push((r, reply));
        }
    }
    let server_event = |event: &str, list: &[(QueuedRecipient, Reply)]| {
        let mut ev = tracking_event(ctx, &msg, event, "SMTP");
        ev.date_time = sent_at.clone();
        ev.connector_id = INTRA_ORG_SEND_CONNECTOR.into();
        ev.server_ip = client.remote.ip().to_string();
        ev.server_hostname = queue.next_hop.domain.clone();
        ev.client_ip = client.local.ip().to_string();
        ev.client_hostname = ctx.fqdn().to_string();
        ev.recipient_address = list.iter().map(|(r, _)| r.address.clone()).collect();
        ev.recipient_status = list.iter().map(|(_, reply)| reply.one_line()).collect();
        ev
    };
    let mut updates = Vec::new();
    if !delivered.is_empty() {
        ctx.tracking_transport.log(server_event("SEND", &delivered));
        updates.extend(
            delivered
                .iter()
                .map(|(r, _)| (r.address.clone(), RecipientState::Delivered, None)),
        );
    }
    if !failed.is_empty() {
        ctx.tracking_transport.log(server_event("FAIL", &failed));
        updates.extend(failed.iter().map(|(r, reply)| {
            (
                r.address.clone(),
                RecipientState::Failed,
                Some(reply.one_line()),
            )
        }));
    }
    if !deferred.is_empty() {
        ctx.tracking_transport.log(server_event("DEFER", &deferred));
        updates.extend(deferred.iter().map(|(r, reply)| {
            (
                r.address.clone(),
                RecipientState::Ready,
                Some(reply.one_line()),
            )
        }));
    }
    if !updates.is_empty() {
        db.update_recipients(msg.id, updates);
    }
    if msg.finish(delivered.len() + failed.len()) {
        db.delete(msg.id);
    }
    if !deferred.is_empty() {
        let recipients = deferred.into_iter().map(|(r, _)| r).collect();
        // MessageRetryInterval-style per-recipient retry; the queue itself stays up.
        let not_before = Some(Instant::now() + policy.interval(0));
        queue.push(Item {
            message: msg.clone(),
            recipients,
            not_before,
        });
    }
    Ok(())
}

//! Mailbox Transport Submission (reference §1.1, §4.5): picks messages out of the
//! Outboxes of this server's active databases, gives them a Message-ID and Date when
//! missing, strips Bcc, and sends them by SMTP to a Transport service chosen like Front
//! End chooses (the recipients' delivery group, else this site). It keeps no queue: if
//! no Transport answers, the message stays in the Outbox and is tried again; once
//! Transport has it, it moves to Sent Items.

use std::sync::Arc;
use std::time::Duration;

use mailflow_smtp::client::{mail_line, rcpt_line};
use mailflow_smtp::{Address, Body, MailParams, RcptParams};

use super::context::MailboxContext;
use super::store::{Folder, MailboxStore, StoredItem};
use crate::directory::hub_selector;
use crate::logs::tracking::TrackingEvent;
use crate::message;
use crate::net::orgauth;

/// How often the Outboxes are read (Exchange is notified by the store; polling keeps
/// this independent of the store backend).
const POLL: Duration = Duration::from_millis(500);
/// Retry a message whose submission failed after this long.
const RETRY: Duration = Duration::from_secs(5);

/// Starts the Outbox poller; it stops between polls once `stop` turns true. The caller
/// (server.rs) owns the returned task.
pub fn start(
    ctx: Arc<MailboxContext>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failed_until: std::collections::HashMap<i64, std::time::Instant> =
            Default::default();
        loop {
            for (database, store) in ctx.stores.all() {
                if !ctx.holds_active_copy(database) {
                    continue;
                }
                let items = match store.take_outbox(100).await {
                    Ok(items) => items,
                    Err(e) => {
                        tracing::warn!(database, "cannot read Outboxes: {e}");
                        continue;
                    }
                };
                for item in items {
                    if failed_until
                        .get(&item.id)
                        .is_some_and(|t| *t > std::time::Instant::now())
                    {
                        continue;
                    }
                    if let Err(e) = submit(&ctx, database, store.as_ref(), &item).await {
                        tracing::info!(database, item = item.id, "submission deferred: {e}");
                        failed_until.insert(item.id, std::time::Instant::now() + RETRY);
                    } else {
                        failed_until.remove(&item.id);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    })
}

fn event(
    ctx: &MailboxContext,
    item: &StoredItem,
    database: &str,
    event_id: &str,
    content: &[u8],
    message_id: &str,
) -> TrackingEvent {
    // Exchange names its own server short and a peer by its FQDN (seed 003): the
    // Outbox is read here, so both columns are this server until SUBMIT names the
    // Transport server it submitted to.
    TrackingEvent {
        client_ip: ctx.ip().to_string(),
        client_hostname: ctx.name().to_string(),
        server_ip: ctx.ip().to_string(),
        server_hostname: ctx.name().to_string(),
        source: "STOREDRIVER".into(),
        event_id: event_id.into(),
        source_context: format!(
            "MDB:{database}, Mailbox:{}, Event:{}, MessageClass:IPM.Note, ClientType:User",
            item.mailbox, item.id
        ),
        internal_message_id: item.id.to_string(),
        message_id: message_id.to_string(),
        network_message_id: item.network_message_id.clone(),
        total_bytes: content.len() as u64,
        message_subject: message::subject(content),
        sender_address: item.mailbox.clone(),
        return_path: item.mailbox.clone(),
        directionality: "Originating".into(),
        transport_traffic_type: "Email".into(),
        ..Default::default()
    }
}

async fn submit(
    ctx: &MailboxContext,
    database: &str,
    store: &dyn MailboxStore,
    item: &StoredItem,
) -> Result<(), String> {
    let original = store.content(item.id).await.map_err(|e| e.to_string())?;
    let recipients = message::header_recipients(&original);
    // The message as it leaves the mailbox: Bcc never travels (reference §12.4 does the
    // same for Pickup), Message-ID and Date are added when missing.
    let mut prefix = String::new();
    // Derived from the item's network message id, so a retried submission carries the
    // same ids and the store's duplicate detection absorbs a second copy.
    let message_id = match message::get(&original, "Message-ID") {
        Some(id) if !id.is_empty() => id,
        _ => {
            let id = format!("<{}@{}>", item.network_message_id, ctx.fqdn());
            prefix.push_str(&format!("Message-ID: {id}\r\n"));
            id
        }
    };
    if message::get(&original, "Date").is_none() {
        prefix.push_str(&format!("Date: {}\r\n", crate::net::rfc2822_now()));
    }
    prefix.push_str(&format!(
        "{}: {}\r\n",
        crate::message::NETWORK_MESSAGE_ID_HEADER,
        item.network_message_id
    ));
    // What a user wrote may not pose as the organisation's own headers.
    let body = message::strip_fields(&original, |n| {
        n.eq_ignore_ascii_case("Bcc")
            || n.to_ascii_lowercase()
                .starts_with(&crate::message::ORG_HEADER_PREFIX.to_ascii_lowercase())
    })
    .unwrap_or(original);
    let mut content = prefix.into_bytes();
    content.extend_from_slice(&body);

    ctx.logs.submission_tracking.log(TrackingEvent {
        recipient_address: recipients.clone(),
        ..event(ctx, item, database, "RECEIVE", &content, &message_id)
    });
    if recipients.is_empty() {
        // Nothing to send to: the message goes back to Drafts, as a client would show.
        store
            .move_item(item.id, Folder::Drafts)
            .await
            .map_err(|e| e.to_string())?;
        ctx.logs.submission_tracking.log(TrackingEvent {
            recipient_status: vec![mailflow_smtp::replies::submit_no_recipients().one_line()],
            ..event(ctx, item, database, "SUBMITFAIL", &content, &message_id)
        });
        return Ok(());
    }
    let addresses: Vec<(Address, RcptParams)> = recipients
        .iter()
        .filter_map(|r| Address::parse(r, true).ok())
        .map(|a| (a, RcptParams::default()))
        .collect();
    let cfg = ctx.config();
    let targets = hub_selector::choose_servers(&cfg, &ctx.active.current(), &addresses);
    // SUBMIT is stamped when submission starts: Exchange's sequence has it before the
    // Transport service's RECEIVE (reference §7.6).
    let submitted_at = crate::logs::tracking::now_timestamp();
    let mut last_error = "no Transport server".to_string();
    for (server, target) in targets {
        let mut client = match ctx
            .org
            .connect_intra_org(target, orgauth::SUBMISSION, &ctx.logs.submission_send)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        let rcpts: Vec<String> = recipients
            .iter()
            .map(|r| rcpt_line(r, &RcptParams::default()))
            .collect();
        let utf8 = !item.mailbox.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        let mail = mail_line(
            &item.mailbox,
            &MailParams {
                size: Some(content.len() as u64),
                body: Body::EightBitMime,
                smtputf8: utf8,
                ..MailParams::default()
            },
        );
        match client.send_message(&mail, &rcpts, &content).await {
            Ok((reply, _)) if reply.is_positive() => {
                client.quit().await;
                ctx.logs.submission_tracking.log(TrackingEvent {
                    date_time: submitted_at.clone(),
                    recipient_address: recipients.clone(),
                    server_ip: target.ip().to_string(),
                    server_hostname: cfg
                        .dir
                        .server(&server)
                        .map(|s| s.fqdn.clone())
                        .unwrap_or(server),
                    reference: reply.one_line(),
                    ..event(ctx, item, database, "SUBMIT", &content, &message_id)
                });
                store
                    .move_item(item.id, Folder::SentItems)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
            Ok((reply, _)) if reply.is_permanent() => {
                // Transport refused for good: the item goes back to Drafts with the
                // reason logged rather than being retried forever.
                client.quit().await;
                ctx.logs.submission_tracking.log(TrackingEvent {
                    recipient_status: vec![reply.one_line()],
                    ..event(ctx, item, database, "SUBMITFAIL", &content, &message_id)
                });
                store
                    .move_item(item.id, Folder::Drafts)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
            Ok((reply, _)) => last_error = reply.one_line(),
            Err(e) => last_error = e.to_string(),
        }
    }
    ctx.logs.submission_tracking.log(TrackingEvent {
        recipient_status: vec![last_error.clone()],
        ..event(ctx, item, database, "SUBMITDEFER", &content, &message_id)
    });
    Err(last_error)
}

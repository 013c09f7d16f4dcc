//! Mailbox Transport Delivery: the implicit `Default Mailbox Delivery <server>` receive
//! connector (:475) and the store driver that commits into the mailbox database.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use mailflow_smtp::{Address, MailParams, RcptParams, Reply, replies};

use super::context::MailboxContext;
use super::store::{Committed, Folder, MailboxStore, NewItem};
use crate::directory::Recipient;
use crate::directory::live::LiveDirectory;
use crate::logs::tracking::TrackingEvent;
use crate::message;
use crate::message::NETWORK_MESSAGE_ID_HEADER;
use crate::net::orgauth;
use crate::net::receive::{SessionInfo, SmtpHandler};

/// The mailbox databases whose active copy this server holds, opened once.
pub struct Stores {
    /// Lowercased name → (name as configured, store).
    by_database: HashMap<String, (String, Arc<dyn MailboxStore>)>,
}

impl Stores {
    /// Opens every database with a copy on this server (`<data_dir>/Databases/<DB>.db`).
    pub fn open(ctx: &LiveDirectory) -> anyhow::Result<Stores> {
        let mut by_database = HashMap::new();
        for db in ctx.dir().databases() {
            if !db.copies.iter().any(|c| c.eq_ignore_ascii_case(ctx.name())) {
                continue;
            }
            let path = database_path(ctx, &db.name);
            if let Some(parent) = path.parent() {
                crate::files::create_private_dir_all(parent)?;
            }
            let store = super::store::open_store(&db.store, &db.name, &path)
                .map_err(|e| anyhow::anyhow!("mailbox database {}: {e}", db.name))?;
            by_database.insert(db.name.to_lowercase(), (db.name.clone(), store));
        }
        Ok(Stores { by_database })
    }

    /// Every database with a copy on this server: (name as configured, store).
    pub fn all(&self) -> Vec<(&str, Arc<dyn MailboxStore>)> {
        self.by_database
            .iter()
            .map(|(_, (name, s))| (name.as_str(), s.clone()))
            .collect()
    }

    pub fn get(&self, database: &str) -> Option<&Arc<dyn MailboxStore>> {
        self.by_database
            .get(&database.to_lowercase())
            .map(|(_, s)| s)
    }
}

/// Where a SQLite mailbox database of this server lives.
pub fn database_path(ctx: &LiveDirectory, database: &str) -> std::path::PathBuf {
    ctx.data_dir()
        .join("Databases")
        .join(format!("{database}.db"))
}

pub struct MailboxDeliverySession {
    ctx: Arc<MailboxContext>,
    from: Option<Address>,
    /// (mailbox primary address, database)
    recipients: Vec<(String, String)>,
    content: Vec<u8>,
}

impl MailboxDeliverySession {
    pub fn new(ctx: Arc<MailboxContext>) -> MailboxDeliverySession {
        MailboxDeliverySession {
            ctx,
            from: None,
            recipients: Vec::new(),
            content: Vec::new(),
        }
    }
}

#[async_trait]
impl SmtpHandler for MailboxDeliverySession {
    async fn mail(
        &mut self,
        info: &SessionInfo,
        from: Option<Address>,
        _params: MailParams,
    ) -> Reply {
        // Only Transport services deliver here (reference §1.2).
        if info
            .org_server
            .as_ref()
            .is_none_or(|(_, service)| service != orgauth::HUB)
        {
            return replies::not_authenticated();
        }
        self.from = from;
        replies::sender_ok()
    }

    async fn rcpt(&mut self, _info: &SessionInfo, to: Address, _params: RcptParams) -> Reply {
        let dir = &self.ctx.dir();
        let Some(Recipient::Mailbox(i)) = dir.lookup(&to.key()) else {
            return replies::recipient_not_found();
        };
        let mailbox = dir.mailbox(i);
        if !self.ctx.holds_active_copy(&mailbox.database)
            || self.ctx.stores.get(&mailbox.database).is_none()
        {
            // Reference §5: the sender's routing is stale; it must route again.
            let active = self.ctx.active.active_server(&mailbox.database);
            return replies::database_not_active(
                &mailbox.database,
                active.as_deref().unwrap_or("none"),
            );
        }
        if !self
            .recipients
            .iter()
            .any(|(a, _)| a.eq_ignore_ascii_case(&mailbox.address))
        {
            self.recipients
                .push((mailbox.address.to_lowercase(), mailbox.database.clone()));
        }
        replies::recipient_ok()
    }

    async fn data_start(&mut self, _info: &SessionInfo) -> Reply {
        self.content.clear();
        Reply::plain(354, "Start mail input; end with <CRLF>.<CRLF>")
    }

    async fn data(&mut self, chunk: Vec<u8>) {
        self.content.extend_from_slice(&chunk);
    }

    async fn data_end(&mut self, info: &SessionInfo) -> Reply {
        let reply = self.deliver(info).await;
        self.reset().await;
        reply
    }

    async fn reset(&mut self) {
        self.from = None;
        self.recipients.clear();
        self.content = Vec::new();
    }
}

impl MailboxDeliverySession {
    /// The store driver: one commit per database, 250 only when all committed.
    async fn deliver(&mut self, info: &SessionInfo) -> Reply {
        let ctx = &self.ctx;
        let received = crate::net::received_header(
            info.helo.as_deref().unwrap_or("unknown"),
            info.remote.ip(),
            ctx.fqdn(),
            info.local.ip(),
            info.tls.as_deref(),
            env!("CARGO_PKG_VERSION"),
            Some("Mailbox Transport"),
        );
        let mut content = Vec::with_capacity(received.len() + self.content.len());
        content.extend_from_slice(received.as_bytes());
        content.extend_from_slice(&self.content);
        let content: Arc<[u8]> = content.into();
        // What the sending Transport knew of the message (message::DIRECTIONALITY_HEADER).
        let [
            network_message_id,
            message_id,
            internal_message_id,
            message_info,
            directionality,
        ] = message::get_each(
            &content,
            [
                NETWORK_MESSAGE_ID_HEADER,
                "Message-ID",
                message::INTERNAL_MESSAGE_ID_HEADER,
                message::ORIGINAL_ARRIVAL_HEADER,
                message::DIRECTIONALITY_HEADER,
            ],
        );
        let network_message_id =
            network_message_id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let message_id = message_id.unwrap_or_default();
        let (subject, sender) = message::subject_and_sender(&content);
        let return_path = self
            .from
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "<>".into());
        // Exchange names its own server short and a peer by its FQDN (seed 003).
        let base = TrackingEvent {
            client_ip: info.remote.ip().to_string(),
            client_hostname: info.helo.clone().unwrap_or_default(),
            server_ip: info.local.ip().to_string(),
            server_hostname: ctx.name().to_string(),
            internal_message_id: internal_message_id.unwrap_or_default(),
            message_info: message_info.unwrap_or_default(),
            directionality: directionality.unwrap_or_default(),
            message_id: message_id.clone(),
            network_message_id: network_message_id.clone(),
            total_bytes: content.len() as u64,
            message_subject: subject.clone(),
            sender_address: sender.clone(),
            return_path,
            transport_traffic_type: "Email".into(),
            ..Default::default()
        };
        ctx.logs.delivery_tracking.log(TrackingEvent {
            event_id: "RECEIVE".into(),
            source: "SMTP".into(),
            connector_id: info.connector.to_string(),
            source_context: info.session_id.clone(),
            recipient_address: self.recipients.iter().map(|(a, _)| a.clone()).collect(),
            ..base.clone()
        });
        let mut by_db: HashMap<String, Vec<NewItem>> = HashMap::new();
        for (mailbox, db) in &self.recipients {
            by_db.entry(db.clone()).or_default().push(NewItem {
                mailbox: mailbox.clone(),
                folder: Folder::Inbox,
                network_message_id: network_message_id.clone(),
                internet_message_id: message_id.clone(),
                sender: sender.clone(),
                subject: subject.clone(),
                content: content.clone(),
            });
        }
        for (db, items) in by_db {
            let Some(store) = self.ctx.stores.get(&db) else {
                return replies::database_not_available(&db);
            };
            let mailboxes: Vec<String> = items.iter().map(|i| i.mailbox.clone()).collect();
            match store.commit(items).await {
                Ok(results) => {
                    for (mailbox, result) in mailboxes.into_iter().zip(results) {
                        let (event, status) = match result {
                            Committed::New(_) => ("DELIVER", "250 2.0.0 Delivered to Inbox"),
                            // Reference §5: duplicates are absorbed by the store.
                            Committed::Duplicate(_) => (
                                "DUPLICATEDELIVER",
                                "250 2.0.0 Duplicate delivery suppressed",
                            ),
                        };
                        ctx.logs.delivery_tracking.log(TrackingEvent {
                            event_id: event.into(),
                            source: "STOREDRIVER".into(),
                            // The store driver is this server on both ends (seed 003).
                            client_ip: info.local.ip().to_string(),
                            client_hostname: ctx.name().to_string(),
                            source_context: format!("MDB:{db}, Folder:Inbox"),
                            recipient_address: vec![mailbox],
                            recipient_status: vec![status.into()],
                            ..base.clone()
                        });
                    }
                }
                Err(e) => {
                    tracing::error!(database = %db, "store driver commit failed: {e}");
                    return replies::database_commit_failed(&db, e);
                }
            }
        }
        replies::delivered_to_mailbox(&message_id)
    }
}

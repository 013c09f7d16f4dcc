//! SMTP Receive of the Transport service: the `Default <server>` receive connector
//! (:2525). Only organisation servers may submit here (DESIGN §1). A message is
//! acknowledged with 250 only once it is durable in the queue database.

use std::sync::Arc;

use async_trait::async_trait;
use mailflow_smtp::{Address, MailParams, RcptParams, Reply, replies};

use super::TransportService;
use super::queue::QueuedMessage;
use super::queue::store::{Envelope, QueuedRecipient, RecipientState};
use crate::directory::permissions;
use crate::logs::tracking::now_timestamp;
use crate::message::{self, AuthAs, NETWORK_MESSAGE_ID_HEADER, ORG_HEADER_PREFIX};
use crate::net::orgauth;
use crate::net::receive::{SessionInfo, SmtpHandler};

pub struct TransportReceive {
    service: Arc<TransportService>,
    from: Option<Address>,
    params: MailParams,
    recipients: Vec<QueuedRecipient>,
    content: Vec<u8>,
    /// The receive connector's `success_dsn_for_anonymous` (custom transport
    /// connectors; organisation servers are never anonymous).
    success_dsn_for_anonymous: bool,
}

impl TransportReceive {
    pub fn new(service: Arc<TransportService>) -> TransportReceive {
        TransportReceive {
            service,
            from: None,
            params: MailParams::default(),
            recipients: Vec::new(),
            content: Vec::new(),
            success_dsn_for_anonymous: true,
        }
    }

    /// For a custom receive connector whose `success_dsn_for_anonymous` is false.
    pub fn without_success_dsn_for_anonymous(mut self) -> TransportReceive {
        self.success_dsn_for_anonymous = false;
        self
    }
}

#[async_trait]
impl SmtpHandler for TransportReceive {
    async fn mail(
        &mut self,
        _info: &SessionInfo,
        from: Option<Address>,
        params: MailParams,
    ) -> Reply {
        // Stop-Service MSExchangeTransport: sessions opened before the stop take no
        // new message (their sender tries another Transport server).
        if self.service.is_stopped() {
            return replies::service_not_available();
        }
        self.from = from;
        self.params = params;
        replies::sender_ok()
    }

    async fn rcpt(&mut self, info: &SessionInfo, to: Address, mut params: RcptParams) -> Reply {
        // A custom transport connector's clients are anonymous (organisation servers
        // authenticate): what Front End refuses at RCPT is refused here too.
        if info.org_server.is_none() {
            let dir = self.service.ctx.dir();
            if let Some(crate::directory::Recipient::Group(g)) = dir.lookup(&to.key())
                && let Err(reply) = permissions::check_group_sender(&dir, g, AuthAs::Anonymous)
            {
                return reply;
            }
            if !self.success_dsn_for_anonymous {
                params.notify = permissions::without_success_notify(params.notify);
            }
        }
        // ExchangeServers hold SMTP-Accept-Any-Recipient: the categorizer decides.
        if self
            .recipients
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(&to.to_string()))
        {
            return replies::recipient_ok();
        }
        self.recipients.push(QueuedRecipient {
            address: to.to_string(),
            orcpt: params.orcpt,
            notify: params.notify,
            next_hop: None,
            state: RecipientState::Submitted,
            last_error: None,
            delay_notified: false,
        });
        replies::recipient_ok()
    }

    async fn data_start(&mut self, _info: &SessionInfo) -> Reply {
        self.content.clear();
        Reply::plain(354, "Start mail input; end with <CRLF>.<CRLF>")
    }

    async fn data(&mut self, chunk: Vec<u8>) {
        if self.content.is_empty() {
            self.content = chunk;
        } else {
            self.content.extend_from_slice(&chunk);
        }
    }

    async fn data_end(&mut self, info: &SessionInfo) -> Reply {
        let reply = self.accept(info).await;
        self.reset().await;
        reply
    }

    async fn reset(&mut self) {
        self.from = None;
        self.params = MailParams::default();
        self.recipients.clear();
        self.content = Vec::new();
    }
}

impl TransportReceive {
    async fn accept(&mut self, info: &SessionInfo) -> Reply {
        let ctx = &self.service.ctx;
        let dir = ctx.dir();
        let org = dir.organization();
        let content = std::mem::take(&mut self.content);
        // Reference §11.3: MaxHopCount counts Received: fields; 5.4.6 ends a loop.
        // MaxLocalHopCount counts the Received: fields this server wrote.
        let by_me = format!(" by {} ", ctx.fqdn());
        let local_hops = message::fields(&content)
            .iter()
            .filter(|(n, raw)| {
                n.eq_ignore_ascii_case("Received") && String::from_utf8_lossy(raw).contains(&by_me)
            })
            .count();
        if message::count(&content, "Received") >= org.max_hop_count
            || (org.max_local_hop_count > 0 && local_hops >= org.max_local_hop_count)
        {
            return replies::hop_count_exceeded();
        }
        // Only another Transport service is trusted with organisation headers; what a
        // Front End proxies came from outside and passes the header firewall.
        // Mailbox Transport Submission strips what users wrote and stamps its own id.
        let service = info.org_server.as_ref().map(|(_, s)| s.as_str());
        let trusted = matches!(service, Some(orgauth::HUB | orgauth::SUBMISSION));
        let content = if trusted {
            content
        } else {
            message::strip_prefixed(&content, ORG_HEADER_PREFIX).unwrap_or(content)
        };
        // The mailbox user behind the message: Mailbox Transport Submission sends as the
        // Outbox's owner, a Front End names the user who logged on as AUTH= (Client
        // Proxy). Send As is checked here, where the content is known (Front End cannot
        // inspect it), on the envelope and on From:/Sender: (DESIGN §7).
        let envelope_from = self
            .from
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let submitter = match service {
            Some(orgauth::SUBMISSION) => Some(envelope_from.clone()),
            Some(orgauth::FRONTEND) => self
                .params
                .auth
                .as_deref()
                .filter(|a| *a != "<>")
                // Checked as xtext at MAIL (mailflow-smtp), so it decodes.
                .and_then(|a| mailflow_smtp::xtext::decode_xtext(a).ok())
                .map(|user| String::from_utf8_lossy(&user).into_owned()),
            _ => None,
        };
        if let Some(user) = &submitter {
            let own = permissions::own_addresses(&ctx.dir(), user);
            if let Err(reply) = permissions::check_send_as(&own, &envelope_from, &content) {
                tracing::info!(user = %user, "Send As refused");
                return reply;
            }
        }
        // "Inside the organisation" is decided by authentication, once, where the
        // message enters; later hops (other Transport services) keep the stamp.
        let auth_as = match service {
            Some(orgauth::HUB) => None,
            _ if submitter.is_some() => Some(AuthAs::Internal),
            _ => Some(AuthAs::Anonymous),
        };
        // Untrusted content lost every organisation header (the stamp with them) in
        // the header firewall above; only a trusted sender's old stamp is left to drop.
        let content = match auth_as {
            Some(_) if trusted => AuthAs::unstamped(content),
            _ => content,
        };
        let existing_network_id = if trusted {
            message::get(&content, NETWORK_MESSAGE_ID_HEADER)
        } else {
            None
        };
        let network_message_id = existing_network_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let mut prefix = crate::net::received_header(
            info.helo.as_deref().unwrap_or("unknown"),
            info.remote.ip(),
            ctx.fqdn(),
            info.local.ip(),
            info.tls.as_deref(),
            env!("CARGO_PKG_VERSION"),
            None,
        );
        if existing_network_id.is_none() {
            prefix.push_str(&format!(
                "{NETWORK_MESSAGE_ID_HEADER}: {network_message_id}\r\n"
            ));
        }
        if let Some(auth_as) = auth_as {
            prefix.push_str(&auth_as.header_line());
        }
        let message_id = match message::get(&content, "Message-ID") {
            Some(id) if !id.is_empty() => id,
            _ => {
                // Reference §7.3: Exchange assigns <GUID@ServerFQDN> when missing.
                let id = format!("<{}@{}>", uuid::Uuid::new_v4(), ctx.fqdn());
                prefix.push_str(&format!("Message-ID: {id}\r\n"));
                id
            }
        };
        let mut full = Vec::with_capacity(prefix.len() + content.len());
        full.extend_from_slice(prefix.as_bytes());
        full.extend_from_slice(&content);
        let full: Arc<[u8]> = full.into();
        let (subject, sender_header) = message::subject_and_sender(&full);
        let envelope = Envelope {
            return_path: envelope_from,
            network_message_id,
            message_id: message_id.clone(),
            subject,
            sender_header,
            received_at: now_timestamp(),
            client_ip: info.remote.ip().to_string(),
            client_hostname: info.helo.clone().unwrap_or_default(),
            body: match self.params.body {
                mailflow_smtp::Body::SevenBit => String::new(),
                mailflow_smtp::Body::EightBitMime => "8BITMIME".into(),
                mailflow_smtp::Body::BinaryMime => "BINARYMIME".into(),
            },
            smtputf8: self.params.smtputf8,
            ret: self.params.ret.map(|r| r.keyword().to_string()),
            envid: self.params.envid.clone(),
            // Mail from this organisation's mailboxes, or a hub that already decided.
            crash_count: 0,
            // A Front End passes an authenticated user as AUTH= (Client Proxy).
            directionality: match info.org_server.as_ref().map(|(_, s)| s.as_str()) {
                // Another Transport of the organisation says what it decided.
                Some(orgauth::HUB) => message::get(&full, message::DIRECTIONALITY_HEADER)
                    .filter(|d| d == "Originating" || d == "Incoming")
                    .unwrap_or_else(|| "Originating".into()),
                Some(orgauth::SUBMISSION) => "Originating".into(),
                Some(orgauth::FRONTEND)
                    if self.params.auth.as_deref().is_some_and(|a| a != "<>") =>
                {
                    "Originating".into()
                }
                _ => "Incoming".into(),
            },
        };
        super::supervisor::test_panic_hook(super::supervisor::Stage::Receiving, &envelope.subject);
        let recipients = std::mem::take(&mut self.recipients);
        let queues = &self.service.queues;
        let id = match queues
            .db
            .insert(envelope.clone(), full.clone(), recipients.clone())
            .await
        {
            Ok(id) => id,
            Err(e) => {
                tracing::error!("queue database insert failed: {e}");
                return replies::insufficient_system_resources();
            }
        };
        let msg = QueuedMessage::new(id, envelope, full);
        let mut ev = super::tracking_event(ctx, &msg, "RECEIVE", "SMTP");
        ev.client_ip = info.remote.ip().to_string();
        ev.client_hostname = info.helo.clone().unwrap_or_default();
        ev.server_ip = info.local.ip().to_string();
        ev.connector_id = info.connector.to_string();
        ev.source_context = info.session_id.clone();
        ev.recipient_address = recipients.iter().map(|r| r.address.clone()).collect();
        ev.recipient_status = Vec::new();
        ctx.logs.tracking.log(ev);
        self.service.submit(msg, recipients);
        replies::queued_for_delivery(&message_id, id, ctx.fqdn())
    }
}

//! `Outbound Proxy Frontend <server>` (:717, reference §1.2): send connectors with
//! `front_end_proxy = true` send through here, so outbound mail leaves from the Front
//! End. Only this organisation's Transport services may connect. The proxy is real time:
//! the first RCPT opens the session to the destination (chosen by the same send
//! connector selection Transport used), and every reply is the destination's own, so
//! Transport keeps per-recipient outcomes and its queue.
//!
//! Transport sees this proxy's 8BITMIME, not the destination's: when the destination
//! lacks it, the proxy drops `BODY=8BITMIME`, holds the content until its end and sends
//! it converted to 7-bit MIME (RFC 6152 §3), as SMTP Send would have.

use std::sync::Arc;

use async_trait::async_trait;
use mailflow_smtp::data::DotStuffer;
use mailflow_smtp::{Address, Enhanced, MailParams, RcptParams, Reply};

use crate::context::ServerContext;
use crate::directory::send_connectors::{NoConnector, select_connector, size_limit_reply};
use crate::message::downgrade;
use crate::net::client::SmtpClient;
use crate::net::dns::Dns;
use crate::net::orgauth;
use crate::net::outbound::{self, ConnectFailure, Destination};
use crate::net::receive::{SessionInfo, SmtpHandler};

pub struct OutboundProxySession {
    ctx: Arc<ServerContext>,
    dns: Arc<Dns>,
    mail: Option<String>,
    domain: Option<String>,
    upstream: Option<SmtpClient>,
    stuffer: Option<DotStuffer>,
    /// The content held for a 7-bit conversion (the destination lacks 8BITMIME).
    held: Option<Vec<u8>>,
    smtputf8: bool,
    /// The SIZE Transport declared: a send connector too small for it is not chosen.
    size: u64,
    broken: bool,
}

impl OutboundProxySession {
    pub fn new(ctx: Arc<ServerContext>, dns: Arc<Dns>) -> OutboundProxySession {
        OutboundProxySession {
            ctx,
            dns,
            mail: None,
            domain: None,
            upstream: None,
            stuffer: None,
            held: None,
            smtputf8: false,
            size: 0,
            broken: false,
        }
    }

    fn lost() -> Reply {
        Reply::new(
            451,
            Enhanced(4, 4, 2),
            "Connection to the destination was lost",
        )
    }

    /// Opens the session to the destination of `domain`, and sends MAIL.
    async fn open(&mut self, domain: &str) -> Result<(), Reply> {
        let dir = self.ctx.dir();
        let connector = select_connector(dir.send_connectors(), domain, self.size).map_err(
            |why| match why {
                NoConnector::NoAddressSpace => Reply::new(
                    550,
                    Enhanced(5, 4, 4),
                    format!("No send connector for {domain}"),
                ),
                NoConnector::TooBig => size_limit_reply(),
            },
        )?;
        let destination = if connector.smart_hosts.is_empty() {
            Destination::Domain(domain)
        } else {
            Destination::SmartHosts
        };
        let local = self.ctx.outbound_local(connector);
        // The failure is already the reply to give, status included.
        let (_, mut client) = outbound::connect(&local, &self.dns, connector, destination)
            .await
            .map_err(|ConnectFailure(reply)| reply)?;
        let mut mail = self.mail.clone().unwrap_or_else(|| "MAIL FROM:<>".into());
        if !client.has_extension("8BITMIME") {
            // RFC 6152 §3: BODY=8BITMIME only to a server that offers it.
            mail = mail.replace(" BODY=8BITMIME", "");
        }
        let reply = client.command(&mail).await.map_err(|e| e.as_reply())?;
        if !reply.is_positive() {
            return Err(reply);
        }
        self.upstream = Some(client);
        self.domain = Some(domain.to_ascii_lowercase());
        Ok(())
    }
}

#[async_trait]
impl SmtpHandler for OutboundProxySession {
    async fn mail(
        &mut self,
        info: &SessionInfo,
        from: Option<Address>,
        params: MailParams,
    ) -> Reply {
        if info
            .org_server
            .as_ref()
            .is_none_or(|(_, s)| s != orgauth::HUB)
        {
            return Reply::new(530, Enhanced(5, 7, 1), "Client was not authenticated");
        }
        let mut mail = format!(
            "MAIL FROM:<{}>",
            from.map(|a| a.to_string()).unwrap_or_default()
        );
        if let Some(size) = params.size {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if params.body == mailflow_smtp::Body::EightBitMime {
            mail.push_str(" BODY=8BITMIME");
        }
        if params.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        self.mail = Some(mail);
        self.smtputf8 = params.smtputf8;
        self.size = params.size.unwrap_or(0);
        Reply::new(250, Enhanced(2, 1, 0), "Sender OK")
    }

    async fn rcpt(&mut self, _info: &SessionInfo, to: Address, params: RcptParams) -> Reply {
        match &self.domain {
            None => {
                if let Err(reply) = self.open(&to.domain).await {
                    return reply;
                }
            }
            // One destination per transaction, as Transport's queues are per domain.
            Some(d) if *d != to.domain => {
                return Reply::new(
                    452,
                    Enhanced(4, 5, 3),
                    "One destination domain per transaction",
                );
            }
            Some(_) => {}
        }
        let Some(client) = self.upstream.as_mut() else {
            return Self::lost();
        };
        let mut line = format!("RCPT TO:<{to}>");
        if client.has_extension("DSN") {
            if !params.notify.is_empty() {
                line.push_str(&format!(" NOTIFY={}", params.notify.join(",")));
            }
            if let Some(o) = &params.orcpt {
                line.push_str(&format!(" ORCPT={o}"));
            }
        }
        client.command(&line).await.unwrap_or_else(|e| e.as_reply())
    }

    async fn data_start(&mut self, _info: &SessionInfo) -> Reply {
        let Some(client) = self.upstream.as_mut() else {
            return Self::lost();
        };
        let reply = client
            .command("DATA")
            .await
            .unwrap_or_else(|e| e.as_reply());
        if reply.code == 354 {
            self.stuffer = Some(DotStuffer::default());
            self.broken = false;
            self.held = (!client.has_extension("8BITMIME")).then(Vec::new);
        }
        reply
    }

    async fn data(&mut self, chunk: Vec<u8>) {
        if let Some(held) = self.held.as_mut() {
            held.extend_from_slice(&chunk);
            return;
        }
        if let (Some(client), Some(stuffer)) = (self.upstream.as_mut(), self.stuffer.as_mut())
            && !self.broken
            && client.data_chunk(stuffer, &chunk).await.is_err()
        {
            self.broken = true;
        }
    }

    async fn data_end(&mut self, _info: &SessionInfo) -> Reply {
        if let (Some(held), Some(client), Some(stuffer)) = (
            self.held.take(),
            self.upstream.as_mut(),
            self.stuffer.as_mut(),
        ) {
            let content = if downgrade::is_8bit(&held) {
                downgrade::to_7bit(&held, !self.smtputf8)
            } else {
                held
            };
            if client.data_chunk(stuffer, &content).await.is_err() {
                self.broken = true;
            }
        }
        let reply = match (self.upstream.as_mut(), self.stuffer.take()) {
            (Some(client), Some(stuffer)) if !self.broken => client
                .finish_data(&stuffer)
                .await
                .unwrap_or_else(|e| e.as_reply()),
            _ => Self::lost(),
        };
        self.reset().await;
        reply
    }

    async fn reset(&mut self) {
        if let Some(client) = self.upstream.take() {
            client.quit().await;
        }
        self.mail = None;
        self.domain = None;
        self.stuffer = None;
        self.held = None;
        self.smtputf8 = false;
        self.size = 0;
    }
}

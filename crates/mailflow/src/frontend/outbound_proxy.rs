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
use mailflow_smtp::client::{mail_line, rcpt_line};
use mailflow_smtp::data::DotStuffer;
use mailflow_smtp::{Address, Body, MailParams, RcptParams, Reply, replies};

use crate::directory::send_connectors::{NoConnector, select_connector};
use crate::message::downgrade;
use crate::net::client::SmtpClient;
use crate::net::orgauth;
use crate::net::outbound::{self, ConnectFailure, Destination, Local};

use super::FrontendContext;
use crate::net::receive::{SessionInfo, SmtpHandler};

pub struct OutboundProxySession {
    ctx: Arc<FrontendContext>,
    /// The reverse path and the MAIL parameters passed on to the destination.
    mail: Option<(String, MailParams)>,
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
    pub fn new(ctx: Arc<FrontendContext>) -> OutboundProxySession {
        OutboundProxySession {
            ctx,
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

    /// Opens the session to the destination of `domain`, and sends MAIL.
    async fn open(&mut self, domain: &str) -> Result<(), Reply> {
        let dir = self.ctx.dir();
        let connector = select_connector(dir.send_connectors(), domain, self.size).map_err(
            |why| match why {
                NoConnector::NoAddressSpace => replies::no_send_connector(domain),
                NoConnector::TooBig => replies::size_limit_for_route(),
            },
        )?;
        let destination = if connector.smart_hosts.is_empty() {
            Destination::Domain(domain)
        } else {
            Destination::SmartHosts
        };
        // Exchange logs the Outbound Proxy's sends with the Front End's (reference §8.1).
        let local = Local::new(
            &self.ctx.directory,
            connector,
            &self.ctx.logs.send,
            &self.ctx.logs.connectivity,
        );
        // The failure is already the reply to give, status included.
        let (_, mut client) = outbound::connect(&local, &self.ctx.dns, connector, destination)
            .await
            .map_err(|ConnectFailure(reply)| reply)?;
        let (from, mut params) = self.mail.clone().unwrap_or_default();
        if !client.has_extension("8BITMIME") {
            // RFC 6152 §3: BODY=8BITMIME only to a server that offers it.
            params.body = Body::SevenBit;
        }
        let reply = client
            .command(&mail_line(&from, &params))
            .await
            .map_err(|e| e.as_reply())?;
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
            return replies::not_authenticated();
        }
        // Only what a destination can act on goes on: SIZE, 8BITMIME (BINARYMIME is
        // not sent on) and SMTPUTF8.
        let passed = MailParams {
            size: params.size,
            body: match params.body {
                Body::EightBitMime => Body::EightBitMime,
                _ => Body::SevenBit,
            },
            smtputf8: params.smtputf8,
            ..MailParams::default()
        };
        let from = from.map(|a| a.to_string()).unwrap_or_default();
        self.mail = Some((from, passed));
        self.smtputf8 = params.smtputf8;
        self.size = params.size.unwrap_or(0);
        replies::sender_ok()
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
                return replies::one_destination_per_transaction();
            }
            Some(_) => {}
        }
        let Some(client) = self.upstream.as_mut() else {
            return replies::connection_to_destination_lost();
        };
        // RFC 3461 §6: DSN parameters only to a server that offers DSN.
        let params = if client.has_extension("DSN") {
            params
        } else {
            RcptParams::default()
        };
        client
            .command(&rcpt_line(&to.to_string(), &params))
            .await
            .unwrap_or_else(|e| e.as_reply())
    }

    async fn data_start(&mut self, _info: &SessionInfo) -> Reply {
        let Some(client) = self.upstream.as_mut() else {
            return replies::connection_to_destination_lost();
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
            _ => replies::connection_to_destination_lost(),
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

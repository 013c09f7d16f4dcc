//! Front End Transport (DESIGN §1, reference §2): a stateless proxy on
//! `Default Frontend <server>` (:25). It checks recipients against the directory, picks
//! one Transport server, relays the transaction in real time, and answers 250 to the
//! content only after Transport did. No queue, nothing on disk but logs. It owns its
//! pool of idle proxy sessions. Must not import transport, mailbox or cli
//! (scripts/check-arrows).

pub mod context;
pub mod outbound_proxy;
pub mod proxy;

use std::sync::Arc;

use async_trait::async_trait;
use mailflow_smtp::data::DotStuffer;
use mailflow_smtp::{Address, MailParams, RcptParams, Reply, replies};

use crate::directory::{Recipient, hub_selector, permissions};
use crate::message::AuthAs;
use crate::net::receive::{SessionInfo, SmtpHandler};
pub use context::FrontendContext;
use proxy::{BeginError, Proxy};

/// What a Front End receive connector lets its clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendMode {
    /// `Default Frontend <server>`: anonymous internet mail for the organisation's
    /// recipients only.
    Internet,
    /// `Client Frontend <server>` and implicit-TLS connectors: authenticated users who
    /// may relay, sending only as their own addresses; proxied to the Transport
    /// service's `Client Proxy <server>` with the user's identity as `AUTH=`.
    Submission,
    /// A custom connector with the `relay` permission for listed remote ranges
    /// (applications): anonymous, may relay.
    AnonymousRelay,
}

/// The Front End policy for one client session.
pub struct FrontendSession {
    ctx: Arc<FrontendContext>,
    mode: FrontendMode,
    from: Option<Address>,
    params: MailParams,
    recipients: Vec<(Address, RcptParams)>,
    /// The proxy session to a Transport service, kept for the client's next message.
    proxy: Option<Proxy>,
    /// Content is being relayed through `proxy`.
    relaying: Option<DotStuffer>,
    /// A relay write failed mid-content; the end-of-data reply will be 4xx.
    relay_failed: bool,
    /// The receive connector's `success_dsn_for_anonymous`.
    success_dsn_for_anonymous: bool,
    /// `*` lines for the receive protocol log: the proxy session of each message.
    log_info: Vec<(String, String)>,
}

impl FrontendSession {
    pub fn new(ctx: Arc<FrontendContext>, mode: FrontendMode) -> FrontendSession {
        FrontendSession {
            ctx,
            mode,
            from: None,
            params: MailParams::default(),
            recipients: Vec::new(),
            proxy: None,
            relaying: None,
            relay_failed: false,
            success_dsn_for_anonymous: true,
            log_info: Vec::new(),
        }
    }

    /// For a connector whose `success_dsn_for_anonymous` is false: anonymous senders'
    /// `NOTIFY=SUCCESS` is dropped before the message reaches Transport.
    pub fn without_success_dsn_for_anonymous(mut self) -> FrontendSession {
        self.success_dsn_for_anonymous = false;
        self
    }
}

/// A proxy session between transactions outlives its client session in the pool.
impl Drop for FrontendSession {
    fn drop(&mut self) {
        if self.relaying.is_none()
            && let Some(proxy) = self.proxy.take()
        {
            self.ctx.pool.put(proxy);
        }
    }
}

#[async_trait]
impl SmtpHandler for FrontendSession {
    fn take_log_info(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.log_info)
    }

    async fn mail(
        &mut self,
        info: &SessionInfo,
        from: Option<Address>,
        params: MailParams,
    ) -> Reply {
        if self.mode == FrontendMode::Submission {
            // Send As on the envelope, early; Transport's Client Proxy checks the
            // header too once the content is known (DESIGN §7).
            let allowed = match (&info.user, &from) {
                (Some((_, own)), Some(from)) => permissions::is_own(own, &from.to_string()),
                _ => false,
            };
            if !allowed {
                return replies::send_as_denied();
            }
        }
        self.from = from;
        self.params = params;
        self.recipients.clear();
        replies::sender_ok()
    }

    async fn rcpt(&mut self, info: &SessionInfo, to: Address, mut params: RcptParams) -> Reply {
        let dir = &self.ctx.dir();
        // Submission connectors only take mail from users who logged on.
        let auth = if info.user.is_some() {
            AuthAs::Internal
        } else {
            AuthAs::Anonymous
        };
        if auth == AuthAs::Anonymous && !self.success_dsn_for_anonymous {
            params.notify = permissions::without_success_notify(params.notify);
        }
        if self.mode != FrontendMode::Internet && !dir.is_accepted_domain(&to.domain) {
            // Authenticated users (ExchangeUsers) and relay connectors hold
            // SMTP-Accept-Any-Recipient.
            self.recipients.push((to, params));
            return replies::recipient_ok();
        }
        if !dir.is_accepted_domain(&to.domain) {
            // Anonymous clients hold no SMTP-Accept-Any-Recipient: never relay.
            return replies::unable_to_relay();
        }
        let found = dir.lookup(&to.key());
        // A group's delivery restriction is known from the directory here, so it is
        // refused at RCPT; the categorizer checks again (nested groups, other ways in).
        if let Some(Recipient::Group(g)) = found
            && let Err(reply) = permissions::check_group_sender(dir, g, auth)
        {
            return reply;
        }
        match found {
            Some(Recipient::Mailbox(_) | Recipient::Group(_)) => {
                self.recipients.push((to, params));
                replies::recipient_ok()
            }
            None if to.local.eq_ignore_ascii_case("postmaster") => {
                self.recipients.push((to, params));
                replies::recipient_ok()
            }
            None => replies::recipient_not_found(),
        }
    }

    async fn data_start(&mut self, info: &SessionInfo) -> Reply {
        // Client submissions go to the Transport service's Client Proxy listener.
        let dir = self.ctx.dir();
        let targets: Vec<std::net::SocketAddr> = hub_selector::choose_servers(
            &self.ctx.config(),
            &self.ctx.active.borrow(),
            &self.recipients,
        )
        .into_iter()
        .filter_map(|(name, addr)| {
            if self.mode == FrontendMode::Internet {
                return Some(addr);
            }
            let server = dir.server(&name)?;
            Some(std::net::SocketAddr::new(
                addr.ip(),
                server.ports.client_proxy,
            ))
        })
        .collect();
        let auth = info.user.as_ref().map(|(primary, _)| primary.clone());
        if targets.is_empty() {
            return replies::transport_unavailable("no Transport server for these recipients");
        }
        if self.proxy.is_none() {
            self.proxy = self.ctx.pool.take(&targets);
        }
        // Keep the proxy session of the client's previous message if it goes to one of
        // the chosen servers; it may have been closed by Transport meanwhile, so a
        // failure on it is retried on a fresh connection.
        if self
            .proxy
            .as_ref()
            .is_some_and(|p| !targets.contains(&p.target))
            && let Some(old) = self.proxy.take()
        {
            old.close().await;
        }
        let mut candidates: Vec<std::net::SocketAddr> = match &self.proxy {
            Some(p) => std::iter::once(p.target)
                .chain(targets.iter().copied())
                .collect(),
            None => targets.clone(),
        };
        candidates.reverse();
        let mut last_error = String::new();
        let mut fresh = false;
        loop {
            if self.proxy.is_none() {
                let Some(target) = candidates.pop() else {
                    return replies::transport_unavailable(&last_error);
                };
                match Proxy::connect(&self.ctx, target).await {
                    Ok(p) => {
                        self.proxy = Some(p);
                        fresh = true;
                    }
                    Err(e) => {
                        last_error = e.to_string();
                        continue;
                    }
                }
            } else {
                candidates.pop();
            }
            let Some(proxy) = self.proxy.as_mut() else {
                return replies::transport_unavailable("no proxy");
            };
            match proxy
                .begin(
                    self.from.as_ref(),
                    &self.params,
                    &self.recipients,
                    auth.as_deref(),
                )
                .await
            {
                Ok(()) => {
                    // Ties this session to the proxy session in the Front End's send
                    // log (docs/logs.md, "`*` lines").
                    self.log_info.push((
                        format!("{};{}", proxy.session_id(), proxy.target),
                        if fresh {
                            "Proxy session established"
                        } else {
                            "Proxy session reused"
                        }
                        .into(),
                    ));
                    break;
                }
                Err(BeginError::Refused(reply)) if reply.code == 421 => {
                    // That Transport is stopping or stopped (Stop-Service): the next
                    // server, as for a refused connection.
                    self.proxy = None;
                    last_error = reply.one_line();
                }
                Err(BeginError::Refused(reply)) => {
                    // The proxy session's state is unknown after a refusal: start afresh.
                    self.proxy = None;
                    return reply;
                }
                Err(BeginError::Connection(e)) => {
                    self.proxy = None;
                    last_error = e.to_string();
                }
            }
        }
        let Some(proxy) = self.proxy.as_mut() else {
            return replies::transport_unavailable("no proxy");
        };
        // This hop's Received: header goes first (reference §11.3: `via Frontend Transport`).
        let received = crate::net::received_header(
            info.helo.as_deref().unwrap_or("unknown"),
            info.remote.ip(),
            self.ctx.fqdn(),
            info.local.ip(),
            info.tls.as_deref(),
            env!("CARGO_PKG_VERSION"),
            Some("Frontend Transport"),
        );
        let mut stuffer = DotStuffer::default();
        if proxy
            .write_content(&mut stuffer, received.as_bytes())
            .await
            .is_err()
        {
            self.proxy = None;
            return replies::transport_unavailable("connection to Transport lost");
        }
        self.relaying = Some(stuffer);
        self.relay_failed = false;
        Reply::plain(354, "Start mail input; end with <CRLF>.<CRLF>")
    }

    async fn data(&mut self, chunk: Vec<u8>) {
        if self.relay_failed {
            return;
        }
        if let (Some(proxy), Some(stuffer)) = (self.proxy.as_mut(), self.relaying.as_mut())
            && proxy.write_content(stuffer, &chunk).await.is_err()
        {
            self.relay_failed = true;
        }
    }

    async fn data_end(&mut self, _info: &SessionInfo) -> Reply {
        let stuffer = self.relaying.take();
        let reply = match (self.proxy.as_mut(), stuffer) {
            (Some(proxy), Some(stuffer)) if !self.relay_failed => {
                match proxy.finish(&stuffer).await {
                    Ok(reply) => reply,
                    Err(e) => {
                        self.proxy = None;
                        replies::transport_unavailable(&e.to_string())
                    }
                }
            }
            _ => {
                self.proxy = None;
                replies::transport_unavailable("connection to Transport lost")
            }
        };
        self.recipients.clear();
        reply
    }

    async fn reset(&mut self) {
        self.recipients.clear();
        if self.relaying.take().is_some() {
            // Mid-content: the proxy session cannot be reused; dropping it aborts the
            // transaction at Transport, which acknowledges nothing.
            self.proxy = None;
        }
    }
}

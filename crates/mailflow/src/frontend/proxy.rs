//! The proxy session from Front End to a Transport service through the implicit
//! `Inbound Proxy Internal Send Connector` (reference §1.7).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mailflow_smtp::client::{auth_submitter, mail_line, rcpt_line};
use mailflow_smtp::data::DotStuffer;
use mailflow_smtp::{Address, MailParams, RcptParams, Reply, replies};

use super::FrontendContext;
use crate::logs::protocol::ProtocolSession;
use crate::net::client::{ClientError, SmtpClient};
use crate::net::orgauth;

pub const INBOUND_PROXY_SEND_CONNECTOR: &str = "Inbound Proxy Internal Send Connector";

/// Short: a Transport service that does not answer quickly is treated as down, so the
/// client gets its 4xx at once rather than after its own timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Proxy {
    pub target: SocketAddr,
    client: SmtpClient,
    opened: Instant,
}

/// How many idle proxy sessions the pool keeps, and for how long. Well inside the
/// Transport receive connector's ConnectionInactivityTimeout (5 min) and its
/// ConnectionTimeout (10 min), so Transport does not cut a reused session mid-message.
const POOL_MAX: usize = 64;
const POOL_IDLE: Duration = Duration::from_secs(30);
const POOL_LIFETIME: Duration = Duration::from_secs(120);

/// Idle proxy sessions to Transport services, kept for the next client session. Most
/// internet mail comes one message per client session; without the pool each would
/// pay a TCP connection, EHLO and the organisation AUTH to Transport as well.
/// Only sessions between transactions (after a final reply to DATA, or never used)
/// are pooled; a failure on a pooled one is retried on a fresh connection.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<(Instant, Proxy)>>,
}

impl Pool {
    /// The most recently used idle session to one of `targets`, if still fresh.
    pub fn take(&self, targets: &[SocketAddr]) -> Option<Proxy> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(since, p)| since.elapsed() < POOL_IDLE && p.reusable());
        let pos = idle
            .iter()
            .rposition(|(_, p)| targets.contains(&p.target))?;
        Some(idle.remove(pos).1)
    }

    /// Keeps an idle session for the next client (the oldest goes when full).
    pub fn put(&self, proxy: Proxy) {
        if !proxy.reusable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= POOL_MAX {
            idle.remove(0);
        }
        idle.push((Instant::now(), proxy));
    }
}

impl Proxy {
    pub async fn connect(ctx: &FrontendContext, target: SocketAddr) -> Result<Proxy, ClientError> {
        let log = ctx.logs.send.session(
            INBOUND_PROXY_SEND_CONNECTOR,
            SocketAddr::new(ctx.ip(), 0),
            target,
        );
        let log = if ctx.org.intra_org_logging() == crate::logs::LoggingLevel::Verbose {
            log
        } else {
            ProtocolSession::disabled()
        };
        let client = ctx
            .org
            .connect(
                target,
                orgauth::FRONTEND,
                log,
                CONNECT_TIMEOUT,
                COMMAND_TIMEOUT,
            )
            .await?;
        Ok(Proxy {
            target,
            client,
            opened: Instant::now(),
        })
    }

    /// The proxy session's id in the Front End's send protocol log (empty when the
    /// implicit connector does not log).
    pub fn session_id(&self) -> &str {
        self.client.session_id()
    }

    fn reusable(&self) -> bool {
        self.opened.elapsed() < POOL_LIFETIME
    }
}

/// Why a proxied transaction could not start.
pub enum BeginError {
    /// The connection to Transport failed (a pooled one may have timed out).
    Connection(ClientError),
    /// Transport answered; its reply goes to the client.
    Refused(Reply),
}

impl Proxy {
    /// Sends the envelope and DATA; Ok when Transport answered 354.
    pub async fn begin(
        &mut self,
        from: Option<&Address>,
        params: &MailParams,
        recipients: &[(Address, RcptParams)],
        auth: Option<&str>,
    ) -> Result<(), BeginError> {
        // RFC 4954 §5: the authenticated submitter travels as AUTH= (xtext); what the
        // client itself claimed does not.
        let params = MailParams {
            auth: auth.map(auth_submitter),
            ..params.clone()
        };
        let from = from.map(|a| a.to_string()).unwrap_or_default();
        let mail = mail_line(&from, &params);
        let rcpts: Vec<String> = recipients
            .iter()
            .map(|(a, p)| rcpt_line(&a.to_string(), p))
            .collect();
        let (mail_reply, rcpt_replies, data) = self
            .client
            .envelope(&mail, &rcpts, true)
            .await
            .map_err(BeginError::Connection)?;
        if !mail_reply.is_positive() {
            return Err(BeginError::Refused(mail_reply));
        }
        // Every recipient was accepted by us; if Transport disagrees about one, the
        // client must retry rather than lose that recipient silently.
        if let Some(refused) = rcpt_replies.iter().find(|r| !r.is_positive()) {
            let _ = self.client.reset().await;
            return Err(BeginError::Refused(replies::transport_refused_recipient(
                refused,
            )));
        }
        match data {
            Some(r) if r.code == 354 => Ok(()),
            Some(r) => Err(BeginError::Refused(r)),
            None => Err(BeginError::Refused(
                replies::transport_did_not_accept_content(),
            )),
        }
    }

    pub async fn write_content(
        &mut self,
        stuffer: &mut DotStuffer,
        content: &[u8],
    ) -> Result<(), ClientError> {
        self.client.data_chunk(stuffer, content).await
    }

    /// Ends the content; Transport's reply is the client's reply.
    pub async fn finish(&mut self, stuffer: &DotStuffer) -> Result<Reply, ClientError> {
        self.client.finish_data(stuffer).await
    }

    pub async fn close(self) {
        self.client.quit().await;
    }
}

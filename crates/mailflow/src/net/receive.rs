//! A receive connector: the listener, its limits, and the loop that drives one
//! [`Session`] per connection over a socket. Services plug their policy in through
//! [`SmtpHandler`]; the driver owns sockets, TLS, timeouts and protocol logging, so the
//! rules of the protocol live in one place (mailflow-smtp) and the rules of each
//! Exchange service in its own folder.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mailflow_smtp::{
    Address, Enhanced, Event, MailParams, RcptParams, Reply, Session, SessionConfig, replies,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::orgauth::{self, Binding, OrgSecret, Transcript};
use super::stream::Stream;
use crate::directory::credentials::Logon;
use crate::logs::protocol::{ProtocolLog, ProtocolSession};

/// Who is on the other end, as the handler sees it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub connector: Arc<str>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub helo: Option<String>,
    /// `version=…, cipher=…` once TLS is up.
    pub tls: Option<String>,
    /// `Some((server, service))` once an organisation server authenticated (DESIGN §1).
    pub org_server: Option<(String, String)>,
    /// `Some((primary address, all addresses))` once a mailbox user authenticated.
    pub user: Option<(String, Vec<String>)>,
    pub session_id: String,
}

/// The policy of one receive connector. Every method answers with the SMTP reply.
#[async_trait]
pub trait SmtpHandler: Send {
    async fn mail(
        &mut self,
        info: &SessionInfo,
        from: Option<Address>,
        params: MailParams,
    ) -> Reply;
    async fn rcpt(&mut self, info: &SessionInfo, to: Address, params: RcptParams) -> Reply;
    /// Before content: `354`/2xx to go ahead.
    async fn data_start(&mut self, info: &SessionInfo) -> Reply;
    /// A piece of content, in order.
    async fn data(&mut self, chunk: Vec<u8>);
    /// The content is complete: the end-of-data reply.
    async fn data_end(&mut self, info: &SessionInfo) -> Reply;
    /// The transaction ended without delivery (RSET, error, disconnect).
    async fn reset(&mut self);
    /// `*` lines (data, context) for the session's protocol log that the handler has
    /// gathered since last asked; written after the commands just read and before the
    /// replies to them. The Front End names the proxy session carrying a message here.
    fn take_log_info(&mut self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Exchange's `Set Session Permissions` line (reference §8.2): the receive rights the
/// session holds, spelled as Exchange prints them (reference §1.5's groups).
mod permissions {
    /// AnonymousUsers.
    pub const ANONYMOUS: &str =
        "SMTPSubmit SMTPAcceptAnySender SMTPAcceptAuthoritativeDomainSender AcceptRoutingHeaders";
    /// ExchangeUsers, once a mailbox user authenticated.
    pub const USERS: &str = "SMTPSubmit SMTPAcceptAnyRecipient BypassAntiSpam AcceptRoutingHeaders";
    /// ExchangeServers, once an organisation server authenticated.
    pub const SERVERS: &str = "SMTPSubmit SMTPAcceptAnyRecipient SMTPAcceptAnySender \
         SMTPAcceptAuthenticationFlag SMTPAcceptAuthoritativeDomainSender BypassAntiSpam \
         BypassMessageSizeLimit SMTPAcceptEXCH50 AcceptRoutingHeaders AcceptForestHeaders \
         AcceptOrgHeaders";
    /// No group grants anything before logon (internal and client listeners).
    pub const NONE: &str = "None";
    pub const CONTEXT: &str = "Set Session Permissions";
}

/// Creates a handler for each accepted connection.
pub type HandlerFactory = Arc<dyn Fn() -> Box<dyn SmtpHandler> + Send + Sync>;

/// Who may authenticate on this connector.
#[derive(Clone)]
pub enum AuthPolicy {
    None,
    /// Organisation servers only (ExchangeServer authentication with
    /// `X-MAILFLOW-SERVER`, see [`super::orgauth`]), inside TLS except on loopback, and
    /// only as one of `services`.
    OrgServers {
        secret: OrgSecret,
        servers: Arc<Vec<String>>,
        services: &'static [&'static str],
    },
    /// Mailbox users (client submission), always inside TLS, with failed-logon
    /// throttling per client address.
    Mailboxes {
        book: Arc<crate::directory::credentials::PasswordBook>,
        throttle: Arc<crate::directory::credentials::AuthThrottle>,
    },
}

/// The client certificate an internal listener verified against the organisation CA
/// (only those ask for one), for the protocol log.
fn log_client_certificate(stream: &Stream, log: &mut ProtocolSession) {
    if let Stream::ServerTls(s) = stream
        && let Some(cert) = s.get_ref().1.peer_certificates().and_then(|c| c.first())
    {
        log.info(
            &super::tls::describe_certificate(cert),
            "Remote certificate verified by the organisation CA",
        );
    }
}

/// A configured receive connector, ready to run.
#[derive(Clone)]
pub struct ReceiveConnector {
    /// `Server\Name` form for logs, e.g. `MBX1\Default Frontend MBX1`.
    pub id: Arc<str>,
    pub bind: SocketAddr,
    pub session: SessionConfig,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: AuthPolicy,
    pub protocol_log: Option<ProtocolLog>,
    pub inactivity_timeout: Duration,
    pub connection_timeout: Duration,
    /// MaxInboundConnection and the other Set-ReceiveConnector limits (reference §1.2).
    pub limits: Limits,
    /// The domain `RCPT TO:<Postmaster>` stands for.
    pub default_domain: Arc<str>,
    /// TLS from the first byte (RFC 8314 implicit TLS) instead of STARTTLS.
    pub implicit_tls: bool,
    /// RemoteIPRanges: clients outside them are refused at connect (empty: all).
    pub remote_ranges: Vec<ipnet::IpNet>,
    pub handler: HandlerFactory,
}

/// A receive connector's limits, resolved from its configuration and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// MaxInboundConnection: sessions at once; past it `421 4.3.2`.
    pub max_connections: usize,
    /// MaxInboundConnectionPerSource, already lowered to
    /// MaxInboundConnectionPercentagePerSource of `max_connections`.
    pub max_per_source: usize,
    /// TarpitInterval: the delay of each failing RCPT reply once a session has had
    /// [`TARPIT_AFTER`] unknown recipients (zero: off).
    pub tarpit_interval: Duration,
    /// Least content bytes per second while DATA/BDAT content is read (zero: off).
    pub min_data_rate: u64,
    /// How long the rate is measured over; the first window is the grace period.
    pub min_data_rate_interval: Duration,
}

/// Unknown recipients (5.1.1) a session gets answered at once; from the next failing
/// RCPT on, the tarpit applies (a directory harvest costs the harvester time).
pub const TARPIT_AFTER: u32 = 2;

impl Limits {
    /// Exchange's defaults (reference §1.2): 5000 connections, 20 per source and 2 %
    /// of the connector per source, tarpit 5 s. `internal` connectors (`Default
    /// <server>`, Mailbox Delivery, Client Proxy, Outbound Proxy Frontend) take
    /// connections from the organisation's own servers only, all from a few
    /// addresses: unlimited per source, as `Default <Server>` is in Exchange. The
    /// minimum data rate (mailflow's, like Postfix's `smtpd_min_data_rate`) is 1 KiB/s
    /// over 30 s windows where outside clients send content; internal connectors only
    /// reach DATA after server authentication, and a Front End streaming a client's
    /// content at the client's pace must not be judged a second time, so it is off
    /// there.
    pub fn resolve(
        cfg: &crate::directory::config::ConnectorLimits,
        internal: bool,
        server_max: usize,
    ) -> Limits {
        let max_connections = cfg.max_inbound_connection.unwrap_or(server_max).max(1);
        let (per_source, percentage) = if internal { (usize::MAX, 100) } else { (20, 2) };
        let per_source = cfg
            .max_inbound_connection_per_source
            .unwrap_or(per_source)
            .max(1);
        let percentage = cfg
            .max_inbound_connection_percentage_per_source
            .unwrap_or(percentage)
            .clamp(1, 100) as usize;
        let share = (max_connections.saturating_mul(percentage) / 100).max(1);
        Limits {
            max_connections,
            max_per_source: per_source.min(share),
            tarpit_interval: cfg.tarpit_interval.unwrap_or(Duration::from_secs(5)),
            min_data_rate: cfg.min_data_rate.unwrap_or(if internal { 0 } else { 1024 }),
            min_data_rate_interval: cfg
                .min_data_rate_interval
                .unwrap_or(Duration::from_secs(30))
                .max(Duration::from_millis(100)),
        }
    }
}

/// Open sessions of one connector, in total and per client address.
#[derive(Default)]
struct Sessions {
    total: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

/// One session's place in [`Sessions`], given back on drop.
struct SessionSlot {
    sessions: Arc<Sessions>,
    ip: IpAddr,
}

impl Sessions {
    /// Takes a slot for a new session from `ip`, or the reply that refuses it.
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<SessionSlot, Reply> {
        let mut per_source = self
            .per_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.total.load(Ordering::Relaxed) >= limits.max_connections {
            return Err(replies::too_many_connections());
        }
        let count = per_source.entry(ip).or_insert(0);
        if *count >= limits.max_per_source {
            return Err(replies::too_many_connections_from_source());
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(SessionSlot {
            sessions: self.clone(),
            ip,
        })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut per_source = self
            .sessions
            .per_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = per_source.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_source.remove(&self.ip);
            }
        }
        self.sessions.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Content bytes and time spent waiting for them in the current window of the
/// minimum data rate. Only time blocked in `read` counts, so a server slow to store
/// content never blames its client.
#[derive(Default)]
struct DataPace {
    waited: Duration,
    bytes: u64,
}

impl DataPace {
    /// Records one read; true when a window ended below the minimum rate.
    fn too_slow(&mut self, waited: Duration, bytes: usize, limits: &Limits) -> bool {
        self.waited += waited;
        self.bytes += bytes as u64;
        if self.waited < limits.min_data_rate_interval {
            return false;
        }
        let needed = (limits.min_data_rate as u128 * self.waited.as_millis() / 1000) as u64;
        let slow = self.bytes < needed;
        *self = DataPace::default();
        slow
    }
}

/// The soft RLIMIT_NOFILE of this process (raised to the hard limit at start).
// rlim_t is u64 on Linux but not on every target.
#[allow(clippy::unnecessary_cast)]
pub fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some(lim.rlim_cur as u64)
}

/// Raises the soft open-files limit to the hard limit: every session is a file
/// descriptor, and the usual soft default of 1,024 lets one client address lock
/// everyone out. Returns the soft limit in force.
#[allow(clippy::unnecessary_cast)]
pub fn raise_open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    Some(lim.rlim_cur as u64)
}

/// File descriptors kept out of the connection caps: databases, logs, queue files,
/// outbound connections.
pub fn reserved_descriptors(open_files: u64) -> u64 {
    (open_files / 4).max(64)
}

/// Lowers connection caps whose sum exceeds what the open-files limit leaves for
/// sessions (each keeps its share), logging a warning; returns the caps to use.
pub fn clamp_to_open_files(caps: &[usize], open_files: u64) -> Vec<usize> {
    let budget = open_files
        .saturating_sub(reserved_descriptors(open_files))
        .max(1) as u128;
    let sum: u128 = caps.iter().map(|&c| c as u128).sum();
    if sum <= budget {
        return caps.to_vec();
    }
    tracing::warn!(
        "receive connectors allow {sum} connections in total, more than the {budget} the open-files limit ({open_files}) leaves for sessions: caps lowered in proportion"
    );
    caps.iter()
        .map(|&c| ((c as u128 * budget / sum) as usize).max(1))
        .collect()
}

/// Connections the kernel completes and queues for `accept` (the kernel caps it at
/// `net.core.somaxconn`). std and tokio listen with 128: a burst of a few hundred
/// clients connecting at once (every message in its own session, as most internet
/// mail is sent) overflows that, and each dropped SYN costs its client a one-second
/// retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// The most a session reads at once.
const READ_BUFFER: usize = 16 * 1024;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std does: a restarted server can listen again while old sessions linger in
    // TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl ReceiveConnector {
    /// Binds the listener now (so a port clash fails the start), and returns the task.
    pub async fn bind(self) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = listen(self.bind).map_err(|e| {
            anyhow::anyhow!(
                "receive connector {}: cannot listen on {}: {e}",
                self.id,
                self.bind
            )
        })?;
        let local = listener.local_addr()?;
        let this = Arc::new(self);
        let task = tokio::spawn(async move { this.accept_loop(listener).await });
        Ok((local, task))
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let sessions = Arc::new(Sessions::default());
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: wait a little instead of spinning.
                    tracing::warn!(connector = %self.id, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            match sessions.admit(remote.ip(), &self.limits) {
                Ok(slot) => {
                    // Per connection, bounded by `limits` (the slot) and the
                    // inactivity and connection timeouts; the accept loop's owner
                    // (server.rs) does not wait for it at shutdown.
                    tokio::spawn(async move {
                        let _slot = slot;
                        if let Err(e) = this.run_session(tcp, remote).await {
                            tracing::debug!(connector = %this.id, %remote, "session ended: {e}");
                        }
                    });
                }
                // Past a limit the client is told at once and the connection closed,
                // rather than left waiting in the backlog.
                Err(reply) => {
                    // Per connection: one reply and close.
                    tokio::spawn(async move { this.refuse(tcp, remote, reply).await });
                }
            }
        }
    }

    /// Answers a connection that a limit refuses, and closes it.
    async fn refuse(&self, mut tcp: TcpStream, remote: SocketAddr, reply: Reply) {
        let Ok(local) = tcp.local_addr() else { return };
        let mut log = match &self.protocol_log {
            Some(l) => l.session(&self.id, local, remote),
            None => ProtocolSession::disabled(),
        };
        log.connect();
        log.sent(&reply.one_line());
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = tcp.write_all(&reply.to_bytes()).await;
            let _ = tcp.shutdown().await;
        })
        .await;
        log.disconnect("Local");
    }

    async fn run_session(&self, tcp: TcpStream, remote: SocketAddr) -> std::io::Result<()> {
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr()?;
        let mut log = match &self.protocol_log {
            Some(l) => l.session(&self.id, local, remote),
            None => ProtocolSession::disabled(),
        };
        let mut info = SessionInfo {
            connector: self.id.clone(),
            local,
            remote,
            helo: None,
            tls: None,
            org_server: None,
            user: None,
            session_id: log.session_id().to_string(),
        };
        if info.session_id.is_empty() {
            info.session_id = crate::logs::protocol::new_session_id();
        }
        log.connect();
        log.info(
            match self.auth {
                AuthPolicy::None => permissions::ANONYMOUS,
                AuthPolicy::OrgServers { .. } | AuthPolicy::Mailboxes { .. } => permissions::NONE,
            },
            permissions::CONTEXT,
        );
        let mut config = self.session.clone();
        config.starttls = self.tls.is_some();
        // Exchange's greeting ends with the time (`… ready at Thu, 3 Dec 2026 15:00:00
        // +0000`) and its EHLO reply names the client's address, not its HELO name.
        config.banner = format!("{} {}", config.banner, super::rfc2822_now());
        config.client_ip = remote.ip().to_string();
        match &self.auth {
            AuthPolicy::OrgServers { .. } => {
                config.auth_mechanisms = vec![orgauth::MECHANISM.into()];
                // Loopback traffic never leaves the machine; elsewhere credentials need
                // TLS.
                config.auth_requires_tls = !remote.ip().is_loopback();
            }
            AuthPolicy::Mailboxes { .. } => {
                config.auth_mechanisms = vec!["PLAIN".into(), "LOGIN".into()];
                // BasicAuthRequireTLS: no password ever crosses in clear text.
                config.auth_requires_tls = true;
            }
            AuthPolicy::None => {}
        }
        let mut stream = Stream::Plain(tcp);
        if !self.remote_ranges.is_empty()
            && !self.remote_ranges.iter().any(|r| r.contains(&remote.ip()))
        {
            let reply = replies::host_not_permitted();
            log.sent(&reply.one_line());
            let _ =
                tokio::time::timeout(Duration::from_secs(10), stream.write_all(&reply.to_bytes()))
                    .await;
            log.disconnect("Local");
            return Ok(());
        }
        if self.implicit_tls {
            let Some(tls) = &self.tls else { return Ok(()) };
            let Stream::Plain(tcp) = stream else {
                return Ok(());
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
            match tokio::time::timeout(self.inactivity_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls_stream)) => stream = Stream::ServerTls(Box::new(tls_stream)),
                Ok(Err(e)) => {
                    log.info(&e.to_string(), "TLS negotiation failed");
                    log.disconnect("Remote");
                    return Ok(());
                }
                Err(_) => return Ok(()),
            }
            info.tls = stream.tls_description();
            log.info(
                info.tls.as_deref().unwrap_or(""),
                "TLS negotiation succeeded",
            );
            log_client_certificate(&stream, &mut log);
            config.starttls = false;
        }
        let mut session = if self.implicit_tls {
            Session::new_tls(config)
        } else {
            Session::new(config)
        };
        let mut handler = (self.handler)();
        let started = Instant::now();
        let mut in_transaction = false;
        let mut unknown_recipients = 0u32;
        let mut pace = DataPace::default();
        // The X-MAILFLOW-SERVER exchange between its challenge and the response.
        let mut server_auth: Option<ServerAuth> = None;
        // `*` lines to write after the commands of this round and before its replies.
        let mut infos: Vec<(String, String)> = Vec::new();
        // Messages begun in this session, for `receiving message`.
        let mut messages = 0u32;
        // Small while the session only exchanges commands (an idle session holds it,
        // and thousands may be idle); it grows to READ_BUFFER once a read fills it,
        // which is content arriving.
        let mut buf = vec![0u8; 1024];
        let result: std::io::Result<()> = async {
            loop {
                let mut start_tls = false;
                while let Some(event) = session.next_event() {
                    match event {
                        Event::Hello { domain, .. } => {
                            if in_transaction {
                                handler.reset().await;
                                in_transaction = false;
                            }
                            info.helo = Some(domain);
                        }
                        Event::Mail { from, params } => {
                            let reply = match &self.auth {
                                AuthPolicy::OrgServers { .. } if info.org_server.is_none() => {
                                    replies::not_authenticated()
                                }
                                AuthPolicy::Mailboxes { .. } if info.user.is_none() => {
                                    replies::anonymous_mail_not_permitted()
                                }
                                _ => handler.mail(&info, from, params).await,
                            };
                            // 421 from the service (stopped meanwhile) ends the session.
                            if reply.code == 421 {
                                session.close_with(reply);
                                continue;
                            }
                            in_transaction = reply.is_positive();
                            if in_transaction {
                                messages += 1;
                                infos.push((
                                    format!(
                                        "{};{};{messages}",
                                        info.session_id,
                                        crate::logs::tracking::now_timestamp()
                                    ),
                                    "receiving message".into(),
                                ));
                            }
                            session.respond(reply);
                        }
                        Event::Rcpt { mut to, params } => {
                            if to.domain.is_empty() {
                                // <Postmaster> without a domain (RFC 5321 §4.1.1.3):
                                // the organisation's default (first accepted) domain.
                                to.domain = self.default_domain.to_string();
                            }
                            let reply = handler.rcpt(&info, to, params).await;
                            self.tarpit(&reply, &info, &mut unknown_recipients, &mut log)
                                .await;
                            session.respond(reply);
                        }
                        Event::DataStart => {
                            let reply = handler.data_start(&info).await;
                            session.respond(reply);
                        }
                        Event::Data(chunk) => handler.data(chunk).await,
                        Event::DataEnd => {
                            let reply = handler.data_end(&info).await;
                            in_transaction = false;
                            session.respond(reply);
                        }
                        Event::DataRejected(_) | Event::Reset => {
                            handler.reset().await;
                            in_transaction = false;
                        }
                        Event::StartTls => start_tls = true,
                        Event::Auth {
                            username, password, ..
                        } => {
                            let reply = self
                                .authenticate(&mut info, &username, &password, &mut log)
                                .await;
                            if reply.is_positive() {
                                infos
                                    .push((permissions::USERS.into(), permissions::CONTEXT.into()));
                            }
                            session.respond(reply);
                        }
                        Event::AuthStart { mechanism, initial } => {
                            // A cancelled exchange's challenge is never answerable again.
                            server_auth = None;
                            match self
                                .server_auth_start(&info, &stream, &mechanism, initial, &mut log)
                            {
                                Ok(started) => {
                                    session.auth_challenge(&started.challenge);
                                    server_auth = Some(started);
                                }
                                Err(reply) => session.respond(reply),
                            }
                        }
                        Event::AuthResponse { response, .. } => {
                            // Taken: one response per challenge, whatever its verdict.
                            let reply = self.server_auth_finish(
                                &mut info,
                                server_auth.take(),
                                &response,
                                &mut log,
                            );
                            if reply.is_positive() {
                                infos.push((
                                    permissions::SERVERS.into(),
                                    permissions::CONTEXT.into(),
                                ));
                            }
                            session.respond(reply);
                        }
                        Event::Close => {}
                    }
                }
                let (received, sent) = session.take_log();
                for line in received {
                    log.received(&line);
                }
                infos.extend(handler.take_log_info());
                for (data, context) in infos.drain(..) {
                    log.info(&data, &context);
                }
                for line in sent {
                    log.sent(&line);
                }
                if session.has_output() {
                    // A client that stops reading must not hold its session forever.
                    let output = session.take_output();
                    match tokio::time::timeout(self.inactivity_timeout, stream.write_all(&output))
                        .await
                    {
                        Ok(r) => r?,
                        Err(_) => break,
                    }
                }
                if start_tls {
                    let Some(tls) = &self.tls else { break };
                    let Stream::Plain(tcp) = std::mem::replace(&mut stream, Stream::Closed) else {
                        break;
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                    match tokio::time::timeout(self.inactivity_timeout, acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls_stream)) => {
                            stream = Stream::ServerTls(Box::new(tls_stream));
                            info.tls = stream.tls_description();
                            info.helo = None;
                            info.org_server = None;
                            info.user = None;
                            server_auth = None;
                            log.info(
                                info.tls.as_deref().unwrap_or(""),
                                "TLS negotiation succeeded",
                            );
                            log_client_certificate(&stream, &mut log);
                            session.tls_established();
                            continue;
                        }
                        Ok(Err(e)) => {
                            log.info(&e.to_string(), "TLS negotiation failed");
                            return Ok(());
                        }
                        Err(_) => return Ok(()),
                    }
                }
                if session.is_closed() {
                    break;
                }
                let mut timeout = self.inactivity_timeout.min(
                    self.connection_timeout
                        .saturating_sub(started.elapsed())
                        .max(Duration::from_millis(1)),
                );
                let paced = session.in_data() && self.limits.min_data_rate > 0;
                let mut window_end = false;
                if !paced {
                    pace = DataPace::default();
                } else {
                    let left = self
                        .limits
                        .min_data_rate_interval
                        .saturating_sub(pace.waited)
                        .max(Duration::from_millis(1));
                    if left < timeout {
                        timeout = left;
                        window_end = true;
                    }
                }
                let read_started = Instant::now();
                let read = match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
                    Ok(r) => Some(r?),
                    Err(_) => None,
                };
                if paced && pace.too_slow(read_started.elapsed(), read.unwrap_or(0), &self.limits) {
                    log.info(&remote.ip().to_string(), "data rate below min_data_rate");
                    self.close_session(
                        &mut session,
                        &mut stream,
                        &mut log,
                        replies::data_rate_too_low(),
                    )
                    .await;
                    break;
                }
                let n = match read {
                    Some(n) => n,
                    // The rate window ended in time: keep reading.
                    None if window_end => continue,
                    None => {
                        let reply = if started.elapsed() >= self.connection_timeout {
                            replies::connection_timed_out()
                        } else {
                            replies::connection_inactivity_timeout()
                        };
                        self.close_session(&mut session, &mut stream, &mut log, reply)
                            .await;
                        break;
                    }
                };
                if n == 0 {
                    break;
                }
                session.feed(&buf[..n]);
                if n == buf.len() && buf.len() < READ_BUFFER {
                    buf.resize(READ_BUFFER, 0);
                }
            }
            Ok(())
        }
        .await;
        if in_transaction || session.in_data() {
            handler.reset().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.shutdown()).await;
        log.disconnect(if session.is_closed() {
            "Local"
        } else {
            "Remote"
        });
        result
    }

    /// Closes the session with `reply` (timeouts, data rate), written best effort.
    async fn close_session(
        &self,
        session: &mut Session,
        stream: &mut Stream,
        log: &mut ProtocolSession,
        reply: Reply,
    ) {
        session.close_with(reply);
        let (_, sent) = session.take_log();
        for line in sent {
            log.sent(&line);
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            stream.write_all(&session.take_output()),
        )
        .await;
    }

    /// TarpitInterval (reference §1.2): once a session has had [`TARPIT_AFTER`]
    /// unknown recipients, each further failing RCPT reply waits. Applied here, on
    /// whatever reply the handler gave, so every connector has it. Organisation
    /// servers and authenticated users are not tarpitted.
    async fn tarpit(
        &self,
        reply: &Reply,
        info: &SessionInfo,
        unknown: &mut u32,
        log: &mut ProtocolSession,
    ) {
        if reply.enhanced == Some(Enhanced(5, 1, 1)) {
            *unknown = unknown.saturating_add(1);
        }
        let trusted = info.org_server.is_some() || info.user.is_some();
        if trusted
            || self.limits.tarpit_interval.is_zero()
            || reply.is_positive()
            || *unknown <= TARPIT_AFTER
        {
            return;
        }
        log.info(
            &format!("{}ms", self.limits.tarpit_interval.as_millis()),
            "tarpit",
        );
        tokio::time::sleep(self.limits.tarpit_interval).await;
    }

    async fn authenticate(
        &self,
        info: &mut SessionInfo,
        username: &str,
        password: &str,
        log: &mut ProtocolSession,
    ) -> Reply {
        match &self.auth {
            AuthPolicy::Mailboxes { book, throttle } => {
                let ip = info.remote.ip();
                let logon = throttle.logon(book, ip, username, password).await;
                match &logon {
                    Logon::Accepted(user) => {
                        log.info(&user.0, "authenticated as a mailbox user");
                        info.user = Some(user.clone());
                    }
                    Logon::Throttled => log.info(
                        &ip.to_string(),
                        "logon refused: too many recent failures from this address or for this account",
                    ),
                    Logon::Rejected => {}
                }
                logon.reply()
            }
            // Servers never authenticate with PLAIN or LOGIN (the session does not
            // offer them on those connectors; this is the answer if it ever did).
            AuthPolicy::OrgServers { .. } | AuthPolicy::None => replies::unrecognized_auth_type(),
        }
    }

    /// `AUTH X-MAILFLOW-SERVER <service NUL server>`: the challenge, or the refusal
    /// (logged with its reason; the client only ever learns `535`).
    fn server_auth_start(
        &self,
        info: &SessionInfo,
        stream: &Stream,
        mechanism: &str,
        initial: Option<Vec<u8>>,
        log: &mut ProtocolSession,
    ) -> Result<ServerAuth, Reply> {
        let AuthPolicy::OrgServers {
            servers, services, ..
        } = &self.auth
        else {
            return Err(replies::unrecognized_auth_type());
        };
        if mechanism != orgauth::MECHANISM {
            return Err(replies::unrecognized_auth_type());
        }
        let Some(initial) = initial else {
            return Err(replies::server_auth_needs_initial_response());
        };
        let Some((service, server)) = orgauth::parse_initial_response(&initial) else {
            return Err(replies::server_auth_invalid_response());
        };
        let refuse = |log: &mut ProtocolSession, why: &str| {
            log.info(
                &format!("{server} {service}"),
                &format!("organisation server authentication refused: {why}"),
            );
            Err(replies::credentials_invalid())
        };
        let Some(server) = servers.iter().find(|s| s.eq_ignore_ascii_case(&server)) else {
            return refuse(log, "no such server in the organisation");
        };
        if !services.contains(&service.as_str()) {
            return refuse(
                log,
                &format!(
                    "service not allowed on this connector (allowed: {})",
                    services.join(", ")
                ),
            );
        }
        let binding = match Binding::of(stream) {
            Ok(Binding::Plain) if !info.remote.ip().is_loopback() => {
                // The session refuses AUTH outside TLS off loopback already; a plain
                // binding must never be accepted from another machine regardless.
                return refuse(log, "plain session from off loopback");
            }
            Ok(binding) => binding,
            Err(why) => return refuse(log, &why),
        };
        Ok(ServerAuth {
            challenge: rand::random(),
            server: server.clone(),
            service,
            binding,
        })
    }

    /// The response to the challenge: verified in constant time against the transcript
    /// this session and this challenge give.
    fn server_auth_finish(
        &self,
        info: &mut SessionInfo,
        started: Option<ServerAuth>,
        response: &[u8],
        log: &mut ProtocolSession,
    ) -> Reply {
        let (AuthPolicy::OrgServers { secret, .. }, Some(started)) = (&self.auth, started) else {
            return replies::credentials_invalid();
        };
        let transcript = Transcript {
            challenge: &started.challenge,
            server: &started.server,
            service: &started.service,
            receiver: &self.session.hostname,
            binding: &started.binding,
        };
        let who = format!("{} {}", started.server, started.service);
        if !secret.verify_server_auth(&transcript, response) {
            log.info(
                &who,
                "organisation server authentication refused: the response does not verify",
            );
            return replies::credentials_invalid();
        }
        log.info(&who, "authenticated as an organisation server");
        info.org_server = Some((started.server, started.service));
        replies::authentication_successful()
    }
}

/// An `X-MAILFLOW-SERVER` exchange waiting for its response.
struct ServerAuth {
    challenge: [u8; orgauth::CHALLENGE_LEN],
    /// As the organisation file spells it.
    server: String,
    service: String,
    binding: Binding,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::config::ConnectorLimits;

    #[test]
    fn limits_take_exchanges_defaults_and_the_lower_per_source_limit() {
        let internet = Limits::resolve(&ConnectorLimits::default(), false, 5000);
        assert_eq!(
            (internet.max_connections, internet.max_per_source),
            (5000, 20)
        );
        assert_eq!(internet.tarpit_interval, Duration::from_secs(5));
        let internal = Limits::resolve(&ConnectorLimits::default(), true, 5000);
        assert_eq!(
            internal.max_per_source, 5000,
            "unlimited, within the connector"
        );
        // 2 % of 500 is 10: below the 20 per source.
        let small = Limits::resolve(
            &ConnectorLimits {
                max_inbound_connection: Some(500),
                ..Default::default()
            },
            false,
            5000,
        );
        assert_eq!(small.max_per_source, 10);
    }

    #[test]
    fn caps_above_the_open_files_budget_are_lowered_in_proportion() {
        assert_eq!(clamp_to_open_files(&[100, 200], 100_000), [100, 200]);
        // 4096 open files keep 1024 in reserve: 3072 for sessions.
        assert_eq!(clamp_to_open_files(&[5000, 1000], 4096), [2560, 512]);
    }

    #[test]
    fn sessions_past_a_limit_are_refused_and_slots_come_back() {
        let limits = Limits {
            max_connections: 3,
            max_per_source: 2,
            tarpit_interval: Duration::ZERO,
            min_data_rate: 0,
            min_data_rate_interval: Duration::from_secs(1),
        };
        let sessions = Arc::new(Sessions::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = sessions.admit(a, &limits).unwrap();
        let _a2 = sessions.admit(a, &limits).unwrap();
        assert_eq!(
            sessions.admit(a, &limits).err(),
            Some(replies::too_many_connections_from_source())
        );
        let _b1 = sessions.admit(b, &limits).unwrap();
        assert_eq!(
            sessions.admit(b, &limits).err(),
            Some(replies::too_many_connections())
        );
        drop(a1);
        assert!(sessions.admit(b, &limits).is_ok());
    }

    #[test]
    fn data_pace_judges_each_window_by_the_time_spent_waiting() {
        let limits = Limits {
            max_connections: 1,
            max_per_source: 1,
            tarpit_interval: Duration::ZERO,
            min_data_rate: 1000,
            min_data_rate_interval: Duration::from_secs(10),
        };
        let mut pace = DataPace::default();
        assert!(!pace.too_slow(Duration::from_secs(5), 100, &limits));
        // 10 s waited for 10,100 bytes: fast enough; the window starts over.
        assert!(!pace.too_slow(Duration::from_secs(5), 10_000, &limits));
        assert!(pace.too_slow(Duration::from_secs(10), 9_999, &limits));
    }
}

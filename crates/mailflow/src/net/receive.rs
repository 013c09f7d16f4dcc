//! A receive connector: the listener, its limits, and the loop that drives one
//! [`Session`] per connection over a socket. Services plug their policy in through
//! [`SmtpHandler`]; the driver owns sockets, TLS, timeouts and protocol logging, so the
//! rules of the protocol live in one place (mailflow-smtp) and the rules of each
//! Exchange service in its own folder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mailflow_smtp::{
    Address, Enhanced, Event, MailParams, RcptParams, Reply, Session, SessionConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::orgauth::OrgSecret;
use super::stream::Stream;
use crate::frontend::passwords::Logon;
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
}

/// Creates a handler for each accepted connection.
pub type HandlerFactory = Arc<dyn Fn() -> Box<dyn SmtpHandler> + Send + Sync>;

/// Who may authenticate on this connector.
#[derive(Clone)]
pub enum AuthPolicy {
    None,
    /// Organisation servers only (ExchangeServer authentication), inside TLS except on
    /// loopback.
    OrgServers {
        secret: OrgSecret,
        servers: Arc<Vec<String>>,
    },
    /// Mailbox users (client submission), always inside TLS, with failed-logon
    /// throttling per client address.
    Mailboxes {
        book: Arc<crate::frontend::passwords::PasswordBook>,
        throttle: Arc<crate::frontend::passwords::AuthThrottle>,
    },
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
    /// MaxInboundConnection (reference §1.2).
    pub max_connections: usize,
    /// The domain `RCPT TO:<Postmaster>` stands for.
    pub default_domain: Arc<str>,
    /// TLS from the first byte (RFC 8314 implicit TLS) instead of STARTTLS.
    pub implicit_tls: bool,
    /// RemoteIPRanges: clients outside them are refused at connect (empty: all).
    pub remote_ranges: Vec<ipnet::IpNet>,
    pub handler: HandlerFactory,
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
        // A semaphore bounds sessions: past the limit new clients wait in the kernel's
        // backlog instead of exhausting memory.
        let permits = Arc::new(Semaphore::new(self.max_connections));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(connector = %self.id, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = this.run_session(tcp, remote).await {
                    tracing::debug!(connector = %this.id, %remote, "session ended: {e}");
                }
            });
        }
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
        let mut config = self.session.clone();
        config.starttls = self.tls.is_some();
        match &self.auth {
            AuthPolicy::OrgServers { .. } => {
                config.auth_mechanisms = vec!["PLAIN".into()];
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
            let reply = Reply::new(
                554,
                Enhanced(5, 7, 1),
                "Client host is not permitted on this connector",
            );
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
                                    Reply::new(530, Enhanced(5, 7, 1), "Client was not authenticated")
                                }
                                AuthPolicy::Mailboxes { .. } if info.user.is_none() => Reply::new(
                                    530,
                                    Enhanced(5, 7, 57),
                                    "SMTP; Client was not authenticated to send anonymous mail during MAIL FROM",
                                ),
                                _ => handler.mail(&info, from, params).await,
                            };
                            in_transaction = reply.is_positive();
                            session.respond(reply);
                        }
                        Event::Rcpt { mut to, params } => {
                            if to.domain.is_empty() {
                                // <Postmaster> without a domain (RFC 5321 §4.1.1.3):
                                // the organisation's default (first accepted) domain.
                                to.domain = self.default_domain.to_string();
                            }
                            let reply = handler.rcpt(&info, to, params).await;
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
                            authzid,
                            username,
                            password,
                            ..
                        } => {
                            let reply = self
                                .authenticate(&mut info, &authzid, &username, &password, &mut log)
                                .await;
                            session.respond(reply);
                        }
                        Event::Close => {}
                    }
                }
                let (received, sent) = session.take_log();
                for line in received {
                    log.received(&line);
                }
                for line in sent {
                    log.sent(&line);
                }
                if session.has_output() {
                    // A client that stops reading must not hold its session forever.
                    let output = session.take_output();
                    match tokio::time::timeout(self.inactivity_timeout, stream.write_all(&output)).await {
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
                            log.info(
                                info.tls.as_deref().unwrap_or(""),
                                "TLS negotiation succeeded",
                            );
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
                let timeout = self.inactivity_timeout.min(
                    self.connection_timeout
                        .saturating_sub(started.elapsed())
                        .max(Duration::from_millis(1)),
                );
                let n = match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
                    Ok(r) => r?,
                    Err(_) => {
                        let text = if started.elapsed() >= self.connection_timeout {
                            "Connection timed out, closing transmission channel"
                        } else {
                            "Connection inactivity timeout, closing transmission channel"
                        };
                        session.close_with(Reply::new(421, Enhanced(4, 4, 2), text));
                        let (_, sent) = session.take_log();
                        for line in sent {
                            log.sent(&line);
                        }
                        let _ = tokio::time::timeout(Duration::from_secs(10), stream.write_all(&session.take_output())).await;
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

    async fn authenticate(
        &self,
        info: &mut SessionInfo,
        service: &str,
        server: &str,
        password: &str,
        log: &mut ProtocolSession,
    ) -> Reply {
        let (secret, servers) = match &self.auth {
            AuthPolicy::OrgServers { secret, servers } => (secret, servers),
            AuthPolicy::Mailboxes { book, throttle } => {
                let ip = info.remote.ip();
                let logon = throttle.logon(book, ip, server, password).await;
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
                return logon.reply();
            }
            AuthPolicy::None => {
                return Reply::new(504, Enhanced(5, 7, 4), "Unrecognized authentication type");
            }
        };
        let known = servers.iter().any(|s| s.eq_ignore_ascii_case(server));
        if known && secret.verify(server, password) {
            info.org_server = Some((server.to_string(), service.to_string()));
            log.info(
                &format!("{server} {service}"),
                "authenticated as an organisation server",
            );
            Reply::new(235, Enhanced(2, 7, 0), "Authentication successful")
        } else {
            Reply::new(535, Enhanced(5, 7, 8), "Authentication credentials invalid")
        }
    }
}

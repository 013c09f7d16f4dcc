//! The SMTP client of the send connectors, implicit (Front End → Transport, Transport →
//! Mailbox Delivery) and configured (to the internet): connect, EHLO, STARTTLS,
//! authenticate, and send transactions with PIPELINING; the content goes with DATA
//! (dot-stuffed) or, where the connection asks for it and the server offers CHUNKING,
//! with BDAT (RFC 3030).

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use mailflow_smtp::data::DotStuffer;
use mailflow_smtp::{Reply, parse_reply, replies};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::Stream;
use crate::logs::connectivity::ConnectivitySession;
use crate::logs::protocol::ProtocolSession;

/// With BDAT, content beyond this goes in a second chunk sent only once the first was
/// accepted: the first chunk travels pipelined with the envelope, so this is all that is
/// sent in vain to a server that refuses every recipient (RFC 3030 §2 has it discard
/// the chunk), while most messages still take a single round trip.
const FIRST_CHUNK: usize = 64 * 1024;

/// Where in a transaction a recipient's final reply was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// MAIL was refused: every recipient shares its reply.
    Mail,
    /// RCPT was refused.
    Rcpt,
    /// RCPT was accepted: the reply is the one to DATA/BDAT or to the content.
    Data,
}

/// One recipient's final reply in a transaction, and where it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReply {
    pub reply: Reply,
    pub stage: Stage,
}

impl RecipientReply {
    /// Each recipient's outcome: its RCPT refusal, else the transaction's `end`.
    fn finals(rcpt_replies: Vec<Reply>, end: &Reply) -> Vec<RecipientReply> {
        rcpt_replies
            .into_iter()
            .map(|r| {
                if r.is_positive() {
                    RecipientReply {
                        reply: end.clone(),
                        stage: Stage::Data,
                    }
                } else {
                    RecipientReply {
                        reply: r,
                        stage: Stage::Rcpt,
                    }
                }
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connection to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("remote closed the connection")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer's certificate did not pass the send connector's `tls_auth_level`.
    #[error("TLS certificate validation failed: {0}")]
    CertificateRefused(String),
    /// The server refused the session (greeting, EHLO or AUTH): its reply.
    #[error("{0}")]
    Refused(Reply),
}

impl ClientError {
    /// The reply to record as a queue's last error.
    pub fn as_reply(&self) -> Reply {
        match self {
            ClientError::Refused(r) => r.clone(),
            ClientError::Connect(..) | ClientError::Timeout(_) => {
                replies::connection_timed_out_or_refused(self)
            }
            _ => replies::connection_dropped(self),
        }
    }
}

pub struct SmtpClient {
    stream: Stream,
    buf: Vec<u8>,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// EHLO keywords the server offered, upper-cased (`PIPELINING`, `SIZE 1000`, …).
    pub extensions: Vec<String>,
    /// The name the server gave for itself in its last EHLO reply (`<name> Hello …`).
    pub server_name: String,
    pub greeting: Reply,
    log: ProtocolSession,
    /// The connection's connectivity log session (reference §8.3), given by the caller
    /// that made the connection; its `-` line is written at QUIT or when dropped.
    connectivity: ConnectivitySession,
    /// Recipients accepted and content bytes written in the open transaction, for the
    /// connectivity log's count of messages sent.
    transaction: (usize, u64),
    timeout: Duration,
    /// Send content with BDAT when the server offers CHUNKING (see [`SmtpClient::use_chunking`]).
    chunking: bool,
}

impl SmtpClient {
    /// Connects, reads the greeting and sends EHLO.
    pub async fn connect(
        addr: SocketAddr,
        helo: &str,
        timeout: Duration,
        log: ProtocolSession,
    ) -> Result<SmtpClient, ClientError> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(addr))?
            .map_err(|e| ClientError::Connect(addr, e))?;
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        // The protocol log shows the real local endpoint, known only now.
        let mut log = log;
        log.set_local(local);
        let mut c = SmtpClient {
            stream: Stream::Plain(tcp),
            buf: Vec::with_capacity(4096),
            remote: addr,
            local,
            extensions: Vec::new(),
            server_name: String::new(),
            greeting: Reply::plain(220, ""),
            log,
            connectivity: ConnectivitySession::disabled(),
            transaction: (0, 0),
            timeout,
            chunking: false,
        };
        c.log.connect();
        let greeting = c.read_reply().await?;
        if greeting.code != 220 {
            return Err(ClientError::Refused(greeting));
        }
        c.greeting = greeting;
        let ehlo = c.command(&format!("EHLO {helo}")).await?;
        if ehlo.code != 250 {
            return Err(ClientError::Refused(ehlo));
        }
        c.take_ehlo(&ehlo);
        Ok(c)
    }

    /// STARTTLS (RFC 3207) and EHLO again. The certificate is not verified: on the
    /// internet, as Exchange and Postfix do by default, TLS here buys confidentiality
    /// against passive listeners. (Organisation servers use [`SmtpClient::starttls_org`],
    /// verified against the organisation CA when there is one.)
    pub async fn starttls(&mut self, helo: &str, server_name: &str) -> Result<(), ClientError> {
        self.starttls_with(helo, server_name, super::tls::client_config(), None)
            .await
    }

    /// STARTTLS that validates the peer's certificate (a send connector's
    /// `tls_auth_level` above `encryption_only`) against `server_name`. The certificate
    /// seen goes to the protocol log; one that does not validate ends the session right
    /// after the handshake with QUIT (nothing else reaches the peer, not even EHLO), and
    /// [`ClientError::CertificateRefused`] says why.
    pub async fn starttls_validated(
        &mut self,
        helo: &str,
        server_name: &str,
        check: super::tls::ValidatingClient,
    ) -> Result<(), ClientError> {
        self.starttls_with(helo, server_name, check.config.clone(), Some(&check.seen))
            .await
    }

    async fn starttls_with(
        &mut self,
        helo: &str,
        server_name: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
        seen: Option<&std::sync::Mutex<super::tls::PeerCertificate>>,
    ) -> Result<(), ClientError> {
        let reply = self.command("STARTTLS").await?;
        if reply.code != 220 {
            return Err(ClientError::Refused(reply));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(ClientError::Protocol(
                "STARTTLS on a stream that is not plain".into(),
            ));
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(self.remote.ip().into()));
        let tls = tokio::time::timeout(self.timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| ClientError::Timeout(self.remote))?;
        let tls = match tls {
            Ok(tls) => tls,
            // The organisation CA did not vouch for an internal peer: the handshake
            // failed (nothing was sent inside it); the text names the certificate.
            Err(e) => match super::orgca::refusal(&e) {
                Some(why) => {
                    self.log
                        .info(&why, "Remote certificate refused; session ended");
                    self.log.disconnect("Local");
                    return Err(ClientError::CertificateRefused(why));
                }
                None => {
                    return Err(ClientError::Protocol(format!("TLS handshake failed: {e}")));
                }
            },
        };
        self.stream = Stream::ClientTls(Box::new(tls));
        self.buf.clear();
        self.log.info(
            &self.stream.tls_description().unwrap_or_default(),
            "TLS negotiation succeeded",
        );
        if let Some(seen) = seen {
            self.refuse_unless_validated(seen).await?;
        }
        let ehlo = self.command(&format!("EHLO {helo}")).await?;
        if ehlo.code != 250 {
            return Err(ClientError::Refused(ehlo));
        }
        self.take_ehlo(&ehlo);
        Ok(())
    }

    /// The extensions and the server's name from an EHLO reply.
    fn take_ehlo(&mut self, ehlo: &Reply) {
        self.server_name = ehlo
            .lines
            .first()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        self.extensions = ehlo
            .lines
            .iter()
            .skip(1)
            .map(|l| l.to_ascii_uppercase())
            .collect();
    }

    /// The verdict the validating verifier left for this handshake: the certificate
    /// logged, and on refusal QUIT and the reason. No verdict (the verifier did not
    /// run) is a refusal too.
    async fn refuse_unless_validated(
        &mut self,
        seen: &std::sync::Mutex<super::tls::PeerCertificate>,
    ) -> Result<(), ClientError> {
        let (description, verdict) = match seen.lock() {
            Ok(mut seen) => (seen.description.take(), seen.verdict.take()),
            Err(_) => (None, None),
        };
        if let Some(d) = &description {
            self.log.info(d, "Remote certificate");
        }
        let reason = match verdict {
            Some(Ok(())) => return Ok(()),
            Some(Err(reason)) => reason,
            None => "no certificate was verified".to_string(),
        };
        self.log
            .info(&reason, "Remote certificate refused; session ended");
        let _ = self.command("QUIT").await;
        self.log.disconnect("Local");
        self.stream = Stream::Closed;
        Err(ClientError::CertificateRefused(reason))
    }

    /// STARTTLS to another server of the organisation with the server's cached
    /// configuration ([`super::orgca::ServerTls::client`]); when `verified` (the
    /// organisation has a CA), the peer's certificate verified against it for
    /// `server_name` is logged as `Remote certificate verified`.
    pub async fn starttls_org(
        &mut self,
        helo: &str,
        server_name: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
        verified: bool,
    ) -> Result<(), ClientError> {
        self.starttls_with(helo, server_name, config, None).await?;
        if verified {
            let seen = self.peer_certificate().unwrap_or_default();
            self.log.info(
                &format!("{seen}; verified for {server_name} by the organisation CA"),
                "Remote certificate verified",
            );
        }
        Ok(())
    }

    /// The peer's certificate described (subject, issuer, SANs, validity) once TLS is up.
    pub fn peer_certificate(&self) -> Option<String> {
        match &self.stream {
            Stream::ClientTls(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(super::tls::describe_certificate),
            _ => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::ClientTls(_))
    }

    /// `version=…, cipher=…` once TLS is up.
    pub fn tls_description(&self) -> Option<String> {
        self.stream.tls_description()
    }

    /// The size limit the server announced with SIZE (RFC 1870), if any.
    pub fn size_limit(&self) -> Option<u64> {
        self.extensions
            .iter()
            .find_map(|e| e.strip_prefix("SIZE ").and_then(|n| n.trim().parse().ok()))
            .filter(|&n: &u64| n > 0)
    }

    /// AUTH with the first mechanism both sides know (PLAIN, then LOGIN).
    pub async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        let offered = self
            .extensions
            .iter()
            .find(|e| e.starts_with("AUTH "))
            .cloned()
            .unwrap_or_default();
        if offered.split(' ').any(|m| m == "PLAIN") {
            return self.auth_plain("", user, password).await;
        }
        if !offered.split(' ').any(|m| m == "LOGIN") {
            return Err(ClientError::Protocol(
                "the smart host offers neither AUTH PLAIN nor LOGIN".into(),
            ));
        }
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let r = self.command("AUTH LOGIN").await?;
        if r.code != 334 {
            return Err(ClientError::Refused(r));
        }
        self.log.sent("****");
        self.write(format!("{}\r\n", b64(user)).as_bytes()).await?;
        let r = self.read_reply().await?;
        if r.code != 334 {
            return Err(ClientError::Refused(r));
        }
        self.log.sent("****");
        self.write(format!("{}\r\n", b64(password)).as_bytes())
            .await?;
        let r = self.read_reply().await?;
        if r.code != 235 {
            return Err(ClientError::Refused(r));
        }
        Ok(())
    }

    /// The timeout for each command's reply from now on (connect used its own).
    pub fn timeout_for_commands(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Send content with BDAT (RFC 3030) whenever the server offers CHUNKING: no
    /// dot-stuffing on either side, and a small message's envelope and content go in a
    /// single round trip. Send connectors and the sessions between this organisation's
    /// services ask for it; the Front End's proxy sessions relay the client's own
    /// command (DATA or BDAT) instead.
    pub fn use_chunking(&mut self, on: bool) {
        self.chunking = on;
    }

    pub fn has_extension(&self, name: &str) -> bool {
        self.extensions
            .iter()
            .any(|e| e.split(' ').next() == Some(name))
    }

    /// AUTH PLAIN (authzid, user, password); the credentials are never logged.
    pub async fn auth_plain(
        &mut self,
        authzid: &str,
        user: &str,
        password: &str,
    ) -> Result<(), ClientError> {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{authzid}\0{user}\0{password}"));
        self.log.sent("AUTH PLAIN ****");
        self.write(format!("AUTH PLAIN {token}\r\n").as_bytes())
            .await?;
        let reply = self.read_reply().await?;
        if reply.code != 235 {
            return Err(ClientError::Refused(reply));
        }
        Ok(())
    }

    /// Proves that this server (`server`, running `service`) belongs to the
    /// organisation with `X-MAILFLOW-SERVER` (see [`super::orgauth`]): the answer to
    /// the server's fresh challenge, bound to this TLS session (or, on a plain loopback
    /// session, to the plain marker) and to the name the server gave in its EHLO reply.
    /// No fallback to AUTH PLAIN: a server that does not offer the mechanism is refused.
    pub async fn auth_org_server(
        &mut self,
        secret: &super::orgauth::OrgSecret,
        service: &str,
        server: &str,
    ) -> Result<(), ClientError> {
        use super::orgauth::{self, Binding, Transcript};
        let mechanism = orgauth::MECHANISM;
        let offered = self.extensions.iter().any(|e| {
            e.strip_prefix("AUTH ")
                .is_some_and(|m| m.split(' ').any(|m| m == mechanism))
        });
        if !offered {
            return Err(ClientError::Protocol(format!(
                "{} does not offer AUTH {mechanism}",
                self.remote
            )));
        }
        let binding = Binding::of(&self.stream).map_err(ClientError::Protocol)?;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let initial = b64.encode(orgauth::initial_response(service, server));
        // Logged masked like every AUTH line (the receiving server logs who
        // authenticated as what).
        self.log.sent(&format!("AUTH {mechanism} ****"));
        self.write(format!("AUTH {mechanism} {initial}\r\n").as_bytes())
            .await?;
        let reply = self.read_reply().await?;
        if reply.code != 334 {
            return Err(ClientError::Refused(reply));
        }
        let challenge = reply
            .lines
            .first()
            .and_then(|text| b64.decode(text.trim()).ok())
            .filter(|c| c.len() == orgauth::CHALLENGE_LEN);
        let Some(challenge) = challenge else {
            // `*` ends the exchange so the session stays usable for the error report.
            let _ = self.command("*").await;
            return Err(ClientError::Protocol(format!(
                "{} sent an invalid {mechanism} challenge",
                self.remote
            )));
        };
        let response = secret.server_auth_response(&Transcript {
            challenge: &challenge,
            server,
            service,
            receiver: &self.server_name,
            binding: &binding,
        });
        self.log.sent("****");
        self.write(format!("{}\r\n", b64.encode(response)).as_bytes())
            .await?;
        let reply = self.read_reply().await?;
        if reply.code != 235 {
            return Err(ClientError::Refused(reply));
        }
        Ok(())
    }

    /// Sends one command and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, ClientError> {
        self.log.sent(line);
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }

    /// MAIL and every RCPT in one write (RFC 2920), then the replies in order. With
    /// `with_data`, DATA is pipelined too and its reply is returned as the last element.
    pub async fn envelope(
        &mut self,
        mail: &str,
        rcpts: &[String],
        with_data: bool,
    ) -> Result<(Reply, Vec<Reply>, Option<Reply>), ClientError> {
        let pipelining = self.has_extension("PIPELINING");
        let mut lines = vec![mail.to_string()];
        lines.extend(rcpts.iter().cloned());
        if with_data {
            lines.push("DATA".into());
        }
        if !pipelining {
            let mail_reply = self.command(&lines[0]).await?;
            let mut rcpt_replies = Vec::new();
            if mail_reply.is_positive() {
                for l in &lines[1..=rcpts.len()] {
                    rcpt_replies.push(self.command(l).await?);
                }
            }
            let data = if with_data
                && mail_reply.is_positive()
                && rcpt_replies.iter().any(Reply::is_positive)
            {
                Some(self.command("DATA").await?)
            } else {
                None
            };
            self.transaction = (rcpt_replies.iter().filter(|r| r.is_positive()).count(), 0);
            return Ok((mail_reply, rcpt_replies, data));
        }
        let mut out = String::new();
        for l in &lines {
            self.log.sent(l);
            out.push_str(l);
            out.push_str("\r\n");
        }
        self.write(out.as_bytes()).await?;
        let mail_reply = self.read_reply().await?;
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        for _ in rcpts {
            rcpt_replies.push(self.read_reply().await?);
        }
        let data = if with_data {
            Some(self.read_reply().await?)
        } else {
            None
        };
        self.transaction = (rcpt_replies.iter().filter(|r| r.is_positive()).count(), 0);
        Ok((mail_reply, rcpt_replies, data))
    }

    /// Writes message content after a 354, dot-stuffed; call repeatedly, then
    /// [`SmtpClient::finish_data`].
    pub async fn data_chunk(
        &mut self,
        stuffer: &mut DotStuffer,
        content: &[u8],
    ) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(content.len() + 64);
        stuffer.stuff(content, &mut out);
        self.transaction.1 += content.len() as u64;
        self.write(&out).await
    }

    /// Ends the content and reads the end-of-data reply.
    pub async fn finish_data(&mut self, stuffer: &DotStuffer) -> Result<Reply, ClientError> {
        let mut out = Vec::new();
        stuffer.finish(&mut out);
        self.write(&out).await?;
        self.log.sent("<message content>");
        let end = self.read_reply().await?;
        self.message_done(&end);
        Ok(end)
    }

    /// Counts a message the server took (its end-of-data reply positive) in the
    /// connectivity log.
    fn message_done(&mut self, end: &Reply) {
        let (recipients, bytes) = std::mem::take(&mut self.transaction);
        if end.is_positive() {
            self.connectivity.message_sent(bytes, recipients);
        }
    }

    /// This session's id in the send protocol log (empty when it is not logged).
    pub fn session_id(&self) -> &str {
        self.log.session_id()
    }

    /// Hands this connection its connectivity log session (made by the caller, which
    /// logged the DNS answers and the connection); QUIT or drop ends it.
    pub fn attach_connectivity(&mut self, session: ConnectivitySession) {
        self.connectivity = session;
    }

    /// One whole transaction with the content in memory. Returns the transaction's
    /// reply and each recipient's (a recipient accepted at RCPT gets the final reply),
    /// with the stage that gave it.
    pub async fn send_message(
        &mut self,
        mail: &str,
        rcpts: &[String],
        content: &[u8],
    ) -> Result<(Reply, Vec<RecipientReply>), ClientError> {
        if self.chunking && self.has_extension("CHUNKING") {
            return self.send_message_bdat(mail, rcpts, content).await;
        }
        let (mail_reply, rcpt_replies, data) = self.envelope(mail, rcpts, true).await?;
        if let Some(outcome) = self.mail_refused(&mail_reply, rcpts.len()).await {
            return outcome;
        }
        let data = data.unwrap_or_else(|| Reply::plain(554, "no valid recipients"));
        if data.code != 354 {
            // MAIL was accepted: the transaction stays open until RSET, whatever
            // happened to the recipients (RFC 5321 §4.1.1.5).
            self.reset().await?;
            let finals = RecipientReply::finals(rcpt_replies, &data);
            return Ok((data, finals));
        }
        let mut stuffer = DotStuffer::default();
        self.data_chunk(&mut stuffer, content).await?;
        let end = self.finish_data(&stuffer).await?;
        let finals = RecipientReply::finals(rcpt_replies, &end);
        Ok((end, finals))
    }

    /// [`SmtpClient::send_message`] with BDAT (RFC 3030 §2): the content is counted,
    /// not dot-stuffed. With PIPELINING the first chunk (the whole of a small message,
    /// as `BDAT n LAST`) follows MAIL and RCPT in one write; the rest of a large one
    /// goes once that chunk is accepted. Per-recipient outcomes are as with DATA.
    async fn send_message_bdat(
        &mut self,
        mail: &str,
        rcpts: &[String],
        content: &[u8],
    ) -> Result<(Reply, Vec<RecipientReply>), ClientError> {
        // The end of data that DATA's terminator would supply.
        let terminated;
        let content = if content.is_empty() || content.ends_with(b"\r\n") {
            content
        } else {
            terminated = [content, b"\r\n"].concat();
            &terminated
        };
        let (first, rest) = content.split_at(content.len().min(FIRST_CHUNK));
        let first_line = bdat_line(first.len(), rest.is_empty());
        let (mail_reply, rcpt_replies, first_reply) = if self.has_extension("PIPELINING") {
            let mut out = Vec::with_capacity(first.len() + 64 * (rcpts.len() + 2));
            for line in std::iter::once(mail)
                .chain(rcpts.iter().map(String::as_str))
                .chain(std::iter::once(first_line.as_str()))
            {
                self.log.sent(line);
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(first);
            self.write(&out).await?;
            let mail_reply = self.read_reply().await?;
            let mut rcpt_replies = Vec::with_capacity(rcpts.len());
            for _ in rcpts {
                rcpt_replies.push(self.read_reply().await?);
            }
            // With every recipient refused the server discards the chunk and says so.
            let first_reply = self.read_reply().await?;
            (mail_reply, rcpt_replies, Some(first_reply))
        } else {
            let mail_reply = self.command(mail).await?;
            let mut rcpt_replies = Vec::new();
            if mail_reply.is_positive() {
                for line in rcpts {
                    rcpt_replies.push(self.command(line).await?);
                }
            }
            let first_reply = if rcpt_replies.iter().any(Reply::is_positive) {
                Some(self.chunk(&first_line, first).await?)
            } else {
                None
            };
            (mail_reply, rcpt_replies, first_reply)
        };
        if let Some(outcome) = self.mail_refused(&mail_reply, rcpts.len()).await {
            return outcome;
        }
        let accepted = rcpt_replies.iter().any(Reply::is_positive);
        let mut end = match first_reply {
            Some(r) if accepted => r,
            _ => Reply::plain(554, "no valid recipients"),
        };
        if end.is_positive() && !rest.is_empty() {
            end = self.chunk(&bdat_line(rest.len(), true), rest).await?;
        }
        if !end.is_positive() {
            // RFC 3030 §2: no more chunks after a refused one; MAIL may still be in
            // force, so the transaction is ended explicitly.
            self.reset().await?;
        }
        self.transaction = (
            rcpt_replies.iter().filter(|r| r.is_positive()).count(),
            content.len() as u64,
        );
        self.message_done(&end);
        let finals = RecipientReply::finals(rcpt_replies, &end);
        Ok((end, finals))
    }

    /// The transaction's outcome when MAIL was refused, None when it was accepted.
    async fn mail_refused(
        &mut self,
        mail_reply: &Reply,
        rcpts: usize,
    ) -> Option<Result<(Reply, Vec<RecipientReply>), ClientError>> {
        if mail_reply.code == 503 {
            // A bad sequence means this session's state is not what we think: the
            // message is not at fault, the connection is.
            return Some(Err(ClientError::Protocol(format!(
                "session out of sequence: {mail_reply}"
            ))));
        }
        if mail_reply.is_positive() {
            return None;
        }
        let _ = self.reset().await;
        let every = RecipientReply {
            reply: mail_reply.clone(),
            stage: Stage::Mail,
        };
        Some(Ok((mail_reply.clone(), vec![every; rcpts])))
    }

    /// One BDAT command and its chunk, and the reply.
    async fn chunk(&mut self, line: &str, bytes: &[u8]) -> Result<Reply, ClientError> {
        self.log.sent(line);
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.write(bytes).await?;
        self.read_reply().await
    }

    pub async fn reset(&mut self) -> Result<Reply, ClientError> {
        self.command("RSET").await
    }

    pub async fn quit(mut self) {
        let _ = self.command("QUIT").await;
        self.log.disconnect("Local");
        self.connectivity.close();
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| ClientError::Timeout(self.remote))??;
        Ok(())
    }

    /// Reads one reply, waiting at most the command timeout.
    pub async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    self.log.received(&reply.one_line());
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(self.timeout, self.stream.read(&mut chunk))
                .await
                .map_err(|_| ClientError::Timeout(self.remote))??;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn bdat_line(size: usize, last: bool) -> String {
    if last {
        format!("BDAT {size} LAST")
    } else {
        format!("BDAT {size}")
    }
}

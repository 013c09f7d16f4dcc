//! The server side of an SMTP session as a sans-I/O state machine.
//!
//! Every listener (Front End, Transport, Client Proxy, Mailbox Delivery) drives the same
//! [`Session`]: the driver feeds it bytes read from the socket, takes [`Event`]s out, and
//! answers the events that need a decision (MAIL, RCPT, start of data, end of data, AUTH)
//! with [`Session::respond`]. Replies accumulate in an output buffer the driver writes
//! when [`Session::next_event`] returns `None`, which is exactly when the input holds no
//! complete command: the flush rule of RFC 2920 §3.2 for PIPELINING.
//!
//! The session itself answers everything that needs no policy: syntax, sequence, limits,
//! EHLO, NOOP, RSET, QUIT, VRFY, HELP, STARTTLS bookkeeping, DATA/BDAT framing.

use crate::command::{Address, Command, MailParams, RcptParams, parse_command};
use crate::data::{BareNewlineCheck, DataDecoder, Decoded};
use crate::reply::{Enhanced, Reply};
use base64::Engine;

/// Limits and capabilities of one receive connector.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// FQDN announced in the greeting and EHLO.
    pub hostname: String,
    /// Text after `220 ` in the greeting (built by the driver; it owns the clock).
    pub banner: String,
    /// Bytes; also advertised as `SIZE`.
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// RFC 5321 §4.5.3.1.4 allows 512 octets; extensions lengthen it, so the default
    /// leaves room and refuses only absurd lines.
    pub max_command_line: usize,
    /// Exchange's MaxProtocolErrors (reference §1.2): then `421` and close.
    pub max_errors: u32,
    pub starttls: bool,
    /// SASL mechanisms offered (e.g. `PLAIN`, `LOGIN`); empty: no AUTH. The session
    /// runs `PLAIN` and `LOGIN` itself ([`Event::Auth`]); any other mechanism listed
    /// here is a challenge–response one the driver runs ([`Event::AuthStart`]).
    pub auth_mechanisms: Vec<String>,
    /// Offer and accept AUTH only inside TLS (BasicAuthRequireTLS).
    pub auth_requires_tls: bool,
    pub chunking: bool,
    pub smtputf8: bool,
    pub dsn: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hostname: "localhost".into(),
            banner: "localhost ESMTP".into(),
            max_message_size: 36 * 1024 * 1024,
            max_recipients: 200,
            max_command_line: 2048,
            max_errors: 5,
            starttls: false,
            auth_mechanisms: Vec::new(),
            auth_requires_tls: true,
            chunking: true,
            smtputf8: true,
            dsn: true,
        }
    }
}

/// What happened, for the driver. Events marked *decide* wait for [`Session::respond`].
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// HELO/EHLO accepted (the session has answered). Any open transaction is gone.
    Hello { domain: String, extended: bool },
    /// *decide*: a positive reply opens the transaction.
    Mail {
        from: Option<Address>,
        params: MailParams,
    },
    /// *decide*: a positive reply adds the recipient.
    Rcpt { to: Address, params: RcptParams },
    /// *decide*: the client wants to send content (DATA, or the first BDAT). Answer
    /// `354` for DATA or any 2xx for BDAT to go ahead; a negative reply refuses the
    /// content (for BDAT the chunk is still read and discarded, RFC 3030 §2).
    DataStart,
    /// Message content, dot-unstuffed, in order.
    Data(Vec<u8>),
    /// *decide*: the content is complete; the reply is the end-of-data reply.
    DataEnd,
    /// The session refused the content itself (size, bare newline) and has answered.
    DataRejected(Reply),
    /// The transaction ended without delivery (RSET, new HELO, error).
    Reset,
    /// The session answered `220` to STARTTLS: write the output, run the TLS handshake,
    /// then call [`Session::tls_established`].
    StartTls,
    /// *decide*: credentials from AUTH PLAIN or LOGIN. Answer 235 or 535.
    Auth {
        mechanism: String,
        authzid: String,
        username: String,
        password: String,
    },
    /// *decide*: AUTH with a mechanism the driver runs (one of the configured
    /// mechanisms other than PLAIN and LOGIN), with the decoded initial response if the
    /// client gave one (`=` is an empty one, RFC 4954 §4). Answer with
    /// [`Session::auth_challenge`] to send a `334` challenge (the server's challenge
    /// comes from the driver: randomness and keys are not the session's business), or
    /// with [`Session::respond`] to end the exchange (235, or a refusal).
    AuthStart {
        mechanism: String,
        initial: Option<Vec<u8>>,
    },
    /// *decide*: the client's decoded answer to the last [`Session::auth_challenge`].
    /// Answer as to [`Event::AuthStart`]: another challenge, or the final reply.
    AuthResponse {
        mechanism: String,
        response: Vec<u8>,
    },
    /// The session is over (QUIT, too many errors): write the output and close.
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Mail,
    Rcpt,
    DataStart {
        bdat: bool,
    },
    DataEnd,
    Auth,
    /// [`Event::AuthStart`] or [`Event::AuthResponse`] of this mechanism: a challenge
    /// or a final reply.
    AuthStep(String),
}

#[derive(Debug)]
enum Phase {
    Command,
    /// Discarding an overlong command line up to its LF.
    SkipLine,
    Data(DataDecoder),
    /// Content complete and handed out; `DataEnd` is next.
    DataDone,
    /// Reading a BDAT chunk: bytes left, whether LAST, whether content is wanted.
    Bdat {
        left: u64,
        last: bool,
        accept: bool,
    },
    /// AUTH LOGIN: waiting for the username (`None`) or password.
    AuthLogin(Option<String>),
    AuthPlain,
    /// A driver-run mechanism sent a challenge: the next line is the response.
    AuthChallenge(String),
    Closed,
}

/// Transaction state between MAIL and end of data.
#[derive(Debug, Default)]
struct Transaction {
    mail: bool,
    smtputf8: bool,
    declared_size: Option<u64>,
    recipients: usize,
    /// BDAT in progress: content bytes so far and whether they are being kept.
    bdat_size: u64,
    bdat_started: bool,
    bdat_refused: Option<Reply>,
    bdat_newlines: BareNewlineCheck,
}

pub struct Session {
    config: SessionConfig,
    input: Vec<u8>,
    output: Vec<u8>,
    phase: Phase,
    pending: Option<Pending>,
    helo: Option<String>,
    tls: bool,
    authenticated: bool,
    tx: Transaction,
    errors: u32,
    /// Replies the driver should log, in order (protocol log `>` lines).
    sent_log: Vec<String>,
    received_log: Vec<String>,
}

fn r(code: u16, e: (u8, u16, u16), text: &str) -> Reply {
    Reply::new(code, Enhanced(e.0, e.1, e.2), text)
}

impl Session {
    /// Starts a session and queues the greeting.
    pub fn new(config: SessionConfig) -> Session {
        let mut s = Session {
            input: Vec::with_capacity(4096),
            output: Vec::with_capacity(1024),
            phase: Phase::Command,
            pending: None,
            helo: None,
            tls: false,
            authenticated: false,
            tx: Transaction::default(),
            errors: 0,
            sent_log: Vec::new(),
            received_log: Vec::new(),
            config,
        };
        let banner = Reply::plain(220, s.config.banner.clone());
        s.send(banner);
        s
    }

    /// Starts a session whose transport is already TLS (implicit TLS, RFC 8314).
    pub fn new_tls(config: SessionConfig) -> Session {
        let mut s = Session::new(config);
        s.tls = true;
        s
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }
    pub fn is_tls(&self) -> bool {
        self.tls
    }
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }
    /// True while message content is being read (the driver uses the data timeout).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Bdat { .. })
    }

    /// Bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.is_closed() {
            self.input.extend_from_slice(bytes);
        }
    }

    /// Replies to write to the client (drained).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Protocol-log lines since the last call: (`<` commands received, `>` replies sent).
    pub fn take_log(&mut self) -> (Vec<String>, Vec<String>) {
        (
            std::mem::take(&mut self.received_log),
            std::mem::take(&mut self.sent_log),
        )
    }

    fn send(&mut self, reply: Reply) {
        self.sent_log.push(reply.one_line());
        reply.write_to(&mut self.output);
    }

    /// Counts a protocol error; past the limit the session closes (reference §1.2).
    fn error(&mut self, reply: Reply) -> Option<Event> {
        self.send(reply);
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.send(r(
                421,
                (4, 7, 0),
                "Too many errors on this connection, closing transmission channel",
            ));
            self.phase = Phase::Closed;
            return Some(Event::Close);
        }
        None
    }

    /// The driver's reply to a *decide* event.
    pub fn respond(&mut self, reply: Reply) {
        let Some(pending) = self.pending.take() else {
            // A driver bug; answering something is better than a hung client.
            self.send(reply);
            return;
        };
        let ok = reply.is_positive();
        match pending {
            Pending::Mail => {
                if ok {
                    self.tx.mail = true;
                }
                self.send(reply);
            }
            Pending::Rcpt => {
                if ok {
                    self.tx.recipients += 1;
                }
                self.send(reply);
            }
            Pending::DataStart { bdat: false } => {
                if ok {
                    self.send(Reply::plain(
                        354,
                        "Start mail input; end with <CRLF>.<CRLF>",
                    ));
                    self.phase = Phase::Data(DataDecoder::default());
                } else {
                    self.send(reply);
                }
            }
            Pending::DataStart { bdat: true } => {
                self.tx.bdat_started = true;
                if !ok {
                    self.tx.bdat_refused = Some(reply);
                }
                if let Phase::Bdat { accept, .. } = &mut self.phase {
                    *accept = ok;
                }
            }
            Pending::DataEnd => {
                self.send(reply);
                self.tx = Transaction::default();
            }
            Pending::Auth | Pending::AuthStep(_) => {
                if ok {
                    self.authenticated = true;
                }
                self.send(reply);
            }
        }
    }

    /// The driver's challenge in a mechanism it runs, after [`Event::AuthStart`] or
    /// [`Event::AuthResponse`]: sent as `334 <base64>`, and the next line comes back as
    /// [`Event::AuthResponse`] (or `*` cancels it with `501`). Called with no exchange
    /// waiting for it is a driver bug: with nothing pending the client gets `454 4.7.0`
    /// (an answer, not a hang); a pending MAIL, RCPT or data decision stays pending.
    pub fn auth_challenge(&mut self, challenge: &[u8]) {
        match self.pending.take() {
            Some(Pending::AuthStep(mechanism)) => {
                let text = base64::engine::general_purpose::STANDARD.encode(challenge);
                self.send(Reply::plain(334, text));
                self.phase = Phase::AuthChallenge(mechanism);
            }
            other => {
                self.pending = other;
                if self.pending.is_none() {
                    self.send(r(454, (4, 7, 0), "Temporary authentication failure"));
                }
            }
        }
    }

    /// The TLS handshake after STARTTLS succeeded: state resets (RFC 3207 §4.2).
    pub fn tls_established(&mut self) {
        self.tls = true;
        self.helo = None;
        self.authenticated = false;
        self.tx = Transaction::default();
    }

    /// A reply that closes the session (timeouts, shutdown): queued, then closed.
    pub fn close_with(&mut self, reply: Reply) {
        self.send(reply);
        self.phase = Phase::Closed;
        self.pending = None;
    }

    /// The next event, or `None` when more input is needed (write the output then).
    pub fn next_event(&mut self) -> Option<Event> {
        if self.pending.is_some() {
            return None;
        }
        loop {
            match &mut self.phase {
                Phase::Closed => return None,
                Phase::Data(decoder) => {
                    let mut out = Vec::new();
                    let decoded = decoder.decode(&self.input, &mut out);
                    let (used, end) = match decoded {
                        Decoded::More(n) => (n, false),
                        Decoded::End(n) => (n, true),
                    };
                    self.input.drain(..used);
                    let too_big = decoder.size > self.config.max_message_size;
                    let bare = decoder.bare_newline;
                    let nul = decoder.nul;
                    if end {
                        if too_big || bare || nul {
                            self.phase = Phase::Command;
                            self.tx = Transaction::default();
                            let reply = if too_big {
                                size_exceeded()
                            } else if bare {
                                bare_newline_reply()
                            } else {
                                nul_reply()
                            };
                            self.send(reply.clone());
                            return Some(Event::DataRejected(reply));
                        }
                        self.phase = Phase::DataDone;
                        if !out.is_empty() {
                            return Some(Event::Data(out));
                        }
                        continue;
                    }
                    if out.is_empty() || too_big {
                        return None;
                    }
                    return Some(Event::Data(out));
                }
                Phase::DataDone => {
                    self.phase = Phase::Command;
                    self.pending = Some(Pending::DataEnd);
                    return Some(Event::DataEnd);
                }
                Phase::Bdat { .. } => {
                    if let Some(ev) = self.bdat_step() {
                        return Some(ev);
                    }
                    // A chunk that is complete (not LAST) is answered and the
                    // commands pipelined after it are read now, not when more input
                    // happens to arrive.
                    if matches!(self.phase, Phase::Bdat { .. } | Phase::Closed)
                        || self.pending.is_some()
                    {
                        return None;
                    }
                }
                Phase::SkipLine => {
                    let Some(nl) = self.input.iter().position(|&b| b == b'\n') else {
                        self.input.clear();
                        return None;
                    };
                    self.input.drain(..=nl);
                    self.phase = Phase::Command;
                }
                Phase::Command
                | Phase::AuthLogin(_)
                | Phase::AuthPlain
                | Phase::AuthChallenge(_) => {
                    let Some(nl) = self.input.iter().position(|&b| b == b'\n') else {
                        if self.input.len() > self.config.max_command_line {
                            self.input.clear();
                            self.phase = Phase::SkipLine;
                            if let Some(ev) = self.error(line_too_long()) {
                                return Some(ev);
                            }
                            return None;
                        }
                        return None;
                    };
                    let mut line: Vec<u8> = self.input.drain(..=nl).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if line.len() > self.config.max_command_line {
                        // As when the line arrives in pieces (SkipLine): an AUTH exchange
                        // ends, so the next line means the same however TCP cut the stream.
                        self.phase = Phase::Command;
                        if let Some(ev) = self.error(line_too_long()) {
                            return Some(ev);
                        }
                        continue;
                    }
                    if let Some(ev) = self.line(line) {
                        return Some(ev);
                    }
                    if self.pending.is_some() {
                        return None;
                    }
                }
            }
        }
    }
}

impl Session {
    /// Handles one complete command line (or an AUTH continuation line).
    fn line(&mut self, line: Vec<u8>) -> Option<Event> {
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::AuthLogin(user) => {
                self.received_log.push("<AUTH LOGIN response>".into());
                return self.auth_login_step(user, &line);
            }
            Phase::AuthPlain => {
                self.received_log.push("<AUTH PLAIN response>".into());
                return self.auth_plain(&line);
            }
            Phase::AuthChallenge(mechanism) => {
                self.received_log
                    .push(format!("<AUTH {mechanism} response>"));
                return self.auth_response(mechanism, &line);
            }
            _ => {}
        }
        let command = match parse_command(&line) {
            Ok(c) => c,
            Err(reply) => {
                self.received_log
                    .push(String::from_utf8_lossy(&line).into_owned());
                return self.error(reply);
            }
        };
        // Never log credentials given on the AUTH line.
        self.received_log.push(match &command {
            Command::Auth { mechanism, .. } => format!("AUTH {mechanism} ****"),
            _ => String::from_utf8_lossy(&line).into_owned(),
        });
        match command {
            Command::Ehlo(domain) => self.hello(domain, true),
            Command::Helo(domain) => self.hello(domain, false),
            Command::Mail(from, params) => self.mail(from, params),
            Command::Rcpt(to, params) => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.send(r(250, (2, 0, 0), "Resetting"));
                self.reset()
            }
            Command::Noop => {
                self.send(r(250, (2, 0, 0), "OK"));
                None
            }
            Command::Quit => {
                self.send(r(221, (2, 0, 0), "Service closing transmission channel"));
                self.phase = Phase::Closed;
                Some(Event::Close)
            }
            Command::Vrfy => {
                self.send(r(
                    252,
                    (2, 1, 5),
                    "Cannot VRFY user, but will accept message and attempt delivery",
                ));
                None
            }
            Command::Expn => self.error(r(502, (5, 5, 1), "EXPN is not supported")),
            Command::Help => {
                self.send(Reply::multiline(
                    214,
                    vec![
                        "This server supports the following commands:".into(),
                        "HELO EHLO STARTTLS RCPT DATA RSET MAIL QUIT HELP AUTH BDAT".into(),
                    ],
                ));
                None
            }
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
        }
    }

    /// Ends any open transaction; tells the driver if there was one.
    fn reset(&mut self) -> Option<Event> {
        let had = self.tx.mail;
        self.tx = Transaction::default();
        had.then_some(Event::Reset)
    }

    fn hello(&mut self, domain: String, extended: bool) -> Option<Event> {
        if !is_hello_argument(&domain) {
            // The name goes into Received: headers and logs: control characters or
            // anything else that is not a name must never get that far.
            return self.error(invalid_domain_reply());
        }
        self.tx = Transaction::default();
        self.helo = Some(domain.clone());
        let host = &self.config.hostname;
        if !extended {
            self.send(Reply::plain(250, format!("{host} Hello [{domain}]")));
        } else {
            let c = &self.config;
            let mut lines = vec![
                format!("{host} Hello [{domain}]"),
                format!("SIZE {}", c.max_message_size),
                "PIPELINING".into(),
            ];
            if c.dsn {
                lines.push("DSN".into());
            }
            lines.push("ENHANCEDSTATUSCODES".into());
            if c.starttls && !self.tls {
                lines.push("STARTTLS".into());
            }
            if !c.auth_mechanisms.is_empty() && (self.tls || !c.auth_requires_tls) {
                lines.push(format!("AUTH {}", c.auth_mechanisms.join(" ")));
            }
            lines.push("8BITMIME".into());
            if c.chunking {
                lines.push("CHUNKING".into());
            }
            if c.smtputf8 {
                lines.push("SMTPUTF8".into());
            }
            self.send(Reply::multiline(250, lines));
        }
        Some(Event::Hello { domain, extended })
    }

    fn mail(&mut self, from: Option<Address>, params: MailParams) -> Option<Event> {
        if self.helo.is_none() {
            return self.error(r(503, (5, 5, 2), "Send hello first"));
        }
        if self.tx.mail {
            return self.error(r(503, (5, 5, 2), "Sender already specified"));
        }
        if params.smtputf8 && !self.config.smtputf8 {
            return self.error(r(555, (5, 5, 4), "SMTPUTF8 is not supported"));
        }
        if params
            .size
            .is_some_and(|s| s > self.config.max_message_size)
        {
            // RFC 1870 §6.1: refuse early when the declared size is over the limit.
            self.send(size_exceeded());
            return None;
        }
        self.tx.smtputf8 = params.smtputf8;
        self.tx.declared_size = params.size;
        self.pending = Some(Pending::Mail);
        Some(Event::Mail { from, params })
    }

    fn rcpt(&mut self, to: Address, params: RcptParams) -> Option<Event> {
        if !self.tx.mail {
            return self.error(r(503, (5, 5, 1), "Need mail command"));
        }
        if self.tx.bdat_started {
            return self.error(r(503, (5, 5, 1), "Bad sequence of commands"));
        }
        let ascii = to.local.is_ascii() && to.domain.is_ascii();
        if !self.tx.smtputf8 && !ascii {
            self.send(r(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8"));
            return None;
        }
        // RFC 6533 §3: an ORCPT in raw UTF-8 (utf-8-addr-unitext) needs SMTPUTF8.
        if !self.tx.smtputf8 && params.orcpt.as_deref().is_some_and(|o| !o.is_ascii()) {
            return self.error(crate::command::invalid_orcpt());
        }
        if self.tx.recipients >= self.config.max_recipients {
            // RFC 5321 §4.5.3.1.10: 452 so the client sends the rest later.
            self.send(r(452, (4, 5, 3), "Too many recipients"));
            return None;
        }
        self.pending = Some(Pending::Rcpt);
        Some(Event::Rcpt { to, params })
    }

    fn data(&mut self) -> Option<Event> {
        if !self.tx.mail {
            return self.error(r(503, (5, 5, 1), "Need mail command"));
        }
        if self.tx.bdat_started {
            return self.error(r(503, (5, 5, 1), "DATA not allowed after BDAT"));
        }
        if self.tx.recipients == 0 {
            return self.error(r(503, (5, 5, 2), "Need rcpt command"));
        }
        self.pending = Some(Pending::DataStart { bdat: false });
        Some(Event::DataStart)
    }

    fn bdat(&mut self, size: u64, last: bool) -> Option<Event> {
        // RFC 3030 §2: the chunk follows the command whatever the answer, so it is read
        // (and discarded) even when refused.
        let refuse = if !self.config.chunking {
            Some(r(502, (5, 5, 1), "BDAT is not supported"))
        } else if !self.tx.mail {
            Some(r(503, (5, 5, 1), "Need mail command"))
        } else if self.tx.recipients == 0 && !self.tx.bdat_started {
            Some(r(503, (5, 5, 2), "Need rcpt command"))
        } else {
            None
        };
        if let Some(reply) = refuse {
            self.tx.bdat_refused = Some(reply);
            self.tx.bdat_started = true;
            self.phase = Phase::Bdat {
                left: size,
                last,
                accept: false,
            };
            return self.bdat_step();
        }
        let first = !self.tx.bdat_started;
        let accept = self.tx.bdat_refused.is_none();
        self.phase = Phase::Bdat {
            left: size,
            last,
            accept,
        };
        if first {
            self.pending = Some(Pending::DataStart { bdat: true });
            return Some(Event::DataStart);
        }
        self.bdat_step()
    }

    fn bdat_step(&mut self) -> Option<Event> {
        let Phase::Bdat { left, last, accept } = &mut self.phase else {
            return None;
        };
        let take = (*left).min(self.input.len() as u64) as usize;
        let chunk: Vec<u8> = self.input.drain(..take).collect();
        *left -= take as u64;
        let (done, last, accept) = (*left == 0, *last, *accept);
        self.tx.bdat_size += take as u64;
        let too_big = self.tx.bdat_size > self.config.max_message_size;
        if accept && !chunk.is_empty() && !too_big {
            self.tx.bdat_newlines.feed(&chunk);
            return Some(Event::Data(chunk));
        }
        if !done {
            return None;
        }
        self.phase = Phase::Command;
        if let Some(reply) = self.tx.bdat_refused.clone() {
            self.send(reply.clone());
            if last {
                self.tx = Transaction::default();
            }
            return self.count_error_if_sequence(reply);
        }
        let bare = last && self.tx.bdat_newlines.finish();
        let nul = last && self.tx.bdat_newlines.has_nul();
        if too_big || bare || nul {
            let reply = if too_big {
                size_exceeded()
            } else if bare {
                bare_newline_reply()
            } else {
                nul_reply()
            };
            // Later chunks of this transaction are discarded with the same answer.
            self.tx.bdat_refused = Some(reply.clone());
            self.send(reply.clone());
            if last {
                self.tx = Transaction::default();
            }
            return Some(Event::DataRejected(reply));
        }
        if last {
            self.pending = Some(Pending::DataEnd);
            return Some(Event::DataEnd);
        }
        let n = self.tx.bdat_size;
        self.send(r(250, (2, 0, 0), &format!("{n} bytes received")));
        None
    }

    fn count_error_if_sequence(&mut self, reply: Reply) -> Option<Event> {
        if reply.code == 503 || reply.code == 502 {
            self.errors += 1;
            if self.errors >= self.config.max_errors {
                self.close_with(r(
                    421,
                    (4, 7, 0),
                    "Too many errors on this connection, closing transmission channel",
                ));
                return Some(Event::Close);
            }
        }
        Some(Event::DataRejected(reply))
    }

    fn starttls(&mut self) -> Option<Event> {
        if !self.config.starttls {
            return self.error(r(502, (5, 5, 1), "STARTTLS is not available"));
        }
        if self.tls {
            return self.error(r(503, (5, 5, 1), "TLS already active"));
        }
        self.send(r(220, (2, 0, 0), "SMTP server ready"));
        // Anything pipelined after STARTTLS was sent in clear text and must not be
        // executed inside TLS (the STARTTLS command-injection class of bugs).
        self.input.clear();
        self.tx = Transaction::default();
        Some(Event::StartTls)
    }

    fn auth(&mut self, mechanism: String, initial: Option<String>) -> Option<Event> {
        if self.config.auth_mechanisms.is_empty() {
            return self.error(r(502, (5, 5, 1), "AUTH is not available"));
        }
        if self.authenticated {
            return self.error(r(503, (5, 5, 1), "Already authenticated"));
        }
        if self.tx.mail {
            return self.error(r(
                503,
                (5, 5, 1),
                "AUTH not allowed during a mail transaction",
            ));
        }
        if self.config.auth_requires_tls && !self.tls {
            return self.error(r(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        if !self.config.auth_mechanisms.contains(&mechanism) {
            return self.error(r(504, (5, 7, 4), "Unrecognized authentication type"));
        }
        match (mechanism.as_str(), initial) {
            ("PLAIN", Some(initial)) => self.auth_plain(initial.as_bytes()),
            ("PLAIN", None) => {
                self.send(Reply::plain(334, ""));
                self.phase = Phase::AuthPlain;
                None
            }
            ("LOGIN", Some(user)) => self.auth_login_step(None, user.as_bytes()),
            ("LOGIN", None) => {
                self.send(Reply::plain(334, "VXNlcm5hbWU6"));
                self.phase = Phase::AuthLogin(None);
                None
            }
            (_, initial) => {
                // RFC 4954 §4: `=` is an empty initial response.
                let initial = match initial.as_deref() {
                    None => None,
                    Some("=") => Some(Vec::new()),
                    Some(text) => match decode_b64(text.as_bytes()) {
                        Some(bytes) => Some(bytes),
                        None => return self.error(r(501, (5, 5, 2), "Invalid base64 data")),
                    },
                };
                self.pending = Some(Pending::AuthStep(mechanism.clone()));
                Some(Event::AuthStart { mechanism, initial })
            }
        }
    }

    /// The client's line after a driver's challenge.
    fn auth_response(&mut self, mechanism: String, line: &[u8]) -> Option<Event> {
        if let Some(ev) = self.auth_cancelled(line) {
            return ev;
        }
        let response = if line == b"=" {
            Vec::new()
        } else {
            match decode_b64(line) {
                Some(bytes) => bytes,
                None => return self.error(r(501, (5, 5, 2), "Invalid base64 data")),
            }
        };
        self.pending = Some(Pending::AuthStep(mechanism.clone()));
        Some(Event::AuthResponse {
            mechanism,
            response,
        })
    }

    fn auth_cancelled(&mut self, line: &[u8]) -> Option<Option<Event>> {
        (line == b"*").then(|| self.error(r(501, (5, 0, 0), "Authentication cancelled")))
    }

    fn auth_plain(&mut self, line: &[u8]) -> Option<Event> {
        if let Some(ev) = self.auth_cancelled(line) {
            return ev;
        }
        let Some(decoded) = decode_b64(line) else {
            return self.error(r(501, (5, 5, 2), "Invalid base64 data"));
        };
        // RFC 4616: authzid NUL authcid NUL passwd
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        if parts.len() != 3 {
            return self.error(r(501, (5, 5, 2), "Invalid AUTH PLAIN response"));
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.pending = Some(Pending::Auth);
        Some(Event::Auth {
            mechanism: "PLAIN".into(),
            authzid: text(parts[0]),
            username: text(parts[1]),
            password: text(parts[2]),
        })
    }

    fn auth_login_step(&mut self, user: Option<String>, line: &[u8]) -> Option<Event> {
        if let Some(ev) = self.auth_cancelled(line) {
            return ev;
        }
        let Some(decoded) = decode_b64(line) else {
            return self.error(r(501, (5, 5, 2), "Invalid base64 data"));
        };
        let value = String::from_utf8_lossy(&decoded).into_owned();
        match user {
            None => {
                self.send(Reply::plain(334, "UGFzc3dvcmQ6"));
                self.phase = Phase::AuthLogin(Some(value));
                None
            }
            Some(username) => {
                self.pending = Some(Pending::Auth);
                Some(Event::Auth {
                    mechanism: "LOGIN".into(),
                    authzid: String::new(),
                    username,
                    password: value,
                })
            }
        }
    }
}

fn decode_b64(line: &[u8]) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(line.trim_ascii())
        .ok()
}

fn line_too_long() -> Reply {
    r(500, (5, 5, 2), "Line too long")
}

/// Reference §11.2: 5.3.4 for any size limit.
pub fn size_exceeded() -> Reply {
    r(
        552,
        (5, 3, 4),
        "Message size exceeds fixed maximum message size",
    )
}

/// A NUL byte in content (RFC 5321 §2.3.8 forbids it in text, and BINARYMIME is not
/// offered): stored, it would cut C strings short in whatever reads the message later.
pub fn nul_reply() -> Reply {
    r(
        550,
        (5, 6, 0),
        "NUL characters are not allowed in message content",
    )
}

/// `501 5.5.4 Invalid domain name`, Exchange's answer to a HELO/EHLO argument that is
/// neither a domain nor an address literal.
pub fn invalid_domain_reply() -> Reply {
    r(501, (5, 5, 4), "Invalid domain name")
}

/// RFC 5321 §4.1.1.1: `Domain / address-literal`. Labels are letters, digits and
/// hyphens; underscores and UTF-8 (RFC 6531) are tolerated, as real clients send
/// them (Windows machine names). An address literal is `[IPv4]` or `[IPv6:…]`.
pub fn is_hello_argument(s: &str) -> bool {
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Some(v6) = inner
            .strip_prefix("IPv6:")
            .or_else(|| inner.strip_prefix("ipv6:"))
        {
            return v6.parse::<std::net::Ipv6Addr>().is_ok();
        }
        return inner.parse::<std::net::Ipv4Addr>().is_ok();
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
                && !label.chars().any(char::is_control)
        })
}

/// Bare CR or LF in content: refused so no two hops can disagree about the message's
/// end or its lines (RFC 5321 §2.3.8, SMTP smuggling).
pub fn bare_newline_reply() -> Reply {
    r(
        550,
        (5, 6, 11),
        "Bare CR or LF characters are not allowed; lines must end with CRLF",
    )
}

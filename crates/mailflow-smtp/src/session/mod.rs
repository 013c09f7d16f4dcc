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
//!
//! This file holds the state, the driver's API and the command dispatch; `ehlo`,
//! `envelope` (MAIL, RCPT), `data` (DATA, BDAT) and `auth` answer their commands.
//! Sans-I/O: imports nothing but this crate's parser, content decoder and replies (no
//! sockets, no runtime, nothing of mailflow).

use base64::Engine;

use crate::command::{Address, Command, MailParams, RcptParams, parse_command};
use crate::data::{BareNewlineCheck, DataDecoder, Decoded};
use crate::reply::{Enhanced, Reply};

mod auth;
mod data;
mod ehlo;
mod envelope;

pub use data::{bare_newline_reply, nul_reply, size_exceeded};
pub use ehlo::{invalid_domain_reply, is_hello_argument};

/// Limits and capabilities of one receive connector.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// FQDN announced in the greeting and EHLO.
    pub hostname: String,
    /// Text after `220 ` in the greeting, built by the driver for each connection (it
    /// owns the clock): Exchange's shape is `<fqdn> … ESMTP MAIL Service ready at
    /// <RFC 5322 date>`.
    pub banner: String,
    /// The client's IP address as text, which EHLO's and HELO's first line echo in
    /// brackets as Exchange does (`250-<fqdn> Hello [192.0.2.1]`); set by the driver.
    /// Empty: the client's HELO name is echoed instead.
    pub client_ip: String,
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
            client_ip: String::new(),
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
}

fn line_too_long() -> Reply {
    r(500, (5, 5, 2), "Line too long")
}

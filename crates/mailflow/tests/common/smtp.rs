//! [`Smtp`]: a minimal line-oriented SMTP client for protocol tests, and the test
//! message and its parts ([`message`], [`body_of`], [`header_values`]). Imports no
//! server helper: it talks to a port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// A minimal line-oriented SMTP client for protocol tests, over plain TCP or (after
/// [`Smtp::starttls`]) rustls. Every reply in the tests is read by [`Smtp::read_reply`].
pub struct Smtp<S: Read + Write = TcpStream> {
    /// Reads go through the buffer; writes go to the stream beneath it.
    reader: BufReader<S>,
}

/// The stream of an SMTP session after STARTTLS.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl Smtp<TcpStream> {
    pub fn connect(port: u16) -> Smtp {
        Smtp::try_connect(port).unwrap_or_else(|greeting| panic!("greeting: {greeting}"))
    }

    /// Connects and reads the greeting; `Err` holds a greeting that is not `220`
    /// (e.g. `421 4.3.2` from a connector at its connection limit).
    pub fn try_connect(port: u16) -> Result<Smtp, String> {
        Smtp::try_connect_to("127.0.0.1", port)
    }

    /// Like [`Smtp::connect`], to another loopback address (e.g. `127.0.0.2`).
    pub fn connect_to(ip: &str, port: u16) -> Smtp {
        Smtp::try_connect_to(ip, port).unwrap_or_else(|greeting| panic!("greeting: {greeting}"))
    }

    fn try_connect_to(ip: &str, port: u16) -> Result<Smtp, String> {
        let stream = TcpStream::connect((ip, port))
            .unwrap_or_else(|e| panic!("connect to {ip}:{port}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut s = Smtp {
            reader: BufReader::new(stream),
        };
        let greeting = s.read_reply();
        if greeting.starts_with("220 ") {
            Ok(s)
        } else {
            Err(greeting)
        }
    }

    /// Connects from `source` (a loopback address such as 127.0.0.2, for limits per
    /// source) and reads the first reply whatever its code: the session and that reply.
    pub fn connect_from(source: &str, port: u16) -> (Smtp, String) {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let local: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
        socket.bind(&local.into()).unwrap();
        let remote: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        socket.connect(&remote.into()).unwrap();
        let stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut s = Smtp {
            reader: BufReader::new(stream),
        };
        let first = s.read_reply();
        (s, first)
    }

    /// Sends STARTTLS (after EHLO), expects 220 and completes a TLS handshake with
    /// `config`, naming `server_name`; the session continues inside TLS.
    pub fn starttls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Smtp<TlsStream> {
        let r = self.cmd("STARTTLS");
        assert!(r.starts_with("220 "), "STARTTLS: {r}");
        assert!(
            self.reader.buffer().is_empty(),
            "the server sent more after 220 to STARTTLS"
        );
        let mut tcp = self.reader.into_inner();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(config, name).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).unwrap();
        }
        Smtp {
            reader: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
        }
    }

    /// True if the server closes the session within 5 s.
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        self.stream()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}

impl<S: Read + Write> Smtp<S> {
    /// The stream beneath (the socket, or the TLS session).
    pub fn stream(&self) -> &S {
        self.reader.get_ref()
    }

    /// Reads one reply (all lines), returns it with CRLFs; what came before the
    /// connection closed (or the read timed out) if it ends early.
    pub fn read_reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).unwrap();
        stream.flush().unwrap();
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// One message; returns the final reply. `body` must use CRLF.
    pub fn send(&mut self, from: &str, to: &[&str], content: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250"), "MAIL: {r}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            assert!(r.starts_with("250"), "RCPT {t}: {r}");
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "DATA: {r}");
        let stuffed = content.replace("\r\n.", "\r\n..");
        self.send_raw(stuffed.as_bytes());
        self.send_raw(b"\r\n.\r\n");
        self.read_reply()
    }
}

impl Smtp<TlsStream> {
    /// Keying material exported from this TLS session (RFC 5705 / RFC 8446 §7.5).
    pub fn export(&self, label: &[u8]) -> [u8; 32] {
        self.stream()
            .conn
            .export_keying_material([0u8; 32], label, None)
            .unwrap()
    }
}

pub fn message(subject: &str, body: &str) -> String {
    format!(
        "From: Sender <sender@fabrikam.test>\r\nTo: someone@contoso.test\r\nSubject: {subject}\r\nMessage-ID: <{}@fabrikam.test>\r\n\r\n{body}",
        subject.replace(' ', "-")
    )
}

/// The part of a message after its header block.
pub fn body_of(eml: &[u8]) -> &[u8] {
    let pos = eml
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header/body separator");
    &eml[pos + 4..]
}

pub fn header_values(eml: &[u8], name: &str) -> Vec<String> {
    let head =
        String::from_utf8_lossy(&eml[..eml.windows(4).position(|w| w == b"\r\n\r\n").unwrap()])
            .replace("\r\n ", " ");
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// Sends one message through a Front End and expects 250.
pub fn send_via(port: u16, to: &[&str], subject: &str) {
    let mut c = Smtp::connect(port);
    c.cmd("EHLO client.fabrikam.test");
    let r = c.send(
        "sender@fabrikam.test",
        to,
        &message(subject, "multi-server\r\n"),
    );
    assert!(r.starts_with("250"), "{subject}: {r}");
    c.cmd("QUIT");
}

//! [`Smtp`]: a minimal line-oriented SMTP client for protocol tests, and the test
//! message and its parts ([`message`], [`body_of`], [`header_values`]). Imports no
//! server helper: it talks to a port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A minimal line-oriented SMTP client for protocol tests.
pub struct Smtp {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Smtp {
    pub fn connect(port: u16) -> Smtp {
        Smtp::try_connect(port).unwrap_or_else(|greeting| panic!("greeting: {greeting}"))
    }

    /// Connects and reads the greeting; `Err` holds a greeting that is not `220`
    /// (e.g. `421 4.3.2` from a connector at its connection limit).
    pub fn try_connect(port: u16) -> Result<Smtp, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut s = Smtp { reader, stream };
        let greeting = s.read_reply();
        if greeting.starts_with("220 ") {
            Ok(s)
        } else {
            Err(greeting)
        }
    }

    /// Reads one reply (all lines), returns it with CRLFs.
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
        self.stream.write_all(bytes).unwrap();
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

    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        matches!(self.reader.read(&mut buf), Ok(0))
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

//! SMTP replies as values: a reply code, an enhanced status code (RFC 3463) and text.
//!
//! The services' replies are built from these parts once per cause in
//! [`crate::replies`], so the code, the enhanced code and the wording never drift apart
//! between listeners.

use std::fmt;

/// An RFC 3463 enhanced status code such as `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply: `code`, an optional enhanced code, and one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced code (greeting, EHLO, 354 — RFC 2034 §3 exempts them).
    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    pub fn multiline(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply as one line of text without CRLF, for logs: `550 5.1.1 text`.
    pub fn one_line(&self) -> String {
        let text = self.lines.join(" ");
        match self.enhanced {
            Some(e) => format!("{} {} {}", self.code, e, text),
            None => format!("{} {}", self.code, text),
        }
    }

    /// Wire form, CRLF-terminated, with `-` continuation lines (RFC 5321 §4.2.1).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
            return;
        }
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let line = match self.enhanced {
                Some(e) => format!("{}{}{} {}\r\n", self.code, sep, e, line),
                None => format!("{}{}{}\r\n", self.code, sep, line),
            };
            out.extend_from_slice(line.as_bytes());
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// The text after the code (and enhanced code) of all lines, joined by spaces.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Limits on one reply: EHLO answers have a few dozen lines.
const MAX_REPLY_LINES: usize = 512;
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Parses one complete reply (possibly multi-line) from the start of `buf`, as an SMTP
/// client reads it. Returns the reply and the number of bytes consumed, `Ok(None)` when
/// more bytes are needed.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyParseError> {
    let mut pos = 0;
    let mut code = None;
    let mut enhanced = None;
    let mut lines = Vec::new();
    loop {
        // A peer may not make us hold an endless multi-line reply.
        if lines.len() >= MAX_REPLY_LINES || pos > MAX_REPLY_BYTES {
            return Err(ReplyParseError::LineTooLong);
        }
        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
            if buf.len() - pos > 4096 {
                return Err(ReplyParseError::LineTooLong);
            }
            return Ok(None);
        };
        let raw = &buf[pos..pos + nl];
        pos += nl + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.len() < 3 || !raw[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyParseError::Malformed(
                String::from_utf8_lossy(raw).into_owned(),
            ));
        }
        let this_code: u16 = std::str::from_utf8(&raw[..3])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ReplyParseError::Malformed(String::from_utf8_lossy(raw).into_owned()))?;
        if *code.get_or_insert(this_code) != this_code {
            return Err(ReplyParseError::Malformed(
                String::from_utf8_lossy(raw).into_owned(),
            ));
        }
        let more = raw.get(3) == Some(&b'-');
        let mut text = String::from_utf8_lossy(raw.get(4..).unwrap_or(b"")).into_owned();
        if let Some((e, rest)) = split_enhanced(&text, this_code) {
            if enhanced.is_none() {
                enhanced = Some(e);
            }
            text = rest;
        }
        lines.push(text);
        if !more {
            let code = code.unwrap_or(this_code);
            return Ok(Some((
                Reply {
                    code,
                    enhanced,
                    lines,
                },
                pos,
            )));
        }
    }
}

/// Splits a leading enhanced status code off reply text when its class matches the
/// reply code's first digit (RFC 2034 §4).
fn split_enhanced(text: &str, code: u16) -> Option<(Enhanced, String)> {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = first.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || u16::from(class) != code / 100 {
        return None;
    }
    Some((Enhanced(class, subject, detail), rest.to_string()))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyParseError {
    #[error("malformed SMTP reply line: {0:?}")]
    Malformed(String),
    #[error("SMTP reply line too long")]
    LineTooLong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_multiline_with_enhanced_codes() {
        let r = Reply {
            code: 250,
            enhanced: Some(Enhanced(2, 0, 0)),
            lines: vec!["one".into(), "two".into()],
        };
        assert_eq!(r.to_bytes(), b"250-2.0.0 one\r\n250 2.0.0 two\r\n");
    }

    #[test]
    fn parses_multiline_and_enhanced() {
        let buf = b"250-mx.example Hello\r\n250-SIZE 100\r\n250 CHUNKING\r\nextra";
        let (r, used) = parse_reply(buf).unwrap().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.lines, vec!["mx.example Hello", "SIZE 100", "CHUNKING"]);
        assert_eq!(&buf[used..], b"extra");
        let (r, _) = parse_reply(b"550 5.1.1 User unknown\r\n").unwrap().unwrap();
        assert_eq!(r.enhanced, Some(Enhanced(5, 1, 1)));
        assert_eq!(r.text(), "User unknown");
        assert!(parse_reply(b"250-partial\r\n250 ").unwrap().is_none());
        assert!(parse_reply(b"hello\r\n").is_err());
    }
}

//! 8BITMIME → 7-bit downgrade (RFC 6152 §3): a message received with `BODY=8BITMIME`
//! may go on only to a server that offers 8BITMIME; for any other, SMTP Send converts
//! it to 7-bit MIME first, as RFC 6152 asks of a relay ("convert the message to 7-bit
//! MIME", RFC 1652 §3 before it).
//!
//! What changes, and why only that:
//! - Every entity (the message, each MIME part, each attached message) that is already
//!   7-bit is copied byte for byte: a relay changes no more than it must.
//! - A leaf part with 8-bit bytes and an identity encoding (`7bit`, `8bit`, `binary`,
//!   none) is re-encoded: `text/*` as quoted-printable (the text stays readable), any
//!   other type as base64 (RFC 2045 §6.2). Its `Content-Transfer-Encoding` is replaced.
//!   Without a `Content-Type` such a part is text/plain in a charset RFC 2045 would take
//!   for US-ASCII, which it is not: a `Content-Type: text/plain; charset=…` is added,
//!   `utf-8` when the bytes are valid UTF-8, otherwise `unknown-8bit` (RFC 1428 §3).
//!   A message without MIME headers gets `MIME-Version: 1.0` the same way.
//! - `multipart/*` is walked part by part (RFC 2046 §5.1.1 delimiters); a
//!   `message/rfc822` part is converted inside, and its `8bit`/`binary` encoding becomes
//!   `7bit` (RFC 2045 §6.4: a message part may not be base64 or quoted-printable).
//!   `message/global` (RFC 6532 §3.5) and other types are leaves, hence base64.
//! - Header fields with raw 8-bit bytes are rewritten in RFC 2047 encoded-words
//!   (unstructured fields, display names) or RFC 2231 parameters (`Content-Type`,
//!   `Content-Disposition`); see [`headers`] for what stays as it was.
//! - 8-bit bytes where MIME gives them no meaning (a multipart preamble or epilogue,
//!   a line that is not a header field) become `?`; in a part already declared
//!   quoted-printable they become `=XX`, in one declared base64 they are dropped (a
//!   decoder skips them anyway), so the decoded content is what it was.
//!
//! The boundaries are found here on the raw bytes rather than taken from mail-parser's
//! part offsets because the walk must reproduce every byte between parts exactly;
//! mail-parser reads each entity's header block (Content-Type with quoting, comments
//! and RFC 2231, Content-Transfer-Encoding).
//!
//! A DKIM signature over an 8-bit body no longer verifies after this; RFC 6376 §5.3
//! tells signers to sign a 7-bit form for that reason, and nothing else can be done.

mod headers;

use base64::Engine;
use mail_parser::{MessageParser, MimeHeaders};

/// Deeper nesting (only hostile input has it) is treated as one leaf.
const MAX_DEPTH: usize = 32;

/// Whether a message needs converting for a peer without 8BITMIME.
pub fn is_8bit(content: &[u8]) -> bool {
    !content.is_ascii()
}

/// The message converted to 7-bit MIME. `encode_headers` is false when the message
/// goes with SMTPUTF8, whose UTF-8 header fields (RFC 6532) stay as they are.
pub fn to_7bit(content: &[u8], encode_headers: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 3 + 256);
    Walk { encode_headers }.entity(&mut out, content, Kind::Message, 0);
    out
}

/// What an entity is, for the defaults RFC 2045/2046 give it.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// The message itself, or one attached as message/rfc822.
    Message,
    /// A part of a multipart: default text/plain.
    Part,
    /// A part of multipart/digest: default message/rfc822 (RFC 2046 §5.1.5).
    DigestPart,
}

struct Walk {
    encode_headers: bool,
}

/// The facts of one entity's header block that the walk needs.
struct Entity {
    /// Lower-cased type and subtype; the default for the kind when absent.
    ctype: String,
    subtype: String,
    has_content_type: bool,
    has_mime_version: bool,
    boundary: Option<String>,
    /// Lower-cased Content-Transfer-Encoding; None when absent.
    cte: Option<String>,
}

impl Entity {
    fn read(head: &[u8], kind: Kind) -> Entity {
        let parsed = MessageParser::new().parse_headers(head);
        let ct = parsed.as_ref().and_then(|m| m.content_type());
        let (ctype, subtype) = match (ct, kind) {
            (Some(ct), _) => (
                ct.ctype().to_ascii_lowercase(),
                ct.subtype().unwrap_or_default().to_ascii_lowercase(),
            ),
            (None, Kind::DigestPart) => ("message".into(), "rfc822".into()),
            (None, _) => ("text".into(), "plain".into()),
        };
        Entity {
            ctype,
            subtype,
            has_content_type: ct.is_some(),
            has_mime_version: headers::split_fields(head)
                .0
                .iter()
                .any(|f| headers::is_named(f, "mime-version")),
            boundary: ct
                .and_then(|c| c.attribute("boundary"))
                .filter(|b| !b.is_empty())
                .map(str::to_string),
            cte: parsed
                .as_ref()
                .and_then(|m| m.content_transfer_encoding())
                .map(|c| c.trim().to_ascii_lowercase()),
        }
    }

    /// 7bit, 8bit, binary or none: the body is as it is on the wire.
    fn identity(&self) -> bool {
        matches!(self.cte.as_deref(), None | Some("7bit" | "8bit" | "binary"))
    }
}

impl Walk {
    /// Converts one entity (header block and body) into `out`.
    fn entity(&self, out: &mut Vec<u8>, raw: &[u8], kind: Kind, depth: usize) {
        if raw.is_ascii() {
            out.extend_from_slice(raw);
            return;
        }
        let (head, body) = raw.split_at(crate::message::header_len(raw));
        let e = Entity::read(head, kind);
        let nested = depth < MAX_DEPTH && e.identity();
        if nested
            && e.ctype == "multipart"
            && let Some(boundary) = &e.boundary
        {
            self.head(out, head, false, &[]);
            self.multipart(out, body, boundary, e.subtype == "digest", depth + 1);
            return;
        }
        if nested && e.ctype == "message" && e.subtype == "rfc822" {
            // What is inside is 7-bit once converted (RFC 2045 §6.4).
            let relabel = matches!(e.cte.as_deref(), Some("8bit" | "binary"));
            let add = if relabel {
                vec!["Content-Transfer-Encoding: 7bit".to_string()]
            } else {
                Vec::new()
            };
            self.head(out, head, relabel, &add);
            self.entity(out, body, Kind::Message, depth + 1);
            return;
        }
        if body.is_ascii() {
            self.head(out, head, false, &[]);
            out.extend_from_slice(body);
            return;
        }
        match e.cte.as_deref() {
            Some("quoted-printable") => {
                self.head(out, head, false, &[]);
                for &b in body {
                    if b.is_ascii() {
                        out.push(b);
                    } else {
                        out.extend_from_slice(format!("={b:02X}").as_bytes());
                    }
                }
            }
            Some("base64") => {
                self.head(out, head, false, &[]);
                out.extend(body.iter().filter(|b| b.is_ascii()));
            }
            _ if e.identity() => self.encode_leaf(out, head, body, &e, kind),
            // An encoding we do not know (x-uuencode…): its 8-bit bytes mean nothing
            // we could keep.
            _ => {
                self.head(out, head, false, &[]);
                sanitize(out, body);
            }
        }
    }

    /// A leaf with 8-bit bytes: quoted-printable for text, base64 for the rest.
    fn encode_leaf(&self, out: &mut Vec<u8>, head: &[u8], body: &[u8], e: &Entity, kind: Kind) {
        let text = e.ctype == "text";
        let mut add = Vec::new();
        if kind == Kind::Message && !e.has_mime_version {
            add.push("MIME-Version: 1.0".to_string());
        }
        if !e.has_content_type && text {
            let charset = if std::str::from_utf8(body).is_ok() {
                "utf-8"
            } else {
                "unknown-8bit"
            };
            add.push(format!("Content-Type: text/plain; charset={charset}"));
        }
        add.push(format!(
            "Content-Transfer-Encoding: {}",
            if text { "quoted-printable" } else { "base64" }
        ));
        self.head(out, head, true, &add);
        if text {
            // Text mode keeps CRLF as line breaks and encodes trailing white space.
            out.extend_from_slice(&quoted_printable::encode(body));
        } else {
            let encoded = base64::engine::general_purpose::STANDARD.encode(body);
            for (i, line) in encoded.as_bytes().chunks(76).enumerate() {
                if i > 0 {
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(line);
            }
            // The last line needs its CRLF where the original body ended with one
            // (the end of the message); in a multipart the delimiter brings it.
            if body.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Writes a header block: fields with 8-bit bytes encoded, Content-Transfer-Encoding
    /// dropped if `drop_cte`, `add` appended before the blank line.
    fn head(&self, out: &mut Vec<u8>, head: &[u8], drop_cte: bool, add: &[String]) {
        let (fields, tail) = headers::split_fields(head);
        // A last field cut off without its CRLF (a part that ends in its header).
        let unterminated = fields.last().is_some_and(|f| !f.ends_with(b"\r\n"));
        for field in fields {
            if drop_cte && headers::is_named(field, "content-transfer-encoding") {
                continue;
            }
            if field.is_ascii() {
                out.extend_from_slice(field);
            } else if self.encode_headers {
                out.extend_from_slice(&headers::encode_field(field));
            } else {
                out.extend_from_slice(field);
            }
        }
        if !add.is_empty() && unterminated {
            out.extend_from_slice(b"\r\n");
        }
        for line in add {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(tail);
    }

    /// Walks a multipart body: preamble, each part, epilogue (RFC 2046 §5.1.1).
    fn multipart(
        &self,
        out: &mut Vec<u8>,
        body: &[u8],
        boundary: &str,
        digest: bool,
        depth: usize,
    ) {
        let delimiters = delimiters(body, boundary.as_bytes());
        let Some(first) = delimiters.first() else {
            // No delimiter at all: nothing a reader would show as a part.
            sanitize(out, body);
            return;
        };
        // `delimiters` returns ordered, non-overlapping ranges within `body`; `get`
        // keeps a mistake there from ever becoming a panic on a hostile message.
        let slice = |from: usize, to: usize| body.get(from..to).unwrap_or_default();
        sanitize(out, slice(0, first.start));
        let kind = if digest { Kind::DigestPart } else { Kind::Part };
        for (i, d) in delimiters.iter().enumerate() {
            out.extend_from_slice(slice(d.start, d.line_end));
            if d.close {
                sanitize(out, slice(d.line_end, body.len()));
                return;
            }
            let end = delimiters.get(i + 1).map_or(body.len(), |n| n.start);
            self.entity(out, slice(d.line_end, end), kind, depth);
        }
    }
}

/// One delimiter line: from the CRLF before `--boundary` (which belongs to it) to
/// after its own CRLF.
struct Delimiter {
    start: usize,
    line_end: usize,
    close: bool,
}

/// The delimiter lines of a multipart body, up to and including the close delimiter.
/// They come in order and never overlap: `start <= line_end`, and each starts at or
/// after the end of the one before.
fn delimiters(body: &[u8], boundary: &[u8]) -> Vec<Delimiter> {
    let mut found: Vec<Delimiter> = Vec::new();
    let mut line = 0;
    while line < body.len() {
        let next_line = body[line..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(body.len(), |p| line + p + 2);
        let text = &body[line..next_line];
        if let Some(rest) = text
            .strip_prefix(b"--")
            .and_then(|r| r.strip_prefix(boundary))
        {
            let (close, rest) = match rest.strip_prefix(b"--") {
                Some(r) => (true, r),
                None => (false, rest),
            };
            // Only transport padding may follow the boundary on its line.
            let padding_only = rest
                .iter()
                .all(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
            if padding_only {
                // The CRLF before the line belongs to this delimiter, unless the line
                // before was a delimiter too and its CRLF is already taken (an empty
                // part: `--b\r\n--b\r\n`).
                let taken = found.last().map_or(0, |d| d.line_end);
                found.push(Delimiter {
                    start: line.saturating_sub(2).max(taken),
                    line_end: next_line,
                    close,
                });
                if close {
                    break;
                }
            }
        }
        line = next_line;
    }
    found
}

/// Copies bytes that carry no MIME meaning, with 8-bit bytes as `?`.
fn sanitize(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend(bytes.iter().map(|&b| if b.is_ascii() { b } else { b'?' }));
}

#[cfg(test)]
mod tests;

//! Reading and editing the header block of a message as raw bytes. Services need a few
//! header facts (Message-Id, Subject, hop count) and small edits (prepend, strip) on the
//! exact bytes they pass on, so this works on the wire form rather than a parsed tree;
//! decoding (RFC 2047 subjects) is left to mail-parser. Also the organisation headers
//! and the 7-bit downgrade (downgrade/). Imports no other module of the crate.

pub mod downgrade;

use std::sync::LazyLock;

use mail_parser::{HeaderName, MessageParser};

/// Headers only organisation servers may set; stripped from anything that entered the
/// organisation elsewhere (the header firewall, reference §1.5).
pub const ORG_HEADER_PREFIX: &str = "X-MS-Exchange-Organization-";
pub const NETWORK_MESSAGE_ID_HEADER: &str = "X-MS-Exchange-Organization-Network-Message-Id";

/// What Transport knows of a message and tells the next organisation service with it,
/// so every service's tracking rows agree (MSGTRKMD's `directionality`,
/// `message-info` and `internal-message-id`, reference §7.3). Exchange's own header
/// names where it has one; the values are the tracking log's own (an ISO time for
/// the arrival). Stamped by SMTP Send inside the organisation, replaced at each hop,
/// and stripped like every organisation header when mail leaves.
pub const DIRECTIONALITY_HEADER: &str = "X-MS-Exchange-Organization-MessageDirectionality";
/// See [`DIRECTIONALITY_HEADER`]: when the organisation first received the message.
pub const ORIGINAL_ARRIVAL_HEADER: &str = "X-MS-Exchange-Organization-OriginalArrivalTime";
/// See [`DIRECTIONALITY_HEADER`]: the sending Transport's internal message id.
pub const INTERNAL_MESSAGE_ID_HEADER: &str = "X-MS-Exchange-Organization-InternalMessageId";

/// `content` with the [`DIRECTIONALITY_HEADER`] family set to these values (any
/// earlier hop's removed first).
pub fn with_transport_facts(
    content: &[u8],
    internal_id: i64,
    original_arrival: &str,
    directionality: &str,
) -> Vec<u8> {
    let names = [
        DIRECTIONALITY_HEADER,
        ORIGINAL_ARRIVAL_HEADER,
        INTERNAL_MESSAGE_ID_HEADER,
    ];
    let stripped = strip_fields(content, |n| names.iter().any(|h| h.eq_ignore_ascii_case(n)));
    let rest = stripped.as_deref().unwrap_or(content);
    // Values are single tokens or timestamps the server wrote: no CR/LF can enter.
    let clean = |v: &str| v.replace(['\r', '\n'], " ");
    let mut out = format!(
        "{DIRECTIONALITY_HEADER}: {}\r\n{ORIGINAL_ARRIVAL_HEADER}: {}\r\n{INTERNAL_MESSAGE_ID_HEADER}: {internal_id}\r\n",
        clean(directionality),
        clean(original_arrival)
    )
    .into_bytes();
    out.extend_from_slice(rest);
    out
}

/// `X-MS-Exchange-Organization-AuthAs`: how the organisation first received the
/// message, stamped by the Transport service that took it in and carried between
/// organisation servers (the header firewall strips it from anything entering from
/// outside, so a client cannot claim it). Mail flow rules (`from_scope`) and groups
/// that require authenticated senders judge "inside the organisation" by it, never by
/// the sender's address (DESIGN §7).
pub const AUTH_AS_HEADER: &str = "X-MS-Exchange-Organization-AuthAs";

/// The values of [`AUTH_AS_HEADER`] mailflow writes (Exchange also knows `Partner` and
/// `External`, which mailflow does not grant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthAs {
    /// A mailbox user, an organisation server's own mail, or an administrator (Pickup,
    /// Replay, reports).
    Internal,
    /// Anything else: the internet on `Default Frontend`, anonymous relay connectors.
    Anonymous,
}

impl AuthAs {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthAs::Internal => "Internal",
            AuthAs::Anonymous => "Anonymous",
        }
    }

    /// The value stamped in `content`; a message without one (or with anything else)
    /// is Anonymous, so a missing stamp never grants trust.
    pub fn of(content: &[u8]) -> AuthAs {
        match get(content, AUTH_AS_HEADER) {
            Some(v) if v.eq_ignore_ascii_case("Internal") => AuthAs::Internal,
            _ => AuthAs::Anonymous,
        }
    }

    /// The header line to put in front of a message.
    pub fn header_line(self) -> String {
        format!("{AUTH_AS_HEADER}: {}\r\n", self.as_str())
    }

    /// `content` without any stamp, before a service that decides afresh adds its own.
    pub fn unstamped(content: Vec<u8>) -> Vec<u8> {
        strip_fields(&content, |n| n.eq_ignore_ascii_case(AUTH_AS_HEADER)).unwrap_or(content)
    }
}

/// The addresses of every `From:` and `Sender:` field, one list per field (a field
/// whose addresses cannot be read gives an empty list): what a reader sees as the
/// author, which Send As must cover (DESIGN §7).
pub fn author_fields(content: &[u8]) -> Vec<Vec<String>> {
    static PARSER: LazyLock<MessageParser> = LazyLock::new(|| {
        MessageParser::new()
            .header_address(HeaderName::Sender)
            .header_address(HeaderName::From)
    });
    fields(content)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("From") || n.eq_ignore_ascii_case("Sender"))
        .map(|(name, raw)| {
            // Each field parsed alone, so a second From: cannot hide behind the first.
            let mut one = raw.to_vec();
            one.extend_from_slice(b"\r\n");
            PARSER
                .parse_headers(&one[..])
                .map(|m| {
                    let list = if name.eq_ignore_ascii_case("From") {
                        m.from()
                    } else {
                        m.sender()
                    };
                    list.map(|l| {
                        l.iter()
                            .filter_map(|a| a.address())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Length of the header block including the blank line, or the whole content when the
/// message has no body separator.
pub fn header_len(content: &[u8]) -> usize {
    if content.starts_with(b"\r\n") {
        return 2;
    }
    static BLANK_LINE: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    BLANK_LINE
        .find(content)
        .map(|p| p + 4)
        .unwrap_or(content.len())
}

/// Each header field as (name, raw bytes of the whole field including folded lines and
/// the final CRLF).
pub fn fields(content: &[u8]) -> Vec<(&str, &[u8])> {
    let head = &content[..header_len(content)];
    let mut out: Vec<(&str, &[u8])> = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < head.len() {
        let end = line_end(head, pos);
        let line = &head[pos..end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation && pos != start {
            push_field(&mut out, &head[start..pos]);
            start = pos;
        }
        if line == b"\r\n" {
            start = end;
        }
        pos = end;
    }
    if start < head.len() {
        push_field(&mut out, &head[start..]);
    }
    out
}

/// Where the line starting at `pos` ends: past its CRLF, or at the end of `head`. A
/// bare LF is part of the line.
fn line_end(head: &[u8], pos: usize) -> usize {
    let mut from = pos;
    while let Some(i) = memchr::memchr(b'\n', &head[from..]) {
        let lf = from + i;
        if lf > pos && head[lf - 1] == b'\r' {
            return lf + 1;
        }
        from = lf + 1;
    }
    head.len()
}

fn push_field<'a>(out: &mut Vec<(&'a str, &'a [u8])>, raw: &'a [u8]) {
    let name = raw
        .iter()
        .position(|&b| b == b':')
        .and_then(|i| std::str::from_utf8(&raw[..i]).ok());
    if let Some(name) = name {
        out.push((name.trim(), raw));
    }
}

/// The unfolded value of the first field called `name`.
pub fn get(content: &[u8], name: &str) -> Option<String> {
    let [value] = get_each(content, [name]);
    value
}

/// The first value of each of `names`, the header read once (a hot path reads
/// several fields of every message).
pub fn get_each<const N: usize>(content: &[u8], names: [&str; N]) -> [Option<String>; N] {
    let fields = fields(content);
    names.map(|name| {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, raw)| {
                let colon = raw.iter().position(|&b| b == b':').unwrap_or(0);
                String::from_utf8_lossy(&raw[colon + 1..])
                    .replace("\r\n", "")
                    .trim()
                    .to_string()
            })
    })
}

/// How many fields are called `name` (hop counting uses `Received`).
pub fn count(content: &[u8], name: &str) -> usize {
    fields(content)
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .count()
}

/// The content without the header fields whose names start with `prefix`
/// (case-insensitive), e.g. the header firewall's `X-MS-Exchange-Organization-`.
pub fn strip_prefixed(content: &[u8], prefix: &str) -> Option<Vec<u8>> {
    // On bytes: a name from outside may have a UTF-8 character where the prefix ends,
    // and slicing the `str` there would panic.
    strip_fields(content, |n| {
        n.as_bytes()
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
    })
}

/// The content without the header fields `matches` selects by name.
pub fn strip_fields(content: &[u8], matches: impl Fn(&str) -> bool) -> Option<Vec<u8>> {
    let fields = fields(content);
    if !fields.iter().any(|(n, _)| matches(n)) {
        return None;
    }
    let mut out = Vec::with_capacity(content.len());
    for (n, raw) in &fields {
        if !matches(n) {
            out.extend_from_slice(raw);
        }
    }
    let head = header_len(content);
    if head >= 2 && content[..head].ends_with(b"\r\n\r\n") || head == 2 {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&content[head..]);
    Some(out)
}

/// Addresses of the To, Cc and Bcc fields (the envelope of a message submitted from a
/// mailbox or the Pickup directory).
pub fn header_recipients(content: &[u8]) -> Vec<String> {
    static PARSER: LazyLock<MessageParser> = LazyLock::new(|| {
        MessageParser::new()
            .header_address(HeaderName::To)
            .header_address(HeaderName::Cc)
            .header_address(HeaderName::Bcc)
    });
    let head = &content[..header_len(content)];
    let Some(m) = PARSER.parse_headers(head) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for list in [m.to(), m.cc(), m.bcc()].into_iter().flatten() {
        for a in list.iter() {
            if let Some(addr) = a.address()
                && !out.iter().any(|o| o.eq_ignore_ascii_case(addr))
            {
                out.push(addr.to_string());
            }
        }
    }
    out
}

/// The decoded Subject (RFC 2047) for tracking logs and the store.
pub fn subject(content: &[u8]) -> String {
    subject_and_sender(content).0
}

/// The address of `Sender:` or else `From:` (tracking's sender-address, reference §7.3).
pub fn sender_address(content: &[u8]) -> String {
    subject_and_sender(content).1
}

/// The decoded Subject and the address of `Sender:` or else `From:`, for the tracking
/// log and the envelope of every message at every hop. The header is split once into
/// fields; only those three go through the MIME parser (decoding every header field,
/// Received lines included, was most of a message's cost here).
pub fn subject_and_sender(content: &[u8]) -> (String, String) {
    static PARSER: LazyLock<MessageParser> = LazyLock::new(|| {
        MessageParser::new()
            .header_text(HeaderName::Subject)
            .header_address(HeaderName::Sender)
            .header_address(HeaderName::From)
    });
    let mut wanted = Vec::new();
    for (name, raw) in fields(content) {
        if ["Subject", "Sender", "From"]
            .iter()
            .any(|w| w.eq_ignore_ascii_case(name))
        {
            wanted.extend_from_slice(raw);
        }
    }
    if wanted.is_empty() {
        return (String::new(), String::new());
    }
    wanted.extend_from_slice(b"\r\n");
    let Some(m) = PARSER.parse_headers(&wanted) else {
        return (String::new(), String::new());
    };
    let first = |a: Option<&mail_parser::Address>| {
        a.and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_string)
    };
    let subject = m.subject().map(str::to_string).unwrap_or_default();
    let sender = first(m.sender())
        .or_else(|| first(m.from()))
        .unwrap_or_default();
    (subject, sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Received: from a\r\n by b; date\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nX-MS-Exchange-Organization-Network-Message-Id: forged\r\nFrom: Alice <alice@x.test>\r\n\r\nbody\r\nX-Not-A-Header: no\r\n";

    #[test]
    fn a_line_ends_at_crlf_only() {
        let head = b"A: 1\nstill A\r\nB: 2\r\n\r\n";
        assert_eq!(line_end(head, 0), 14);
        assert_eq!(line_end(head, 14), 20);
        assert_eq!(line_end(b"\r\n", 0), 2);
        assert_eq!(line_end(b"no end", 0), 6);
        assert_eq!(line_end(b"x\n\r\n", 1), 4);
        let names: Vec<&str> = fields(head).iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["A", "B"]);
    }

    /// Parsing only Subject, Sender and From gives what parsing the whole header gave:
    /// folded and encoded values, repeated fields, a header without them.
    #[test]
    fn subject_and_sender_agree_with_a_whole_header_parse() {
        let whole = |c: &[u8]| {
            let m = MessageParser::new()
                .header_text(HeaderName::Subject)
                .header_address(HeaderName::Sender)
                .header_address(HeaderName::From)
                .parse_headers(&c[..header_len(c)])
                .unwrap();
            let first = |a: Option<&mail_parser::Address>| {
                a.and_then(|a| a.first())
                    .and_then(|a| a.address())
                    .map(str::to_string)
            };
            (
                m.subject().map(str::to_string).unwrap_or_default(),
                first(m.sender())
                    .or_else(|| first(m.from()))
                    .unwrap_or_default(),
            )
        };
        let cases: &[&[u8]] = &[
            MSG,
            b"Subject: one\r\n two\r\nFrom: \"A, B\" <a@x.test>\r\n\r\nbody",
            b"From: a@x.test\r\nSender: s@x.test\r\nSubject: first\r\nSubject: second\r\n\r\n",
            b"Received: from x\r\n\tby y\r\nTo: b@y.test\r\n\r\nno subject",
            b"SUBJECT: =?iso-8859-1?q?r=E9sum=E9?=\r\nfrom: <c@z.test>\r\n\r\n",
            b"no header at all",
        ];
        for c in cases {
            assert_eq!(
                subject_and_sender(c),
                whole(c),
                "{}",
                String::from_utf8_lossy(c)
            );
        }
    }

    #[test]
    fn transport_facts_replace_an_earlier_hops() {
        let m = b"X-MS-Exchange-Organization-MessageDirectionality: Incoming\r\nSubject: s\r\n\r\nbody\r\n";
        let once = with_transport_facts(m, 7, "2026-12-03T15:00:00.000Z", "Originating");
        let twice = with_transport_facts(&once, 9, "2026-12-03T15:00:00.000Z", "Originating");
        assert_eq!(count(&twice, DIRECTIONALITY_HEADER), 1);
        assert_eq!(
            get(&twice, DIRECTIONALITY_HEADER).as_deref(),
            Some("Originating")
        );
        assert_eq!(
            get(&twice, INTERNAL_MESSAGE_ID_HEADER).as_deref(),
            Some("9")
        );
        assert_eq!(
            get(&twice, ORIGINAL_ARRIVAL_HEADER).as_deref(),
            Some("2026-12-03T15:00:00.000Z")
        );
        assert!(twice.ends_with(b"Subject: s\r\n\r\nbody\r\n"));
    }

    #[test]
    fn reads_and_edits_headers() {
        assert_eq!(count(MSG, "received"), 1);
        assert_eq!(get(MSG, "Received").unwrap(), "from a by b; date");
        assert_eq!(subject(MSG), "café");
        assert_eq!(sender_address(MSG), "alice@x.test");
        let stripped = strip_prefixed(MSG, "X-MS-Exchange-Organization-").unwrap();
        assert!(!String::from_utf8_lossy(&stripped).contains("forged"));
        assert!(stripped.ends_with(b"\r\n\r\nbody\r\nX-Not-A-Header: no\r\n"));
        assert_eq!(
            stripped.len(),
            MSG.len() - b"X-MS-Exchange-Organization-Network-Message-Id: forged\r\n".len()
        );
        assert!(strip_prefixed(&stripped, "X-MS-Exchange-Organization-").is_none());
        // Sender: wins over From: (tracking's sender-address).
        let sent = b"From: Alice <alice@x.test>\r\nSender: Bob <bob@x.test>\r\n\r\n";
        assert_eq!(sender_address(sent), "bob@x.test");
        assert_eq!(subject(sent), "");
    }

    #[test]
    fn a_utf8_character_where_the_prefix_ends_is_not_a_panic() {
        // Once a crash: 'é' spans bytes 26-27 and the prefix is 27 bytes long.
        let m = "X-MS-Exchange-Organization\u{e9}: x\r\nX-MS-Exchange-Organization-A: y\r\n\r\nb";
        let stripped = strip_prefixed(m.as_bytes(), "X-MS-Exchange-Organization-").unwrap();
        assert_eq!(
            stripped,
            "X-MS-Exchange-Organization\u{e9}: x\r\n\r\nb".as_bytes()
        );
    }
}

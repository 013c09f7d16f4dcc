//! Header fields with raw 8-bit bytes, for a 7-bit peer: RFC 2047 encoded-words where
//! RFC 2047 §5 allows them (unstructured text such as `Subject`, and the display names
//! and group names of address fields), RFC 2231 parameters in `Content-Type` and
//! `Content-Disposition` (file names).
//!
//! Everything else stays as it was, byte for byte: 8-bit in an address itself
//! (`user@exämple` needs SMTPUTF8, which no encoding replaces), in identifiers and
//! trace fields (`Message-ID`, `Received`, `DKIM-Signature`…) and in comments. That is
//! what Postfix and Sendmail do with such fields too: a guess would corrupt them, and
//! a peer that takes the message takes those bytes as it would have anyway.
//!
//! Edits are made in place in the raw field, so its folding, spacing and the fields'
//! order stay as they were outside the encoded words.

use base64::Engine;

/// RFC 5322 §2.1.1: lines SHOULD stay within 78 characters.
const LINE: usize = 78;
/// RFC 2047 §2: an encoded-word is at most 75 characters.
const WORD: usize = 75;

/// The fields of a header block (each with its folded lines and CRLF) and what follows
/// them (the blank line, when there is one).
pub fn split_fields(head: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let end = if head == b"\r\n" {
        0
    } else if head.ends_with(b"\r\n\r\n") {
        head.len() - 2
    } else {
        head.len()
    };
    let (block, tail) = head.split_at(end);
    let mut fields = Vec::new();
    let (mut start, mut pos) = (0, 0);
    while pos < block.len() {
        if pos > start && !matches!(block[pos], b' ' | b'\t') {
            fields.push(&block[start..pos]);
            start = pos;
        }
        pos = block[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(block.len(), |p| pos + p + 2);
    }
    if start < block.len() {
        fields.push(&block[start..]);
    }
    (fields, tail)
}

/// Whether a raw field has this name (case-insensitive).
pub fn is_named(field: &[u8], name: &str) -> bool {
    field.iter().position(|&b| b == b':').is_some_and(|c| {
        field[..c]
            .trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes())
    })
}

/// How a field's 8-bit bytes may be encoded.
enum Syntax {
    Unstructured,
    Addresses,
    Parameters,
    Verbatim,
}

fn syntax(name: &str) -> Syntax {
    match name {
        "from"
        | "sender"
        | "reply-to"
        | "to"
        | "cc"
        | "bcc"
        | "resent-from"
        | "resent-sender"
        | "resent-to"
        | "resent-cc"
        | "resent-bcc"
        | "disposition-notification-to"
        | "return-receipt-to"
        | "mail-followup-to"
        | "mail-reply-to" => Syntax::Addresses,
        "content-type" | "content-disposition" => Syntax::Parameters,
        "received"
        | "return-path"
        | "message-id"
        | "content-id"
        | "resent-message-id"
        | "references"
        | "in-reply-to"
        | "date"
        | "resent-date"
        | "mime-version"
        | "content-transfer-encoding"
        | "dkim-signature"
        | "domainkey-signature"
        | "authentication-results"
        | "received-spf"
        | "delivered-to" => Syntax::Verbatim,
        n if n.starts_with("arc-") || n.starts_with("list-") => Syntax::Verbatim,
        _ => Syntax::Unstructured,
    }
}

/// One raw field (name, colon, value, CRLF) with its 8-bit text encoded.
pub fn encode_field(field: &[u8]) -> Vec<u8> {
    let colon = field.iter().position(|&b| b == b':');
    let Some(colon) = colon.filter(|&c| field[..c].is_ascii()) else {
        // Not a header field: no encoding can carry these bytes.
        return field
            .iter()
            .map(|&b| if b.is_ascii() { b } else { b'?' })
            .collect();
    };
    let name = String::from_utf8_lossy(field[..colon].trim_ascii()).to_ascii_lowercase();
    let value = &field[colon + 1..];
    let mut out = field[..=colon].to_vec();
    match syntax(&name) {
        Syntax::Unstructured => unstructured(&mut out, value),
        Syntax::Addresses => addresses(&mut out, value),
        Syntax::Parameters => parameters(&mut out, value),
        Syntax::Verbatim => out.extend_from_slice(value),
    }
    out
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Unstructured text (RFC 2047 §5 (1)): the words from the first to the last with
/// 8-bit bytes become encoded-words; the ASCII words around them stay.
fn unstructured(out: &mut Vec<u8>, value: &[u8]) {
    let mut words = Vec::new();
    let mut i = 0;
    while i < value.len() {
        if is_space(value[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < value.len() && !is_space(value[i]) {
            i += 1;
        }
        words.push((start, i));
    }
    let eight = |&&(s, e): &&(usize, usize)| !value[s..e].is_ascii();
    let (Some(&(s, _)), Some(&(_, e))) = (words.iter().find(eight), words.iter().rfind(eight))
    else {
        out.extend_from_slice(value);
        return;
    };
    out.extend_from_slice(&value[..s]);
    if !out.last().copied().is_some_and(is_space) {
        out.push(b' ');
    }
    encoded_words(out, &unfold(&value[s..e]));
    out.extend_from_slice(&value[e..]);
}

/// Address lists (RFC 2047 §5 (3)): a display name or group name with 8-bit bytes —
/// the phrase before `<` or `:` — becomes encoded-words. Phrases with comments, and
/// anything with an `@` (an address), stay as they are.
fn addresses(out: &mut Vec<u8>, value: &[u8]) {
    let mut copied = 0;
    let mut phrase = 0;
    let (mut at, mut comment) = (false, false);
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'"' => i = closing_quote(value, i),
            b'(' => {
                comment = true;
                let mut depth = 0;
                while i < value.len() {
                    match value[i] {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        break;
                    }
                    i += 1;
                }
            }
            b'@' => at = true,
            b',' | b';' => {
                (phrase, at, comment) = (i + 1, false, false);
            }
            end @ (b'<' | b':') => {
                let (s, e) = trimmed(value, phrase, i);
                if s < e && !at && !comment && !value[s..e].is_ascii() {
                    out.extend_from_slice(&value[copied..s]);
                    if !out.last().copied().is_some_and(is_space) {
                        out.push(b' ');
                    }
                    encoded_words(out, &phrase_text(&value[s..e]));
                    if e == i {
                        out.push(b' ');
                    }
                    copied = e;
                }
                if end == b'<' {
                    while i < value.len() && value[i] != b'>' {
                        i += 1;
                    }
                }
                (phrase, at, comment) = (i + 1, false, false);
            }
            _ => {}
        }
        i += 1;
    }
    out.extend_from_slice(&value[copied.min(value.len())..]);
}

/// The index of the `"` that closes the quoted string opened at `open` (or the end).
fn closing_quote(value: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while i < value.len() && value[i] != b'"' {
        i += if value[i] == b'\\' { 2 } else { 1 };
    }
    i.min(value.len())
}

/// `[s, e)` without the white space (and folding) at either end.
fn trimmed(value: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    e = e.min(value.len());
    while s < e && is_space(value[s]) {
        s += 1;
    }
    while e > s && is_space(value[e - 1]) {
        e -= 1;
    }
    (s, e)
}

/// The text of a phrase: quoted strings unquoted, white space runs as one space.
fn phrase_text(phrase: &[u8]) -> Vec<u8> {
    let mut text = Vec::with_capacity(phrase.len());
    let mut quoted = false;
    let mut i = 0;
    while i < phrase.len() {
        let b = phrase[i];
        match b {
            b'"' => quoted = !quoted,
            b'\\' if quoted && i + 1 < phrase.len() => {
                i += 1;
                text.push(phrase[i]);
            }
            b'\r' | b'\n' => {}
            b' ' | b'\t' if !quoted => {
                if text.last().is_some_and(|&l| l != b' ') {
                    text.push(b' ');
                }
            }
            _ => text.push(b),
        }
        i += 1;
    }
    text
}

/// `Content-Type`/`Content-Disposition` parameters with 8-bit values (a file name)
/// become RFC 2231 `name*=utf-8''…` parameters, split into `name*0*`, `name*1*`… when
/// long. Parameters already in RFC 2231 form, and the type itself, stay.
fn parameters(out: &mut Vec<u8>, value: &[u8]) {
    let mut segments = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < value.len() {
        match value[i] {
            b'"' => i = closing_quote(value, i),
            b';' => {
                segments.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    segments.push((start, value.len()));
    let mut copied = 0;
    // The first segment is the type (or disposition) itself.
    for &(seg_start, seg_end) in segments.iter().skip(1) {
        let (s, e) = trimmed(value, seg_start, seg_end);
        let param = &value[s..e];
        if param.is_ascii() {
            continue;
        }
        let Some(eq) = param.iter().position(|&b| b == b'=') else {
            continue;
        };
        let name = param[..eq].trim_ascii();
        if name.is_empty() || !name.is_ascii() || name.contains(&b'*') {
            continue;
        }
        let raw = param[eq + 1..].trim_ascii();
        let text = match raw.strip_prefix(b"\"") {
            Some(q) => phrase_text(&[b"\"", q].concat()),
            None => unfold(raw),
        };
        out.extend_from_slice(&value[copied..seg_start]);
        rfc2231(out, &String::from_utf8_lossy(name), &text);
        copied = e;
    }
    out.extend_from_slice(&value[copied..]);
}

/// Writes ` name*=charset''value` (or its numbered continuations), each on a folded
/// line of its own.
fn rfc2231(out: &mut Vec<u8>, name: &str, text: &[u8]) {
    let charset = charset(text);
    let mut pct = String::with_capacity(text.len() * 3);
    for &b in text {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            pct.push(b as char);
        } else {
            pct.push_str(&format!("%{b:02X}"));
        }
    }
    let single = format!("{name}*={charset}''{pct}");
    if single.len() < LINE {
        out.extend_from_slice(b"\r\n ");
        out.extend_from_slice(single.as_bytes());
        return;
    }
    // Pieces that never split a %XX triplet.
    let mut pieces = Vec::new();
    let mut rest = pct.as_str();
    while !rest.is_empty() {
        let mut n = rest.len().min(60);
        while n < rest.len() && rest[..n].rfind('%').is_some_and(|p| p + 3 > n) {
            n -= 1;
        }
        pieces.push(&rest[..n]);
        rest = &rest[n..];
    }
    for (k, piece) in pieces.iter().enumerate() {
        out.extend_from_slice(if k == 0 { b"\r\n " } else { b";\r\n " });
        let prefix = if k == 0 {
            format!("{charset}''")
        } else {
            String::new()
        };
        out.extend_from_slice(format!("{name}*{k}*={prefix}{piece}").as_bytes());
    }
}

/// `utf-8` when the bytes are UTF-8, else `unknown-8bit` (RFC 1428 §3).
fn charset(text: &[u8]) -> &'static str {
    if std::str::from_utf8(text).is_ok() {
        "utf-8"
    } else {
        "unknown-8bit"
    }
}

/// Folding removed: CRLF before white space goes, the white space stays.
fn unfold(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"\r\n") {
            i += 2;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Bytes on the current (last) line of `out`.
fn column(out: &[u8]) -> usize {
    out.iter()
        .rposition(|&b| b == b'\n')
        .map_or(out.len(), |p| out.len() - p - 1)
}

/// `text` as B-encoded words (RFC 2047 §4.1), folded so lines stay within 78
/// characters. A UTF-8 character is never split across two words (§5: each word must
/// decode on its own).
fn encoded_words(out: &mut Vec<u8>, text: &[u8]) {
    let charset = charset(text);
    let utf8 = charset == "utf-8";
    // "=?" charset "?B?" … "?="
    let overhead = charset.len() + 7;
    let mut rest = text;
    let mut first = true;
    while first || !rest.is_empty() {
        let separator = usize::from(!first);
        let mut room = LINE.saturating_sub(column(out) + separator).min(WORD);
        if room < overhead + 8 {
            out.extend_from_slice(b"\r\n ");
            room = (LINE - 1).min(WORD);
        } else if !first {
            out.push(b' ');
        }
        let max = ((room - overhead) / 4 * 3).max(3);
        let mut n = rest.len().min(max);
        if utf8 {
            while n > 0 && n < rest.len() && rest[n] & 0xC0 == 0x80 {
                n -= 1;
            }
            if n == 0 {
                n = rest.len().min(max);
            }
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(&rest[..n]);
        out.extend_from_slice(format!("=?{charset}?B?{b64}?=").as_bytes());
        rest = &rest[n..];
        first = false;
    }
}

//! The DSN extension's encodings (RFC 3461 §4): xtext for `ENVID=` and `ORCPT=`, the
//! `addr-type;` shape of ORCPT (§4.2), and the `utf-8` address type of RFC 6533 §3
//! (`\x{HEX}` escapes, raw UTF-8 only under SMTPUTF8).
//!
//! Both values come from anonymous clients and end up in reports that the Transport
//! builds long after the session: they are checked once here, when the command is
//! parsed, so nothing downstream meets a value it cannot decode. Decoding works on
//! bytes and never slices a string, so no input can make it panic.

/// RFC 3461 lets NOTIFY and ORCPT lengthen a RCPT line by at most 500 characters, so
/// no longer ORCPT is valid.
pub const MAX_ORCPT: usize = 500;
/// RFC 3461 §4.4: an ENVID is at most 100 characters.
pub const MAX_ENVID: usize = 100;

/// Why an xtext value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XtextError {
    #[error("value is empty or too long")]
    Length,
    #[error("character not allowed in xtext")]
    Character,
    #[error("'+' not followed by two hex digits")]
    Escape,
    #[error("ORCPT lacks its address type")]
    AddressType,
    #[error("decoded address is not printable")]
    NotPrintable,
}

/// `xchar` (RFC 3461 §4): printable ASCII except `+` and `=`.
fn is_xchar(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) && b != b'+' && b != b'='
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Decodes xtext (`+XX` escapes; hex digits of either case are taken, RFC 3461 asks
/// senders for upper case). Errors on any byte xtext does not allow.
pub fn decode_xtext(s: &str) -> Result<Vec<u8>, XtextError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'+' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(XtextError::Escape);
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else if is_xchar(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(XtextError::Character);
        }
    }
    Ok(out)
}

/// Encodes bytes as xtext (upper-case `+XX` for everything but `xchar`).
pub fn encode_xtext(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if is_xchar(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Checks an `ENVID=` value: xtext, 1 to 100 characters.
pub fn check_envid(s: &str) -> Result<(), XtextError> {
    if s.is_empty() || s.len() > MAX_ENVID {
        return Err(XtextError::Length);
    }
    decode_xtext(s).map(|_| ())
}

/// An `ORCPT=` value, checked and decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalRecipient {
    /// The address type as given (`rfc822`, `utf-8`, `x400`…).
    pub addr_type: String,
    /// The decoded address.
    pub address: String,
}

impl OriginalRecipient {
    /// Parses `addr-type;value` (RFC 3461 §4.2). For the `utf-8` type the value is
    /// RFC 6533's utf-8-addr-xtext, or utf-8-addr-unitext (raw UTF-8): the session
    /// refuses the raw form unless the transaction has SMTPUTF8. For any other type
    /// it is xtext whose decoded text is printable US-ASCII (RFC 3461 §4.2).
    pub fn parse(value: &str) -> Result<OriginalRecipient, XtextError> {
        if value.len() > MAX_ORCPT {
            return Err(XtextError::Length);
        }
        let (addr_type, encoded) = value.split_once(';').ok_or(XtextError::AddressType)?;
        // addr-type = atom (RFC 3461 §4.2 citing RFC 822).
        let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
        if addr_type.is_empty() || !addr_type.bytes().all(atext) {
            return Err(XtextError::AddressType);
        }
        if encoded.is_empty() {
            return Err(XtextError::Length);
        }
        let address = if addr_type.eq_ignore_ascii_case("utf-8") {
            decode_utf8_addr(encoded)?
        } else {
            let bytes = decode_xtext(encoded)?;
            if !bytes.iter().all(|&b| b == b' ' || b.is_ascii_graphic()) {
                return Err(XtextError::NotPrintable);
            }
            // Printable ASCII is UTF-8.
            String::from_utf8(bytes).map_err(|_| XtextError::NotPrintable)?
        };
        Ok(OriginalRecipient {
            addr_type: addr_type.to_string(),
            address,
        })
    }

    /// The `Original-Recipient:` value of a message/delivery-status part (RFC 3464
    /// §2.3.1), which is 7-bit: the decoded address, with non-ASCII characters of a
    /// `utf-8` address as RFC 6533 `\x{HEX}` escapes.
    pub fn report_value(&self) -> String {
        let mut out = format!("{}; ", self.addr_type);
        for c in self.address.chars() {
            match c {
                '\\' | '+' | '=' if self.is_utf8_type() => {
                    out.push_str(&format!("\\x{{{:X}}}", u32::from(c)))
                }
                ' '..='~' => out.push(c),
                c => out.push_str(&format!("\\x{{{:X}}}", u32::from(c))),
            }
        }
        out
    }

    fn is_utf8_type(&self) -> bool {
        self.addr_type.eq_ignore_ascii_case("utf-8")
    }
}

/// RFC 6533 §3 utf-8-addr-xtext / utf-8-addr-unitext: QCHAR (printable ASCII but `+`,
/// `=` and `\`), raw non-ASCII UTF-8 (unitext), or `\x{HEXPOINT}`.
fn decode_utf8_addr(s: &str) -> Result<String, XtextError> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if chars.next() != Some('x') || chars.next() != Some('{') {
                    return Err(XtextError::Escape);
                }
                let mut point = 0u32;
                let mut digits = 0;
                loop {
                    match chars.next() {
                        Some('}') if digits > 0 => break,
                        Some(h) if digits < 6 => {
                            let d = h.to_digit(16).ok_or(XtextError::Escape)?;
                            point = point << 4 | d;
                            digits += 1;
                        }
                        _ => return Err(XtextError::Escape),
                    }
                }
                let decoded = char::from_u32(point).ok_or(XtextError::Escape)?;
                if decoded.is_control() {
                    return Err(XtextError::NotPrintable);
                }
                out.push(decoded);
            }
            '+' | '=' => return Err(XtextError::Character),
            '!'..='~' => out.push(c),
            c if !c.is_ascii() && !c.is_control() => out.push(c),
            _ => return Err(XtextError::Character),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_decodes_escapes_and_refuses_what_it_does_not_allow() {
        assert_eq!(decode_xtext("bob+2Bx@y.test").unwrap(), b"bob+x@y.test");
        assert_eq!(decode_xtext("a+3db").unwrap(), b"a=b");
        for bad in ["+A\u{e9}", "+", "+4", "a b", "a=b", "caf\u{e9}", "+G0"] {
            assert!(decode_xtext(bad).is_err(), "{bad:?}");
        }
        assert_eq!(encode_xtext(b"a+b=c d"), "a+2Bb+3Dc+20d");
    }

    #[test]
    fn orcpt_needs_a_type_and_printable_xtext() {
        let o = OriginalRecipient::parse("rfc822;bob+2Bx@y.test").unwrap();
        assert_eq!(o.address, "bob+x@y.test");
        assert_eq!(o.report_value(), "rfc822; bob+x@y.test");
        for bad in [
            "rfc822;+A\u{e9}",
            "bob@y.test",
            ";bob@y.test",
            "rfc 822;bob@y.test",
            "rfc822;",
            "rfc822;a+0Db",
            "rfc822;caf+C3+A9@y.test",
        ] {
            assert!(OriginalRecipient::parse(bad).is_err(), "{bad:?}");
        }
        assert!(OriginalRecipient::parse(&format!("rfc822;{}", "a".repeat(500))).is_err());
    }

    #[test]
    fn utf8_orcpt_takes_escapes_and_raw_utf8_and_reports_7bit() {
        let x = OriginalRecipient::parse("utf-8;j\\x{F6}rg@x.test").unwrap();
        assert_eq!(x.address, "j\u{f6}rg@x.test");
        let raw = OriginalRecipient::parse("UTF-8;j\u{f6}rg@x.test").unwrap();
        assert_eq!(raw.address, x.address);
        assert_eq!(raw.report_value(), "UTF-8; j\\x{F6}rg@x.test");
        for bad in [
            "utf-8;a+b",
            "utf-8;\\x{}",
            "utf-8;\\x{1234567}",
            "utf-8;\\x{D800}",
            "utf-8;\\x{0A}",
            "utf-8;\\y",
        ] {
            assert!(OriginalRecipient::parse(bad).is_err(), "{bad:?}");
        }
    }
}

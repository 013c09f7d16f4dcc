//! SMTP command parsing (RFC 5321 §4.1), without I/O.
//!
//! The parser is strict where strictness prevents ambiguity between hops (addresses,
//! parameters) and lenient where real clients differ harmlessly (case, a space after
//! `FROM:`).

use crate::reply::{Enhanced, Reply};
use crate::xtext;

/// A mailbox address as `local@domain`, or the special `postmaster` (RFC 5321 §4.1.1.3).
/// The local part keeps its case (RFC 5321 §2.4); compare with [`Address::key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    pub local: String,
    pub domain: String,
}

impl Address {
    /// Parses `local@domain` (no angle brackets).
    pub fn parse(s: &str, utf8: bool) -> Result<Address, AddressError> {
        if s.len() > 571 {
            return Err(AddressError::TooLong);
        }
        if !utf8 && !s.is_ascii() {
            return Err(AddressError::NeedsSmtpUtf8);
        }
        let at = s.rfind('@').ok_or(AddressError::Syntax)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        // RFC 5321 §4.5.3.1.1/2: 64 octets of local part, 255 of domain.
        if local.is_empty() || local.len() > 64 || domain.is_empty() || domain.len() > 255 {
            return Err(AddressError::Syntax);
        }
        if !valid_local_part(local) || !valid_domain(domain) {
            return Err(AddressError::Syntax);
        }
        Ok(Address {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
        })
    }

    /// Lowercased `local@domain`, the form directory lookups use.
    pub fn key(&self) -> String {
        format!("{}@{}", self.local.to_lowercase(), self.domain)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("invalid address syntax")]
    Syntax,
    #[error("address too long")]
    TooLong,
    #[error("non-ASCII address without SMTPUTF8")]
    NeedsSmtpUtf8,
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn valid_local_part(local: &str) -> bool {
    if let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        // quoted-string: printable ASCII except bare `"` and `\`, or quoted pairs.
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if !matches!(chars.next(), Some(' '..='~')) {
                        return false;
                    }
                }
                '"' => return false,
                c if c == ' ' || c.is_ascii_graphic() || !c.is_ascii() => {}
                _ => return false,
            }
        }
        return true;
    }
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn valid_domain(domain: &str) -> bool {
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        if let Some(v6) = lit.strip_prefix("IPv6:") {
            return v6.parse::<std::net::Ipv6Addr>().is_ok();
        }
        return lit.parse::<std::net::Ipv4Addr>().is_ok();
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
    })
}

/// `BODY=` values (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

impl Body {
    /// The `BODY=` keyword; `7BIT` is the default a client leaves unsaid.
    pub fn keyword(self) -> &'static str {
        match self {
            Body::SevenBit => "7BIT",
            Body::EightBitMime => "8BITMIME",
            Body::BinaryMime => "BINARYMIME",
        }
    }
}

/// `RET=` (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    /// The `RET=` keyword, as the queue also stores it.
    pub fn keyword(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }

    /// The value of a `RET=` keyword (either case), None for anything else.
    pub fn from_keyword(s: &str) -> Option<Ret> {
        match s.to_ascii_uppercase().as_str() {
            "FULL" => Some(Ret::Full),
            "HDRS" => Some(Ret::Hdrs),
            _ => None,
        }
    }
}

/// Parameters of MAIL FROM that mailflow understands and carries between hops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Body,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// `AUTH=` (RFC 4954 §5), kept verbatim: `<>` or xtext (checked).
    pub auth: Option<String>,
}

/// Parameters of RCPT TO (RFC 3461 §4.1, §4.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=` values upper-cased, e.g. `["SUCCESS", "FAILURE"]` or `["NEVER"]`.
    pub notify: Vec<String>,
    /// `ORCPT=` kept verbatim (`rfc822;addr` in xtext), checked by
    /// [`xtext::OriginalRecipient::parse`] so that it always decodes.
    pub orcpt: Option<String>,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    /// `None` is the null reverse path `<>`.
    Mail(Option<Address>, MailParams),
    Rcpt(Address, RcptParams),
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// Why a command line was refused, as the reply to send.
pub type CommandError = Reply;

fn syntax(text: &str) -> Reply {
    Reply::new(501, Enhanced(5, 5, 4), text)
}

/// Parses one command line (without CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line)
        .map_err(|_| Reply::new(500, Enhanced(5, 5, 2), "Command contains invalid UTF-8"))?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_start()),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |cmd: Command| {
        if rest.trim().is_empty() || matches!(cmd, Command::Noop | Command::Help) {
            Ok(cmd)
        } else {
            Err(syntax("Syntax error: no arguments allowed"))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let domain = rest.trim();
            if domain.is_empty() || domain.contains(' ') {
                return Err(Reply::new(
                    501,
                    Enhanced(5, 5, 4),
                    format!("{verb} requires domain address"),
                ));
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(domain.to_string())
            } else {
                Command::Helo(domain.to_string())
            })
        }
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_args(Command::Data),
        "BDAT" => parse_bdat(rest),
        "RSET" => no_args(Command::Rset),
        "NOOP" => no_args(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => no_args(Command::Help),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut parts = rest.split_whitespace();
            let mechanism = parts
                .next()
                .ok_or_else(|| syntax("Syntax error: AUTH needs a mechanism"))?
                .to_ascii_uppercase();
            let initial = parts.next().map(str::to_string);
            if parts.next().is_some() {
                return Err(syntax("Syntax error in AUTH"));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        _ => Err(Reply::new(500, Enhanced(5, 3, 3), "Unrecognized command")),
    }
}

/// Splits `FROM:<path> params` into path and parameter text.
fn split_path<'a>(rest: &'a str, keyword: &str) -> Result<(&'a str, &'a str), Reply> {
    let head = rest.get(..keyword.len()).unwrap_or("");
    if !head.eq_ignore_ascii_case(keyword) {
        return Err(syntax(&format!(
            "Syntax error: expected {keyword}<address>"
        )));
    }
    let after = rest[keyword.len()..].trim_start();
    let after = after
        .strip_prefix('<')
        .ok_or_else(|| syntax("Syntax error: address must be in angle brackets"))?;
    let close = after
        .find('>')
        .ok_or_else(|| syntax("Syntax error: missing '>'"))?;
    let params = &after[close + 1..];
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(syntax("Syntax error after address"));
    }
    let mut path = &after[..close];
    // RFC 5321 §4.1.2: a source route `@a,@b:` is accepted and ignored.
    if path.starts_with('@')
        && let Some(colon) = path.find(':')
    {
        path = &path[colon + 1..];
    }
    Ok((path, params.trim()))
}

fn params(text: &str) -> impl Iterator<Item = (String, Option<&str>)> {
    text.split_whitespace().map(|p| match p.split_once('=') {
        Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
        None => (p.to_ascii_uppercase(), None),
    })
}

fn address_error(e: AddressError) -> Reply {
    match e {
        AddressError::NeedsSmtpUtf8 => Reply::new(
            553,
            Enhanced(5, 6, 7),
            "Non-ASCII address requires SMTPUTF8",
        ),
        _ => Reply::new(501, Enhanced(5, 1, 3), "Invalid address"),
    }
}

/// RFC 3461 §4.2 / RFC 6533 §3: ORCPT that is not `addr-type;xtext`.
pub fn invalid_orcpt() -> Reply {
    Reply::new(501, Enhanced(5, 5, 4), "Invalid ORCPT parameter")
}

/// RFC 3461 §4.4: ENVID that is not xtext of at most 100 characters.
pub fn invalid_envid() -> Reply {
    Reply::new(501, Enhanced(5, 5, 4), "Invalid ENVID parameter")
}

/// RFC 4954 §5: an `AUTH=` value that is neither `<>` nor xtext.
pub fn invalid_auth() -> Reply {
    Reply::new(501, Enhanced(5, 5, 4), "Invalid AUTH parameter")
}

fn unsupported(key: &str) -> Reply {
    Reply::new(
        555,
        Enhanced(5, 5, 4),
        format!("Unsupported parameter {key}"),
    )
}

fn parse_mail(rest: &str) -> Result<Command, Reply> {
    let (path, param_text) = split_path(rest, "FROM:")?;
    let mut p = MailParams::default();
    for (key, value) in params(param_text) {
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                p.size = Some(v.parse().map_err(|_| syntax("Syntax error in SIZE"))?)
            }
            ("BODY", Some(v)) => {
                p.body = match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    "BINARYMIME" => Body::BinaryMime,
                    _ => return Err(unsupported("BODY")),
                }
            }
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("RET", Some(v)) => {
                p.ret = Some(Ret::from_keyword(v).ok_or_else(|| syntax("Syntax error in RET"))?)
            }
            ("ENVID", Some(v)) => {
                xtext::check_envid(v).map_err(|_| invalid_envid())?;
                p.envid = Some(v.to_string());
            }
            ("AUTH", Some(v)) => {
                // RFC 4954 §5: `<>` or an xtext mailbox; Postfix refuses the rest too.
                if v != "<>" {
                    xtext::decode_xtext(v).map_err(|_| invalid_auth())?;
                }
                p.auth = Some(v.to_string());
            }
            _ => return Err(unsupported(&key)),
        }
    }
    let from = if path.is_empty() {
        None
    } else {
        Some(Address::parse(path, p.smtputf8).map_err(address_error)?)
    };
    Ok(Command::Mail(from, p))
}

fn parse_rcpt(rest: &str) -> Result<Command, Reply> {
    let (path, param_text) = split_path(rest, "TO:")?;
    let mut p = RcptParams::default();
    for (key, value) in params(param_text) {
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => {
                let list: Vec<String> = v.split(',').map(|s| s.to_ascii_uppercase()).collect();
                let ok = list
                    .iter()
                    .all(|n| matches!(n.as_str(), "NEVER" | "SUCCESS" | "FAILURE" | "DELAY"));
                if !ok || (list.len() > 1 && list.iter().any(|n| n == "NEVER")) {
                    return Err(syntax("Syntax error in NOTIFY"));
                }
                p.notify = list;
            }
            ("ORCPT", Some(v)) => {
                // Raw UTF-8 (RFC 6533 unitext) is checked against SMTPUTF8 by the session.
                xtext::OriginalRecipient::parse(v).map_err(|_| invalid_orcpt())?;
                p.orcpt = Some(v.to_string());
            }
            _ => return Err(unsupported(&key)),
        }
    }
    // RFC 5321 §4.1.1.3: `<Postmaster>` without a domain must be accepted; the caller
    // maps the empty domain to its own.
    if path.eq_ignore_ascii_case("postmaster") {
        return Ok(Command::Rcpt(
            Address {
                local: "postmaster".into(),
                domain: String::new(),
            },
            p,
        ));
    }
    // Non-ASCII recipients are checked against the transaction's SMTPUTF8 by the session.
    let to = Address::parse(path, true).map_err(address_error)?;
    Ok(Command::Rcpt(to, p))
}

fn parse_bdat(rest: &str) -> Result<Command, Reply> {
    let mut parts = rest.split_whitespace();
    let size = parts
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| syntax("Syntax error in BDAT: chunk size expected"))?;
    let last = match parts.next() {
        None => false,
        Some(s) if s.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(syntax("Syntax error in BDAT")),
    };
    if parts.next().is_some() {
        return Err(syntax("Syntax error in BDAT"));
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mail_with_params() {
        let c = parse_command(b"mail from: <Alice@Contoso.TEST> SIZE=1000 BODY=8BITMIME").unwrap();
        let Command::Mail(Some(a), p) = c else {
            panic!()
        };
        assert_eq!(a.local, "Alice");
        assert_eq!(a.domain, "contoso.test");
        assert_eq!(a.key(), "alice@contoso.test");
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Body::EightBitMime);
        assert_eq!(
            parse_command(b"MAIL FROM:<>").unwrap(),
            Command::Mail(None, MailParams::default())
        );
    }

    #[test]
    fn rejects_bad_addresses_and_params() {
        assert_eq!(parse_command(b"MAIL FROM:alice@x").unwrap_err().code, 501);
        assert_eq!(parse_command(b"RCPT TO:<a@@b>").unwrap_err().code, 501);
        assert_eq!(parse_command(b"RCPT TO:<a@b> FOO=1").unwrap_err().code, 555);
        assert_eq!(parse_command(b"RCPT TO:<a@-b.com>").unwrap_err().code, 501);
        assert_eq!(
            parse_command(b"MAIL FROM:<j\xc3\xb6rg@x.test>")
                .unwrap_err()
                .code,
            553
        );
        let long = format!("RCPT TO:<{}@x.test>", "a".repeat(65));
        assert_eq!(parse_command(long.as_bytes()).unwrap_err().code, 501);
        assert_eq!(
            parse_command(b"RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS")
                .unwrap_err()
                .code,
            501
        );
    }

    #[test]
    fn parses_rcpt_dsn_params_and_postmaster() {
        let Command::Rcpt(a, p) = parse_command(
            b"RCPT TO:<@relay.test:bob@x.test> NOTIFY=success,failure ORCPT=rfc822;bob@x.test",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(a.key(), "bob@x.test");
        assert_eq!(p.notify, vec!["SUCCESS", "FAILURE"]);
        let Command::Rcpt(pm, _) = parse_command(b"RCPT TO:<Postmaster>").unwrap() else {
            panic!()
        };
        assert_eq!(pm.local, "postmaster");
        assert_eq!(
            parse_command(b"RCPT TO:<\"john doe\"@x.test>").map(|_| ()),
            Ok(())
        );
    }

    #[test]
    fn orcpt_and_envid_must_be_xtext() {
        for bad in [
            "RCPT TO:<alice@contoso.test> NOTIFY=SUCCESS ORCPT=rfc822;+A\u{e9}",
            "RCPT TO:<a@b.test> ORCPT=bob@x.test",
            "RCPT TO:<a@b.test> ORCPT=rfc822;a=b",
            "RCPT TO:<a@b.test> ORCPT=rfc822;a+0Ab",
        ] {
            assert_eq!(parse_command(bad.as_bytes()), Err(invalid_orcpt()), "{bad}");
        }
        for bad in [
            "MAIL FROM:<a@b.test> ENVID=a=b",
            "MAIL FROM:<a@b.test> ENVID=+4",
        ] {
            assert_eq!(parse_command(bad.as_bytes()), Err(invalid_envid()), "{bad}");
        }
        let long = format!("MAIL FROM:<a@b.test> ENVID={}", "x".repeat(101));
        assert_eq!(parse_command(long.as_bytes()), Err(invalid_envid()));
        assert!(parse_command(b"MAIL FROM:<a@b.test> ENVID=QQ+2B314").is_ok());
        assert_eq!(
            parse_command("MAIL FROM:<a@b.test> AUTH=+A\u{e9}".as_bytes()),
            Err(invalid_auth())
        );
        assert!(parse_command(b"MAIL FROM:<a@b.test> AUTH=<>").is_ok());
        assert!(parse_command(b"MAIL FROM:<a@b.test> AUTH=a+2Bb@b.test").is_ok());
        assert!(
            parse_command("RCPT TO:<a@b.test> ORCPT=utf-8;j\\x{F6}rg@b.test".as_bytes()).is_ok()
        );
    }

    #[test]
    fn parses_other_verbs() {
        assert_eq!(
            parse_command(b"BDAT 10 LAST").unwrap(),
            Command::Bdat {
                size: 10,
                last: true
            }
        );
        assert_eq!(
            parse_command(b"ehlo client.test").unwrap(),
            Command::Ehlo("client.test".into())
        );
        assert_eq!(parse_command(b"EHLO").unwrap_err().code, 501);
        assert_eq!(parse_command(b"XYZZY").unwrap_err().code, 500);
        assert_eq!(parse_command(b"DATA now").unwrap_err().code, 501);
        assert_eq!(
            parse_command(b"AUTH plain AGFsaWNlAHB3").unwrap(),
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGFsaWNlAHB3".into())
            }
        );
    }
}

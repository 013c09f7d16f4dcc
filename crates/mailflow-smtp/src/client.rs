//! What an SMTP client sends: the `MAIL FROM` and `RCPT TO` lines, built from the same
//! typed parameters the parser produces, for every client in mailflow (SMTP Send, the
//! Front End's proxy, the :717 Outbound Proxy, Mailbox Transport Submission).
//!
//! A parameter the next hop did not announce is left out by the caller, which clears
//! it in the parameters it passes (e.g. DSN's `NOTIFY`, `ORCPT`, `RET`, `ENVID` only
//! to a server offering DSN). `ENVID=` and `ORCPT=` are carried as received: the
//! parser accepted them only as valid xtext (see [`crate::xtext`]), so they go on
//! unchanged; a submitter for `AUTH=` is encoded with [`auth_submitter`]. Like the rest
//! of this crate this module does no I/O and imports no service.

use crate::command::{Body, MailParams, RcptParams};
use crate::xtext::encode_xtext;

/// `MAIL FROM:<from>` with its parameters, without CRLF; `from` empty is the null
/// reverse path `<>`. Parameters go in one order — AUTH, SIZE, BODY, SMTPUTF8, RET,
/// ENVID — and `BODY=7BIT`, the default, is left unsaid.
pub fn mail_line(from: &str, params: &MailParams) -> String {
    let mut line = format!("MAIL FROM:<{from}>");
    // RFC 4954 §5: `<>` or xtext, checked (or encoded) before it got here.
    if let Some(auth) = &params.auth {
        line.push_str(" AUTH=");
        line.push_str(auth);
    }
    // RFC 1870 §6.
    if let Some(size) = params.size {
        line.push_str(&format!(" SIZE={size}"));
    }
    // RFC 6152 §2, RFC 3030 §3.
    if params.body != Body::SevenBit {
        line.push_str(" BODY=");
        line.push_str(params.body.keyword());
    }
    // RFC 6531 §3.4.
    if params.smtputf8 {
        line.push_str(" SMTPUTF8");
    }
    // RFC 3461 §4.3, §4.4.
    if let Some(ret) = params.ret {
        line.push_str(" RET=");
        line.push_str(ret.keyword());
    }
    if let Some(envid) = &params.envid {
        line.push_str(" ENVID=");
        line.push_str(envid);
    }
    line
}

/// `RCPT TO:<to>` with `NOTIFY=` and `ORCPT=` (RFC 3461 §4.1, §4.2), without CRLF.
pub fn rcpt_line(to: &str, params: &RcptParams) -> String {
    let mut line = format!("RCPT TO:<{to}>");
    if !params.notify.is_empty() {
        line.push_str(" NOTIFY=");
        line.push_str(&params.notify.join(","));
    }
    if let Some(orcpt) = &params.orcpt {
        line.push_str(" ORCPT=");
        line.push_str(orcpt);
    }
    line
}

/// The `AUTH=` value naming an authenticated submitter (RFC 4954 §5): the address as
/// xtext.
pub fn auth_submitter(user: &str) -> String {
    encode_xtext(user.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Ret, parse_command};

    #[test]
    fn mail_lines_carry_each_parameter_in_one_order() {
        let full = MailParams {
            size: Some(1234),
            body: Body::EightBitMime,
            smtputf8: true,
            ret: Some(Ret::Hdrs),
            envid: Some("env+2B1".into()),
            auth: Some(auth_submitter("bob@contoso.test")),
        };
        let cases = [
            ("", MailParams::default(), "MAIL FROM:<>"),
            (
                "a@b.test",
                MailParams {
                    size: Some(10),
                    ..MailParams::default()
                },
                "MAIL FROM:<a@b.test> SIZE=10",
            ),
            (
                "a@b.test",
                MailParams {
                    body: Body::BinaryMime,
                    ..MailParams::default()
                },
                "MAIL FROM:<a@b.test> BODY=BINARYMIME",
            ),
            (
                "a@b.test",
                full,
                "MAIL FROM:<a@b.test> AUTH=bob@contoso.test SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=env+2B1",
            ),
        ];
        for (from, params, want) in cases {
            assert_eq!(mail_line(from, &params), want);
        }
    }

    #[test]
    fn rcpt_lines_carry_notify_and_orcpt() {
        assert_eq!(
            rcpt_line("a@b.test", &RcptParams::default()),
            "RCPT TO:<a@b.test>"
        );
        let p = RcptParams {
            notify: vec!["SUCCESS".into(), "FAILURE".into()],
            orcpt: Some("rfc822;a+2Bx@b.test".into()),
        };
        assert_eq!(
            rcpt_line("a@b.test", &p),
            "RCPT TO:<a@b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bx@b.test"
        );
    }

    #[test]
    fn the_submitter_is_xtext() {
        assert_eq!(auth_submitter("a+b=c@d.test"), "a+2Bb+3Dc@d.test");
        assert_eq!(auth_submitter("jöe@d.test"), "j+C3+B6e@d.test");
    }

    /// What the builder writes, the parser reads back unchanged.
    #[test]
    fn built_lines_parse_to_the_same_parameters() {
        let mail = MailParams {
            size: Some(99),
            body: Body::EightBitMime,
            smtputf8: true,
            ret: Some(Ret::Full),
            envid: Some("QQ+2B1".into()),
            auth: Some(auth_submitter("x+y@contoso.test")),
        };
        let Ok(Command::Mail(Some(from), parsed)) =
            parse_command(mail_line("bob@contoso.test", &mail).as_bytes())
        else {
            panic!("MAIL line did not parse");
        };
        assert_eq!(from.to_string(), "bob@contoso.test");
        assert_eq!(parsed, mail);
        let rcpt = RcptParams {
            notify: vec!["DELAY".into()],
            orcpt: Some("rfc822;x+2By@contoso.test".into()),
        };
        let Ok(Command::Rcpt(to, parsed)) =
            parse_command(rcpt_line("x@contoso.test", &rcpt).as_bytes())
        else {
            panic!("RCPT line did not parse");
        };
        assert_eq!(to.to_string(), "x@contoso.test");
        assert_eq!(parsed, rcpt);
    }
}

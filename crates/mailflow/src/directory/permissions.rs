//! Permission checks that more than one service makes from the directory (reference
//! §1.5, DESIGN §7): Send As (a mailbox user sends only as its own addresses, in the
//! envelope and in the header) and the delivery restriction of groups that require
//! authenticated senders. Each refusal is one [`Reply`], built here, so Front End and
//! Transport answer alike. No service is imported from here.

use mailflow_smtp::{Reply, replies};

use super::{Directory, Recipient};
use crate::message::{self, AuthAs};

/// The addresses `user` (a logon name or any address of a mailbox) may send as: the
/// mailbox's primary address and its aliases; none for anything that is not a mailbox.
pub fn own_addresses(dir: &Directory, user: &str) -> Vec<String> {
    match dir.lookup(user) {
        Some(Recipient::Mailbox(i)) => {
            let m = dir.mailbox(i);
            std::iter::once(m.address.clone())
                .chain(m.aliases.iter().cloned())
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Whether `address` is one of `own` (case-insensitively).
pub fn is_own(own: &[String], address: &str) -> bool {
    own.iter().any(|o| o.eq_ignore_ascii_case(address))
}

/// Send As for a message a mailbox user submitted: the envelope sender and every
/// address of every `From:` and `Sender:` field must be the user's own. A field whose
/// address cannot be read is refused too (a reader's client may still show a name).
pub fn check_send_as(own: &[String], envelope_from: &str, content: &[u8]) -> Result<(), Reply> {
    let mine = |a: &str| is_own(own, a);
    if !mine(envelope_from) {
        return Err(replies::send_as_denied());
    }
    for addresses in message::author_fields(content) {
        if addresses.is_empty() || !addresses.iter().all(|a| mine(a)) {
            return Err(replies::send_as_denied());
        }
    }
    Ok(())
}

/// Whether a sender authenticated as `auth` may send to the group `g` of `dir`.
pub fn check_group_sender(dir: &Directory, g: usize, auth: AuthAs) -> Result<(), Reply> {
    if dir.group(g).require_sender_authentication && auth != AuthAs::Internal {
        return Err(replies::sender_not_authenticated_for_group());
    }
    Ok(())
}

/// A recipient's `NOTIFY=` without `SUCCESS`, for an anonymous sender on a connector
/// whose `success_dsn_for_anonymous` is false. `NOTIFY=SUCCESS` alone becomes `NEVER`
/// (RFC 3461 §4.1: an empty list would mean "failures and delays", which the sender
/// did not ask for).
pub fn without_success_notify(notify: Vec<String>) -> Vec<String> {
    if !notify.iter().any(|n| n == "SUCCESS") {
        return notify;
    }
    let rest: Vec<String> = notify.into_iter().filter(|n| n != "SUCCESS").collect();
    if rest.is_empty() {
        vec!["NEVER".into()]
    } else {
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_as_covers_envelope_from_and_sender() {
        let own = vec![
            "alice@contoso.test".to_string(),
            "a.smith@contoso.test".into(),
        ];
        let ok = b"From: Alice <A.Smith@contoso.test>\r\nSubject: x\r\n\r\nbody\r\n";
        assert!(check_send_as(&own, "alice@contoso.test", ok).is_ok());
        assert!(check_send_as(&own, "alice@contoso.test", b"Subject: none\r\n\r\nx\r\n").is_ok());
        let refused: [(&str, &[u8]); 6] = [
            ("ceo@contoso.test", ok),
            (
                "alice@contoso.test",
                b"From: CEO <ceo@contoso.test>\r\n\r\nx\r\n",
            ),
            (
                "alice@contoso.test",
                b"From: alice@contoso.test\r\nSender: ceo@contoso.test\r\n\r\nx\r\n",
            ),
            (
                "alice@contoso.test",
                b"From: alice@contoso.test, ceo@contoso.test\r\n\r\nx\r\n",
            ),
            (
                "alice@contoso.test",
                b"From: alice@contoso.test\r\nFrom: ceo@contoso.test\r\n\r\nx\r\n",
            ),
            ("alice@contoso.test", b"From: The CEO\r\n\r\nx\r\n"),
        ];
        for (envelope, content) in refused {
            let r = check_send_as(&own, envelope, content).unwrap_err();
            assert_eq!(
                r.one_line(),
                "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
                "{}",
                String::from_utf8_lossy(content)
            );
        }
    }

    #[test]
    fn dropping_success_from_notify_never_widens_it() {
        let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(without_success_notify(n(&["SUCCESS"])), n(&["NEVER"]));
        assert_eq!(
            without_success_notify(n(&["SUCCESS", "FAILURE"])),
            n(&["FAILURE"])
        );
        assert_eq!(without_success_notify(n(&[])), n(&[]));
        assert_eq!(without_success_notify(n(&["DELAY"])), n(&["DELAY"]));
    }
}

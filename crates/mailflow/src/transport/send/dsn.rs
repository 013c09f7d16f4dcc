//! Delivery status notifications (RFC 3464) and their submission: non-delivery reports,
//! delay notices, and delivered/relayed notices where `NOTIFY=SUCCESS` asks for them
//! (RFC 3461). Reports go to the original envelope sender, never to the null sender,
//! and are themselves sent from the null sender, so a report can never cause another
//! (no bounce loops).

use std::sync::Arc;

use mailflow_smtp::{Enhanced, xtext};
use tokio::sync::mpsc;

use crate::logs::tracking::now_timestamp;
use crate::message;
use crate::transport::context::TransportContext;
use crate::transport::queue::QueuedMessage;
use crate::transport::queue::store::{Envelope, QueueDb, QueuedRecipient, RecipientState};
use crate::transport::{Origin, Submission, tracking_event};

/// The kind of report, as RFC 3464's `Action:` field names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    Failed,
    Delayed,
    Delivered,
    Relayed,
}

impl DsnKind {
    fn action(self) -> &'static str {
        match self {
            DsnKind::Failed => "failed",
            DsnKind::Delayed => "delayed",
            DsnKind::Delivered => "delivered",
            DsnKind::Relayed => "relayed",
        }
    }

    /// Exchange's subject prefixes.
    fn subject_prefix(self) -> &'static str {
        match self {
            DsnKind::Failed => "Undeliverable",
            DsnKind::Delayed => "Delivery delayed",
            DsnKind::Delivered => "Delivered",
            DsnKind::Relayed => "Relayed",
        }
    }

    /// Whether a recipient's NOTIFY asks for this report (RFC 3461 §4.1: without
    /// NOTIFY, failures and delays are reported).
    pub fn wanted_by(self, notify: &[String]) -> bool {
        let has = |k: &str| notify.iter().any(|n| n == k);
        if has("NEVER") {
            return false;
        }
        match self {
            DsnKind::Failed => notify.is_empty() || has("FAILURE"),
            DsnKind::Delayed => notify.is_empty() || has("DELAY"),
            DsnKind::Delivered | DsnKind::Relayed => has("SUCCESS"),
        }
    }
}

/// One recipient line of a report.
#[derive(Debug, Clone)]
pub struct DsnRecipient {
    pub address: String,
    /// ORCPT as given (`rfc822;addr`).
    pub orcpt: Option<String>,
    /// The SMTP reply or the reason (e.g. `550 5.1.1 User unknown`).
    pub diagnostic: String,
    /// The host that answered, when a remote server did.
    pub remote_mta: Option<String>,
    /// The enhanced status of the reply that decided the recipient's fate; from the
    /// text with [`status_in`] only where text is all there is (a stored last error).
    pub status: Option<Enhanced>,
}

impl DsnRecipient {
    /// The report line for a queued recipient and the reply that decided its fate.
    pub fn from_reply(
        r: &QueuedRecipient,
        reply: &mailflow_smtp::Reply,
        remote: Option<&str>,
    ) -> DsnRecipient {
        DsnRecipient {
            address: r.address.clone(),
            orcpt: r.orcpt.clone(),
            diagnostic: reply.one_line(),
            remote_mta: remote.map(str::to_string),
            // A peer's `550 4.x.x` (classes disagreeing, against RFC 3463 §2) keeps its
            // code in the text, where reports have always found it.
            status: reply.enhanced.or_else(|| status_in(&reply.one_line())),
        }
    }

    /// The recipient's enhanced status code, else a default for the kind.
    fn status(&self, kind: DsnKind) -> String {
        match (self.status, kind) {
            // Exchange reports the reply's enhanced code unaltered, so an expired
            // message's NDR says `Action: failed` with `Status: 4.4.7`, as its
            // Diagnostic-Code `550 4.4.7 QUEUE.Expired` does. RFC 3464 §2.3.3 would pair
            // `failed` with a 5.x.x status; we follow Exchange (docs/operations.md).
            (Some(e), _) => e.to_string(),
            (None, DsnKind::Failed) => "5.0.0".into(),
            (None, DsnKind::Delayed) => "4.4.7".into(),
            (None, _) => "2.0.0".into(),
        }
    }
}

/// The enhanced status code in a reply stored as one line of text (`451 4.4.1 …`,
/// as [`mailflow_smtp::Reply::one_line`] wrote it), the second word when it has that
/// shape. Only for recipients whose reply is known as text alone.
pub fn status_in(line: &str) -> Option<Enhanced> {
    let word = line.split_whitespace().nth(1)?;
    if !word.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let mut parts = word.split('.');
    let class = parts.next()?.parse().ok()?;
    let subject = parts.next()?.parse().ok()?;
    let detail = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some(Enhanced(class, subject, detail))
}

/// Words for the people who read the report (reference §11: the user section).
fn explain(status: &str) -> &'static str {
    match status {
        "5.1.1" => {
            "The email address couldn't be found. Check the recipient's address and try again."
        }
        "5.1.10" | "5.4.4" => "The recipient's domain couldn't be found or doesn't accept email.",
        "5.2.2" => "The recipient's mailbox is full.",
        "5.3.4" => "The message is too large for the destination.",
        "5.4.6" => "A routing loop was detected; the message couldn't be delivered.",
        "4.4.7" | "5.4.7" => "The message couldn't be delivered before it expired.",
        s if s.starts_with("5.7.") => "Delivery wasn't authorized; the message was refused.",
        s if s.starts_with('4') => "Delivery is delayed; the server will keep trying.",
        _ => "The message couldn't be delivered.",
    }
}

/// The local part of the Microsoft Exchange recipient's address, the same in every
/// Exchange organisation (`Get-OrganizationConfig` MicrosoftExchangeRecipient…).
const EXCHANGE_RECIPIENT: &str = "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e";

/// Who a report comes from (reference §3.2): to an internal sender (an address in an
/// accepted domain) the Microsoft Exchange recipient, shown as Exchange 2013+ shows it
/// ("Microsoft Outlook"); to an external sender the external postmaster address,
/// `postmaster@<default domain>`. Returns (display name, address).
pub fn report_sender(dir: &crate::directory::Directory, to: &str) -> (&'static str, String) {
    let domain = dir.first_accepted_domain().unwrap_or("localhost");
    let internal = to
        .rsplit_once('@')
        .is_some_and(|(_, d)| dir.is_accepted_domain(d));
    if internal {
        (
            "Microsoft Outlook",
            format!("{EXCHANGE_RECIPIENT}@{domain}"),
        )
    } else {
        ("Mail Delivery System", format!("postmaster@{domain}"))
    }
}

/// Builds the report for `msg` to its envelope sender. Returns (content, Message-ID).
pub fn build(
    ctx: &TransportContext,
    kind: DsnKind,
    msg: &QueuedMessage,
    recipients: &[DsnRecipient],
) -> (Vec<u8>, String) {
    let env = &msg.envelope;
    let (from_name, from) = report_sender(&ctx.dir(), &env.return_path);
    let boundary = format!("mailflow-dsn-{}", uuid::Uuid::new_v4().simple());
    let message_id = format!("<{}@{}>", uuid::Uuid::new_v4(), ctx.fqdn());
    let subject = if env.subject.is_empty() {
        kind.subject_prefix().to_string()
    } else {
        format!(
            "{}: {}",
            kind.subject_prefix(),
            env.subject.replace(['\r', '\n'], " ")
        )
    };
    let mut text = String::new();
    match kind {
        DsnKind::Failed => text.push_str("Delivery has failed to these recipients or groups:\r\n\r\n"),
        DsnKind::Delayed => text.push_str(
            "Delivery is delayed to these recipients or groups. The server will keep trying; you don't need to do anything now.\r\n\r\n",
        ),
        DsnKind::Delivered => text.push_str("Your message has been delivered to the following recipients:\r\n\r\n"),
        DsnKind::Relayed => text.push_str(
            "Your message has been relayed to the following recipients; the destination server sends no delivery notification:\r\n\r\n",
        ),
    }
    for r in recipients {
        let address = one_line(&r.address);
        match kind {
            DsnKind::Failed | DsnKind::Delayed => text.push_str(&format!(
                "{address}\r\n{}\r\n\r\n",
                explain(&r.status(kind))
            )),
            DsnKind::Delivered | DsnKind::Relayed => text.push_str(&format!("{address}\r\n\r\n")),
        }
    }
    text.push_str(&format!(
        "Diagnostic information for administrators:\r\n\r\nGenerating server: {}\r\n\r\n",
        ctx.fqdn()
    ));
    for r in recipients {
        let (address, diagnostic) = (one_line(&r.address), one_line(&r.diagnostic));
        match &r.remote_mta {
            Some(host) => text.push_str(&format!(
                "{address}\r\nRemote server {} returned '{diagnostic}'\r\n\r\n",
                one_line(host)
            )),
            None => text.push_str(&format!("{address}\r\n{diagnostic}\r\n\r\n")),
        }
    }
    // The organisation's private headers never leave in a returned copy either.
    let original_content = message::strip_prefixed(&msg.content, crate::message::ORG_HEADER_PREFIX)
        .unwrap_or_else(|| msg.content.to_vec());
    let headers = &original_content[..message::header_len(&original_content)];
    text.push_str("Original message headers:\r\n\r\n");
    text.push_str(&String::from_utf8_lossy(headers));

    let mut status = format!("Reporting-MTA: dns; {}\r\n", ctx.fqdn());
    // Checked at MAIL; checked again because the queue also holds what Pickup and
    // older versions wrote, and a report field must stay one printable line.
    if let Some(envid) = env.envid.as_ref().filter(|e| xtext::check_envid(e).is_ok()) {
        status.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    status.push_str(&format!(
        "Arrival-Date: {}\r\n",
        arrival_rfc2822(&env.received_at)
    ));
    for r in recipients {
        status.push_str(&format!(
            "\r\nFinal-Recipient: {}\r\n",
            final_recipient(&r.address)
        ));
        // RFC 3464 §2.3.1: the ORCPT decoded; one that does not decode is left out
        // (the field is optional) rather than guessed at.
        if let Some(orcpt) = r
            .orcpt
            .as_deref()
            .and_then(|o| xtext::OriginalRecipient::parse(o).ok())
        {
            status.push_str(&format!("Original-Recipient: {}\r\n", orcpt.report_value()));
        }
        status.push_str(&format!(
            "Action: {}\r\nStatus: {}\r\n",
            kind.action(),
            r.status(kind)
        ));
        if let Some(host) = &r.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {}\r\n", field_text(host)));
        }
        if !r.diagnostic.is_empty() {
            status.push_str(&format!(
                "Diagnostic-Code: smtp; {}\r\n",
                field_text(&r.diagnostic)
            ));
        }
    }
    // RFC 3461 §4.3: RET=HDRS returns headers only; Exchange returns the whole message
    // on failures by default, headers on other reports. A success notice never returns
    // the content, whatever RET= asked: for an anonymous sender (who may have forged
    // the return path) it would reflect a whole message to a third party.
    let full = kind == DsnKind::Failed && env.ret.as_deref() != Some("HDRS");
    let (ctype, original): (&str, &[u8]) = if full {
        ("message/rfc822", &original_content)
    } else {
        ("text/rfc822-headers", headers)
    };
    let mut out = format!(
        "From: {from_name} <{from}>\r\nTo: <{to}>\r\nDate: {date}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\r\nThis is a MIME-encapsulated delivery status notification.\r\n\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n{status}\r\n--{boundary}\r\nContent-Type: {ctype}\r\n\r\n",
        to = env.return_path,
        date = crate::net::rfc2822_now(),
    )
    .into_bytes();
    out.extend_from_slice(original);
    if !original.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (out, message_id)
}

fn arrival_rfc2822(received_at: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(received_at)
        .map(|t| t.format("%a, %-d %b %Y %H:%M:%S +0000").to_string())
        .unwrap_or_else(|_| crate::net::rfc2822_now())
}

/// Text from outside (an address, a remote server's reply) as one line: a control
/// character (a bare CR or LF above all) must not break the report's lines.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// [`one_line`] for a message/delivery-status field, which is 7-bit (RFC 3464 §2.1):
/// non-ASCII characters become RFC 6533 `\x{HEX}` escapes.
fn field_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in one_line(s).chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
    out
}

/// `Final-Recipient:` (RFC 3464 §2.3.2): `rfc822;` for an ASCII address, RFC 6533
/// `utf-8;` with escapes for an SMTPUTF8 one.
fn final_recipient(address: &str) -> String {
    if address.is_ascii() {
        format!("rfc822; {}", one_line(address))
    } else {
        xtext::OriginalRecipient {
            addr_type: "utf-8".into(),
            address: one_line(address),
        }
        .report_value()
    }
}

/// Submits reports into this Transport service like any other message.
#[derive(Clone)]
pub struct DsnSubmitter {
    pub ctx: Arc<TransportContext>,
    pub db: QueueDb,
    pub submit: mpsc::UnboundedSender<Submission>,
}

impl DsnSubmitter {
    /// Sends a report of `kind` for the recipients that asked for it; none to the null
    /// sender. Logs DSN on the original message (reference §7.4).
    pub async fn report(
        &self,
        kind: DsnKind,
        msg: &Arc<QueuedMessage>,
        recipients: Vec<(QueuedRecipient, DsnRecipient)>,
    ) {
        if msg.envelope.return_path.is_empty() {
            return;
        }
        // ExternalDelayDSNEnabled / InternalDelayDSNEnabled (reference §6), by how the
        // message entered the organisation.
        if kind == DsnKind::Delayed {
            let dir = self.ctx.dir();
            let settings = dir.transport();
            let enabled = match message::AuthAs::of(&msg.content) {
                message::AuthAs::Internal => settings.internal_delay_dsn_enabled,
                message::AuthAs::Anonymous => settings.external_delay_dsn_enabled,
            };
            if !enabled {
                return;
            }
        }
        let wanted: Vec<DsnRecipient> = recipients
            .into_iter()
            .filter(|(q, _)| kind.wanted_by(&q.notify))
            .map(|(_, d)| d)
            .collect();
        if wanted.is_empty() {
            return;
        }
        let ctx = &self.ctx;
        let (report, message_id) = build(ctx, kind, msg, &wanted);
        let network_message_id = uuid::Uuid::new_v4().simple().to_string();
        // A report is the organisation's own message.
        let mut content = format!(
            "{}: {network_message_id}\r\n{}",
            crate::message::NETWORK_MESSAGE_ID_HEADER,
            message::AuthAs::Internal.header_line()
        )
        .into_bytes();
        content.extend_from_slice(&report);
        let content: Arc<[u8]> = content.into();
        let envelope = Envelope {
            return_path: String::new(),
            network_message_id,
            message_id: message_id.clone(),
            subject: message::subject(&content),
            sender_header: report_sender(&ctx.dir(), &msg.envelope.return_path).1,
            received_at: now_timestamp(),
            body: "8BITMIME".into(),
            directionality: "Originating".into(),
            ..Default::default()
        };
        let rcpt = QueuedRecipient {
            address: msg.envelope.return_path.clone(),
            orcpt: None,
            notify: vec!["NEVER".into()],
            next_hop: None,
            state: RecipientState::Submitted,
            last_error: None,
            delay_notified: false,
        };
        let id = match self
            .db
            .insert(envelope.clone(), content.clone(), vec![rcpt.clone()])
            .await
        {
            Ok(id) => id,
            Err(e) => {
                tracing::error!("cannot queue a delivery status notification: {e}");
                return;
            }
        };
        let mut ev = tracking_event(ctx, msg, "DSN", "DSN");
        ev.recipient_address = wanted.iter().map(|r| r.address.clone()).collect();
        ev.recipient_status = wanted.iter().map(|r| r.diagnostic.clone()).collect();
        ev.reference = message_id;
        ctx.logs.tracking.log(ev);
        let dsn = QueuedMessage::new(id, envelope, content);
        let mut received = tracking_event(ctx, &dsn, "RECEIVE", "DSN");
        received.recipient_address = vec![rcpt.address.clone()];
        received.reference = msg.envelope.message_id.clone();
        ctx.logs.tracking.log(received);
        let _ = self.submit.send(Submission {
            message: dsn,
            recipients: vec![rcpt],
            origin: Origin::Report,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_rules_follow_rfc_3461() {
        let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(DsnKind::Failed.wanted_by(&n(&[])));
        assert!(DsnKind::Delayed.wanted_by(&n(&[])));
        assert!(!DsnKind::Delivered.wanted_by(&n(&[])));
        assert!(DsnKind::Delivered.wanted_by(&n(&["SUCCESS"])));
        assert!(!DsnKind::Failed.wanted_by(&n(&["SUCCESS"])));
        assert!(!DsnKind::Failed.wanted_by(&n(&["NEVER"])));
    }

    #[test]
    fn reports_come_from_the_exchange_recipient_inside_and_postmaster_outside() {
        let text = crate::directory::builtin::builtin_text();
        let dir = crate::directory::Directory::parse(&text, "builtin", ".".into()).unwrap();
        let (name, from) = report_sender(&dir, "user1@contoso.test");
        assert_eq!(name, "Microsoft Outlook");
        assert_eq!(
            from,
            "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.test"
        );
        let (name, from) = report_sender(&dir, "someone@fabrikam.test");
        assert_eq!(
            (name, from.as_str()),
            ("Mail Delivery System", "postmaster@contoso.test")
        );
    }

    #[test]
    fn status_comes_from_the_reply() {
        let r = DsnRecipient {
            address: "a@b".into(),
            orcpt: None,
            diagnostic: "550 5.1.1 User unknown".into(),
            remote_mta: None,
            status: Some(Enhanced(5, 1, 1)),
        };
        assert_eq!(r.status(DsnKind::Failed), "5.1.1");
        let r = DsnRecipient { status: None, ..r };
        assert_eq!(r.status(DsnKind::Delayed), "4.4.7");
        let expired = DsnRecipient {
            status: Some(Enhanced(4, 4, 7)),
            ..r
        };
        assert_eq!(expired.status(DsnKind::Failed), "4.4.7");
        assert_eq!(expired.status(DsnKind::Delayed), "4.4.7");
    }

    #[test]
    fn a_stored_reply_gives_its_status() {
        assert_eq!(
            status_in("451 4.4.1 Connection timed out"),
            Some(Enhanced(4, 4, 1))
        );
        assert_eq!(
            status_in("550 4.4.7 QUEUE.Expired; message expired"),
            Some(Enhanced(4, 4, 7))
        );
        for none in [
            "connection refused",
            "451",
            "451 4.4 x",
            "451 4.4.1.1 x",
            "451 a.b.c",
            "451 +4.4.1 x",
        ] {
            assert_eq!(status_in(none), None, "{none}");
        }
    }
}

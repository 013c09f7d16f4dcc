//! The Transport Rule agent (reference §9.5, §10): mail flow rules evaluated at
//! OnResolvedMessage, after recipient resolution and before routing.
//!
//! Conditions in one rule are ANDed, values in one condition ORed; exceptions
//! (`except_if`) are ORed. Rules run in priority order (0 first); `mode = "audit"` only
//! logs what would happen; `stop_rule_processing` ends the list. Actions apply to the
//! whole message (Exchange bifurcates per recipient for recipient conditions; this
//! release does not). The rules' shape and its validation are the directory's
//! (directory/transport_rules.rs). It must not import the queue, send/ or the logs:
//! it answers the pipeline with a verdict.

use super::{Agent, Edits, Event, Handled, MailItem, Org, Verdict};
use crate::directory::Directory;
use crate::directory::transport_rules::{Conditions, Rule};
use crate::message::{self, AuthAs};

/// The Transport Rule agent (Get-TransportAgent: priority 1, OnResolvedMessage).
pub struct TransportRuleAgent;

impl Agent for TransportRuleAgent {
    fn identity(&self) -> &'static str {
        "Transport Rule Agent"
    }

    fn priority(&self) -> u32 {
        1
    }

    fn events(&self) -> &'static [Event] {
        &[Event::ResolvedMessage]
    }

    /// At OnResolvedMessage, runs the mail flow rules over the message. It runs for
    /// every message, rules or not, and says so: its AGENTINFO custom data counts the
    /// rules evaluated and matched and the time taken, and names each rule that matched.
    fn on_message(&self, event: Event, org: &Org, item: &MailItem) -> Handled {
        if event != Event::ResolvedMessage {
            return Handled::pass();
        }
        let started = std::time::Instant::now();
        let outcome = apply(
            org.rules,
            org.dir,
            item.auth,
            item.sender,
            item.recipients,
            item.content,
        );
        let mut custom = vec![format!(
            "S:TRA=ETRP|ETR={}|EM={}|ETMS={}",
            outcome.evaluated,
            outcome.matched.len(),
            started.elapsed().as_millis()
        )];
        custom.extend(
            outcome
                .matched
                .iter()
                .map(|(name, mode)| format!("S:TRA=ETRI|rule={name}|mode={mode}")),
        );
        Handled {
            verdict: outcome.verdict(),
            info: Some(custom.join(";")),
        }
    }
}

/// What the rules decided for one message.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The content after header and body edits, when any.
    pub content: Option<Vec<u8>>,
    pub add_recipients: Vec<String>,
    /// Reject every recipient with this text (5.7.1).
    pub reject: Option<String>,
    pub delete: bool,
    /// Names of the rules that matched, with their mode.
    pub matched: Vec<(String, String)>,
    pub evaluated: usize,
}

impl Outcome {
    /// What the pipeline does with the message.
    fn verdict(self) -> Verdict {
        if self.delete {
            Verdict::Delete
        } else if let Some(reason) = self.reject {
            Verdict::Reject(mailflow_smtp::replies::rejected_by_rule(reason))
        } else if self.content.is_some() || !self.add_recipients.is_empty() {
            Verdict::Edit(Edits {
                content: self.content,
                add_recipients: self.add_recipients,
            })
        } else {
            Verdict::Continue
        }
    }
}

/// A recipient is in the organisation when its address is in an accepted domain (the
/// categorizer resolved it there).
fn in_org(dir: &Directory, address: &str) -> bool {
    address
        .rsplit('@')
        .next()
        .is_some_and(|d| dir.is_accepted_domain(d))
}

/// What the conditions look at.
struct Facts<'a> {
    dir: &'a Directory,
    auth: AuthAs,
    sender: &'a str,
    recipients: &'a [String],
    subject: &'a str,
}

fn matches(c: &Conditions, f: &Facts) -> bool {
    let Facts {
        dir,
        auth,
        sender,
        recipients,
        subject,
    } = *f;
    let domain_of = |a: &str| a.rsplit('@').next().unwrap_or("").to_ascii_lowercase();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let scope = |s: &str, address: &str| match s {
        "in_organization" => in_org(dir, address),
        "not_in_organization" => !in_org(dir, address),
        _ => false,
    };
    let sender_inside = auth == AuthAs::Internal;
    let from_scope = |s: &str| match s {
        "in_organization" => sender_inside,
        "not_in_organization" => !sender_inside,
        _ => false,
    };
    (c.sender_domain_is.is_empty() || c.sender_domain_is.iter().any(|d| eq(d, &domain_of(sender))))
        && (c.from.is_empty() || c.from.iter().any(|f| eq(f, sender)))
        && c.from_scope.as_deref().is_none_or(from_scope)
        && (c.sent_to.is_empty()
            || recipients
                .iter()
                .any(|r| c.sent_to.iter().any(|s| eq(s, r))))
        && c.sent_to_scope
            .as_deref()
            .is_none_or(|s| recipients.iter().any(|r| scope(s, r)))
        && (c.recipient_domain_is.is_empty()
            || recipients
                .iter()
                .any(|r| c.recipient_domain_is.iter().any(|d| eq(d, &domain_of(r)))))
        && (c.subject_contains_words.is_empty() || {
            let subject = subject.to_lowercase();
            c.subject_contains_words
                .iter()
                .any(|w| subject.contains(&w.to_lowercase()))
        })
}

/// Runs the rules over a resolved message; `auth` is its AuthAs stamp.
pub fn apply(
    rules: &[Rule],
    dir: &Directory,
    auth: AuthAs,
    sender: &str,
    recipients: &[String],
    content: &[u8],
) -> Outcome {
    let mut out = Outcome {
        evaluated: rules.len(),
        ..Default::default()
    };
    if rules.is_empty() {
        // Most organisations have few rules or none: no header parse for nothing.
        return out;
    }
    let subject = message::subject(content);
    let facts = Facts {
        dir,
        auth,
        sender,
        recipients,
        subject: &subject,
    };
    let mut current: Option<Vec<u8>> = None;
    for rule in rules {
        let hit = matches(&rule.conditions, &facts)
            && !rule.except_if.as_ref().is_some_and(|e| matches(e, &facts));
        if !hit {
            continue;
        }
        out.matched.push((rule.name.clone(), rule.mode.clone()));
        if rule.mode == "audit" {
            continue;
        }
        let a = &rule.actions;
        let base = current.clone().unwrap_or_else(|| content.to_vec());
        let mut edited = base.clone();
        if let Some(prefix) = &a.prepend_subject {
            let old = message::get(&edited, "Subject").unwrap_or_default();
            edited = set_header(&edited, "Subject", &format!("{prefix}{old}"));
        }
        if let Some((name, value)) = &a.set_header {
            edited = set_header(&edited, name, value);
        }
        if let Some(name) = &a.remove_header {
            edited =
                message::strip_fields(&edited, |n| n.eq_ignore_ascii_case(name)).unwrap_or(edited);
        }
        if let Some(text) = &a.append_disclaimer
            && let Some(with) = append_disclaimer(&edited, text)
        {
            edited = with;
        }
        if edited != base {
            current = Some(edited);
        }
        out.add_recipients.extend(a.blind_copy_to.iter().cloned());
        if let Some(reason) = &a.reject_message {
            out.reject = Some(reason.clone());
            break;
        }
        if a.delete_message {
            out.delete = true;
            break;
        }
        if rule.stop_rule_processing {
            break;
        }
    }
    out.content = current;
    out
}

/// Replaces (or adds) a header field at the top of the header.
fn set_header(content: &[u8], name: &str, value: &str) -> Vec<u8> {
    let clean = value.replace(['\r', '\n'], " ");
    let rest = message::strip_fields(content, |n| n.eq_ignore_ascii_case(name))
        .unwrap_or_else(|| content.to_vec());
    let mut out = format!("{name}: {clean}\r\n").into_bytes();
    out.extend_from_slice(&rest);
    out
}

/// Appends text to a single-part text/plain body in 7bit/8bit (a disclaimer); other
/// bodies (multipart, encoded) are left as they are.
fn append_disclaimer(content: &[u8], text: &str) -> Option<Vec<u8>> {
    let ctype = message::get(content, "Content-Type")
        .unwrap_or_else(|| "text/plain".into())
        .to_ascii_lowercase();
    let cte = message::get(content, "Content-Transfer-Encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !ctype.starts_with("text/plain") || !(cte.is_empty() || cte == "7bit" || cte == "8bit") {
        return None;
    }
    let mut out = content.to_vec();
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "\r\n{}\r\n",
            text.replace('\n', "\r\n").replace("\r\r\n", "\r\n")
        )
        .as_bytes(),
    );
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::transport_rules::load;

    fn dir_with(rules: &str) -> Directory {
        let text = format!(
            "[organization]\nname = \"c\"\naccepted_domains = [\"contoso.test\"]\n[[servers]]\nname = \"S\"\nfqdn = \"s.contoso.test\"\naddress = \"127.0.0.1\"\ndata_dir = \"d\"\n{rules}"
        );
        Directory::parse(&text, "t", ".".into()).unwrap()
    }

    #[test]
    fn the_design_disclaimer_rule_applies_to_mail_leaving_the_organisation() {
        let dir = dir_with(
            "[[transport_rules]]\nname = \"Disclaimer\"\npriority = 0\nmode = \"enforce\"\nif = { sender_domain_is = [\"contoso.test\"], sent_to_scope = \"not_in_organization\" }\nthen = { append_disclaimer = \"Sent from Contoso\" }\n",
        );
        let rules = load(&dir).unwrap();
        let msg = b"From: a@contoso.test\r\nSubject: hi\r\n\r\nbody\r\n";
        let out = apply(
            &rules,
            &dir,
            AuthAs::Internal,
            "a@contoso.test",
            &["x@fabrikam.test".into()],
            msg,
        );
        assert_eq!(
            out.matched,
            [("Disclaimer".to_string(), "enforce".to_string())]
        );
        assert!(
            out.content
                .unwrap()
                .ends_with(b"body\r\n\r\nSent from Contoso\r\n")
        );
        let inside = apply(
            &rules,
            &dir,
            AuthAs::Internal,
            "a@contoso.test",
            &["b@contoso.test".into()],
            msg,
        );
        assert!(inside.matched.is_empty() && inside.content.is_none());
    }

    #[test]
    fn audit_mode_exceptions_priority_and_reject() {
        let dir = dir_with(
            "[[transport_rules]]\nname = \"Tag\"\npriority = 1\nif = { subject_contains_words = [\"offer\"] }\nthen = { prepend_subject = \"[EXT] \" }\n[[transport_rules]]\nname = \"Watch\"\npriority = 0\nmode = \"audit\"\nif = { subject_contains_words = [\"offer\"] }\nthen = { reject_message = \"no\" }\n[[transport_rules]]\nname = \"Block\"\npriority = 2\nif = { subject_contains_words = [\"offer\"] }\nexcept_if = { from = [\"boss@contoso.test\"] }\nthen = { reject_message = \"Offers are not allowed\" }\n",
        );
        let rules = load(&dir).unwrap();
        let msg = b"Subject: Special OFFER\r\n\r\nx\r\n";
        let out = apply(
            &rules,
            &dir,
            AuthAs::Internal,
            "a@contoso.test",
            &["b@contoso.test".into()],
            msg,
        );
        let names: Vec<&str> = out.matched.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Watch", "Tag", "Block"]);
        assert_eq!(out.reject.as_deref(), Some("Offers are not allowed"));
        assert_eq!(
            message::get(&out.content.unwrap(), "Subject").unwrap(),
            "[EXT] Special OFFER"
        );
        let boss = apply(
            &rules,
            &dir,
            AuthAs::Internal,
            "boss@contoso.test",
            &["b@contoso.test".into()],
            msg,
        );
        assert!(boss.reject.is_none());
    }

    #[test]
    fn from_scope_is_decided_by_authentication_not_by_the_address() {
        let dir = dir_with(
            "[[transport_rules]]\nname = \"Outside\"\nif = { from_scope = \"not_in_organization\" }\nthen = { prepend_subject = \"[EXTERNAL] \" }\n",
        );
        let rules = load(&dir).unwrap();
        let msg = b"From: ceo@contoso.test\r\nSubject: wire money\r\n\r\nx\r\n";
        let to = ["b@contoso.test".to_string()];
        let forged = apply(
            &rules,
            &dir,
            AuthAs::Anonymous,
            "ceo@contoso.test",
            &to,
            msg,
        );
        assert_eq!(
            forged.matched.len(),
            1,
            "anonymous mail is outside the organisation"
        );
        let inside = apply(&rules, &dir, AuthAs::Internal, "ceo@contoso.test", &to, msg);
        assert!(inside.matched.is_empty());
        let partner = apply(&rules, &dir, AuthAs::Internal, "x@fabrikam.test", &to, msg);
        assert!(
            partner.matched.is_empty(),
            "Internal is inside whatever the address"
        );
    }

    #[test]
    fn the_agent_turns_each_rule_action_into_its_verdict_and_reports_agentinfo() {
        let dir = dir_with(
            "[[transport_rules]]\nname = \"Copy\"\npriority = 0\nif = { subject_contains_words = [\"copy\"] }\nthen = { blind_copy_to = [\"audit@contoso.test\"] }\n\n[[transport_rules]]\nname = \"No offers\"\npriority = 1\nif = { subject_contains_words = [\"offer\"] }\nthen = { reject_message = \"Offers are not allowed\" }\n\n[[transport_rules]]\nname = \"Drop\"\npriority = 2\nif = { subject_contains_words = [\"drop\"] }\nthen = { delete_message = true }\n",
        );
        let rules = load(&dir).unwrap();
        let org = Org {
            dir: &dir,
            rules: &rules,
        };
        let handle = |subject: &str, event: Event| {
            let content = format!("From: a@contoso.test\r\nSubject: {subject}\r\n\r\nbody\r\n");
            let item = MailItem {
                auth: AuthAs::Internal,
                sender: "a@contoso.test",
                recipients: &["b@contoso.test".into()],
                content: content.as_bytes(),
            };
            TransportRuleAgent.on_message(event, &org, &item)
        };
        let plain = handle("hello", Event::ResolvedMessage);
        assert_eq!(plain.verdict, Verdict::Continue);
        let info = plain.info.unwrap();
        assert!(info.starts_with("S:TRA=ETRP|ETR=3|EM=0|ETMS="), "{info}");
        let copy = handle("please copy", Event::ResolvedMessage);
        assert_eq!(
            copy.verdict,
            Verdict::Edit(Edits {
                content: None,
                add_recipients: vec!["audit@contoso.test".into()],
            })
        );
        assert!(
            copy.info
                .unwrap()
                .ends_with(";S:TRA=ETRI|rule=Copy|mode=enforce")
        );
        let Verdict::Reject(reply) = handle("an offer", Event::ResolvedMessage).verdict else {
            panic!("a reject_message rule rejects");
        };
        assert_eq!(reply.one_line(), "550 5.7.1 Offers are not allowed");
        assert_eq!(
            handle("drop it", Event::ResolvedMessage).verdict,
            Verdict::Delete
        );
        // Other events pass without a report.
        let other = handle("drop it", Event::RoutedMessage);
        assert_eq!(other.verdict, Verdict::Continue);
        assert!(other.info.is_none());
    }
}

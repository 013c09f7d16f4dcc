//! The shape of `[[transport_rules]]` (mail flow rules, reference §9.5, §10) and its
//! validation at load: the directory's model of the rules. The Transport Rule agent
//! (transport/agents/rules.rs) evaluates them. Imports no service (not transport,
//! frontend, mailbox or cli).

use serde::Deserialize;

use super::Directory;

/// One `[[transport_rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default)]
    pub priority: u32,
    #[serde(default = "enforce")]
    pub mode: String,
    #[serde(default, rename = "if")]
    pub conditions: Conditions,
    #[serde(default)]
    pub except_if: Option<Conditions>,
    #[serde(default, rename = "then")]
    pub actions: Actions,
    #[serde(default)]
    pub stop_rule_processing: bool,
}

fn enforce() -> String {
    "enforce".into()
}

/// Conditions and exceptions (names after New-TransportRule's parameters).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// SenderDomainIs.
    #[serde(default)]
    pub sender_domain_is: Vec<String>,
    /// From.
    #[serde(default)]
    pub from: Vec<String>,
    /// FromScope: `in_organization` or `not_in_organization`, decided by how the message
    /// entered the organisation (its AuthAs stamp), never by the sender's address: an
    /// anonymous client may write any address (DESIGN §7).
    #[serde(default)]
    pub from_scope: Option<String>,
    /// SentTo.
    #[serde(default)]
    pub sent_to: Vec<String>,
    /// SentToScope.
    #[serde(default)]
    pub sent_to_scope: Option<String>,
    /// RecipientDomainIs.
    #[serde(default)]
    pub recipient_domain_is: Vec<String>,
    /// SubjectContainsWords (case-insensitive).
    #[serde(default)]
    pub subject_contains_words: Vec<String>,
}

/// Actions (names after New-TransportRule's parameters).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    /// PrependSubject.
    #[serde(default)]
    pub prepend_subject: Option<String>,
    /// A plain-text disclaimer appended to a single-part text body
    /// (ApplyHtmlDisclaimerText with Append; other bodies are left unchanged).
    #[serde(default)]
    pub append_disclaimer: Option<String>,
    /// SetHeaderName + SetHeaderValue.
    #[serde(default)]
    pub set_header: Option<(String, String)>,
    /// RemoveHeader.
    #[serde(default)]
    pub remove_header: Option<String>,
    /// BlindCopyTo: extra envelope recipients.
    #[serde(default)]
    pub blind_copy_to: Vec<String>,
    /// RejectMessageReasonText: an NDR with 5.7.1 (reference §10.3).
    #[serde(default)]
    pub reject_message: Option<String>,
    /// DeleteMessage: dropped silently.
    #[serde(default)]
    pub delete_message: bool,
}

/// Loads the rules from the organisation file, sorted by priority.
pub fn load(dir: &Directory) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for table in &dir.org.transport_rules {
        let rule: Rule = toml::Value::Table(table.get_ref().clone())
            .try_into()
            .map_err(|e: toml::de::Error| format!("transport_rules: {}", e.message()))?;
        if rule.mode != "enforce" && rule.mode != "audit" {
            return Err(format!(
                "transport_rules {:?}: mode must be \"enforce\" or \"audit\"",
                rule.name
            ));
        }
        rules.push(rule);
    }
    rules.sort_by_key(|r| r.priority);
    Ok(rules)
}

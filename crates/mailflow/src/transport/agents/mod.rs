//! Transport agents (reference §9): code that runs at fixed events of the Transport
//! pipeline. An agent is an [`Agent`]; it sees a message and answers with a [`Verdict`]
//! (and what it reports for message tracking); the pipeline acts on the verdict and
//! writes the rows. mailflow's built-in agent is the Transport Rule agent (mail flow
//! rules at OnResolvedMessage); third-party agents are not supported. Agents must not
//! import the queue, send/, the logs or another service: they only decide.

pub mod rules;

use mailflow_smtp::Reply;
use serde::Serialize;

use crate::directory::Directory;
use crate::directory::transport_rules::Rule;
use crate::message::AuthAs;

/// The events agents run at, in pipeline order (reference §9.2–9.4). The pipeline
/// raises OnResolvedMessage; the others are named so agents can declare them and
/// `agent list` can show them. A variant is Exchange's name without its `On`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    // SmtpReceiveAgent (§9.2), in session order.
    Connect,
    HeloCommand,
    EhloCommand,
    StartTlsCommand,
    AuthCommand,
    ProcessAuthentication,
    EndOfAuthentication,
    XSessionParamsCommand,
    MailCommand,
    RcptCommand,
    DataCommand,
    EndOfHeaders,
    ProxyInboundMessage,
    EndOfData,
    HelpCommand,
    NoopCommand,
    RsetCommand,
    Reject,
    Disconnect,
    // RoutingAgent, the categorizer's (§9.3).
    SubmittedMessage,
    ResolvedMessage,
    RoutedMessage,
    CategorizedMessage,
    // DeliveryAgent (§9.4).
    OpenConnection,
    DeliverMailItem,
    CloseConnection,
}

impl Event {
    /// Every event, in pipeline order.
    pub const ALL: [Event; 26] = [
        Event::Connect,
        Event::HeloCommand,
        Event::EhloCommand,
        Event::StartTlsCommand,
        Event::AuthCommand,
        Event::ProcessAuthentication,
        Event::EndOfAuthentication,
        Event::XSessionParamsCommand,
        Event::MailCommand,
        Event::RcptCommand,
        Event::DataCommand,
        Event::EndOfHeaders,
        Event::ProxyInboundMessage,
        Event::EndOfData,
        Event::HelpCommand,
        Event::NoopCommand,
        Event::RsetCommand,
        Event::Reject,
        Event::Disconnect,
        Event::SubmittedMessage,
        Event::ResolvedMessage,
        Event::RoutedMessage,
        Event::CategorizedMessage,
        Event::OpenConnection,
        Event::DeliverMailItem,
        Event::CloseConnection,
    ];

    /// The event's name as Get-TransportAgent and the SDK spell it.
    pub fn name(self) -> String {
        format!("On{self:?}")
    }
}

/// What the organisation's configuration gives agents at an event.
pub struct Org<'a> {
    pub dir: &'a Directory,
    /// Mail flow rules, in priority order.
    pub rules: &'a [Rule],
}

/// A message as an agent sees it at a categorizer event.
pub struct MailItem<'a> {
    /// How the message entered the organisation (its AuthAs stamp).
    pub auth: AuthAs,
    /// The sender the agent judges by (SenderAddressLocation: the header's).
    pub sender: &'a str,
    /// The recipients resolved so far, in order.
    pub recipients: &'a [String],
    pub content: &'a [u8],
}

/// An agent's decision about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on unchanged.
    Continue,
    /// Go on with edits.
    Edit(Edits),
    /// Delete the message silently (DROP).
    Delete,
    /// Reject every recipient with this reply (FAIL, an NDR to the sender).
    Reject(Reply),
}

/// What an agent changed in a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    /// The new content, when the agent edited it.
    pub content: Option<Vec<u8>>,
    /// Recipients to add; the categorizer resolves and routes them with the others.
    pub add_recipients: Vec<String>,
}

/// An agent's answer at an event: its verdict, and the custom data of its AGENTINFO
/// row in message tracking when it reports one.
#[derive(Debug)]
pub struct Handled {
    pub verdict: Verdict,
    pub info: Option<String>,
}

impl Handled {
    /// Nothing to do and nothing to report.
    pub fn pass() -> Handled {
        Handled {
            verdict: Verdict::Continue,
            info: None,
        }
    }
}

/// A transport agent: what it is called, where it runs, and what it decides at each
/// event it lists in [`Agent::events`].
pub trait Agent: Send + Sync {
    /// Its identity, as Get-TransportAgent and message tracking (source-context) show it.
    fn identity(&self) -> &'static str;
    /// 1 runs first among agents on the same event.
    fn priority(&self) -> u32;
    fn events(&self) -> &'static [Event];
    /// A categorizer event (OnSubmittedMessage … OnCategorizedMessage) for one
    /// message; the default lets the message pass.
    fn on_message(&self, event: Event, org: &Org, item: &MailItem) -> Handled {
        let _ = (event, org, item);
        Handled::pass()
    }
}

/// The agents of the Transport service, in priority order.
pub fn installed() -> &'static [&'static dyn Agent] {
    &[&rules::TransportRuleAgent]
}

/// A row of Get-TransportAgent.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentInfo {
    pub identity: String,
    pub enabled: bool,
    pub priority: u32,
    pub events: Vec<String>,
}

/// Get-TransportAgent: the installed agents, in priority order.
pub fn agents() -> Vec<AgentInfo> {
    installed()
        .iter()
        .map(|a| AgentInfo {
            identity: a.identity().into(),
            enabled: true,
            priority: a.priority(),
            // In pipeline order, whatever order the agent lists them in.
            events: Event::ALL
                .iter()
                .filter(|e| a.events().contains(e))
                .map(|e| e.name())
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_list_shows_the_transport_rule_agent_at_on_resolved_message() {
        let list = agents();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].identity, "Transport Rule Agent");
        assert!(list[0].enabled);
        assert_eq!(list[0].priority, 1);
        assert_eq!(list[0].events, vec!["OnResolvedMessage".to_string()]);
    }

    #[test]
    fn installed_agents_are_in_priority_order() {
        let p: Vec<u32> = installed().iter().map(|a| a.priority()).collect();
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(p, sorted);
    }

    #[test]
    fn every_event_is_listed_once_in_pipeline_order() {
        let names: Vec<String> = Event::ALL.iter().map(|e| e.name()).collect();
        let at = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert!(at("OnConnect") < at("OnEndOfData"));
        assert!(at("OnEndOfData") < at("OnSubmittedMessage"));
        assert!(at("OnSubmittedMessage") < at("OnResolvedMessage"));
        assert!(at("OnResolvedMessage") < at("OnRoutedMessage"));
        assert!(at("OnRoutedMessage") < at("OnCategorizedMessage"));
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }
}

//! Transport agents (reference §9): code that runs at fixed events of the Transport
//! pipeline. mailflow's built-in agent is the Transport Rule agent (mail flow rules at
//! OnResolvedMessage); third-party agents are not supported.

pub mod rules;

use serde::Serialize;

/// A row of Get-TransportAgent.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentInfo {
    pub identity: String,
    pub enabled: bool,
    pub priority: u32,
    pub events: Vec<String>,
}

/// The agents of the Transport service, in priority order.
pub fn agents() -> Vec<AgentInfo> {
    vec![AgentInfo {
        identity: "Transport Rule Agent".into(),
        enabled: true,
        priority: 1,
        events: vec!["OnResolvedMessage".into()],
    }]
}

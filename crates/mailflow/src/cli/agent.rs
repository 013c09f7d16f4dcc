//! `mailflow agent list` (Get-TransportAgent): the Transport service's agents.

use std::process::ExitCode;

use clap::Subcommand;

use super::{Global, print_table};
use crate::transport::agents;

#[derive(Subcommand)]
pub enum AgentCommand {
    /// List the transport agents (Get-TransportAgent).
    List,
}

pub fn run(g: &Global, AgentCommand::List: AgentCommand) -> anyhow::Result<ExitCode> {
    let list = agents::agents();
    if g.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                a.identity.clone(),
                a.enabled.to_string(),
                a.priority.to_string(),
                a.events.join(", "),
            ]
        })
        .collect();
    print_table(&["Identity", "Enabled", "Priority", "Events"], &rows);
    Ok(ExitCode::SUCCESS)
}

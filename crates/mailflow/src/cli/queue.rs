//! `mailflow queue`: Get-Queue, Retry-Queue, Suspend-Queue, Resume-Queue through the
//! running server's admin API.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use super::{Global, print_json_table};
use crate::admin::client::escape;

#[derive(Subcommand)]
pub enum QueueCommand {
    /// List the queues (Get-Queue).
    List,
    /// Retry a queue in Retry now (Retry-Queue).
    Retry { identity: String },
    /// Suspend a queue (Suspend-Queue).
    Suspend { identity: String },
    /// Resume a suspended queue (Resume-Queue).
    Resume { identity: String },
}

pub fn run(g: &Global, cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    let admin = super::admin_client_for(g)?;
    let rows: Vec<Value> = match cmd {
        QueueCommand::List => admin.get("/api/queues")?.body_mut().read_json()?,
        QueueCommand::Retry { identity } => vec![
            admin
                .post(&format!("/api/queues/{}/retry", escape(&identity)))?
                .body_mut()
                .read_json()?,
        ],
        QueueCommand::Suspend { identity } => vec![
            admin
                .post(&format!("/api/queues/{}/suspend", escape(&identity)))?
                .body_mut()
                .read_json()?,
        ],
        QueueCommand::Resume { identity } => vec![
            admin
                .post(&format!("/api/queues/{}/resume", escape(&identity)))?
                .body_mut()
                .read_json()?,
        ],
    };
    if g.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_json_table(
        &[
            "Identity",
            "DeliveryType",
            "Status",
            "MessageCount",
            "NextHopDomain",
            "NextRetryTime",
            "LastError",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

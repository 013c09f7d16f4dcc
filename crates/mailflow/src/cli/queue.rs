//! `mailflow queue`: Get-Queue, Retry-Queue, Suspend-Queue, Resume-Queue through the
//! running server's admin API.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use super::{Global, load_directory, print_table};

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

/// The admin API base URL of the chosen server.
pub fn admin_url(g: &Global) -> anyhow::Result<String> {
    let dir = load_directory(g)?;
    let server = dir.choose_server(g.server.as_deref())?;
    let host = server
        .bind
        .as_deref()
        .filter(|b| *b != "0.0.0.0")
        .unwrap_or(&server.address);
    Ok(format!("http://{host}:{}", server.ports.admin))
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

pub fn run(g: &Global, cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    let base = admin_url(g)?;
    let unreachable = |e: ureq::Error| {
        anyhow::anyhow!(
            "cannot reach the server's admin API at {base}: {e} (is `mailflow serve` running?)"
        )
    };
    let rows: Vec<Value> = match cmd {
        QueueCommand::List => agent()
            .get(&format!("{base}/api/queues"))
            .call()
            .map_err(unreachable)?
            .body_mut()
            .read_json()?,
        QueueCommand::Retry { identity }
        | QueueCommand::Suspend { identity }
        | QueueCommand::Resume { identity }
            if false =>
        {
            let _ = identity;
            unreachable!()
        }
        other => {
            let (identity, action) = match other {
                QueueCommand::Retry { identity } => (identity, "retry"),
                QueueCommand::Suspend { identity } => (identity, "suspend"),
                QueueCommand::Resume { identity } => (identity, "resume"),
                QueueCommand::List => unreachable!(),
            };
            let id = identity.replace('\\', "%5C");
            let mut resp = agent()
                .post(&format!("{base}/api/queues/{id}/{action}"))
                .send_empty()
                .map_err(unreachable)?;
            if !resp.status().is_success() {
                anyhow::bail!("{}", resp.body_mut().read_to_string()?);
            }
            vec![resp.body_mut().read_json()?]
        }
    };
    if g.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = |v: &Value, k: &str| match &v[k] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|q| {
            [
                "Identity",
                "DeliveryType",
                "Status",
                "MessageCount",
                "NextHopDomain",
                "NextRetryTime",
                "LastError",
            ]
            .iter()
            .map(|k| s(q, k))
            .collect()
        })
        .collect();
    print_table(
        &[
            "Identity",
            "DeliveryType",
            "Status",
            "MessageCount",
            "NextHopDomain",
            "NextRetryTime",
            "LastError",
        ],
        &table,
    );
    Ok(ExitCode::SUCCESS)
}

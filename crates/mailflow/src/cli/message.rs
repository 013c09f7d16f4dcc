//! `mailflow message`: Get-Message, Remove-Message and Export-Message through the
//! running server's admin API.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use super::{Global, print_json_table};
use crate::admin::client::escape;

#[derive(Subcommand)]
pub enum MessageCommand {
    /// List queued messages (Get-Message), optionally of one queue.
    List {
        #[arg(long)]
        queue: Option<String>,
    },
    /// Remove a message from the delivery queues (Remove-Message); an NDR goes to the
    /// sender unless --without-ndr.
    Remove {
        identity: String,
        #[arg(long = "without-ndr")]
        without_ndr: bool,
    },
    /// Write a queued message as .eml (Export-Message).
    Export {
        identity: String,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

pub fn run(g: &Global, cmd: MessageCommand) -> anyhow::Result<ExitCode> {
    let admin = super::admin_client_for(g)?;
    match cmd {
        MessageCommand::List { queue } => {
            let path = match &queue {
                Some(q) => format!("/api/messages?queue={}", escape(q)),
                None => "/api/messages".to_string(),
            };
            let mut resp = admin.get(&path)?;
            let rows: Vec<Value> = resp.body_mut().read_json()?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            print_json_table(
                &[
                    "Identity",
                    "FromAddress",
                    "Status",
                    "Size",
                    "Subject",
                    "Recipients",
                    "LastError",
                ],
                &rows,
            );
        }
        MessageCommand::Remove {
            identity,
            without_ndr,
        } => {
            let path = format!(
                "/api/messages/{}/remove?ndr={}",
                escape(&identity),
                !without_ndr
            );
            let body = admin.post(&path)?.body_mut().read_to_string()?;
            println!("{body}");
        }
        MessageCommand::Export { identity, out } => {
            let mut resp = admin.get(&format!("/api/messages/{}/export", escape(&identity)))?;
            let bytes = resp.body_mut().with_config().limit(1 << 30).read_to_vec()?;
            std::fs::write(&out, &bytes)?;
            println!("{} bytes written to {}", bytes.len(), out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `mailflow message`: Get-Message, Remove-Message and Export-Message through the
//! running server's admin API.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use super::queue::{admin_url, agent};
use super::{Global, print_table};

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

fn escape(identity: &str) -> String {
    identity.replace('\\', "%5C")
}

pub fn run(g: &Global, cmd: MessageCommand) -> anyhow::Result<ExitCode> {
    let base = admin_url(g)?;
    let unreachable = |e: ureq::Error| {
        anyhow::anyhow!(
            "cannot reach the server's admin API at {base}: {e} (is `mailflow serve` running?)"
        )
    };
    match cmd {
        MessageCommand::List { queue } => {
            let url = match &queue {
                Some(q) => format!("{base}/api/messages?queue={}", escape(q)),
                None => format!("{base}/api/messages"),
            };
            let mut resp = agent().get(&url).call().map_err(unreachable)?;
            if !resp.status().is_success() {
                anyhow::bail!("{}", resp.body_mut().read_to_string()?);
            }
            let rows: Vec<Value> = resp.body_mut().read_json()?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            let s = |v: &Value| match v {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(";"),
                other => other.to_string(),
            };
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|m| {
                    [
                        "Identity",
                        "FromAddress",
                        "Status",
                        "Size",
                        "Subject",
                        "Recipients",
                        "LastError",
                    ]
                    .iter()
                    .map(|k| s(&m[*k]))
                    .collect()
                })
                .collect();
            print_table(
                &[
                    "Identity",
                    "FromAddress",
                    "Status",
                    "Size",
                    "Subject",
                    "Recipients",
                    "LastError",
                ],
                &table,
            );
        }
        MessageCommand::Remove {
            identity,
            without_ndr,
        } => {
            let url = format!(
                "{base}/api/messages/{}/remove?ndr={}",
                escape(&identity),
                !without_ndr
            );
            let mut resp = agent().post(&url).send_empty().map_err(unreachable)?;
            let body = resp.body_mut().read_to_string()?;
            if !resp.status().is_success() {
                anyhow::bail!("{body}");
            }
            println!("{body}");
        }
        MessageCommand::Export { identity, out } => {
            let url = format!("{base}/api/messages/{}/export", escape(&identity));
            let mut resp = agent().get(&url).call().map_err(unreachable)?;
            if !resp.status().is_success() {
                anyhow::bail!("{}", resp.body_mut().read_to_string()?);
            }
            let bytes = resp.body_mut().with_config().limit(1 << 30).read_to_vec()?;
            std::fs::write(&out, &bytes)?;
            println!("{} bytes written to {}", bytes.len(), out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! The command line (DESIGN §5): one module per command group, named after the
//! Exchange cmdlets they mirror.

mod admin_token;
mod agent;
mod check_config;
mod connector;
mod database;
mod init;
mod mailbox;
mod message;
mod queue;
mod reload;
mod route;
mod serve;
mod service;
mod test_mailflow;
mod track;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::admin::client::AdminClient;
use crate::directory::{Directory, builtin};

#[derive(Parser)]
#[command(
    name = "mailflow",
    version,
    about = "An organisation mail server built on the Exchange transport pipeline"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// The organisation file (default ./mailflow.toml, else the built-in organisation).
    #[arg(long, global = true, env = "MAILFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// The server to act on (default: the only server).
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run every service of one server.
    Serve,
    /// Write a working single-server organisation file.
    Init(init::InitArgs),
    /// Validate an organisation file.
    CheckConfig,
    /// Search the message tracking logs (Get-MessageTrackingLog).
    Track(track::TrackArgs),
    /// Transport queues (Get-Queue, Retry-Queue, Suspend-Queue, Resume-Queue).
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Queued messages (Get-Message, Remove-Message, Export-Message).
    #[command(subcommand)]
    Message(message::MessageCommand),
    /// Mailboxes (Get-Mailbox, New-MailboxExportRequest).
    #[command(subcommand)]
    Mailbox(mailbox::MailboxCommand),
    /// Receive and send connectors, implicit ones included (Get-ReceiveConnector,
    /// Get-SendConnector).
    #[command(subcommand)]
    Connector(connector::ConnectorCommand),
    /// Transport agents (Get-TransportAgent).
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// The routing table (destination, delivery group, next hop, cost, path).
    #[command(subcommand)]
    Route(route::RouteCommand),
    /// Mailbox databases (Move-ActiveMailboxDatabase).
    #[command(subcommand)]
    Database(database::DatabaseCommand),
    /// Send a probe and follow it hop by hop in the tracking logs (Test-Mailflow).
    TestMailflow(test_mailflow::TestMailflowArgs),
    /// Make running servers read the organisation file again (each, or `--server`).
    Reload,
    /// The server's transport services (Get-Service, Stop-Service, Start-Service
    /// MSExchangeTransport).
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// The admin API's operator tokens (`admin token create|list|revoke`).
    #[command(subcommand)]
    Admin(admin_token::AdminCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = cli.global;
    match cli.command {
        Command::Serve => serve::run(&g),
        Command::Init(a) => init::run(&g, a),
        Command::CheckConfig => check_config::run(&g),
        Command::Track(a) => track::run(&g, a),
        Command::Queue(c) => queue::run(&g, c),
        Command::Message(c) => message::run(&g, c),
        Command::Mailbox(c) => mailbox::run(&g, c),
        Command::Route(c) => route::run(&g, c),
        Command::Agent(c) => agent::run(&g, c),
        Command::Connector(c) => connector::run(&g, c),
        Command::Database(c) => database::run(&g, c),
        Command::TestMailflow(a) => test_mailflow::run(&g, a),
        Command::Reload => reload::run(&g),
        Command::Service(c) => service::run(&g, c),
        Command::Admin(c) => admin_token::run(&g, c),
    }
}

/// Loads the organisation: `--config`, else `./mailflow.toml`, else the built-in one.
/// The admin API client for the chosen server (`--server`, else the only one).
pub fn admin_client_for(g: &Global) -> anyhow::Result<AdminClient> {
    let dir = load_directory(g)?;
    let server = dir.choose_server(g.server.as_deref())?.clone();
    AdminClient::new(&dir, &server)
}

pub fn load_directory(g: &Global) -> anyhow::Result<Directory> {
    let path = match &g.config {
        Some(p) => Some(p.clone()),
        None if Path::new("mailflow.toml").exists() => Some(PathBuf::from("mailflow.toml")),
        None => None,
    };
    match path {
        Some(p) => Directory::load(&p).map_err(|e| anyhow::anyhow!("{e}")),
        None => Directory::parse(&builtin::builtin_text(), "<built-in>", PathBuf::from("."))
            .map_err(|e| anyhow::anyhow!("{e}")),
    }
}

/// Prints objects from the admin API as a table of `columns`, each a key of the
/// object (see [`json_cells`]).
pub fn print_json_table(columns: &[&str], rows: &[serde_json::Value]) {
    print_table(columns, &json_cells(columns, rows));
}

/// The cells of `columns` of each object: text as it is, a list of texts joined with
/// `;`, null as nothing, anything else as JSON.
fn json_cells(columns: &[&str], rows: &[serde_json::Value]) -> Vec<Vec<String>> {
    use serde_json::Value;
    let cell = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(";"),
        other => other.to_string(),
    };
    rows.iter()
        .map(|row| columns.iter().map(|k| cell(&row[*k])).collect())
        .collect()
}

/// Prints rows as an aligned table with a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{:<w$}  ", c, w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in rows {
        line(row.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_cells_show_text_lists_and_nulls_as_operators_read_them() {
        let rows = vec![serde_json::json!({
            "Identity": "MBX1\\3",
            "Size": 120,
            "Recipients": ["a@contoso.test", "b@contoso.test"],
            "LastError": null,
        })];
        let cells = json_cells(
            &["Identity", "Size", "Recipients", "LastError", "Missing"],
            &rows,
        );
        assert_eq!(
            cells,
            vec![vec![
                "MBX1\\3".to_string(),
                "120".into(),
                "a@contoso.test;b@contoso.test".into(),
                String::new(),
                String::new(),
            ]]
        );
    }
}

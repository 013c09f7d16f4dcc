//! `mailflow service list|stop|start` (Get-Service, Stop-Service, Start-Service): the
//! transport services of the running server (`--server`), through its admin API. Only
//! Transport (MSExchangeTransport) stops alone: its ports refuse connections, its queues
//! wait, and the Front End and Mailbox Transport Submission of that server hand mail to
//! another server's Transport until `service start transport`.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use super::{Global, print_json_table};
use crate::admin::client::escape;
use crate::admin::services::Service;

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Each transport service of the server, Running or Stopped (Get-Service).
    List,
    /// Stop a service (Stop-Service MSExchangeTransport): `transport`.
    Stop {
        /// `transport` or `MSExchangeTransport`.
        name: String,
    },
    /// Start a stopped service again (Start-Service MSExchangeTransport): `transport`.
    Start {
        /// `transport` or `MSExchangeTransport`.
        name: String,
    },
}

pub fn run(g: &Global, cmd: ServiceCommand) -> anyhow::Result<ExitCode> {
    let action = |name: &str, verb: &str| -> anyhow::Result<String> {
        let service = Service::parse(name).ok_or_else(|| {
            anyhow::anyhow!(
                "no service {name:?}: one of {}",
                Service::ALL.map(|s| s.name()).join(", ")
            )
        })?;
        anyhow::ensure!(
            service.can_stop(),
            "{} cannot {verb} alone: only MSExchangeTransport (`transport`) can",
            service.name()
        );
        Ok(format!("/api/services/{}/{verb}", escape(service.name())))
    };
    let rows: Vec<Value> = match cmd {
        ServiceCommand::List => {
            let admin = super::admin_client_for(g)?;
            admin.get("/api/services")?.body_mut().read_json()?
        }
        ServiceCommand::Stop { name } => {
            let path = action(&name, "stop")?;
            let admin = super::admin_client_for(g)?;
            vec![admin.post(&path)?.body_mut().read_json()?]
        }
        ServiceCommand::Start { name } => {
            let path = action(&name, "start")?;
            let admin = super::admin_client_for(g)?;
            vec![admin.post(&path)?.body_mut().read_json()?]
        }
    };
    if g.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_json_table(&["Server", "Status", "Name", "DisplayName"], &rows);
    Ok(ExitCode::SUCCESS)
}

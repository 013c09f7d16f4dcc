//! `mailflow route show`: the routing table of a server (destination, delivery group,
//! next hop, cost, path), computed from the organisation file and the server's recorded
//! active copies, so it works with the server stopped; with `--live`, the table the
//! running server routes by (it differs from the file until `mailflow reload`).

use std::process::ExitCode;

use clap::Subcommand;

use super::{Global, load_directory, print_table};
use crate::directory::active_copies::ActiveCopies;
use crate::directory::topology::Topology;
use crate::transport::routing::RoutingView;

#[derive(Subcommand)]
pub enum RouteCommand {
    /// Show the routing table of a server.
    Show {
        /// Ask the running server (its admin API) instead of reading the file.
        #[arg(long)]
        live: bool,
    },
}

pub fn run(g: &Global, RouteCommand::Show { live }: RouteCommand) -> anyhow::Result<ExitCode> {
    let table: Vec<serde_json::Value> = if live {
        let admin = super::admin_client_for(g)?;
        admin.get("/api/routes")?.body_mut().read_json()?
    } else {
        let dir = load_directory(g)?;
        let server = dir.choose_server(g.server.as_deref())?;
        let topology = Topology::new(&dir);
        let active = ActiveCopies::recorded(&dir, &dir.data_dir(server));
        let view = RoutingView {
            dir: &dir,
            topology: &topology,
            active: &active,
            local: server,
        };
        serde_json::from_value(serde_json::to_value(view.table())?)?
    };
    if g.json {
        println!("{}", serde_json::to_string_pretty(&table)?);
        return Ok(ExitCode::SUCCESS);
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = table
        .iter()
        .map(|r| {
            let path: Vec<String> = r["Path"]
                .as_array()
                .map(|p| p.iter().map(text).collect())
                .unwrap_or_default();
            vec![
                text(&r["Destination"]),
                text(&r["DeliveryGroup"]),
                text(&r["NextHop"]),
                text(&r["Cost"]),
                text(&r["AddressSpace"]),
                path.join(" > "),
            ]
        })
        .collect();
    print_table(
        &[
            "Destination",
            "DeliveryGroup",
            "NextHop",
            "Cost",
            "AddressSpace",
            "Path",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

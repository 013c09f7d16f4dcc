//! `mailflow route show`: the routing table of a server (destination, delivery group,
//! next hop, cost, path), computed from the organisation file and the server's recorded
//! active copies, so it works with the server stopped.

use std::process::ExitCode;

use clap::Subcommand;

use super::{Global, load_directory, print_table};
use crate::context::ActiveCopies;
use crate::transport::routing::RoutingView;
use crate::transport::routing::topology::Topology;

#[derive(Subcommand)]
pub enum RouteCommand {
    /// Show the routing table of a server.
    Show,
}

pub fn run(g: &Global, RouteCommand::Show: RouteCommand) -> anyhow::Result<ExitCode> {
    let dir = load_directory(g)?;
    let server = dir.choose_server(g.server.as_deref())?;
    let topology = Topology::new(&dir);
    let active = ActiveCopies::with_state(&dir, dir.data_dir(server).join("active-copies.json"));
    let view = RoutingView {
        dir: &dir,
        topology: &topology,
        active: &active,
        local: server,
    };
    let table = view.table();
    if g.json {
        println!("{}", serde_json::to_string_pretty(&table)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = table
        .iter()
        .map(|r| {
            vec![
                r.destination.clone(),
                r.delivery_group.clone(),
                r.next_hop_text.clone(),
                r.cost.to_string(),
                r.path.join(" > "),
            ]
        })
        .collect();
    print_table(
        &["Destination", "DeliveryGroup", "NextHop", "Cost", "Path"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

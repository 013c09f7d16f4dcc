//! `mailflow database move DB --to SERVER` (Move-ActiveMailboxDatabase): tells every
//! server of the organisation, through its admin API, which copy is now active. The old
//! active server is told first, so it stops accepting deliveries before the new one
//! starts; a server that is down is reported and learns nothing (it keeps its recorded
//! state until told again).

use std::process::ExitCode;

use clap::Subcommand;

use super::{Global, load_directory};

#[derive(Subcommand)]
pub enum DatabaseCommand {
    /// Make the copy on SERVER the active copy of DB.
    Move {
        database: String,
        #[arg(long = "to")]
        to: String,
    },
}

pub fn run(g: &Global, cmd: DatabaseCommand) -> anyhow::Result<ExitCode> {
    let DatabaseCommand::Move { database, to } = cmd;
    let dir = load_directory(g)?;
    let db = dir
        .database(&database)
        .ok_or_else(|| anyhow::anyhow!("{}: no database {database:?}", dir.source))?;
    let target = db
        .copies
        .iter()
        .find(|c| c.eq_ignore_ascii_case(&to))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "database {} has no copy on {to:?} (copies: {})",
                db.name,
                db.copies.join(", ")
            )
        })?;
    // The servers with a copy first (the current active one leads), then the rest.
    let mut servers: Vec<_> = dir.servers().collect();
    servers.sort_by_key(|s| {
        (
            db.copies
                .iter()
                .position(|c| c.eq_ignore_ascii_case(&s.name))
                .unwrap_or(usize::MAX),
            s.name.clone(),
        )
    });
    let mut failures = 0;
    for s in servers {
        let admin = crate::admin::client::AdminClient::new(&dir, s)?;
        match admin.post(&format!("/api/databases/{}/activate/{}", db.name, target)) {
            Ok(_) => println!("{}: active copy of {} is now on {target}", s.name, db.name),
            Err(e) => {
                failures += 1;
                println!(
                    "{}: {e}; it keeps its previous view until told again",
                    s.name
                );
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

//! `mailflow check-config`: validate the organisation file; every error names file,
//! line and key.

use std::process::ExitCode;

use super::Global;
use crate::directory::Directory;

pub fn run(g: &Global) -> anyhow::Result<ExitCode> {
    let Some(path) = g.config.clone().or_else(|| Some("mailflow.toml".into())) else {
        unreachable!()
    };
    match Directory::load(&path) {
        Ok(d) => {
            println!(
                "{}: OK ({} servers, {} databases, {} mailboxes, {} groups, {} send connectors)",
                path.display(),
                d.org.servers.len(),
                d.org.databases.len(),
                d.org.mailboxes.len(),
                d.org.groups.len(),
                d.org.send_connectors.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

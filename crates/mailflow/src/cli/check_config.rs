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
                d.server_count(),
                d.databases().count(),
                d.mailboxes().count(),
                d.groups().count(),
                d.send_connectors().count()
            );
            // Warnings, not errors: a file made before the organisation CA keeps working.
            for w in trust_warnings(&d, &path) {
                eprintln!("{w}");
            }
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

/// What the organisation's trust lacks (DESIGN §7): no CA (a file made before it
/// existed: the upgrade command), or a CA certificate that cannot be read.
fn trust_warnings(d: &Directory, path: &std::path::Path) -> Vec<String> {
    match d.org_ca_certificate_path() {
        None => vec![crate::net::orgca::legacy_warning(path)],
        Some(ca) => match crate::directory::ca_file::read_ca_file(&ca) {
            Ok(_) => Vec::new(),
            Err(e) => vec![format!(
                "warning: {}: [organization] ca_certificate: {e}",
                path.display()
            )],
        },
    }
}

//! `mailflow admin token create|list|revoke`: per-operator tokens for the admin API.
//! They live in `admin-tokens.json` beside the organisation file (hashed, 0600), which
//! running servers read again when it changes: no reload is needed, and a revoked
//! token is refused at its next request. Whoever can write that file can let people
//! in, as whoever can write the organisation file can.

use std::process::ExitCode;

use clap::Subcommand;

use super::{Global, load_directory, print_table};
use crate::admin::tokens::{TokenFile, tokens_path};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Admin API tokens for operators (each named; the server log names who did what).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once and never stored (only its SHA-256 is).
    Create {
        /// Who the token is for (letters, digits, `._@-`).
        #[arg(long)]
        name: String,
    },
    /// The tokens: name, id, when made, last four characters, revoked or not.
    List,
    /// Revoke the active token of a name (or with an id); at once on every server
    /// reading this file.
    Revoke {
        /// The token's name or id.
        name: String,
    },
}

pub fn run(g: &Global, c: AdminCommand) -> anyhow::Result<ExitCode> {
    let AdminCommand::Token(c) = c;
    let dir = load_directory(g)?;
    if dir.file.is_none() {
        anyhow::bail!(
            "admin tokens are kept beside the organisation file: name it with --config (or run where mailflow.toml is)"
        );
    }
    let path = tokens_path(&dir);
    let mut file = TokenFile::read(&path)?;
    match c {
        TokenCommand::Create { name } => {
            let token = file.create(&name)?;
            file.write(&path)?;
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({ "Name": name, "Token": token, "File": path })
                );
            } else {
                eprintln!(
                    "admin token {name:?} created in {} (shown once; set it as MAILFLOW_ADMIN_TOKEN):",
                    path.display()
                );
                println!("{token}");
            }
        }
        TokenCommand::List => {
            if g.json {
                let rows: Vec<_> = file
                    .tokens
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "Name": t.name, "Id": t.id, "Created": t.created,
                            "LastCharacters": t.last4, "Revoked": t.revoked,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let rows: Vec<Vec<String>> = file
                    .tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.id.clone(),
                            t.created.clone(),
                            format!("…{}", t.last4),
                            match &t.revoked {
                                Some(when) => format!("revoked {when}"),
                                None => "active".into(),
                            },
                        ]
                    })
                    .collect();
                print_table(&["Name", "Id", "Created", "Token", "Status"], &rows);
            }
        }
        TokenCommand::Revoke { name } => {
            if file.revoke(&name) == 0 {
                anyhow::bail!(
                    "no active admin token named {name:?} (or with that id) in {}",
                    path.display()
                );
            }
            file.write(&path)?;
            println!("admin token {name:?} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

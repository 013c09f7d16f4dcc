//! `mailflow init`: write a working single-server organisation, its secret and a
//! self-signed certificate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::directory::builtin::{SingleServer, render};
use crate::directory::{Directory, Ports};
use crate::net::orgauth::OrgSecret;

#[derive(Args)]
pub struct InitArgs {
    /// The organisation's accepted domain.
    #[arg(long)]
    domain: String,
    /// The server's name (NetBIOS-style, e.g. MBX1).
    #[arg(long)]
    server: String,
    /// Folder for mailflow.toml, the secret, certificates and data.
    #[arg(long)]
    dir: PathBuf,
    /// A mailbox to create (repeatable).
    #[arg(long = "mailbox")]
    mailboxes: Vec<String>,
    /// The address other servers reach this one at.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Overwrite an existing mailflow.toml.
    #[arg(long)]
    force: bool,
}

pub fn run(a: InitArgs) -> anyhow::Result<ExitCode> {
    let file = a.dir.join("mailflow.toml");
    if file.exists() && !a.force {
        anyhow::bail!("{} exists; use --force to overwrite it", file.display());
    }
    crate::files::create_private_dir_all(&a.dir)?;
    let mailboxes: Vec<String> = if a.mailboxes.is_empty() {
        vec![format!("administrator@{}", a.domain)]
    } else {
        a.mailboxes.clone()
    };
    let server = a.server.as_str();
    let cert = format!("certs/{}.pem", server.to_lowercase());
    let key = format!("certs/{}.key", server.to_lowercase());
    let data_dir = format!("data/{server}");
    let text = render(&SingleServer {
        domain: &a.domain,
        server,
        mailboxes: &mailboxes,
        ports: Ports::default(),
        address: &a.address,
        data_dir: &data_dir,
        secret_file: "secret.key",
        tls: Some((&cert, &key)),
    });
    // Validate before writing, so a bad --domain or --mailbox never leaves a broken file.
    Directory::parse(&text, &file.display().to_string(), a.dir.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::files::replace_preserving_mode(&file, text.as_bytes())?;
    OrgSecret::load(&a.dir.join("secret.key"), true)?;
    let fqdn = format!("{}.{}", server.to_lowercase(), a.domain);
    crate::net::tls::ensure_self_signed(&a.dir.join(&cert), &a.dir.join(&key), &fqdn)?;
    println!(
        "Wrote {} (server {server}, domain {}, {} mailboxes)",
        file.display(),
        a.domain,
        mailboxes.len()
    );
    println!("Start it with: mailflow serve --config {}", file.display());
    Ok(ExitCode::SUCCESS)
}

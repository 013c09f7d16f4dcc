//! `mailflow init`: write a working single-server organisation, its secret, the
//! organisation CA and the server's certificate signed by it (DESIGN §7); then issue
//! certificates for the organisation's other servers (`--add-server`) and give a file
//! made before the CA existed its CA (`--add-ca`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::Global;
use crate::directory::builtin::{SingleServer, render};
use crate::directory::{Directory, Ports};
use crate::net::orgauth::OrgSecret;
use crate::net::orgca;

/// Where `init` puts the CA, relative to the organisation file.
const CA_CERT: &str = "ca/org-ca.pem";
const CA_KEY: &str = "ca/org-ca.key";

#[derive(Args)]
pub struct InitArgs {
    /// The organisation's accepted domain.
    #[arg(long, required_unless_present_any = ["add_server", "add_ca"])]
    domain: Option<String>,
    /// The server's name (NetBIOS-style, e.g. MBX1).
    #[arg(long, required_unless_present_any = ["add_server", "add_ca"])]
    server: Option<String>,
    /// Folder for mailflow.toml, the secret, the CA, certificates and data.
    #[arg(long, required_unless_present_any = ["add_server", "add_ca"])]
    dir: Option<PathBuf>,
    /// A mailbox to create (repeatable).
    #[arg(long = "mailbox")]
    mailboxes: Vec<String>,
    /// The address other servers reach this one at.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Overwrite an existing mailflow.toml.
    #[arg(long)]
    force: bool,
    /// Issue (or reissue) the certificate of the `[[servers]]` entry NAME of the
    /// organisation file `--config`, signed by the organisation CA.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with_all = ["domain", "server", "dir", "mailboxes", "force", "add_ca"]
    )]
    add_server: Option<String>,
    /// Upgrade the organisation file `--config` made before the organisation CA: make
    /// the CA, name it in [organization], and issue a certificate to every server whose
    /// certificate is missing or not signed by it.
    #[arg(long, conflicts_with_all = ["domain", "server", "dir", "mailboxes", "force"])]
    add_ca: bool,
}

pub fn run(g: &Global, a: InitArgs) -> anyhow::Result<ExitCode> {
    if a.add_ca || a.add_server.is_some() {
        let file = g.config.clone().ok_or_else(|| {
            anyhow::anyhow!("--add-ca and --add-server need the organisation file: --config FILE")
        })?;
        return match &a.add_server {
            Some(name) => add_server(&file, name),
            None => add_ca(&file),
        };
    }
    let (Some(domain), Some(server), Some(dir)) = (&a.domain, &a.server, &a.dir) else {
        anyhow::bail!("mailflow init needs --domain, --server and --dir");
    };
    let file = dir.join("mailflow.toml");
    if file.exists() && !a.force {
        anyhow::bail!("{} exists; use --force to overwrite it", file.display());
    }
    crate::files::create_private_dir_all(dir)?;
    let mailboxes: Vec<String> = if a.mailboxes.is_empty() {
        vec![format!("administrator@{domain}")]
    } else {
        a.mailboxes.clone()
    };
    let server = server.as_str();
    let cert = format!("certs/{}.pem", server.to_lowercase());
    let key = format!("certs/{}.key", server.to_lowercase());
    let data_dir = format!("data/{server}");
    let text = render(&SingleServer {
        domain,
        server,
        mailboxes: &mailboxes,
        ports: Ports::default(),
        address: &a.address,
        data_dir: &data_dir,
        secret_file: "secret.key",
        tls: Some((&cert, &key)),
        ca: Some((CA_CERT, CA_KEY)),
    });
    // Validate before writing, so a bad --domain or --mailbox never leaves a broken file.
    let parsed = Directory::parse(&text, &file.display().to_string(), dir.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let org = parsed.organization().name.clone();
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    // `--force` over an organisation that has its CA keeps it: the other servers'
    // certificates stay valid.
    if !(ca_cert.exists() && ca_key.exists()) {
        orgca::create_ca(&ca_cert, &ca_key, &org)?;
    }
    let entry = parsed
        .server(server)
        .ok_or_else(|| anyhow::anyhow!("server {server} missing from the generated file"))?;
    orgca::issue_server_certificate(&ca_cert, &ca_key, entry, &dir.join(&cert), &dir.join(&key))?;
    crate::files::replace_preserving_mode(&file, text.as_bytes())?;
    OrgSecret::load(&dir.join("secret.key"), true)?;
    println!(
        "Wrote {} (server {server}, domain {domain}, {} mailboxes)",
        file.display(),
        mailboxes.len()
    );
    println!(
        "Organisation CA: {} (its key {} issues certificates: keep it off the servers once they have theirs)",
        ca_cert.display(),
        ca_key.display()
    );
    println!("Start it with: mailflow serve --config {}", file.display());
    Ok(ExitCode::SUCCESS)
}

/// The organisation file as text and validated.
fn load(file: &Path) -> anyhow::Result<(String, Directory)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let dir = Directory::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((text, dir))
}

/// Adds `tls_certificate = "certs/<name>.pem"` / `tls_key` to the `[[servers]]` entry
/// `name` where it names neither, keeping the rest of the text (comments, order).
/// Returns whether the text changed.
fn add_cert_keys(doc: &mut toml_edit::DocumentMut, name: &str) -> anyhow::Result<bool> {
    let entries = doc
        .get_mut("servers")
        .and_then(|s| s.as_array_of_tables_mut())
        .ok_or_else(|| anyhow::anyhow!("the file has no [[servers]]"))?;
    let entry = entries
        .iter_mut()
        .find(|t| {
            t.get("name")
                .and_then(|v| v.as_str())
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .ok_or_else(|| anyhow::anyhow!("no [[servers]] entry named {name}"))?;
    if entry.contains_key("tls_certificate") && entry.contains_key("tls_key") {
        return Ok(false);
    }
    let lower = name.to_lowercase();
    entry["tls_certificate"] = toml_edit::value(format!("certs/{lower}.pem"));
    entry["tls_key"] = toml_edit::value(format!("certs/{lower}.key"));
    Ok(true)
}

/// Validates the edited text, then lets `issue` make the files the new text names,
/// and writes the text last (a failure leaves the file as it was).
fn commit(
    file: &Path,
    old: &str,
    doc: &toml_edit::DocumentMut,
    issue: impl FnOnce(&Directory) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let text = doc.to_string();
    let mut dir = Directory::parse(&text, &file.display().to_string(), base_dir(file))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    dir.file = Some(file.to_path_buf());
    issue(&dir)?;
    if text != old {
        crate::files::replace_preserving_mode(file, text.as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
        println!("Updated {}", file.display());
    }
    Ok(())
}

fn base_dir(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The CA's certificate and key paths of `dir`, both required.
fn ca_paths(dir: &Directory, file: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    match (dir.org_ca_certificate_path(), dir.org_ca_key_path()) {
        (Some(c), Some(k)) => Ok((c, k)),
        (None, _) => anyhow::bail!(
            "{}: [organization] has no ca_certificate; add the organisation CA first with: {}",
            file.display(),
            orgca::upgrade_command(file)
        ),
        (Some(_), None) => anyhow::bail!(
            "{}: [organization] ca_key is not set: certificates are issued where the CA key is",
            file.display()
        ),
    }
}

/// `--add-server NAME`: issue NAME's certificate from the CA (the old pair kept as
/// `.old`), at the paths its entry names, else at `certs/<name>.pem|.key` (added to
/// the entry).
fn add_server(file: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let (text, dir) = load(file)?;
    ca_paths(&dir, file)?;
    let Some(server) = dir.server(name) else {
        let names: Vec<&str> = dir.servers().map(|s| s.name.as_str()).collect();
        anyhow::bail!(
            "{}: no [[servers]] entry named {name} (the servers are: {})",
            file.display(),
            names.join(", ")
        );
    };
    let name = server.name.clone();
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("parsing {}", file.display()))?;
    add_cert_keys(&mut doc, &name)?;
    commit(file, &text, &doc, |dir| {
        let (ca_cert, ca_key) = ca_paths(dir, file)?;
        let server = dir
            .server(&name)
            .ok_or_else(|| anyhow::anyhow!("server {name} vanished"))?;
        let (cert, key) = orgca::server_cert_paths(dir, server);
        orgca::issue_server_certificate(&ca_cert, &ca_key, server, &cert, &key)?;
        println!(
            "Issued {} and {} for {name} ({}), signed by {}",
            cert.display(),
            key.display(),
            server.fqdn,
            ca_cert.display()
        );
        Ok(())
    })?;
    println!("Copy them to {name}'s machine if it runs elsewhere, then restart it.");
    Ok(ExitCode::SUCCESS)
}

/// `--add-ca`: the one upgrade command for a file made before the CA. Makes the CA
/// (unless the files it names exist), adds `ca_certificate` / `ca_key` to
/// [organization], and issues a certificate to every server whose certificate is
/// missing or does not verify against the CA for its fqdn. Running it again changes
/// nothing.
fn add_ca(file: &Path) -> anyhow::Result<ExitCode> {
    let (text, dir) = load(file)?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("parsing {}", file.display()))?;
    {
        let org = doc
            .get_mut("organization")
            .and_then(|o| o.as_table_mut())
            .ok_or_else(|| anyhow::anyhow!("{}: no [organization] table", file.display()))?;
        if !org.contains_key("ca_certificate") {
            org["ca_certificate"] = toml_edit::value(CA_CERT);
        }
        if !org.contains_key("ca_key") {
            org["ca_key"] = toml_edit::value(CA_KEY);
        }
    }
    let names: Vec<String> = dir.servers().map(|s| s.name.clone()).collect();
    for name in &names {
        add_cert_keys(&mut doc, name)?;
    }
    let org_name = dir.organization().name.clone();
    let mut ca_shown = PathBuf::new();
    commit(file, &text, &doc, |dir| {
        let (ca_cert, ca_key) = ca_paths(dir, file)?;
        ca_shown = ca_cert.clone();
        match (ca_cert.exists(), ca_key.exists()) {
            (true, true) => println!("Organisation CA: {} (kept)", ca_cert.display()),
            (false, false) => {
                orgca::create_ca(&ca_cert, &ca_key, &org_name)?;
                println!("Organisation CA: {} (new)", ca_cert.display());
            }
            (true, false) => anyhow::bail!(
                "{} exists but its key {} does not",
                ca_cert.display(),
                ca_key.display()
            ),
            (false, true) => anyhow::bail!(
                "{} exists but its certificate {} does not",
                ca_key.display(),
                ca_cert.display()
            ),
        }
        for server in dir.servers() {
            let (cert, key) = orgca::server_cert_paths(dir, server);
            let good = key.exists()
                && orgca::check_server_certificate(&cert, &ca_cert, &server.fqdn).is_ok();
            if good {
                println!(
                    "{}: {} is signed by the CA (kept)",
                    server.name,
                    cert.display()
                );
                continue;
            }
            orgca::issue_server_certificate(&ca_cert, &ca_key, server, &cert, &key)?;
            println!(
                "{}: issued {} and {} (the previous files, if any, are kept as .old)",
                server.name,
                cert.display(),
                key.display()
            );
        }
        Ok(())
    })?;
    println!(
        "Copy each server's certificate and key, and {}, to its machine if it runs elsewhere, then restart every server: internal hops are verified once all of them have restarted.",
        ca_shown.display()
    );
    Ok(ExitCode::SUCCESS)
}

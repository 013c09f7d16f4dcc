//! `mailflow mailbox`: Get-Mailbox and an export like New-MailboxExportRequest, read
//! straight from the mailbox databases (works with the server stopped).

use std::process::ExitCode;

use clap::Subcommand;

use super::{Global, load_directory, print_table};
use crate::directory::{Directory, StoreSpec};
use crate::mailbox::store::{Folder, MailboxStore, open_store};

#[derive(Subcommand)]
pub enum MailboxCommand {
    /// List mailboxes with their database and item counts (Get-Mailbox).
    List,
    /// Put a message in a mailbox's Outbox, as a client would; Mailbox Transport
    /// Submission sends it and moves it to Sent Items.
    Send {
        address: String,
        #[arg(long)]
        eml: std::path::PathBuf,
    },
    /// Set a mailbox's password for client submission (Set-Mailbox -Password): the
    /// argon2 hash goes into the organisation file; running servers pick it up. The
    /// password is read from standard input unless --password is given.
    SetPassword {
        address: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Write one .eml per message of a folder, bytes as delivered.
    Export {
        address: String,
        #[arg(long, default_value = "Inbox")]
        folder: String,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// Opens the database file of `database` on the server holding its first copy.
/// The file of the database's active copy, as its servers recorded it (SQLite copies
/// are separate files; a switchover moves new mail to another one).
fn active_copy_path(dir: &Directory, db: &crate::directory::Database) -> std::path::PathBuf {
    let server = db
        .copies
        .iter()
        .filter_map(|s| dir.server(s))
        .map(|s| crate::directory::active_copies::ActiveCopies::recorded(dir, &dir.data_dir(s)))
        .find_map(|a| a.active_server(&db.name))
        .and_then(|name| dir.server(&name))
        .or_else(|| db.copies.first().and_then(|s| dir.server(s)));
    let data = server
        .map(|s| dir.data_dir(s))
        .unwrap_or_else(|| dir.path("."));
    data.join("Databases").join(format!("{}.db", db.name))
}

fn open_database(
    dir: &Directory,
    database: &str,
) -> anyhow::Result<Option<std::sync::Arc<dyn MailboxStore>>> {
    let db = dir
        .database(database)
        .ok_or_else(|| anyhow::anyhow!("unknown database {database:?}"))?;
    let path = active_copy_path(dir, db);
    if db.store == StoreSpec::Sqlite && !path.exists() {
        return Ok(None);
    }
    Ok(Some(open_store(&db.store, &db.name, &path).map_err(
        |e| anyhow::anyhow!("database {}: {e}", db.name),
    )?))
}

pub fn run(g: &Global, cmd: MailboxCommand) -> anyhow::Result<ExitCode> {
    let dir = load_directory(g)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            MailboxCommand::List => list(&dir, g.json).await,
            MailboxCommand::Export {
                address,
                folder,
                out,
            } => export(&dir, &address, &folder, &out).await,
            MailboxCommand::Send { address, eml } => send(&dir, &address, &eml).await,
            MailboxCommand::SetPassword { address, password } => {
                set_password(&dir, &address, password)
            }
        }
    })
}

async fn list(dir: &Directory, json: bool) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for db in dir.databases() {
        let counts = match open_database(dir, &db.name)? {
            Some(store) => store.counts().await.map_err(|e| anyhow::anyhow!("{e}"))?,
            None => Vec::new(),
        };
        for m in dir
            .mailboxes()
            .filter(|m| m.database.eq_ignore_ascii_case(&db.name))
        {
            let count = |f: Folder| {
                counts
                    .iter()
                    .find(|c| c.mailbox.eq_ignore_ascii_case(&m.address) && c.folder == f)
                    .map_or(0, |c| c.items)
            };
            let (inbox, sent) = (count(Folder::Inbox), count(Folder::SentItems));
            rows.push(vec![
                m.address.clone(),
                m.aliases.join(","),
                db.name.clone(),
                inbox.to_string(),
                sent.to_string(),
            ]);
            values.push(serde_json::json!({
                "PrimarySmtpAddress": m.address, "EmailAddresses": m.aliases, "Database": db.name,
                "InboxItems": inbox, "SentItems": sent,
            }));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&values)?);
    } else {
        print_table(
            &[
                "PrimarySmtpAddress",
                "Aliases",
                "Database",
                "Inbox",
                "SentItems",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn set_password(
    dir: &Directory,
    address: &str,
    password: Option<String>,
) -> anyhow::Result<ExitCode> {
    let Some(file) = &dir.file else {
        anyhow::bail!(
            "the built-in organisation has no file to store passwords in; run `mailflow init` and use --config"
        );
    };
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    crate::directory::credentials::set_password_in_file(file, address, &password)?;
    println!("Password set for {address} in {}", file.display());
    Ok(ExitCode::SUCCESS)
}

async fn send(dir: &Directory, address: &str, eml: &std::path::Path) -> anyhow::Result<ExitCode> {
    let Some(crate::directory::Recipient::Mailbox(i)) = dir.lookup(address) else {
        anyhow::bail!("{address:?} is not a mailbox of the organisation");
    };
    let mailbox = dir.mailbox(i);
    let raw = std::fs::read(eml).map_err(|e| anyhow::anyhow!("{}: {e}", eml.display()))?;
    // Clients store CRLF messages; accept a file written with bare LF line ends too.
    let content: Vec<u8> = if raw.windows(2).any(|w| w == b"\r\n") {
        raw
    } else {
        String::from_utf8_lossy(&raw)
            .replace('\n', "\r\n")
            .into_bytes()
    };
    if crate::message::header_recipients(&content).is_empty() {
        anyhow::bail!(
            "{}: the message has no To, Cc or Bcc recipient",
            eml.display()
        );
    }
    put_in_outbox(dir, i, content).await?;
    println!(
        "Placed in the Outbox of {}; Mailbox Transport Submission sends it.",
        mailbox.address
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether the Outbox of mailbox `i` can be written from this machine: its database
/// is in PostgreSQL, or the SQLite file of its active copy is here.
pub(super) fn outbox_reachable(dir: &Directory, i: usize) -> bool {
    dir.database(&dir.mailbox(i).database)
        .is_some_and(|db| db.store != StoreSpec::Sqlite || active_copy_path(dir, db).exists())
}

/// Commits `content` to the Outbox of the mailbox `i` (its database's active copy, as
/// recorded), where Mailbox Transport Submission picks it up, as from a client.
pub(super) async fn put_in_outbox(
    dir: &Directory,
    i: usize,
    content: Vec<u8>,
) -> anyhow::Result<()> {
    let mailbox = dir.mailbox(i);
    let db = dir
        .database(&mailbox.database)
        .ok_or_else(|| anyhow::anyhow!("unknown database"))?;
    let path = active_copy_path(dir, db);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let store = open_store(&db.store, &db.name, &path)
        .map_err(|e| anyhow::anyhow!("database {}: {e}", db.name))?;
    let item = crate::mailbox::store::NewItem {
        mailbox: mailbox.address.to_lowercase(),
        folder: Folder::Outbox,
        network_message_id: uuid::Uuid::new_v4().simple().to_string(),
        internet_message_id: crate::message::get(&content, "Message-ID").unwrap_or_default(),
        sender: mailbox.address.clone(),
        subject: crate::message::subject(&content),
        content: content.into(),
    };
    store
        .commit(vec![item])
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

async fn export(
    dir: &Directory,
    address: &str,
    folder: &str,
    out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let folder: Folder = folder.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(crate::directory::Recipient::Mailbox(i)) = dir.lookup(address) else {
        anyhow::bail!("{address:?} is not a mailbox of the organisation");
    };
    let mailbox = dir.mailbox(i);
    std::fs::create_dir_all(out)?;
    let Some(store) = open_database(dir, &mailbox.database)? else {
        println!(
            "0 messages exported (database {} is empty)",
            mailbox.database
        );
        return Ok(ExitCode::SUCCESS);
    };
    let items = store
        .list(&mailbox.address.to_lowercase(), folder)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for item in &items {
        let content = store
            .content(item.id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        std::fs::write(out.join(format!("{:06}.eml", item.id)), content)?;
    }
    println!("{} messages exported to {}", items.len(), out.display());
    Ok(ExitCode::SUCCESS)
}

//! The mailbox database: where the store driver of Mailbox Transport Delivery commits
//! messages, and where Mailbox Transport Submission finds the Outbox.
//!
//! Everything outside this module talks to a database through [`MailboxStore`], so the
//! embedded SQLite backend (the default: one file per database on its server) and the
//! PostgreSQL backend (DESIGN §4) are interchangeable. The trait therefore names no
//! backend type: items, folders and errors are our own.

#[cfg(test)]
mod contract_tests;
mod postgres;
mod rows;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::directory::StoreSpec;

/// A well-known mailbox folder, named as Outlook and Exchange show it.
///
/// Serialised as its display name ("Sent Items"), the form administrators read in the
/// CLI and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Folder {
    Inbox,
    SentItems,
    Outbox,
    Drafts,
    DeletedItems,
}

impl Folder {
    /// The display name, which is also what the database stores: a folder column that
    /// reads "Sent Items" needs no decoding table to be understood.
    pub fn as_str(self) -> &'static str {
        match self {
            Folder::Inbox => "Inbox",
            Folder::SentItems => "Sent Items",
            Folder::Outbox => "Outbox",
            Folder::Drafts => "Drafts",
            Folder::DeletedItems => "Deleted Items",
        }
    }
}

impl fmt::Display for Folder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A folder name that is not one of the well-known folders.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown folder {0:?}: expected Inbox, Sent Items, Outbox, Drafts or Deleted Items")]
pub struct UnknownFolder(pub String);

impl FromStr for Folder {
    type Err = UnknownFolder;

    /// Accepts the display names in any case, and "SentItems"/"DeletedItems" because
    /// that is how they are written where a space is awkward (command lines, URLs).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const NAMES: [(&str, Folder); 7] = [
            ("Inbox", Folder::Inbox),
            ("Sent Items", Folder::SentItems),
            ("SentItems", Folder::SentItems),
            ("Outbox", Folder::Outbox),
            ("Drafts", Folder::Drafts),
            ("Deleted Items", Folder::DeletedItems),
            ("DeletedItems", Folder::DeletedItems),
        ];
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, folder)| folder)
            .ok_or_else(|| UnknownFolder(s.to_owned()))
    }
}

impl From<Folder> for &'static str {
    fn from(folder: Folder) -> Self {
        folder.as_str()
    }
}

impl TryFrom<String> for Folder {
    type Error = UnknownFolder;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// One message for one recipient mailbox, as the store driver hands it over.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// Primary SMTP address of the mailbox, lowercase (the store lowercases it again so
    /// that duplicate detection cannot be defeated by case).
    pub mailbox: String,
    pub folder: Folder,
    /// The organisation-wide id Transport gives a message; a retried or resubmitted
    /// delivery carries the same one, which is what duplicate detection keys on.
    pub network_message_id: String,
    pub internet_message_id: String,
    pub sender: String,
    pub subject: String,
    /// The full RFC 5322 message, bytes exactly as delivered. Shared, because one
    /// message delivered to many recipients is the same bytes for each.
    pub content: Arc<[u8]>,
}

/// What [`MailboxStore::commit`] did with one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Stored, with this item id.
    New(i64),
    /// The folder already held this message (reference §5: the store absorbs duplicates
    /// from resubmits and retries); carries the id of the item already there.
    Duplicate(i64),
}

/// An item as listed: everything but the content, which can be large.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredItem {
    pub id: i64,
    pub mailbox: String,
    pub folder: Folder,
    pub network_message_id: String,
    pub internet_message_id: String,
    pub sender: String,
    pub subject: String,
    /// Size of the content in bytes.
    pub size: u64,
    /// When the item was committed: UTC, ISO 8601 with milliseconds and `Z`.
    pub received: String,
}

/// Items and bytes in one folder of one mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FolderCount {
    pub mailbox: String,
    pub folder: Folder,
    pub items: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption, a full disk). Carried as text so that the
    /// error type stays the same whatever the backend.
    #[error("mailbox database error: {0}")]
    Database(String),
    /// The store is shutting down, or its writer stopped.
    #[error("the mailbox database is closed")]
    Closed,
    #[error("mailbox item {0} not found")]
    NotFound(i64),
    #[error("{0}")]
    Unsupported(String),
}

/// A mailbox database.
///
/// `#[async_trait]` (boxed futures) rather than native async methods, because the
/// server holds the configured backend as `Arc<dyn MailboxStore>`.
#[async_trait]
pub trait MailboxStore: Send + Sync {
    /// Stores items, durably (on disk, fsync'd) before the future resolves, because
    /// Mailbox Transport Delivery answers 250 only after the commit (DESIGN §1).
    /// Returns one [`Committed`] per item, in order. An item whose (mailbox, folder,
    /// network message id) is already stored, by an earlier call or earlier in this
    /// one, is not stored again: a retried delivery must never make a second copy.
    async fn commit(&self, items: Vec<NewItem>) -> Result<Vec<Committed>, StoreError>;

    /// The items of one folder of one mailbox, oldest first (by id).
    async fn list(&self, mailbox: &str, folder: Folder) -> Result<Vec<StoredItem>, StoreError>;

    /// The bytes of one item, exactly as committed.
    async fn content(&self, id: i64) -> Result<Vec<u8>, StoreError>;

    /// Items and bytes per mailbox and folder, for every non-empty folder.
    async fn counts(&self) -> Result<Vec<FolderCount>, StoreError>;

    /// Up to `limit` Outbox items across all mailboxes of the database, oldest first,
    /// for Mailbox Transport Submission. Nothing is claimed: an item stays in the
    /// Outbox until [`move_item`](Self::move_item) moves it, so a crash in between
    /// submits it again and downstream duplicate detection absorbs the copy.
    async fn take_outbox(&self, limit: usize) -> Result<Vec<StoredItem>, StoreError>;

    /// Moves an item to another folder of its mailbox (Outbox → Sent Items after
    /// submission). If that folder already holds the same message, the moved item is
    /// absorbed as a duplicate rather than left in the Outbox to be submitted again.
    async fn move_item(&self, id: i64, to: Folder) -> Result<(), StoreError>;
}

/// Opens the mailbox database `name` as a server's configuration describes it.
///
/// `spec` is the backend: [`StoreSpec::Sqlite`] opens or creates the SQLite file at
/// `path`; a [`StoreSpec::Postgres`] URL selects PostgreSQL, where `name` keys the
/// database's rows (several mailbox databases may share one PostgreSQL database) and
/// `path` is not used. Opening SQLite does file I/O and schema checks, so call this at
/// startup (or from `spawn_blocking`), not on a hot path. Opening PostgreSQL only
/// parses the URL: it connects (and creates its tables if missing) on first use, from
/// whatever tokio runtime that use runs on.
pub fn open_store(
    spec: &StoreSpec,
    name: &str,
    path: &Path,
) -> Result<Arc<dyn MailboxStore>, StoreError> {
    match spec {
        StoreSpec::Sqlite => Ok(Arc::new(SqliteStore::open(path)?)),
        StoreSpec::Postgres(url) => Ok(Arc::new(PostgresStore::new(url, name)?)),
        StoreSpec::Unknown(spec) => Err(StoreError::Unsupported(format!(
            "unknown mailbox database backend {spec:?}: expected \"sqlite\" or a postgres:// URL"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_parse_in_any_case_and_round_trip() {
        for folder in [
            Folder::Inbox,
            Folder::SentItems,
            Folder::Outbox,
            Folder::Drafts,
            Folder::DeletedItems,
        ] {
            assert_eq!(folder.as_str().parse(), Ok(folder));
            assert_eq!(folder.as_str().to_uppercase().parse(), Ok(folder));
        }
        assert_eq!("sentitems".parse(), Ok(Folder::SentItems));
        assert_eq!("DeletedItems".parse(), Ok(Folder::DeletedItems));
        assert!("Junk Email".parse::<Folder>().is_err());
    }

    #[test]
    fn folder_serializes_as_its_display_name() -> Result<(), serde_json::Error> {
        assert_eq!(serde_json::to_string(&Folder::SentItems)?, "\"Sent Items\"");
        let folder: Folder = serde_json::from_str("\"deleteditems\"")?;
        assert_eq!(folder, Folder::DeletedItems);
        assert!(serde_json::from_str::<Folder>("\"Archive\"").is_err());
        Ok(())
    }

    #[test]
    fn postgres_urls_open_without_connecting_and_unknown_specs_are_refused() {
        let path = Path::new("unused.db");
        // Nothing listens there: opening only parses, the first use connects.
        for url in [
            "postgres://mailflow@127.0.0.1:1/mailboxes",
            "postgresql://db.contoso.test/mailboxes?application_name=ex01",
        ] {
            if let Err(e) = open_store(&url.into(), "DB01", path) {
                panic!("{url}: {e}");
            }
        }
        match open_store(
            &"postgres://db.contoso.test:notaport/mailboxes".into(),
            "DB01",
            path,
        ) {
            Err(StoreError::Database(msg)) => assert!(msg.contains("PostgreSQL URL"), "{msg}"),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a malformed URL must be refused"),
        }
        assert!(matches!(
            open_store(
                &"postgres://db.contoso.test/m?sslmode=require".into(),
                "DB01",
                path
            ),
            Err(StoreError::Unsupported(_))
        ));
        assert!(matches!(
            open_store(&"mysql".into(), "DB01", path),
            Err(StoreError::Unsupported(_))
        ));
    }
}

//! Mailbox databases in PostgreSQL (DESIGN §4): every server holding a copy of a DAG
//! database reaches the same rows, so a copy is "active" only in the mailflow sense of
//! who may deliver; durability and replication are PostgreSQL's own business.
//!
//! One PostgreSQL database may hold many mailbox databases: every row carries the
//! name of its mailbox database (`mailbox_database`, lowercase, as Exchange names are
//! case-insensitive), and every statement filters on it.
//!
//! Writes mirror the SQLite backend: one writer task per store owns a connection and
//! group-commits, taking every write queued while the previous transaction was
//! committing and applying them in ONE transaction, answering each caller only after
//! COMMIT returned (PostgreSQL's default `synchronous_commit = on`: flushed to its WAL).
//! Each transaction first takes a transaction-scoped advisory lock on its mailbox
//! database, so the writers of two servers (an old and a new active copy during a
//! switchover) take turns on that database: they can neither deadlock nor both store
//! a message, and item ids grow in commit order, which "oldest first" relies on.
//!
//! Reads share a second connection (tokio-postgres pipelines concurrent queries) and
//! see committed data only. Both connections are opened on first use, not by
//! [`open_store`](super::open_store), which is synchronous; a connection that breaks
//! is opened again on the next use, and a write that failed before COMMIT was sent is
//! tried once more on the new connection (PostgreSQL restarted or failed over).
//!
//! This file holds the store and what its parts share (connections, names, text);
//! `schema` the tables, `read` the read connection, `write` the writer task, `error`
//! why an operation failed, `faults` what the tests inject. The backend imports only
//! [`super`] (the store's types and the rows shared with SQLite) and tokio-postgres: nothing else of mailflow.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, OnceCell, mpsc, oneshot};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};

use super::rows::{Done, Job, Op, folder_count, stored_item};
use super::{Committed, Folder, FolderCount, MailboxStore, NewItem, StoreError, StoredItem};

mod error;
mod faults;
mod read;
mod schema;
#[cfg(test)]
mod tests;
mod write;

use error::describe;
use read::ReadConn;
use schema::ensure_schema;
use write::run_writer;

/// Writes waiting for the writer; bounded so that a stalled database pushes back on
/// deliveries instead of queueing without limit.
const QUEUE_CAPACITY: usize = 1024;

/// Opening a connection gives up after this, unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A write transaction or a read that takes longer than this is abandoned and its
/// connection dropped (PostgreSQL then rolls the transaction back): a connection
/// that silently died must not hold deliveries forever.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// The PostgreSQL backend of [`MailboxStore`].
pub struct PostgresStore {
    inner: Arc<Inner>,
    /// The writer task's queue; the task is spawned on first write, on the runtime of
    /// that write, and ends when the store (this sender) is dropped.
    writer: OnceLock<mpsc::Sender<Job>>,
}

/// What the store and its writer task share.
struct Inner {
    config: Config,
    /// The mailbox database name, lowercase: the value of `mailbox_database`.
    database: String,
    /// The advisory lock key of this mailbox database.
    lock_key: i64,
    /// Set once the schema is known to be in place.
    schema: OnceCell<()>,
    reader: Mutex<Option<Arc<ReadConn>>>,
    transactions: AtomicU64,
    /// What the tests inject; empty outside tests.
    faults: faults::Faults,
}

impl PostgresStore {
    /// A store for mailbox database `database` in the PostgreSQL database at `url`
    /// (`postgres://user:password@host:port/dbname?options`, or a `host=/run/...`
    /// unix socket). Only parses the URL: the first use connects.
    pub fn new(url: &str, database: &str) -> Result<Self, StoreError> {
        let config: Config = url.parse().map_err(|e| {
            StoreError::Database(format!("invalid PostgreSQL URL: {}", describe(&e)))
        })?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(StoreError::Unsupported(
                "sslmode=require: mailflow connects to PostgreSQL without TLS (loopback, a \
                 unix socket or a private network)"
                    .to_owned(),
            ));
        }
        Ok(Self::from_config(config, database))
    }

    /// Like [`new`](Self::new), then connects and checks the schema, so that a wrong
    /// URL or an unreachable server shows now rather than at the first delivery.
    #[cfg(test)]
    pub async fn connect(url: &str, database: &str) -> Result<Self, StoreError> {
        let store = Self::new(url, database)?;
        store.reader().await?;
        Ok(store)
    }

    fn from_config(mut config: Config, database: &str) -> Self {
        if config.get_application_name().is_none() {
            config.application_name("mailflow");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let database = database.to_lowercase();
        PostgresStore {
            inner: Arc::new(Inner {
                config,
                lock_key: lock_key(&format!("mailflow mailbox database {database}")),
                database,
                schema: OnceCell::new(),
                reader: Mutex::new(None),
                transactions: AtomicU64::new(0),
                faults: Default::default(),
            }),
            writer: OnceLock::new(),
        }
    }

    /// Transactions committed by this store's writer so far. Fewer transactions than
    /// commits means the writer grouped them.
    #[cfg(test)]
    pub fn transactions(&self) -> u64 {
        self.inner
            .transactions
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn write(&self, op: Op) -> Result<Done, StoreError> {
        let writer = self.writer.get_or_init(|| {
            let (sender, queue) = mpsc::channel(QUEUE_CAPACITY);
            tokio::spawn(run_writer(Arc::clone(&self.inner), queue));
            sender
        });
        let (reply, answer) = oneshot::channel();
        writer
            .send(Job { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

#[async_trait]
impl MailboxStore for PostgresStore {
    async fn commit(&self, items: Vec<NewItem>) -> Result<Vec<Committed>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.write(Op::Commit(items)).await?.committed()
    }

    async fn list(&self, mailbox: &str, folder: Folder) -> Result<Vec<StoredItem>, StoreError> {
        let mailbox = clean(&mailbox.to_lowercase()).into_owned();
        let database = &self.inner.database;
        let rows = self
            .read(|conn| {
                let mailbox = &mailbox;
                async move {
                    conn.client
                        .query(&conn.list, &[database, mailbox, &folder.as_str()])
                        .await
                }
            })
            .await?;
        rows.iter().map(stored_item).collect()
    }

    async fn content(&self, id: i64) -> Result<Vec<u8>, StoreError> {
        let database = &self.inner.database;
        let row = self
            .read(
                |conn| async move { conn.client.query_opt(&conn.content, &[database, &id]).await },
            )
            .await?;
        Ok(row.ok_or(StoreError::NotFound(id))?.try_get(0)?)
    }

    async fn counts(&self) -> Result<Vec<FolderCount>, StoreError> {
        let database = &self.inner.database;
        let rows = self
            .read(|conn| async move { conn.client.query(&conn.counts, &[database]).await })
            .await?;
        rows.iter().map(folder_count).collect()
    }

    async fn take_outbox(&self, limit: usize) -> Result<Vec<StoredItem>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let database = &self.inner.database;
        let rows = self
            .read(|conn| async move {
                conn.client
                    .query(&conn.outbox, &[database, &Folder::Outbox.as_str(), &limit])
                    .await
            })
            .await?;
        rows.iter().map(stored_item).collect()
    }

    async fn move_item(&self, id: i64, to: Folder) -> Result<(), StoreError> {
        self.write(Op::Move { id, to }).await?.moved()
    }
}

/// A 64-bit FNV-1a hash as an advisory lock key: stable across versions and
/// platforms, which every server of a DAG needs to agree on.
fn lock_key(name: &str) -> i64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// PostgreSQL text cannot hold NUL, which a decoded header can; such a character is
/// stored as U+FFFD, the replacement character, rather than failing the delivery.
/// Applied to every text value, keys included, so duplicate detection is unaffected.
fn clean(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Opens a connection, runs it on a task of the current runtime, and makes sure the
/// schema is in place (once per store); gives up after [`OPERATION_TIMEOUT`].
async fn open_connection(inner: &Inner) -> Result<Client, StoreError> {
    let open = async {
        let (client, connection) = inner.config.connect(NoTls).await.map_err(|e| {
            StoreError::Database(format!("cannot connect to PostgreSQL: {}", describe(&e)))
        })?;
        let database = inner.database.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(%database, "mailbox database connection ended: {}", describe(&e));
            }
        });
        inner
            .schema
            .get_or_try_init(|| ensure_schema(&client))
            .await?;
        Ok(client)
    };
    tokio::time::timeout(OPERATION_TIMEOUT, open)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Database(format!(
                "cannot connect to PostgreSQL: no answer within {} s",
                OPERATION_TIMEOUT.as_secs()
            )))
        })
}

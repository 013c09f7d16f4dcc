//! The embedded mailbox database: one SQLite file per database.
//!
//! Writes go through one dedicated thread that owns the only write connection and
//! group-commits: it takes every write queued while the previous transaction was being
//! fsync'd, applies them in ONE transaction, commits, and only then answers each
//! caller. Under load many deliveries share one fsync; at rest a lone delivery pays one
//! fsync, as it must. A single writer also means SQLite never returns SQLITE_BUSY to us.
//!
//! Reads run on `spawn_blocking` with connections from a small pool. WAL mode lets
//! them proceed while the writer commits, and they see only committed data, which is
//! all any caller has been told about.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::{Committed, Folder, FolderCount, MailboxStore, NewItem, StoreError, StoredItem};

/// Bumped whenever the schema changes; `open` refuses files from a newer mailflow
/// rather than misreading them.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
    -- AUTOINCREMENT: item ids reach tracking and the CLI, so one is never reused
    -- after its item is deleted.
    CREATE TABLE items (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        mailbox TEXT NOT NULL,
        folder TEXT NOT NULL,
        network_message_id TEXT NOT NULL,
        internet_message_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        subject TEXT NOT NULL,
        size INTEGER NOT NULL,
        received TEXT NOT NULL,
        content BLOB NOT NULL
    );
    -- Duplicate detection (reference §5): one copy of a message per folder.
    CREATE UNIQUE INDEX items_duplicate_detection
        ON items (mailbox, folder, network_message_id);
    -- The Outbox scan of Mailbox Transport Submission, across all mailboxes.
    CREATE INDEX items_by_folder ON items (folder, id);
";

/// Writes waiting for the writer. Bounded so that a stalled disk pushes back on
/// deliveries (their `send` waits) instead of queueing without limit.
const QUEUE_CAPACITY: usize = 1024;

/// Most writes in one transaction, so that one transaction (and the memory of the
/// content it carries) stays bounded however deep the queue is.
const MAX_BATCH: usize = 256;

/// Content in one transaction: its pages stay in memory until COMMIT
/// (`wal::tune_writer`), so a batch of large messages for many recipients is bounded.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// Idle read connections kept for reuse; more are opened when reads run concurrently.
const MAX_IDLE_READERS: usize = 8;

/// The SQLite backend of [`MailboxStore`].
pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    thread: Option<JoinHandle<()>>,
    readers: Arc<Readers>,
    #[allow(dead_code)] // read by transactions() (tests; a metric later)
    shared: Arc<Shared>,
}

/// State the writer thread updates and the store reads.
#[derive(Default)]
struct Shared {
    transactions: AtomicU64,
    /// While set, every batch fails at commit (see `injected_failure`).
    #[cfg(test)]
    fail_commits: std::sync::atomic::AtomicBool,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Done, StoreError>>,
}

enum Op {
    Commit(Vec<NewItem>),
    #[allow(dead_code)] // Mailbox Transport Submission (next release)
    Move {
        id: i64,
        to: Folder,
    },
}

impl Op {
    /// Bytes of content the write adds: each item is stored with its own copy.
    fn content_bytes(&self) -> usize {
        match self {
            Op::Commit(items) => items.iter().map(|i| i.content.len()).sum(),
            Op::Move { .. } => 0,
        }
    }
}

enum Done {
    Committed(Vec<Committed>),
    Moved,
}

impl SqliteStore {
    /// Opens or creates the database file at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        // WAL: readers never wait for the writer. synchronous=FULL: every commit is
        // fsync'd before COMMIT returns, which is what lets us answer 250 after it.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        migrate(&conn)?;
        let checkpointer = crate::wal::Checkpointer::start(&conn, path, "mailbox-store")
            .map_err(|e| StoreError::Database(e.to_string()))?;

        let shared = Arc::new(Shared::default());
        let (writer, queue) = mpsc::channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("mailbox-store-writer".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run_writer(conn, queue, &shared, &checkpointer)
            })
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            writer,
            thread: Some(thread),
            readers: Arc::new(Readers {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            }),
            shared,
        })
    }

    /// Transactions committed so far. Fewer transactions than commits means the
    /// writer grouped them; tests check it, and it is a health figure worth exposing.
    #[allow(dead_code)]
    pub fn transactions(&self) -> u64 {
        self.shared.transactions.load(Ordering::Relaxed)
    }

    async fn write(&self, op: Op) -> Result<Done, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Job { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        // A dropped reply means the writer died without answering; say so rather
        // than wait forever.
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }
}

impl Drop for SqliteStore {
    /// Closes the queue and waits for the writer to finish what is already queued, so
    /// that the file is closed (and the WAL checkpointed) when the store is gone. No
    /// caller can be waiting: `commit` borrows the store.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.writer, closed));
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the mailbox store writer thread panicked");
        }
    }
}

#[async_trait]
impl MailboxStore for SqliteStore {
    async fn commit(&self, items: Vec<NewItem>) -> Result<Vec<Committed>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        match self.write(Op::Commit(items)).await? {
            Done::Committed(committed) => Ok(committed),
            Done::Moved => Err(mismatched_answer()),
        }
    }

    async fn list(&self, mailbox: &str, folder: Folder) -> Result<Vec<StoredItem>, StoreError> {
        let mailbox = mailbox.to_lowercase();
        self.read(move |conn| {
            select_items(
                conn,
                "mailbox = ?1 AND folder = ?2 ORDER BY id",
                params![mailbox, folder.as_str()],
            )
        })
        .await
    }

    async fn content(&self, id: i64) -> Result<Vec<u8>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached("SELECT content FROM items WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?
                .ok_or(StoreError::NotFound(id))
        })
        .await
    }

    async fn counts(&self) -> Result<Vec<FolderCount>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT mailbox, folder, COUNT(*), SUM(size) FROM items \
                 GROUP BY mailbox, folder ORDER BY mailbox, folder",
            )?;
            let counts = stmt.query_map([], |row| {
                Ok(FolderCount {
                    mailbox: row.get(0)?,
                    folder: folder_at(row, 1)?,
                    items: row.get(2)?,
                    bytes: row.get(3)?,
                })
            })?;
            Ok(counts.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn take_outbox(&self, limit: usize) -> Result<Vec<StoredItem>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            select_items(
                conn,
                "folder = ?1 ORDER BY id LIMIT ?2",
                params![Folder::Outbox.as_str(), limit],
            )
        })
        .await
    }

    async fn move_item(&self, id: i64, to: Folder) -> Result<(), StoreError> {
        match self.write(Op::Move { id, to }).await? {
            Done::Moved => Ok(()),
            Done::Committed(_) => Err(mismatched_answer()),
        }
    }
}

fn mismatched_answer() -> StoreError {
    StoreError::Database("the writer answered a different kind of write".to_owned())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// Creates the schema in a new file and refuses a file from a newer mailflow.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    match version {
        0 => {
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))?;
            Ok(())
        }
        SCHEMA_VERSION => Ok(()),
        newer => Err(StoreError::Database(format!(
            "the mailbox database has schema version {newer}, newer than the {SCHEMA_VERSION} \
             this mailflow understands"
        ))),
    }
}

/// The writer thread: runs until every `SqliteStore` sender is gone.
fn run_writer(
    mut conn: Connection,
    mut queue: mpsc::Receiver<Job>,
    shared: &Shared,
    checkpointer: &crate::wal::Checkpointer,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut bytes = first.op.content_bytes();
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(job) => {
                    bytes += job.op.content_bytes();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let (ops, replies): (Vec<Op>, Vec<_>) = jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
        match run_batch(&mut conn, ops, shared) {
            Ok(results) => {
                shared.transactions.fetch_add(1, Ordering::Relaxed);
                for (reply, result) in replies.into_iter().zip(results) {
                    // The caller may have given up; the write is committed regardless.
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = replies.len(), "mailbox database commit failed");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Database(e.to_string())));
                }
            }
        }
        // After the replies: the callers are not kept waiting for it.
        checkpointer.after_commit(&conn);
    }
}

/// Applies a batch in one transaction. Each write runs in its own savepoint, so one
/// caller's failing write is rolled back and reported to that caller alone; an error
/// from the transaction itself (BEGIN, COMMIT, the fsync) fails the whole batch.
fn run_batch(
    conn: &mut Connection,
    ops: Vec<Op>,
    shared: &Shared,
) -> rusqlite::Result<Vec<Result<Done, StoreError>>> {
    // One time for the whole batch: its items become durable at the same moment.
    let received = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let savepoint = tx.savepoint()?;
        let result = match op {
            Op::Commit(items) => insert_items(&savepoint, items, &received).map(Done::Committed),
            Op::Move { id, to } => move_item(&savepoint, id, to).map(|()| Done::Moved),
        };
        match result {
            Ok(_) => savepoint.commit()?,
            Err(_) => savepoint.finish()?, // rolls back to the savepoint
        }
        results.push(result);
    }
    injected_failure(shared)?;
    tx.commit()?;
    Ok(results)
}

/// A failing disk, for tests: fails the batch after its writes, before COMMIT, where
/// a real fsync error would surface.
#[cfg(test)]
fn injected_failure(shared: &Shared) -> rusqlite::Result<()> {
    if shared.fail_commits.load(Ordering::Relaxed) {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
            Some("injected fsync failure".to_owned()),
        ));
    }
    Ok(())
}

#[cfg(not(test))]
fn injected_failure(_: &Shared) -> rusqlite::Result<()> {
    Ok(())
}

fn insert_items(
    conn: &Connection,
    items: Vec<NewItem>,
    received: &str,
) -> Result<Vec<Committed>, StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO items (mailbox, folder, network_message_id, internet_message_id, \
         sender, subject, size, received, content) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (mailbox, folder, network_message_id) DO NOTHING",
    )?;
    let mut existing = conn.prepare_cached(
        "SELECT id FROM items WHERE mailbox = ?1 AND folder = ?2 AND network_message_id = ?3",
    )?;
    let mut committed = Vec::with_capacity(items.len());
    for item in items {
        let mailbox = item.mailbox.to_lowercase();
        let folder = item.folder.as_str();
        let inserted = insert.execute(params![
            mailbox,
            folder,
            item.network_message_id,
            item.internet_message_id,
            item.sender,
            item.subject,
            item.content.len(),
            received,
            &item.content[..],
        ])?;
        committed.push(if inserted == 1 {
            Committed::New(conn.last_insert_rowid())
        } else {
            let id = existing
                .query_row(params![mailbox, folder, item.network_message_id], |row| {
                    row.get(0)
                })?;
            Committed::Duplicate(id)
        });
    }
    Ok(committed)
}

fn move_item(conn: &Connection, id: i64, to: Folder) -> Result<(), StoreError> {
    // OR IGNORE: if the target folder already holds this message, the unique index
    // refuses the update and no row changes; the item is then a duplicate to absorb.
    let moved = conn.execute(
        "UPDATE OR IGNORE items SET folder = ?2 WHERE id = ?1",
        params![id, to.as_str()],
    )?;
    if moved == 0 && conn.execute("DELETE FROM items WHERE id = ?1", [id])? == 0 {
        return Err(StoreError::NotFound(id));
    }
    Ok(())
}

/// Read connections, reused between `spawn_blocking` calls.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A panic elsewhere cannot leave the Vec half-updated, so poison is harmless.
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open(&self.path)?;
                conn.pragma_update(None, "query_only", true)?;
                conn
            }
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

/// Items matching `filter` (the SQL after WHERE), without their content.
fn select_items(
    conn: &Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<StoredItem>, StoreError> {
    let sql = format!(
        "SELECT id, mailbox, folder, network_message_id, internet_message_id, sender, \
         subject, size, received FROM items WHERE {filter}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let items = stmt.query_map(params, stored_item)?;
    Ok(items.collect::<Result<_, _>>()?)
}

fn stored_item(row: &Row<'_>) -> rusqlite::Result<StoredItem> {
    Ok(StoredItem {
        id: row.get(0)?,
        mailbox: row.get(1)?,
        folder: folder_at(row, 2)?,
        network_message_id: row.get(3)?,
        internet_message_id: row.get(4)?,
        sender: row.get(5)?,
        subject: row.get(6)?,
        size: row.get(7)?,
        received: row.get(8)?,
    })
}

/// A folder column: text written by us, but read defensively since the file is
/// outside our control.
fn folder_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<Folder> {
    let name: String = row.get(idx)?;
    name.parse()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::store::contract_tests::{
        Backend, TestResult, contract_tests, deliver, inbox,
    };

    /// A database file in a temp dir of its own.
    struct Sqlite {
        dir: tempfile::TempDir,
    }

    impl Backend for Sqlite {
        type Store = SqliteStore;

        fn new() -> Result<Option<Self>, Box<dyn std::error::Error>> {
            Ok(Some(Sqlite {
                dir: tempfile::tempdir()?,
            }))
        }

        async fn open(&self) -> Result<SqliteStore, StoreError> {
            SqliteStore::open(&self.dir.path().join("DB01.sqlite"))
        }

        fn transactions(store: &SqliteStore) -> u64 {
            store.transactions()
        }

        fn fail_commits(store: &SqliteStore, fail: bool) {
            store.shared.fail_commits.store(fail, Ordering::Relaxed);
        }
    }

    contract_tests!(Sqlite);

    #[tokio::test]
    async fn wal_mode_is_recorded_in_the_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("DB01.sqlite");
        deliver(&SqliteStore::open(&path)?, inbox("nm-1", b"kept\r\n")).await?;
        // WAL is recorded in the file; synchronous=FULL is per connection (see `open`).
        let mode: String =
            Connection::open(&path)?.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        assert_eq!(mode, "wal");
        Ok(())
    }

    #[test]
    fn a_database_from_a_newer_mailflow_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("DB01.sqlite");
        Connection::open(&path)?.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?;
        match SqliteStore::open(&path) {
            Err(StoreError::Database(msg)) => assert!(msg.contains("newer"), "{msg}"),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a newer schema must be refused"),
        }
        Ok(())
    }
}

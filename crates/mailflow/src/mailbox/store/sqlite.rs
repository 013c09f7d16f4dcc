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
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::rows::{self, Columns, Done, Job, Op};
use super::{Committed, Folder, FolderCount, MailboxStore, NewItem, StoreError, StoredItem};

/// Bumped whenever the schema changes; `open` refuses files from a newer mailflow
/// rather than misreading them, and upgrades files from an older one.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
    -- A message's bytes, once per delivery: the recipients of one message in this
    -- database share the row (a message to ten mailboxes is written once, not ten
    -- times). Removed with the last item that refers to it.
    CREATE TABLE contents (
        id INTEGER PRIMARY KEY,
        data BLOB NOT NULL
    );
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
        content_id INTEGER NOT NULL REFERENCES contents (id)
    );
    -- Duplicate detection (reference §5): one copy of a message per folder.
    CREATE UNIQUE INDEX items_duplicate_detection
        ON items (mailbox, folder, network_message_id);
    -- The Outbox scan of Mailbox Transport Submission, across all mailboxes.
    CREATE INDEX items_by_folder ON items (folder, id);
    -- Whether a content row is still referred to, when an item goes.
    CREATE INDEX items_by_content ON items (content_id);
";

/// Version 1 kept each item's content in the item's row: each becomes its own content
/// row. Rewrites the items table once (DROP COLUMN), in one transaction.
const UPGRADE_FROM_1: &str = "
    CREATE TABLE contents (
        id INTEGER PRIMARY KEY,
        data BLOB NOT NULL
    );
    INSERT INTO contents (id, data) SELECT id, content FROM items;
    ALTER TABLE items ADD COLUMN content_id INTEGER REFERENCES contents (id);
    UPDATE items SET content_id = id;
    ALTER TABLE items DROP COLUMN content;
    CREATE INDEX items_by_content ON items (content_id);
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
    /// The writer thread's counters and switches, as tests read and set them.
    #[cfg(test)]
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

impl Op {
    /// Bytes of content the write adds: once per message (see `insert_items`).
    fn content_bytes(&self) -> usize {
        match self {
            Op::Commit(items) => {
                let mut distinct: Vec<&Arc<[u8]>> = Vec::new();
                for item in items {
                    if !distinct.iter().any(|c| Arc::ptr_eq(c, &item.content)) {
                        distinct.push(&item.content);
                    }
                }
                distinct.iter().map(|c| c.len()).sum()
            }
            Op::Move { .. } => 0,
        }
    }
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
            #[cfg(test)]
            shared,
        })
    }

    /// Transactions committed so far. Fewer transactions than commits means the
    /// writer grouped them; tests check it.
    #[cfg(test)]
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
        self.write(Op::Commit(items)).await?.committed()
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
            conn.prepare_cached(
                "SELECT contents.data FROM items JOIN contents ON contents.id = items.content_id \
                 WHERE items.id = ?1",
            )?
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
            let counts = stmt.query_map([], |row| Ok(rows::folder_count(row)))?;
            counts
                .map(|count| count?)
                .collect::<Result<Vec<FolderCount>, _>>()
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
        self.write(Op::Move { id, to }).await?.moved()
    }
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
        1 => {
            tracing::info!("upgrading a mailbox database from schema version 1 to 2");
            conn.execute_batch(&format!(
                "BEGIN; {UPGRADE_FROM_1} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
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
    let mut existing = conn.prepare_cached(
        "SELECT id FROM items WHERE mailbox = ?1 AND folder = ?2 AND network_message_id = ?3",
    )?;
    let mut insert_content = conn.prepare_cached("INSERT INTO contents (data) VALUES (?1)")?;
    let mut insert_item = conn.prepare_cached(
        "INSERT INTO items (mailbox, folder, network_message_id, internet_message_id, \
         sender, subject, size, received, content_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    // The content rows this write made: the items of one delivery share their bytes.
    let mut stored: Vec<(Arc<[u8]>, i64)> = Vec::new();
    let mut committed = Vec::with_capacity(items.len());
    for item in items {
        let mailbox = item.mailbox.to_lowercase();
        let folder = item.folder.as_str();
        if let Some(id) = existing
            .query_row(params![mailbox, folder, item.network_message_id], |row| {
                row.get(0)
            })
            .optional()?
        {
            committed.push(Committed::Duplicate(id));
            continue;
        }
        let same = |c: &Arc<[u8]>| Arc::ptr_eq(c, &item.content) || c[..] == item.content[..];
        let content_id = match stored.iter().find(|(c, _)| same(c)) {
            Some((_, id)) => *id,
            None => {
                insert_content.execute([&item.content[..]])?;
                let id = conn.last_insert_rowid();
                stored.push((Arc::clone(&item.content), id));
                id
            }
        };
        insert_item.execute(params![
            mailbox,
            folder,
            item.network_message_id,
            item.internet_message_id,
            item.sender,
            item.subject,
            item.content.len(),
            received,
            content_id,
        ])?;
        committed.push(Committed::New(conn.last_insert_rowid()));
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
    if moved == 1 {
        return Ok(());
    }
    let content_id: i64 = conn
        .query_row("SELECT content_id FROM items WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or(StoreError::NotFound(id))?;
    conn.execute("DELETE FROM items WHERE id = ?1", [id])?;
    conn.execute(
        "DELETE FROM contents WHERE id = ?1 \
         AND NOT EXISTS (SELECT 1 FROM items WHERE content_id = ?1)",
        [content_id],
    )?;
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
    let items = stmt.query_map(params, |row| Ok(rows::stored_item(row)))?;
    items.map(|item| item?).collect()
}

impl Columns for Row<'_> {
    const TABLE: &'static str = "items";

    fn text(&self, idx: usize) -> Result<String, StoreError> {
        Ok(self.get(idx)?)
    }

    fn integer(&self, idx: usize) -> Result<i64, StoreError> {
        Ok(self.get(idx)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::store::contract_tests::{
        Backend, TestResult, USER1, USER2, contract_tests, deliver, inbox, item,
    };

    fn rows(path: &Path, table: &str) -> rusqlite::Result<i64> {
        Connection::open(path)?
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
    }

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

    /// One message for ten mailboxes of the database is one content row; each item
    /// still reads back the whole message.
    #[tokio::test]
    async fn a_message_for_many_mailboxes_is_stored_once() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("DB01.sqlite");
        let store = SqliteStore::open(&path)?;
        let content: Arc<[u8]> = Arc::from(&b"Subject: to ten\r\n\r\nshared body\r\n"[..]);
        let items: Vec<NewItem> = (0..10)
            .map(|n| NewItem {
                content: Arc::clone(&content),
                ..item(
                    &format!("user{n}@contoso.test"),
                    Folder::Inbox,
                    "nm-ten",
                    b"",
                )
            })
            .collect();
        let committed = store.commit(items).await?;
        assert_eq!(committed.len(), 10);
        for c in &committed {
            let Committed::New(id) = c else {
                panic!("{committed:?}")
            };
            assert_eq!(store.content(*id).await?, &content[..]);
        }
        // Equal bytes that are not the same allocation are shared too.
        let copies = vec![
            item(USER1, Folder::SentItems, "nm-two", b"same\r\n"),
            item(USER2, Folder::SentItems, "nm-two", b"same\r\n"),
        ];
        store.commit(copies).await?;
        drop(store);
        assert_eq!(rows(&path, "items")?, 12);
        assert_eq!(rows(&path, "contents")?, 2);
        Ok(())
    }

    /// An item absorbed as a duplicate (moved into a folder that already holds the
    /// message) takes its content row with it when no other item refers to it.
    #[tokio::test]
    async fn content_goes_with_the_last_item_that_refers_to_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("DB01.sqlite");
        let store = SqliteStore::open(&path)?;
        let outbox = deliver(&store, item(USER1, Folder::Outbox, "nm-1", b"a\r\n")).await?;
        let sent = deliver(&store, item(USER1, Folder::SentItems, "nm-1", b"a\r\n")).await?;
        store.move_item(outbox, Folder::SentItems).await?;
        assert_eq!(store.content(sent).await?, b"a\r\n");
        assert!(matches!(
            store.content(outbox).await,
            Err(StoreError::NotFound(_))
        ));
        drop(store);
        assert_eq!(rows(&path, "items")?, 1);
        assert_eq!(rows(&path, "contents")?, 1);
        Ok(())
    }

    /// A database written by a mailflow with schema version 1 (content in each item's
    /// row) is upgraded when it is opened, its items intact.
    #[tokio::test]
    async fn a_version_1_database_is_upgraded_in_place() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("DB01.sqlite");
        Connection::open(&path)?.execute_batch(
            "CREATE TABLE items (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                mailbox TEXT NOT NULL, folder TEXT NOT NULL,
                network_message_id TEXT NOT NULL, internet_message_id TEXT NOT NULL,
                sender TEXT NOT NULL, subject TEXT NOT NULL, size INTEGER NOT NULL,
                received TEXT NOT NULL, content BLOB NOT NULL);
             CREATE UNIQUE INDEX items_duplicate_detection
                ON items (mailbox, folder, network_message_id);
             CREATE INDEX items_by_folder ON items (folder, id);
             INSERT INTO items (mailbox, folder, network_message_id, internet_message_id,
                sender, subject, size, received, content)
                VALUES ('user1@contoso.test', 'Inbox', 'nm-old', '<old@x>', 's@x', 'old',
                        5, '2026-11-01T00:00:00.000Z', X'6F6C640D0A');
             PRAGMA user_version = 1;",
        )?;
        let store = SqliteStore::open(&path)?;
        let items = store.list(USER1, Folder::Inbox).await?;
        assert_eq!(items.len(), 1);
        assert_eq!(store.content(items[0].id).await?, b"old\r\n");
        // New deliveries after the upgrade, and duplicate detection across it.
        deliver(&store, inbox("nm-new", b"new\r\n")).await?;
        assert!(matches!(
            store.commit(vec![inbox("nm-old", b"old\r\n")]).await?[..],
            [Committed::Duplicate(id)] if id == items[0].id
        ));
        drop(store);
        let version: i64 =
            Connection::open(&path)?.pragma_query_value(None, "user_version", |r| r.get(0))?;
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(rows(&path, "contents")?, 2);
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

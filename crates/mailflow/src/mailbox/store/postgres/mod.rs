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

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, OnceCell, mpsc, oneshot};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use super::{Committed, Folder, FolderCount, MailboxStore, NewItem, StoreError, StoredItem};

/// The version of the tables below, kept in `mailflow_schema`; a store refuses a
/// database from a newer mailflow rather than misreading it.
const SCHEMA_VERSION: i32 = 1;

/// Created when missing, under an advisory lock so that servers starting together
/// do not race on it. The text columns that are keys or sort keys use the "C"
/// collation: bytewise, as SQLite compares, whatever the database's locale.
const SCHEMA: &str = r#"
    CREATE TABLE IF NOT EXISTS mailflow_schema (
        component text PRIMARY KEY,
        version integer NOT NULL
    );
    -- An identity, never reused: item ids reach tracking and the CLI.
    CREATE TABLE IF NOT EXISTS mailbox_items (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        mailbox_database text COLLATE "C" NOT NULL,
        mailbox text COLLATE "C" NOT NULL,
        folder text COLLATE "C" NOT NULL,
        network_message_id text COLLATE "C" NOT NULL,
        internet_message_id text NOT NULL,
        sender text NOT NULL,
        subject text NOT NULL,
        size bigint NOT NULL,
        -- The start of the committing transaction, on the database's clock, which
        -- every server of a DAG shares.
        received timestamptz NOT NULL DEFAULT now(),
        content bytea NOT NULL,
        -- Duplicate detection (reference §5): one copy of a message per folder.
        CONSTRAINT mailbox_items_duplicate_detection
            UNIQUE (mailbox_database, mailbox, folder, network_message_id)
    );
    -- The Outbox scan of Mailbox Transport Submission, across all mailboxes.
    CREATE INDEX IF NOT EXISTS mailbox_items_by_folder
        ON mailbox_items (mailbox_database, folder, id);
"#;

const INSERT_ITEM: &str = "\
    INSERT INTO mailbox_items (mailbox_database, mailbox, folder, network_message_id, \
        internet_message_id, sender, subject, size, content) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (mailbox_database, mailbox, folder, network_message_id) DO NOTHING \
    RETURNING id";

const EXISTING_ITEM: &str = "\
    SELECT id FROM mailbox_items \
    WHERE mailbox_database = $1 AND mailbox = $2 AND folder = $3 AND network_message_id = $4";

/// Moves item $2 to folder $3, or deletes it when that folder already holds the same
/// message (SQLite's `UPDATE OR IGNORE` then `DELETE`); the count is 0 when there is
/// no such item. One statement, so that no unique violation can abort the batch's
/// transaction; the advisory lock keeps the check and the change together.
const MOVE_ITEM: &str = "\
    WITH source AS ( \
        SELECT id, mailbox, network_message_id FROM mailbox_items \
        WHERE mailbox_database = $1 AND id = $2), \
    duplicate AS ( \
        SELECT 1 FROM mailbox_items t JOIN source s \
            ON t.mailbox = s.mailbox AND t.network_message_id = s.network_message_id \
        WHERE t.mailbox_database = $1 AND t.folder = $3 AND t.id <> s.id), \
    moved AS ( \
        UPDATE mailbox_items SET folder = $3 \
        WHERE mailbox_database = $1 AND id = $2 AND NOT EXISTS (SELECT 1 FROM duplicate) \
        RETURNING 1), \
    absorbed AS ( \
        DELETE FROM mailbox_items \
        WHERE mailbox_database = $1 AND id = $2 AND EXISTS (SELECT 1 FROM duplicate) \
        RETURNING 1) \
    SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM absorbed)";

/// The columns of a [`StoredItem`]; `received` in the form SQLite stores.
const ITEM_COLUMNS: &str = "id, mailbox, folder, network_message_id, internet_message_id, \
    sender, subject, size, \
    to_char(received AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

/// Writes waiting for the writer; bounded so that a stalled database pushes back on
/// deliveries instead of queueing without limit.
const QUEUE_CAPACITY: usize = 1024;

/// Most writes in one transaction.
const MAX_BATCH: usize = 256;

/// Most tries of one transaction: a broken connection (before COMMIT) or a
/// deadlock/serialization failure is worth another try, not more.
const MAX_TRIES: u32 = 3;

/// Opening a connection gives up after this, unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A write transaction or a read that takes longer than this is abandoned and its
/// connection dropped (PostgreSQL then rolls the transaction back): a connection
/// that silently died must not hold deliveries forever.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Set on write connections: PostgreSQL ends a session of ours that stays idle inside
/// a transaction (a hung or partitioned server) and so frees the advisory lock for
/// the other servers. Our transactions are never idle between statements.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";

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
    /// While set, every transaction fails before COMMIT (see `injected_failure`).
    #[cfg(test)]
    fail_commits: std::sync::atomic::AtomicBool,
    /// When set, the next transaction has PostgreSQL end its session midway.
    #[cfg(test)]
    end_session_once: std::sync::atomic::AtomicBool,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Done, StoreError>>,
}

enum Op {
    Commit(Vec<NewItem>),
    Move { id: i64, to: Folder },
}

enum Done {
    Committed(Vec<Committed>),
    Moved,
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
    #[allow(dead_code)] // open_store connects lazily; tests and tools use this
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
                #[cfg(test)]
                fail_commits: Default::default(),
                #[cfg(test)]
                end_session_once: Default::default(),
            }),
            writer: OnceLock::new(),
        }
    }

    /// Transactions committed by this store's writer so far. Fewer transactions than
    /// commits means the writer grouped them.
    #[allow(dead_code)]
    pub fn transactions(&self) -> u64 {
        self.inner.transactions.load(Ordering::Relaxed)
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

    /// The read connection, opened if there is none or it broke.
    async fn reader(&self) -> Result<Arc<ReadConn>, StoreError> {
        let mut reader = self.inner.reader.lock().await;
        if let Some(conn) = reader.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(Arc::clone(conn));
        }
        let client = open_connection(&self.inner).await?;
        let conn = Arc::new(ReadConn::prepare(client).await?);
        *reader = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Runs one read, once more on a new connection if the connection broke under it
    /// (reads change nothing, so trying again is always safe).
    async fn read<T, F, Fut>(&self, query: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<ReadConn>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let conn = self.reader().await?;
            let error =
                match tokio::time::timeout(OPERATION_TIMEOUT, query(Arc::clone(&conn))).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(e)) => TxError::classify(&e, false),
                    Err(_) => TxError::TimedOut,
                };
            if !error.connection_unusable() {
                return Err(error.into_store_error());
            }
            // Forget the broken connection, unless another read already replaced it.
            let mut reader = self.inner.reader.lock().await;
            if reader.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                *reader = None;
            }
            drop(reader);
            if tries >= 2 || matches!(error, TxError::TimedOut) {
                return Err(error.into_store_error());
            }
            tracing::warn!(database = %self.inner.database, "mailbox database read: {}; reconnecting", error.message());
        }
    }
}

#[async_trait]
impl MailboxStore for PostgresStore {
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
        rows.iter()
            .map(|row| {
                Ok(FolderCount {
                    mailbox: row.try_get(0)?,
                    folder: folder_at(row, 1)?,
                    items: unsigned_at(row, 2)?,
                    bytes: unsigned_at(row, 3)?,
                })
            })
            .collect()
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
        match self.write(Op::Move { id, to }).await? {
            Done::Moved => Ok(()),
            Done::Committed(_) => Err(mismatched_answer()),
        }
    }
}

fn mismatched_answer() -> StoreError {
    StoreError::Database("the writer answered a different kind of write".to_owned())
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Database(describe(&e))
    }
}

/// The text of an error, on one line (it reaches SMTP replies): PostgreSQL's own
/// message and SQLSTATE when it has one (tokio-postgres says only "db error"),
/// otherwise the error and its causes.
fn describe(e: &tokio_postgres::Error) -> String {
    let text = if let Some(db) = e.as_db_error() {
        let mut text = format!(
            "PostgreSQL {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        );
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        text
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    };
    text.replace(['\r', '\n'], " ")
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

/// Creates the tables if missing and refuses a schema from a newer mailflow. Servers
/// starting together take turns on an advisory lock; a role that may not create
/// tables can use a schema someone else created.
async fn ensure_schema(client: &Client) -> Result<(), StoreError> {
    let version = match schema_version(client).await? {
        Some(version) => version,
        None => {
            let key = lock_key("mailflow schema");
            let create = format!(
                "BEGIN; SELECT pg_advisory_xact_lock({key}); {SCHEMA} \
                 INSERT INTO mailflow_schema (component, version) \
                 VALUES ('mailbox', {SCHEMA_VERSION}) ON CONFLICT (component) DO NOTHING; \
                 COMMIT;"
            );
            if let Err(e) = client.batch_execute(&create).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(StoreError::Database(format!(
                    "cannot create the mailbox tables: {}",
                    describe(&e)
                )));
            }
            schema_version(client).await?.ok_or_else(|| {
                StoreError::Database("mailflow_schema has no row for the mailbox tables".into())
            })?
        }
    };
    match version {
        SCHEMA_VERSION => Ok(()),
        newer if newer > SCHEMA_VERSION => Err(StoreError::Database(format!(
            "the mailbox tables have schema version {newer}, newer than the {SCHEMA_VERSION} \
             this mailflow understands"
        ))),
        older => Err(StoreError::Database(format!(
            "the mailbox tables have schema version {older}, which no mailflow wrote"
        ))),
    }
}

async fn schema_version(client: &Client) -> Result<Option<i32>, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('mailflow_schema') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT version FROM mailflow_schema WHERE component = 'mailbox'",
            &[],
        )
        .await?;
    Ok(row.map(|row| row.try_get(0)).transpose()?)
}

/// The read connection and its prepared statements.
struct ReadConn {
    client: Client,
    list: Statement,
    content: Statement,
    counts: Statement,
    outbox: Statement,
}

impl ReadConn {
    async fn prepare(client: Client) -> Result<Self, StoreError> {
        let list = format!(
            "SELECT {ITEM_COLUMNS} FROM mailbox_items \
             WHERE mailbox_database = $1 AND mailbox = $2 AND folder = $3 ORDER BY id"
        );
        let outbox = format!(
            "SELECT {ITEM_COLUMNS} FROM mailbox_items \
             WHERE mailbox_database = $1 AND folder = $2 ORDER BY id LIMIT $3"
        );
        Ok(ReadConn {
            list: client.prepare(&list).await?,
            content: client
                .prepare(
                    "SELECT content FROM mailbox_items WHERE mailbox_database = $1 AND id = $2",
                )
                .await?,
            counts: client
                .prepare(
                    "SELECT mailbox, folder, count(*), sum(size)::bigint FROM mailbox_items \
                     WHERE mailbox_database = $1 GROUP BY mailbox, folder ORDER BY mailbox, folder",
                )
                .await?,
            outbox: client.prepare(&outbox).await?,
            client,
        })
    }
}

fn stored_item(row: &Row) -> Result<StoredItem, StoreError> {
    Ok(StoredItem {
        id: row.try_get(0)?,
        mailbox: row.try_get(1)?,
        folder: folder_at(row, 2)?,
        network_message_id: row.try_get(3)?,
        internet_message_id: row.try_get(4)?,
        sender: row.try_get(5)?,
        subject: row.try_get(6)?,
        size: unsigned_at(row, 7)?,
        received: row.try_get(8)?,
    })
}

/// A folder column: text written by us, but read defensively since the database is
/// shared with whoever else has access.
fn folder_at(row: &Row, idx: usize) -> Result<Folder, StoreError> {
    let name: String = row.try_get(idx)?;
    name.parse()
        .map_err(|e| StoreError::Database(format!("mailbox_items: {e}")))
}

fn unsigned_at(row: &Row, idx: usize) -> Result<u64, StoreError> {
    let value: i64 = row.try_get(idx)?;
    u64::try_from(value)
        .map_err(|_| StoreError::Database(format!("mailbox_items: negative size {value}")))
}

/// The write connection and its prepared statements.
struct WriteConn {
    client: Client,
    insert: Statement,
    existing: Statement,
    move_item: Statement,
}

impl WriteConn {
    async fn open(inner: &Inner) -> Result<Self, StoreError> {
        let client = open_connection(inner).await?;
        client
            .batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}'"
            ))
            .await?;
        Ok(WriteConn {
            insert: client.prepare(INSERT_ITEM).await?,
            existing: client.prepare(EXISTING_ITEM).await?,
            move_item: client.prepare(MOVE_ITEM).await?,
            client,
        })
    }
}

/// Why a transaction failed, which decides what happens next.
enum TxError {
    /// No connection could be opened.
    Unavailable(StoreError),
    /// The connection broke. If that happened while COMMIT was on its way, the
    /// outcome is unknown: the callers hear of a failure and their retries are
    /// absorbed by duplicate detection if it did commit.
    Connection { message: String, committing: bool },
    /// Deadlock or serialization failure: rolled back, worth another try.
    Conflict(String),
    /// PostgreSQL refused a statement (a key too long for its index, say): the
    /// transaction is aborted, the connection fine.
    Statement(String),
    /// No answer within [`OPERATION_TIMEOUT`].
    TimedOut,
}

impl TxError {
    fn classify(e: &tokio_postgres::Error, committing: bool) -> TxError {
        let message = describe(e);
        match e.code() {
            Some(code)
                if *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::T_R_SERIALIZATION_FAILURE =>
            {
                TxError::Conflict(message)
            }
            // Class 08: connection exception; 57P: the server is shutting down or
            // ended this session.
            Some(code) if code.code().starts_with("08") || code.code().starts_with("57P") => {
                TxError::Connection {
                    message,
                    committing,
                }
            }
            Some(_) => TxError::Statement(message),
            // No SQLSTATE: the error is in the connection (I/O, closed, protocol).
            None => TxError::Connection {
                message,
                committing,
            },
        }
    }

    fn connection_unusable(&self) -> bool {
        matches!(
            self,
            TxError::Unavailable(_) | TxError::Connection { .. } | TxError::TimedOut
        )
    }

    fn worth_retrying(&self) -> bool {
        matches!(
            self,
            TxError::Conflict(_)
                | TxError::Connection {
                    committing: false,
                    ..
                }
        )
    }

    fn message(&self) -> String {
        match self {
            TxError::Unavailable(e) => e.to_string(),
            TxError::Connection { message, .. }
            | TxError::Conflict(message)
            | TxError::Statement(message) => message.clone(),
            TxError::TimedOut => format!(
                "PostgreSQL did not answer within {} s",
                OPERATION_TIMEOUT.as_secs()
            ),
        }
    }

    fn into_store_error(self) -> StoreError {
        match self {
            TxError::Unavailable(e) => e,
            other => StoreError::Database(other.message()),
        }
    }
}

/// The writer task: runs until the store is dropped and its queue drained.
async fn run_writer(inner: Arc<Inner>, mut queue: mpsc::Receiver<Job>) {
    let mut conn = None;
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (ops, replies): (Vec<Op>, Vec<_>) = jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
        let results = write_batch(&inner, &mut conn, &ops).await;
        for (reply, result) in replies.into_iter().zip(results) {
            // The caller may have given up; the write is committed regardless.
            let _ = reply.send(result);
        }
    }
}

/// Applies a batch in one transaction and answers every write. A statement
/// PostgreSQL refuses aborts the whole transaction, so then each write is applied
/// again in a transaction of its own, and only the caller of the refused one hears
/// of it (SQLite's backend gets the same from savepoints).
async fn write_batch(
    inner: &Inner,
    conn: &mut Option<WriteConn>,
    ops: &[Op],
) -> Vec<Result<Done, StoreError>> {
    match transaction_with_retries(inner, conn, ops).await {
        Ok(results) => results,
        Err(TxError::Statement(message)) if ops.len() > 1 => {
            tracing::warn!(database = %inner.database, writes = ops.len(),
                "mailbox database refused a write ({message}); applying the batch's writes one by one");
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                let one = transaction_with_retries(inner, conn, std::slice::from_ref(op)).await;
                results.push(match one {
                    Ok(mut done) => done.pop().unwrap_or_else(|| Err(mismatched_answer())),
                    Err(e) => Err(e.into_store_error()),
                });
            }
            results
        }
        Err(e) => {
            let e = e.into_store_error();
            tracing::error!(database = %inner.database, writes = ops.len(), "mailbox database commit failed: {e}");
            ops.iter().map(|_| Err(e.clone())).collect()
        }
    }
}

/// One transaction for `ops`, tried again on a new connection if the old one broke
/// before COMMIT, or again after a deadlock; at most [`MAX_TRIES`] times.
async fn transaction_with_retries(
    inner: &Inner,
    conn: &mut Option<WriteConn>,
    ops: &[Op],
) -> Result<Vec<Result<Done, StoreError>>, TxError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let usable = match conn.take() {
            Some(c) if !c.client.is_closed() => c,
            _ => WriteConn::open(inner).await.map_err(TxError::Unavailable)?,
        };
        let c = conn.insert(usable);
        let outcome =
            match tokio::time::timeout(OPERATION_TIMEOUT, transaction(inner, c, ops)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(TxError::TimedOut),
            };
        let error = match outcome {
            Ok(results) => {
                inner.transactions.fetch_add(1, Ordering::Relaxed);
                return Ok(results);
            }
            Err(error) => error,
        };
        if error.connection_unusable() || c.client.batch_execute("ROLLBACK").await.is_err() {
            // Dropping the client closes the connection; PostgreSQL rolls back.
            *conn = None;
        }
        if !error.worth_retrying() || tries >= MAX_TRIES {
            return Err(error);
        }
        tracing::warn!(database = %inner.database, "mailbox database transaction failed ({}); trying again", error.message());
    }
}

/// BEGIN, the advisory lock of the mailbox database, the writes, COMMIT. A write's
/// own failure that is no SQL error (moving an item that is not there) is that
/// write's answer and does not stop the others.
async fn transaction(
    inner: &Inner,
    c: &WriteConn,
    ops: &[Op],
) -> Result<Vec<Result<Done, StoreError>>, TxError> {
    let sql_error = |e: tokio_postgres::Error| TxError::classify(&e, false);
    c.client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({})",
            inner.lock_key
        ))
        .await
        .map_err(sql_error)?;
    #[cfg(test)]
    if inner.end_session_once.swap(false, Ordering::Relaxed) {
        c.client
            .batch_execute("SELECT pg_terminate_backend(pg_backend_pid())")
            .await
            .map_err(sql_error)?;
    }
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            Op::Commit(items) => Ok(Done::Committed(insert_items(inner, c, items).await?)),
            Op::Move { id, to } => {
                let changed: i64 = c
                    .client
                    .query_one(&c.move_item, &[&inner.database, id, &to.as_str()])
                    .await
                    .and_then(|row| row.try_get(0))
                    .map_err(sql_error)?;
                if changed == 0 {
                    Err(StoreError::NotFound(*id))
                } else {
                    Ok(Done::Moved)
                }
            }
        });
    }
    injected_failure(inner)?;
    c.client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| TxError::classify(&e, true))?;
    Ok(results)
}

async fn insert_items(
    inner: &Inner,
    c: &WriteConn,
    items: &[NewItem],
) -> Result<Vec<Committed>, TxError> {
    let sql_error = |e: tokio_postgres::Error| TxError::classify(&e, false);
    let database = &inner.database;
    let mut committed = Vec::with_capacity(items.len());
    for item in items {
        let mailbox = item.mailbox.to_lowercase();
        let mailbox = clean(&mailbox);
        let (mailbox, folder) = (&*mailbox, item.folder.as_str());
        let network_message_id = &*clean(&item.network_message_id);
        let size = i64::try_from(item.content.len())
            .map_err(|_| TxError::Statement("the message is too large".to_owned()))?;
        let inserted = c
            .client
            .query_opt(
                &c.insert,
                &[
                    database,
                    &mailbox,
                    &folder,
                    &network_message_id,
                    &&*clean(&item.internet_message_id),
                    &&*clean(&item.sender),
                    &&*clean(&item.subject),
                    &size,
                    &&item.content[..],
                ],
            )
            .await
            .map_err(sql_error)?;
        committed.push(match inserted {
            Some(row) => Committed::New(row.try_get(0).map_err(sql_error)?),
            None => {
                // Already stored, by an earlier transaction or earlier in this one;
                // the advisory lock keeps it from vanishing in between.
                let existing = c
                    .client
                    .query_opt(
                        &c.existing,
                        &[database, &mailbox, &folder, &network_message_id],
                    )
                    .await
                    .map_err(sql_error)?
                    .ok_or_else(|| {
                        TxError::Statement(
                            "a duplicate item vanished while its copy was being stored".into(),
                        )
                    })?;
                Committed::Duplicate(existing.try_get(0).map_err(sql_error)?)
            }
        });
    }
    Ok(committed)
}

/// A failing database, for tests: fails the transaction after its writes, before
/// COMMIT.
#[cfg(test)]
fn injected_failure(inner: &Inner) -> Result<(), TxError> {
    if inner.fail_commits.load(Ordering::Relaxed) {
        return Err(TxError::Statement("injected failure".to_owned()));
    }
    Ok(())
}

#[cfg(not(test))]
fn injected_failure(_: &Inner) -> Result<(), TxError> {
    Ok(())
}

/// These tests need a PostgreSQL server: `MAILFLOW_TEST_POSTGRES` holds its URL
/// (`scripts/pg-test-server` starts a throwaway one and prints it). Without it they
/// say so and pass. Every test uses mailbox databases of its own, so they run in
/// parallel against one server.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::store::contract_tests::{
        Backend, TestResult, USER1, USER2, contract_tests, deliver, ids, inbox, item,
    };
    use tokio::sync::Barrier;

    /// The test server's URL, or None after saying the test is skipped.
    fn server() -> Option<String> {
        match std::env::var("MAILFLOW_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                eprintln!("skipped: MAILFLOW_TEST_POSTGRES not set");
                None
            }
        }
    }

    /// A name no other test (or earlier run) uses.
    fn unique(prefix: &str) -> String {
        use std::time::{SystemTime, UNIX_EPOCH};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}_{}_{nanos}_{n}", std::process::id())
    }

    async fn store(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(url, &unique("DB")).await
    }

    /// A mailbox database of its own on the test server.
    struct Postgres {
        url: String,
        name: String,
    }

    impl Backend for Postgres {
        type Store = PostgresStore;

        fn new() -> Result<Option<Self>, Box<dyn std::error::Error>> {
            Ok(server().map(|url| Postgres {
                url,
                name: unique("DB"),
            }))
        }

        async fn open(&self) -> Result<PostgresStore, StoreError> {
            PostgresStore::connect(&self.url, &self.name).await
        }

        fn transactions(store: &PostgresStore) -> u64 {
            store.transactions()
        }

        fn fail_commits(store: &PostgresStore, fail: bool) {
            store.inner.fail_commits.store(fail, Ordering::Relaxed);
        }
    }

    contract_tests!(Postgres);

    /// A direct connection, for what the tests check behind the store's back.
    async fn admin(url: &str) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = url.parse::<Config>()?.connect(NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// The way the server opens it: `open_store` at startup, inside the runtime,
    /// connecting on first use.
    #[tokio::test]
    async fn open_store_connects_on_first_use() -> TestResult {
        let Some(url) = server() else { return Ok(()) };
        let store = super::super::open_store(&url, &unique("DB"), std::path::Path::new("unused"))?;
        assert!(store.counts().await?.is_empty());
        let committed = store.commit(vec![inbox("nm-1", b"x")]).await?;
        assert!(
            matches!(committed[..], [Committed::New(_)]),
            "{committed:?}"
        );
        assert_eq!(store.list(USER1, Folder::Inbox).await?.len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn mailbox_database_names_are_case_insensitive() -> TestResult {
        let Some(url) = server() else { return Ok(()) };
        let name = unique("db");
        let id = {
            let store = PostgresStore::connect(&url, &name).await?;
            deliver(&store, inbox("nm-1", b"kept\r\n")).await?
        };
        // As Exchange's are.
        let store = PostgresStore::connect(&url, &name.to_uppercase()).await?;
        assert_eq!(ids(&store.list(USER1, Folder::Inbox).await?), [id]);
        assert_eq!(
            store.commit(vec![inbox("nm-1", b"kept\r\n")]).await?,
            [Committed::Duplicate(id)]
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_write_postgresql_refuses_fails_alone() -> TestResult {
        let Some(url) = server() else { return Ok(()) };
        let store = Arc::new(store(&url).await?);
        // A network message id far beyond what a btree index entry can hold (about
        // 2.7 kB), and barely compressible: PostgreSQL refuses the row.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let huge: String = (0..20_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'!' + (seed % 90) as u8)
            })
            .collect();
        let start = Arc::new(Barrier::new(21));
        let mut tasks = Vec::new();
        for n in 0..21 {
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            let id = if n == 10 {
                huge.clone()
            } else {
                format!("nm-{n}")
            };
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                store.commit(vec![inbox(&id, b"x")]).await
            }));
        }
        for (n, task) in tasks.into_iter().enumerate() {
            let result = task.await?;
            if n == 10 {
                assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
            } else {
                assert!(
                    matches!(result.as_deref(), Ok([Committed::New(_)])),
                    "{result:?}"
                );
            }
        }
        assert_eq!(store.list(USER1, Folder::Inbox).await?.len(), 20);
        Ok(())
    }

    #[tokio::test]
    async fn nul_in_text_is_stored_as_a_replacement_character() -> TestResult {
        let Some(url) = server() else { return Ok(()) };
        let store = store(&url).await?;
        let odd = NewItem {
            subject: "a\0b".to_owned(),
            ..inbox("nm\0x", b"\0")
        };
        let id = deliver(&store, odd.clone()).await?;
        let listed = store.list(USER1, Folder::Inbox).await?;
        assert_eq!(listed[0].subject, "a\u{fffd}b");
        assert_eq!(listed[0].network_message_id, "nm\u{fffd}x");
        assert_eq!(store.content(id).await?, b"\0");
        assert_eq!(store.commit(vec![odd]).await?, [Committed::Duplicate(id)]);
        Ok(())
    }

    /// Two servers of a DAG (two stores, each with its own connections) deliver the
    /// same messages at once, as during a switchover: every message is stored once,
    /// one of them hears New and the other Duplicate of that same item.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_servers_delivering_the_same_messages_store_one_copy() -> TestResult {
        const MESSAGES: usize = 50;
        let Some(url) = server() else { return Ok(()) };
        let name = unique("DAG");
        let servers = [
            Arc::new(PostgresStore::connect(&url, &name).await?),
            Arc::new(PostgresStore::connect(&url, &name).await?),
        ];
        let start = Arc::new(Barrier::new(2 * MESSAGES));
        let mut tasks = Vec::new();
        for n in 0..MESSAGES {
            for server in &servers {
                let (store, start) = (Arc::clone(server), Arc::clone(&start));
                tasks.push(tokio::spawn(async move {
                    start.wait().await;
                    // Two recipients per message, in either order.
                    let items = if n % 2 == 0 {
                        vec![
                            inbox(&format!("nm-{n}"), b"x"),
                            item(USER2, Folder::Inbox, &format!("nm-{n}"), b"x"),
                        ]
                    } else {
                        vec![
                            item(USER2, Folder::Inbox, &format!("nm-{n}"), b"x"),
                            inbox(&format!("nm-{n}"), b"x"),
                        ]
                    };
                    store.commit(items).await
                }));
            }
        }
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await??);
        }
        for pair in answers.chunks(2) {
            for (&a, &b) in pair[0].iter().zip(&pair[1]) {
                match (a, b) {
                    (Committed::New(x), Committed::Duplicate(y))
                    | (Committed::Duplicate(y), Committed::New(x)) => assert_eq!(x, y),
                    other => panic!("expected one New and one Duplicate, got {other:?}"),
                }
            }
        }
        for server in &servers {
            assert_eq!(server.list(USER1, Folder::Inbox).await?.len(), MESSAGES);
            assert_eq!(server.list(USER2, Folder::Inbox).await?.len(), MESSAGES);
        }
        Ok(())
    }

    #[tokio::test]
    async fn two_mailbox_databases_in_one_postgresql_database_stay_apart() -> TestResult {
        let Some(url) = server() else { return Ok(()) };
        let (db1, db2) = (store(&url).await?, store(&url).await?);
        let in1 = deliver(&db1, inbox("nm-1", b"in DB01")).await?;
        // The same message for the same mailbox in the other database is no duplicate.
        let in2 = deliver(&db2, inbox("nm-1", b"in DB02")).await?;
        assert_ne!(in1, in2);
        let out1 = deliver(&db1, item(USER1, Folder::Outbox, "nm-2", b"out")).await?;

        assert_eq!(ids(&db1.list(USER1, Folder::Inbox).await?), [in1]);
        assert_eq!(ids(&db2.list(USER1, Folder::Inbox).await?), [in2]);
        assert_eq!(db2.content(in1).await, Err(StoreError::NotFound(in1)));
        assert_eq!(db1.content(in2).await, Err(StoreError::NotFound(in2)));
        assert_eq!(db1.counts().await?.len(), 2);
        assert_eq!(db2.counts().await?.len(), 1);
        assert!(db2.take_outbox(10).await?.is_empty());
        assert_eq!(
            db2.move_item(out1, Folder::SentItems).await,
            Err(StoreError::NotFound(out1))
        );
        assert_eq!(ids(&db1.take_outbox(10).await?), [out1]);
        Ok(())
    }

    /// Servers starting together against a PostgreSQL database without our tables
    /// create them once, without tripping over each other; a schema from a newer
    /// mailflow is then refused. Runs in a database of its own, created for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn servers_starting_together_create_the_schema_once() -> TestResult {
        let Some(url) = server() else { return Ok(()) };
        let admin = admin(&url).await?;
        let fresh = unique("mailflow_schema_test").to_lowercase();
        if let Err(e) = admin
            .batch_execute(&format!("CREATE DATABASE \"{fresh}\""))
            .await
        {
            if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
                eprintln!("skipped: the test role may not create databases");
                return Ok(());
            }
            return Err(e.into());
        }
        let mut config: Config = url.parse()?;
        config.dbname(&fresh);
        let outcome = async {
            let mut starts = Vec::new();
            for n in 0..8 {
                let config = config.clone();
                starts.push(tokio::spawn(async move {
                    let store = PostgresStore::from_config(config, &format!("DB{n:02}"));
                    store.reader().await?;
                    deliver(&store, inbox("nm-1", b"x")).await
                }));
            }
            for start in starts {
                start.await??;
            }
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(connection);
            let items: i64 = client
                .query_one("SELECT count(*) FROM mailbox_items", &[])
                .await?
                .try_get(0)?;
            assert_eq!(items, 8);
            client
                .batch_execute("UPDATE mailflow_schema SET version = version + 1")
                .await?;
            match PostgresStore::from_config(config.clone(), "DB01")
                .reader()
                .await
            {
                Err(StoreError::Database(msg)) => assert!(msg.contains("newer"), "{msg}"),
                Err(other) => panic!("unexpected error {other}"),
                Ok(_) => panic!("a newer schema must be refused"),
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        }
        .await;
        admin
            .batch_execute(&format!("DROP DATABASE \"{fresh}\" WITH (FORCE)"))
            .await?;
        outcome
    }

    /// PostgreSQL restarting or failing over ends the store's sessions: the next
    /// write and read open new ones rather than failing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_store_reconnects_after_its_sessions_are_ended() -> TestResult {
        let Some(url) = server() else { return Ok(()) };
        let application = unique("mailflow_test");
        let mut config: Config = url.parse()?;
        config.application_name(&application);
        let store = PostgresStore::from_config(config, &unique("DB"));
        let first = deliver(&store, inbox("nm-1", b"x")).await?;
        assert_eq!(store.list(USER1, Folder::Inbox).await?.len(), 1);

        let admin = admin(&url).await?;
        let sessions = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                &[&application],
            )
            .await?;
        let mut ended = 0;
        for session in &sessions {
            let pid: i32 = session.try_get(0)?;
            let row = admin
                .query_one("SELECT pg_terminate_backend($1, 10000)", &[&pid])
                .await?;
            ended += usize::from(row.try_get::<_, bool>(0)?);
        }
        assert_eq!(ended, 2, "the writer's and the reader's sessions");

        let second = deliver(&store, inbox("nm-2", b"y")).await?;
        assert_eq!(
            ids(&store.list(USER1, Folder::Inbox).await?),
            [first, second]
        );
        assert_eq!(
            store.commit(vec![inbox("nm-1", b"x")]).await?,
            [Committed::Duplicate(first)]
        );

        // The session ends in the middle of a transaction: tried again on a new one.
        store.inner.end_session_once.store(true, Ordering::Relaxed);
        let third = deliver(&store, inbox("nm-3", b"z")).await?;
        assert!(!store.inner.end_session_once.load(Ordering::Relaxed));
        assert_eq!(
            ids(&store.list(USER1, Folder::Inbox).await?),
            [first, second, third]
        );
        Ok(())
    }

    /// Every server of a DAG, whatever its mailflow version, must take the same
    /// advisory locks: the keys are part of the on-database format.
    #[test]
    fn advisory_lock_keys_are_stable() {
        assert_eq!(
            lock_key(""),
            i64::from_ne_bytes(0xcbf2_9ce4_8422_2325_u64.to_ne_bytes())
        );
        assert_eq!(
            lock_key("a"),
            i64::from_ne_bytes(0xaf63_dc4c_8601_ec8c_u64.to_ne_bytes())
        );
        assert_ne!(
            lock_key("mailflow mailbox database db01"),
            lock_key("mailflow mailbox database db02")
        );
    }
}

//! The queue database (Exchange's `mail.que`): one SQLite file per server, written by
//! one thread that group-commits.
//!
//! Acceptance is a promise (DESIGN §1): a message is inserted and the transaction
//! fsync'd (`synchronous=FULL` in WAL mode) before SMTP Receive answers 250. The writer
//! takes every operation queued while the previous commit was being fsync'd and applies
//! them in one transaction, so under load many messages share one fsync
//! (QueueDatabaseBatchSize in the reference §3.6 is the same idea). Operations apply in
//! the order they were sent, so a delivery recorded after a categorization never
//! overtakes it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::TrySendError;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Most operations per transaction: bounds a transaction's size whatever the backlog.
const MAX_BATCH: usize = 512;
/// Most message content per transaction: its pages stay in memory until COMMIT
/// (`wal::tune_writer`).
const MAX_BATCH_BYTES: usize = 16 << 20;

/// Envelope and bookkeeping of a queued message; the content travels beside it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Envelope {
    /// `MAIL FROM` address, empty for the null reverse path.
    pub return_path: String,
    pub network_message_id: String,
    pub message_id: String,
    pub subject: String,
    pub sender_header: String,
    pub received_at: String,
    pub client_ip: String,
    pub client_hostname: String,
    /// `BODY=8BITMIME` etc. to pass on.
    pub body: String,
    pub smtputf8: bool,
    pub ret: Option<String>,
    pub envid: Option<String>,
    /// Originating (from inside the organisation) or Incoming.
    pub directionality: String,
    /// Times the server died while categorizing this message (poison detection).
    #[serde(default)]
    pub crash_count: u32,
}

/// State of one recipient of a queued message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientState {
    /// In the Submission queue: not yet categorized.
    Submitted,
    /// Categorized into a delivery queue, waiting or in delivery.
    Ready,
    Delivered,
    Failed,
}

impl RecipientState {
    fn code(self) -> i64 {
        match self {
            RecipientState::Submitted => 0,
            RecipientState::Ready => 1,
            RecipientState::Delivered => 2,
            RecipientState::Failed => 3,
        }
    }
    fn from_code(c: i64) -> RecipientState {
        match c {
            0 => RecipientState::Submitted,
            1 => RecipientState::Ready,
            2 => RecipientState::Delivered,
            _ => RecipientState::Failed,
        }
    }
}

/// One envelope recipient and, once categorized, where it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedRecipient {
    pub address: String,
    pub orcpt: Option<String>,
    pub notify: Vec<String>,
    /// The next-hop solution key (`DeliveryType:NextHopDomain`) once categorized.
    pub next_hop: Option<String>,
    pub state: RecipientState,
    pub last_error: Option<String>,
    /// A delay DSN was sent (once per recipient, reference §6).
    #[serde(default)]
    pub delay_notified: bool,
}

/// A message as loaded at start.
pub struct Loaded {
    pub id: i64,
    pub envelope: Envelope,
    pub content: Arc<[u8]>,
    pub recipients: Vec<QueuedRecipient>,
}

enum Op {
    Insert {
        envelope: Box<Envelope>,
        content: Arc<[u8]>,
        recipients: Vec<QueuedRecipient>,
        done: oneshot::Sender<Result<i64, String>>,
    },
    /// Categorizer: the message's recipients become `recipients`.
    Categorized {
        id: i64,
        recipients: Vec<QueuedRecipient>,
    },
    /// Rerouted recipients: replaced one by one, the others untouched.
    Upsert {
        id: i64,
        recipients: Vec<QueuedRecipient>,
    },
    /// Final or retry state of some recipients (by address).
    Recipients {
        id: i64,
        updates: Vec<(String, RecipientState, Option<String>)>,
    },
    /// Delay notices sent: only the flag changes, never the state.
    DelayNotified {
        id: i64,
        addresses: Vec<String>,
    },
    /// The envelope changed (crash count).
    Envelope {
        id: i64,
        envelope: Box<Envelope>,
    },
    /// All recipients done: the message leaves the queue.
    Delete {
        id: i64,
    },
    Barrier(oneshot::Sender<()>),
}

/// Handle to the queue database writer.
#[derive(Clone)]
pub struct QueueDb {
    tx: std::sync::mpsc::SyncSender<Op>,
    /// Committed transactions, to show that load shares fsyncs.
    transactions: Arc<AtomicU64>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    envelope TEXT NOT NULL,
    content BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    message INTEGER NOT NULL,
    address TEXT NOT NULL,
    detail TEXT NOT NULL,
    state INTEGER NOT NULL,
    PRIMARY KEY (message, address)
) WITHOUT ROWID;
";

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: every commit is fsync'd before it returns; the 250 waits for it.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

impl QueueDb {
    /// Opens (creating) the queue database, loads what it holds, and starts the writer.
    pub fn open(path: &Path) -> anyhow::Result<(QueueDb, Vec<Loaded>)> {
        if let Some(dir) = path.parent() {
            crate::files::create_private_dir_all(dir)?;
        }
        let conn = open(path).map_err(|e| {
            anyhow::anyhow!("{}: cannot open the queue database: {e}", path.display())
        })?;
        let loaded = load(&conn).map_err(|e| {
            anyhow::anyhow!("{}: cannot read the queue database: {e}", path.display())
        })?;
        let checkpointer = crate::wal::Checkpointer::start(&conn, path, "queue-db")?;
        // Bounded: a stalled disk pushes back on SMTP Receive instead of filling memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Op>(8192);
        let transactions = Arc::new(AtomicU64::new(0));
        std::thread::Builder::new()
            .name("queue-db-writer".into())
            .spawn({
                let transactions = transactions.clone();
                move || writer(conn, rx, &transactions, &checkpointer)
            })?;
        Ok((QueueDb { tx, transactions }, loaded))
    }

    fn send(&self, op: Op) {
        // Blocking only when 8192 operations are waiting: back pressure on the caller.
        let _ = self.tx.send(op);
    }

    /// Inserts a message durably; resolves once the commit is on disk.
    pub async fn insert(
        &self,
        envelope: Envelope,
        content: Arc<[u8]>,
        recipients: Vec<QueuedRecipient>,
    ) -> Result<i64, String> {
        let (done, wait) = oneshot::channel();
        let op = Op::Insert {
            envelope: Box::new(envelope),
            content,
            recipients,
            done,
        };
        // Usually there is room; when 8192 operations wait, block (back pressure) on a
        // blocking thread, never on the runtime.
        match self.tx.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(op)) => {
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(op).map_err(|_| ()))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|()| "queue database writer stopped".to_string())?;
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err("queue database writer stopped".into());
            }
        }
        wait.await
            .map_err(|_| "queue database writer stopped".to_string())?
    }

    pub fn categorized(&self, id: i64, recipients: Vec<QueuedRecipient>) {
        self.send(Op::Categorized { id, recipients });
    }

    pub fn delay_notified(&self, id: i64, addresses: Vec<String>) {
        self.send(Op::DelayNotified { id, addresses });
    }

    pub fn update_envelope(&self, id: i64, envelope: Envelope) {
        self.send(Op::Envelope {
            id,
            envelope: Box::new(envelope),
        });
    }

    pub fn upsert_recipients(&self, id: i64, recipients: Vec<QueuedRecipient>) {
        self.send(Op::Upsert { id, recipients });
    }

    pub fn update_recipients(
        &self,
        id: i64,
        updates: Vec<(String, RecipientState, Option<String>)>,
    ) {
        self.send(Op::Recipients { id, updates });
    }

    pub fn delete(&self, id: i64) {
        self.send(Op::Delete { id });
    }

    /// Transactions committed so far (logged at shutdown; compare with messages).
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Resolves when everything sent before it is committed (tests, shutdown).
    pub async fn barrier(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Op::Barrier(done));
        let _ = wait.await;
    }
}

fn load(conn: &Connection) -> rusqlite::Result<Vec<Loaded>> {
    let mut out = Vec::new();
    let mut msgs = conn.prepare("SELECT id, envelope, content FROM messages ORDER BY id")?;
    let mut rcpts = conn.prepare("SELECT detail, state FROM recipients WHERE message = ?1")?;
    let rows = msgs.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    for row in rows {
        let (id, envelope, content) = row?;
        let Ok(envelope) = serde_json::from_str::<Envelope>(&envelope) else {
            tracing::error!(
                id,
                "queue database: unreadable envelope; message left in place"
            );
            continue;
        };
        let recipients = rcpts
            .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .filter_map(|r| r.ok())
            .filter_map(|(detail, state)| {
                let mut rcpt: QueuedRecipient = serde_json::from_str(&detail).ok()?;
                rcpt.state = RecipientState::from_code(state);
                Some(rcpt)
            })
            .collect();
        out.push(Loaded {
            id,
            envelope,
            content: content.into(),
            recipients,
        });
    }
    Ok(out)
}

fn writer(
    mut conn: Connection,
    rx: std::sync::mpsc::Receiver<Op>,
    transactions: &AtomicU64,
    checkpointer: &crate::wal::Checkpointer,
) {
    // State changes of a batch whose commit failed (disk full, I/O error): kept and
    // tried again first, so memory and disk never drift apart silently.
    let mut retry: Vec<Op> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut retry);
        if batch.is_empty() {
            match rx.recv() {
                Ok(op) => batch.push(op),
                Err(_) => return,
            }
        } else {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let content = |op: &Op| match op {
            Op::Insert { content, .. } => content.len(),
            _ => 0,
        };
        let mut bytes: usize = batch.iter().map(content).sum();
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(op) => {
                    bytes += content(&op);
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        let mut results: Vec<Result<i64, String>> = Vec::new();
        let outcome = (|| -> rusqlite::Result<()> {
            let mut tx = conn.transaction()?;
            for op in &batch {
                match op {
                    Op::Insert {
                        envelope,
                        content,
                        recipients,
                        ..
                    } => {
                        // Each message in its own savepoint: a failed insert leaves no
                        // half-written row behind in a batch that commits.
                        let sp = tx.savepoint()?;
                        let r = insert(&sp, envelope, content, recipients);
                        if r.is_ok() {
                            sp.commit()?;
                        }
                        results.push(r.map_err(|e| e.to_string()));
                    }
                    other => apply(&tx, other)?,
                }
            }
            tx.commit()?;
            transactions.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })();
        let mut results = results.into_iter();
        if let Err(e) = &outcome {
            tracing::error!("queue database commit failed (state changes will be retried): {e}");
        }
        for op in batch {
            match op {
                Op::Insert { done, .. } => {
                    let r = match (&outcome, results.next()) {
                        (Ok(()), Some(r)) => r,
                        (Err(e), _) => Err(e.to_string()),
                        (Ok(()), None) => Err("internal error".into()),
                    };
                    let _ = done.send(r);
                }
                Op::Barrier(done) if outcome.is_ok() => {
                    let _ = done.send(());
                }
                other if outcome.is_err() => retry.push(other),
                _ => {}
            }
        }
        // After the replies: the sessions waiting for their 250 are not kept waiting.
        checkpointer.after_commit(&conn);
    }
}

/// Applies one state change inside the writer's transaction.
fn apply(tx: &rusqlite::Connection, op: &Op) -> rusqlite::Result<()> {
    match op {
        Op::Categorized { id, recipients } => {
            tx.execute("DELETE FROM recipients WHERE message = ?1", [id])?;
            put_recipients(tx, *id, recipients)?;
        }
        Op::Upsert { id, recipients } => put_recipients(tx, *id, recipients)?,
        Op::DelayNotified { id, addresses } => {
            let mut stmt = tx.prepare_cached(
                "UPDATE recipients SET detail = json_set(detail, '$.delay_notified', json('true')) WHERE message = ?1 AND address = ?2",
            )?;
            for a in addresses {
                stmt.execute(params![id, a.to_lowercase()])?;
            }
        }
        Op::Envelope { id, envelope } => {
            let env = serde_json::to_string(envelope).unwrap_or_default();
            tx.execute(
                "UPDATE messages SET envelope = ?2 WHERE id = ?1",
                params![id, env],
            )?;
        }
        Op::Recipients { id, updates } => {
            let mut stmt = tx.prepare_cached(
                "UPDATE recipients SET state = ?3, detail = json_set(detail, '$.last_error', ?4) WHERE message = ?1 AND address = ?2",
            )?;
            for (address, state, error) in updates {
                stmt.execute(params![id, address.to_lowercase(), state.code(), error])?;
            }
        }
        Op::Delete { id } => {
            tx.execute("DELETE FROM recipients WHERE message = ?1", [id])?;
            tx.execute("DELETE FROM messages WHERE id = ?1", [id])?;
        }
        Op::Insert { .. } | Op::Barrier(_) => {}
    }
    Ok(())
}
fn insert(
    tx: &rusqlite::Connection,
    envelope: &Envelope,
    content: &[u8],
    recipients: &[QueuedRecipient],
) -> rusqlite::Result<i64> {
    let env = serde_json::to_string(envelope).unwrap_or_default();
    tx.prepare_cached("INSERT INTO messages (envelope, content) VALUES (?1, ?2)")?
        .execute(params![env, content])?;
    let id = tx.last_insert_rowid();
    put_recipients(tx, id, recipients)?;
    Ok(id)
}

fn put_recipients(
    tx: &rusqlite::Connection,
    id: i64,
    recipients: &[QueuedRecipient],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO recipients (message, address, detail, state) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for r in recipients {
        let detail = serde_json::to_string(r).unwrap_or_default();
        stmt.execute(params![
            id,
            r.address.to_lowercase(),
            detail,
            r.state.code()
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(a: &str) -> QueuedRecipient {
        QueuedRecipient {
            address: a.into(),
            orcpt: None,
            notify: vec![],
            next_hop: None,
            state: RecipientState::Submitted,
            last_error: None,
            delay_notified: false,
        }
    }

    #[tokio::test]
    async fn inserted_messages_survive_reopen_with_states() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.db");
        let (db, loaded) = QueueDb::open(&path).unwrap();
        assert!(loaded.is_empty());
        let mut ids = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.insert(
                    Envelope {
                        return_path: format!("s{i}@x.test"),
                        ..Default::default()
                    },
                    Arc::from(&b"hello"[..]),
                    vec![rcpt("a@x.test"), rcpt("b@x.test")],
                )
                .await
            }));
        }
        for t in tasks {
            ids.push(t.await.unwrap().unwrap());
        }
        // Group commit: 50 concurrent inserts shared transactions (and fsyncs).
        assert!(
            db.transactions() < 50,
            "{} transactions for 50 inserts",
            db.transactions()
        );
        db.update_recipients(
            ids[0],
            vec![("A@x.test".into(), RecipientState::Delivered, None)],
        );
        db.delete(ids[1]);
        db.barrier().await;
        drop(db);
        let (_db, loaded) = QueueDb::open(&path).unwrap();
        assert_eq!(loaded.len(), 49);
        let first = loaded.iter().find(|m| m.id == ids[0]).unwrap();
        assert_eq!(&first.content[..], b"hello");
        let a = first
            .recipients
            .iter()
            .find(|r| r.address == "a@x.test")
            .unwrap();
        assert_eq!(a.state, RecipientState::Delivered);
        assert!(loaded.iter().all(|m| m.id != ids[1]));
    }
}

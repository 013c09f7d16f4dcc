//! The write side of the PostgreSQL backend: the writer task that group-commits
//! queued writes in one transaction under the mailbox database's advisory lock, and
//! tries a transaction again after a broken connection or a deadlock. Imports only
//! its parent, [`super::error`], [`super::faults`] and the shared write types of
//! [`super::super::rows`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio_postgres::{Client, Statement};

use super::super::rows::{Done, Job, Op, mismatched_answer};
use super::error::TxError;
use super::{Committed, Inner, NewItem, OPERATION_TIMEOUT, StoreError, clean, open_connection};

pub(super) const INSERT_ITEM: &str = "\
    INSERT INTO mailbox_items (mailbox_database, mailbox, folder, network_message_id, \
        internet_message_id, sender, subject, size, content) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (mailbox_database, mailbox, folder, network_message_id) DO NOTHING \
    RETURNING id";

pub(super) const EXISTING_ITEM: &str = "\
    SELECT id FROM mailbox_items \
    WHERE mailbox_database = $1 AND mailbox = $2 AND folder = $3 AND network_message_id = $4";

/// Moves item $2 to folder $3, or deletes it when that folder already holds the same
/// message (SQLite's `UPDATE OR IGNORE` then `DELETE`); the count is 0 when there is
/// no such item. One statement, so that no unique violation can abort the batch's
/// transaction; the advisory lock keeps the check and the change together.
pub(super) const MOVE_ITEM: &str = "\
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

/// Most writes in one transaction.
pub(super) const MAX_BATCH: usize = 256;

/// Most tries of one transaction: a broken connection (before COMMIT) or a
/// deadlock/serialization failure is worth another try, not more.
pub(super) const MAX_TRIES: u32 = 3;

/// Set on write connections: PostgreSQL ends a session of ours that stays idle inside
/// a transaction (a hung or partitioned server) and so frees the advisory lock for
/// the other servers. Our transactions are never idle between statements.
pub(super) const IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";

/// The write connection and its prepared statements.
pub(super) struct WriteConn {
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

/// The writer task: runs until the store is dropped and its queue drained.
pub(super) async fn run_writer(inner: Arc<Inner>, mut queue: mpsc::Receiver<Job>) {
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
pub(super) async fn write_batch(
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
pub(super) async fn transaction_with_retries(
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
pub(super) async fn transaction(
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
    inner
        .faults
        .after_begin(&c.client)
        .await
        .map_err(sql_error)?;
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
    inner.faults.before_commit()?;
    c.client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| TxError::classify(&e, true))?;
    Ok(results)
}

pub(super) async fn insert_items(
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

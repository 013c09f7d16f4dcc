//! The read side of the PostgreSQL backend: one shared connection (tokio-postgres
//! pipelines concurrent queries), its prepared statements, and rows turned into
//! [`StoredItem`]s. Imports only its parent and [`super::error`].

use std::future::Future;
use std::sync::Arc;

use tokio_postgres::{Client, Row, Statement};

use super::error::TxError;
use super::{Folder, OPERATION_TIMEOUT, PostgresStore, StoreError, StoredItem, open_connection};

/// The columns of a [`StoredItem`]; `received` in the form SQLite stores.
pub(super) const ITEM_COLUMNS: &str = "id, mailbox, folder, network_message_id, internet_message_id, \
    sender, subject, size, \
    to_char(received AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

impl PostgresStore {
    /// The read connection, opened if there is none or it broke.
    pub(super) async fn reader(&self) -> Result<Arc<ReadConn>, StoreError> {
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
    pub(super) async fn read<T, F, Fut>(&self, query: F) -> Result<T, StoreError>
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

/// The read connection and its prepared statements.
pub(super) struct ReadConn {
    pub(super) client: Client,
    pub(super) list: Statement,
    pub(super) content: Statement,
    pub(super) counts: Statement,
    pub(super) outbox: Statement,
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

pub(super) fn stored_item(row: &Row) -> Result<StoredItem, StoreError> {
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
pub(super) fn folder_at(row: &Row, idx: usize) -> Result<Folder, StoreError> {
    let name: String = row.try_get(idx)?;
    name.parse()
        .map_err(|e| StoreError::Database(format!("mailbox_items: {e}")))
}

pub(super) fn unsigned_at(row: &Row, idx: usize) -> Result<u64, StoreError> {
    let value: i64 = row.try_get(idx)?;
    u64::try_from(value)
        .map_err(|_| StoreError::Database(format!("mailbox_items: negative size {value}")))
}

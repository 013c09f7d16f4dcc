//! The read side of the PostgreSQL backend: one shared connection (tokio-postgres
//! pipelines concurrent queries), its prepared statements, and its rows' columns as
//! [`super::super::rows`] reads them. Imports only its parent, [`super::error`] and
//! the shared rows.

use std::future::Future;
use std::sync::Arc;

use tokio_postgres::{Client, Row, Statement};

use super::super::rows::Columns;
use super::error::TxError;
use super::{OPERATION_TIMEOUT, PostgresStore, StoreError, open_connection};

/// The columns of a [`StoredItem`](super::StoredItem); `received` in the form SQLite stores.
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

impl Columns for Row {
    const TABLE: &'static str = "mailbox_items";

    fn text(&self, idx: usize) -> Result<String, StoreError> {
        Ok(self.try_get(idx)?)
    }

    fn integer(&self, idx: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(idx)?)
    }
}

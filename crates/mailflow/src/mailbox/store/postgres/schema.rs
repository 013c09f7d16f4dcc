//! The mailbox tables of the PostgreSQL backend and their version: created when
//! missing, refused when a newer mailflow wrote them. Imports only its parent.

use tokio_postgres::Client;

use super::error::describe;
use super::{StoreError, lock_key};

/// The version of the tables below, kept in `mailflow_schema`; a store refuses a
/// database from a newer mailflow rather than misreading it.
pub(super) const SCHEMA_VERSION: i32 = 1;

/// Created when missing, under an advisory lock so that servers starting together
/// do not race on it. The text columns that are keys or sort keys use the "C"
/// collation: bytewise, as SQLite compares, whatever the database's locale.
pub(super) const SCHEMA: &str = r#"
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

/// Creates the tables if missing and refuses a schema from a newer mailflow. Servers
/// starting together take turns on an advisory lock; a role that may not create
/// tables can use a schema someone else created.
pub(super) async fn ensure_schema(client: &Client) -> Result<(), StoreError> {
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

pub(super) async fn schema_version(client: &Client) -> Result<Option<i32>, StoreError> {
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

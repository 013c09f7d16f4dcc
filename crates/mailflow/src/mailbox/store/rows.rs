//! What both backends share between their rows and our values: the write a caller
//! queues for the writer and what it answers ([`Op`], [`Done`], [`Job`]), and the
//! reading of an item row or a folder count row through [`Columns`]. Knows no backend:
//! each implements [`Columns`] for its own row type; imports nothing but its parent.

use tokio::sync::oneshot;

use super::{Committed, Folder, FolderCount, NewItem, StoreError, StoredItem};

/// One write queued for a backend's writer, with where its answer goes.
pub(super) struct Job {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Result<Done, StoreError>>,
}

/// A write: the writer applies it inside its batch's transaction.
pub(super) enum Op {
    Commit(Vec<NewItem>),
    Move { id: i64, to: Folder },
}

/// What the writer did with an [`Op`], of the same kind.
pub(super) enum Done {
    Committed(Vec<Committed>),
    Moved,
}

impl Done {
    /// The answer to an [`Op::Commit`].
    pub(super) fn committed(self) -> Result<Vec<Committed>, StoreError> {
        match self {
            Done::Committed(committed) => Ok(committed),
            Done::Moved => Err(mismatched_answer()),
        }
    }

    /// The answer to an [`Op::Move`].
    pub(super) fn moved(self) -> Result<(), StoreError> {
        match self {
            Done::Moved => Ok(()),
            Done::Committed(_) => Err(mismatched_answer()),
        }
    }
}

/// The writer's answer was not of its write's kind (a bug, not a database failure).
pub(super) fn mismatched_answer() -> StoreError {
    StoreError::Database("the writer answered a different kind of write".to_owned())
}

/// A backend's row, as the readers below see it: a column by index, as text or as an
/// integer, with the backend's error already ours.
pub(super) trait Columns {
    /// The table named in errors about a value in it.
    const TABLE: &'static str;
    fn text(&self, idx: usize) -> Result<String, StoreError>;
    fn integer(&self, idx: usize) -> Result<i64, StoreError>;
}

/// An item row: `id, mailbox, folder, network_message_id, internet_message_id, sender,
/// subject, size, received`, in that order.
pub(super) fn stored_item(row: &impl Columns) -> Result<StoredItem, StoreError> {
    Ok(StoredItem {
        id: row.integer(0)?,
        mailbox: row.text(1)?,
        folder: folder_at(row, 2)?,
        network_message_id: row.text(3)?,
        internet_message_id: row.text(4)?,
        sender: row.text(5)?,
        subject: row.text(6)?,
        size: unsigned_at(row, 7)?,
        received: row.text(8)?,
    })
}

/// A folder count row: `mailbox, folder, count, sum of sizes`.
pub(super) fn folder_count(row: &impl Columns) -> Result<FolderCount, StoreError> {
    Ok(FolderCount {
        mailbox: row.text(0)?,
        folder: folder_at(row, 1)?,
        items: unsigned_at(row, 2)?,
        bytes: unsigned_at(row, 3)?,
    })
}

/// A folder column: text written by us, but read defensively since the database is
/// outside our control (a file anyone can open, or a server shared with others).
fn folder_at<R: Columns>(row: &R, idx: usize) -> Result<Folder, StoreError> {
    row.text(idx)?
        .parse()
        .map_err(|e| StoreError::Database(format!("{}: {e}", R::TABLE)))
}

/// A size or count column, never negative in what we write.
fn unsigned_at<R: Columns>(row: &R, idx: usize) -> Result<u64, StoreError> {
    let value = row.integer(idx)?;
    u64::try_from(value)
        .map_err(|_| StoreError::Database(format!("{}: negative size {value}", R::TABLE)))
}

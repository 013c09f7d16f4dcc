//! Errors of the PostgreSQL backend: PostgreSQL's errors as one-line text, and why
//! a transaction or read failed, which decides whether it is tried again. Imports
//! only its parent.

use tokio_postgres::error::SqlState;

use super::{OPERATION_TIMEOUT, StoreError};

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Database(describe(&e))
    }
}

/// The text of an error, on one line (it reaches SMTP replies): PostgreSQL's own
/// message and SQLSTATE when it has one (tokio-postgres says only "db error"),
/// otherwise the error and its causes.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
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

/// Why a transaction failed, which decides what happens next.
pub(super) enum TxError {
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
    pub(super) fn classify(e: &tokio_postgres::Error, committing: bool) -> TxError {
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

    pub(super) fn connection_unusable(&self) -> bool {
        matches!(
            self,
            TxError::Unavailable(_) | TxError::Connection { .. } | TxError::TimedOut
        )
    }

    pub(super) fn worth_retrying(&self) -> bool {
        matches!(
            self,
            TxError::Conflict(_)
                | TxError::Connection {
                    committing: false,
                    ..
                }
        )
    }

    pub(super) fn message(&self) -> String {
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

    pub(super) fn into_store_error(self) -> StoreError {
        match self {
            TxError::Unavailable(e) => e,
            other => StoreError::Database(other.message()),
        }
    }
}

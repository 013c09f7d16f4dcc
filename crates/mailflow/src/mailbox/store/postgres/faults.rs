//! Faults the tests inject into the writer: a transaction that fails after its
//! writes, before COMMIT, and a session PostgreSQL ends midway. Outside tests
//! [`Faults`] is empty and its checks do nothing, so the product structs hold no
//! test-only state. Imports only its parent and [`super::error`].

use super::error::TxError;

/// The faults to inject; set by the tests through [`Inner::faults`](super::Inner).
#[cfg(test)]
#[derive(Default)]
pub(super) struct Faults {
    /// While set, every transaction fails before COMMIT.
    pub(super) fail_commits: std::sync::atomic::AtomicBool,
    /// When set, the next transaction has PostgreSQL end its session midway.
    pub(super) end_session_once: std::sync::atomic::AtomicBool,
}

#[cfg(not(test))]
#[derive(Default)]
pub(super) struct Faults;

#[cfg(test)]
impl Faults {
    /// After BEGIN and the advisory lock: ends the session once if asked to.
    pub(super) async fn after_begin(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        use std::sync::atomic::Ordering;
        if self.end_session_once.swap(false, Ordering::Relaxed) {
            client
                .batch_execute("SELECT pg_terminate_backend(pg_backend_pid())")
                .await?;
        }
        Ok(())
    }

    /// After the writes, before COMMIT: fails the transaction while asked to.
    pub(super) fn before_commit(&self) -> Result<(), TxError> {
        use std::sync::atomic::Ordering;
        if self.fail_commits.load(Ordering::Relaxed) {
            return Err(TxError::Statement("injected failure".to_owned()));
        }
        Ok(())
    }
}

#[cfg(not(test))]
impl Faults {
    #[inline(always)]
    pub(super) async fn after_begin(
        &self,
        _: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        Ok(())
    }

    #[inline(always)]
    pub(super) fn before_commit(&self) -> Result<(), TxError> {
        Ok(())
    }
}

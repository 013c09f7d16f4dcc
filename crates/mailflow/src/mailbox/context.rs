//! What the Mailbox Transport services (Delivery and Submission) are given by
//! `server.rs`: the directory, their own logs, this server's Active Manager, the
//! connection to the organisation's Transport services (Submission) and the mailbox
//! databases with a copy here. Nothing of another service.

use std::sync::Arc;

use super::delivery::Stores;
use crate::directory::active_copies::ActiveCopyRecord;
use crate::directory::live::LiveDirectory;
use crate::logs::service_logs::MailboxLogs;
use crate::net::org_connector::OrgConnector;

/// The Mailbox Transport services' handle.
pub struct MailboxContext {
    pub directory: Arc<LiveDirectory>,
    pub logs: MailboxLogs,
    pub active: Arc<ActiveCopyRecord>,
    pub org: OrgConnector,
    /// The databases with a copy on this server, opened at start.
    pub stores: Stores,
}

impl MailboxContext {
    /// Whether the active copy of `database` is on this server.
    pub fn holds_active_copy(&self, database: &str) -> bool {
        self.active
            .active_server(database)
            .is_some_and(|s| s.eq_ignore_ascii_case(self.name()))
    }
}

impl std::ops::Deref for MailboxContext {
    type Target = LiveDirectory;
    /// The Mailbox services read the directory as this server knows it (`ctx.dir()`,
    /// `ctx.fqdn()`).
    fn deref(&self) -> &LiveDirectory {
        &self.directory
    }
}

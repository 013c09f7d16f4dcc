//! What the Transport service is given by `server.rs`: the directory, its own logs,
//! Active Manager's latest answer (subscribed on a `watch` channel) and the connection
//! to the organisation's other services. Shared by the categorizer, the transmitters
//! and the DSN generator; nothing of another service.

use std::sync::Arc;

use tokio::sync::watch;

use crate::directory::active_copies::ActiveCopies;
use crate::directory::live::LiveDirectory;
use crate::logs::service_logs::TransportLogs;
use crate::net::org_connector::OrgConnector;

/// The Transport service's handle.
pub struct TransportContext {
    pub directory: Arc<LiveDirectory>,
    pub logs: TransportLogs,
    pub org: OrgConnector,
    /// Active Manager's latest answer: which server holds each database's active copy.
    pub active: watch::Receiver<Arc<ActiveCopies>>,
}

impl TransportContext {
    /// The active copies as this server knows them now (kept by the caller for one
    /// routing decision).
    pub fn active_copies(&self) -> Arc<ActiveCopies> {
        self.active.borrow().clone()
    }
}

impl std::ops::Deref for TransportContext {
    type Target = LiveDirectory;
    /// Transport reads the directory as this server knows it (`ctx.dir()`,
    /// `ctx.config()`, `ctx.fqdn()`).
    fn deref(&self) -> &LiveDirectory {
        &self.directory
    }
}

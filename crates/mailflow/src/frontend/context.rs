//! What Front End Transport is given by `server.rs`: the directory, its own logs, the
//! active copies (hub selection), its connection to the organisation's Transport
//! services and DNS for the Outbound Proxy. Only what the Front End uses; nothing of
//! another service.

use std::sync::Arc;

use tokio::sync::watch;

use crate::directory::active_copies::ActiveCopies;
use crate::directory::live::LiveDirectory;
use crate::logs::service_logs::FrontendLogs;
use crate::net::dns::Dns;
use crate::net::org_connector::OrgConnector;

use super::proxy::Pool;

/// The Front End's handle, shared by its receive connectors' sessions.
pub struct FrontendContext {
    pub directory: Arc<LiveDirectory>,
    pub logs: FrontendLogs,
    pub org: OrgConnector,
    /// Active Manager's latest answer (the delivery group of a recipient's database).
    pub active: watch::Receiver<Arc<ActiveCopies>>,
    /// Idle proxy sessions to Transport services (one per server, shared by every
    /// Front End connector).
    pub pool: Pool,
    /// The Outbound Proxy's resolver (MX lookups for send connectors).
    pub dns: Arc<Dns>,
}

impl std::ops::Deref for FrontendContext {
    type Target = LiveDirectory;
    /// The Front End reads the directory as this server knows it (`ctx.dir()`,
    /// `ctx.fqdn()`).
    fn deref(&self) -> &LiveDirectory {
        &self.directory
    }
}

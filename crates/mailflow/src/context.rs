//! What every service of one server shares: the directory, this server's identity, the
//! organisation secret, the active database copies and the log writers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::directory::{Directory, Server};
use crate::logs::protocol::{Direction, ProtocolLog};
use crate::logs::tracking::{TrackingLog, TrackingService};
use crate::net::orgauth::OrgSecret;

const LOG_FILE_SIZE: u64 = 10 * 1024 * 1024;

/// Which server holds the active copy of each database (Active Manager's answer). At
/// start the first copy in activation preference is active.
#[derive(Default)]
pub struct ActiveCopies(RwLock<HashMap<String, String>>);

impl ActiveCopies {
    pub fn from_directory(dir: &Directory) -> ActiveCopies {
        let map = dir
            .databases()
            .filter_map(|d| d.copies.first().map(|s| (d.name.to_lowercase(), s.clone())))
            .collect();
        ActiveCopies(RwLock::new(map))
    }

    pub fn active_server(&self, database: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&database.to_lowercase())
            .cloned()
    }
}

/// Log folders under a server's data folder, in Exchange's layout (reference §7.1, §8.1).
pub struct LogPaths {
    pub message_tracking: PathBuf,
    pub frontend_receive: PathBuf,
    pub frontend_send: PathBuf,
    pub hub_receive: PathBuf,
    pub hub_send: PathBuf,
    pub mailbox_receive: PathBuf,
}

impl LogPaths {
    pub fn new(data_dir: &std::path::Path) -> LogPaths {
        let logs = data_dir.join("Logs");
        LogPaths {
            message_tracking: logs.join("MessageTracking"),
            frontend_receive: logs.join("FrontEnd/ProtocolLog/SmtpReceive"),
            frontend_send: logs.join("FrontEnd/ProtocolLog/SmtpSend"),
            hub_receive: logs.join("Hub/ProtocolLog/SmtpReceive"),
            hub_send: logs.join("Hub/ProtocolLog/SmtpSend"),
            mailbox_receive: logs.join("Mailbox/ProtocolLog/SmtpReceive/Delivery"),
        }
    }
}

pub struct ServerContext {
    pub dir: Arc<Directory>,
    pub server: Server,
    pub data_dir: PathBuf,
    pub ip: IpAddr,
    pub secret: OrgSecret,
    pub active: ActiveCopies,
    pub tracking_transport: TrackingLog,
    pub tracking_delivery: TrackingLog,
    pub frontend_receive_log: ProtocolLog,
    pub frontend_send_log: ProtocolLog,
    pub hub_receive_log: ProtocolLog,
    pub hub_send_log: ProtocolLog,
    pub mailbox_receive_log: ProtocolLog,
}

impl ServerContext {
    pub fn new(
        dir: Arc<Directory>,
        server: Server,
        secret: OrgSecret,
    ) -> anyhow::Result<ServerContext> {
        let data_dir = dir.data_dir(&server);
        std::fs::create_dir_all(&data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data folder {}: {e}", data_dir.display())
        })?;
        let paths = LogPaths::new(&data_dir);
        let ip: IpAddr = server.address.parse()?;
        let proto = |p: &PathBuf, d| ProtocolLog::open(p, d, LOG_FILE_SIZE);
        Ok(ServerContext {
            tracking_transport: TrackingLog::open(
                &paths.message_tracking,
                TrackingService::Transport,
                LOG_FILE_SIZE,
            )?,
            tracking_delivery: TrackingLog::open(
                &paths.message_tracking,
                TrackingService::MailboxDelivery,
                LOG_FILE_SIZE,
            )?,
            frontend_receive_log: proto(&paths.frontend_receive, Direction::Receive)?,
            frontend_send_log: proto(&paths.frontend_send, Direction::Send)?,
            hub_receive_log: proto(&paths.hub_receive, Direction::Receive)?,
            hub_send_log: proto(&paths.hub_send, Direction::Send)?,
            mailbox_receive_log: proto(&paths.mailbox_receive, Direction::Receive)?,
            active: ActiveCopies::from_directory(&dir),
            dir,
            server,
            data_dir,
            ip,
            secret,
        })
    }

    pub fn name(&self) -> &str {
        &self.server.name
    }
    pub fn fqdn(&self) -> &str {
        &self.server.fqdn
    }

    /// Where this server's listeners bind.
    pub fn bind_ip(&self) -> IpAddr {
        self.server
            .bind
            .as_deref()
            .and_then(|b| b.parse().ok())
            .unwrap_or(self.ip)
    }

    /// Where another server's Transport service listens.
    pub fn transport_endpoint(server: &Server) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            server.address.parse().ok()?,
            server.ports.transport,
        ))
    }

    /// Where another server's Mailbox Transport Delivery listens.
    pub fn mailbox_delivery_endpoint(server: &Server) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            server.address.parse().ok()?,
            server.ports.mailbox_delivery,
        ))
    }

    pub fn flush_logs(&self) {
        self.tracking_transport.flush();
        self.tracking_delivery.flush();
        for l in [
            &self.frontend_receive_log,
            &self.frontend_send_log,
            &self.hub_receive_log,
            &self.hub_send_log,
            &self.mailbox_receive_log,
        ] {
            l.flush();
        }
    }
}

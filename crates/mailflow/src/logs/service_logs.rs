//! Each service's own logs, opened once per server in Exchange's folder layout
//! (reference §7.1, §8.1) and handed out by `server.rs`: the Front End gets its
//! protocol logs, Transport its tracking and protocol logs, the Mailbox services
//! theirs. No service holds another's writer, so none can write another's log.

use std::io;
use std::path::{Path, PathBuf};

use super::protocol::{Direction, ProtocolLog};
use super::tracking::{TrackingLog, TrackingService};

const LOG_FILE_SIZE: u64 = 10 * 1024 * 1024;

/// Log folders under a server's data folder, in Exchange's layout.
pub struct LogPaths {
    pub message_tracking: PathBuf,
    pub frontend_receive: PathBuf,
    pub frontend_send: PathBuf,
    pub hub_receive: PathBuf,
    pub hub_send: PathBuf,
    pub mailbox_receive: PathBuf,
    pub routing: PathBuf,
}

impl LogPaths {
    pub fn new(data_dir: &Path) -> LogPaths {
        let logs = data_dir.join("Logs");
        LogPaths {
            message_tracking: logs.join("MessageTracking"),
            frontend_receive: logs.join("FrontEnd/ProtocolLog/SmtpReceive"),
            frontend_send: logs.join("FrontEnd/ProtocolLog/SmtpSend"),
            hub_receive: logs.join("Hub/ProtocolLog/SmtpReceive"),
            hub_send: logs.join("Hub/ProtocolLog/SmtpSend"),
            mailbox_receive: logs.join("Mailbox/ProtocolLog/SmtpReceive/Delivery"),
            routing: logs.join("Hub/Routing"),
        }
    }
}

/// Front End Transport's logs (`Logs/FrontEnd/ProtocolLog`).
#[derive(Clone)]
pub struct FrontendLogs {
    pub receive: ProtocolLog,
    pub send: ProtocolLog,
}

/// The Transport service's logs: message tracking (source SMTP, ROUTING, AGENT, …)
/// and `Logs/Hub/ProtocolLog`, plus where its routing table logs go.
#[derive(Clone)]
pub struct TransportLogs {
    pub tracking: TrackingLog,
    pub receive: ProtocolLog,
    pub send: ProtocolLog,
    pub routing: PathBuf,
}

/// Mailbox Transport's logs: Delivery's and Submission's message tracking, and
/// Delivery's protocol log (`Logs/Mailbox/ProtocolLog/SmtpReceive/Delivery`).
/// Submission's sends go through the implicit intra-organisation send connector and
/// are logged with Transport's sends (`hub_send`), as before.
#[derive(Clone)]
pub struct MailboxLogs {
    pub delivery_tracking: TrackingLog,
    pub submission_tracking: TrackingLog,
    pub delivery_receive: ProtocolLog,
    pub submission_send: ProtocolLog,
}

/// Every log of one server, opened together at start.
pub struct ServerLogs {
    pub frontend: FrontendLogs,
    pub transport: TransportLogs,
    pub mailbox: MailboxLogs,
}

impl ServerLogs {
    pub fn open(data_dir: &Path) -> io::Result<ServerLogs> {
        let paths = LogPaths::new(data_dir);
        let proto = |p: &PathBuf, d| ProtocolLog::open(p, d, LOG_FILE_SIZE);
        let tracking = |s| TrackingLog::open(&paths.message_tracking, s, LOG_FILE_SIZE);
        let hub_send = proto(&paths.hub_send, Direction::Send)?;
        Ok(ServerLogs {
            frontend: FrontendLogs {
                receive: proto(&paths.frontend_receive, Direction::Receive)?,
                send: proto(&paths.frontend_send, Direction::Send)?,
            },
            transport: TransportLogs {
                tracking: tracking(TrackingService::Transport)?,
                receive: proto(&paths.hub_receive, Direction::Receive)?,
                send: hub_send.clone(),
                routing: paths.routing.clone(),
            },
            mailbox: MailboxLogs {
                delivery_tracking: tracking(TrackingService::MailboxDelivery)?,
                submission_tracking: tracking(TrackingService::MailboxSubmission)?,
                delivery_receive: proto(&paths.mailbox_receive, Direction::Receive)?,
                submission_send: hub_send,
            },
        })
    }

    /// Writes out what the writers buffer (at shutdown).
    pub fn flush(&self) {
        self.transport.tracking.flush();
        self.mailbox.delivery_tracking.flush();
        self.mailbox.submission_tracking.flush();
        for l in [
            &self.frontend.receive,
            &self.frontend.send,
            &self.transport.receive,
            &self.transport.send,
            &self.mailbox.delivery_receive,
        ] {
            l.flush();
        }
    }
}

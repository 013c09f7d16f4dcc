//! Each service's own logs, opened once per server where the organisation file puts
//! them (Set-TransportService, Set-FrontendTransportService,
//! Set-MailboxTransportService: reference §7.1, §8, §13), by default in Exchange's
//! folder layout under `<data_dir>/Logs`, and handed out by `server.rs`: the Front End
//! gets its protocol and connectivity logs, Transport its tracking, protocol,
//! connectivity, agent and queue logs and its pipeline tracing, the Mailbox services
//! theirs. No service holds another's writer,
//! so none can write another's log.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::agent::AgentLog;
use super::connectivity::ConnectivityLog;
use super::pipeline_tracing::PipelineTracing;
use super::protocol::{Direction, ProtocolLog};
use super::queue::QueueLog;
use super::retention::{Retention, RetentionTarget};
use super::tracking::{TrackingLog, TrackingService};

/// One log kind's folder and how its files are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFolder {
    pub dir: PathBuf,
    pub retention: Retention,
    /// The log kind's `…LogEnabled` (message tracking, connectivity, agent and queue
    /// logs); always true for the kinds Exchange cannot turn off this way.
    pub enabled: bool,
}

impl LogFolder {
    fn new(dir: PathBuf, retention: Retention) -> LogFolder {
        LogFolder {
            dir,
            retention,
            enabled: true,
        }
    }
}

/// The log folders of one service, as its Set-…Service cmdlet names them
/// (`ReceiveProtocolLogPath`, `SendProtocolLogPath`, `ConnectivityLogPath`,
/// `RoutingTableLogPath`, `AgentLogPath`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLogPaths {
    pub receive_protocol: LogFolder,
    pub send_protocol: LogFolder,
    pub connectivity: LogFolder,
    pub routing_table: LogFolder,
    pub agent: LogFolder,
}

impl ServiceLogPaths {
    /// Exchange's layout under `Logs/<service>` (`Hub`, `FrontEnd`, `Mailbox`).
    fn under(service: &Path) -> ServiceLogPaths {
        let folder = |sub: &str, retention| LogFolder::new(service.join(sub), retention);
        ServiceLogPaths {
            receive_protocol: folder("ProtocolLog/SmtpReceive", Retention::PROTOCOL),
            send_protocol: folder("ProtocolLog/SmtpSend", Retention::PROTOCOL),
            connectivity: folder("Connectivity", Retention::CONNECTIVITY),
            routing_table: folder("Routing", Retention::ROUTING_TABLE),
            agent: folder("AgentLog", Retention::AGENT),
        }
    }
}

/// Where every log of one server goes. The Mailbox services' folders are the
/// Set-MailboxTransportService paths: Delivery and Submission write in their
/// `Delivery` and `Submission` subfolders (reference §8.1, §8.3, §13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPaths {
    /// MessageTrackingLogPath (Set-TransportService): `MSGTRK`, and the Mailbox
    /// services' `MSGTRKMD` and `MSGTRKMS`, each kept on its own.
    pub message_tracking: LogFolder,
    /// MessageTrackingLogSubjectLoggingEnabled (on): when off, `message-subject` is
    /// written empty in `MSGTRK`, `MSGTRKMD` and `MSGTRKMS`.
    pub message_tracking_subjects: bool,
    /// QueueLogPath … (Set-TransportService): `Logs/Hub/QueueViewer`.
    pub queue: LogFolder,
    /// PipelineTracingEnabled, PipelineTracingPath, PipelineTracingSenderAddress.
    pub pipeline_tracing: PipelineTracingPaths,
    pub transport: ServiceLogPaths,
    pub frontend: ServiceLogPaths,
    pub mailbox: ServiceLogPaths,
}

impl LogPaths {
    /// The defaults: `<data_dir>/Logs/…` in Exchange's layout.
    pub fn new(data_dir: &Path) -> LogPaths {
        let logs = data_dir.join("Logs");
        LogPaths {
            message_tracking: LogFolder::new(
                logs.join("MessageTracking"),
                Retention::MESSAGE_TRACKING,
            ),
            message_tracking_subjects: true,
            queue: LogFolder::new(logs.join("Hub").join("QueueViewer"), Retention::QUEUE),
            pipeline_tracing: PipelineTracingPaths {
                enabled: false,
                dir: logs.join("Hub").join("PipelineTracing"),
                sender_address: String::new(),
            },
            transport: ServiceLogPaths::under(&logs.join("Hub")),
            frontend: ServiceLogPaths::under(&logs.join("FrontEnd")),
            mailbox: ServiceLogPaths::under(&logs.join("Mailbox")),
        }
    }
}

/// Where pipeline tracing writes, and for whom (off by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineTracingPaths {
    pub enabled: bool,
    pub dir: PathBuf,
    /// PipelineTracingSenderAddress: the envelope sender traced.
    pub sender_address: String,
}

/// Front End Transport's logs (`Logs/FrontEnd`).
#[derive(Clone)]
pub struct FrontendLogs {
    pub receive: ProtocolLog,
    pub send: ProtocolLog,
    pub connectivity: ConnectivityLog,
    /// Where the Front End's routing table logs go (RoutingTableLogPath).
    pub routing: PathBuf,
}

/// The Transport service's logs: message tracking (source SMTP, ROUTING, AGENT, …),
/// `Logs/Hub/ProtocolLog`, `Logs/Hub/Connectivity`, plus where its routing table logs go.
#[derive(Clone)]
pub struct TransportLogs {
    pub tracking: TrackingLog,
    pub receive: ProtocolLog,
    pub send: ProtocolLog,
    pub connectivity: ConnectivityLog,
    pub routing: PathBuf,
    /// `Logs/Hub/AgentLog`: one line per agent invocation.
    pub agent: AgentLog,
    /// `Logs/Hub/QueueViewer`: the delivery queues over time (None when off).
    pub queue: Option<QueueLog>,
    /// Snapshots of the traced sender's messages (None when off, the default).
    pub pipeline_tracing: Option<PipelineTracing>,
}

/// Mailbox Transport's logs: Delivery's and Submission's message tracking, Delivery's
/// protocol log (`Logs/Mailbox/ProtocolLog/SmtpReceive/Delivery`), Submission's sends
/// (`Logs/Mailbox/ProtocolLog/SmtpSend/Submission`) and its connectivity log
/// (`Logs/Mailbox/Connectivity/Submission`).
#[derive(Clone)]
pub struct MailboxLogs {
    pub delivery_tracking: TrackingLog,
    pub submission_tracking: TrackingLog,
    pub delivery_receive: ProtocolLog,
    pub submission_send: ProtocolLog,
    pub submission_connectivity: ConnectivityLog,
    /// Where Mailbox Transport's routing table logs go (RoutingTableLogPath).
    pub routing: PathBuf,
}

/// Every log of one server, opened together at start.
pub struct ServerLogs {
    pub frontend: FrontendLogs,
    pub transport: TransportLogs,
    pub mailbox: MailboxLogs,
    /// Every folder and prefix that circular logging keeps in bounds.
    pub retention: LogRetention,
}

/// Circular logging of one server's logs: every folder and prefix with its limits.
#[derive(Debug, Clone)]
pub struct LogRetention(Vec<RetentionTarget>);

impl LogRetention {
    /// Deletes, once, what is past each log's MaxAge and MaxDirectorySize at `now` (the
    /// file being written stays). Returns the files deleted; a folder that cannot be
    /// read is reported and skipped.
    pub fn enforce(&self, now: SystemTime) -> Vec<PathBuf> {
        let mut deleted = Vec::new();
        for t in &self.0 {
            match super::retention::enforce(&t.dir, &t.prefix, &t.retention, now) {
                Ok(d) => deleted.extend(d),
                Err(e) => {
                    tracing::warn!(dir = %t.dir.display(), prefix = %t.prefix, error = %e,
                        "log retention skipped a folder");
                }
            }
        }
        for path in &deleted {
            tracing::debug!(file = %path.display(), "old log file deleted");
        }
        deleted
    }
}

impl ServerLogs {
    pub fn open(paths: &LogPaths) -> io::Result<ServerLogs> {
        let proto = |f: &LogFolder, sub: Option<&str>, d| {
            let dir = sub.map_or_else(|| f.dir.clone(), |s| f.dir.join(s));
            ProtocolLog::open(&dir, d, f.retention.max_file_size)
        };
        let connectivity = |f: &LogFolder, sub: Option<&str>| {
            if !f.enabled {
                return Ok(ConnectivityLog::disabled());
            }
            let dir = sub.map_or_else(|| f.dir.clone(), |s| f.dir.join(s));
            ConnectivityLog::open(&dir, f.retention.max_file_size)
        };
        let mt = &paths.message_tracking;
        let tracking = |s| -> io::Result<TrackingLog> {
            if !mt.enabled {
                return Ok(TrackingLog::disabled());
            }
            Ok(TrackingLog::open(&mt.dir, s, mt.retention.max_file_size)?
                .with_subject_logging(paths.message_tracking_subjects))
        };
        let agent = |f: &LogFolder| {
            if !f.enabled {
                return Ok(AgentLog::disabled());
            }
            AgentLog::open(&f.dir, f.retention.max_file_size)
        };
        let queue = &paths.queue;
        let pt = &paths.pipeline_tracing;
        let (fe, hub, mbx) = (&paths.frontend, &paths.transport, &paths.mailbox);
        let logs = ServerLogs {
            frontend: FrontendLogs {
                receive: proto(&fe.receive_protocol, None, Direction::Receive)?,
                send: proto(&fe.send_protocol, None, Direction::Send)?,
                connectivity: connectivity(&fe.connectivity, None)?,
                routing: fe.routing_table.dir.clone(),
            },
            transport: TransportLogs {
                tracking: tracking(TrackingService::Transport)?,
                receive: proto(&hub.receive_protocol, None, Direction::Receive)?,
                send: proto(&hub.send_protocol, None, Direction::Send)?,
                connectivity: connectivity(&hub.connectivity, None)?,
                routing: hub.routing_table.dir.clone(),
                agent: agent(&hub.agent)?,
                queue: if queue.enabled {
                    Some(QueueLog::open(&queue.dir, queue.retention.max_file_size)?)
                } else {
                    None
                },
                pipeline_tracing: if pt.enabled {
                    PipelineTracing::new(&pt.dir, &pt.sender_address)
                } else {
                    None
                },
            },
            mailbox: MailboxLogs {
                delivery_tracking: tracking(TrackingService::MailboxDelivery)?,
                submission_tracking: tracking(TrackingService::MailboxSubmission)?,
                delivery_receive: proto(
                    &mbx.receive_protocol,
                    Some("Delivery"),
                    Direction::Receive,
                )?,
                submission_send: proto(&mbx.send_protocol, Some("Submission"), Direction::Send)?,
                submission_connectivity: connectivity(&mbx.connectivity, Some("Submission"))?,
                routing: mbx.routing_table.dir.clone(),
            },
            retention: LogRetention(retention_targets(paths)),
        };
        Ok(logs)
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
            &self.mailbox.submission_send,
        ] {
            l.flush();
        }
        for l in [
            &self.frontend.connectivity,
            &self.transport.connectivity,
            &self.mailbox.submission_connectivity,
        ] {
            l.flush();
        }
        self.transport.agent.flush();
        if let Some(q) = &self.transport.queue {
            q.flush();
        }
    }
}

/// Each folder a log of this server writes, with the prefix of its files.
fn retention_targets(paths: &LogPaths) -> Vec<RetentionTarget> {
    let target = |f: &LogFolder, sub: Option<&str>, prefix: &str| RetentionTarget {
        dir: sub.map_or_else(|| f.dir.clone(), |s| f.dir.join(s)),
        prefix: prefix.to_string(),
        retention: f.retention,
    };
    let mut v = Vec::new();
    for s in [
        TrackingService::Transport,
        TrackingService::MailboxDelivery,
        TrackingService::MailboxSubmission,
    ] {
        v.push(target(&paths.message_tracking, None, s.prefix()));
    }
    for (service, delivery, submission) in [
        (&paths.transport, None, None),
        (&paths.frontend, None, None),
        (&paths.mailbox, Some("Delivery"), Some("Submission")),
    ] {
        v.push(target(&service.receive_protocol, delivery, "RECV"));
        v.push(target(&service.send_protocol, submission, "SEND"));
        v.push(target(&service.connectivity, submission, "CONNECTLOG"));
        v.push(target(&service.routing_table, None, "RoutingTable"));
        v.push(target(&service.agent, None, "AGENTLOG"));
    }
    v.push(target(&paths.queue, None, "QUEUELOG"));
    v
}

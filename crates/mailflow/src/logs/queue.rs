//! The queue log (Set-TransportService `QueueLogPath`, reference §8.4,
//! `Logs/Hub/QueueViewer`): the Transport service's delivery queues over time, for
//! diagnostics. A snapshot of every queue at a fixed interval, written only when some
//! queue changed since the last one, and a line when a queue is created, retired
//! (QueueMaxIdleTime), suspended, resumed or retried by an administrator. Never a line
//! per message: the log stays off the message path.
//!
//! Exchange documents the folder and its limits but not the files' layout; ours has
//! Exchange's log file style (the five `#` header lines, CSV, CRLF) with
//! `#Log-Type: Transport Queue Log`, files `QUEUELOG<yyyymmdd>-<n>.log` like the other
//! daily logs of §8.3 and §8.4, and Get-Queue's properties as fields.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::files::{LogHeader, Period, RollingLog};
use super::{csv_line, format_timestamp};

pub const FIELDS: &str = "date-time,event,queue-identity,delivery-type,status,message-count,next-hop-domain,next-hop-category,last-error,next-retry-time";

/// Why a line was written (the `event` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueEvent {
    /// One queue's state in a periodic snapshot.
    Snapshot,
    /// A delivery queue was created for a next hop.
    Created,
    /// An idle queue was removed (QueueMaxIdleTime).
    Retired,
    /// Suspend-Queue.
    Suspended,
    /// Resume-Queue.
    Resumed,
    /// Retry-Queue.
    Retried,
}

impl QueueEvent {
    pub fn name(self) -> &'static str {
        match self {
            QueueEvent::Snapshot => "Snapshot",
            QueueEvent::Created => "Created",
            QueueEvent::Retired => "Retired",
            QueueEvent::Suspended => "Suspended",
            QueueEvent::Resumed => "Resumed",
            QueueEvent::Retried => "Retried",
        }
    }
}

/// One queue as Get-Queue shows it, in the log's words (Transport converts its
/// `QueueInfo`; logs/ does not know the queues).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueRow {
    pub identity: String,
    pub delivery_type: String,
    pub status: String,
    pub message_count: usize,
    pub next_hop_domain: String,
    pub next_hop_category: String,
    pub last_error: String,
    pub next_retry_time: String,
}

impl QueueRow {
    /// The CSV line of this queue for `event` at `now`.
    pub fn line(&self, now: DateTime<Utc>, event: QueueEvent) -> String {
        csv_line(&[
            &format_timestamp(now),
            event.name(),
            &self.identity,
            &self.delivery_type,
            &self.status,
            &self.message_count.to_string(),
            &self.next_hop_domain,
            &self.next_hop_category,
            &self.last_error,
            &self.next_retry_time,
        ])
    }
}

/// Handle on the Transport service's queue log; clone it freely.
#[derive(Clone)]
pub struct QueueLog {
    log: RollingLog,
    /// The queues of the last snapshot written: a snapshot equal to it is not written.
    last: Arc<Mutex<Option<Vec<QueueRow>>>>,
}

impl QueueLog {
    /// `QUEUELOG<yyyymmdd>-<n>.log` files in `dir`.
    pub fn open(dir: &Path, max_file_size: u64) -> io::Result<QueueLog> {
        let header = LogHeader {
            log_type_key: "#Log-Type",
            software: "Microsoft Exchange Server".into(),
            version: super::protocol::VERSION.into(),
            log_type: "Transport Queue Log".into(),
            fields: FIELDS.into(),
        };
        Ok(QueueLog {
            log: RollingLog::open_per(dir, "QUEUELOG", Period::Daily, header, max_file_size)?,
            last: Arc::new(Mutex::new(None)),
        })
    }

    /// One line for `queue` (created, retired, suspended …) at `now`.
    pub fn event(&self, now: DateTime<Utc>, event: QueueEvent, queue: &QueueRow) {
        self.log.append(queue.line(now, event));
    }

    /// A snapshot of every queue at `now`, written only when it differs from the last
    /// one written (a quiet server writes nothing). True when it was written.
    pub fn snapshot(&self, now: DateTime<Utc>, queues: Vec<QueueRow>) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref() == Some(&queues) {
            return false;
        }
        for q in &queues {
            self.log.append(q.line(now, QueueEvent::Snapshot));
        }
        *last = Some(queues);
        true
    }

    /// Blocks until every line logged before is written to the OS.
    pub fn flush(&self) {
        self.log.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn row(identity: &str, status: &str, count: usize) -> QueueRow {
        QueueRow {
            identity: identity.into(),
            delivery_type: "SmtpRelayToRemoteAdSite".into(),
            status: status.into(),
            message_count: count,
            next_hop_domain: "contoso.test".into(),
            next_hop_category: "Internal".into(),
            last_error: String::new(),
            next_retry_time: String::new(),
        }
    }

    #[test]
    fn header_events_and_snapshots_only_when_something_changed() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueueLog::open(dir.path(), 10 << 20).unwrap();
        let t0 = DateTime::parse_from_rfc3339("2026-12-03T18:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        let minute = chrono::Duration::minutes(1);
        log.event(t0, QueueEvent::Created, &row("MBX1\\3", "Ready", 0));
        assert!(log.snapshot(t0 + minute, vec![row("MBX1\\3", "Ready", 1)]));
        // Nothing changed: nothing written.
        assert!(!log.snapshot(t0 + minute * 2, vec![row("MBX1\\3", "Ready", 1)]));
        let mut failing = row("MBX1\\3", "Retry", 1);
        failing.last_error =
            "451 4.4.0 Primary target IP address responded with: \"421 4.4.2 Connection dropped.\""
                .into();
        failing.next_retry_time = "2026-12-03T18:04:00Z".into();
        assert!(log.snapshot(t0 + minute * 3, vec![failing.clone()]));
        log.event(t0 + minute * 4, QueueEvent::Suspended, &failing);
        log.flush();
        let path = crate::logs::only_file(dir.path());
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("QUEUELOG20") && name.ends_with("-1.log") && name.len() == 22,
            "{name}"
        );
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], "#Software: Microsoft Exchange Server");
        assert_eq!(lines[1], "#Version: 15.0.0.0");
        assert_eq!(lines[2], "#Log-Type: Transport Queue Log");
        assert!(lines[3].starts_with("#Date: "));
        assert_eq!(lines[4], format!("#Fields: {FIELDS}"));
        assert_eq!(
            &lines[5..],
            [
                "2026-12-03T18:00:00.250Z,Created,MBX1\\3,SmtpRelayToRemoteAdSite,Ready,0,contoso.test,Internal,,",
                "2026-12-03T18:01:00.250Z,Snapshot,MBX1\\3,SmtpRelayToRemoteAdSite,Ready,1,contoso.test,Internal,,",
                "2026-12-03T18:03:00.250Z,Snapshot,MBX1\\3,SmtpRelayToRemoteAdSite,Retry,1,contoso.test,Internal,\
                 \"451 4.4.0 Primary target IP address responded with: \"\"421 4.4.2 Connection dropped.\"\"\",\
                 2026-12-03T18:04:00Z",
                "2026-12-03T18:04:00.250Z,Suspended,MBX1\\3,SmtpRelayToRemoteAdSite,Retry,1,contoso.test,Internal,\
                 \"451 4.4.0 Primary target IP address responded with: \"\"421 4.4.2 Connection dropped.\"\"\",\
                 2026-12-03T18:04:00Z",
                "",
            ]
        );
        assert_eq!(FIELDS.split(',').count(), 10);
    }
}

//! SMTP protocol logs (reference §8.1–8.2): one line per command, response and
//! connection event of every session, so an administrator can replay a conversation.
//! All connectors of one service and direction share one set of `RECV`/`SEND` files.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::files::{LogHeader, RollingLog};
use super::tracking::now_timestamp;
use super::{csv_line, process_random};

/// `#Version` observed on real servers (reference §8.2).
pub const VERSION: &str = "15.0.0.0";
pub const FIELDS: &str = "date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data,context";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Receive,
    Send,
}

/// Handle on one service's protocol log for one direction; clone it freely.
#[derive(Clone)]
pub struct ProtocolLog {
    log: RollingLog,
}

impl ProtocolLog {
    pub fn open(dir: &Path, direction: Direction, max_file_size: u64) -> io::Result<Self> {
        let (prefix, log_type) = match direction {
            Direction::Receive => ("RECV", "SMTP Receive Protocol Log"),
            Direction::Send => ("SEND", "SMTP Send Protocol Log"),
        };
        let header = LogHeader {
            log_type_key: "#Log-type",
            software: "Microsoft Exchange Server".into(),
            version: VERSION.into(),
            log_type: log_type.into(),
            fields: FIELDS.into(),
        };
        Ok(ProtocolLog {
            log: RollingLog::open(dir, prefix, header, max_file_size)?,
        })
    }

    /// Starts logging one SMTP session with a fresh session id.
    pub fn session(
        &self,
        connector_id: &str,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> ProtocolSession {
        ProtocolSession {
            inner: Some(Box::new(Active {
                log: self.log.clone(),
                connector_id: connector_id.to_string(),
                session_id: new_session_id(),
                sequence: 0,
                local: local.to_string(),
                remote: remote.to_string(),
            })),
        }
    }

    /// Blocks until every line logged before is written to the OS.
    pub fn flush(&self) {
        self.log.flush();
    }
}

/// 16 uppercase hex digits like Exchange's (observed `08DE…`, reference §8.2): `08DE`,
/// then 48 bits counting up from a per-process random start, so ids are unique within
/// a run and unlikely to repeat across runs.
pub fn new_session_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = process_random().wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("08DE{:012X}", n & 0xFFFF_FFFF_FFFF)
}

/// The log of one SMTP session, owned by the session's task. A disabled session
/// (connector logging level `None`) holds nothing and writes nothing.
pub struct ProtocolSession {
    inner: Option<Box<Active>>,
}

struct Active {
    log: RollingLog,
    connector_id: String,
    session_id: String,
    sequence: u64,
    local: String,
    remote: String,
}

impl ProtocolSession {
    pub fn disabled() -> Self {
        ProtocolSession { inner: None }
    }

    #[cfg(test)]
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The local endpoint once the connection is made (a send session starts before
    /// its socket has a port).
    pub fn set_local(&mut self, local: SocketAddr) {
        if let Some(a) = self.inner.as_deref_mut() {
            a.local = local.to_string();
        }
    }

    /// Empty for a disabled session.
    pub fn session_id(&self) -> &str {
        self.inner.as_ref().map_or("", |a| &a.session_id)
    }

    /// `+`: the connection is established.
    pub fn connect(&mut self) {
        self.write("+", "", "");
    }

    /// `>`: a line we sent.
    pub fn sent(&mut self, data: &str) {
        self.write(">", data, "");
    }

    /// `<`: a line we received.
    pub fn received(&mut self, data: &str) {
        self.write("<", data, "");
    }

    /// `*`: information, e.g. data `SMTPSubmit …`, context `Set Session Permissions`.
    pub fn info(&mut self, data: &str, context: &str) {
        self.write("*", data, context);
    }

    /// `-`: the connection ended; context `Local` or `Remote`.
    pub fn disconnect(&mut self, context: &str) {
        self.write("-", "", context);
    }

    fn write(&mut self, event: &str, data: &str, context: &str) {
        let Some(a) = self.inner.as_deref_mut() else {
            return;
        };
        let sequence = a.sequence.to_string();
        a.sequence += 1;
        let line = csv_line(&[
            &now_timestamp(),
            &a.connector_id,
            &a.session_id,
            &sequence,
            &a.local,
            &a.remote,
            event,
            data,
            context,
        ]);
        a.log.append(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn session_lines_header_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let log = ProtocolLog::open(dir.path(), Direction::Receive, 10 << 20).unwrap();
        let (local, remote) = (
            "10.0.0.1:25".parse().unwrap(),
            "10.0.0.2:4000".parse().unwrap(),
        );
        let mut s = log.session("MBX1\\Default MBX1", local, remote);
        assert!(s.is_enabled());
        assert_ne!(s.session_id(), log.session("c", local, remote).session_id());
        let id = s.session_id().to_string();
        assert!(id.len() == 16 && id.starts_with("08DE"), "{id}");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        s.connect();
        s.sent("220 mbx1 ready");
        s.received("EHLO a, b");
        s.info("SMTPSubmit", "Set Session Permissions");
        s.disconnect("Local");
        log.flush();

        let path = &crate::logs::only_file(dir.path());
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("RECV20") && name.ends_with("-1.LOG") && name.len() == 20);
        let text = fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(
            lines[..3],
            [
                "#Software: Microsoft Exchange Server",
                "#Version: 15.0.0.0",
                "#Log-type: SMTP Receive Protocol Log",
            ]
        );
        assert!(lines[3].starts_with("#Date: "));
        assert_eq!(lines[4], format!("#Fields: {FIELDS}"));
        let mut rest = Vec::new();
        for line in &lines[5..lines.len() - 1] {
            let (time, tail) = line.split_once(',').unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.len() == 24);
            rest.push(tail.to_string());
        }
        let p = format!("MBX1\\Default MBX1,{id}");
        let e = "10.0.0.1:25,10.0.0.2:4000";
        assert_eq!(
            rest,
            [
                format!("{p},0,{e},+,,"),
                format!("{p},1,{e},>,220 mbx1 ready,"),
                format!("{p},2,{e},<,\"EHLO a, b\","),
                format!("{p},3,{e},*,SMTPSubmit,Set Session Permissions"),
                format!("{p},4,{e},-,,Local"),
            ]
        );
        assert_eq!(lines.last(), Some(&""));
    }

    #[test]
    fn disabled_session_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = ProtocolLog::open(dir.path(), Direction::Send, 10 << 20).unwrap();
        let mut s = ProtocolSession::disabled();
        assert!(!s.is_enabled());
        assert_eq!(s.session_id(), "");
        s.connect();
        s.sent("EHLO x");
        s.disconnect("Remote");
        log.flush();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

//! The connectivity log (reference §8.3): one session per outbound connection a
//! service makes, with its DNS results, the connection (`+` … `>` established), TLS,
//! and its end (`-`, with the counts of the messages it carried and the failure when
//! there was one).
//! Transport (`Logs/Hub/Connectivity`), the Front End (`Logs/FrontEnd/Connectivity`)
//! and Mailbox Transport Submission (`Logs/Mailbox/Connectivity/Submission`) each
//! write their own.

use std::io;
use std::path::Path;

use super::csv_line;
use super::files::{LogHeader, Period, RollingLog};
use super::protocol::new_session_id;
use super::tracking::now_timestamp;

pub const FIELDS: &str = "date-time,session,source,destination,direction,description";

/// Handle on one service's connectivity log; clone it freely.
#[derive(Clone)]
pub struct ConnectivityLog {
    /// None when the log is off (ConnectivityLogEnabled `$false`): no file, no lines.
    log: Option<RollingLog>,
}

impl ConnectivityLog {
    /// `CONNECTLOG<yyyymmdd>-<n>.log` files in `dir` (reference §8.3).
    pub fn open(dir: &Path, max_file_size: u64) -> io::Result<ConnectivityLog> {
        let header = LogHeader {
            log_type_key: "#Log-Type",
            software: "Microsoft Exchange Server".into(),
            version: super::protocol::VERSION.into(),
            log_type: "Transport Connectivity Log".into(),
            fields: FIELDS.into(),
        };
        Ok(ConnectivityLog {
            log: Some(RollingLog::open_per(
                dir,
                "CONNECTLOG",
                Period::Daily,
                header,
                max_file_size,
            )?),
        })
    }

    /// A connectivity log that is off (ConnectivityLogEnabled `$false`): its sessions
    /// write nothing and no folder or file is made.
    pub fn disabled() -> ConnectivityLog {
        ConnectivityLog { log: None }
    }

    /// Starts logging one outbound connection attempt of `source` (`SMTP`) to
    /// `destination` (the next hop's domain or host, or Exchange's `internalproxy`,
    /// `client proxy`, `mailboxtransportsubmissioninternalproxy` …), with a `+` line.
    pub fn session(&self, destination: &str, description: &str) -> ConnectivitySession {
        let Some(log) = &self.log else {
            return ConnectivitySession::disabled();
        };
        let mut s = ConnectivitySession {
            inner: Some(Box::new(Active {
                log: log.clone(),
                session_id: new_session_id(),
                destination: destination.to_string(),
                messages: 0,
                bytes: 0,
                recipients: 0,
            })),
        };
        s.write("+", description);
        s
    }

    /// Blocks until every line logged before is written to the OS.
    pub fn flush(&self) {
        if let Some(log) = &self.log {
            log.flush();
        }
    }
}

/// The log of one outbound connection. Ends with a `-` line when dropped if
/// [`ConnectivitySession::failed`] or [`ConnectivitySession::close`] did not end it.
pub struct ConnectivitySession {
    inner: Option<Box<Active>>,
}

struct Active {
    log: RollingLog,
    session_id: String,
    destination: String,
    messages: u64,
    bytes: u64,
    recipients: u64,
}

impl ConnectivitySession {
    /// A session that writes nothing (no connectivity log configured, tests).
    pub fn disabled() -> ConnectivitySession {
        ConnectivitySession { inner: None }
    }

    /// `>`: what happened on the way (DNS answers, the connection made, TLS).
    pub fn info(&mut self, description: &str) {
        self.write(">", description);
    }

    /// One message went through: counted for the closing `-` line. Exchange writes no
    /// line per message (its `-` line carries the session's counts), which also keeps
    /// the log off the message path.
    pub fn message_sent(&mut self, bytes: u64, recipients: usize) {
        if let Some(a) = self.inner.as_deref_mut() {
            a.messages += 1;
            a.bytes += bytes;
            a.recipients += recipients as u64;
        }
    }

    /// `-`: the connection attempt failed with `why`. Ends the session.
    pub fn failed(&mut self, why: &str) {
        let counts = self.counts();
        self.write("-", &format!("{counts} Failed: {why}"));
        self.inner = None;
    }

    /// `-`: the connection ended normally. Ends the session.
    pub fn close(&mut self) {
        let counts = self.counts();
        self.write("-", &counts);
        self.inner = None;
    }

    fn counts(&self) -> String {
        self.inner.as_deref().map_or(String::new(), |a| {
            format!(
                "Messages: {} Bytes: {} Recipients: {}",
                a.messages, a.bytes, a.recipients
            )
        })
    }

    fn write(&mut self, direction: &str, description: &str) {
        let Some(a) = self.inner.as_deref() else {
            return;
        };
        let line = csv_line(&[
            &now_timestamp(),
            &a.session_id,
            "SMTP",
            &a.destination,
            direction,
            description,
        ]);
        a.log.append(line);
    }
}

impl Drop for ConnectivitySession {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn header_fields_and_one_session() {
        let dir = tempfile::tempdir().unwrap();
        let log = ConnectivityLog::open(dir.path(), 10 << 20).unwrap();
        {
            let mut s = log.session("contoso.test", "Send connector Internet");
            s.info("MX contoso.test: mx1.contoso.test");
            s.info("Established connection to 10.0.0.5:25");
            s.message_sent(1200, 2);
            s.close();
            let mut f = log.session("fabrikam.test", "Send connector Internet");
            f.failed("Connection refused");
            let _dropped = log.session("x.test", "y");
        }
        log.flush();
        let path = &crate::logs::only_file(dir.path());
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("CONNECTLOG20") && name.ends_with("-1.log") && name.len() == 24,
            "{name}"
        );
        let text = fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], "#Software: Microsoft Exchange Server");
        assert_eq!(lines[1], "#Version: 15.0.0.0");
        assert_eq!(lines[2], "#Log-Type: Transport Connectivity Log");
        assert!(lines[3].starts_with("#Date: "));
        assert_eq!(lines[4], format!("#Fields: {FIELDS}"));
        let rows: Vec<Vec<&str>> = lines[5..lines.len() - 1]
            .iter()
            .map(|l| l.splitn(6, ',').collect())
            .collect();
        let tail: Vec<String> = rows.iter().map(|r| r[2..].join(",")).collect();
        assert_eq!(
            tail,
            [
                "SMTP,contoso.test,+,Send connector Internet",
                "SMTP,contoso.test,>,MX contoso.test: mx1.contoso.test",
                "SMTP,contoso.test,>,Established connection to 10.0.0.5:25",
                "SMTP,contoso.test,-,Messages: 1 Bytes: 1200 Recipients: 2",
                "SMTP,fabrikam.test,+,Send connector Internet",
                "SMTP,fabrikam.test,-,Messages: 0 Bytes: 0 Recipients: 0 Failed: Connection refused",
                "SMTP,x.test,+,y",
                "SMTP,x.test,-,Messages: 0 Bytes: 0 Recipients: 0",
            ]
        );
        // One session id per connection.
        assert_eq!(rows[0][1], rows[3][1]);
        assert_ne!(rows[0][1], rows[4][1]);
    }

    #[test]
    fn a_disabled_log_writes_nothing() {
        let log = ConnectivityLog::disabled();
        let mut s = log.session("contoso.test", "Send connector Internet");
        s.info("MX contoso.test: mx1.contoso.test");
        s.failed("Connection refused");
        assert!(s.inner.is_none());
        log.flush();
    }
}

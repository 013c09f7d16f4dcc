//! The agent log (reference §8.4, `Logs/Hub/AgentLog`): one line per agent invocation,
//! what the agent did with the message at which event. Files `AGENTLOG<yyyymmdd>-<n>.log`,
//! Exchange's header and fields.

use std::io;
use std::path::Path;

use super::csv_line;
use super::files::{LogHeader, Period, RollingLog};
use super::tracking::now_timestamp;

pub const FIELDS: &str = "Timestamp,SessionId,IPAddress,MessageId,P1FromAddress,P2FromAddresses,Recipients,NumRecipients,Agent,Event,Action,SmtpResponse,Reason,ReasonData,Diagnostics,NetworkMsgID,TenantID,Directionality";

/// One agent invocation. Lists (P2 senders, recipients) are written `;`-separated.
#[derive(Debug, Clone, Default)]
pub struct AgentLogEntry {
    /// The SMTP session the message came in on, when known.
    pub session_id: String,
    /// The client's address on that session.
    pub ip_address: String,
    pub message_id: String,
    /// The envelope sender (`MAIL FROM`).
    pub p1_from: String,
    /// The header senders (`From:`, `Sender:`).
    pub p2_from: Vec<String>,
    pub recipients: Vec<String>,
    /// The agent's name, e.g. `Transport Rule Agent`.
    pub agent: String,
    /// The event it ran at, e.g. `OnResolvedMessage`.
    pub event: String,
    /// What it did: `AcceptMessage`, `RejectMessage`, `DeleteMessage`, `QuarantineMessage` …
    pub action: String,
    /// The reply given when the message was refused.
    pub smtp_response: String,
    pub reason: String,
    pub reason_data: String,
    pub diagnostics: String,
    pub network_message_id: String,
    /// `Incoming` or `Originating`.
    pub directionality: String,
}

/// Handle on one service's agent log; clone it freely.
#[derive(Clone)]
pub struct AgentLog {
    /// None when the log is off (AgentLogEnabled `$false`): no file, no lines.
    log: Option<RollingLog>,
}

impl AgentLog {
    pub fn open(dir: &Path, max_file_size: u64) -> io::Result<AgentLog> {
        let header = LogHeader {
            log_type_key: "#Log-type",
            software: "Microsoft Exchange Server".into(),
            version: super::protocol::VERSION.into(),
            log_type: "Agent Log".into(),
            fields: FIELDS.into(),
        };
        Ok(AgentLog {
            log: Some(RollingLog::open_per(
                dir,
                "AGENTLOG",
                Period::Daily,
                header,
                max_file_size,
            )?),
        })
    }

    /// An agent log that is off (AgentLogEnabled `$false`).
    pub fn disabled() -> AgentLog {
        AgentLog { log: None }
    }

    /// False when the log is off, so callers need not build entries.
    pub fn enabled(&self) -> bool {
        self.log.is_some()
    }

    /// Writes one invocation, timestamped now (the categorizer, for each agent at
    /// OnResolvedMessage).
    pub fn log(&self, e: &AgentLogEntry) {
        let Some(log) = &self.log else {
            return;
        };
        let line = csv_line(&[
            &now_timestamp(),
            &e.session_id,
            &e.ip_address,
            &e.message_id,
            &e.p1_from,
            &e.p2_from.join(";"),
            &e.recipients.join(";"),
            &e.recipients.len().to_string(),
            &e.agent,
            &e.event,
            &e.action,
            &e.smtp_response,
            &e.reason,
            &e.reason_data,
            &e.diagnostics,
            &e.network_message_id,
            "",
            &e.directionality,
        ]);
        log.append(line);
    }

    /// Blocks until every line logged before is written to the OS.
    pub fn flush(&self) {
        if let Some(log) = &self.log {
            log.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn header_and_one_invocation() {
        let dir = tempfile::tempdir().unwrap();
        let log = AgentLog::open(dir.path(), 10 << 20).unwrap();
        log.log(&AgentLogEntry {
            session_id: "08DE000000000001".into(),
            ip_address: "192.0.2.7".into(),
            message_id: "<a@fabrikam.test>".into(),
            p1_from: "a@fabrikam.test".into(),
            p2_from: vec!["a@fabrikam.test".into()],
            recipients: vec!["bob@contoso.test".into(), "carol@contoso.test".into()],
            agent: "Transport Rule Agent".into(),
            event: "OnResolvedMessage".into(),
            action: "RejectMessage".into(),
            smtp_response: "550 5.7.1 Delivery not authorized, message refused".into(),
            reason: "TransportRule".into(),
            reason_data: "No externals".into(),
            network_message_id: "90afc21018964d2bbf409a63238f0cf8".into(),
            directionality: "Incoming".into(),
            ..AgentLogEntry::default()
        });
        log.flush();
        let path = &crate::logs::only_file(dir.path());
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("AGENTLOG20") && name.ends_with("-1.log"),
            "{name}"
        );
        let text = fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], "#Software: Microsoft Exchange Server");
        assert_eq!(lines[2], "#Log-type: Agent Log");
        assert_eq!(lines[4], format!("#Fields: {FIELDS}"));
        let (time, rest) = lines[5].split_once(',').unwrap();
        assert!(time.ends_with('Z') && time.len() == 24);
        assert_eq!(
            rest,
            "08DE000000000001,192.0.2.7,<a@fabrikam.test>,a@fabrikam.test,a@fabrikam.test,\
             bob@contoso.test;carol@contoso.test,2,Transport Rule Agent,OnResolvedMessage,\
             RejectMessage,\"550 5.7.1 Delivery not authorized, message refused\",TransportRule,\
             No externals,,90afc21018964d2bbf409a63238f0cf8,,Incoming"
        );
        assert_eq!(FIELDS.split(',').count(), 18);
    }
}

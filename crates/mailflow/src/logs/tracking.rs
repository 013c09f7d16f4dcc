//! Message tracking log (reference §7): the `MSGTRK*.LOG` files that administrators
//! search with Get-MessageTrackingLog, written and searched in Exchange's format.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::files::{LogHeader, RollingLog};
use super::{csv_line, format_timestamp, process_random};

/// The server build we claim, written in `#Version` and `schema-version` (reference §7.2).
pub const SCHEMA_VERSION: &str = "15.02.1544.004";

/// The 30 fields of reference §7.2/§7.3, in file order.
pub const FIELDS: &str = "date-time,client-ip,client-hostname,server-ip,server-hostname,source-context,connector-id,source,event-id,internal-message-id,message-id,network-message-id,recipient-address,recipient-status,total-bytes,recipient-count,related-recipient-address,reference,message-subject,sender-address,return-path,message-info,directionality,tenant-id,original-client-ip,original-server-ip,custom-data,transport-traffic-type,log-id,schema-version";

/// Get-MessageTrackingLog's default `-ResultSize` (reference §7.7).
pub const DEFAULT_RESULT_SIZE: usize = 1000;

/// Which service writes the log; each has its own file prefix (reference §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackingService {
    Transport,
    MailboxDelivery,
    MailboxSubmission,
}

impl TrackingService {
    pub fn prefix(self) -> &'static str {
        match self {
            TrackingService::Transport => "MSGTRK",
            TrackingService::MailboxDelivery => "MSGTRKMD",
            TrackingService::MailboxSubmission => "MSGTRKMS",
        }
    }
}

/// One row of the tracking log, fields in file order (reference §7.3). The JSON names
/// are Get-MessageTrackingLog's: dashes removed, PascalCase, with `Timestamp`,
/// `Recipients` and `Sender` renamed as Exchange does.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TrackingEvent {
    #[serde(rename = "Timestamp")]
    pub date_time: String,
    pub client_ip: String,
    pub client_hostname: String,
    pub server_ip: String,
    pub server_hostname: String,
    pub source_context: String,
    pub connector_id: String,
    pub source: String,
    pub event_id: String,
    pub internal_message_id: String,
    pub message_id: String,
    pub network_message_id: String,
    #[serde(rename = "Recipients")]
    pub recipient_address: Vec<String>,
    pub recipient_status: Vec<String>,
    pub total_bytes: u64,
    pub recipient_count: u32,
    pub related_recipient_address: String,
    pub reference: String,
    pub message_subject: String,
    #[serde(rename = "Sender")]
    pub sender_address: String,
    pub return_path: String,
    pub message_info: String,
    pub directionality: String,
    pub tenant_id: String,
    pub original_client_ip: String,
    pub original_server_ip: String,
    pub custom_data: String,
    pub transport_traffic_type: String,
    pub log_id: String,
    pub schema_version: String,
}

impl TrackingEvent {
    fn to_line(&self) -> String {
        let recipients = self.recipient_address.join(";");
        let status = self.recipient_status.join(";");
        let bytes = self.total_bytes.to_string();
        let count = self.recipient_count.to_string();
        #[rustfmt::skip]
        let fields = [
            &self.date_time, &self.client_ip, &self.client_hostname, &self.server_ip,
            &self.server_hostname, &self.source_context, &self.connector_id, &self.source,
            &self.event_id, &self.internal_message_id, &self.message_id,
            &self.network_message_id, &recipients, &status, &bytes, &count,
            &self.related_recipient_address, &self.reference, &self.message_subject,
            &self.sender_address, &self.return_path, &self.message_info, &self.directionality,
            &self.tenant_id, &self.original_client_ip, &self.original_server_ip,
            &self.custom_data, &self.transport_traffic_type, &self.log_id, &self.schema_version,
        ];
        csv_line(&fields.map(String::as_str))
    }

    /// `None` for anything but a well-formed 30-field row (e.g. a truncated line).
    fn from_record(r: &csv::StringRecord) -> Option<TrackingEvent> {
        if r.len() != 30 {
            return None;
        }
        let f = |i: usize| r.get(i).unwrap_or_default().to_string();
        let number = |i: usize| match r.get(i).unwrap_or_default() {
            "" => Some(0),
            s => s.parse::<u64>().ok(),
        };
        let recipient_address = split_list(r.get(12).unwrap_or_default());
        let recipient_status = split_status(r.get(13).unwrap_or_default(), recipient_address.len());
        Some(TrackingEvent {
            date_time: f(0),
            client_ip: f(1),
            client_hostname: f(2),
            server_ip: f(3),
            server_hostname: f(4),
            source_context: f(5),
            connector_id: f(6),
            source: f(7),
            event_id: f(8),
            internal_message_id: f(9),
            message_id: f(10),
            network_message_id: f(11),
            recipient_address,
            recipient_status,
            total_bytes: number(14)?,
            recipient_count: u32::try_from(number(15)?).ok()?,
            related_recipient_address: f(16),
            reference: f(17),
            message_subject: f(18),
            sender_address: f(19),
            return_path: f(20),
            message_info: f(21),
            directionality: f(22),
            tenant_id: f(23),
            original_client_ip: f(24),
            original_server_ip: f(25),
            custom_data: f(26),
            transport_traffic_type: f(27),
            log_id: f(28),
            schema_version: f(29),
        })
    }
}

fn split_list(s: &str) -> Vec<String> {
    if s.is_empty() {
        return Vec::new();
    }
    s.split(';').map(str::to_string).collect()
}

/// Splits `recipient-status`. A single status may itself contain `;` (`550 4.4.7
/// QUEUE.Expired;<text>`, reference §7.3), so when there are more pieces than
/// recipients, a piece that does not start a status (an SMTP code or To/Cc/Bcc) is
/// glued back onto the previous one.
fn split_status(s: &str, recipients: usize) -> Vec<String> {
    if recipients == 1 && !s.is_empty() {
        return vec![s.to_string()];
    }
    let parts = split_list(s);
    if parts.len() <= recipients {
        return parts;
    }
    let starts_status = |p: &str| {
        let code = p.as_bytes().get(..3);
        code.is_some_and(|c| c.iter().all(u8::is_ascii_digit)) || matches!(p, "To" | "Cc" | "Bcc")
    };
    let mut out: Vec<String> = Vec::new();
    for p in parts {
        match out.last_mut() {
            Some(last) if !starts_status(&p) => {
                last.push(';');
                last.push_str(&p);
            }
            _ => out.push(p),
        }
    }
    out
}

/// Handle on one service's tracking log; clone it freely.
#[derive(Clone)]
pub struct TrackingLog {
    /// None when message tracking is off (MessageTrackingLogEnabled `$false`).
    log: Option<RollingLog>,
    /// MessageTrackingLogSubjectLoggingEnabled: when false, `message-subject` is
    /// written empty.
    subjects: bool,
}

impl TrackingLog {
    pub fn open(dir: &Path, service: TrackingService, max_file_size: u64) -> io::Result<Self> {
        let header = LogHeader {
            log_type_key: "#Log-type",
            software: "Microsoft Exchange Server".into(),
            version: SCHEMA_VERSION.into(),
            log_type: "Message Tracking Log".into(),
            fields: FIELDS.into(),
        };
        Ok(TrackingLog {
            log: Some(RollingLog::open(
                dir,
                service.prefix(),
                header,
                max_file_size,
            )?),
            subjects: true,
        })
    }

    /// Message tracking turned off (MessageTrackingLogEnabled `$false`): no folder, no
    /// file, no row.
    pub fn disabled() -> TrackingLog {
        TrackingLog {
            log: None,
            subjects: true,
        }
    }

    /// This log with MessageTrackingLogSubjectLoggingEnabled set to `subjects`.
    pub fn with_subject_logging(mut self, subjects: bool) -> TrackingLog {
        self.subjects = subjects;
        self
    }

    /// Writes one row, filling what the caller left empty: `date-time` (now), `log-id`
    /// (unique), `schema-version` and `recipient-count` (number of recipients).
    pub fn log(&self, mut ev: TrackingEvent) {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let Some(log) = &self.log else {
            return;
        };
        if !self.subjects {
            ev.message_subject.clear();
        }
        if ev.date_time.is_empty() {
            ev.date_time = now_timestamp();
        }
        if ev.log_id.is_empty() {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            ev.log_id = format!("{:016X}{n:08X}", process_random());
        }
        if ev.schema_version.is_empty() {
            ev.schema_version = SCHEMA_VERSION.to_string();
        }
        if ev.recipient_count == 0 {
            ev.recipient_count = u32::try_from(ev.recipient_address.len()).unwrap_or(u32::MAX);
        }
        log.append(ev.to_line());
    }

    /// Blocks until every row logged before is written to the OS.
    pub fn flush(&self) {
        if let Some(log) = &self.log {
            log.flush();
        }
    }
}

/// Now, in the `date-time` format of reference §7.3 (`yyyy-mm-ddThh:mm:ss.fffZ`).
pub fn now_timestamp() -> String {
    format_timestamp(Utc::now())
}

/// Get-MessageTrackingLog's parameters (reference §7.7). String filters are
/// case-insensitive; `start` is inclusive and `end` exclusive; `result_size` defaults
/// to 1000 and `Some(0)` means unlimited.
#[derive(Debug, Clone, Default)]
pub struct TrackingFilter {
    pub sender: Option<String>,
    pub recipients: Vec<String>,
    pub subject: Option<String>,
    pub event_id: Option<String>,
    pub source: Option<String>,
    pub message_id: Option<String>,
    /// `-InternalMessageId`: the server's own number for the message (the same number
    /// on another server is another message, so search it with `-Server`).
    pub internal_message_id: Option<String>,
    /// `-NetworkMessageId`: the GUID that follows the message across servers.
    pub network_message_id: Option<String>,
    /// `-Reference`: the `reference` field (the original message's id on DSN rows,
    /// the hub's id on HAREDIRECT…); any of its `;`-separated values matches.
    pub reference: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub result_size: Option<usize>,
}

/// Addresses and message ids compare case-insensitively, with or without `<>`.
fn same_id(a: &str, b: &str) -> bool {
    a.trim_matches(['<', '>'])
        .eq_ignore_ascii_case(b.trim_matches(['<', '>']))
}

impl TrackingFilter {
    fn matches(&self, ev: &TrackingEvent) -> bool {
        let sender = |s: &str| same_id(s, &ev.sender_address) || same_id(s, &ev.return_path);
        let recipient = |w: &String| ev.recipient_address.iter().any(|r| same_id(w, r));
        let subject = |s: &str| {
            ev.message_subject
                .to_lowercase()
                .contains(&s.to_lowercase())
        };
        let is = |want: &Option<String>, have: &str| {
            want.as_deref().is_none_or(|w| w.eq_ignore_ascii_case(have))
        };
        let id =
            |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| same_id(w, have));
        let in_range = || {
            if self.start.is_none() && self.end.is_none() {
                return true;
            }
            let Ok(t) = DateTime::parse_from_rfc3339(&ev.date_time) else {
                return false; // a time filter cannot vouch for an unreadable time
            };
            let t = t.with_timezone(&Utc);
            self.start.is_none_or(|s| t >= s) && self.end.is_none_or(|e| t < e)
        };
        self.sender.as_deref().is_none_or(sender)
            && (self.recipients.is_empty() || self.recipients.iter().any(recipient))
            && self.subject.as_deref().is_none_or(subject)
            && is(&self.event_id, &ev.event_id)
            && is(&self.source, &ev.source)
            && id(&self.message_id, &ev.message_id)
            && is(&self.internal_message_id, &ev.internal_message_id)
            && id(&self.network_message_id, &ev.network_message_id)
            && self
                .reference
                .as_deref()
                .is_none_or(|w| ev.reference.split(';').any(|r| same_id(w, r.trim())))
            && in_range()
    }
}

/// Searches every `MSGTRK*.LOG` (all service prefixes) in `dirs`, like
/// Get-MessageTrackingLog. Events come back oldest first; equal timestamps keep file
/// order (dirs as given, then prefix, hour and `n`). Rows that do not parse (a line
/// truncated by a killed process) are skipped; missing directories are empty.
pub fn search(dirs: &[PathBuf], filter: &TrackingFilter) -> io::Result<Vec<TrackingEvent>> {
    let mut files = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let upper = name.to_ascii_uppercase();
            if upper.starts_with("MSGTRK") && upper.ends_with(".LOG") {
                files.push((i, file_key(&upper), path));
            }
        }
    }
    files.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));

    let mut events = Vec::new();
    for (_, _, path) in files {
        let mut bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // rotated away
            Err(e) => return Err(e),
        };
        // A last line without its line end is being written or was cut short.
        let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        bytes.truncate(end);
        let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .comment(Some(b'#'))
            .from_reader(body);
        for record in reader.records() {
            let Ok(record) = record else { continue };
            if let Some(ev) = TrackingEvent::from_record(&record)
                && filter.matches(&ev)
            {
                events.push(ev);
            }
        }
    }
    events.sort_by(|a, b| a.date_time.cmp(&b.date_time)); // stable: ties keep file order
    match filter.result_size {
        Some(0) => {}
        size => events.truncate(size.unwrap_or(DEFAULT_RESULT_SIZE)),
    }
    Ok(events)
}

/// Sort key of `<PREFIX><stamp>-<n>.LOG`: (prefix, stamp, n), `n` numerically so -10
/// comes after -9.
fn file_key(upper_name: &str) -> (String, String, u32) {
    let stem = upper_name.trim_end_matches(".LOG");
    let (base, n) = stem.rsplit_once('-').unwrap_or((stem, ""));
    let digits = base
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or(base.len());
    let (prefix, stamp) = base.split_at(digits);
    (
        prefix.to_string(),
        stamp.to_string(),
        n.parse().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::io::Write;

    /// An SMTP event at `2024-05-01T<time>.000Z` (or now if `time` is empty).
    fn ev(time: &str, event_id: &str, from: &str, to: &[&str], subject: &str) -> TrackingEvent {
        TrackingEvent {
            date_time: if time.is_empty() {
                String::new()
            } else {
                format!("2024-05-01T{time}.000Z")
            },
            source: "SMTP".into(),
            event_id: event_id.into(),
            sender_address: from.into(),
            return_path: from.into(),
            recipient_address: to.iter().map(|s| s.to_string()).collect(),
            message_subject: subject.into(),
            ..Default::default()
        }
    }

    fn open(dir: &Path, service: TrackingService) -> TrackingLog {
        TrackingLog::open(dir, service, 10 << 20).unwrap()
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    fn append_raw(path: &Path, bytes: &[u8]) {
        let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    /// `(date-time event-id)` of every event `set` lets through.
    fn found(dir: &Path, set: &dyn Fn(&mut TrackingFilter)) -> Vec<String> {
        let mut filter = TrackingFilter::default();
        set(&mut filter);
        let events = search(&[dir.to_path_buf()], &filter).unwrap();
        events
            .iter()
            .map(|e| format!("{} {}", &e.date_time[11..19], e.event_id))
            .collect()
    }

    #[test]
    fn header_and_thirty_fields_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), TrackingService::Transport);
        let mut e = ev(
            "",
            "RECEIVE",
            "a@contoso.com",
            &["b@contoso.com", "c@contoso.com"],
            "Hi",
        );
        e.recipient_status = vec!["To".into(), "Cc".into()];
        e.total_bytes = 1234;
        log.log(e);
        log.flush();
        let [path] = &files(dir.path())[..] else {
            panic!("expected one file")
        };
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("MSGTRK20") && name.ends_with("-1.LOG"),
            "{name}"
        );
        assert_eq!(name.len(), "MSGTRK2024050110-1.LOG".len());
        let text = fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(
            lines[..3],
            [
                "#Software: Microsoft Exchange Server",
                "#Version: 15.02.1544.004",
                "#Log-type: Message Tracking Log",
            ]
        );
        assert!(lines[3].starts_with("#Date: 20") && lines[3].ends_with('Z'));
        assert_eq!(lines[3].len(), "#Date: 2024-05-01T10:00:00.000Z".len());
        assert_eq!(lines[4], format!("#Fields: {FIELDS}"));
        assert_eq!(FIELDS.split(',').count(), 30);
        let f: Vec<&str> = lines[5].split(',').collect();
        assert_eq!(f.len(), 30);
        assert_eq!(f[0].len(), "2024-05-01T10:00:00.000Z".len());
        assert!(DateTime::parse_from_rfc3339(f[0]).is_ok());
        assert_eq!((f[7], f[8]), ("SMTP", "RECEIVE"));
        assert_eq!((f[12], f[13]), ("b@contoso.com;c@contoso.com", "To;Cc"));
        assert_eq!((f[14], f[15]), ("1234", "2"));
        assert_eq!(
            (f[18], f[19], f[20]),
            ("Hi", "a@contoso.com", "a@contoso.com")
        );
        assert_eq!((f[28].len(), f[29]), (24, SCHEMA_VERSION));
        assert_eq!(lines[6..], [""]);
    }

    #[test]
    fn subject_logging_off_writes_an_empty_subject_and_disabled_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), TrackingService::Transport).with_subject_logging(false);
        log.log(ev(
            "10:00:00",
            "RECEIVE",
            "a@x.com",
            &["b@x.com"],
            "Secret plans",
        ));
        log.flush();
        let [path] = &files(dir.path())[..] else {
            panic!("expected one file")
        };
        let text = fs::read_to_string(path).unwrap();
        assert!(!text.contains("Secret plans"), "{text}");
        let events = search(&[dir.path().to_path_buf()], &TrackingFilter::default()).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].message_subject, "");
        assert_eq!(events[0].sender_address, "a@x.com");

        let none = TrackingLog::disabled();
        none.log(ev("10:00:00", "RECEIVE", "a@x.com", &["b@x.com"], "Hi"));
        none.flush();
        assert!(none.log.is_none());
    }

    #[test]
    fn quoted_values_round_trip_and_json_names() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), TrackingService::Transport);
        let mut e = ev(
            "10:00:00",
            "FAIL",
            "a@x.com",
            &["b@x.com"],
            "Hi, \"you\"\nthere",
        );
        e.recipient_status = vec!["550 4.4.7 QUEUE.Expired;message expired".into()];
        log.log(e.clone());
        log.flush();
        let text = fs::read_to_string(&files(dir.path())[0]).unwrap();
        // The line break is escaped (DESIGN §7): one event, one physical line.
        assert!(text.contains(",\"Hi, \"\"you\"\"\\x0Athere\","), "{text}");
        let got = search(&[dir.path().to_path_buf()], &TrackingFilter::default()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message_subject, "Hi, \"you\"\\x0Athere");
        assert_eq!(got[0].recipient_status, e.recipient_status);
        assert_eq!(got[0].recipient_count, 1);
        let json = serde_json::to_value(&got[0]).unwrap();
        for key in [
            "Timestamp",
            "ClientIp",
            "Recipients",
            "RecipientStatus",
            "Sender",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        for key in [
            "InternalMessageId",
            "EventId",
            "MessageSubject",
            "ReturnPath",
            "LogId",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn status_split_keeps_codes_with_semicolons() {
        let got = split_status("250 2.1.5 OK;550 5.1.1 bad;x", 2);
        assert_eq!(got, ["250 2.1.5 OK", "550 5.1.1 bad;x"]);
        assert_eq!(split_status("To;Cc", 2), ["To", "Cc"]);
        assert!(split_status("", 0).is_empty());
    }

    #[test]
    fn filters() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), TrackingService::Transport);
        log.log(ev(
            "10:00:00",
            "RECEIVE",
            "Alice@Contoso.com",
            &["bob@contoso.com"],
            "Q Report",
        ));
        log.log(ev(
            "11:00:00",
            "SEND",
            "alice@contoso.com",
            &["carol@c.com", "dan@c.com"],
            "Lunch",
        ));
        log.log(ev(
            "12:00:00",
            "DELIVER",
            "eve@contoso.com",
            &["bob@contoso.com"],
            "report v2",
        ));
        log.flush();
        let d = dir.path();
        let all = ["10:00:00 RECEIVE", "11:00:00 SEND", "12:00:00 DELIVER"];
        assert_eq!(found(d, &|_| {}), all);
        assert_eq!(
            found(d, &|f| f.sender = Some("ALICE@contoso.com".into())),
            all[..2]
        );
        assert!(found(d, &|f| f.sender = Some("alice@contoso".into())).is_empty());
        assert_eq!(
            found(d, &|f| f.recipients =
                vec!["x@y".into(), "DAN@c.com".into()]),
            all[1..2]
        );
        assert_eq!(
            found(d, &|f| f.subject = Some("REPORT".into())),
            [all[0], all[2]]
        );
        assert_eq!(found(d, &|f| f.event_id = Some("deliver".into())), all[2..]);
        assert!(found(d, &|f| f.source = Some("AGENT".into())).is_empty());
        let at = |h| Some(Utc.with_ymd_and_hms(2024, 5, 1, h, 0, 0).unwrap());
        assert_eq!(
            found(d, &|f| (f.start, f.end) = (at(11), at(12))),
            all[1..2]
        );
        assert_eq!(found(d, &|f| f.start = at(10)), all);
        assert_eq!(found(d, &|f| f.result_size = Some(2)), all[..2]);
    }

    #[test]
    fn filters_by_internal_and_network_message_id_and_reference() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), TrackingService::Transport);
        let mut first = ev("10:00:00", "RECEIVE", "a@x", &["b@x"], "one");
        first.internal_message_id = "12".into();
        first.network_message_id = "0b1c2d3e-0000-4000-8000-000000000001".into();
        first.message_id = "<one@x>".into();
        let mut second = ev("10:00:01", "RECEIVE", "a@x", &["b@x"], "two");
        second.internal_message_id = "123".into();
        second.network_message_id = "0b1c2d3e-0000-4000-8000-000000000002".into();
        let mut dsn = ev("10:00:02", "DSN", "", &["a@x"], "Undeliverable: one");
        dsn.internal_message_id = "13".into();
        dsn.reference = "<one@x>;<other@x>".into();
        for e in [first, second, dsn] {
            log.log(e);
        }
        log.flush();
        let d = dir.path();
        // Exact, not a prefix: 12 does not find 123.
        assert_eq!(
            found(d, &|f| f.internal_message_id = Some("12".into())),
            ["10:00:00 RECEIVE"]
        );
        assert_eq!(
            found(d, &|f| f.network_message_id =
                Some("0B1C2D3E-0000-4000-8000-000000000002".into())),
            ["10:00:01 RECEIVE"]
        );
        assert_eq!(
            found(d, &|f| f.reference = Some("one@x".into())),
            ["10:00:02 DSN"]
        );
        assert_eq!(
            found(d, &|f| f.reference = Some("<other@x>".into())),
            ["10:00:02 DSN"]
        );
        assert!(found(d, &|f| f.reference = Some("two@x".into())).is_empty());
    }

    #[test]
    fn merges_prefixes_by_time_and_skips_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let ms = open(dir.path(), TrackingService::MailboxSubmission);
        let tr = open(dir.path(), TrackingService::Transport);
        let md = open(dir.path(), TrackingService::MailboxDelivery);
        md.log(ev("10:00:03", "DELIVER", "a@x", &["b@x"], ""));
        tr.log(ev("10:00:02", "SEND", "a@x", &["b@x"], ""));
        tr.log(ev("10:00:01", "RECEIVE", "a@x", &["b@x"], ""));
        ms.log(ev("10:00:01", "SUBMIT", "a@x", &["b@x"], ""));
        ms.log(ev("10:00:00", "RECEIVE", "a@x", &["b@x"], ""));
        for log in [&ms, &tr, &md] {
            log.flush();
        }
        // A process killed mid-write leaves half a line at the end of a file.
        let paths = files(dir.path());
        let md_file = paths
            .iter()
            .find(|p| p.to_str().unwrap().contains("MSGTRKMD"))
            .unwrap();
        let line = ev("10:00:04", "DELIVER", "a@x", &["b@x"], "").to_line();
        append_raw(md_file, &line.as_bytes()[..line.len() - 3]);
        let want = [
            "10:00:00 RECEIVE",
            "10:00:01 RECEIVE", // same time: the MSGTRK file comes before MSGTRKMS
            "10:00:01 SUBMIT",
            "10:00:02 SEND",
            "10:00:03 DELIVER",
        ];
        assert_eq!(found(dir.path(), &|_| {}), want);
        // Bad rows in the middle of a file are skipped too; what follows is still found.
        append_raw(md_file, b"\r\ngarbage,1\r\n");
        md.log(ev("10:00:05", "DELIVER", "a@x", &["b@x"], ""));
        md.flush();
        assert_eq!(found(dir.path(), &|_| {}).len(), 6);
    }
}

//! Exchange-shaped logs (DESIGN §3): administrators and their tools read Exchange's
//! message tracking and protocol logs, so ours have the same file names, headers,
//! fields and CSV quoting (reference §7 and §8).

pub mod files;
pub mod protocol;
pub mod tracking;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Per-connector protocol logging level. Exchange has only these two values
/// (`ProtocolLoggingLevel`, reference §8.1); `None` is the default on every connector
/// except `Default Frontend <Server>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoggingLevel {
    #[default]
    None,
    Verbose,
}

/// UTC ISO 8601 with milliseconds and `Z`, the format of every `date-time` field and
/// of the `#Date` header (reference §7.2, §7.3, §8.2).
///
/// Every log line of every session carries one, so the part up to the second is
/// formatted once per second and thread and reused: chrono's `format` parses its
/// pattern on each call, which showed in the profile.
fn format_timestamp(t: DateTime<Utc>) -> String {
    thread_local! {
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let second = t.timestamp();
    // A leap second's nanoseconds run past 1e9; it prints as .999 like chrono's would
    // be clamped to three digits.
    let millis = t.timestamp_subsec_millis().min(999);
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != second {
            *cached = second;
            *prefix = t.format("%Y-%m-%dT%H:%M:%S").to_string();
        }
        let mut s = String::with_capacity(prefix.len() + 5);
        s.push_str(prefix);
        s.push('.');
        for digit in [millis / 100, millis / 10 % 10, millis % 10] {
            s.push(char::from(b'0' + digit as u8));
        }
        s.push('Z');
        s
    })
}

/// 64 random bits drawn once per process, so that log ids and session ids from two
/// runs of the server do not collide. std's `RandomState` is seeded from the OS.
fn process_random() -> u64 {
    static RANDOM: OnceLock<u64> = OnceLock::new();
    *RANDOM.get_or_init(|| {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_i64(Utc::now().timestamp_nanos_opt().unwrap_or_default());
        h.finish()
    })
}

/// One CSV record without its terminator. Values containing commas or quotes are
/// double-quoted with `""` escaping, as in real Exchange logs (reference §7.2). Every
/// value first goes through [`clean_cell`]: most of them are outside text (HELO
/// names, addresses, subjects, commands), and this is the one place all log lines
/// pass.
fn csv_line(fields: &[&str]) -> String {
    let mut w = csv::WriterBuilder::new()
        .buffer_capacity(512)
        .from_writer(Vec::new());
    let cleaned: Vec<Cow<'_, str>> = fields.iter().map(|f| clean_cell(f)).collect();
    // Writing into a Vec cannot fail; if it somehow did, an empty line is harmless to
    // readers (it is skipped), whereas a panic would take the caller's task down.
    if w.write_record(cleaned.iter().map(|c| c.as_ref())).is_err() {
        return String::new();
    }
    let mut bytes = w.into_inner().unwrap_or_default();
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Makes one log value safe to read (DESIGN §7):
///
/// - control characters (C0, DEL, C1) and the Unicode line and paragraph separators
///   are written as `\xNN` (`\x0D` for CR) or `\u{2028}`, so no value can start a
///   physical line of its own (a forged row) or drive a terminal;
/// - a value of two or more characters starting with `=`, `+`, `-` or `@` gets a
///   leading `'`, as OWASP recommends against CSV formula injection, so a spreadsheet
///   shows it as text. A lone `-` (the protocol log's disconnect event) is no formula
///   and stays.
///
/// Logs are evidence, not storage: the change is one way, and the tracking search
/// shows values as logged.
pub fn clean_cell(value: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    let formula = value.len() > 1 && value.starts_with(['=', '+', '-', '@']);
    if !formula && !value.chars().any(unsafe_char) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    if formula {
        out.push('\'');
    }
    for c in value.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02X}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:04X}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logging_level_names_and_csv_quoting() {
        assert_eq!(
            serde_json::to_string(&LoggingLevel::Verbose).unwrap(),
            "\"verbose\""
        );
        let none: LoggingLevel = serde_json::from_str("\"none\"").unwrap();
        assert_eq!(none, LoggingLevel::default());
        assert_eq!(
            csv_line(&["a b", "c,d", "e\"f", ""]),
            "a b,\"c,d\",\"e\"\"f\","
        );
    }

    #[test]
    fn log_values_cannot_start_a_line_or_a_formula() {
        assert_eq!(
            csv_line(&["a\r\nforged,row", "\u{1b}[31m", "x\u{2028}y", "-"]),
            "\"a\\x0D\\x0Aforged,row\",\\x1B[31m,x\\u{2028}y,-"
        );
        for (value, cleaned) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+1", "'+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(clean_cell(value), cleaned);
        }
    }

    #[test]
    fn timestamps_match_chronos_format_within_and_across_seconds() {
        let base = DateTime::parse_from_rfc3339("2026-11-24T19:36:36.000Z")
            .unwrap()
            .with_timezone(&Utc);
        for ms in [0, 7, 45, 162, 999, 1000, 1001, 61_005, 86_400_123] {
            let t = base + chrono::Duration::milliseconds(ms);
            assert_eq!(
                format_timestamp(t),
                t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
            );
        }
    }
}

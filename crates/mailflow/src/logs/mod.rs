//! Exchange-shaped logs (DESIGN §3): administrators and their tools read Exchange's
//! message tracking and protocol logs, so ours have the same file names, headers,
//! fields and CSV quoting (reference §7 and §8).

pub mod files;
pub mod protocol;
pub mod tracking;

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
fn format_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
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

/// One CSV record without its terminator. Values containing commas, quotes or line
/// breaks are double-quoted with `""` escaping, as in real Exchange logs (reference §7.2).
fn csv_line(fields: &[&str]) -> String {
    let mut w = csv::WriterBuilder::new()
        .buffer_capacity(512)
        .from_writer(Vec::new());
    // Writing into a Vec cannot fail; if it somehow did, an empty line is harmless to
    // readers (it is skipped), whereas a panic would take the caller's task down.
    if w.write_record(fields).is_err() {
        return String::new();
    }
    let mut bytes = w.into_inner().unwrap_or_default();
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
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
}

//! Exchange-shaped logs (DESIGN §3): administrators and their tools read Exchange's
//! message tracking and protocol logs, so ours have the same file names, headers,
//! fields and CSV quoting (reference §7 and §8). Must not import frontend, transport,
//! mailbox or cli (scripts/check-arrows).

pub mod agent;
pub mod connectivity;
pub mod files;
pub mod pipeline_tracing;
pub mod protocol;
pub mod queue;
pub mod retention;
pub mod service_logs;
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
/// double-quoted with `""` escaping, as in real Exchange logs (reference §7.2) and as
/// the csv crate's readers (`mailflow track`) expect. Every value first goes through
/// [`clean_cell`]: most of them are outside text (HELO names, addresses, subjects,
/// commands), and this is the one place all log lines pass.
///
/// Built by hand in one pass rather than with a csv writer per line: every session
/// writes a dozen lines or more, and the writer's buffer and the cleaned copies showed
/// in the profile. After cleaning no CR or LF is left, so a comma or a quote is all
/// that needs quoting.
fn csv_line(fields: &[&str]) -> String {
    let mut out = String::with_capacity(fields.iter().map(|f| f.len() + 1).sum::<usize>() + 8);
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let cell = clean_cell(field);
        if memchr::memchr2(b',', b'"', cell.as_bytes()).is_some() {
            out.push('"');
            out.push_str(&cell.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(&cell);
        }
    }
    out
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
    if !formula && printable_ascii(value.as_bytes()) {
        return Cow::Borrowed(value);
    }
    // Fast path on bytes: C0 and DEL, and the lead bytes of C1 controls (0xC2) and of
    // U+2028/U+2029 (0xE2). Only a value with one of them is looked at by character.
    let suspect = |b: u8| b < 0x20 || b == 0x7f || b == 0xc2 || b == 0xe2;
    if !formula && (!value.bytes().any(suspect) || !value.chars().any(unsafe_char)) {
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

/// Whether every byte is printable ASCII (space to `~`), the case of nearly every log
/// value. No branch per byte, so the compiler checks a chunk at a time.
fn printable_ascii(bytes: &[u8]) -> bool {
    bytes.chunks(32).all(|chunk| {
        !chunk
            .iter()
            .fold(false, |bad, &b| bad | (b.wrapping_sub(0x20) > 0x5e))
    })
}

/// The one file a log writer test expects in `dir`.
#[cfg(test)]
pub(crate) fn only_file(dir: &std::path::Path) -> std::path::PathBuf {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let [path] = &files[..] else {
        panic!("expected one file: {files:?}")
    };
    path.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-built line is what the csv crate's writer makes of the cleaned values,
    /// so `mailflow track` and other CSV readers read back exactly the cleaned values.
    #[test]
    fn csv_line_matches_the_csv_writer_on_cleaned_values() {
        let cases: &[&[&str]] = &[
            &["a", "", "b c", "d,e", "\"q\"", "x\"y,z", "", ""],
            &[
                "=1+2",
                "-",
                "@x",
                "é,ü",
                "caf\u{e9}",
                "\u{201c}quoted\u{201d}",
                "a\u{85}b",
            ],
            &[
                "line\r\nbreak",
                "tab\there",
                " lead",
                "trail ",
                "\u{2028}",
                "#x",
            ],
        ];
        for fields in cases {
            let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
            w.write_record(fields.iter().map(|f| clean_cell(f).into_owned()))
                .unwrap();
            let mut want = String::from_utf8(w.into_inner().unwrap()).unwrap();
            want.pop();
            assert_eq!(csv_line(fields), want, "{fields:?}");
        }
    }

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

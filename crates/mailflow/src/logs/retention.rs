//! Circular logging (reference §7.1, §8.1, §8.3, §8.4): each log kind keeps its files
//! for MaxAge and its folder under MaxDirectorySize; MaxFileSize is the size at which
//! the writer starts the next file ([`super::files`]). Like Exchange, only the files of
//! one prefix count together (`MSGTRK`, `MSGTRKMD` and `MSGTRKMS` share a folder and
//! are kept apart), and the file being written is never deleted.
//!
//! Time is an argument (`now`): `server.rs` runs [`enforce`] at start and then every
//! few minutes, and the tests drive it with any clock.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const MB: u64 = 1024 * 1024;
const DAY: Duration = Duration::from_secs(24 * 3600);

/// How long and how much of one log kind is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// MaxAge: files last written longer ago are deleted. Zero keeps every file
    /// (Exchange's `00:00:00`).
    pub max_age: Duration,
    /// MaxDirectorySize: past it, the oldest files of the prefix are deleted.
    pub max_directory_size: u64,
    /// MaxFileSize: the writer starts a new file past it.
    pub max_file_size: u64,
}

impl Retention {
    /// MessageTrackingLog… (reference §7.1): 10 MB, 1000 MB, 30 days.
    pub const MESSAGE_TRACKING: Retention = Retention::new(30, 1000, 10);
    /// Receive/SendProtocolLog… (reference §8.1): 10 MB, 250 MB, 30 days.
    pub const PROTOCOL: Retention = Retention::new(30, 250, 10);
    /// ConnectivityLog… (reference §8.3): 10 MB, 1000 MB, 30 days.
    pub const CONNECTIVITY: Retention = Retention::new(30, 1000, 10);
    /// AgentLog… (reference §8.4): 10 MB, 250 MB, 7 days.
    pub const AGENT: Retention = Retention::new(7, 250, 10);
    /// RoutingTableLog… (reference §8.4): 50 MB for the folder, 7 days; one file per
    /// table, so the file size is only a ceiling.
    pub const ROUTING_TABLE: Retention = Retention::new(7, 50, 10);
    /// QueueLog… (reference §8.4): 10 MB, 200 MB, 7 days.
    pub const QUEUE: Retention = Retention::new(7, 200, 10);

    const fn new(days: u64, directory_mb: u64, file_mb: u64) -> Retention {
        Retention {
            max_age: Duration::from_secs(days * DAY.as_secs()),
            max_directory_size: directory_mb * MB,
            max_file_size: file_mb * MB,
        }
    }
}

/// One folder's files of one prefix, with how they are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionTarget {
    pub dir: PathBuf,
    pub prefix: String,
    pub retention: Retention,
}

/// A log file's name, size and last write.
struct LogFile {
    path: PathBuf,
    modified: SystemTime,
    len: u64,
}

/// Deletes the files of `prefix` in `dir` that are older than `max_age` at `now`, then
/// the oldest ones until the rest fit in `max_directory_size`. The newest file (the
/// one being written) stays whatever its age or size. A file of the prefix is
/// `<prefix><digit>…`, so `MSGTRK` does not take `MSGTRKMD`'s files. Returns what was
/// deleted; a missing folder is nothing to do.
pub fn enforce(
    dir: &Path,
    prefix: &str,
    retention: &Retention,
    now: SystemTime,
) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let ours = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
        let meta = entry.metadata()?;
        if !ours || !meta.is_file() {
            continue;
        }
        files.push(LogFile {
            path: entry.path(),
            modified: meta.modified()?,
            len: meta.len(),
        });
    }
    // Oldest first; among equal times, the name (hour, then roll-over number) decides.
    files.sort_by(|a, b| (a.modified, &a.path).cmp(&(b.modified, &b.path)));
    // Every file counts towards the folder's size; the newest, being written, stays.
    let mut kept: u64 = files.iter().map(|f| f.len).sum();
    files.pop();
    let mut deleted = Vec::new();
    for f in files {
        let age = now.duration_since(f.modified).unwrap_or_default();
        let too_old = !retention.max_age.is_zero() && age > retention.max_age;
        if too_old || kept > retention.max_directory_size {
            match fs::remove_file(&f.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            kept = kept.saturating_sub(f.len);
            deleted.push(f.path);
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn write(dir: &Path, name: &str, len: usize, age: Duration, now: SystemTime) {
        let path = dir.join(name);
        fs::write(&path, vec![b'x'; len]).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(now - age)
            .unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn old_files_go_the_newest_stays_other_prefixes_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        write(dir.path(), "MSGTRK2024050101-1.LOG", 10, 80 * H, now);
        write(dir.path(), "MSGTRK2024050102-1.LOG", 10, 50 * H, now);
        write(dir.path(), "MSGTRK2024050103-1.LOG", 10, H, now);
        write(dir.path(), "MSGTRKMD2024050101-1.LOG", 10, 80 * H, now);
        write(dir.path(), "notes.txt", 10, 80 * H, now);
        let keep_two_days = Retention {
            max_age: 48 * H,
            max_directory_size: 1 << 30,
            max_file_size: 1 << 20,
        };
        let deleted = enforce(dir.path(), "MSGTRK", &keep_two_days, now).unwrap();
        assert_eq!(deleted.len(), 2, "{deleted:?}");
        assert_eq!(
            names(dir.path()),
            [
                "MSGTRK2024050103-1.LOG",
                "MSGTRKMD2024050101-1.LOG",
                "notes.txt"
            ]
        );
        // The file being written stays even when it is older than MaxAge.
        let keep_nothing_old = Retention {
            max_age: Duration::from_secs(1),
            ..keep_two_days
        };
        assert!(
            enforce(dir.path(), "MSGTRK", &keep_nothing_old, now)
                .unwrap()
                .is_empty()
        );
        assert!(dir.path().join("MSGTRK2024050103-1.LOG").exists());
    }

    #[test]
    fn oldest_go_until_the_folder_fits_zero_age_keeps_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        for (i, age) in [5, 4, 3, 2, 1].into_iter().enumerate() {
            write(
                dir.path(),
                &format!("RECV2024050101-{}.LOG", i + 1),
                100,
                age * H,
                now,
            );
        }
        let small = Retention {
            max_age: Duration::ZERO,
            max_directory_size: 250,
            max_file_size: 100,
        };
        enforce(dir.path(), "RECV", &small, now).unwrap();
        assert_eq!(
            names(dir.path()),
            ["RECV2024050101-4.LOG", "RECV2024050101-5.LOG"]
        );
        // Nothing more to do, and a missing folder is no error.
        assert!(enforce(dir.path(), "RECV", &small, now).unwrap().is_empty());
        assert!(
            enforce(&dir.path().join("none"), "RECV", &small, now)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn defaults_are_the_references() {
        assert_eq!(Retention::PROTOCOL.max_directory_size, 250 * MB);
        assert_eq!(Retention::MESSAGE_TRACKING.max_age, 30 * DAY);
        assert_eq!(Retention::AGENT.max_age, 7 * DAY);
        assert_eq!(Retention::CONNECTIVITY.max_directory_size, 1000 * MB);
        assert_eq!(Retention::ROUTING_TABLE.max_directory_size, 50 * MB);
        let q = Retention::QUEUE;
        assert_eq!(
            (q.max_age, q.max_directory_size, q.max_file_size),
            (7 * DAY, 200 * MB, 10 * MB)
        );
    }
}

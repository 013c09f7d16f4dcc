//! Rolling log files written by one thread per log.
//!
//! File layout follows what real Exchange 2013+ servers write (reference §7.1, §8.1,
//! observed): `<PREFIX><yyyymmddhh>-<n>.LOG` in UTC, a new file every hour, `n` starting
//! at 1 and incremented at each size roll-over, CRLF line ends, and the five `#` header
//! lines at the top of every file (reference §7.2, §8.2).
//!
//! Callers are SMTP sessions and pipeline stages that must never wait for a disk, so
//! `append` only sends the line over a channel; a dedicated thread drains whatever is
//! pending, writes it through a `BufWriter` and flushes once per batch. These are logs,
//! not the queue: a write to the OS is enough, there is no fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};

use chrono::{DateTime, Utc};

use super::format_timestamp;

/// The `#Software`, `#Version`, `#Log-type` and `#Fields` header values; `#Date` is the
/// file's creation time and is added when the file is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHeader {
    /// How the log-type line is spelled: `#Log-type` in the tracking and protocol logs
    /// (observed), `#Log-Type` in the connectivity log (reference §8.3).
    pub log_type_key: &'static str,
    pub software: String,
    pub version: String,
    pub log_type: String,
    pub fields: String,
}

impl LogHeader {
    fn render(&self, created: DateTime<Utc>) -> String {
        format!(
            "#Software: {}\r\n#Version: {}\r\n{}: {}\r\n#Date: {}\r\n#Fields: {}\r\n",
            self.software,
            self.version,
            self.log_type_key,
            self.log_type,
            format_timestamp(created),
            self.fields
        )
    }
}

/// Most lines the writer takes before flushing, so a flood of appends cannot hold a
/// `flush` waiter forever.
const MAX_BATCH: usize = 4096;
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

type Clock = Box<dyn Fn() -> DateTime<Utc> + Send>;

/// How often a log starts a new file, and how its files are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// `<PREFIX><yyyymmddhh>-<n>.LOG`, as real servers name tracking and protocol logs
    /// (observed, reference §7.1, §8.1).
    Hourly,
    /// `<PREFIX><yyyymmdd>-<n>.log`, as the connectivity and agent logs are documented
    /// (reference §8.3).
    Daily,
}

impl Period {
    fn seconds(self) -> i64 {
        match self {
            Period::Hourly => 3600,
            Period::Daily => 86_400,
        }
    }

    fn stamp(self, t: DateTime<Utc>) -> String {
        match self {
            Period::Hourly => t.format("%Y%m%d%H").to_string(),
            Period::Daily => t.format("%Y%m%d").to_string(),
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Period::Hourly => ".LOG",
            Period::Daily => ".log",
        }
    }
}

enum Msg {
    Line(String),
    Flush(mpsc::Sender<()>),
}

/// Cheap, cloneable handle on one rolling log. Dropping the last handle lets the
/// writer thread write what is pending, then joins it.
#[derive(Clone)]
pub struct RollingLog(Arc<Handle>);

struct Handle {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        drop(self.tx.take()); // ends the writer loop once it has drained the channel
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl RollingLog {
    /// Creates `dir` if missing and starts the writer thread. The file itself is
    /// opened at the first line, so an idle hour leaves no empty file.
    pub fn open(
        dir: &Path,
        prefix: &str,
        header: LogHeader,
        max_file_size: u64,
    ) -> io::Result<RollingLog> {
        Self::open_with_clock(
            dir,
            prefix,
            Period::Hourly,
            header,
            max_file_size,
            Box::new(Utc::now),
        )
    }

    /// Like [`RollingLog::open`] with a file per `period`.
    pub fn open_per(
        dir: &Path,
        prefix: &str,
        period: Period,
        header: LogHeader,
        max_file_size: u64,
    ) -> io::Result<RollingLog> {
        Self::open_with_clock(
            dir,
            prefix,
            period,
            header,
            max_file_size,
            Box::new(Utc::now),
        )
    }

    fn open_with_clock(
        dir: &Path,
        prefix: &str,
        period: Period,
        header: LogHeader,
        max_file_size: u64,
        clock: Clock,
    ) -> io::Result<RollingLog> {
        crate::files::create_private_dir_all(dir)?;
        let writer = Writer {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            period,
            header,
            max: max_file_size,
            clock,
            file: None,
        };
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("log-{prefix}"))
            .spawn(move || writer.run(rx))?;
        Ok(RollingLog(Arc::new(Handle {
            tx: Some(tx),
            thread: Some(thread),
        })))
    }

    /// Queues one line (without its terminator). Never blocks on disk I/O.
    pub fn append(&self, line: String) {
        if let Some(tx) = &self.0.tx {
            let _ = tx.send(Msg::Line(line));
        }
    }

    /// Blocks until every line appended before this call has been written to the OS.
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::channel();
        if let Some(tx) = &self.0.tx
            && tx.send(Msg::Flush(ack_tx)).is_ok()
        {
            let _ = ack_rx.recv();
        }
    }
}

struct Writer {
    dir: PathBuf,
    prefix: String,
    period: Period,
    header: LogHeader,
    max: u64,
    clock: Clock,
    file: Option<OpenFile>,
}

struct OpenFile {
    /// Periods (hours or days) since the epoch (UTC): the file's period, compared per
    /// line.
    hour: i64,
    size: u64,
    out: BufWriter<File>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            let mut acks = Vec::new();
            for msg in std::iter::once(first).chain(rx.try_iter().take(MAX_BATCH)) {
                match msg {
                    Msg::Line(line) => {
                        if let Err(e) = self.write_line(&line) {
                            self.fail("log line lost", &e);
                        }
                    }
                    Msg::Flush(ack) => acks.push(ack),
                }
            }
            if let Some(f) = &mut self.file
                && let Err(e) = f.out.flush()
            {
                self.fail("log flush failed", &e);
            }
            for ack in acks {
                let _ = ack.send(());
            }
            // Let lines gather: while this thread is not parked in recv, appending a
            // line costs no wake-up (a futex call and a context switch per line, under
            // load a tenth of the server's time). Lines reach the OS at most this late.
            std::thread::sleep(BATCH_PAUSE);
        }
    }

    /// Nobody is waiting for the result, so an I/O error is reported and the file is
    /// reopened at the next line.
    fn fail(&mut self, what: &str, e: &io::Error) {
        let dir = self.dir.display();
        tracing::warn!(%dir, prefix = %self.prefix, error = %e, "{what}");
        self.file = None;
    }

    fn write_line(&mut self, line: &str) -> io::Result<()> {
        let now = (self.clock)();
        let hour = now.timestamp().div_euclid(self.period.seconds());
        let len = line.len() as u64 + 2;
        let fits = self
            .file
            .as_ref()
            .is_some_and(|f| f.hour == hour && f.size + len <= self.max);
        if !fits {
            if let Some(mut old) = self.file.take() {
                old.out.flush()?;
            }
            self.file = Some(self.open_file(&self.period.stamp(now), now, len)?);
        }
        let Some(f) = &mut self.file else {
            return Ok(());
        };
        f.out.write_all(line.as_bytes())?;
        f.out.write_all(b"\r\n")?;
        f.size += len;
        Ok(())
    }

    /// Opens the file of `hour` that will take the next `len` bytes: the highest-numbered
    /// existing one if they fit and it ends with a complete line (otherwise a killed
    /// process's partial line would be glued to ours), else the next number. A new file
    /// takes its first line whatever its length, so an oversized line cannot roll forever.
    fn open_file(&self, hour: &str, now: DateTime<Utc>, len: u64) -> io::Result<OpenFile> {
        let highest = self.highest_n(hour)?;
        let mut n = highest.max(1);
        if highest > 0 {
            let path = self.path(hour, highest);
            let size = fs::metadata(&path)?.len();
            if size > 0 && (size + len > self.max || !ends_with_newline(&path, size)?) {
                n = highest + 1;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::files::FILE_MODE)
            .open(self.path(hour, n))?;
        let mut size = file.metadata()?.len();
        let mut out = BufWriter::new(file);
        if size == 0 {
            let header = self.header.render(now);
            out.write_all(header.as_bytes())?;
            size = header.len() as u64;
        }
        Ok(OpenFile {
            hour: now.timestamp().div_euclid(self.period.seconds()),
            size,
            out,
        })
    }

    fn path(&self, hour: &str, n: u32) -> PathBuf {
        let ext = self.period.extension();
        self.dir.join(format!("{}{hour}-{n}{ext}", self.prefix))
    }

    /// Highest `n` among `<PREFIX><hour>-<n>.LOG`, 0 if none.
    fn highest_n(&self, hour: &str) -> io::Result<u32> {
        let stem = format!("{}{hour}-", self.prefix);
        let mut highest = 0;
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let n = name
                .to_str()
                .and_then(|s| s.strip_prefix(&stem))
                .and_then(|s| s.strip_suffix(self.period.extension()))
                .and_then(|s| s.parse::<u32>().ok());
            highest = highest.max(n.unwrap_or(0));
        }
        Ok(highest)
    }
}

fn ends_with_newline(path: &Path, size: u64) -> io::Result<bool> {
    if size == 0 {
        return Ok(true);
    }
    let mut f = File::open(path)?;
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::atomic::{AtomicI64, Ordering};

    fn header() -> LogHeader {
        LogHeader {
            log_type_key: "#Log-type",
            software: "Microsoft Exchange Server".into(),
            version: "15.0.0.0".into(),
            log_type: "Test Log".into(),
            fields: "a,b".into(),
        }
    }

    /// A log whose clock the test moves by hand (seconds since the epoch).
    fn open_at(dir: &Path, max: u64, secs: &Arc<AtomicI64>) -> RollingLog {
        let secs = Arc::clone(secs);
        let clock: Clock = Box::new(move || {
            Utc.timestamp_opt(secs.load(Ordering::SeqCst), 0)
                .single()
                .unwrap_or_default()
        });
        RollingLog::open_with_clock(dir, "TEST", Period::Hourly, header(), max, clock).unwrap()
    }

    fn t(h: u32, m: u32, s: u32) -> i64 {
        Utc.with_ymd_and_hms(2024, 5, 1, h, m, s)
            .unwrap()
            .timestamp()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn header_and_crlf_lines() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(AtomicI64::new(t(10, 15, 0)));
        let log = open_at(&dir.path().join("sub"), 1 << 20, &clock);
        log.append("1,x".into());
        log.append("2,y".into());
        log.flush();
        let text = fs::read_to_string(dir.path().join("sub/TEST2024050110-1.LOG")).unwrap();
        assert_eq!(
            text,
            "#Software: Microsoft Exchange Server\r\n#Version: 15.0.0.0\r\n#Log-type: Test Log\r\n\
             #Date: 2024-05-01T10:15:00.000Z\r\n#Fields: a,b\r\n1,x\r\n2,y\r\n"
        );
    }

    #[test]
    fn new_hour_new_file_and_size_rollover() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(AtomicI64::new(t(10, 59, 59)));
        let header_len = header().render(Utc::now()).len() as u64;
        let log = open_at(dir.path(), header_len + 20, &clock);
        log.append("0123456789".into()); // 12 bytes: fits
        log.append("0123456789".into()); // would exceed: -2
        log.flush();
        clock.store(t(11, 0, 0), Ordering::SeqCst);
        log.append("x".repeat(100)); // longer than the limit, still written once
        log.append("y".into());
        log.flush();
        assert_eq!(
            names(dir.path()),
            [
                "TEST2024050110-1.LOG",
                "TEST2024050110-2.LOG",
                "TEST2024050111-1.LOG",
                "TEST2024050111-2.LOG"
            ]
        );
        let second = fs::read_to_string(dir.path().join("TEST2024050110-2.LOG")).unwrap();
        assert!(second.starts_with("#Software: "));
        assert!(second.ends_with("#Fields: a,b\r\n0123456789\r\n"));
    }

    #[test]
    fn reopen_appends_unless_full_or_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(AtomicI64::new(t(10, 0, 0)));
        let log = open_at(dir.path(), 1 << 20, &clock);
        log.append("a".into());
        drop(log); // dropping the last handle writes what is pending
        let log = open_at(dir.path(), 1 << 20, &clock);
        log.append("b".into());
        log.flush();
        let first = dir.path().join("TEST2024050110-1.LOG");
        let text = fs::read_to_string(&first).unwrap();
        assert_eq!(text.matches("#Software").count(), 1);
        assert!(text.ends_with("#Fields: a,b\r\na\r\nb\r\n"));
        drop(log);

        // A partial last line (process killed mid-write) is left alone: next file.
        let mut f = fs::OpenOptions::new().append(true).open(&first).unwrap();
        f.write_all(b"partial").unwrap();
        let log = open_at(dir.path(), 1 << 20, &clock);
        log.append("c".into());
        log.flush();
        assert_eq!(names(dir.path()).len(), 2);
        let text = fs::read_to_string(dir.path().join("TEST2024050110-2.LOG")).unwrap();
        assert!(text.ends_with("#Fields: a,b\r\nc\r\n"));
    }
}

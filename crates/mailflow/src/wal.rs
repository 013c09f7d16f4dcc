//! How the embedded databases' writers use SQLite: WAL checkpoints off the commit
//! path, and each transaction kept in memory until COMMIT (`tune_writer`).
//!
//! Both embedded databases (the Transport queue and each SQLite mailbox database) have
//! one writer thread whose commits are waited for by SMTP sessions: a 250 is sent after
//! the commit. With SQLite's automatic checkpoint, every commit that takes the WAL
//! past 1,000 pages copies those pages into the database file and fsyncs it before
//! the writer can start its next transaction; under load that is a pause of tens of
//! milliseconds every fraction of a second, and it was the tail of mailflow's
//! end-to-end latency.
//!
//! Here a background thread does the copying with its own connection (a `PASSIVE`
//! checkpoint: it never blocks the writer, and the writer never waits for it). A
//! passive checkpoint cannot reset the WAL while the writer keeps appending, so when
//! the WAL has grown past [`RESTART_FRAMES`] the thread asks the writer to finish the
//! job between two transactions: by then only the frames of the last moments are left
//! to copy, and the writer's next transaction starts the WAL from the beginning again.
//! Durability is unchanged: commits are fsync'd in the WAL, as before.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// How often the background thread copies committed pages into the database file.
const INTERVAL: Duration = Duration::from_millis(100);

/// WAL size (in pages, 4 KiB each by default: 32 MiB) past which the writer is asked
/// to complete a checkpoint so that the WAL restarts instead of growing.
const RESTART_FRAMES: i64 = 8192;

/// When the thread checkpoints and when it asks the writer to restart the WAL.
#[derive(Clone, Copy)]
struct Tuning {
    interval: Duration,
    restart_frames: i64,
}

const TUNING: Tuning = Tuning {
    interval: INTERVAL,
    restart_frames: RESTART_FRAMES,
};

#[derive(Default)]
struct State {
    stopping: Mutex<bool>,
    wake: Condvar,
    /// Set by the thread, taken by the writer: the WAL should restart.
    restart_wanted: AtomicBool,
}

/// The background checkpoint thread of one database file. Dropping it stops the
/// thread (after at most the checkpoint in progress).
pub struct Checkpointer {
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Turns off the automatic checkpoint of `writer`, tunes its page cache
    /// (`tune_writer`), and starts the thread that does the checkpoints of the
    /// database at `path` instead.
    pub fn start(writer: &Connection, path: &Path, name: &str) -> anyhow::Result<Checkpointer> {
        Self::start_with(writer, path, name, TUNING)
    }

    fn start_with(
        writer: &Connection,
        path: &Path,
        name: &str,
        tuning: Tuning,
    ) -> anyhow::Result<Checkpointer> {
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        tune_writer(writer)?;
        let conn = Connection::open(path)?;
        // The checkpoint fsyncs the database file before the WAL may be reused.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let state = Arc::new(State::default());
        let thread = std::thread::Builder::new()
            .name(format!("{name}-checkpoint"))
            .spawn({
                let state = Arc::clone(&state);
                move || run(&conn, &state, tuning)
            })
            .map_err(|e| anyhow::anyhow!("cannot start the checkpoint thread: {e}"))?;
        Ok(Checkpointer {
            state,
            thread: Some(thread),
        })
    }

    /// Called by the writer between transactions: completes the checkpoint when the
    /// thread found the WAL too long. Cheap otherwise (one atomic load).
    pub fn after_commit(&self, writer: &Connection) {
        if !self.state.restart_wanted.swap(false, Ordering::Relaxed) {
            return;
        }
        match passive_checkpoint(writer) {
            // Busy: the thread is checkpointing right now; ask again after the next commit.
            Ok(outcome) if outcome.busy => self.state.restart_wanted.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint by the writer failed"),
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self
            .state
            .stopping
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        self.state.wake.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("a WAL checkpoint thread panicked");
        }
    }
}

/// A whole batch of the writer stays in memory until COMMIT. With SQLite's default a
/// transaction larger than the page cache (2 MiB; twenty 100 KiB messages for ten
/// recipients each is 20 MiB) spills pages to the WAL before COMMIT and reads them
/// back: the profile of that workload was a third spilling. Without spilling, the
/// cache grows past its size for the dirty pages of one transaction only (writers cap
/// their batches) and shrinks back after the commit, so an idle database costs no
/// memory. The per-write savepoints keep their journals in memory too.
fn tune_writer(writer: &Connection) -> rusqlite::Result<()> {
    writer.pragma_update(None, "cache_spill", false)?;
    writer.pragma_update(None, "temp_store", "MEMORY")
}

struct Outcome {
    busy: bool,
    wal_frames: i64,
}

fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<Outcome> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Outcome {
            busy: row.get::<_, i64>(0)? != 0,
            wal_frames: row.get(1)?,
        })
    })
}

fn run(conn: &Connection, state: &State, tuning: Tuning) {
    let mut stopping = state
        .stopping
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        stopping = state
            .wake
            .wait_timeout(stopping, tuning.interval)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
        if *stopping {
            return;
        }
        // Not holding the lock while copying pages: `drop` must not wait for the disk
        // to take the lock, only for the join.
        drop(stopping);
        match passive_checkpoint(conn) {
            Ok(outcome) if outcome.wal_frames > tuning.restart_frames => {
                state.restart_wanted.store(true, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "background WAL checkpoint failed"),
        }
        stopping = state
            .stopping
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_pages(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("t.db-wal"))
            .map(|m| m.len() / 4096)
            .unwrap_or(0)
    }

    /// The writer never checkpoints by itself any more, yet the WAL does not grow
    /// without bound: the thread backfills it and the writer restarts it. (Without
    /// `after_commit` the WAL ends at least 10 × `restart_frames` long.)
    #[test]
    fn the_wal_stays_bounded_while_the_writer_commits_without_pause() -> anyhow::Result<()> {
        let tuning = Tuning {
            interval: Duration::from_millis(5),
            restart_frames: 1024,
        };
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("t.db");
        let writer = Connection::open(&path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.execute_batch("CREATE TABLE t (b BLOB)")?;
        let checkpointer = Checkpointer::start_with(&writer, &path, "test", tuning)?;
        let autocheckpoint: i64 =
            writer.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))?;
        assert_eq!(autocheckpoint, 0);
        let blob = vec![7u8; 64 * 1024];
        let inserts = 10 * tuning.restart_frames / 16;
        let mut largest = 0;
        for _ in 0..inserts {
            writer.execute("INSERT INTO t (b) VALUES (?1)", [&blob])?;
            checkpointer.after_commit(&writer);
            largest = largest.max(wal_pages(dir.path()));
        }
        assert!(
            largest < 5 * tuning.restart_frames as u64,
            "WAL reached {largest} pages"
        );
        // Everything was committed and can be read back.
        let rows: i64 = writer.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?;
        assert_eq!(rows, inserts);
        drop(checkpointer);
        Ok(())
    }
}

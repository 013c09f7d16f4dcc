//! Which server holds the active copy of each database: Active Manager's answer, as a
//! value. Active Manager (`mailbox/active_manager.rs`) owns the current version and
//! publishes each new one on a `watch` channel; Transport and Front End read the latest
//! (routing, hub selection) and Transport reacts to changes (retry its queues).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use super::live::LiveDirectory;

use super::Directory;

/// Database (lower case) → server name holding its active copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveCopies {
    map: HashMap<String, String>,
}

impl ActiveCopies {
    /// At start the first copy in activation preference is active.
    pub fn from_directory(dir: &Directory) -> ActiveCopies {
        let map = dir
            .databases()
            .filter_map(|d| d.copies.first().map(|s| (d.name.to_lowercase(), s.clone())))
            .collect();
        ActiveCopies { map }
    }

    /// Where a server records its switchovers: `<data_dir>/active-copies.json`.
    pub fn state_file(data_dir: &Path) -> PathBuf {
        data_dir.join("active-copies.json")
    }

    /// The active copies as the server with `data_dir` recorded them (its state file),
    /// for databases and servers that still exist; the first copy elsewhere.
    pub fn recorded(dir: &Directory, data_dir: &Path) -> ActiveCopies {
        let saved = std::fs::read_to_string(ActiveCopies::state_file(data_dir))
            .ok()
            .and_then(|text| serde_json::from_str::<HashMap<String, String>>(&text).ok())
            .unwrap_or_default();
        ActiveCopies::with_saved(dir, saved)
    }

    /// Like `from_directory`, then the switchovers in `saved` (as recorded by
    /// [`ActiveCopies::to_map`]) for databases and servers that still exist.
    pub fn with_saved(dir: &Directory, saved: HashMap<String, String>) -> ActiveCopies {
        let mut copies = ActiveCopies::from_directory(dir);
        for (db, server) in saved {
            let valid = dir
                .database(&db)
                .is_some_and(|d| d.copies.iter().any(|c| c.eq_ignore_ascii_case(&server)));
            if valid {
                copies.set(&db, &server);
            }
        }
        copies
    }

    /// After a reload: databases new to the file start on their first copy; a database
    /// whose active server no longer holds a copy moves to its first copy; removed
    /// databases are forgotten. Switchovers still valid are kept.
    pub fn reconciled(&self, dir: &Directory) -> ActiveCopies {
        let mut map = HashMap::new();
        for db in dir.databases() {
            let key = db.name.to_lowercase();
            let kept = self
                .map
                .get(&key)
                .filter(|s| db.copies.iter().any(|c| c.eq_ignore_ascii_case(s)));
            if let Some(server) = kept.or(db.copies.first()) {
                map.insert(key, server.clone());
            }
        }
        ActiveCopies { map }
    }

    pub fn active_server(&self, database: &str) -> Option<String> {
        self.map.get(&database.to_lowercase()).cloned()
    }

    /// Move-ActiveMailboxDatabase: `server` now holds the active copy.
    pub fn set(&mut self, database: &str, server: &str) {
        self.map.insert(database.to_lowercase(), server.to_string());
    }

    pub fn to_map(&self) -> &HashMap<String, String> {
        &self.map
    }
}

/// The active copies as this server knows them: owned by Active Manager
/// (`mailbox/active_manager.rs`), published on a `watch` channel, and recorded in
/// `<data_dir>/active-copies.json` so a restart keeps a switchover.
pub struct ActiveCopyRecord {
    pub ctx: Arc<LiveDirectory>,
    copies: watch::Sender<Arc<ActiveCopies>>,
    state_file: PathBuf,
}

impl ActiveCopyRecord {
    /// The active copies at start: the first copy in activation preference, unless a
    /// switchover (`mailflow database move`) recorded another in the state file.
    pub fn open(ctx: Arc<LiveDirectory>) -> Arc<ActiveCopyRecord> {
        let state_file = ActiveCopies::state_file(ctx.data_dir());
        let copies = ActiveCopies::recorded(&ctx.dir(), ctx.data_dir());
        Arc::new(ActiveCopyRecord {
            ctx,
            copies: watch::Sender::new(Arc::new(copies)),
            state_file,
        })
    }

    /// The active copies from now on: the current version, then each change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ActiveCopies>> {
        self.copies.subscribe()
    }

    /// The active copies as this server knows them now.
    pub fn current(&self) -> Arc<ActiveCopies> {
        self.copies.borrow().clone()
    }

    pub fn active_server(&self, database: &str) -> Option<String> {
        self.copies.borrow().active_server(database)
    }

    /// Move-ActiveMailboxDatabase: `server` now holds the active copy of `database`;
    /// published to the subscribers and recorded so a restart keeps it.
    pub fn set(&self, database: &str, server: &str) {
        let mut next = (**self.copies.borrow()).clone();
        next.set(database, server);
        self.publish(next);
        tracing::info!(database = %database, server = %server, "active copy moved");
    }

    /// After a reload of the organisation file (see [`ActiveCopies::reconciled`]).
    pub fn reconcile(&self) {
        let next = self.copies.borrow().reconciled(&self.ctx.dir());
        self.publish(next);
    }

    fn publish(&self, next: ActiveCopies) {
        let written = serde_json::to_vec_pretty(next.to_map())
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::files::replace_preserving_mode(&self.state_file, &bytes));
        if let Err(e) = written {
            tracing::error!(
                "cannot record the active copies in {}: {e}",
                self.state_file.display()
            );
        }
        self.copies.send_if_modified(|current| {
            let changed = **current != next;
            *current = Arc::new(next);
            changed
        });
    }
}

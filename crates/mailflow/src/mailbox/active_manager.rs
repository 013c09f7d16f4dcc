//! Active Manager, in the small: which copy of a DAG database is active when the server
//! holding it stops answering, and what a server that was down learns when it returns.
//!
//! Exchange's Active Manager fails a database over to the next copy in activation
//! preference when its server fails. Here every server holding a copy watches the
//! active copy's server (a TCP connection to its Mailbox Delivery listener every
//! second). Once it has been unreachable for the DAG's `failover_after`, the first
//! copy in activation preference whose server answers takes over: that server makes
//! itself active and tells every other server through their admin APIs, exactly as
//! `mailflow database move` does, and its queues are retried so mail waiting for the
//! database flows to it. Only databases on PostgreSQL fail over: their copies are one
//! set of data, so the new active copy has every message; SQLite copies are separate
//! files, and activating another would split a mailbox in two.
//!
//! A server that starts asks the other holders of each copy which one is active, so a
//! server that was down does not go on believing its copy is active.
//!
//! It imports no service (not transport, frontend or cli): it publishes the active
//! copies on a `watch` channel, and Transport, subscribed, does its part of a failover
//! (retry its queues) when they change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::client::AdminClient;
use crate::directory::active_copies::ActiveCopyRecord;
use crate::directory::{Database, Directory, Server, StoreSpec};

const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A database Active Manager may fail over: several copies, shared data.
fn fails_over(db: &Database) -> bool {
    db.copies.len() > 1 && matches!(db.store, StoreSpec::Postgres(_))
}

/// Learns the active copies from the other servers (before this server accepts mail),
/// then watches the active copies' servers. The caller (server.rs) owns the watcher's
/// task.
pub async fn start(manager: Arc<ActiveCopyRecord>) -> tokio::task::JoinHandle<()> {
    learn_active_copies(&manager).await;
    tokio::spawn(watch(manager))
}

/// At start: the active copy of each database with a copy here, as the first other
/// holder of a copy that answers says.
async fn learn_active_copies(manager: &ActiveCopyRecord) {
    let ctx = &manager.ctx;
    let dir = ctx.dir();
    for db in dir.databases().filter(|d| d.copies.len() > 1) {
        if !holds_copy(db, ctx.name()) {
            continue;
        }
        for peer in db
            .copies
            .iter()
            .filter(|c| !c.eq_ignore_ascii_case(ctx.name()))
        {
            let Some(server) = dir.server(peer).cloned() else {
                continue;
            };
            let client = match AdminClient::for_peer(&dir, &server, ctx.name(), 2) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(server = %server.name, "admin API client: {e:#}");
                    continue;
                }
            };
            let name = db.name.clone();
            let answer = tokio::task::spawn_blocking(move || {
                let mut r = client.get("/api/databases").ok()?;
                let list: Vec<serde_json::Value> = r.body_mut().read_json().ok()?;
                list.into_iter()
                    .find(|d| d["Database"].as_str() == Some(name.as_str()))
                    .and_then(|d| d["ActiveServer"].as_str().map(str::to_string))
            })
            .await
            .ok()
            .flatten();
            let Some(active) = answer else { continue };
            let mine = manager.active_server(&db.name);
            if mine.as_deref() != Some(active.as_str())
                && db.copies.iter().any(|c| c.eq_ignore_ascii_case(&active))
            {
                tracing::info!(database = %db.name, server = %active, told_by = %peer,
                    "active copy learnt from another server");
                manager.set(&db.name, &active);
            }
            break;
        }
    }
}

fn holds_copy(db: &Database, server: &str) -> bool {
    db.copies.iter().any(|c| c.eq_ignore_ascii_case(server))
}

/// Whether a server's Mailbox Delivery listener accepts a connection.
async fn answers(server: &Server) -> bool {
    let addr = SocketAddr::new(server.ip(), server.ports.mailbox_delivery);
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The failover loop: since when each watched active server has been unreachable.
async fn watch(manager: Arc<ActiveCopyRecord>) {
    let ctx = &manager.ctx;
    let mut down_since: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let cfg = ctx.config();
        let dir = &cfg.dir;
        for db in dir.databases().filter(|d| fails_over(d)) {
            let key = db.name.to_lowercase();
            let Some(active) = manager.active_server(&db.name) else {
                continue;
            };
            if !holds_copy(db, ctx.name()) || active.eq_ignore_ascii_case(ctx.name()) {
                down_since.remove(&key);
                continue;
            }
            let Some(active_server) = dir.server(&active) else {
                continue;
            };
            if answers(active_server).await {
                down_since.remove(&key);
                continue;
            }
            let since = *down_since.entry(key.clone()).or_insert_with(Instant::now);
            let limit = failover_after(dir, &cfg.topology, db);
            if since.elapsed() < limit {
                continue;
            }
            // The next copy in activation preference whose server answers.
            let mut next = None;
            for copy in db
                .copies
                .iter()
                .filter(|c| !c.eq_ignore_ascii_case(&active))
            {
                if copy.eq_ignore_ascii_case(ctx.name()) {
                    next = Some(copy.clone());
                    break;
                }
                if let Some(s) = dir.server(copy)
                    && answers(s).await
                {
                    next = Some(copy.clone());
                    break;
                }
            }
            if next.is_some_and(|n| n.eq_ignore_ascii_case(ctx.name())) {
                down_since.remove(&key);
                fail_over(&manager, dir, db, &active, since.elapsed()).await;
            }
        }
    }
}

/// The DAG's `failover_after` for a database (of the DAG of its first copy).
fn failover_after(
    dir: &Directory,
    topology: &crate::directory::topology::Topology,
    db: &Database,
) -> Duration {
    db.copies
        .first()
        .and_then(|c| topology.dag_of(c))
        .and_then(|dag| dir.dag(dag))
        .map(|d| d.failover_after)
        .unwrap_or(Duration::from_secs(10))
}

/// This server takes the active copy of `db`, and tells the others.
async fn fail_over(
    manager: &ActiveCopyRecord,
    dir: &Directory,
    db: &Database,
    failed: &str,
    down_for: Duration,
) {
    tracing::warn!(database = %db.name, failed = %failed, down_for = ?down_for,
        "failover: the active copy's server does not answer; this server's copy is now active");
    let ctx = &manager.ctx;
    manager.set(&db.name, ctx.name());
    for server in dir
        .servers()
        .filter(|s| !s.name.eq_ignore_ascii_case(ctx.name()))
    {
        let client = match AdminClient::for_peer(dir, server, ctx.name(), 2) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(server = %server.name, "admin API client: {e:#}");
                continue;
            }
        };
        let path = format!("/api/databases/{}/activate/{}", db.name, ctx.name());
        let name = server.name.clone();
        let told = tokio::task::spawn_blocking(move || client.post(&path)).await;
        if !matches!(told, Ok(Ok(_))) {
            // A server that is down learns it when it starts (learn_active_copies).
            tracing::info!(server = %name, database = %db.name, "could not be told of the failover");
        }
    }
}

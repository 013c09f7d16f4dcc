//! The admin API (HTTP, DESIGN §1): what the CLI's management commands call on a
//! running server.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::transport::TransportService;
use crate::transport::queue::QueueInfo;
use crate::transport::routing::{Route, write_routing_log};

pub async fn start(
    addr: SocketAddr,
    transport: Arc<TransportService>,
) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/api/health", get(|| async { "ok" }))
        .route("/api/queues", get(list_queues))
        .route("/api/queues/{identity}/{action}", post(queue_action))
        .route("/api/routes", get(routes))
        .route(
            "/api/databases/{database}/activate/{server}",
            post(activate),
        )
        .with_state(transport);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin API: cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("admin API stopped: {e}");
        }
    });
    Ok(local)
}

async fn list_queues(State(t): State<Arc<TransportService>>) -> Json<Vec<QueueInfo>> {
    Json(t.queues.list())
}

async fn queue_action(
    State(t): State<Arc<TransportService>>,
    Path((identity, action)): Path<(String, String)>,
) -> Result<Json<QueueInfo>, (StatusCode, String)> {
    let queue = t
        .queues
        .find(&identity)
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no queue {identity:?}")))?;
    match action.as_str() {
        "retry" => queue.retry_now(),
        "suspend" => queue.set_suspended(true),
        "resume" => queue.set_suspended(false),
        _ => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("unknown action {action:?}: retry, suspend or resume"),
            ));
        }
    }
    Ok(Json(queue.info(t.ctx.name())))
}

async fn routes(State(t): State<Arc<TransportService>>) -> Json<Vec<Route>> {
    Json(t.ctx.routing().table())
}

/// Move-ActiveMailboxDatabase as this server learns it: the active copy of `database`
/// is now on `server`. Mailbox Delivery here accepts or refuses accordingly, and queued
/// mail is retried at once so it follows the new active copy.
async fn activate(
    State(t): State<Arc<TransportService>>,
    Path((database, server)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let ctx = &t.ctx;
    let db = ctx
        .dir
        .database(&database)
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no database {database:?}")))?;
    let copy = db
        .copies
        .iter()
        .find(|c| c.eq_ignore_ascii_case(&server))
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                format!("database {} has no copy on {server:?}", db.name),
            )
        })?;
    ctx.active.set(&db.name, copy);
    tracing::info!(database = %db.name, server = %copy, "active copy moved");
    write_routing_log(
        &crate::context::LogPaths::new(&ctx.data_dir).routing,
        ctx.name(),
        &ctx.routing().table(),
    );
    for q in t.queues.all() {
        q.retry_now();
    }
    Ok(Json(
        serde_json::json!({ "Database": db.name, "ActiveServer": copy, "Server": ctx.name() }),
    ))
}

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

pub async fn start(
    addr: SocketAddr,
    transport: Arc<TransportService>,
) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/api/health", get(|| async { "ok" }))
        .route("/api/queues", get(list_queues))
        .route("/api/queues/{identity}/{action}", post(queue_action))
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

//! The admin API (HTTP, DESIGN §1): what the CLI's management commands call on a
//! running server.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::transport::TransportService;
use crate::transport::queue::{MessageInfo, QueueInfo};
use crate::transport::routing::Route;

pub async fn start(
    addr: SocketAddr,
    transport: Arc<TransportService>,
) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/api/health", get(|| async { "ok" }))
        .route("/api/queues", get(list_queues))
        .route("/api/queues/{identity}/{action}", post(queue_action))
        .route("/api/routes", get(routes))
        .route("/api/reload", post(reload))
        .route("/api/messages", get(list_messages))
        .route("/api/messages/{id}/remove", post(remove_message))
        .route("/api/messages/{id}/export", get(export_message))
        .route("/api/databases", get(databases))
        .route(
            "/api/databases/{database}/activate/{server}",
            post(activate),
        )
        .layer(axum::middleware::from_fn_with_state(
            transport.clone(),
            require_token,
        ))
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

/// Every route but /api/health needs `Authorization: Bearer <token>` (derived from the
/// organisation secret). Requests from a browser page (an `Origin` header) are refused
/// outright, so a web page cannot drive the API through an operator's browser.
async fn require_token(
    State(t): State<Arc<TransportService>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, (StatusCode, String)> {
    if request.uri().path() == "/api/health" {
        return Ok(next.run(request).await);
    }
    if request.headers().contains_key(axum::http::header::ORIGIN) {
        return Err((
            StatusCode::FORBIDDEN,
            "browser requests are not accepted".into(),
        ));
    }
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !t.ctx.secret.verify_admin_token(token) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "admin API: missing or wrong token (derived from the organisation secret)".into(),
        ));
    }
    Ok(next.run(request).await)
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
    Json(t.ctx.routing_table())
}

/// Reads the organisation file again (`mailflow reload`).
async fn reload(
    State(t): State<Arc<TransportService>>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let restart = t
        .reload()
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))?;
    Ok(Json(
        serde_json::json!({ "Server": t.ctx.name(), "RestartNeeded": restart }),
    ))
}

/// Get-MailboxDatabaseCopyStatus, in short: each database, its copies and the active
/// one as this server knows it.
async fn databases(State(t): State<Arc<TransportService>>) -> Json<Vec<serde_json::Value>> {
    let dir = t.ctx.dir();
    Json(
        dir.databases()
            .map(|d| {
                serde_json::json!({
                    "Database": d.name,
                    "Copies": d.copies,
                    "ActiveServer": t.ctx.active.active_server(&d.name),
                })
            })
            .collect(),
    )
}

/// Move-ActiveMailboxDatabase as this server learns it: the active copy of `database`
/// is now on `server`. Mailbox Delivery here accepts or refuses accordingly, and queued
/// mail is retried at once so it follows the new active copy.
async fn activate(
    State(t): State<Arc<TransportService>>,
    Path((database, server)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let ctx = &t.ctx;
    let dir = ctx.dir();
    let db = dir
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
    t.activate(&db.name, copy);
    Ok(Json(
        serde_json::json!({ "Database": db.name, "ActiveServer": copy, "Server": ctx.name() }),
    ))
}

#[derive(serde::Deserialize)]
struct MessageQuery {
    queue: Option<String>,
}

/// Get-Message, optionally for one queue.
async fn list_messages(
    State(t): State<Arc<TransportService>>,
    Query(q): Query<MessageQuery>,
) -> Result<Json<Vec<MessageInfo>>, (StatusCode, String)> {
    let queues = match &q.queue {
        Some(id) => vec![
            t.queues
                .find(id)
                .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no queue {id:?}")))?,
        ],
        None => t.queues.all(),
    };
    Ok(Json(
        queues
            .iter()
            .flat_map(|q| q.messages(t.ctx.name()))
            .collect(),
    ))
}

/// The internal id at the end of an identity like `MBX1\3\42`, or a bare `42`.
fn message_id(identity: &str) -> Result<i64, (StatusCode, String)> {
    identity
        .rsplit(['\\', '/'])
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                format!("{identity:?} is not a message identity (Server\\Queue\\Id)"),
            )
        })
}

#[derive(serde::Deserialize)]
struct RemoveQuery {
    /// Remove-Message -WithNDR (default true, as in Exchange).
    ndr: Option<bool>,
}

/// Remove-Message: out of every delivery queue that holds it, with or without an NDR.
async fn remove_message(
    State(t): State<Arc<TransportService>>,
    Path(identity): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let id = message_id(&identity)?;
    let mut removed = 0;
    for queue in t.queues.all() {
        for item in queue.remove_message(id) {
            removed += item.recipients.len();
            t.remove_item(item, q.ndr.unwrap_or(true)).await;
        }
    }
    if removed == 0 {
        return Err((
            StatusCode::NOT_FOUND,
            format!("message {id} is not waiting in a delivery queue (being transmitted, or gone)"),
        ));
    }
    Ok(Json(
        serde_json::json!({ "InternalId": id, "RecipientsRemoved": removed, "WithNDR": q.ndr.unwrap_or(true) }),
    ))
}

/// Export-Message: the message as it waits in its queue (.eml bytes).
async fn export_message(
    State(t): State<Arc<TransportService>>,
    Path(identity): Path<String>,
) -> Result<Vec<u8>, (StatusCode, String)> {
    let id = message_id(&identity)?;
    t.queues
        .all()
        .iter()
        .find_map(|q| q.content_of(id))
        .map(|c| c.to_vec())
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("message {id} is not waiting in a delivery queue"),
            )
        })
}

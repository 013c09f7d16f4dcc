//! The admin API (HTTP, DESIGN §1): what the CLI's management commands call on a
//! running server, and what Active Manager calls on the other servers.
//!
//! Off loopback it is HTTPS with the server's certificate, verified by clients against
//! the organisation CA, so tokens never cross a network in clear text; without a CA
//! such a server does not start. Every route but /api/health needs a bearer token
//! (tokens.rs); the listener caps connections and header time (listener.rs) and the
//! middleware here caps request bodies in size and time.

pub mod client;
pub mod listener;
pub mod services;
pub mod tokens;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::directory::active_copies::ActiveCopyRecord;
use crate::directory::live::LiveDirectory;
use crate::logs::tracking::{TrackingEvent, TrackingFilter};
use crate::transport::TransportService;
use crate::transport::queue::{MessageInfo, QueueInfo};
use crate::transport::routing::Route;

/// The largest request body accepted (every call today has an empty one).
pub const MAX_BODY: usize = 64 * 1024;
/// Time for a client to send a request's body once its headers are in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether an admin listener on `ip` serves HTTPS: everywhere but loopback (an
/// unspecified address, 0.0.0.0 or ::, listens on every interface, so it is not
/// loopback either). Clients use the same rule to pick the scheme.
pub fn uses_tls(ip: IpAddr) -> bool {
    !ip.is_loopback()
}

/// What the API acts on: the server's directory, its Transport service (queues,
/// routing), its Active Manager (database copies) and its services (Stop-Service).
pub struct AdminState {
    pub directory: Arc<LiveDirectory>,
    pub transport: Arc<TransportService>,
    pub active: Arc<ActiveCopyRecord>,
    pub services: Arc<dyn services::ServiceControl>,
}

impl AdminState {
    /// Reads the organisation file again (`mailflow reload`, SIGHUP): the new version is
    /// swapped in whole, Active Manager reconciles the copies with it, and Transport
    /// routes again what waits on routing. Returns what changed that needs a restart; a
    /// file that does not validate changes nothing.
    pub fn reload(&self) -> anyhow::Result<Vec<String>> {
        let restart = self.directory.reload()?;
        self.active.reconcile();
        self.transport.reloaded(&restart);
        Ok(restart)
    }
}

/// Starts the API on `addr`; returns the bound address, whether it is HTTPS, and the
/// accept loop's task (server.rs owns it; aborting it closes the port).
/// `tls` and `certificate` are the server's (what its receive connectors present).
pub async fn start(
    addr: SocketAddr,
    state: Arc<AdminState>,
    tls: Arc<rustls::ServerConfig>,
) -> anyhow::Result<(SocketAddr, bool, tokio::task::JoinHandle<()>)> {
    let dir = state.directory.dir();
    let acceptor = if uses_tls(addr.ip()) {
        if dir.org_ca_certificate_path().is_none() {
            anyhow::bail!(
                "admin API: refusing to listen on {addr} without TLS: the organisation file {} \
                 has no [organization] ca_certificate, so clients could not verify this server and \
                 its tokens would cross the network in clear text. Create it and this server's certificate with `{}`, \
                 or set this server's bind (or address) to a loopback address such as 127.0.0.1",
                dir.source,
                crate::net::orgca::upgrade_command(std::path::Path::new(&dir.source)),
            );
        }
        Some(tokio_rustls::TlsAcceptor::from(tls))
    } else {
        None
    };
    let key = tokens::AdminKey::load(&dir.secret_path())
        .map_err(|e| anyhow::anyhow!("admin API: {e}"))?;
    let verifier = Arc::new(tokens::Verifier::new(key, tokens::tokens_path(&dir)));
    let app = Router::new()
        .route("/api/health", get(|| async { "ok" }))
        .route("/api/queues", get(list_queues))
        .route("/api/queues/{identity}/{action}", post(queue_action))
        .route("/api/routes", get(routes))
        .route("/api/reload", post(reload))
        .route("/api/services", get(list_services))
        .route("/api/services/{name}/{action}", post(service_action))
        .route("/api/messages", get(list_messages))
        .route("/api/messages/{id}/remove", post(remove_message))
        .route("/api/messages/{id}/export", get(export_message))
        .route("/api/databases", get(databases))
        .route("/api/tracking", get(tracking))
        .route(
            "/api/databases/{database}/activate/{server}",
            post(activate),
        )
        .layer(axum::middleware::from_fn_with_state(
            verifier,
            require_token,
        ))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin API: cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let https = acceptor.is_some();
    let task = tokio::spawn(listener::serve(listener, app, acceptor));
    Ok((local, https, task))
}

/// The IP clients connect to for a listener on `ip`: itself, or the server's address
/// when it listens on every interface.
type Refusal = (StatusCode, String);

/// Every route but /api/health needs `Authorization: Bearer <token>`: an operator's
/// token or a short-lived one minted with the organisation secret (tokens.rs).
/// Requests from a browser page (an `Origin` header) are refused outright, so a web
/// page cannot drive the API through an operator's browser. Then the body is read,
/// at most MAX_BODY bytes within BODY_TIMEOUT, and calls that change something are
/// logged with the caller's name.
async fn require_token(
    State(verifier): State<Arc<tokens::Verifier>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, Refusal> {
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
        .unwrap_or("")
        .trim();
    let caller = verifier.check(token).map_err(|why| {
        (
            StatusCode::UNAUTHORIZED,
            format!(
                "admin API: {why}: send `Authorization: Bearer <token>` with a token from \
                 `mailflow admin token create`, or run the CLI where it can read the organisation secret\n"
            ),
        )
    })?;
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("admin API: request bodies are limited to {MAX_BODY} bytes\n"),
            ));
        }
        Err(_) => {
            return Err((
                StatusCode::REQUEST_TIMEOUT,
                format!("admin API: the request body did not arrive within {BODY_TIMEOUT:?}\n"),
            ));
        }
    };
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let peer = parts.extensions.get::<listener::Peer>().map(|p| p.0);
    let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    let response = next.run(request).await;
    if method != axum::http::Method::GET {
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        tracing::info!(
            caller = %caller, peer = %peer, status = response.status().as_u16(),
            "admin API: {method} {path}"
        );
    }
    Ok(response)
}

async fn list_queues(State(t): State<Arc<AdminState>>) -> Json<Vec<QueueInfo>> {
    Json(t.transport.queues.list())
}

async fn queue_action(
    State(t): State<Arc<AdminState>>,
    UrlPath((identity, action)): UrlPath<(String, String)>,
) -> Result<Json<QueueInfo>, (StatusCode, String)> {
    let queue = t
        .transport
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
    Ok(Json(queue.info(t.directory.name())))
}

async fn routes(State(t): State<Arc<AdminState>>) -> Json<Vec<Route>> {
    Json(crate::transport::routing::routing_table(&t.transport.ctx))
}

/// Reads the organisation file again (`mailflow reload`, [`AdminState::reload`]).
async fn reload(
    State(t): State<Arc<AdminState>>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let restart = t
        .reload()
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))?;
    Ok(Json(
        serde_json::json!({ "Server": t.directory.name(), "RestartNeeded": restart }),
    ))
}

/// Get-Service: each transport service of this server, Running or Stopped.
async fn list_services(State(t): State<Arc<AdminState>>) -> Json<Vec<services::ServiceInfo>> {
    Json(t.services.list().await)
}

/// Stop-Service / Start-Service for one service (`stop` or `start`; only Transport
/// can be stopped alone). Answers with the service's row afterwards.
async fn service_action(
    State(t): State<Arc<AdminState>>,
    UrlPath((name, action)): UrlPath<(String, String)>,
) -> Result<Json<services::ServiceInfo>, (StatusCode, String)> {
    let service = services::Service::parse(&name).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!(
                "no service {name:?}: {}",
                services::Service::ALL.map(|s| s.name()).join(", ")
            ),
        )
    })?;
    if !service.can_stop() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "{} cannot be stopped or started alone: only MSExchangeTransport can; stop the \
                 whole server to stop the others",
                service.name()
            ),
        ));
    }
    let done = match action.as_str() {
        "stop" => t.services.stop(service).await,
        "start" => t.services.start(service).await,
        _ => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("unknown action {action:?}: stop or start"),
            ));
        }
    };
    done.map(Json)
        .map_err(|e| (StatusCode::CONFLICT, format!("{e:#}")))
}

/// Get-MailboxDatabaseCopyStatus, in short: each database, its copies and the active
/// one as this server knows it.
async fn databases(State(t): State<Arc<AdminState>>) -> Json<Vec<serde_json::Value>> {
    let dir = t.directory.dir();
    Json(
        dir.databases()
            .map(|d| {
                serde_json::json!({
                    "Database": d.name,
                    "Copies": d.copies,
                    "ActiveServer": t.active.active_server(&d.name),
                })
            })
            .collect(),
    )
}

/// Move-ActiveMailboxDatabase as this server learns it: the active copy of `database`
/// is now on `server`. Mailbox Delivery here accepts or refuses accordingly, and queued
/// mail is retried at once so it follows the new active copy.
async fn activate(
    State(t): State<Arc<AdminState>>,
    UrlPath((database, server)): UrlPath<(String, String)>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let dir = t.directory.dir();
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
    // Transport, subscribed to Active Manager, retries its queues.
    t.active.set(&db.name, copy);
    Ok(Json(
        serde_json::json!({ "Database": db.name, "ActiveServer": copy, "Server": t.directory.name() }),
    ))
}

#[derive(serde::Deserialize)]
struct MessageQuery {
    queue: Option<String>,
}

/// Get-Message, optionally for one queue.
async fn list_messages(
    State(t): State<Arc<AdminState>>,
    Query(q): Query<MessageQuery>,
) -> Result<Json<Vec<MessageInfo>>, (StatusCode, String)> {
    let queues = match &q.queue {
        Some(id) => vec![
            t.transport
                .queues
                .find(id)
                .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no queue {id:?}")))?,
        ],
        None => t.transport.queues.all(),
    };
    Ok(Json(
        queues
            .iter()
            .flat_map(|q| q.messages(t.directory.name()))
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
    State(t): State<Arc<AdminState>>,
    UrlPath(identity): UrlPath<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let id = message_id(&identity)?;
    let mut removed = 0;
    for queue in t.transport.queues.all() {
        for item in queue.remove_message(id) {
            removed += item.recipients.len();
            t.transport.remove_item(item, q.ndr.unwrap_or(true)).await;
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
    State(t): State<Arc<AdminState>>,
    UrlPath(identity): UrlPath<String>,
) -> Result<Vec<u8>, (StatusCode, String)> {
    let id = message_id(&identity)?;
    t.transport
        .queues
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

/// Get-MessageTrackingLog's parameters as the query string of `GET /api/tracking`: the
/// CLI's `track` filters, times in RFC 3339, recipients separated by commas. The CLI
/// builds it ([`TrackingQuery::pairs`]) and the server reads it back into a
/// [`TrackingFilter`], so both ends agree on one shape.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct TrackingQuery {
    pub sender: Option<String>,
    pub recipients: Option<String>,
    pub subject: Option<String>,
    pub event_id: Option<String>,
    pub source: Option<String>,
    pub message_id: Option<String>,
    pub internal_message_id: Option<String>,
    pub network_message_id: Option<String>,
    pub reference: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub result_size: Option<usize>,
}

impl TrackingQuery {
    /// The query of `filter`.
    pub fn from_filter(f: &TrackingFilter) -> TrackingQuery {
        let time = |t: &Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        TrackingQuery {
            sender: f.sender.clone(),
            recipients: (!f.recipients.is_empty()).then(|| f.recipients.join(",")),
            subject: f.subject.clone(),
            event_id: f.event_id.clone(),
            source: f.source.clone(),
            message_id: f.message_id.clone(),
            internal_message_id: f.internal_message_id.clone(),
            network_message_id: f.network_message_id.clone(),
            reference: f.reference.clone(),
            start: time(&f.start),
            end: time(&f.end),
            result_size: f.result_size,
        }
    }

    /// The `(name, value)` pairs of the query string (unset filters left out).
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let text = [
            ("sender", &self.sender),
            ("recipients", &self.recipients),
            ("subject", &self.subject),
            ("event_id", &self.event_id),
            ("source", &self.source),
            ("message_id", &self.message_id),
            ("internal_message_id", &self.internal_message_id),
            ("network_message_id", &self.network_message_id),
            ("reference", &self.reference),
            ("start", &self.start),
            ("end", &self.end),
        ];
        let mut pairs: Vec<(&'static str, String)> = text
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.clone()?)))
            .collect();
        if let Some(n) = self.result_size {
            pairs.push(("result_size", n.to_string()));
        }
        pairs
    }

    /// The filter it asks for; an unreadable time is the caller's error.
    pub fn into_filter(self) -> Result<TrackingFilter, String> {
        let time = |t: Option<String>| {
            t.map(|t| {
                chrono::DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|e| format!("cannot read the time {t:?} (RFC 3339 expected): {e}"))
            })
            .transpose()
        };
        Ok(TrackingFilter {
            sender: self.sender,
            recipients: self
                .recipients
                .map(|r| {
                    r.split(',')
                        .map(str::trim)
                        .filter(|r| !r.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            subject: self.subject,
            event_id: self.event_id,
            source: self.source,
            message_id: self.message_id,
            internal_message_id: self.internal_message_id,
            network_message_id: self.network_message_id,
            reference: self.reference,
            start: time(self.start)?,
            end: time(self.end)?,
            result_size: self.result_size,
        })
    }
}

/// Get-MessageTrackingLog on this server: its own message tracking folder searched
/// with the query's filters (`Get-TransportService | Get-MessageTrackingLog` asks each
/// server this way, so servers on other machines answer one `track --all-servers`).
async fn tracking(
    State(t): State<Arc<AdminState>>,
    Query(q): Query<TrackingQuery>,
) -> Result<Json<Vec<TrackingEvent>>, (StatusCode, String)> {
    let filter = q.into_filter().map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    let dir = t.directory.dir();
    let server = dir
        .server(t.directory.name())
        .ok_or_else(|| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{} is not in the organisation file", t.directory.name()),
            )
        })?
        .clone();
    // MessageTrackingLogPath of `[servers.transport_service]`, else the default.
    let folder = server
        .log_paths(&dir.data_dir(&server), &|p| dir.path(p))
        .message_tracking
        .dir;
    let events =
        tokio::task::spawn_blocking(move || crate::logs::tracking::search(&[folder], &filter))
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot read the message tracking log: {e}"),
                )
            })?;
    Ok(Json(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_tracking_filter_survives_the_query_string() {
        let filter = TrackingFilter {
            sender: Some("alice@contoso.test".into()),
            recipients: vec!["bob@contoso.test".into(), "carol@contoso.test".into()],
            subject: Some("a, b & c".into()),
            event_id: Some("DELIVER".into()),
            source: Some("STOREDRIVER".into()),
            message_id: Some("<x@y>".into()),
            internal_message_id: Some("42".into()),
            network_message_id: Some("0b1c2d3e-0000-4000-8000-000000000001".into()),
            reference: Some("<r@y>".into()),
            start: Some(chrono::Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap()),
            end: Some(chrono::Utc.with_ymd_and_hms(2026, 12, 3, 11, 0, 0).unwrap()),
            result_size: Some(0),
        };
        let query = TrackingQuery::from_filter(&filter);
        assert_eq!(query.pairs().len(), 12);
        let back = query.into_filter().unwrap();
        assert_eq!(format!("{back:?}"), format!("{filter:?}"));
        // Unset filters are left out of the query, and stay unset.
        let empty = TrackingQuery::from_filter(&TrackingFilter::default());
        assert!(empty.pairs().is_empty());
        let bad = TrackingQuery {
            start: Some("yesterday".into()),
            ..TrackingQuery::default()
        };
        assert!(bad.into_filter().unwrap_err().contains("yesterday"));
    }
}

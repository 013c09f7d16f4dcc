//! The admin API's accept loop, with the limits `axum::serve` does not have: a cap on
//! connections, a time limit on the TLS handshake and on request headers (hyper's
//! HTTP/1 builder), so a client that connects and trickles cannot hold the API.
//! Request bodies are limited in size and time by the router's middleware (mod.rs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once; those past it are closed at once (the API is for a
/// few operators and the other servers, not for crowds).
pub const MAX_CONNECTIONS: usize = 64;
/// Time for a client to send a request's headers (and, with TLS, to finish the
/// handshake); an idle keep-alive connection is closed after it too.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until the process ends; TLS when `tls` is given.
pub async fn serve(listener: TcpListener, app: Router, tls: Option<tokio_rustls::TlsAcceptor>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("admin API: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                "admin API: {peer} refused: {MAX_CONNECTIONS} connections are open already"
            );
            drop(tcp);
            continue;
        };
        let app = app.clone().layer(axum::Extension(Peer(peer)));
        let tls = tls.clone();
        // Per connection, bounded by MAX_CONNECTIONS (the slot) and the read timeouts.
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            match tls {
                None => connection(tcp, app, peer).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => connection(stream, app, peer).await,
                        Ok(Err(e)) => tracing::info!("admin API: TLS handshake with {peer}: {e}"),
                        Err(_) => tracing::info!("admin API: TLS handshake with {peer} timed out"),
                    }
                }
            }
        });
    }
}

/// The client's address, for the log lines of calls that change something.
#[derive(Clone, Copy)]
pub struct Peer(pub SocketAddr);

async fn connection<S>(stream: S, app: Router, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
        .await;
    if let Err(e) = served {
        tracing::debug!("admin API: connection from {peer}: {e}");
    }
}

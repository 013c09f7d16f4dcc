//! `mailflow serve`: every service of one server in one process (DESIGN §1).

use std::process::ExitCode;
use std::sync::Arc;

use super::{Global, load_directory};
use crate::server::Server;

pub fn run(g: &Global) -> anyhow::Result<ExitCode> {
    let dir = Arc::new(load_directory(g)?);
    let server = dir.choose_server(g.server.as_deref())?.clone();
    // Two runtimes, as Exchange runs the Front End and Transport services apart from
    // Mailbox Transport Delivery. The main one serves every SMTP session that brings
    // mail in (Front End, Transport's receive connectors, the admin API). The
    // delivery runtime, one thread of its own, runs what happens to mail after it is
    // durable: the categorizer, the delivery queues' sessions and Mailbox Delivery
    // (:475). A burst of new internet sessions then waits its turn in the main
    // runtime instead of queueing ahead of mail already accepted: at half the peak
    // rate this took the end-to-end p99 of partial benchmark runs from 40–240 ms to
    // 15–30 ms.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let delivery_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mailbox-transport")
        .enable_all()
        .build()?;
    let code = runtime.block_on(serve(dir, server, delivery_runtime.handle().clone()));
    delivery_runtime.shutdown_background();
    code
}

async fn serve(
    dir: Arc<crate::directory::Directory>,
    server: crate::directory::Server,
    delivery_runtime: tokio::runtime::Handle,
) -> anyhow::Result<ExitCode> {
    let s = Server::start(dir, server, delivery_runtime).await?;
    summary(&s);
    tracing::info!("ready");
    #[cfg(unix)]
    let reload = reload_on_hangup(s.admin.clone());

    shutdown_signal().await;
    tracing::info!("shutting down");
    #[cfg(unix)]
    if let Some(task) = reload {
        task.abort();
    }
    s.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// What `mailflow serve` prints once every listener is bound.
fn summary(s: &Server) {
    let (dir, server, org, a) = (&s.dir, &s.entry, s.dir.organization(), &s.addresses);
    println!(
        "mailflow {} — server {} ({}) of organisation {:?}",
        env!("CARGO_PKG_VERSION"),
        server.name,
        server.fqdn,
        org.name
    );
    println!("  organisation file:  {}", dir.source);
    println!("  accepted domains:   {}", org.accepted_domains.join(", "));
    println!(
        "  mailboxes:          {}",
        dir.mailboxes()
            .map(|m| m.address.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  data folder:        {}", s.data_dir.display());
    println!(
        "  pickup / replay:    {} / {}",
        s.pickup_dir.display(),
        s.replay_dir.display()
    );
    println!("  listening:");
    println!(
        "    {:<22} Default Frontend {} (Front End Transport, SMTP for the internet)",
        a.frontend, server.name
    );
    println!(
        "    {:<22} Default {} (Transport)",
        a.transport, server.name
    );
    println!(
        "    {:<22} Default Mailbox Delivery {} (Mailbox Transport Delivery)",
        a.mailbox_delivery, server.name
    );
    println!(
        "    {:<22} Outbound Proxy Frontend {} (send connectors with front_end_proxy)",
        a.outbound_proxy, server.name
    );
    println!(
        "    {:<22} Client Frontend {} (submission: STARTTLS + AUTH)",
        a.client_frontend, server.name
    );
    println!(
        "    {:<22} Client Proxy {} (Transport; only from Front Ends)",
        a.client_proxy, server.name
    );
    for (addr, name, kind) in &a.custom {
        println!("    {addr:<22} {name} ({kind})");
    }
    println!(
        "    {:<22} admin API ({})",
        a.admin,
        if a.admin_https { "https" } else { "http" }
    );
    println!(
        "  try: swaks --to {} --server {}",
        dir.mailboxes()
            .nth(1)
            .or(dir.mailboxes().next())
            .map(|m| m.address.as_str())
            .unwrap_or("someone@example"),
        a.frontend
    );
}

/// `SIGHUP` reads the organisation file again, as `mailflow reload` does.
#[cfg(unix)]
fn reload_on_hangup(server: Arc<crate::admin::AdminState>) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; use `mailflow reload`");
        return None;
    };
    // Owned by `serve`, which aborts it at shutdown.
    Some(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if let Err(e) = server.reload() {
                tracing::error!("reload refused, the previous configuration stays: {e:#}");
            }
        }
    }))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

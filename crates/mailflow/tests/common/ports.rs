//! The ports of a server under test: port 0 everywhere for a lone server (read back
//! from `listeners.json`), explicit free ports for the members of a cluster. Imports
//! nothing of the other helpers.

use std::net::TcpListener;
use std::path::Path;

/// Free loopback ports for servers under test. They come from below the kernel's
/// ephemeral range (32768+), so the local ports of outgoing connections can never take
/// them between the pick and the server's bind, and no port is handed out twice within
/// a test process.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        // A different start per process: test binaries run one after another.
        let start = 20000 + (std::process::id() % 600) as u16 * 20;
        let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(port < 32700, "out of test ports");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
    }
    out
}

/// The listening ports of one server, as `[servers.ports]` names them.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// Default Frontend (:25 in Exchange).
    pub frontend: u16,
    /// Client Frontend (:587).
    pub client_frontend: u16,
    /// Client Proxy (:465).
    pub client_proxy: u16,
    /// Outbound Proxy Frontend (:717).
    pub outbound_proxy: u16,
    /// Default <server> (:2525).
    pub transport: u16,
    /// Mailbox Delivery (:475).
    pub mailbox_delivery: u16,
    /// The admin API.
    pub admin: u16,
}

impl Ports {
    /// Every port 0: the server binds what the system gives and reports it in
    /// `<data_dir>/listeners.json` (only for an organisation of one server).
    pub fn system() -> Ports {
        Ports::from([0; 7])
    }

    /// The ports a running server recorded in `<data_dir>/listeners.json`.
    pub fn bound(data_dir: &Path) -> Option<Ports> {
        let text = std::fs::read_to_string(data_dir.join("listeners.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let p = &v["ports"];
        let port = |k: &str| p[k].as_u64().and_then(|n| u16::try_from(n).ok());
        Some(Ports {
            frontend: port("frontend")?,
            client_frontend: port("client_frontend")?,
            client_proxy: port("client_proxy")?,
            outbound_proxy: port("outbound_proxy")?,
            transport: port("transport")?,
            mailbox_delivery: port("mailbox_delivery")?,
            admin: port("admin")?,
        })
    }

    /// Explicit free ports, for organisations of several servers (each must know
    /// where the others listen).
    pub fn new() -> Ports {
        let p = free_ports(7);
        Ports::from([p[0], p[1], p[2], p[3], p[4], p[5], p[6]])
    }

    /// In `[servers.ports]` order: frontend, client_frontend, client_proxy,
    /// outbound_proxy, transport, mailbox_delivery, admin.
    fn from(p: [u16; 7]) -> Ports {
        Ports {
            frontend: p[0],
            client_frontend: p[1],
            client_proxy: p[2],
            outbound_proxy: p[3],
            transport: p[4],
            mailbox_delivery: p[5],
            admin: p[6],
        }
    }

    /// The `[servers.ports]` table.
    pub fn toml(&self) -> String {
        format!(
            "[servers.ports]\nfrontend = {}\nclient_frontend = {}\nclient_proxy = {}\noutbound_proxy = {}\ntransport = {}\nmailbox_delivery = {}\nadmin = {}\n",
            self.frontend,
            self.client_frontend,
            self.client_proxy,
            self.outbound_proxy,
            self.transport,
            self.mailbox_delivery,
            self.admin
        )
    }
}

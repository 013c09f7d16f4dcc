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

pub struct Ports {
    pub frontend: u16,
    pub transport: u16,
    pub mailbox_delivery: u16,
    pub admin: u16,
    others: [u16; 3],
}

impl Ports {
    /// Every port 0: the server binds what the system gives and reports it in
    /// `<data_dir>/listeners.json` (only for an organisation of one server).
    pub fn system() -> Ports {
        Ports {
            frontend: 0,
            transport: 0,
            mailbox_delivery: 0,
            admin: 0,
            others: [0; 3],
        }
    }

    /// The ports a running server recorded in `<data_dir>/listeners.json`.
    pub fn bound(data_dir: &Path) -> Option<Ports> {
        let text = std::fs::read_to_string(data_dir.join("listeners.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let p = &v["ports"];
        let port = |k: &str| p[k].as_u64().and_then(|n| u16::try_from(n).ok());
        Some(Ports {
            frontend: port("frontend")?,
            transport: port("transport")?,
            mailbox_delivery: port("mailbox_delivery")?,
            admin: port("admin")?,
            others: [
                port("client_frontend")?,
                port("client_proxy")?,
                port("outbound_proxy")?,
            ],
        })
    }

    /// Explicit free ports, for organisations of several servers (each must know
    /// where the others listen).
    pub fn new() -> Ports {
        let p = free_ports(7);
        Ports {
            frontend: p[0],
            transport: p[1],
            mailbox_delivery: p[2],
            admin: p[3],
            others: [p[4], p[5], p[6]],
        }
    }
    /// The Outbound Proxy Frontend port (:717 in Exchange).
    pub fn others_outbound_proxy(&self) -> u16 {
        self.others[2]
    }
    /// The Client Frontend port (:587 in Exchange).
    pub fn client_frontend(&self) -> u16 {
        self.others[0]
    }
    /// The Client Proxy port (:465 in Exchange).
    pub fn client_proxy(&self) -> u16 {
        self.others[1]
    }

    pub fn toml(&self) -> String {
        format!(
            "[servers.ports]\nfrontend = {}\nclient_frontend = {}\nclient_proxy = {}\noutbound_proxy = {}\ntransport = {}\nmailbox_delivery = {}\nadmin = {}\n",
            self.frontend,
            self.others[0],
            self.others[1],
            self.others[2],
            self.transport,
            self.mailbox_delivery,
            self.admin
        )
    }
}

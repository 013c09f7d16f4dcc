//! `<data_dir>/listeners.json`: what a running server bound. `serve` writes it after
//! binding; the CLI's admin client and the tests read it (ports the organisation file
//! leaves at 0 are the system's choice). Imports only `directory` and `files`.

use std::net::SocketAddr;

/// Where `serve` records its listeners, in the server's data folder.
pub const LISTENERS_FILE: &str = "listeners.json";

/// `<data_dir>/listeners.json`: every listener of a running server with the address it
/// actually bound (ports the file leaves at 0 are the system's choice), written 0600
/// after binding and before the "ready" line, replaced at each start.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Listeners {
    pub server: String,
    /// The process that bound them (a file left by a stopped server names a dead one).
    pub pid: u32,
    /// The server's ports as bound, by the names of `[servers.ports]`.
    pub ports: crate::directory::config::Ports,
    /// Every listener: the built-in ones, the custom receive connectors, the admin API.
    pub listeners: Vec<Listener>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Listener {
    /// The `[servers.ports]` key, `receive_connector` for a custom one.
    pub kind: String,
    pub name: String,
    pub address: SocketAddr,
}

impl Listener {
    pub fn new(kind: &str, name: String, address: SocketAddr) -> Listener {
        Listener {
            kind: kind.into(),
            name,
            address,
        }
    }
}

/// Writes the file whole (a temporary file renamed over it), so a reader never sees
/// half of it.
pub fn write_listeners(path: &std::path::Path, l: &Listeners) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(l).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    crate::files::write_private(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)
}

/// The listeners a server recorded at its last start, if its data folder has them.
pub fn read_listeners(data_dir: &std::path::Path) -> Option<Listeners> {
    let bytes = std::fs::read(data_dir.join(LISTENERS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

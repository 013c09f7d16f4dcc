//! The directory as one running server reads it: the organisation file's current
//! version (swapped whole by a reload), this server's entry as it was started, and the
//! ports its listeners bound. Every service gets an `Arc` of it; it carries no log, no
//! secret and no service state, so sharing it joins nothing but the organisation's
//! facts. Must not import net, logs or a service (scripts/check-arrows).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use super::config::Ports;
use super::topology::{Distances, Topology};
use super::transport_rules::Rule;
use super::{Directory, Server};

/// One reading of the organisation file as this server uses it. A reload builds a new
/// one and swaps it in whole, so a session or a routing decision sees one consistent
/// version from start to end, and the old one lives until its last user lets go.
pub struct OrgConfig {
    pub dir: Arc<Directory>,
    pub topology: Topology,
    /// This server as this version of the file describes it.
    pub server: Server,
    /// Mail flow rules for the Transport Rule agent, in priority order.
    pub rules: Vec<Rule>,
}

impl OrgConfig {
    pub fn new(dir: Arc<Directory>, server: &str) -> anyhow::Result<OrgConfig> {
        let server = dir
            .server(server)
            .ok_or_else(|| anyhow::anyhow!("{}: server {server:?} is not in the file", dir.source))?
            .clone();
        let rules = super::transport_rules::load(&dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.source))?;
        Ok(OrgConfig {
            rules,
            topology: Topology::new(&dir),
            dir,
            server,
        })
    }

    /// Distances from this server by site, as this version of the organisation gives
    /// them (hub selection; Transport's routing adds the active copies).
    pub fn distances(&self) -> Distances<'_> {
        Distances {
            dir: &self.dir,
            topology: &self.topology,
            local: &self.server,
        }
    }
}

/// The organisation as this server knows it now, and this server as it was started.
pub struct LiveDirectory {
    config: ArcSwap<OrgConfig>,
    /// This server as it was started: its listeners, addresses and certificates (a
    /// reload does not rebind; see `reload`).
    started: Server,
    ip: IpAddr,
    data_dir: PathBuf,
    /// The ports this server's listeners bound, set once by `server.rs` after binding:
    /// every version of the directory this server reads carries them in place of the
    /// file's `0`s (`Directory::with_bound_ports`).
    bound_ports: OnceLock<Ports>,
}

impl LiveDirectory {
    pub fn new(dir: Arc<Directory>, server: &Server) -> anyhow::Result<LiveDirectory> {
        Ok(LiveDirectory {
            data_dir: dir.data_dir(server),
            ip: server.ip(),
            started: server.clone(),
            config: ArcSwap::from_pointee(OrgConfig::new(dir, &server.name)?),
            bound_ports: OnceLock::new(),
        })
    }

    /// Records the ports this server's listeners bound (once, before any mail moves)
    /// and swaps in a directory whose entry for this server names them.
    pub fn set_bound_ports(&self, bound: Ports) -> anyhow::Result<()> {
        let _ = self.bound_ports.set(bound);
        let dir = (*self.dir()).clone();
        let new = OrgConfig::new(Arc::new(self.with_bound(dir)), &self.started.name)?;
        self.config.store(Arc::new(new));
        Ok(())
    }

    fn with_bound(&self, dir: Directory) -> Directory {
        match self.bound_ports.get() {
            Some(bound) => dir.with_bound_ports(&self.started.name, bound),
            None => dir,
        }
    }

    /// The organisation as this server knows it now.
    pub fn config(&self) -> Arc<OrgConfig> {
        self.config.load_full()
    }

    /// The directory as this server knows it now.
    pub fn dir(&self) -> Arc<Directory> {
        self.config.load().dir.clone()
    }

    /// Reads the organisation file again and swaps the new version in whole. Recipients,
    /// groups, accepted domains, send connectors, sites, site links, DAGs, database
    /// copies and mail flow rules take effect for the next message, session or
    /// connection. What a running server has already bound or opened — its own entry
    /// (ports, addresses, certificates), its receive connectors, the databases it
    /// opened, the list of servers allowed on internal listeners, the `[transport]`
    /// settings and the organisation's size limits — keeps its started value; the
    /// returned list names what changed there, so the operator knows to restart.
    /// A file that does not validate changes nothing.
    pub fn reload(&self) -> anyhow::Result<Vec<String>> {
        let old = self.config();
        let Some(file) = old.dir.file.clone() else {
            anyhow::bail!("the built-in organisation has no file to reload");
        };
        let dir = Directory::load(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
        let dir = Arc::new(self.with_bound(dir));
        let new = OrgConfig::new(dir, &self.started.name)?;
        let restart = restart_needed(&old, &new);
        self.config.store(Arc::new(new));
        Ok(restart)
    }

    /// This server as it was started.
    pub fn local(&self) -> &Server {
        &self.started
    }

    pub fn name(&self) -> &str {
        &self.started.name
    }

    pub fn fqdn(&self) -> &str {
        &self.started.fqdn
    }

    /// This server's address (its entry's `address`).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Where this server's listeners bind.
    pub fn bind_ip(&self) -> IpAddr {
        self.started.bind_ip().unwrap_or(self.ip)
    }

    /// This server's data folder (queue database, logs, state files).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The name a peer's certificate must carry: the fqdn of the `[[servers]]` entry
    /// whose `address` or `bind` and one of whose ports are `target`'s, else the
    /// target's IP (certificates the organisation CA issues carry both as SANs).
    pub fn peer_name(&self, target: std::net::SocketAddr) -> String {
        let dir = self.dir();
        dir.servers()
            .find(|s| {
                let ip_matches = s.ip() == target.ip() || s.bind_ip() == Some(target.ip());
                let p = &s.ports;
                ip_matches
                    && [
                        p.transport,
                        p.mailbox_delivery,
                        p.client_proxy,
                        p.outbound_proxy,
                        p.frontend,
                        p.client_frontend,
                    ]
                    .contains(&target.port())
            })
            .map(|s| s.fqdn.clone())
            .unwrap_or_else(|| target.ip().to_string())
    }
}

/// What changed between two versions of the file that a reload does not apply.
fn restart_needed(old: &OrgConfig, new: &OrgConfig) -> Vec<String> {
    let name = &old.server.name;
    let mut changed = Vec::new();
    let debug = |v: &dyn std::fmt::Debug| format!("{v:?}");
    if debug(&old.server) != debug(&new.server) {
        changed.push(format!(
            "server {name} (ports, addresses, certificates, folders)"
        ));
    }
    let connectors = |c: &OrgConfig| {
        c.dir
            .receive_connectors_of(name)
            .map(|r| debug(r))
            .collect::<Vec<_>>()
    };
    if connectors(old) != connectors(new) {
        changed.push(format!("receive connectors of {name}"));
    }
    let local_databases = |c: &OrgConfig| {
        c.dir
            .databases()
            .filter(|d| d.copies.iter().any(|s| s.eq_ignore_ascii_case(name)))
            .map(|d| (d.name.to_lowercase(), d.store.clone()))
            .collect::<Vec<_>>()
    };
    if local_databases(old) != local_databases(new) {
        changed.push(format!("databases with a copy on {name}"));
    }
    let servers = |c: &OrgConfig| {
        c.dir
            .servers()
            .map(|s| s.name.to_lowercase())
            .collect::<Vec<_>>()
    };
    if servers(old) != servers(new) {
        changed.push("the list of servers".into());
    }
    if debug(&old.dir.transport()) != debug(&new.dir.transport()) {
        changed.push("[transport] settings".into());
    }
    let (o, n) = (&old.dir.organization(), &new.dir.organization());
    if (
        o.max_message_size,
        o.max_recipients_per_message,
        &o.secret_file,
    ) != (
        n.max_message_size,
        n.max_recipients_per_message,
        &n.secret_file,
    ) {
        changed.push("[organization] size limits or secret file".into());
    }
    // The TLS configurations are built once at start (internal hops, listeners).
    if (&o.ca_certificate, &o.ca_key) != (&n.ca_certificate, &n.ca_key) {
        changed.push("[organization] organisation CA (ca_certificate, ca_key)".into());
    }
    changed
}

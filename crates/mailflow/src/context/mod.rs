//! What every service of one server shares: the directory, this server's identity, the
//! organisation secret, the active database copies and the log writers; and the
//! authenticated connection between organisation servers (the implicit intra-org send
//! connector) that Transport and Mailbox Transport Submission both open. Must not
//! import a service (frontend, transport, mailbox) or cli (scripts/check-arrows).

pub mod hub_selector;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::directory::topology::{Distances, Topology};
use crate::directory::transport_rules::Rule;
use crate::directory::{Directory, SendConnector, Server};
use crate::logs::LoggingLevel;
use crate::logs::protocol::{Direction, ProtocolLog, ProtocolSession};
use crate::logs::tracking::{TrackingLog, TrackingService};
use crate::net::client::{ClientError, SmtpClient};
use crate::net::orgauth::{self, OrgSecret};
use crate::net::outbound::Local;

const LOG_FILE_SIZE: u64 = 10 * 1024 * 1024;

/// Which server holds the active copy of each database (Active Manager's answer). At
/// start the first copy in activation preference is active, unless a switchover
/// (`mailflow database move`) recorded another in the server's state file.
#[derive(Default)]
pub struct ActiveCopies {
    map: RwLock<HashMap<String, String>>,
    /// Where switchovers are recorded (`<data_dir>/active-copies.json`).
    state_file: Option<PathBuf>,
}

impl ActiveCopies {
    pub fn from_directory(dir: &Directory) -> ActiveCopies {
        let map = dir
            .databases()
            .filter_map(|d| d.copies.first().map(|s| (d.name.to_lowercase(), s.clone())))
            .collect();
        ActiveCopies {
            map: RwLock::new(map),
            state_file: None,
        }
    }

    /// Like `from_directory`, then the switchovers recorded in `state_file` (for
    /// databases and servers that still exist).
    pub fn with_state(dir: &Directory, state_file: PathBuf) -> ActiveCopies {
        let mut copies = ActiveCopies::from_directory(dir);
        if let Ok(text) = std::fs::read_to_string(&state_file)
            && let Ok(saved) = serde_json::from_str::<HashMap<String, String>>(&text)
        {
            for (db, server) in saved {
                let valid = dir
                    .database(&db)
                    .is_some_and(|d| d.copies.iter().any(|c| c.eq_ignore_ascii_case(&server)));
                if valid {
                    copies.set_in_memory(&db, &server);
                }
            }
        }
        copies.state_file = Some(state_file);
        copies
    }

    /// After a reload: databases new to the file start on their first copy; a database
    /// whose active server no longer holds a copy moves to its first copy; removed
    /// databases are forgotten. Switchovers still valid are kept.
    pub fn reconcile(&self, dir: &Directory) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::take(&mut *map);
        for db in dir.databases() {
            let key = db.name.to_lowercase();
            let kept = old
                .get(&key)
                .filter(|s| db.copies.iter().any(|c| c.eq_ignore_ascii_case(s)));
            if let Some(server) = kept.or(db.copies.first()) {
                map.insert(key, server.clone());
            }
        }
    }

    pub fn active_server(&self, database: &str) -> Option<String> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&database.to_lowercase())
            .cloned()
    }

    fn set_in_memory(&self, database: &str, server: &str) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(database.to_lowercase(), server.to_string());
    }

    /// Move-ActiveMailboxDatabase: `server` now holds the active copy (recorded so a
    /// restart keeps it).
    pub fn set(&self, database: &str, server: &str) {
        self.set_in_memory(database, server);
        if let Some(path) = &self.state_file {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner()).clone();
            let written = serde_json::to_vec_pretty(&map)
                .map_err(std::io::Error::other)
                .and_then(|bytes| crate::files::replace_preserving_mode(path, &bytes));
            if let Err(e) = written {
                tracing::error!("cannot record the active copies in {}: {e}", path.display());
            }
        }
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

/// Log folders under a server's data folder, in Exchange's layout (reference §7.1, §8.1).
pub struct LogPaths {
    pub message_tracking: PathBuf,
    pub frontend_receive: PathBuf,
    pub frontend_send: PathBuf,
    pub hub_receive: PathBuf,
    pub hub_send: PathBuf,
    pub mailbox_receive: PathBuf,
    pub routing: PathBuf,
}

impl LogPaths {
    pub fn new(data_dir: &std::path::Path) -> LogPaths {
        let logs = data_dir.join("Logs");
        LogPaths {
            message_tracking: logs.join("MessageTracking"),
            frontend_receive: logs.join("FrontEnd/ProtocolLog/SmtpReceive"),
            frontend_send: logs.join("FrontEnd/ProtocolLog/SmtpSend"),
            hub_receive: logs.join("Hub/ProtocolLog/SmtpReceive"),
            hub_send: logs.join("Hub/ProtocolLog/SmtpSend"),
            mailbox_receive: logs.join("Mailbox/ProtocolLog/SmtpReceive/Delivery"),
            routing: logs.join("Hub/Routing"),
        }
    }
}

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
        let rules = crate::directory::transport_rules::load(&dir)
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

pub struct ServerContext {
    config: ArcSwap<OrgConfig>,
    /// This server as it was started: its listeners, addresses and certificates (a
    /// reload does not rebind; see `reload`).
    pub server: Server,
    pub data_dir: PathBuf,
    pub ip: IpAddr,
    pub secret: OrgSecret,
    pub active: ActiveCopies,
    pub tracking_transport: TrackingLog,
    pub tracking_delivery: TrackingLog,
    pub tracking_submission: TrackingLog,
    pub frontend_receive_log: ProtocolLog,
    pub frontend_send_log: ProtocolLog,
    pub hub_receive_log: ProtocolLog,
    pub hub_send_log: ProtocolLog,
    pub mailbox_receive_log: ProtocolLog,
    /// This server's TLS (listeners and internal hops), built once by `server.rs` at start.
    pub tls: std::sync::OnceLock<Arc<crate::net::orgca::ServerTls>>,
    /// The ports this server's listeners bound, set once by `server.rs` after binding:
    /// every version of the directory this server reads carries them in place of the
    /// file's `0`s (`Directory::with_bound_ports`).
    bound_ports: std::sync::OnceLock<crate::directory::config::Ports>,
}

impl ServerContext {
    pub fn new(
        dir: Arc<Directory>,
        server: Server,
        secret: OrgSecret,
    ) -> anyhow::Result<ServerContext> {
        let data_dir = dir.data_dir(&server);
        crate::files::create_private_dir_all(&data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data folder {}: {e}", data_dir.display())
        })?;
        let paths = LogPaths::new(&data_dir);
        let ip = server.ip();
        let proto = |p: &PathBuf, d| ProtocolLog::open(p, d, LOG_FILE_SIZE);
        Ok(ServerContext {
            tracking_transport: TrackingLog::open(
                &paths.message_tracking,
                TrackingService::Transport,
                LOG_FILE_SIZE,
            )?,
            tracking_delivery: TrackingLog::open(
                &paths.message_tracking,
                TrackingService::MailboxDelivery,
                LOG_FILE_SIZE,
            )?,
            tracking_submission: TrackingLog::open(
                &paths.message_tracking,
                TrackingService::MailboxSubmission,
                LOG_FILE_SIZE,
            )?,
            frontend_receive_log: proto(&paths.frontend_receive, Direction::Receive)?,
            frontend_send_log: proto(&paths.frontend_send, Direction::Send)?,
            hub_receive_log: proto(&paths.hub_receive, Direction::Receive)?,
            hub_send_log: proto(&paths.hub_send, Direction::Send)?,
            mailbox_receive_log: proto(&paths.mailbox_receive, Direction::Receive)?,
            tls: Default::default(),
            bound_ports: Default::default(),
            active: ActiveCopies::with_state(&dir, data_dir.join("active-copies.json")),
            config: ArcSwap::from_pointee(OrgConfig::new(dir, &server.name)?),
            server,
            data_dir,
            ip,
            secret,
        })
    }

    /// Records the ports this server's listeners bound (once, before any mail moves)
    /// and swaps in a directory whose entry for this server names them.
    pub fn set_bound_ports(&self, bound: crate::directory::config::Ports) -> anyhow::Result<()> {
        let _ = self.bound_ports.set(bound);
        let dir = (*self.dir()).clone();
        let new = OrgConfig::new(Arc::new(self.with_bound(dir)), &self.server.name)?;
        self.config.store(Arc::new(new));
        Ok(())
    }

    fn with_bound(&self, dir: Directory) -> Directory {
        match self.bound_ports.get() {
            Some(bound) => dir.with_bound_ports(&self.server.name, bound),
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
        let new = OrgConfig::new(dir, &self.server.name)?;
        let restart = restart_needed(&old, &new);
        self.active.reconcile(&new.dir);
        self.config.store(Arc::new(new));
        Ok(restart)
    }

    pub fn name(&self) -> &str {
        &self.server.name
    }

    /// What this server brings to an outbound session through `connector`.
    pub fn outbound_local(&self, connector: &SendConnector) -> Local<'_> {
        Local {
            fqdn: self.fqdn(),
            ip: self.ip,
            log: &self.hub_send_log,
            ca_file: connector.tls_ca_file.as_deref().map(|f| self.dir().path(f)),
        }
    }
    pub fn fqdn(&self) -> &str {
        &self.server.fqdn
    }

    /// Where this server's listeners bind.
    pub fn bind_ip(&self) -> IpAddr {
        self.server.bind_ip().unwrap_or(self.ip)
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

    /// An SMTP session to another service of the organisation, authenticated as this
    /// server's `service` with the organisation key. It is plain only to this server's
    /// own loopback address (services of one server talking to each other); to any
    /// other address, loopback included, STARTTLS comes first (DESIGN §7). With an
    /// organisation CA the peer's certificate must verify against it for the peer's
    /// fqdn ([`ServerContext::peer_name`]) and this server presents its own as client
    /// certificate; a refusal is [`ClientError::CertificateRefused`] naming the
    /// certificate seen. Without a CA (a legacy file) the certificate is not checked.
    ///
    /// [`ClientError::CertificateRefused`]: crate::net::client::ClientError::CertificateRefused
    pub async fn connect_org(
        &self,
        target: std::net::SocketAddr,
        service: &str,
        log: crate::logs::protocol::ProtocolSession,
        connect_timeout: std::time::Duration,
        command_timeout: std::time::Duration,
    ) -> Result<crate::net::client::SmtpClient, crate::net::client::ClientError> {
        let mut client =
            crate::net::client::SmtpClient::connect(target, self.fqdn(), connect_timeout, log)
                .await?;
        client.timeout_for_commands(command_timeout);
        let own_loopback = target.ip().is_loopback() && target.ip() == self.ip;
        if !own_loopback {
            // Never send the organisation key in clear text: no STARTTLS, no session.
            if !client.has_extension("STARTTLS") {
                return Err(crate::net::client::ClientError::Protocol(format!(
                    "{target} offers no STARTTLS; organisation credentials are only sent inside TLS"
                )));
            }
            let (config, verified) = match self.tls.get() {
                Some(t) => (t.client.clone(), t.verified),
                None if self.dir().org_ca_certificate_path().is_some() => {
                    return Err(crate::net::client::ClientError::Protocol(
                        "the organisation CA is not loaded; internal TLS cannot be verified".into(),
                    ));
                }
                None => (crate::net::tls::client_config(), false),
            };
            let name = self.peer_name(target);
            client
                .starttls_org(self.fqdn(), &name, config, verified)
                .await?;
        }
        client
            .auth_org_server(&self.secret, service, self.name())
            .await?;
        Ok(client)
    }

    pub fn flush_logs(&self) {
        self.tracking_transport.flush();
        self.tracking_delivery.flush();
        self.tracking_submission.flush();
        for l in [
            &self.frontend_receive_log,
            &self.frontend_send_log,
            &self.hub_receive_log,
            &self.hub_send_log,
            &self.mailbox_receive_log,
        ] {
            l.flush();
        }
    }
}

/// The implicit send connector's name in tracking and protocol logs (reference §1.7).
pub const INTRA_ORG_SEND_CONNECTOR: &str = "Intra-Organization SMTP Send Connector";
const INTRA_ORG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const INTRA_ORG_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Connects to another service of the organisation (Mailbox Delivery or Transport) and
/// authenticates as this server's Transport service; off loopback, inside TLS.
pub async fn connect_intra_org(
    ctx: &ServerContext,
    target: SocketAddr,
) -> Result<SmtpClient, ClientError> {
    connect_intra_org_as(ctx, target, orgauth::HUB).await
}

/// Like [`connect_intra_org`], authenticating as `service` (e.g. Mailbox Transport
/// Submission, which shares the implicit intra-organization send connector).
pub async fn connect_intra_org_as(
    ctx: &ServerContext,
    target: SocketAddr,
    service: &str,
) -> Result<SmtpClient, ClientError> {
    let log = if ctx.dir().transport().intra_org_connector_protocol_logging == LoggingLevel::Verbose
    {
        ctx.hub_send_log
            .session(INTRA_ORG_SEND_CONNECTOR, SocketAddr::new(ctx.ip, 0), target)
    } else {
        ProtocolSession::disabled()
    };
    let mut client = ctx
        .connect_org(
            target,
            service,
            log,
            INTRA_ORG_CONNECT_TIMEOUT,
            INTRA_ORG_COMMAND_TIMEOUT,
        )
        .await?;
    // Exchange servers send to each other with BDAT: the envelope and a small message
    // travel in one write and come back as one round trip, with no dot-stuffing.
    client.use_chunking(true);
    Ok(client)
}

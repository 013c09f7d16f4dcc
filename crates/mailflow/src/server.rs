//! One server's services, started and stopped together (DESIGN §1, issue 14): Front
//! End, Transport, Mailbox Transport Delivery and Submission, Pickup/Replay and the admin
//! API, from the directory's entry for this server. `Server::start` binds every listener,
//! writes listeners.json, and only then lets queued mail move; `Server::shutdown` closes
//! every listener first, then stops the services it owns, then waits for them (bounded)
//! and closes the queue database. Owns what it spawns; sessions are spawned per
//! connection by the listeners and bounded by their connection limits and timeouts.
//! Transport alone can also be stopped and started while the rest runs (Stop-Service
//! MSExchangeTransport, `TransportRole`), with the same steps as `shutdown` and the
//! receive connectors `start` bound.
//!
//! A top-level module that may import every service; nothing but main and cli may
//! import it (scripts/check-arrows).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mailflow_smtp::SessionConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::AdminState;
use crate::admin::services::{Service, ServiceControl, ServiceInfo, Status};
use crate::directory::active_copies::ActiveCopyRecord;
use crate::directory::credentials::{AuthThrottle, PasswordBook};
use crate::directory::live::LiveDirectory;
use crate::directory::{ReceiveService, ReceiveTls};
use crate::frontend::{FrontendContext, FrontendMode, FrontendSession};
use crate::logs::LoggingLevel;
use crate::logs::connectivity::ConnectivityLog;
use crate::logs::service_logs::{LogRetention, ServerLogs};
use crate::mailbox::context::MailboxContext;
use crate::mailbox::delivery::{MailboxDeliverySession, Stores};
use crate::net::listeners::{LISTENERS_FILE, Listener, Listeners, write_listeners};
use crate::net::org_connector::{OrgConnector, OrgService};
use crate::net::orgauth::{self, OrgSecret};
use crate::net::receive::{AuthPolicy, Limits, ReceiveConnector};
use crate::transport::TransportService;
use crate::transport::context::TransportContext;
use crate::transport::receive::TransportReceive;
use futures_util::future::BoxFuture;

/// How long `shutdown` waits for the tasks it stopped before it logs them and goes on.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where this server listens, for the start-up summary.
pub struct Addresses {
    pub frontend: SocketAddr,
    pub transport: SocketAddr,
    pub mailbox_delivery: SocketAddr,
    pub outbound_proxy: SocketAddr,
    pub client_frontend: SocketAddr,
    pub client_proxy: SocketAddr,
    pub admin: SocketAddr,
    pub admin_https: bool,
    /// Custom receive connectors: address, name, one phrase of what it is.
    pub custom: Vec<(SocketAddr, String, String)>,
}

/// One running server: its services and the tasks that run them.
pub struct Server {
    pub dir: Arc<crate::directory::Directory>,
    /// This server's entry in the directory.
    pub entry: crate::directory::Server,
    /// Every log writer of this server (each service holds only its own).
    logs: ServerLogs,
    pub transport: Arc<TransportService>,
    /// What the admin API and SIGHUP act on (reload, queues, database copies).
    pub admin: Arc<AdminState>,
    pub data_dir: PathBuf,
    pub pickup_dir: PathBuf,
    pub replay_dir: PathBuf,
    pub addresses: Addresses,
    /// Every listener's accept loop but Transport's, by connector name: aborted first at
    /// shutdown, which drops (closes) the listening socket.
    listener_tasks: Vec<(String, JoinHandle<()>)>,
    /// The Transport service's listeners, tasks and Pickup/Replay, which Stop-Service
    /// and Start-Service MSExchangeTransport stop and start alone.
    transport_role: Arc<TransportRole>,
    /// Mailbox Transport Submission and log retention: they stop between polls when
    /// `stop` turns true.
    service_tasks: Vec<(String, JoinHandle<()>)>,
    stop: watch::Sender<bool>,
    /// Active Manager's watcher of the active copies and Transport's follower of its
    /// answers: they have no poll to stop at, so they are aborted with the services.
    aborted_at_stop: Vec<(String, JoinHandle<()>)>,
}

impl Server {
    /// Starts every service of `server` (an entry of `dir`). The categorizer, the
    /// delivery queues' sessions and Mailbox Delivery run on `delivery_runtime`.
    pub async fn start(
        dir: Arc<crate::directory::Directory>,
        server: crate::directory::Server,
        delivery_runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Server> {
        // DESIGN §1: required once the organisation has two servers; a lone server makes one.
        let lone = dir.server_count() == 1;
        let secret = OrgSecret::load(&dir.secret_path(), lone)?;
        let data_dir = dir.data_dir(&server);
        let server_tls = Arc::new(server_tls(&dir, &server)?);
        let tls = server_tls.public.clone();
        crate::files::create_private_dir_all(&data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data folder {}: {e}", data_dir.display())
        })?;
        let live = Arc::new(LiveDirectory::new(dir.clone(), &server)?);
        let logs = ServerLogs::open(&server.log_paths(&data_dir, &|p| dir.path(p)))?;
        // Each service connects to the others with the organisation key and this
        // server's TLS, logging to its own send log.
        let org_connector = |service, connectivity: &ConnectivityLog| {
            OrgConnector::new(live.clone(), secret.clone(), Some(server_tls.clone()))
                .logged(service, connectivity.clone())
        };
        let active = ActiveCopyRecord::open(live.clone());
        let transport_ctx = Arc::new(TransportContext {
            directory: live.clone(),
            logs: logs.transport.clone(),
            org: org_connector(OrgService::Transport, &logs.transport.connectivity),
            active: active.subscribe(),
        });
        let (transport, resume) = {
            // The categorizer and the delivery queues' sessions are spawned from here.
            let _delivery = delivery_runtime.enter();
            TransportService::start(transport_ctx.clone())?
        };
        crate::transport::routing::log_routing_table(&transport_ctx);
        let mailbox = Arc::new(MailboxContext {
            stores: Stores::open(&live)?,
            directory: live.clone(),
            logs: logs.mailbox.clone(),
            active: active.clone(),
            org: org_connector(
                OrgService::MailboxSubmission,
                &logs.mailbox.submission_connectivity,
            ),
        });
        let active_manager = crate::mailbox::active_manager::start(active.clone()).await;
        // Transport follows Active Manager's answers (retries its queues on a change).
        let follow_active = tokio::spawn(transport.clone().follow_active_copies());
        let service_routing_logs = service_routing_logs(
            transport_ctx.clone(),
            [logs.frontend.routing.clone(), logs.mailbox.routing.clone()],
            active.subscribe(),
        );
        let pickup_dir = server
            .pickup_directory
            .as_deref()
            .map(|p| dir.path(p))
            .unwrap_or_else(|| data_dir.join("Pickup"));
        let replay_dir = server
            .replay_directory
            .as_deref()
            .map(|p| dir.path(p))
            .unwrap_or_else(|| data_dir.join("Replay"));
        let org_servers = Arc::new(dir.servers().map(|s| s.name.clone()).collect::<Vec<_>>());
        // Each internal listener takes only the services that have business on it
        // (orgauth::*_SERVICES).
        let org_auth = |services: &'static [&'static str]| AuthPolicy::OrgServers {
            secret: secret.clone(),
            servers: org_servers.clone(),
            services,
        };
        let settings = dir.transport();
        let org = dir.organization();
        let ip = live.bind_ip();
        let session = |max_size: u64, max_recipients: usize| SessionConfig {
            hostname: server.fqdn.clone(),
            // The driver appends the time (net/receive.rs).
            banner: format!("{} mailflow ESMTP MAIL Service ready at", server.fqdn),
            max_message_size: max_size,
            max_recipients,
            ..SessionConfig::default()
        };
        // Every connector's limits, their connection caps kept below the open-files limit
        // together: [frontend, client frontend, client proxy, outbound proxy, transport,
        // mailbox delivery, custom connectors in file order].
        let limits = {
            let cl = &server.connector_limits;
            let max = server.max_inbound_connections;
            let mut all = vec![
                Limits::resolve(&cl.frontend, false, max),
                Limits::resolve(&cl.client_frontend, false, max),
                Limits::resolve(&cl.client_proxy, true, max),
                Limits::resolve(&cl.outbound_proxy, true, max),
                Limits::resolve(&cl.transport, true, max),
                Limits::resolve(&cl.mailbox_delivery, true, max),
            ];
            all.extend(
                dir.receive_connectors_of(&server.name)
                    .map(|rc| Limits::resolve(&rc.limits, false, max)),
            );
            if let Some(open_files) = crate::net::receive::open_files_limit() {
                let caps: Vec<usize> = all.iter().map(|l| l.max_connections).collect();
                let clamped = crate::net::receive::clamp_to_open_files(&caps, open_files);
                for (l, cap) in all.iter_mut().zip(clamped) {
                    l.max_connections = cap;
                    l.max_per_source = l.max_per_source.min(cap);
                }
            }
            all
        };
        let connector = |name: String,
                         port: u16,
                         session: SessionConfig,
                         auth: AuthPolicy,
                         log: Option<crate::logs::protocol::ProtocolLog>,
                         handler: crate::net::receive::HandlerFactory,
                         limits: Limits| ReceiveConnector {
            id: format!("{}\\{}", server.name, name).into(),
            bind: SocketAddr::new(ip, port),
            session,
            tls: Some(tls.clone()),
            auth,
            protocol_log: log,
            inactivity_timeout: settings.connection_inactivity_timeout,
            connection_timeout: settings.connection_timeout,
            limits,
            default_domain: org
                .accepted_domains
                .first()
                .map(String::as_str)
                .unwrap_or("localhost")
                .into(),
            implicit_tls: false,
            remote_ranges: Vec::new(),
            handler,
        };
        let verbose = |level: LoggingLevel, log: &crate::logs::protocol::ProtocolLog| {
            (level == LoggingLevel::Verbose).then(|| log.clone())
        };
        // Internal hops carry what the first hop accepted plus headers: ExchangeServers
        // bypass the size limit (reference §1.5), so allow generous headroom.
        let internal_size = org.max_message_size.saturating_mul(2);

        let dns = Arc::new(crate::net::dns::Dns::new(&settings.external_dns_servers)?);
        let frontend_ctx = Arc::new(FrontendContext {
            directory: live.clone(),
            logs: logs.frontend.clone(),
            org: org_connector(OrgService::FrontEnd, &logs.frontend.connectivity),
            active: active.subscribe(),
            pool: crate::frontend::proxy::Pool::default(),
            dns,
        });
        let fe_ctx = frontend_ctx.clone();
        let fe_success_dsn = server.frontend_success_dsn_for_anonymous;
        let frontend = connector(
            format!("Default Frontend {}", server.name),
            server.ports.frontend,
            // Default Frontend takes 200 recipients (reference §1.2), never more than the
            // organisation's envelope limit.
            session(
                org.max_message_size,
                org.max_recipients_per_message.min(200),
            ),
            AuthPolicy::None,
            verbose(server.frontend_protocol_logging, &logs.frontend.receive),
            Arc::new(move || {
                let session = FrontendSession::new(fe_ctx.clone(), FrontendMode::Internet);
                Box::new(if fe_success_dsn {
                    session
                } else {
                    session.without_success_dsn_for_anonymous()
                })
            }),
            limits[0],
        );
        let t = transport.clone();
        let mut hub = connector(
            format!("Default {}", server.name),
            server.ports.transport,
            session(internal_size, 5000),
            org_auth(orgauth::TRANSPORT_SERVICES),
            verbose(server.transport_protocol_logging, &logs.transport.receive),
            Arc::new(move || Box::new(TransportReceive::new(t.clone()))),
            limits[4],
        );
        let md_ctx = mailbox.clone();
        let mut delivery = connector(
            format!("Default Mailbox Delivery {}", server.name),
            server.ports.mailbox_delivery,
            session(internal_size, 5000),
            org_auth(orgauth::MAILBOX_DELIVERY_SERVICES),
            verbose(
                server.mailbox_delivery_connector_logging(settings),
                &logs.mailbox.delivery_receive,
            ),
            Arc::new(move || Box::new(MailboxDeliverySession::new(md_ctx.clone()))),
            limits[5],
        );
        // Internal listeners: with an organisation CA, a client certificate it signed.
        for c in [&mut hub, &mut delivery] {
            c.tls = Some(server_tls.internal.clone());
        }
        // Downstream first, so the first message through :25 finds everything listening.
        let mut listener_tasks: Vec<(String, JoinHandle<()>)> = Vec::new();
        let (delivery_addr, d) = delivery_runtime
            .spawn(async move { delivery.bind().await })
            .await??;
        listener_tasks.push((format!("Default Mailbox Delivery {}", server.name), d));
        // Transport's receive connectors are kept as bound, to bind again at
        // Start-Service (TransportRole).
        let mut transport_listeners = Vec::new();
        let hub_addr = bind_kept(hub, &mut transport_listeners).await?;
        let op_ctx = frontend_ctx.clone();
        let mut outbound_proxy = connector(
            format!("Outbound Proxy Frontend {}", server.name),
            server.ports.outbound_proxy,
            session(internal_size, 5000),
            org_auth(orgauth::OUTBOUND_PROXY_SERVICES),
            verbose(server.frontend_protocol_logging, &logs.frontend.receive),
            Arc::new(move || {
                Box::new(crate::frontend::outbound_proxy::OutboundProxySession::new(
                    op_ctx.clone(),
                ))
            }),
            limits[3],
        );
        outbound_proxy.tls = Some(server_tls.internal.clone());
        let (proxy_addr, p) = outbound_proxy.bind().await?;
        listener_tasks.push((format!("Outbound Proxy Frontend {}", server.name), p));

        // Client submission: Client Frontend (587, STARTTLS + AUTH) proxies to the
        // Transport service's Client Proxy (465), which only Front Ends may use.
        let passwords = Arc::new(PasswordBook::new(dir.clone(), dir.file.clone()));
        let throttle = Arc::new(AuthThrottle::default());
        let users = AuthPolicy::Mailboxes {
            book: passwords.clone(),
            throttle: throttle.clone(),
        };
        let t = transport.clone();
        let mut client_proxy = connector(
            format!("Client Proxy {}", server.name),
            server.ports.client_proxy,
            session(internal_size, 200),
            org_auth(orgauth::CLIENT_PROXY_SERVICES),
            verbose(server.transport_protocol_logging, &logs.transport.receive),
            Arc::new(move || Box::new(TransportReceive::new(t.clone()))),
            limits[2],
        );
        client_proxy.tls = Some(server_tls.internal.clone());
        let client_proxy_addr = bind_kept(client_proxy, &mut transport_listeners).await?;
        let cf_ctx = frontend_ctx.clone();
        let client_frontend = connector(
            format!("Client Frontend {}", server.name),
            server.ports.client_frontend,
            session(
                org.max_message_size,
                org.max_recipients_per_message.min(200),
            ),
            users.clone(),
            None,
            Arc::new(move || {
                Box::new(FrontendSession::new(
                    cf_ctx.clone(),
                    FrontendMode::Submission,
                ))
            }),
            limits[1],
        );
        let (client_frontend_addr, cf) = client_frontend.bind().await?;
        listener_tasks.push((format!("Client Frontend {}", server.name), cf));
        let mut custom = Vec::new();
        for rc in dir.receive_connectors_of(&server.name) {
            let ranges = rc.remote_ranges.clone();
            let (relay, user_auth) = (rc.relay, rc.users);
            let log = verbose(
                rc.protocol_logging,
                if rc.service == ReceiveService::Transport {
                    &logs.transport.receive
                } else {
                    &logs.frontend.receive
                },
            );
            let success_dsn = rc.success_dsn_for_anonymous;
            let (auth, handler): (AuthPolicy, crate::net::receive::HandlerFactory) =
                if rc.service == ReceiveService::Transport {
                    // An anonymous relay for applications in `remote_ranges` (validation
                    // requires them), straight into Transport.
                    let t = transport.clone();
                    (
                        AuthPolicy::None,
                        Arc::new(move || {
                            let session = TransportReceive::new(t.clone());
                            Box::new(if success_dsn {
                                session
                            } else {
                                session.without_success_dsn_for_anonymous()
                            })
                        }),
                    )
                } else {
                    let mode = if user_auth {
                        FrontendMode::Submission
                    } else if relay {
                        FrontendMode::AnonymousRelay
                    } else {
                        FrontendMode::Internet
                    };
                    let c = frontend_ctx.clone();
                    let auth = if user_auth {
                        users.clone()
                    } else {
                        AuthPolicy::None
                    };
                    (
                        auth,
                        Arc::new(move || {
                            let session = FrontendSession::new(c.clone(), mode);
                            Box::new(if success_dsn {
                                session
                            } else {
                                session.without_success_dsn_for_anonymous()
                            })
                        }),
                    )
                };
            let bind = rc.bind;
            let mut rconn = connector(
                rc.name.clone(),
                bind.port(),
                session(org.max_message_size, 200),
                auth,
                log,
                handler,
                limits[6 + custom.len()],
            );
            rconn.bind = bind;
            rconn.implicit_tls = rc.tls == ReceiveTls::Implicit;
            rconn.remote_ranges = ranges;
            let addr = if rc.service == ReceiveService::Transport {
                bind_kept(rconn, &mut transport_listeners).await?
            } else {
                let (addr, task) = rconn.bind().await?;
                listener_tasks.push((rc.name.clone(), task));
                addr
            };
            custom.push((addr, rc.name.clone(), rconn_kind(rc)));
        }
        let (fe_addr, f) = frontend.bind().await?;
        listener_tasks.push((format!("Default Frontend {}", server.name), f));
        let (kept, tasks): (Vec<_>, Vec<_>) = transport_listeners.into_iter().unzip();
        let transport_role = Arc::new(TransportRole {
            server: server.name.clone(),
            transport: transport.clone(),
            connectors: kept,
            delivery_runtime: delivery_runtime.clone(),
            pickup_dir: pickup_dir.clone(),
            replay_dir: replay_dir.clone(),
            pickup_poll: dir.transport().pickup_directory_poll_interval,
            run: tokio::sync::Mutex::new(TransportRun {
                running: true,
                listeners: tasks,
                pickup: None,
            }),
        });
        // Off loopback the admin API is HTTPS with this server's certificate (and does not
        // start without an organisation CA to verify it by).
        let admin = Arc::new(AdminState {
            directory: live.clone(),
            transport: transport.clone(),
            active: active.clone(),
            services: transport_role.clone(),
        });
        let (admin_addr, admin_https, a) = crate::admin::start(
            SocketAddr::new(ip, server.ports.admin),
            admin.clone(),
            server_tls.own.clone(),
        )
        .await?;
        listener_tasks.push(("admin API".into(), a));
        // Ports left to the system (0, a lone server) are known now: this server's own
        // hops use them, and `<data_dir>/listeners.json` tells the CLI and tests.
        let bound = crate::directory::config::Ports {
            frontend: fe_addr.port(),
            client_frontend: client_frontend_addr.port(),
            client_proxy: client_proxy_addr.port(),
            outbound_proxy: proxy_addr.port(),
            transport: hub_addr.port(),
            mailbox_delivery: delivery_addr.port(),
            admin: admin_addr.port(),
        };
        live.set_bound_ports(bound)?;
        let mut listeners = vec![
            Listener::new(
                "frontend",
                format!("Default Frontend {}", server.name),
                fe_addr,
            ),
            Listener::new("transport", format!("Default {}", server.name), hub_addr),
            Listener::new(
                "mailbox_delivery",
                format!("Default Mailbox Delivery {}", server.name),
                delivery_addr,
            ),
            Listener::new(
                "outbound_proxy",
                format!("Outbound Proxy Frontend {}", server.name),
                proxy_addr,
            ),
            Listener::new(
                "client_frontend",
                format!("Client Frontend {}", server.name),
                client_frontend_addr,
            ),
            Listener::new(
                "client_proxy",
                format!("Client Proxy {}", server.name),
                client_proxy_addr,
            ),
        ];
        listeners.extend(
            custom
                .iter()
                .map(|(addr, name, _)| Listener::new("receive_connector", name.clone(), *addr)),
        );
        listeners.push(Listener::new("admin", "admin API".into(), admin_addr));
        let listeners_file = data_dir.join(LISTENERS_FILE);
        write_listeners(
            &listeners_file,
            &Listeners {
                server: server.name.clone(),
                pid: std::process::id(),
                ports: bound,
                listeners,
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", listeners_file.display()))?;
        // Every listener is bound: only now does mail already on this server move (the
        // queue database's messages, Outboxes, Pickup and Replay), so none of it meets
        // this server's own Mailbox Delivery or Transport not yet listening and waits a
        // retry interval for it.
        {
            let _delivery = delivery_runtime.enter();
            transport.resume(resume);
        }
        let (stop, stopping) = watch::channel(false);
        let mut service_tasks: Vec<(String, JoinHandle<()>)> = vec![(
            "Mailbox Transport Submission".into(),
            crate::mailbox::submission::start(mailbox.clone(), stopping.clone()),
        )];
        service_tasks.push((
            "Log retention".into(),
            log_retention(
                logs.retention.clone(),
                dir.transport().log_retention_interval,
                stopping,
            ),
        ));
        {
            // A `service stop transport` may have come in since the admin API listens.
            let mut run = transport_role.run.lock().await;
            if run.running {
                run.pickup = Some(transport_role.start_pickup());
            }
        }
        Ok(Server {
            dir,
            entry: server,
            logs,
            transport,
            admin,
            data_dir,
            pickup_dir,
            replay_dir,
            addresses: Addresses {
                frontend: fe_addr,
                transport: hub_addr,
                mailbox_delivery: delivery_addr,
                outbound_proxy: proxy_addr,
                client_frontend: client_frontend_addr,
                client_proxy: client_proxy_addr,
                admin: admin_addr,
                admin_https,
                custom,
            },
            listener_tasks,
            transport_role,
            service_tasks,
            stop,
            aborted_at_stop: vec![
                ("Active Manager".to_string(), active_manager),
                (
                    "Transport following Active Manager".to_string(),
                    follow_active,
                ),
                (
                    "Front End and Mailbox routing table logs".to_string(),
                    service_routing_logs,
                ),
            ],
        })
    }

    /// Stops this server: first every listener stops accepting (its accept loop is
    /// aborted and awaited, so its port refuses connections), then Submission and log
    /// retention stop between polls and Active Manager's watcher is aborted, then
    /// Pickup/Replay and Transport's categorizer, transmitters and sweepers
    /// (`TransportRole::stop_tasks`, which Stop-Service uses too; nothing more to do if
    /// Transport was stopped already); every task is awaited within SHUTDOWN_TIMEOUT in
    /// all (those that did not stop are logged), then the logs are flushed and the queue
    /// database closed. Sessions already running are not waited for: what they
    /// accepted is durable, and what they had not yet acknowledged the client sends
    /// again, as after kill -9.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_TIMEOUT;
        // Held to the end: no Start-Service meanwhile.
        let mut transport = self.transport_role.run.lock().await;
        let mut listeners = self.listener_tasks;
        listeners.append(&mut transport.listeners);
        close_listeners(deadline, listeners).await;
        tracing::info!("every listener closed");
        let _ = self.stop.send(true);
        for (_, task) in &self.aborted_at_stop {
            task.abort();
        }
        let mut services = self.service_tasks;
        services.extend(self.aborted_at_stop);
        await_all(deadline, services).await;
        self.transport_role
            .stop_tasks(deadline, &mut transport)
            .await;
        self.logs.flush();
        self.transport.queues.db.barrier().await;
        tracing::info!(
            transactions = self.transport.queues.db.transactions(),
            "queue database closed"
        );
    }
}

/// The Transport service (MSExchangeTransport) as Stop-Service and Start-Service see
/// it: its receive connectors (`Default <server>`, `Client Proxy <server>`, custom
/// connectors bound to Transport), its categorizer, transmitters and sweepers, and the
/// Pickup/Replay watchers. Stopped, its ports refuse connections and its tasks end
/// between messages; its queues stay as they are, in memory and in the queue database,
/// and move again when it starts. The other services of the server go on: the Front End
/// and Mailbox Transport Submission try the next Transport server when this one
/// refuses.
struct TransportRole {
    server: String,
    transport: Arc<TransportService>,
    /// Each receive connector as it was bound at start, its port fixed.
    connectors: Vec<ReceiveConnector>,
    /// Where the categorizer runs (see `Server::start`).
    delivery_runtime: tokio::runtime::Handle,
    pickup_dir: PathBuf,
    replay_dir: PathBuf,
    pickup_poll: Duration,
    /// Locked by each stop, start and the server's shutdown, one at a time.
    run: tokio::sync::Mutex<TransportRun>,
}

/// What one run of the Transport service holds.
struct TransportRun {
    running: bool,
    /// The receive connectors' accept loops.
    listeners: Vec<(String, JoinHandle<()>)>,
    /// The Pickup/Replay watchers and their stop signal.
    pickup: Option<Watchers>,
}

/// Tasks that stop between polls when their signal turns true.
type Watchers = (watch::Sender<bool>, Vec<(String, JoinHandle<()>)>);

impl TransportRole {
    fn start_pickup(&self) -> Watchers {
        let (stop, stopping) = watch::channel(false);
        let watchers = crate::transport::pickup::start(
            self.transport.clone(),
            self.pickup_dir.clone(),
            self.replay_dir.clone(),
            self.pickup_poll,
            stopping,
        );
        let tasks = watchers
            .into_iter()
            .map(|task| ("Pickup/Replay watcher".to_string(), task))
            .collect();
        (stop, tasks)
    }

    /// After the listeners are closed: Pickup/Replay stop between polls, then the
    /// categorizer, transmitters and sweepers between messages, all by `deadline`.
    async fn stop_tasks(&self, deadline: tokio::time::Instant, run: &mut TransportRun) {
        if let Some((stop, tasks)) = run.pickup.take() {
            let _ = stop.send(true);
            await_all(deadline, tasks).await;
        }
        // Transport's own tasks (categorizer, transmitters, sweepers) end between
        // messages; what they had not finished is in the queue database.
        self.transport.stop();
        if tokio::time::timeout_at(deadline, self.transport.stopped())
            .await
            .is_err()
        {
            tracing::warn!("Transport's tasks did not stop within {SHUTDOWN_TIMEOUT:?}");
        } else {
            tracing::info!("Transport's categorizer, transmitters and sweepers stopped");
        }
        run.running = false;
    }

    fn info(&self, running: bool) -> ServiceInfo {
        let status = if running {
            Status::Running
        } else {
            Status::Stopped
        };
        ServiceInfo::new(&self.server, Service::Transport, status)
    }

    /// Stop-Service MSExchangeTransport: as the server's shutdown does for Transport.
    async fn stop(&self) -> anyhow::Result<ServiceInfo> {
        let mut run = self.run.lock().await;
        if !run.running {
            return Ok(self.info(false));
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_TIMEOUT;
        close_listeners(deadline, std::mem::take(&mut run.listeners)).await;
        self.stop_tasks(deadline, &mut run).await;
        tracing::info!(server = %self.server, "Transport service stopped");
        Ok(self.info(false))
    }

    /// Start-Service MSExchangeTransport: binds its receive connectors again on the
    /// ports they had, then starts its tasks, so queued mail moves again, and
    /// Pickup/Replay. Refused while the last stop's tasks are still ending.
    async fn start(&self) -> anyhow::Result<ServiceInfo> {
        let mut run = self.run.lock().await;
        if run.running {
            return Ok(self.info(true));
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_TIMEOUT;
        if tokio::time::timeout_at(deadline, self.transport.stopped())
            .await
            .is_err()
        {
            anyhow::bail!(
                "Transport's tasks have not all stopped yet (a message in hand); try again"
            );
        }
        let mut listeners = Vec::new();
        for connector in &self.connectors {
            let name = connector.id.to_string();
            match connector.clone().bind().await {
                Ok((_, task)) => listeners.push((name, task)),
                Err(e) => {
                    close_listeners(deadline, listeners).await;
                    return Err(e.context("Transport service not started"));
                }
            }
        }
        run.listeners = listeners;
        {
            let _delivery = self.delivery_runtime.enter();
            self.transport.restart();
        }
        run.pickup = Some(self.start_pickup());
        run.running = true;
        tracing::info!(server = %self.server, "Transport service started");
        Ok(self.info(true))
    }
}

impl ServiceControl for TransportRole {
    fn list(&self) -> BoxFuture<'_, Vec<ServiceInfo>> {
        Box::pin(async move {
            let transport = self.run.lock().await.running;
            Service::ALL
                .into_iter()
                .map(|service| match service {
                    Service::Transport => self.info(transport),
                    // They run as long as the server does.
                    other => ServiceInfo::new(&self.server, other, Status::Running),
                })
                .collect()
        })
    }

    fn stop(&self, service: Service) -> BoxFuture<'_, anyhow::Result<ServiceInfo>> {
        Box::pin(async move {
            anyhow::ensure!(service.can_stop(), "{} cannot stop alone", service.name());
            TransportRole::stop(self).await
        })
    }

    fn start(&self, service: Service) -> BoxFuture<'_, anyhow::Result<ServiceInfo>> {
        Box::pin(async move {
            anyhow::ensure!(service.can_stop(), "{} cannot start alone", service.name());
            TransportRole::start(self).await
        })
    }
}

/// Binds `connector` and keeps it, with the port it got, beside its accept loop.
async fn bind_kept(
    connector: ReceiveConnector,
    kept: &mut Vec<(ReceiveConnector, (String, JoinHandle<()>))>,
) -> anyhow::Result<SocketAddr> {
    let mut again = connector.clone();
    let (addr, task) = connector.bind().await?;
    again.bind = addr;
    let name = again.id.to_string();
    kept.push((again, (name, task)));
    Ok(addr)
}

/// Aborts each accept loop and awaits it, so its port refuses connections on return.
async fn close_listeners(deadline: tokio::time::Instant, listeners: Vec<(String, JoinHandle<()>)>) {
    for (_, task) in &listeners {
        task.abort();
    }
    await_all(deadline, listeners).await;
}

/// The Front End's and Mailbox Transport's routing table logs (Exchange writes one per
/// service, reference §13): the table this server routes by, at start and after each
/// change of the active copies, in each service's RoutingTableLogPath. Transport writes
/// its own (`transport::routing::log_routing_table`), after reloads too.
fn service_routing_logs(
    ctx: Arc<TransportContext>,
    dirs: [PathBuf; 2],
    mut active: watch::Receiver<Arc<crate::directory::active_copies::ActiveCopies>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let table = crate::transport::routing::routing_table(&ctx);
            for dir in &dirs {
                crate::transport::routing::write_routing_log(dir, ctx.name(), &table);
            }
            if active.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Circular logging while the server runs: at start, then every `every`, each log's
/// files past its MaxAge and MaxDirectorySize go (never the one being written). Ends
/// when `stopping` turns true.
fn log_retention(
    retention: LogRetention,
    every: Duration,
    mut stopping: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let pass = retention.clone();
            let _ = tokio::task::spawn_blocking(move || pass.enforce(std::time::SystemTime::now()))
                .await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    })
}

/// Awaits each task until `deadline`, logging those that did not stop or failed.
async fn await_all(deadline: tokio::time::Instant, tasks: Vec<(String, JoinHandle<()>)>) {
    for (name, task) in tasks {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_cancelled() => {}
            Ok(Err(e)) => tracing::warn!(task = %name, "ended with an error: {e}"),
            Err(_) => tracing::warn!(task = %name, "did not stop within {SHUTDOWN_TIMEOUT:?}"),
        }
    }
}

/// This server's TLS, from its certificate and the organisation CA. Without a CA (a
/// file made before it existed) the certificate is made self-signed when the entry
/// names none, as before, and with two servers or more the upgrade command is logged.
/// With a CA: missing certificate files are issued at start when the CA key is
/// readable here; a certificate the CA did not sign (for this server's fqdn) stops
/// the start, naming the file and the command that issues a good one.
fn server_tls(
    dir: &crate::directory::Directory,
    server: &crate::directory::Server,
) -> anyhow::Result<crate::net::orgca::ServerTls> {
    use crate::net::orgca;
    let (cert, key) = orgca::server_cert_paths(dir, server);
    let frontend = match (&server.frontend_tls_certificate, &server.frontend_tls_key) {
        (Some(c), Some(k)) => Some((dir.path(c), dir.path(k))),
        _ => None,
    };
    let file = dir
        .file
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("mailflow.toml"));
    let Some(ca) = dir.org_ca_certificate_path() else {
        if server.tls_certificate.is_none() || server.tls_key.is_none() {
            crate::net::tls::ensure_self_signed(&cert, &key, &server.fqdn)?;
        }
        if dir.server_count() >= 2 {
            tracing::warn!("{}", orgca::legacy_warning(&file));
        }
        return orgca::ServerTls::new(
            &cert,
            &key,
            None,
            frontend.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        );
    };
    if !cert.exists() || !key.exists() {
        let ca_key = dir
            .org_ca_key_path()
            .filter(|k| std::fs::File::open(k).is_ok());
        if let Some(ca_key) = ca_key {
            orgca::issue_server_certificate(&ca, &ca_key, server, &cert, &key)?;
            tracing::info!(
                "issued {} for {} from the organisation CA {}",
                cert.display(),
                server.name,
                ca.display()
            );
        }
    }
    if let Err(why) = orgca::check_server_certificate(&cert, &ca, &server.fqdn) {
        anyhow::bail!(
            "server {}: {why}. Internal hops would refuse it; issue a certificate from the \
             organisation CA with: {}",
            server.name,
            orgca::add_server_command(&server.name, &file)
        );
    }
    orgca::ServerTls::new(
        &cert,
        &key,
        Some(&ca),
        frontend.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
}

/// A custom receive connector in one phrase, for the start-up summary.
fn rconn_kind(rc: &crate::directory::ReceiveConnector) -> String {
    let tls = if rc.tls == ReceiveTls::Implicit {
        "implicit TLS"
    } else {
        "STARTTLS"
    };
    format!(
        "custom {} connector, {tls}, permissions {}",
        rc.service,
        rc.permissions.join("+")
    )
}

//! `mailflow connector list` (Get-ReceiveConnector + Get-SendConnector): every receive
//! connector of the server(s), the built-in ones of DESIGN §1 and the implicit
//! `Default Mailbox Delivery` included, the custom `[[receive_connectors]]`, and every
//! send connector, `[[send_connectors]]` plus the implicit intra-organisation ones
//! (reference §1.2, §1.7). Read from the organisation file, so it works with the
//! server stopped; a running server's bound ports come from its `listeners.json`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;

use super::{Global, load_directory, print_table};
use crate::directory::config::SendConnector;
use crate::directory::receive_connectors::{ReceiveConnector, ReceiveService, ReceiveTls};
use crate::directory::{Directory, Server};
use crate::frontend::proxy::INBOUND_PROXY_SEND_CONNECTOR;
use crate::logs::LoggingLevel;
use crate::net::listeners::{Listeners, read_listeners};
use crate::net::org_connector::INTRA_ORG_SEND_CONNECTOR;

#[derive(Subcommand)]
pub enum ConnectorCommand {
    /// List receive and send connectors, implicit ones included
    /// (Get-ReceiveConnector, Get-SendConnector).
    List,
}

/// One connector as Get-ReceiveConnector / Get-SendConnector show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectorInfo {
    /// `Server\Name` for a server's connectors; the bare name for an organisation-wide
    /// send connector (as in Exchange).
    pub identity: String,
    /// `Receive` or `Send`.
    pub kind: &'static str,
    /// FrontendTransport, HubTransport or MailboxDelivery (with MailboxSubmission for
    /// the intra-organisation send connector).
    pub transport_role: String,
    /// Receive: `address:port` it listens on. Send: where it sends (smart hosts, or
    /// MX records of the recipient domain, with the port).
    pub bindings: Vec<String>,
    #[serde(rename = "RemoteIPRanges")]
    pub remote_ip_ranges: Vec<String>,
    pub permission_groups: Vec<String>,
    pub auth_mechanism: Vec<String>,
    /// How TLS is used: offered (STARTTLS), required, implicit.
    pub tls: String,
    /// Send connectors: Exchange's TlsAuthLevel.
    pub tls_auth_level: Option<String>,
    /// Send connectors: `SMTP:<domain>;<cost>`.
    pub address_spaces: Vec<String>,
    pub smart_hosts: Vec<String>,
    pub source_transport_servers: Vec<String>,
    pub frontend_proxy_enabled: bool,
    pub protocol_logging_level: &'static str,
    /// Exchange creates it and does not let it be managed (not in the file).
    pub implicit: bool,
}

fn level(l: LoggingLevel) -> &'static str {
    match l {
        LoggingLevel::None => "None",
        LoggingLevel::Verbose => "Verbose",
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Where a listener binds: the bound address of a running server (its
/// `listeners.json`, when the process that wrote it is alive), else `configured`.
fn binding(live: Option<&Listeners>, name: &str, configured: SocketAddr) -> String {
    live.and_then(|l| l.listeners.iter().find(|x| x.name == name))
        .map_or(configured, |x| x.address)
        .to_string()
}

/// The listeners of `server` if it is running (a file left by a stopped server names a
/// process that is gone; without /proc the file is taken as it is).
fn running_listeners(dir: &Directory, server: &Server) -> Option<Listeners> {
    let l = read_listeners(&dir.data_dir(server))?;
    let proc = std::path::Path::new("/proc");
    let alive = !proc.exists() || proc.join(l.pid.to_string()).exists();
    (alive && l.server.eq_ignore_ascii_case(&server.name)).then_some(l)
}

/// The built-in receive connectors of `server` (DESIGN §1, reference §1.2) with what
/// mailflow grants on each.
fn builtin_receive(
    dir: &Directory,
    server: &Server,
    live: Option<&Listeners>,
) -> Vec<ConnectorInfo> {
    let p = &server.ports;
    let n = &server.name;
    let tp = server.transport_protocol_logging;
    let fe = server.frontend_protocol_logging;
    // MailboxDeliveryConnectorProtocolLoggingLevel of this server, else [transport]'s.
    let md = server.mailbox_delivery_connector_logging(dir.transport());
    let org = ["ExchangeServers"];
    let org_auth = ["Tls", "ExchangeServer"];
    let internal_tls = "STARTTLS (org auth only inside TLS off loopback)";
    let one = |name: String,
               role: &str,
               port: u16,
               groups: &[&str],
               auth: &[&str],
               tls: &str,
               logging| {
        ConnectorInfo {
            identity: format!("{n}\\{name}"),
            kind: "Receive",
            transport_role: role.into(),
            bindings: vec![binding(
                live,
                &name,
                SocketAddr::new(server.listen_ip(), port),
            )],
            remote_ip_ranges: strings(&["0.0.0.0/0", "::/0"]),
            permission_groups: strings(groups),
            auth_mechanism: strings(auth),
            tls: tls.into(),
            tls_auth_level: None,
            address_spaces: Vec::new(),
            smart_hosts: Vec::new(),
            source_transport_servers: Vec::new(),
            frontend_proxy_enabled: false,
            protocol_logging_level: level(logging),
            implicit: true,
        }
    };
    #[rustfmt::skip]
    let list = vec![
        one(format!("Default Frontend {n}"), "FrontendTransport", p.frontend,
            &["AnonymousUsers"], &["Tls"], "STARTTLS", fe),
        one(format!("Client Frontend {n}"), "FrontendTransport", p.client_frontend,
            &["ExchangeUsers"], &["Tls", "BasicAuth", "BasicAuthRequireTLS"],
            "STARTTLS, required for AUTH", LoggingLevel::None),
        one(format!("Outbound Proxy Frontend {n}"), "FrontendTransport", p.outbound_proxy,
            &org, &org_auth, internal_tls, fe),
        one(format!("Default {n}"), "HubTransport", p.transport, &org, &org_auth, internal_tls, tp),
        one(format!("Client Proxy {n}"), "HubTransport", p.client_proxy, &org, &org_auth,
            internal_tls, tp),
        one(format!("Default Mailbox Delivery {n}"), "MailboxDelivery", p.mailbox_delivery,
            &org, &org_auth, internal_tls, md),
    ];
    list
}

/// A `[[receive_connectors]]` entry; its permissions in Exchange's terms.
fn custom_receive(
    server: &Server,
    live: Option<&Listeners>,
    rc: &ReceiveConnector,
) -> ConnectorInfo {
    let groups = rc
        .permissions
        .iter()
        .map(|p| match p.to_ascii_lowercase().as_str() {
            "anonymous" => "AnonymousUsers".to_string(),
            "users" => "ExchangeUsers".to_string(),
            "relay" => "Relay (Accept-Any-Recipient)".to_string(),
            other => other.to_string(),
        })
        .collect();
    let auth = if rc.users {
        strings(&["Tls", "BasicAuth", "BasicAuthRequireTLS"])
    } else {
        strings(&["Tls"])
    };
    ConnectorInfo {
        identity: format!("{}\\{}", server.name, rc.name),
        kind: "Receive",
        transport_role: match rc.service {
            ReceiveService::Frontend => "FrontendTransport",
            ReceiveService::Transport => "HubTransport",
        }
        .into(),
        bindings: vec![binding(live, &rc.name, rc.bind)],
        remote_ip_ranges: rc.remote_ranges.iter().map(|r| r.to_string()).collect(),
        permission_groups: groups,
        auth_mechanism: auth,
        tls: match rc.tls {
            ReceiveTls::StartTls => "STARTTLS",
            ReceiveTls::Implicit => "implicit",
        }
        .into(),
        tls_auth_level: None,
        address_spaces: Vec::new(),
        smart_hosts: Vec::new(),
        source_transport_servers: Vec::new(),
        frontend_proxy_enabled: false,
        protocol_logging_level: level(rc.protocol_logging),
        implicit: false,
    }
}

/// A `[[send_connectors]]` entry (organisation-wide, as in Exchange).
fn send(c: &SendConnector) -> ConnectorInfo {
    let auth_level = match c.tls_auth_level() {
        crate::directory::config::TlsAuthLevel::EncryptionOnly => "EncryptionOnly",
        crate::directory::config::TlsAuthLevel::CertificateValidation => "CertificateValidation",
        crate::directory::config::TlsAuthLevel::DomainValidation => "DomainValidation",
    };
    let bindings = if c.smart_hosts.is_empty() {
        vec![format!("MX:{}", c.port)]
    } else {
        c.smart_hosts
            .iter()
            .map(|h| format!("{h}:{}", c.port))
            .collect()
    };
    ConnectorInfo {
        identity: c.name.clone(),
        kind: "Send",
        transport_role: "HubTransport".into(),
        bindings,
        remote_ip_ranges: Vec::new(),
        permission_groups: Vec::new(),
        auth_mechanism: if c.smart_host_auth.is_some() {
            strings(&["BasicAuthRequireTLS"])
        } else {
            Vec::new()
        },
        tls: if c.tls_required() {
            "required".into()
        } else {
            "opportunistic".into()
        },
        tls_auth_level: Some(auth_level.into()),
        address_spaces: c
            .address_spaces
            .iter()
            .map(|a| format!("SMTP:{};{}", a.domain, a.cost))
            .collect(),
        smart_hosts: c.smart_hosts.clone(),
        source_transport_servers: c.source_servers.clone(),
        frontend_proxy_enabled: c.front_end_proxy,
        protocol_logging_level: level(c.protocol_logging),
        implicit: false,
    }
}

/// The implicit send connectors of `server` (reference §1.7).
fn implicit_send(dir: &Directory, server: &Server) -> Vec<ConnectorInfo> {
    let tls = "required, except to its own loopback";
    // With an organisation CA the peer's certificate must verify for its fqdn.
    let auth_level = if dir.org_ca_certificate_path().is_some() {
        "DomainValidation"
    } else {
        "EncryptionOnly"
    };
    let one = |name: &str, role: &str, bindings: Vec<String>, logging| ConnectorInfo {
        identity: format!("{}\\{name}", server.name),
        kind: "Send",
        transport_role: role.into(),
        bindings,
        remote_ip_ranges: Vec::new(),
        permission_groups: Vec::new(),
        auth_mechanism: strings(&["ExchangeServer"]),
        tls: tls.into(),
        tls_auth_level: Some(auth_level.into()),
        address_spaces: Vec::new(),
        smart_hosts: Vec::new(),
        source_transport_servers: vec![server.name.clone()],
        frontend_proxy_enabled: false,
        protocol_logging_level: level(logging),
        implicit: true,
    };
    vec![
        one(
            INTRA_ORG_SEND_CONNECTOR,
            "HubTransport, MailboxSubmission",
            strings(&["any server:2525", "any server:475"]),
            server.transport_intra_org_logging(dir.transport()),
        ),
        one(
            INBOUND_PROXY_SEND_CONNECTOR,
            "FrontendTransport",
            strings(&["any server:2525", "any server:465"]),
            server.frontend_intra_org_logging(),
        ),
    ]
}

/// Every connector of the chosen server (`--server`), or of every server, then the
/// organisation's send connectors.
pub fn connectors(dir: &Directory, only: Option<&str>) -> anyhow::Result<Vec<ConnectorInfo>> {
    let servers: Vec<&Server> = match only {
        Some(name) => vec![dir.choose_server(Some(name))?],
        None => dir.servers().collect(),
    };
    let mut all = Vec::new();
    for server in &servers {
        let live = running_listeners(dir, server);
        all.extend(builtin_receive(dir, server, live.as_ref()));
        all.extend(
            dir.receive_connectors_of(&server.name)
                .map(|rc| custom_receive(server, live.as_ref(), rc)),
        );
    }
    all.extend(
        dir.send_connectors()
            .filter(|c| {
                only.is_none()
                    || c.source_servers.is_empty()
                    || servers.iter().any(|s| {
                        c.source_servers
                            .iter()
                            .any(|x| x.eq_ignore_ascii_case(&s.name))
                    })
            })
            .map(send),
    );
    for server in &servers {
        all.extend(implicit_send(dir, server));
    }
    Ok(all)
}

pub fn run(g: &Global, ConnectorCommand::List: ConnectorCommand) -> anyhow::Result<ExitCode> {
    let dir = load_directory(g)?;
    let list = connectors(&dir, g.server.as_deref())?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.identity.clone(),
                c.kind.to_string(),
                c.transport_role.clone(),
                c.bindings.join(", "),
                c.permission_groups.join(", "),
                c.auth_mechanism.join(", "),
                c.tls.clone(),
                c.tls_auth_level.clone().unwrap_or_default(),
                c.address_spaces.join(", "),
                c.smart_hosts.join(", "),
                c.protocol_logging_level.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "Identity",
            "Kind",
            "TransportRole",
            "Bindings",
            "PermissionGroups",
            "AuthMechanism",
            "Tls",
            "TlsAuthLevel",
            "AddressSpaces",
            "SmartHosts",
            "ProtocolLoggingLevel",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

//! Routing resolution (reference §4): the next hop for each resolved recipient, and the
//! servers to connect to for a next hop.
//!
//! A routing destination (a mailbox database, a send connector, a group's expansion
//! server) belongs to a delivery group. When this server is in the group, the next hop
//! is the destination itself; otherwise the message is relayed to the group along the
//! least-cost path, stopping in a hub site when one lies on it, else connecting directly
//! to a server of the group's primary site (site links price paths, they do not relay).
//! Where to connect is resolved at connection time, so a database switchover or a server
//! that is down is seen by mail already queued.

use std::net::SocketAddr;

use mailflow_smtp::{Reply, replies};
use serde::Serialize;

use crate::directory::active_copies::ActiveCopies;
use crate::directory::live::OrgConfig;
use crate::directory::send_connectors::{NoConnector, select_connector};
use crate::directory::topology::{self, Distances, SitePath, Topology};
use crate::directory::{Directory, SendConnector, Server};
use crate::transport::context::TransportContext;
use crate::transport::queue::{DeliveryType, NextHop};

/// Everything routing reads: the directory, its topology, the active database copies
/// and the server doing the routing.
pub struct RoutingView<'a> {
    pub dir: &'a Directory,
    pub topology: &'a Topology,
    pub active: &'a ActiveCopies,
    pub local: &'a Server,
}

/// The route to one destination, as the routing table shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Route {
    pub destination: String,
    pub delivery_group: String,
    #[serde(skip)]
    pub next_hop: NextHop,
    #[serde(rename = "NextHop")]
    pub next_hop_text: String,
    pub cost: u64,
    pub path: Vec<String>,
    /// For a send connector: the address space this row routes, as Exchange shows
    /// AddressSpaces (`SMTP:*.fabrikam.com;1`: domain and its cost, which decides
    /// between connectors before the path cost does, reference §4.4). Empty otherwise.
    pub address_space: String,
}

/// A delivery group (reference §4.2): its label and member servers.
struct Group {
    label: String,
    members: Vec<String>,
    /// The next hop for relaying to the group from outside it.
    remote_hop: NextHop,
}

fn hop(delivery_type: DeliveryType, domain: impl Into<String>) -> NextHop {
    NextHop {
        delivery_type,
        domain: domain.into(),
        connector: None,
    }
}

impl<'a> RoutingView<'a> {
    /// Routing as this version of the organisation and the active copies give it.
    pub fn of(cfg: &'a OrgConfig, active: &'a ActiveCopies) -> RoutingView<'a> {
        RoutingView {
            dir: &cfg.dir,
            topology: &cfg.topology,
            active,
            local: &cfg.server,
        }
    }
}

/// The routing table this server routes by now.
pub fn routing_table(ctx: &TransportContext) -> Vec<Route> {
    let cfg = ctx.config();
    let active = ctx.active_copies();
    RoutingView::of(&cfg, &active).table()
}

/// Writes the routing table log (at start, after a reload, a move or a failover).
pub fn log_routing_table(ctx: &TransportContext) {
    write_routing_log(&ctx.logs.routing, ctx.name(), &routing_table(ctx));
}

impl RoutingView<'_> {
    /// Distances from this server, by site (shared with hub selection).
    pub fn distances(&self) -> Distances<'_> {
        Distances {
            dir: self.dir,
            topology: self.topology,
            local: self.local,
        }
    }

    fn local_site(&self) -> &str {
        self.topology
            .site_of(&self.local.name)
            .unwrap_or(topology::DEFAULT_SITE)
    }

    fn is_local(&self, server: &str) -> bool {
        server.eq_ignore_ascii_case(&self.local.name)
    }

    /// The delivery group of a database: its DAG (the routing boundary even across
    /// sites) or, outside a DAG, the mailbox delivery group of its server's site.
    fn database_group(&self, database: &str) -> Option<Group> {
        let active = self.active.active_server(database)?;
        if let Some(dag) = self.topology.dag_of(&active) {
            return Some(Group {
                label: format!("DAG {dag}"),
                members: self.topology.dag_members(dag).to_vec(),
                remote_hop: hop(DeliveryType::SmtpRelayToDag, dag),
            });
        }
        let site = self.topology.site_of(&active)?.to_string();
        Some(Group {
            label: format!("Mailbox delivery group {site}"),
            members: self.topology.servers_in(self.dir, &site).collect(),
            remote_hop: hop(
                DeliveryType::SmtpRelayToMailboxDeliveryGroup,
                format!("Site:{site};Version:15"),
            ),
        })
    }

    /// The least-cost path to the nearest site holding a member of `members`.
    fn primary_path(&self, members: &[String]) -> Option<SitePath> {
        self.distances().primary_path(members)
    }

    /// Routes to a group: the final hop when this server is a member, else relay.
    fn route_to_group(&self, destination: String, group: Group, final_hop: NextHop) -> Route {
        let local_site = self.local_site().to_string();
        let (next_hop, cost, path) = if group.members.iter().any(|m| self.is_local(m)) {
            (final_hop, 0, vec![local_site])
        } else {
            match self.primary_path(&group.members) {
                Some(path) => {
                    let next = match self.topology.hub_on_path(&path) {
                        Some(hub) => hop(DeliveryType::SmtpRelayToRemoteAdSite, hub),
                        None => group.remote_hop,
                    };
                    (next, path.cost, path.sites)
                }
                None => (NextHop::unreachable(), 0, Vec::new()),
            }
        };
        Route {
            destination,
            delivery_group: group.label,
            next_hop_text: next_hop.key(),
            next_hop,
            cost,
            path,
            address_space: String::new(),
        }
    }

    /// The route to a mailbox database.
    pub fn route_database(&self, database: &str) -> Route {
        let final_hop = hop(DeliveryType::SmtpDeliveryToMailbox, database);
        match self.database_group(database) {
            Some(group) => self.route_to_group(format!("Database {database}"), group, final_hop),
            None => Route {
                destination: format!("Database {database}"),
                delivery_group: "-".into(),
                next_hop_text: NextHop::unreachable().key(),
                next_hop: NextHop::unreachable(),
                cost: 0,
                path: Vec::new(),
                address_space: String::new(),
            },
        }
    }

    /// The route to a send connector: local when this server is a source server (or the
    /// connector has none), else relay to its source servers (reference §4.2).
    pub fn route_connector(&self, connector: &SendConnector, domain: &str) -> Route {
        let final_hop = NextHop {
            delivery_type: if connector.smart_hosts.is_empty() {
                DeliveryType::DnsConnectorDelivery
            } else {
                DeliveryType::SmartHostConnectorDelivery
            },
            domain: if connector.smart_hosts.is_empty() {
                domain.to_ascii_lowercase()
            } else {
                connector.smart_hosts.join(",")
            },
            connector: Some(connector.name.clone()),
        };
        let members = if connector.source_servers.is_empty() {
            vec![self.local.name.clone()]
        } else {
            connector.source_servers.clone()
        };
        let group = Group {
            label: format!("Connector source servers {}", connector.name),
            members,
            remote_hop: hop(
                DeliveryType::SmtpRelayToConnectorSourceServers,
                connector.name.clone(),
            ),
        };
        self.route_to_group(format!("Connector {}", connector.name), group, final_hop)
    }

    /// The route to a distribution group's expansion server (server-list delivery group).
    pub fn route_expansion_server(&self, server: &str) -> Route {
        let fqdn = self
            .dir
            .server(server)
            .map(|s| s.fqdn.clone())
            .unwrap_or_else(|| server.to_string());
        let group = Group {
            label: format!("Server list {server}"),
            members: vec![server.to_string()],
            remote_hop: hop(DeliveryType::SmtpRelayToServers, fqdn),
        };
        // The final hop is expanding locally; callers check `is_local` first.
        self.route_to_group(
            format!("Expansion server {server}"),
            group,
            NextHop::unreachable(),
        )
    }

    pub fn is_local_server(&self, server: &str) -> bool {
        self.is_local(server)
    }

    /// The next hop for an external recipient domain and a message of `size` bytes;
    /// Unreachable when no connector matches (reference §14.6: not an NDR); the NDR
    /// reply when the message is too big for every connector that matches.
    pub fn route_external(&self, domain: &str, size: u64) -> Result<NextHop, Reply> {
        match select_connector(self.dir.send_connectors(), domain, size) {
            Ok(c) => Ok(self.route_connector(c, domain).next_hop),
            Err(NoConnector::NoAddressSpace) => Ok(NextHop::unreachable()),
            Err(NoConnector::TooBig) => Err(replies::size_limit_for_route()),
        }
    }

    /// Servers to connect to for a next hop, in order of preference: the servers of
    /// the group's nearest site first, then the others by path cost. Each entry is
    /// (server name, FQDN, endpoint).
    pub fn targets(&self, next_hop: &NextHop) -> Vec<(String, String, SocketAddr)> {
        let by_distance = |members: Vec<String>| self.by_distance(&members, false);
        let d = &next_hop.domain;
        match next_hop.delivery_type {
            DeliveryType::SmtpDeliveryToMailbox => self
                .active
                .active_server(d)
                .and_then(|s| self.dir.server(&s))
                .map(|s| {
                    (
                        s.name.clone(),
                        s.fqdn.clone(),
                        SocketAddr::new(s.ip(), s.ports.mailbox_delivery),
                    )
                })
                .into_iter()
                .collect(),
            DeliveryType::SmtpRelayToDag => by_distance(self.topology.dag_members(d).to_vec()),
            DeliveryType::SmtpRelayToMailboxDeliveryGroup => {
                let site = d
                    .strip_prefix("Site:")
                    .and_then(|s| s.split(';').next())
                    .unwrap_or("");
                by_distance(self.topology.servers_in(self.dir, site).collect())
            }
            DeliveryType::SmtpRelayToRemoteAdSite => {
                by_distance(self.topology.servers_in(self.dir, d).collect())
            }
            DeliveryType::SmtpRelayToServers => by_distance(
                self.dir
                    .servers()
                    .filter(|s| s.fqdn.eq_ignore_ascii_case(d))
                    .map(|s| s.name.clone())
                    .collect(),
            ),
            DeliveryType::SmtpRelayToConnectorSourceServers => by_distance(
                self.dir
                    .send_connectors()
                    .find(|c| c.name == *d)
                    .map(|c| c.source_servers.clone())
                    .unwrap_or_default(),
            ),
            DeliveryType::DnsConnectorDelivery
            | DeliveryType::SmartHostConnectorDelivery
            | DeliveryType::Unreachable
            | DeliveryType::Poison => Vec::new(),
        }
    }

    /// Transport endpoints of `members`, nearest site first (servers of one site in
    /// file order), this server first when `include_local` and it is a member.
    pub fn by_distance(
        &self,
        members: &[String],
        include_local: bool,
    ) -> Vec<(String, String, SocketAddr)> {
        self.distances().by_distance(members, include_local)
    }

    /// The routing table of this server: every database, connector and expansion
    /// server (what `mailflow route show` prints and the routing log records).
    pub fn table(&self) -> Vec<Route> {
        let mut rows: Vec<Route> = self
            .dir
            .databases()
            .map(|d| self.route_database(&d.name))
            .collect();
        // One row per address space of each connector, with its cost.
        for c in self.dir.send_connectors() {
            for space in &c.address_spaces {
                let mut route = self.route_connector(c, &space.domain);
                route.address_space = format!("SMTP:{};{}", space.domain, space.cost);
                rows.push(route);
            }
        }
        let mut servers: Vec<&str> = self
            .dir
            .groups()
            .filter_map(|g| g.expansion_server.as_deref())
            .collect();
        servers.sort_unstable();
        servers.dedup();
        for s in servers {
            rows.push(self.route_expansion_server(s));
        }
        rows
    }
}

/// Writes the routing table log (reference §8.4: `Logs\Hub\Routing`): one file per
/// computation, named for its time, JSON rows as `route show --json` prints them.
pub fn write_routing_log(dir: &std::path::Path, server: &str, table: &[Route]) {
    let now = chrono::Utc::now();
    let file = dir.join(format!("RoutingTable{}.log", now.format("%Y%m%d%H%M%S%3f")));
    let doc =
        serde_json::json!({ "Server": server, "Computed": now.to_rfc3339(), "Routes": table });
    let written = crate::files::create_private_dir_all(dir)
        .and_then(|()| std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap_or_default()));
    if let Err(e) = written {
        tracing::warn!("cannot write the routing table log {}: {e}", file.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = r#"
[organization]
name = "t"
accepted_domains = ["t.test"]
[[sites]]
name = "A"
[[sites]]
name = "B"
hub_site = HUB
[[sites]]
name = "C"
[[site_links]]
sites = ["A", "B"]
cost = 10
[[site_links]]
sites = ["B", "C"]
cost = 10
[[site_links]]
sites = ["A", "C"]
cost = 30
[[servers]]
name = "SA"
site = "A"
fqdn = "sa.t.test"
address = "127.0.0.1"
data_dir = "a"
[[servers]]
name = "SB"
site = "B"
fqdn = "sb.t.test"
address = "127.0.0.1"
data_dir = "b"
[[servers]]
name = "SC"
site = "C"
fqdn = "sc.t.test"
address = "127.0.0.1"
data_dir = "c"
[servers.ports]
transport = 2600
[[dags]]
name = "DAG1"
servers = ["SB", "SC"]
[[databases]]
name = "DBC"
copies = ["SC"]
[[databases]]
name = "DBD"
copies = ["SC", "SB"]
"#;

    fn view_of<'a>(
        dir: &'a Directory,
        topo: &'a Topology,
        active: &'a ActiveCopies,
        server: &str,
    ) -> RoutingView<'a> {
        RoutingView {
            dir,
            topology: topo,
            active,
            local: dir.server(server).unwrap(),
        }
    }

    #[test]
    fn remote_site_is_reached_directly_unless_a_hub_site_is_on_the_path() {
        for (hub, expected) in [
            ("false", "SmtpRelayToMailboxDeliveryGroup:Site:C;Version:15"),
            ("true", "SmtpRelayToRemoteAdSite:B"),
        ] {
            let text = ORG.replace("HUB", hub).replace(
                "[[dags]]\nname = \"DAG1\"\nservers = [\"SB\", \"SC\"]\n",
                "",
            );
            let dir = Directory::parse(
                &text.replace("copies = [\"SC\", \"SB\"]", "copies = [\"SC\"]"),
                "t",
                ".".into(),
            )
            .unwrap();
            let topo = Topology::new(&dir);
            let active = ActiveCopies::from_directory(&dir);
            let v = view_of(&dir, &topo, &active, "SA");
            let r = v.route_database("DBC");
            assert_eq!(r.next_hop.key(), expected, "hub_site = {hub}");
            assert_eq!(
                (r.cost, r.path.clone()),
                (20, vec!["A".into(), "B".into(), "C".into()])
            );
            let targets = v.targets(&r.next_hop);
            let expected_target = if hub == "true" { "SB" } else { "SC" };
            assert_eq!(targets[0].0, expected_target);
        }
    }

    #[test]
    fn dag_members_deliver_to_the_active_copy_directly_and_others_relay_to_the_dag() {
        let dir = Directory::parse(&ORG.replace("HUB", "false"), "t", ".".into()).unwrap();
        let topo = Topology::new(&dir);
        let mut active = ActiveCopies::from_directory(&dir);
        // SB is in the DAG, in another site than SC: still the final hop (DAG boundary).
        let r = view_of(&dir, &topo, &active, "SB").route_database("DBD");
        assert_eq!(r.next_hop.key(), "SmtpDeliveryToMailbox:DBD");
        let t = view_of(&dir, &topo, &active, "SB").targets(&r.next_hop);
        assert_eq!(t[0].0, "SC");
        // SA is outside: relay to the DAG, nearest member site (B, cost 10) first.
        let v = view_of(&dir, &topo, &active, "SA");
        let r = v.route_database("DBD");
        assert_eq!(r.next_hop.key(), "SmtpRelayToDag:DAG1");
        let names: Vec<String> = v.targets(&r.next_hop).into_iter().map(|t| t.0).collect();
        assert_eq!(names, ["SB", "SC"]);
        // After a switchover the same queue's target follows the active copy.
        active.set("DBD", "SB");
        let t = view_of(&dir, &topo, &active, "SC")
            .targets(&hop(DeliveryType::SmtpDeliveryToMailbox, "DBD"));
        assert_eq!(t[0].0, "SB");
    }
}

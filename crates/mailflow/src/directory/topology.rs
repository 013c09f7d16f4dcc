//! The routing topology (reference §4): Active Directory sites joined by IP site links,
//! the servers in them, DAGs, and the least-cost path between two sites.
//!
//! Site links only price paths; they do not relay. A path's cost is the sum of its
//! links' costs. Ties are broken by fewer hops, then by the names of the sites nearest
//! the destination (reference §4.3). Paths are computed with Dijkstra *from the
//! destination*, so the tie-break compares exactly "the site adjacent to the
//! destination first, then one further back".
//!
//! Computed from the directory alone, so Transport's routing, Front End's and
//! Submission's hub selection and the Active Manager share it; it imports no service.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use std::net::SocketAddr;

use crate::directory::{Directory, Server};

/// The site of servers whose `site` is not given (Exchange's default site name).
pub const DEFAULT_SITE: &str = "Default-First-Site-Name";

/// A least-cost path between two sites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SitePath {
    pub cost: u64,
    /// Site names from the source to the destination, both included.
    pub sites: Vec<String>,
}

impl SitePath {
    pub fn hops(&self) -> usize {
        self.sites.len().saturating_sub(1)
    }

    /// The comparison of reference §4.3: cost, hops, then site names from the
    /// destination back to the source.
    pub fn rank(&self) -> (u64, usize, Vec<String>) {
        (
            self.cost,
            self.hops(),
            self.sites.iter().rev().cloned().collect(),
        )
    }
}

#[derive(Debug, Clone)]
pub struct Topology {
    sites: Vec<String>,
    hub: Vec<bool>,
    index: HashMap<String, usize>,
    links: Vec<Vec<(usize, u32)>>,
    server_site: HashMap<String, usize>,
    server_dag: HashMap<String, String>,
    dag_members: HashMap<String, Vec<String>>,
}

#[derive(PartialEq, Eq)]
struct Label {
    cost: u64,
    hops: usize,
    /// Names of the sites passed, from the destination outwards (the tie-break key).
    names: Vec<String>,
    /// Site indexes from the destination to this label's site.
    trail: Vec<usize>,
}

impl Ord for Label {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse for the smallest label first.
        (other.cost, other.hops, &other.names).cmp(&(self.cost, self.hops, &self.names))
    }
}
impl PartialOrd for Label {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Topology {
    pub fn new(dir: &Directory) -> Topology {
        let mut sites: Vec<String> = dir
            .org
            .sites
            .iter()
            .map(|s| s.get_ref().name.clone())
            .collect();
        let mut hub: Vec<bool> = dir.org.sites.iter().map(|s| s.get_ref().hub_site).collect();
        if dir.servers().any(|s| s.site.is_none()) && !sites.iter().any(|s| s == DEFAULT_SITE) {
            sites.push(DEFAULT_SITE.into());
            hub.push(false);
        }
        let index: HashMap<String, usize> = sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect();
        let mut links = vec![Vec::new(); sites.len()];
        for link in &dir.org.site_links {
            let link = link.get_ref();
            let members: Vec<usize> = link
                .sites
                .iter()
                .filter_map(|s| index.get(s).copied())
                .collect();
            // A link naming several sites joins each pair of them at its cost.
            for (i, &a) in members.iter().enumerate() {
                for &b in &members[i + 1..] {
                    links[a].push((b, link.cost));
                    links[b].push((a, link.cost));
                }
            }
        }
        let server_site = dir
            .servers()
            .filter_map(|s| {
                let site = s.site.as_deref().unwrap_or(DEFAULT_SITE);
                index.get(site).map(|&i| (s.name.to_lowercase(), i))
            })
            .collect();
        let mut server_dag = HashMap::new();
        let mut dag_members = HashMap::new();
        for dag in &dir.org.dags {
            let dag = dag.get_ref();
            for m in &dag.servers {
                server_dag.insert(m.to_lowercase(), dag.name.clone());
            }
            dag_members.insert(dag.name.to_lowercase(), dag.servers.clone());
        }
        Topology {
            sites,
            hub,
            index,
            links,
            server_site,
            server_dag,
            dag_members,
        }
    }

    pub fn site_of(&self, server: &str) -> Option<&str> {
        self.server_site
            .get(&server.to_lowercase())
            .map(|&i| self.sites[i].as_str())
    }

    pub fn is_hub(&self, site: &str) -> bool {
        self.index.get(site).is_some_and(|&i| self.hub[i])
    }

    pub fn dag_of(&self, server: &str) -> Option<&str> {
        self.server_dag
            .get(&server.to_lowercase())
            .map(String::as_str)
    }

    pub fn dag_members(&self, dag: &str) -> &[String] {
        self.dag_members
            .get(&dag.to_lowercase())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Servers of a site, in file order.
    pub fn servers_in<'a>(
        &'a self,
        dir: &'a Directory,
        site: &'a str,
    ) -> impl Iterator<Item = String> + 'a {
        dir.servers()
            .filter(move |s| self.site_of(&s.name) == Some(site))
            .map(|s| s.name.clone())
    }

    /// The least-cost path from site `from` to site `to` (reference §4.3).
    pub fn path(&self, from: &str, to: &str) -> Option<SitePath> {
        let (&src, &dst) = (self.index.get(from)?, self.index.get(to)?);
        if src == dst {
            return Some(SitePath {
                cost: 0,
                sites: vec![from.to_string()],
            });
        }
        // Dijkstra from the destination; a label's names run destination-outwards, so
        // comparing them is the tie-break "nearest the destination first". Extending
        // two labels by the same link keeps their order, so settling each site once
        // with its smallest label is exact.
        let mut settled = vec![false; self.sites.len()];
        let mut heap = BinaryHeap::new();
        heap.push(Label {
            cost: 0,
            hops: 0,
            names: Vec::new(),
            trail: vec![dst],
        });
        while let Some(label) = heap.pop() {
            let site = *label.trail.last()?;
            if settled[site] {
                continue;
            }
            settled[site] = true;
            if site == src {
                let sites = label
                    .trail
                    .iter()
                    .rev()
                    .map(|&i| self.sites[i].clone())
                    .collect();
                return Some(SitePath {
                    cost: label.cost,
                    sites,
                });
            }
            for &(next, link_cost) in &self.links[site] {
                if settled[next] {
                    continue;
                }
                let mut names = label.names.clone();
                if site != dst {
                    names.push(self.sites[site].clone());
                }
                let mut trail = label.trail.clone();
                trail.push(next);
                heap.push(Label {
                    cost: label.cost + u64::from(link_cost),
                    hops: label.hops + 1,
                    names,
                    trail,
                });
            }
        }
        None
    }

    /// The first hub site strictly after `path`'s source and before its destination.
    pub fn hub_on_path<'a>(&self, path: &'a SitePath) -> Option<&'a str> {
        let n = path.sites.len();
        if n < 3 {
            return None;
        }
        path.sites[1..n - 1]
            .iter()
            .find(|s| self.is_hub(s))
            .map(String::as_str)
    }
}

/// Distances from one server (`local`) to the others, by site: what Transport's routing
/// and the hub selection of Front End and Submission share.
pub struct Distances<'a> {
    pub dir: &'a Directory,
    pub topology: &'a Topology,
    pub local: &'a Server,
}

impl Distances<'_> {
    pub fn local_site(&self) -> &str {
        self.topology
            .site_of(&self.local.name)
            .unwrap_or(DEFAULT_SITE)
    }

    pub fn is_local(&self, server: &str) -> bool {
        server.eq_ignore_ascii_case(&self.local.name)
    }

    /// The least-cost path to the nearest site holding a member of `members`.
    pub fn primary_path(&self, members: &[String]) -> Option<SitePath> {
        let from = self.local_site();
        members
            .iter()
            .filter_map(|m| self.topology.site_of(m))
            .filter_map(|site| self.topology.path(from, site))
            .min_by(|a, b| a.rank().cmp(&b.rank()))
    }

    /// Transport endpoints of `members`, nearest site first (servers of one site in
    /// file order), this server first when `include_local` and it is a member.
    pub fn by_distance(
        &self,
        members: &[String],
        include_local: bool,
    ) -> Vec<(String, String, SocketAddr)> {
        let from = self.local_site();
        let mut ranked: Vec<_> = members
            .iter()
            .filter(|m| include_local || !self.is_local(m))
            .filter_map(|m| self.dir.server(m))
            .filter_map(|s| {
                let site = self.topology.site_of(&s.name)?;
                let local_first = !self.is_local(&s.name);
                Some(((local_first, self.topology.path(from, site)?.rank()), s))
            })
            .collect();
        ranked.sort_by(|a, b| a.0.cmp(&b.0));
        ranked
            .into_iter()
            .filter_map(|(_, s)| {
                Some((
                    s.name.clone(),
                    s.fqdn.clone(),
                    SocketAddr::new(*s.address.value()?, s.ports.transport),
                ))
            })
            .collect()
    }

    /// The members of the delivery group of a database whose active copy is on
    /// `active`: its DAG (the routing boundary even across sites) or, outside a DAG,
    /// the servers of its site; `None` when `active` has no site.
    pub fn database_group_members(&self, active: &str) -> Option<Vec<String>> {
        if let Some(dag) = self.topology.dag_of(active) {
            return Some(self.topology.dag_members(dag).to_vec());
        }
        let site = self.topology.site_of(active)?;
        Some(self.topology.servers_in(self.dir, site).collect())
    }

    /// The rank of the path to the nearest member of `members`.
    pub fn distance_rank(&self, members: &[String]) -> Option<(u64, usize, Vec<String>)> {
        self.primary_path(members).map(|p| p.rank())
    }

    /// Servers of this server's site (the local delivery group).
    pub fn local_site_servers(&self) -> Vec<String> {
        self.topology
            .servers_in(self.dir, self.local_site())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(sites: &[(&str, bool)], links: &[(&str, &str, u32)]) -> Directory {
        let mut text =
            String::from("[organization]\nname = \"t\"\naccepted_domains = [\"t.test\"]\n");
        for (s, hub) in sites {
            text.push_str(&format!("[[sites]]\nname = \"{s}\"\nhub_site = {hub}\n"));
        }
        for (a, b, c) in links {
            text.push_str(&format!(
                "[[site_links]]\nsites = [\"{a}\", \"{b}\"]\ncost = {c}\n"
            ));
        }
        text.push_str("[[servers]]\nname = \"S1\"\nsite = \"A\"\nfqdn = \"s1.t.test\"\naddress = \"127.0.0.1\"\ndata_dir = \"d\"\n");
        Directory::parse(&text, "t.toml", ".".into()).unwrap()
    }

    #[test]
    fn least_cost_path_goes_through_the_cheaper_sites() {
        let d = org(
            &[("A", false), ("B", false), ("C", false)],
            &[("A", "B", 10), ("B", "C", 10), ("A", "C", 30)],
        );
        let t = Topology::new(&d);
        let p = t.path("A", "C").unwrap();
        assert_eq!(
            (p.cost, p.sites.clone()),
            (20, vec!["A".into(), "B".into(), "C".into()])
        );
        let d = org(
            &[("A", false), ("B", false), ("C", false)],
            &[("A", "B", 10), ("B", "C", 10), ("A", "C", 15)],
        );
        let p = Topology::new(&d).path("A", "C").unwrap();
        assert_eq!((p.cost, p.sites), (15, vec!["A".into(), "C".into()]));
    }

    #[test]
    fn ties_go_to_fewer_hops_then_to_the_lowest_name_nearest_the_destination() {
        // A–X–Z and A–Y–Z both cost 20: the site adjacent to Z named lower (X) wins.
        let d = org(
            &[("A", false), ("Y", false), ("X", false), ("Z", false)],
            &[
                ("A", "Y", 10),
                ("Y", "Z", 10),
                ("A", "X", 10),
                ("X", "Z", 10),
            ],
        );
        let p = Topology::new(&d).path("A", "Z").unwrap();
        assert_eq!(p.sites, ["A", "X", "Z"]);
        // Equal cost 20: direct (1 hop) beats two hops.
        let d = org(
            &[("A", false), ("B", false), ("C", false)],
            &[("A", "B", 10), ("B", "C", 10), ("A", "C", 20)],
        );
        assert_eq!(Topology::new(&d).path("A", "C").unwrap().sites, ["A", "C"]);
        // Same adjacent site, decided one site further back: A–M–P–Z vs A–N–P–Z → M.
        let d = org(
            &[
                ("A", false),
                ("N", false),
                ("M", false),
                ("P", false),
                ("Z", false),
            ],
            &[
                ("A", "N", 5),
                ("N", "P", 5),
                ("A", "M", 5),
                ("M", "P", 5),
                ("P", "Z", 5),
            ],
        );
        assert_eq!(
            Topology::new(&d).path("A", "Z").unwrap().sites,
            ["A", "M", "P", "Z"]
        );
    }

    #[test]
    fn hub_sites_on_the_path_are_found_and_unlinked_sites_reported() {
        let d = org(
            &[("A", false), ("B", true), ("C", false), ("D", false)],
            &[("A", "B", 10), ("B", "C", 10)],
        );
        let t = Topology::new(&d);
        let p = t.path("A", "C").unwrap();
        assert_eq!(t.hub_on_path(&p), Some("B"));
        assert_eq!(t.path("A", "D"), None);
    }
}

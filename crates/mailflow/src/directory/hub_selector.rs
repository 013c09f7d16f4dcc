//! Which Transport server Front End proxies to (reference §2): for mailbox recipients,
//! a server of the delivery group of their database, the group nearest by site chosen
//! from the first 20 recipients; with no mailbox recipient, a random Transport server
//! of the local site. Front End never bifurcates: one server per message. The result is
//! an ordered list so that a server that does not answer is skipped. Shared by Front
//! End and Mailbox Transport Submission (reference §4.5): a directory lookup given the
//! active copies.

use std::net::SocketAddr;

use mailflow_smtp::{Address, RcptParams};
use rand::seq::SliceRandom;

use super::Recipient;
use super::active_copies::ActiveCopies;
use super::live::OrgConfig;

/// The chosen servers in order: (name, Transport endpoint `Default <server>`).
///
/// DESIGN §1: the delivery group is chosen from the first 20 mailbox recipients,
/// nearest first. Within it, the server holding the active copy of the first such
/// recipient's database comes first (it delivers without another hop), then the
/// group's other servers nearest first, then the local delivery group as fallback.
/// This server's own Transport gets no preference (reference §4.5: seed 003's Outbox
/// mail is received by `MBX2\Default MBX2`, not MBX1's).
pub fn choose_servers(
    cfg: &OrgConfig,
    active: &ActiveCopies,
    recipients: &[(Address, RcptParams)],
) -> Vec<(String, SocketAddr)> {
    let dir = &cfg.dir;
    let view = cfg.distances();
    // (server holding the active copy, members of its delivery group) per recipient.
    let nearest_group = recipients
        .iter()
        .take(20)
        .filter_map(|(to, _)| match dir.lookup(&to.key()) {
            Some(Recipient::Mailbox(i)) => {
                let holder = active.active_server(&dir.mailbox(i).database)?;
                let members = view.database_group_members(&holder)?;
                Some((holder, members))
            }
            _ => None,
        })
        .filter(|(_, members)| !members.is_empty())
        .min_by_key(|(_, members)| view.distance_rank(members));
    let local_group = view.by_distance(&view.local_site_servers(), true);
    let Some((holder, members)) = nearest_group else {
        // No mailbox recipient: the local site's Transport servers in random order.
        let mut local: Vec<(String, SocketAddr)> = local_group
            .into_iter()
            .map(|(name, _, addr)| (name, addr))
            .collect();
        local.shuffle(&mut rand::rng());
        return local;
    };
    let mut group = view.by_distance(&members, true);
    if let Some(i) = group
        .iter()
        .position(|(name, _, _)| name.eq_ignore_ascii_case(&holder))
    {
        let first = group.remove(i);
        group.insert(0, first);
    }
    let mut chosen: Vec<(String, SocketAddr)> = Vec::new();
    for (name, _, addr) in group.into_iter().chain(local_group) {
        if !chosen.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            chosen.push((name, addr));
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::directory::Directory;

    /// Site A: MBX1, MBX2 (DB1 on MBX1, DB2 on MBX2); site B: MBX3 (DB3), linked.
    const ORG: &str = r#"
[organization]
name = "t"
accepted_domains = ["t.test"]
[[sites]]
name = "A"
[[sites]]
name = "B"
[[site_links]]
sites = ["A", "B"]
cost = 10
[[servers]]
name = "MBX1"
site = "A"
fqdn = "mbx1.t.test"
address = "127.0.0.1"
data_dir = "d1"
ports = { transport = 2001 }
[[servers]]
name = "MBX2"
site = "A"
fqdn = "mbx2.t.test"
address = "127.0.0.2"
data_dir = "d2"
ports = { transport = 2002 }
[[servers]]
name = "MBX3"
site = "B"
fqdn = "mbx3.t.test"
address = "127.0.0.3"
data_dir = "d3"
ports = { transport = 2003 }
[[databases]]
name = "DB1"
copies = ["MBX1"]
[[databases]]
name = "DB2"
copies = ["MBX2"]
[[databases]]
name = "DB3"
copies = ["MBX3"]
[[mailboxes]]
address = "a@t.test"
database = "DB1"
[[mailboxes]]
address = "b@t.test"
database = "DB2"
[[mailboxes]]
address = "c@t.test"
database = "DB3"
"#;

    fn chosen(local: &str, to: &[&str]) -> Vec<String> {
        let dir = Arc::new(Directory::parse(ORG, "t.toml", ".".into()).unwrap());
        let active = ActiveCopies::from_directory(&dir);
        let cfg = OrgConfig::new(dir, local).unwrap();
        let rcpts: Vec<(Address, RcptParams)> = to
            .iter()
            .map(|a| (Address::parse(a, false).unwrap(), RcptParams::default()))
            .collect();
        choose_servers(&cfg, &active, &rcpts)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    #[test]
    fn the_active_copys_server_comes_first_not_the_local_one() {
        // Seed 003: MBX1's Outbox mail to a mailbox on MBX2 goes to MBX2's Transport;
        // the rest of the group (the site) stays as fallback.
        assert_eq!(chosen("MBX1", &["b@t.test"]), ["MBX2", "MBX1"]);
        assert_eq!(chosen("MBX2", &["a@t.test"]), ["MBX1", "MBX2"]);
    }

    #[test]
    fn a_remote_group_is_followed_by_the_local_delivery_group_as_fallback() {
        assert_eq!(chosen("MBX1", &["c@t.test"]), ["MBX3", "MBX1", "MBX2"]);
    }

    #[test]
    fn the_nearest_group_of_the_first_recipients_wins() {
        let got = chosen("MBX1", &["c@t.test", "b@t.test"]);
        assert_eq!(got[0], "MBX2", "{got:?}");
    }

    #[test]
    fn without_mailbox_recipients_any_local_site_server() {
        let mut got = chosen("MBX1", &["someone@example.org"]);
        got.sort();
        assert_eq!(got, ["MBX1", "MBX2"]);
    }
}

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

pub fn choose(
    cfg: &OrgConfig,
    active: &ActiveCopies,
    recipients: &[(Address, RcptParams)],
) -> Vec<SocketAddr> {
    choose_servers(cfg, active, recipients)
        .into_iter()
        .map(|(_, addr)| addr)
        .collect()
}

/// The chosen servers in order: (name, Transport endpoint `Default <server>`).
pub fn choose_servers(
    cfg: &OrgConfig,
    active: &ActiveCopies,
    recipients: &[(Address, RcptParams)],
) -> Vec<(String, SocketAddr)> {
    let dir = &cfg.dir;
    let view = cfg.distances();
    let nearest_group = recipients
        .iter()
        .take(20)
        .filter_map(|(to, _)| match dir.lookup(&to.key()) {
            Some(Recipient::Mailbox(i)) => Some(
                active
                    .active_server(&dir.mailbox(i).database)
                    .and_then(|active| view.database_group_members(&active))
                    .unwrap_or_default(),
            ),
            _ => None,
        })
        .filter(|members| !members.is_empty())
        .min_by_key(|members| view.distance_rank(members));
    if let Some(members) = nearest_group {
        return view
            .by_distance(&members, true)
            .into_iter()
            .map(|(name, _, addr)| (name, addr))
            .collect();
    }
    // No mailbox recipient: the local site's Transport servers in random order.
    let mut local: Vec<(String, SocketAddr)> = view
        .by_distance(&view.local_site_servers(), true)
        .into_iter()
        .map(|(name, _, addr)| (name, addr))
        .collect();
    local.shuffle(&mut rand::rng());
    local
}

//! Which Transport server Front End proxies to (reference §2): for mailbox recipients a
//! server holding the recipients' database (the delivery group), chosen from the first
//! 20 recipients; otherwise a Transport server of the local site. Front End never
//! bifurcates: one server per message.

use std::net::SocketAddr;

use mailflow_smtp::{Address, RcptParams};
use rand::seq::IndexedRandom;

use crate::context::ServerContext;
use crate::directory::Recipient;

pub fn choose(ctx: &ServerContext, recipients: &[(Address, RcptParams)]) -> Option<SocketAddr> {
    let dir = &ctx.dir;
    for (to, _) in recipients.iter().take(20) {
        if let Some(Recipient::Mailbox(i)) = dir.lookup(&to.key())
            && let Some(server) = ctx.active.active_server(&dir.mailbox(i).database)
            && let Some(server) = dir.server(&server)
        {
            return ServerContext::transport_endpoint(server);
        }
    }
    // No mailbox recipient: a random Transport server of the local site.
    let local_site = ctx.server.site.clone();
    let candidates: Vec<_> = dir.servers().filter(|s| s.site == local_site).collect();
    candidates
        .choose(&mut rand::rng())
        .and_then(|s| ServerContext::transport_endpoint(s))
}

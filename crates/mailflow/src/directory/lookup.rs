//! Lookups in the loaded organisation: an address to its recipient (the categorizer's
//! Active Directory lookup), and the accessors the rest of the crate reads the
//! directory through (servers, databases, mailboxes, groups, connectors, paths). Reads
//! only what [`super::Directory::parse`] built; imports nothing outside directory/.

use std::path::{Path, PathBuf};

use super::{
    Dag, Database, Directory, Group, Mailbox, Organization, Ports, ReceiveConnector, SendConnector,
    Server, TransportSettings,
};

/// What a recipient address resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    Mailbox(usize),
    Group(usize),
}

impl Directory {
    pub fn is_accepted_domain(&self, domain: &str) -> bool {
        self.accepted.contains(&domain.to_ascii_lowercase())
    }

    /// Looks an address up (case-insensitively), like the categorizer's AD lookup.
    pub fn lookup(&self, address: &str) -> Option<Recipient> {
        let key = address.to_lowercase();
        if let Some(r) = self.addresses.get(&key) {
            return Some(*r);
        }
        // RFC 5321 §4.5.1: postmaster must be accepted for every domain; without a
        // mailbox of that name it reaches administrator@ (else the first mailbox).
        let (local, domain) = key.rsplit_once('@')?;
        if local == "postmaster" && self.is_accepted_domain(domain) {
            let admin = self
                .org
                .mailboxes
                .iter()
                .position(|m| {
                    m.get_ref()
                        .address
                        .to_lowercase()
                        .starts_with("administrator@")
                })
                .or((!self.org.mailboxes.is_empty()).then_some(0))?;
            return Some(Recipient::Mailbox(admin));
        }
        None
    }

    /// The `[organization]` table.
    pub fn organization(&self) -> &Organization {
        &self.org.organization
    }
    /// The `[transport]` settings (organisation-wide).
    pub fn transport(&self) -> &TransportSettings {
        &self.org.transport
    }
    /// The domain the organisation's own notices come from (`postmaster@` it): the
    /// first accepted domain.
    pub fn first_accepted_domain(&self) -> Option<&str> {
        self.org
            .organization
            .accepted_domains
            .first()
            .map(String::as_str)
    }
    pub fn server_count(&self) -> usize {
        self.org.servers.len()
    }
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.org.groups.iter().map(|g| g.get_ref())
    }
    pub fn dags(&self) -> impl Iterator<Item = &Dag> {
        self.org.dags.iter().map(|d| d.get_ref())
    }
    pub fn dag(&self, name: &str) -> Option<&Dag> {
        self.dags().find(|d| d.name.eq_ignore_ascii_case(name))
    }
    pub fn receive_connectors(&self) -> impl Iterator<Item = &ReceiveConnector> {
        self.receive.iter()
    }
    /// The custom receive connectors of one server, in file order.
    pub fn receive_connectors_of<'a>(
        &'a self,
        server: &'a str,
    ) -> impl Iterator<Item = &'a ReceiveConnector> + 'a {
        self.receive_connectors()
            .filter(move |r| r.server.eq_ignore_ascii_case(server))
    }

    pub fn mailbox(&self, i: usize) -> &Mailbox {
        self.org.mailboxes[i].get_ref()
    }
    pub fn group(&self, i: usize) -> &Group {
        self.org.groups[i].get_ref()
    }
    pub fn mailboxes(&self) -> impl Iterator<Item = &Mailbox> {
        self.org.mailboxes.iter().map(|m| m.get_ref())
    }
    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.org.servers.iter().map(|s| s.get_ref())
    }
    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers().find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// This directory with `server`'s ports that the file left to the system (`0`,
    /// lone servers only) replaced by the ports its listeners actually bound, so the
    /// server's own hops (Front End → Transport → Mailbox Delivery) and the CLI reach
    /// them. Ports the file names keep their value.
    pub fn with_bound_ports(mut self, server: &str, bound: &Ports) -> Directory {
        if let Some(s) = self
            .org
            .servers
            .iter_mut()
            .map(|s| s.get_mut())
            .find(|s| s.name.eq_ignore_ascii_case(server))
        {
            s.ports = s.ports.or_bound(bound);
        }
        self
    }
    pub fn databases(&self) -> impl Iterator<Item = &Database> {
        self.org.databases.iter().map(|d| d.get_ref())
    }
    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases().find(|d| d.name.eq_ignore_ascii_case(name))
    }
    pub fn send_connectors(&self) -> impl Iterator<Item = &SendConnector> {
        self.org.send_connectors.iter().map(|c| c.get_ref())
    }

    /// Picks this process's server: the named one, else the only one.
    pub fn choose_server(&self, name: Option<&str>) -> anyhow::Result<&Server> {
        match name {
            Some(n) => self.server(n).ok_or_else(|| {
                anyhow::anyhow!("{}: no server named {n:?} in the organisation", self.source)
            }),
            None => {
                let mut all = self.servers();
                match (all.next(), all.next()) {
                    (Some(s), None) => Ok(s),
                    (None, _) => anyhow::bail!("{}: the organisation has no server", self.source),
                    _ => anyhow::bail!(
                        "{}: the organisation has several servers; say which with --server",
                        self.source
                    ),
                }
            }
        }
    }

    /// Resolves a path from the file (relative to the file's folder).
    pub fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// A server's data folder.
    pub fn data_dir(&self, server: &Server) -> PathBuf {
        self.path(&server.data_dir)
    }

    /// The organisation CA's certificate, when the organisation has one (DESIGN §7).
    pub fn org_ca_certificate_path(&self) -> Option<PathBuf> {
        self.org
            .organization
            .ca_certificate
            .as_deref()
            .map(|p| self.path(p))
    }

    /// The organisation CA's private key, when the file names one.
    pub fn org_ca_key_path(&self) -> Option<PathBuf> {
        self.org
            .organization
            .ca_key
            .as_deref()
            .map(|p| self.path(p))
    }

    /// The organisation secret file (DESIGN §1).
    pub fn secret_path(&self) -> PathBuf {
        match &self.org.organization.secret_file {
            Some(p) => self.path(p),
            None => self.path("secret.key"),
        }
    }
}

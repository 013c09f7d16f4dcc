//! Validation of the organisation file: its raw shape checked once, at load, every
//! error named by file, line and key (DESIGN §2), all of them reported together.
//! [`super::Directory::parse`] runs it before it indexes anything. Imports nothing
//! outside directory/.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::config::*;
use super::{ca_file, transport_rules};

/// A configuration error that names file, line and key (DESIGN §2).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

/// All the errors of one file, each on its own line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// A remote IP range: `10.0.0.0/8`, `2001:db8::/32` or one address.
pub fn parse_ip_range(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// The error of a file that is not TOML of the organisation file's shape.
pub(super) fn syntax_error(text: &str, source: &str, e: &toml::de::Error) -> ConfigErrors {
    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
    let key = e
        .span()
        .map(|s| key_at(text, s.start))
        .unwrap_or_else(|| "-".into());
    ConfigErrors(vec![ConfigError {
        file: source.into(),
        line,
        key,
        message: e.message().trim().to_string(),
    }])
}

/// Every error of `org`, read from `text` of `source` (relative paths start at
/// `base_dir`), or none.
pub(super) fn validate(
    org: &OrgFile,
    text: &str,
    source: &str,
    base_dir: &Path,
) -> Result<(), ConfigErrors> {
    let mut v = Validator {
        text,
        base_dir,
        source,
        errors: Vec::new(),
    };
    v.validate(org);
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(v.errors))
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key written at a byte offset (for parse errors), e.g. `max_message_size`.
fn key_at(text: &str, offset: usize) -> String {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    if key.is_empty() {
        "-".into()
    } else {
        key.trim_matches(['[', ']']).to_string()
    }
}

struct Validator<'a> {
    text: &'a str,
    /// Where relative paths in the file start (the file's folder).
    base_dir: &'a Path,
    source: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    /// Records an error on `key` of the table entry that starts at `span`.
    fn err<T>(&mut self, entry: &toml::Spanned<T>, table: &str, key: &str, message: String) {
        self.err_at(entry.span(), table, key, message);
    }

    fn err_at(&mut self, span: std::ops::Range<usize>, table: &str, key: &str, message: String) {
        let line = self.key_line(span, key);
        self.errors.push(ConfigError {
            file: self.source.into(),
            line,
            key: format!("{table}.{key}"),
            message,
        });
    }

    /// The line of `key` inside an entry (the entry's header line when not written).
    fn key_line(&self, span: std::ops::Range<usize>, key: &str) -> usize {
        let header = line_of(self.text, span.start);
        for (i, line) in self.text.lines().enumerate().skip(header) {
            let t = line.trim_start();
            if t.starts_with('[') {
                break;
            }
            if let Some(rest) = t.strip_prefix(key)
                && rest.trim_start().starts_with('=')
            {
                return i + 1;
            }
        }
        header
    }

    fn validate(&mut self, org: &OrgFile) {
        let sites: HashSet<&str> = org
            .sites
            .iter()
            .map(|s| s.get_ref().name.as_str())
            .collect();
        let servers: HashSet<String> = org
            .servers
            .iter()
            .map(|s| s.get_ref().name.to_lowercase())
            .collect();
        let databases: HashSet<String> = org
            .databases
            .iter()
            .map(|d| d.get_ref().name.to_lowercase())
            .collect();
        if org.organization.accepted_domains.is_empty() {
            self.errors.push(ConfigError {
                file: self.source.into(),
                line: self
                    .text
                    .lines()
                    .position(|l| l.trim() == "[organization]")
                    .map_or(1, |i| i + 1),
                key: "organization.accepted_domains".into(),
                message: "at least one accepted domain is required".into(),
            });
        }
        if org.servers.is_empty() {
            self.errors.push(ConfigError {
                file: self.source.into(),
                line: 1,
                key: "servers".into(),
                message: "the organisation needs at least one [[servers]] entry".into(),
            });
        }
        let mut seen = HashSet::new();
        for s in &org.servers {
            let v = s.get_ref();
            if !seen.insert(v.name.to_lowercase()) {
                self.err(
                    s,
                    "servers",
                    "name",
                    format!("duplicate server name {:?}", v.name),
                );
            }
            if let Some(site) = &v.site
                && !sites.contains(site.as_str())
            {
                self.err(s, "servers", "site", format!("unknown site {site:?}"));
            }
            if v.address.value().is_none() {
                self.err(
                    s,
                    "servers",
                    "address",
                    format!("{:?} is not an IP address", v.address.text()),
                );
            }
            if let Some(b) = &v.bind
                && b.value().is_none()
            {
                let b = b.text();
                self.err(s, "servers", "bind", format!("{b:?} is not an IP address"));
            }
            for (set, missing) in [
                (&v.frontend_tls_certificate, &v.frontend_tls_key),
                (&v.frontend_tls_key, &v.frontend_tls_certificate),
            ] {
                if set.is_some() && missing.is_none() {
                    self.err(
                        s,
                        "servers",
                        "frontend_tls_certificate",
                        "frontend_tls_certificate and frontend_tls_key go together".into(),
                    );
                    break;
                }
            }
            let p = v.ports;
            let ports = p.all();
            // Port 0 (the system picks, `<data_dir>/listeners.json` tells which) only
            // for a lone server: another server could not know where to reach it.
            if org.servers.len() > 1 && ports.contains(&0) {
                self.err(
                    s,
                    "servers",
                    "ports",
                    "port 0 (chosen by the system) is only for an organisation of one server: the other servers must know where to reach this one".into(),
                );
            }
            let named: Vec<u16> = ports.iter().copied().filter(|&p| p != 0).collect();
            let unique: HashSet<u16> = named.iter().copied().collect();
            if unique.len() != named.len() {
                self.err(
                    s,
                    "servers",
                    "ports",
                    "two listeners of one server share a port".into(),
                );
            }
        }
        for d in &org.dags {
            for m in &d.get_ref().servers {
                if !servers.contains(&m.to_lowercase()) {
                    self.err(d, "dags", "servers", format!("unknown server {m:?}"));
                }
            }
        }
        let mut seen = HashSet::new();
        for d in &org.databases {
            let v = d.get_ref();
            if !seen.insert(v.name.to_lowercase()) {
                self.err(
                    d,
                    "databases",
                    "name",
                    format!("duplicate database name {:?}", v.name),
                );
            }
            if v.copies.is_empty() {
                self.err(
                    d,
                    "databases",
                    "copies",
                    "a database needs at least one copy".into(),
                );
            }
            for c in &v.copies {
                if !servers.contains(&c.to_lowercase()) {
                    self.err(d, "databases", "copies", format!("unknown server {c:?}"));
                }
            }
            if let StoreSpec::Unknown(store) = &v.store {
                self.err(
                    d,
                    "databases",
                    "store",
                    format!("{store:?}: expected \"sqlite\" or \"postgres://…\""),
                );
            }
        }
        let mut seen_addr = HashSet::new();
        let accepted: Vec<String> = org
            .organization
            .accepted_domains
            .iter()
            .map(|d| d.to_lowercase())
            .collect();
        let mut check_addr =
            |v: &mut Self, span: std::ops::Range<usize>, table: &str, key: &str, addr: &str| {
                if mailflow_smtp::Address::parse(addr, true).is_err() {
                    v.err_at(
                        span.clone(),
                        table,
                        key,
                        format!("{addr:?} is not an email address"),
                    );
                    return;
                }
                let domain = addr.rsplit('@').next().unwrap_or("").to_lowercase();
                if !accepted.contains(&domain) {
                    v.err_at(
                        span.clone(),
                        table,
                        key,
                        format!("{addr:?} is not in an accepted domain"),
                    );
                }
                if !seen_addr.insert(addr.to_lowercase()) {
                    v.err_at(
                        span.clone(),
                        table,
                        key,
                        format!("address {addr:?} is used twice"),
                    );
                }
            };
        for m in &org.mailboxes {
            let v = m.get_ref();
            check_addr(self, m.span(), "mailboxes", "address", &v.address);
            for a in &v.aliases {
                check_addr(self, m.span(), "mailboxes", "aliases", a);
            }
            if !databases.contains(&v.database.to_lowercase()) {
                self.err(
                    m,
                    "mailboxes",
                    "database",
                    format!("unknown database {:?}", v.database),
                );
            }
        }
        for g in &org.groups {
            let v = g.get_ref();
            check_addr(self, g.span(), "groups", "address", &v.address);
            for member in &v.members {
                if mailflow_smtp::Address::parse(member, true).is_err() {
                    self.err(
                        g,
                        "groups",
                        "members",
                        format!("{member:?} is not an email address"),
                    );
                }
            }
            if let Some(s) = &v.expansion_server
                && !servers.contains(&s.to_lowercase())
            {
                self.err(
                    g,
                    "groups",
                    "expansion_server",
                    format!("unknown server {s:?}"),
                );
            }
        }
        for c in &org.send_connectors {
            let v = c.get_ref();
            if v.address_spaces.is_empty() {
                self.err(
                    c,
                    "send_connectors",
                    "address_spaces",
                    "at least one address space is required".into(),
                );
            }
            for s in &v.source_servers {
                if !servers.contains(&s.to_lowercase()) {
                    self.err(
                        c,
                        "send_connectors",
                        "source_servers",
                        format!("unknown server {s:?}"),
                    );
                }
            }
            if v.tls != "opportunistic" && v.tls != "required" {
                self.err(
                    c,
                    "send_connectors",
                    "tls",
                    format!("{:?}: expected \"opportunistic\" or \"required\"", v.tls),
                );
            }
            let explicit = v.tls_auth_level.as_deref();
            if let Some(value) = explicit
                && TlsAuthLevel::parse(value).is_none()
            {
                self.err(
                    c,
                    "send_connectors",
                    "tls_auth_level",
                    format!(
                        "{value:?}: expected \"encryption_only\", \"certificate_validation\" or \"domain_validation\""
                    ),
                );
            }
            let level = explicit.map_or(Some(v.tls_auth_level()), TlsAuthLevel::parse);
            if v.smart_host_auth.is_some() && level == Some(TlsAuthLevel::EncryptionOnly) {
                self.err(c, "send_connectors", "tls_auth_level", "smart_host_auth needs tls_auth_level = \"certificate_validation\" or \"domain_validation\": with encryption_only the certificate is not checked, so the credentials could go to whoever answers".into());
            }
            if v.tls_domain.is_some() && level != Some(TlsAuthLevel::DomainValidation) {
                self.err(
                    c,
                    "send_connectors",
                    "tls_domain",
                    "tls_domain is only used with tls_auth_level = \"domain_validation\"".into(),
                );
            }
            if let Some(d) = &v.tls_domain
                && rustls::pki_types::ServerName::try_from(d.as_str()).is_err()
            {
                self.err(
                    c,
                    "send_connectors",
                    "tls_domain",
                    format!("{d:?} is not a host name"),
                );
            }
            if let Some(f) = &v.tls_ca_file {
                if level == Some(TlsAuthLevel::EncryptionOnly) {
                    self.err(c, "send_connectors", "tls_ca_file", "tls_ca_file is only used with tls_auth_level = \"certificate_validation\" or \"domain_validation\"".into());
                }
                let path = if Path::new(f).is_absolute() {
                    PathBuf::from(f)
                } else {
                    self.base_dir.join(f)
                };
                if let Err(e) = ca_file::read_ca_file(&path) {
                    self.err(c, "send_connectors", "tls_ca_file", e);
                }
            }
        }
        // Addresses already taken on each server: its own listeners, then each custom
        // receive connector in file order (port 0 is the system's pick, never shared).
        let mut taken: Vec<(String, std::net::SocketAddr)> = Vec::new();
        for s in org.servers.iter().map(|s| s.get_ref()) {
            let ip = s
                .bind
                .as_ref()
                .map_or(s.address.value(), |b| b.value())
                .copied();
            if let Some(ip) = ip {
                for port in s.ports.all().into_iter().filter(|&p| p != 0) {
                    taken.push((s.name.to_lowercase(), std::net::SocketAddr::new(ip, port)));
                }
            }
        }
        for r in &org.receive_connectors {
            let v = r.get_ref();
            if let Ok(bind) = v.bind.parse::<std::net::SocketAddr>()
                && bind.port() != 0
            {
                let server = v.server.to_lowercase();
                let clash = |(s, a): &(String, std::net::SocketAddr)| {
                    *s == server
                        && a.port() == bind.port()
                        && (a.ip() == bind.ip()
                            || a.ip().is_unspecified()
                            || bind.ip().is_unspecified())
                };
                if taken.iter().any(clash) {
                    self.err(
                        r,
                        "receive_connectors",
                        "bind",
                        format!(
                            "{:?}: another listener of server {:?} already binds this port",
                            v.bind, v.server
                        ),
                    );
                }
                taken.push((server, bind));
            }
            if !servers.contains(&v.server.to_lowercase()) {
                self.err(
                    r,
                    "receive_connectors",
                    "server",
                    format!("unknown server {:?}", v.server),
                );
            }
            if v.bind.parse::<std::net::SocketAddr>().is_err() {
                self.err(
                    r,
                    "receive_connectors",
                    "bind",
                    format!("{:?} is not IP:port", v.bind),
                );
            }
            for range in &v.remote_ranges {
                if parse_ip_range(range).is_none() {
                    self.err(
                        r,
                        "receive_connectors",
                        "remote_ranges",
                        format!("{range:?} is not an IP range like \"10.0.0.0/8\""),
                    );
                }
            }
            let relays = v
                .permissions
                .iter()
                .any(|p| p.eq_ignore_ascii_case("relay"));
            if relays && v.remote_ranges.is_empty() {
                self.err(r, "receive_connectors", "remote_ranges", "the relay permission needs remote_ranges (an anonymous relay open to everyone is an open relay)".into());
            }
            if v.service == "transport" && v.remote_ranges.is_empty() {
                self.err(r, "receive_connectors", "remote_ranges", "a transport-service connector accepts mail without authentication, so it needs remote_ranges (never an open relay)".into());
            }
            for p in &v.permissions {
                if !["anonymous", "users", "relay"].contains(&p.to_ascii_lowercase().as_str()) {
                    self.err(
                        r,
                        "receive_connectors",
                        "permissions",
                        format!("{p:?}: expected \"anonymous\", \"users\" or \"relay\""),
                    );
                }
            }
            if let Some(tls) = &v.tls
                && tls != "implicit"
                && tls != "starttls"
            {
                self.err(
                    r,
                    "receive_connectors",
                    "tls",
                    format!("{tls:?}: expected \"implicit\" or \"starttls\""),
                );
            }
            if v.service != "frontend" && v.service != "transport" {
                self.err(
                    r,
                    "receive_connectors",
                    "service",
                    format!("{:?}: expected \"frontend\" or \"transport\"", v.service),
                );
            }
        }
        for l in &org.site_links {
            for s in &l.get_ref().sites {
                if !sites.contains(s.as_str()) {
                    self.err(l, "site_links", "sites", format!("unknown site {s:?}"));
                }
            }
        }
        self.validate_topology(org);
        for rule in &org.transport_rules {
            let parsed: Result<transport_rules::Rule, _> =
                toml::Value::Table(rule.get_ref().clone()).try_into();
            match parsed {
                Err(e) => self.err(
                    rule,
                    "transport_rules",
                    "name",
                    e.message().trim().to_string(),
                ),
                Ok(r) if r.mode != "enforce" && r.mode != "audit" => self.err(
                    rule,
                    "transport_rules",
                    "mode",
                    format!("{:?}: expected \"enforce\" or \"audit\"", r.mode),
                ),
                Ok(_) => {}
            }
        }
    }

    /// Reference §4: every server in a site (once sites exist), every site reachable
    /// over site links, and a database with several copies inside one DAG.
    fn validate_topology(&mut self, org: &OrgFile) {
        if !org.sites.is_empty() {
            for s in &org.servers {
                if s.get_ref().site.is_none() {
                    self.err(
                        s,
                        "servers",
                        "name",
                        format!(
                            "server {:?} is in no site (add site = \"…\")",
                            s.get_ref().name
                        ),
                    );
                }
            }
        }
        // Sites with servers must reach each other; a site with no link is unreachable.
        let used: Vec<&str> = org
            .servers
            .iter()
            .filter_map(|s| s.get_ref().site.as_deref())
            .collect();
        if let Some(first) = used.first() {
            let mut reached: HashSet<&str> = HashSet::from([*first]);
            let mut changed = true;
            while changed {
                changed = false;
                for l in &org.site_links {
                    let l = l.get_ref();
                    if l.sites.iter().any(|s| reached.contains(s.as_str())) {
                        for s in &l.sites {
                            changed |= reached.insert(s.as_str());
                        }
                    }
                }
            }
            for site in &org.sites {
                let name = site.get_ref().name.as_str();
                if used.contains(&name) && !reached.contains(name) {
                    self.err(
                        site,
                        "sites",
                        "name",
                        format!(
                            "site {name:?} is unreachable: no site link joins it to site {first:?}"
                        ),
                    );
                }
            }
        }
        let dag_of = |server: &str| {
            org.dags
                .iter()
                .find(|d| {
                    d.get_ref()
                        .servers
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(server))
                })
                .map(|d| d.get_ref().name.clone())
        };
        for d in &org.databases {
            let v = d.get_ref();
            if v.copies.len() < 2 {
                continue;
            }
            let dag = dag_of(&v.copies[0]);
            for c in &v.copies {
                if dag.is_none() || dag_of(c) != dag {
                    let msg = match &dag {
                        Some(dag) => {
                            format!("copy on {c:?} is outside the DAG {dag:?} of the first copy")
                        }
                        None => format!(
                            "a database with several copies needs its servers in one DAG ({:?} is in none)",
                            v.copies[0]
                        ),
                    };
                    self.err(d, "databases", "copies", msg);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Directory, Recipient, config};
    use super::*;

    const GOOD: &str = r#"
[organization]
name = "contoso"
accepted_domains = ["contoso.test"]
max_message_size = "10MB"

[[servers]]
name = "MBX1"
fqdn = "mbx1.contoso.test"
address = "127.0.0.1"
data_dir = "data/MBX1"

[[databases]]
name = "DB01"
copies = ["MBX1"]

[[mailboxes]]
address = "alice@contoso.test"
database = "DB01"
aliases = ["a.smith@contoso.test"]

[[groups]]
address = "sales@contoso.test"
members = ["alice@contoso.test", "ext@fabrikam.test"]
"#;

    #[test]
    fn loads_and_resolves() {
        let d = Directory::parse(GOOD, "org.toml", PathBuf::from("/x")).unwrap();
        assert_eq!(
            d.lookup("A.Smith@Contoso.test"),
            Some(Recipient::Mailbox(0))
        );
        assert_eq!(d.lookup("sales@contoso.test"), Some(Recipient::Group(0)));
        assert!(d.is_accepted_domain("CONTOSO.test"));
        assert_eq!(d.org.organization.max_message_size, 10 * 1024 * 1024);
        assert_eq!(
            d.data_dir(d.choose_server(None).unwrap()),
            PathBuf::from("/x/data/MBX1")
        );
    }

    #[test]
    fn port_zero_is_for_a_lone_server_and_named_ports_are_never_shared() {
        let ports = |p: &str| format!("[servers.ports]\n{p}\n");
        let with = |mbx1: &str, extra: &str| {
            GOOD.replace(
                "data_dir = \"data/MBX1\"\n",
                &format!("data_dir = \"data/MBX1\"\n{mbx1}"),
            ) + extra
        };
        let mbx2 = |p: &str| {
            format!(
                "\n[[servers]]\nname = \"MBX2\"\nfqdn = \"mbx2.contoso.test\"\naddress = \"127.0.0.2\"\ndata_dir = \"data/MBX2\"\n{p}"
            )
        };
        let connector = |bind: &str| {
            format!(
                "\n[[receive_connectors]]\nname = \"Apps\"\nserver = \"MBX1\"\nbind = \"{bind}\"\nservice = \"frontend\"\n"
            )
        };
        let all_zero = ports(
            "frontend = 0\nclient_frontend = 0\nclient_proxy = 0\noutbound_proxy = 0\ntransport = 0\nmailbox_delivery = 0\nadmin = 0",
        );
        // (case, file, the error's key or None when the file loads)
        let cases: Vec<(&str, String, Option<&str>)> = vec![
            ("lone server, every port 0", with(&all_zero, ""), None),
            (
                "lone server, some ports 0",
                with(&ports("frontend = 0\nadmin = 0"), ""),
                None,
            ),
            (
                "two servers, one with port 0",
                with(&ports("frontend = 0"), &mbx2("")),
                Some("ports"),
            ),
            (
                "two servers, other one with port 0",
                with("", &mbx2(&ports("admin = 0"))),
                Some("ports"),
            ),
            ("two servers, explicit ports", with("", &mbx2("")), None),
            (
                "two listeners on one port",
                with(&ports("frontend = 2525"), ""),
                Some("ports"),
            ),
            (
                "connector on a server port",
                with("", &connector("127.0.0.1:587")),
                Some("bind"),
            ),
            (
                "connector on 0.0.0.0 and a server port",
                with("", &connector("0.0.0.0:25")),
                Some("bind"),
            ),
            (
                "connector on another address",
                with("", &connector("127.0.0.9:587")),
                None,
            ),
            (
                "connector on port 0",
                with(&all_zero, &connector("127.0.0.1:0")),
                None,
            ),
            (
                "two connectors on one port",
                with(
                    "",
                    &(connector("127.0.0.1:2526")
                        + &connector("127.0.0.1:2526").replace("Apps", "Apps2")),
                ),
                Some("bind"),
            ),
        ];
        for (case, file, want) in cases {
            let got = Directory::parse(&file, "org.toml", PathBuf::from("."));
            match (want, got) {
                (None, Ok(_)) => {}
                (None, Err(e)) => panic!("{case}: {e}"),
                (Some(_), Ok(_)) => panic!("{case}: loaded"),
                (Some(key), Err(e)) => {
                    assert!(e.0.iter().any(|e| e.key.ends_with(key)), "{case}: {e}")
                }
            }
        }
    }

    #[test]
    fn bound_ports_replace_only_the_zeros() {
        let file = GOOD.replace(
            "data_dir = \"data/MBX1\"\n",
            "data_dir = \"data/MBX1\"\n[servers.ports]\nfrontend = 0\nadmin = 0\n",
        );
        let d = Directory::parse(&file, "org.toml", PathBuf::from(".")).unwrap();
        let bound = config::Ports {
            frontend: 40001,
            client_frontend: 40002,
            client_proxy: 40003,
            outbound_proxy: 40004,
            transport: 40005,
            mailbox_delivery: 40006,
            admin: 40007,
        };
        let d = d.with_bound_ports("mbx1", &bound);
        let p = d.server("MBX1").unwrap().ports;
        assert_eq!((p.frontend, p.admin), (40001, 40007));
        assert_eq!((p.transport, p.mailbox_delivery), (2525, 475));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let bad = GOOD.replace("database = \"DB01\"", "database = \"DB99\"");
        let e = Directory::parse(&bad, "org.toml", PathBuf::from(".")).unwrap_err();
        let line = bad.lines().position(|l| l.contains("DB99")).unwrap() + 1;
        assert_eq!(
            e.0[0].to_string(),
            format!("org.toml:{line}: mailboxes.database: unknown database \"DB99\"")
        );

        let bad = GOOD.replace("max_message_size = \"10MB\"", "max_message_size = \"lots\"");
        let e = Directory::parse(&bad, "org.toml", PathBuf::from(".")).unwrap_err();
        assert_eq!(e.0[0].line, 5);
        assert_eq!(e.0[0].key, "max_message_size");

        let bad = GOOD.replace("fqdn =", "fqdm =");
        let e = Directory::parse(&bad, "org.toml", PathBuf::from(".")).unwrap_err();
        assert!(e.to_string().contains("fqdm"), "{e}");
    }

    #[test]
    fn addresses_and_stores_are_typed_at_load_and_bad_ones_named() {
        let d = Directory::parse(GOOD, "org.toml", PathBuf::from(".")).unwrap();
        let s = d.server("MBX1").unwrap();
        assert_eq!(s.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
        assert_eq!(s.bind_ip(), None);
        assert_eq!(d.database("DB01").unwrap().store, StoreSpec::Sqlite);

        let with = |from: &str, to: &str| GOOD.replace(from, to);
        let table: [(String, &str, &str); 4] = [
            (
                with(
                    "data_dir = \"data/MBX1\"",
                    "data_dir = \"d\"\nbind = \"::\"",
                ),
                "",
                "",
            ),
            (
                with("address = \"127.0.0.1\"", "address = \"mbx1\""),
                "servers.address",
                "\"mbx1\" is not an IP address",
            ),
            (
                with(
                    "data_dir = \"data/MBX1\"",
                    "data_dir = \"d\"\nbind = \"any\"",
                ),
                "servers.bind",
                "\"any\" is not an IP address",
            ),
            (
                with(
                    "copies = [\"MBX1\"]",
                    "copies = [\"MBX1\"]\nstore = \"mysql\"",
                ),
                "databases.store",
                "\"mysql\": expected \"sqlite\" or \"postgres://…\"",
            ),
        ];
        for (file, key, message) in table {
            match Directory::parse(&file, "org.toml", PathBuf::from(".")) {
                Ok(d) if key.is_empty() => {
                    let bind = d.server("MBX1").unwrap().bind_ip();
                    assert_eq!(bind, Some(std::net::IpAddr::from([0u16; 8])));
                }
                Ok(_) => panic!("{key} accepted"),
                Err(e) => {
                    assert_eq!(e.0[0].key, key, "{e}");
                    assert_eq!(e.0[0].message, message, "{e}");
                }
            }
        }
    }

    #[test]
    fn send_connector_tls_keys_are_checked_at_load() {
        let with = |keys: &str| {
            format!(
                "{GOOD}\n[[send_connectors]]\nname = \"Relay\"\naddress_spaces = [{{ domain = \"*\" }}]\nsmart_hosts = [\"relay.test\"]\n{keys}\n"
            )
        };
        let keys_of =
            |keys: &str| match Directory::parse(&with(keys), "org.toml", PathBuf::from(".")) {
                Ok(_) => Vec::new(),
                Err(e) => e.0.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
            };
        assert!(
            keys_of("tls_auth_level = \"domain_validation\"\ntls_domain = \"relay.test\"")
                .is_empty()
        );
        assert_eq!(
            keys_of("tls_auth_level = \"strict\""),
            ["send_connectors.tls_auth_level"]
        );
        // Credentials to an unchecked certificate: refused, whatever `tls` says.
        assert_eq!(
            keys_of(
                "tls = \"required\"\ntls_auth_level = \"encryption_only\"\nsmart_host_auth = { username = \"u\", password = \"p\" }"
            ),
            ["send_connectors.tls_auth_level"]
        );
        // A file from before the key: credentials imply certificate_validation.
        let creds = "tls = \"required\"\nsmart_host_auth = { username = \"u\", password = \"p\" }";
        assert!(keys_of(creds).is_empty());
        let dir = Directory::parse(&with(creds), "org.toml", PathBuf::from(".")).unwrap();
        let connector = dir.send_connectors().next().unwrap();
        assert_eq!(
            connector.tls_auth_level(),
            TlsAuthLevel::CertificateValidation
        );
        assert_eq!(
            keys_of("tls_auth_level = \"certificate_validation\"\ntls_domain = \"relay.test\""),
            ["send_connectors.tls_domain"]
        );
        let e = Directory::parse(
            &with("tls_auth_level = \"certificate_validation\"\ntls_ca_file = \"missing-ca.pem\""),
            "org.toml",
            PathBuf::from("/nonexistent"),
        )
        .unwrap_err();
        assert_eq!(e.0[0].key, "send_connectors.tls_ca_file");
        assert!(e.0[0].message.contains("missing-ca.pem"), "{e}");
    }
}

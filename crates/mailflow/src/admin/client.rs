//! The CLI's side of the admin API (and Active Manager's, server to server): the
//! server's address from the organisation file, HTTPS verified against the
//! organisation CA when the server listens off loopback, and a bearer token: the
//! operator's own (`MAILFLOW_ADMIN_TOKEN`), else one minted for each request with the
//! organisation secret, valid five minutes. The CLI keeps only argument handling
//! (`cli::admin_client_for`); this imports no service and not cli.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::admin::tokens::AdminKey;
use crate::directory::{Directory, Server};

/// The environment variable an operator's token is read from.
pub const TOKEN_ENV: &str = "MAILFLOW_ADMIN_TOKEN";

/// How the client proves who it is.
enum Credential {
    /// An operator token from `mailflow admin token create`.
    Operator(String),
    /// The organisation secret's admin key; `label` names the minter in server logs.
    Secret { key: AdminKey, label: String },
}

pub struct AdminClient {
    pub base: String,
    credential: Credential,
    agent: ureq::Agent,
}

impl AdminClient {
    /// For the CLI: `MAILFLOW_ADMIN_TOKEN` when set, else the organisation secret.
    pub fn new(dir: &Directory, server: &Server) -> anyhow::Result<AdminClient> {
        let credential = match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => Credential::Operator(t.trim().to_string()),
            _ => Credential::Secret {
                key: AdminKey::load(&dir.secret_path()).map_err(|e| {
                    anyhow::anyhow!(
                        "the admin API needs a token: set {TOKEN_ENV} to one from \
                         `mailflow admin token create`, or run where the organisation secret \
                         can be read ({e})"
                    )
                })?,
                label: "cli".into(),
            },
        };
        AdminClient::build(dir, server, credential, 10)
    }

    /// For a server talking to another (Active Manager): tokens minted with the
    /// organisation secret, labelled with this server's name; `timeout` in seconds.
    pub fn for_peer(
        dir: &Directory,
        server: &Server,
        me: &str,
        timeout: u64,
    ) -> anyhow::Result<AdminClient> {
        let key = AdminKey::load(&dir.secret_path())?;
        AdminClient::build(
            dir,
            server,
            Credential::Secret {
                key,
                label: me.to_string(),
            },
            timeout,
        )
    }

    fn build(
        dir: &Directory,
        server: &Server,
        credential: Credential,
        timeout: u64,
    ) -> anyhow::Result<AdminClient> {
        let (listen, host) = endpoint(server);
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(timeout)))
            .http_status_as_error(false);
        let scheme = if crate::admin::uses_tls(listen) {
            config = config.tls_config(org_ca_tls(dir, server)?);
            "https"
        } else {
            "http"
        };
        Ok(AdminClient {
            base: format!(
                "{scheme}://{}",
                SocketAddr::new(host, admin_port(dir, server))
            ),
            credential,
            agent: config.build().into(),
        })
    }

    fn token(&self) -> String {
        match &self.credential {
            Credential::Operator(t) => t.clone(),
            Credential::Secret { key, label } => {
                key.mint(label, crate::admin::tokens::SECRET_TOKEN_LIFETIME)
            }
        }
    }

    fn check(
        &self,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let mut resp = r.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the server's admin API at {}: {e} (is `mailflow serve` running?)",
                self.base
            )
        })?;
        if !resp.status().is_success() {
            anyhow::bail!(
                "{}",
                resp.body_mut()
                    .read_to_string()
                    .unwrap_or_default()
                    .trim_end()
            );
        }
        Ok(resp)
    }

    pub fn get(&self, path: &str) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{path}", self.base);
        self.check(
            self.agent
                .get(&url)
                .header("Authorization", &format!("Bearer {}", self.token()))
                .call(),
        )
    }

    /// GET with a query string (`pairs` are escaped by the HTTP client).
    pub fn get_query(
        &self,
        path: &str,
        pairs: &[(&str, String)],
    ) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token()));
        for (k, v) in pairs {
            request = request.query(*k, v);
        }
        self.check(request.call())
    }

    pub fn post(&self, path: &str) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{path}", self.base);
        self.check(
            self.agent
                .post(&url)
                .header("Authorization", &format!("Bearer {}", self.token()))
                .send_empty(),
        )
    }
}

/// Where a server's admin API listens (its `bind`, else its `address`), and the IP to
/// connect to: the listening one, or `address` when it listens on every interface.
fn endpoint(server: &Server) -> (IpAddr, IpAddr) {
    let listen = server.listen_ip();
    let host = server
        .bind_ip()
        .filter(|b| !b.is_unspecified())
        .unwrap_or(server.ip());
    (listen, host)
}

/// TLS that trusts the organisation CA alone: the admin API's certificate must chain
/// to it and name the address connected to. Never an unverified certificate.
fn org_ca_tls(dir: &Directory, server: &Server) -> anyhow::Result<ureq::tls::TlsConfig> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};
    let ca = dir.org_ca_certificate_path().ok_or_else(|| {
        anyhow::anyhow!(
            "{}'s admin API listens off loopback, so it is HTTPS, and the organisation file {} \
             has no [organization] ca_certificate to verify it with",
            server.name,
            dir.source
        )
    })?;
    let pem = std::fs::read(&ca)
        .map_err(|e| anyhow::anyhow!("cannot read the organisation CA {}: {e}", ca.display()))?;
    let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", ca.display());
    }
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::new_with_certs(&certs))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}

/// A queue or message identity in a URL path (`MBX1\3` → `MBX1%5C3`).
pub fn escape(identity: &str) -> String {
    identity.replace('\\', "%5C")
}

/// The admin API's port: the file's, or with `admin = 0` (a lone server whose ports the
/// system picks) the one the running server recorded in `<data_dir>/listeners.json`.
fn admin_port(dir: &Directory, server: &Server) -> u16 {
    if server.ports.admin != 0 {
        return server.ports.admin;
    }
    crate::net::listeners::read_listeners(&dir.data_dir(server))
        .filter(|l| l.server.eq_ignore_ascii_case(&server.name))
        .map_or(0, |l| l.ports.admin)
}

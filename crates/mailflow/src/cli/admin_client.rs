//! The CLI's side of the admin API: the server's address from the organisation file,
//! and the bearer token derived from the organisation secret (only those who can read
//! the secret can manage the servers).

use crate::directory::{Directory, Server};
use crate::net::orgauth::OrgSecret;

use super::{Global, load_directory};

pub struct AdminClient {
    pub base: String,
    token: String,
    agent: ureq::Agent,
}

impl AdminClient {
    /// The client for the chosen server (`--server`, else the only one).
    pub fn for_global(g: &Global) -> anyhow::Result<AdminClient> {
        let dir = load_directory(g)?;
        let server = dir.choose_server(g.server.as_deref())?.clone();
        AdminClient::new(&dir, &server)
    }

    pub fn new(dir: &Directory, server: &Server) -> anyhow::Result<AdminClient> {
        let secret = OrgSecret::load(&dir.secret_path(), false)
            .map_err(|e| anyhow::anyhow!("the admin API needs the organisation secret: {e}"))?;
        Ok(AdminClient::with_secret(server, &secret, 10))
    }

    /// For a server talking to another (Active Manager); `timeout` in seconds.
    pub fn with_secret(server: &Server, secret: &OrgSecret, timeout: u64) -> AdminClient {
        let host = server
            .bind
            .as_deref()
            .filter(|b| *b != "0.0.0.0")
            .unwrap_or(&server.address);
        AdminClient {
            base: format!("http://{host}:{}", server.ports.admin),
            token: secret.admin_token(),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(std::time::Duration::from_secs(timeout)))
                .http_status_as_error(false)
                .build()
                .into(),
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
            anyhow::bail!("{}", resp.body_mut().read_to_string().unwrap_or_default());
        }
        Ok(resp)
    }

    pub fn get(&self, path: &str) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{path}", self.base);
        self.check(
            self.agent
                .get(&url)
                .header("Authorization", &format!("Bearer {}", self.token))
                .call(),
        )
    }

    pub fn post(&self, path: &str) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{path}", self.base);
        self.check(
            self.agent
                .post(&url)
                .header("Authorization", &format!("Bearer {}", self.token))
                .send_empty(),
        )
    }
}

/// A queue or message identity in a URL path (`MBX1\3` → `MBX1%5C3`).
pub fn escape(identity: &str) -> String {
    identity.replace('\\', "%5C")
}

//! The built-in organisation of DESIGN §1 and the single-server file `mailflow init`
//! writes: both come from one template so they never drift apart.

use super::Ports;

/// What a single-server organisation file needs.
pub struct SingleServer<'a> {
    pub domain: &'a str,
    pub server: &'a str,
    pub mailboxes: &'a [String],
    pub ports: Ports,
    pub address: &'a str,
    pub data_dir: &'a str,
    pub secret_file: &'a str,
    pub tls: Option<(&'a str, &'a str)>,
    /// The organisation CA's certificate and key (DESIGN §7), when there is one.
    pub ca: Option<(&'a str, &'a str)>,
}

/// The built-in organisation: `contoso.test`, server `MBX1`, mailboxes `administrator@`
/// and `user1@`, Exchange's ports plus 10000 on 127.0.0.1 (admin on 8025), data in
/// `./mailflow-data`.
pub fn builtin_text() -> String {
    let mailboxes = [
        "administrator@contoso.test".to_string(),
        "user1@contoso.test".to_string(),
    ];
    render(&SingleServer {
        domain: "contoso.test",
        server: "MBX1",
        mailboxes: &mailboxes,
        ports: Ports {
            frontend: 10025,
            client_frontend: 10587,
            client_proxy: 10465,
            outbound_proxy: 10717,
            transport: 12525,
            mailbox_delivery: 10475,
            admin: 8025,
        },
        address: "127.0.0.1",
        data_dir: "mailflow-data",
        secret_file: "mailflow-data/secret.key",
        tls: None,
        ca: None,
    })
}

/// Renders a working single-server organisation file.
pub fn render(s: &SingleServer) -> String {
    let p = s.ports;
    let server = s.server;
    let fqdn = format!("{}.{}", server.to_lowercase(), s.domain);
    let mut out = format!(
        r#"# mailflow organisation file (see docs/configuration.md)
[organization]
name = "{org}"
secret_file = "{secret}"
{ca}accepted_domains = ["{domain}"]
max_message_size = "10MB"
max_recipients_per_message = 500

[[sites]]
name = "Default-First-Site-Name"

[[servers]]
name = "{server}"
site = "Default-First-Site-Name"
fqdn = "{fqdn}"
address = "{address}"
data_dir = "{data_dir}"
"#,
        org = s.domain.split('.').next().unwrap_or(s.domain),
        secret = s.secret_file,
        ca =
            s.ca.map(|(cert, key)| format!(
                "# The organisation CA: it signs every server's certificate; servers verify\n\
                 # each other against it (docs/operations.md, \"Certificates\").\n\
                 ca_certificate = \"{cert}\"\nca_key = \"{key}\"\n"
            ))
            .unwrap_or_default(),
        domain = s.domain,
        address = s.address,
        data_dir = s.data_dir,
    );
    if let Some((cert, key)) = s.tls {
        out.push_str(&format!(
            "tls_certificate = \"{cert}\"\ntls_key = \"{key}\"\n"
        ));
    }
    out.push_str(&format!(
        r#"[servers.ports]
frontend = {}
client_frontend = {}
client_proxy = {}
outbound_proxy = {}
transport = {}
mailbox_delivery = {}
admin = {}

[[databases]]
name = "DB01"
copies = ["{server}"]
store = "sqlite"
"#,
        p.frontend,
        p.client_frontend,
        p.client_proxy,
        p.outbound_proxy,
        p.transport,
        p.mailbox_delivery,
        p.admin
    ));
    for m in s.mailboxes {
        out.push_str(&format!(
            "\n[[mailboxes]]\naddress = \"{m}\"\ndatabase = \"DB01\"\n"
        ));
    }
    out.push_str(&format!(
        r#"
# Exchange has no send connector after setup; this one sends to any domain by DNS MX
# (add smart_hosts = ["relay.example:25"] to send through a relay instead).
[[send_connectors]]
name = "Internet"
address_spaces = [{{ domain = "*", cost = 1 }}]
source_servers = ["{server}"]
smart_hosts = []
tls = "opportunistic"
"#
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::Directory;

    #[test]
    fn builtin_is_valid() {
        let d = Directory::parse(&builtin_text(), "<built-in>", ".".into()).unwrap();
        assert!(d.is_accepted_domain("contoso.test"));
        assert!(d.lookup("user1@contoso.test").is_some());
        assert_eq!(d.choose_server(None).unwrap().ports.frontend, 10025);
    }
}

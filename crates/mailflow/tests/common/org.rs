//! Organisation files for tests: the standard contoso.test organisation and the
//! `[[servers]]` entry of a cluster member. Text only: imports [`Ports`] and nothing
//! that starts a process.

use super::Ports;

/// The standard test organisation: contoso.test with alice (alias a.smith), bob,
/// carol, a group with an external member and a nested loop, and an Internet send
/// connector. `extra` is appended (more servers, databases…).
pub fn org_file(ports: &Ports, extra: &str) -> String {
    org_file_with(ports, "", extra)
}

/// Like `org_file`, with more `[transport]` settings.
pub fn org_file_with(ports: &Ports, transport: &str, extra: &str) -> String {
    format!(
        r#"[organization]
name = "contoso"
secret_file = "secret.key"
accepted_domains = ["contoso.test"]
max_message_size = "1MB"

[transport]
queue_glitch_retry_interval = "1s"
transient_failure_retry_interval = "2s"
outbound_connection_failure_retry_interval = "2s"
intra_org_connector_protocol_logging = "verbose"
mailbox_delivery_connector_protocol_logging = "verbose"
# No DNS on the test machine: a closed port makes MX lookups fail transiently, so
# external recipients wait in their queue (outbound tests use smart hosts).
external_dns_servers = ["127.0.0.1:9"]
{transport}

[[sites]]
name = "Site-A"

[[servers]]
name = "MBX1"
site = "Site-A"
fqdn = "mbx1.contoso.test"
address = "127.0.0.1"
data_dir = "data/MBX1"
transport_protocol_logging = "verbose"
{frontend_limits}
{ports}
[[databases]]
name = "DB01"
copies = ["MBX1"]

[[mailboxes]]
address = "alice@contoso.test"
database = "DB01"
aliases = ["a.smith@contoso.test"]

[[mailboxes]]
address = "bob@contoso.test"
database = "DB01"

[[mailboxes]]
address = "carol@contoso.test"
database = "DB01"

[[groups]]
address = "sales@contoso.test"
members = ["alice@contoso.test", "a.smith@contoso.test", "bob@contoso.test", "ext@fabrikam.test", "team@contoso.test"]
# The tests send to groups from the internet; Exchange's default (true) is tested in
# hardening_permissions.rs.
require_sender_authentication = false

[[groups]]
address = "team@contoso.test"
members = ["sales@contoso.test", "bob@contoso.test"]
require_sender_authentication = false

[[send_connectors]]
name = "Internet"
address_spaces = [{{ domain = "*", cost = 1 }}]
source_servers = ["MBX1"]
{extra}"#,
        ports = ports.toml(),
        frontend_limits = FRONTEND_LIMITS,
    )
}

/// Every test client connects from 127.0.0.1: a limit of 100 sessions per source on
/// `Default Frontend` instead of Exchange's 20 (tests replace this line to test limits).
pub const FRONTEND_LIMITS: &str =
    "connector_limits.frontend = { max_inbound_connection_per_source = 100 }";

/// `[[servers]]` entry for a cluster member.
pub fn server_entry(name: &str, site: &str, ports: &Ports) -> String {
    format!(
        "\n[[servers]]\nname = \"{name}\"\nsite = \"{site}\"\nfqdn = \"{fqdn}.contoso.test\"\naddress = \"127.0.0.1\"\ndata_dir = \"data/{name}\"\n{ports}",
        fqdn = name.to_lowercase(),
        ports = ports.toml()
    )
}

/// Seed 003's organisation: MBX1 and MBX2 in one site, DB1 on MBX1 with alice, DB2 on
/// MBX2 with bob; `transport` is the `[transport]` table's lines and `mailboxes` more
/// `(address, database)` pairs.
pub fn seed_003_org(
    p: &std::collections::HashMap<String, Ports>,
    transport: &str,
    mailboxes: &[(&str, &str)],
) -> String {
    let mut org = format!(
        "[organization]\nname = \"contoso\"\nsecret_file = \"secret.key\"\naccepted_domains = [\"contoso.test\"]\n\n[transport]\n{transport}\n[[sites]]\nname = \"Site-A\"\n",
    );
    for name in ["MBX1", "MBX2"] {
        org.push_str(&server_entry(name, "Site-A", &p[name]));
    }
    org.push_str("\n[[databases]]\nname = \"DB1\"\ncopies = [\"MBX1\"]\n\n[[databases]]\nname = \"DB2\"\ncopies = [\"MBX2\"]\n");
    for (address, database) in [("alice@contoso.test", "DB1"), ("bob@contoso.test", "DB2")]
        .iter()
        .chain(mailboxes)
    {
        org.push_str(&format!(
            "\n[[mailboxes]]\naddress = \"{address}\"\ndatabase = \"{database}\"\n"
        ));
    }
    org
}

/// A `[[send_connectors]]` table named `name` that sends the mail for `domain` from
/// server `source` to the smart host 127.0.0.1:`port`, then the lines `more` (tls,
/// front_end_proxy, protocol_logging…).
pub fn smart_host_connector(
    name: &str,
    domain: &str,
    source: &str,
    port: u16,
    more: &str,
) -> String {
    format!(
        "\n[[send_connectors]]\nname = \"{name}\"\naddress_spaces = [{{ domain = \"{domain}\", cost = 1 }}]\nsource_servers = [\"{source}\"]\nsmart_hosts = [\"[127.0.0.1]:{port}\"]\n{more}"
    )
}

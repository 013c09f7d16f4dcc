//! The organisation CA (DESIGN §7): the trust inside the organisation is its own, as
//! Active Directory is for Exchange's self-signed certificates. `mailflow init` makes
//! the CA and signs every server's certificate with it; servers verify each other
//! against it on internal hops, both ways (the server certificate of the listener, the
//! client certificate of the connecting server).
//!
//! Files made before the CA existed have none ("legacy"): internal hops then use TLS
//! without checking certificates, and `mailflow check-config` / `serve` name the one
//! command that upgrades them ([`UPGRADE_HINT`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};

use crate::directory::{Directory, Server};

/// How long the CA is valid: long, as replacing it means reissuing every server.
const CA_DAYS: i64 = 20 * 365;
/// How long a server certificate is valid (Exchange's self-signed certificate: 5 years).
const SERVER_DAYS: i64 = 5 * 365;

/// The command that gives a legacy organisation file its CA.
pub fn upgrade_command(file: &Path) -> String {
    format!("mailflow init --add-ca --config {}", file.display())
}

/// The command that (re)issues one server's certificate.
pub fn add_server_command(server: &str, file: &Path) -> String {
    format!(
        "mailflow init --add-server {server} --config {}",
        file.display()
    )
}

/// The warning for a file without CA (check-config, and `serve` with 2+ servers).
pub fn legacy_warning(file: &Path) -> String {
    format!(
        "warning: {}: [organization] has no ca_certificate: the servers' certificates are \
         not verified on internal hops (TLS protects against listeners, not against an \
         impostor). Add the organisation CA with: {}",
        file.display(),
        upgrade_command(file)
    )
}

/// A start and end of validity: from one day ago (clocks drift) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let at = |secs: i64| {
        let days_since_epoch = secs.div_euclid(86_400);
        let (y, m, d) = civil_from_days(days_since_epoch);
        rcgen::date_time_ymd(y, m, d)
    };
    params.not_before = at(now - 86_400);
    params.not_after = at(now + days * 86_400);
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y as i32, m as u8, d as u8)
}

/// A random serial number (positive, 16 bytes): two certificates of one CA never share
/// one, even when a server's certificate is reissued.
fn serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

fn write_pair(cert: &Path, cert_pem: &str, key: &Path, key_pem: &str) -> anyhow::Result<()> {
    for p in [cert, key] {
        if let Some(dir) = p.parent() {
            crate::files::create_private_dir_all(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    crate::files::write_private(key, key_pem.as_bytes())
        .with_context(|| format!("writing {}", key.display()))?;
    crate::files::write_private(cert, cert_pem.as_bytes())
        .with_context(|| format!("writing {}", cert.display()))?;
    Ok(())
}

/// Makes the organisation CA: a self-signed CA certificate (`CN=<org> Organization
/// CA`) and its key, both 0600 in 0700 folders. Existing files are not replaced.
pub fn create_ca(cert: &Path, key: &Path, org: &str) -> anyhow::Result<()> {
    for p in [cert, key] {
        if p.exists() {
            anyhow::bail!(
                "{} exists; the organisation CA is not replaced (move it away first)",
                p.display()
            );
        }
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{org} Organization CA"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    params.serial_number = Some(serial());
    validity(&mut params, CA_DAYS);
    let key_pair = KeyPair::generate().context("generating the CA key")?;
    let ca = params
        .self_signed(&key_pair)
        .context("signing the CA certificate")?;
    write_pair(cert, &ca.pem(), key, &key_pair.serialize_pem())
}

/// Issues `server`'s certificate, signed by the CA: subject CN = its fqdn; SANs its
/// fqdn, its lowercase name, its `address` IP and its `bind` IP (when set and not
/// unspecified); extended key usage serverAuth + clientAuth, as it is also the client
/// certificate of its internal hops. Existing files are kept as `<file>.old`.
pub fn issue_server_certificate(
    ca_cert: &Path,
    ca_key: &Path,
    server: &Server,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    let ca_pem = std::fs::read_to_string(ca_cert)
        .with_context(|| format!("reading the CA certificate {}", ca_cert.display()))?;
    let ca_key_pem = std::fs::read_to_string(ca_key)
        .with_context(|| format!("reading the CA key {}", ca_key.display()))?;
    let ca_key_pair = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("{}: not a PEM private key", ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key_pair)
        .with_context(|| format!("{}: not a PEM CA certificate", ca_cert.display()))?;

    let mut names = vec![server.fqdn.to_lowercase()];
    let short = server.name.to_lowercase();
    if !names.contains(&short) {
        names.push(short);
    }
    let mut params = CertificateParams::new(names)
        .with_context(|| format!("server {}: unusable name", server.name))?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in [Some(server.ip()), server.bind_ip()].into_iter().flatten() {
        if !ip.is_unspecified() && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    params
        .subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    params
        .distinguished_name
        .push(DnType::CommonName, server.fqdn.to_lowercase());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    validity(&mut params, SERVER_DAYS);
    let key_pair = KeyPair::generate().context("generating the server key")?;
    let signed = params
        .signed_by(&key_pair, &issuer)
        .context("signing the server certificate")?;
    for p in [cert, key] {
        if p.exists() {
            let mut old = p.as_os_str().to_os_string();
            old.push(".old");
            std::fs::rename(p, &old)
                .with_context(|| format!("keeping {} as {}", p.display(), old.display()))?;
        }
    }
    write_pair(cert, &signed.pem(), key, &key_pair.serialize_pem())
}

/// Where `server`'s certificate and key are: the paths its entry names, else
/// `<data_dir>/certs/<name>.pem|.key` (where `serve` has always made them).
pub fn server_cert_paths(dir: &Directory, server: &Server) -> (PathBuf, PathBuf) {
    match (&server.tls_certificate, &server.tls_key) {
        (Some(c), Some(k)) => (dir.path(c), dir.path(k)),
        _ => {
            let certs = dir.data_dir(server).join("certs");
            let name = server.name.to_lowercase();
            (
                certs.join(format!("{name}.pem")),
                certs.join(format!("{name}.key")),
            )
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    crate::directory::ca_file::read_pem_certificates(path, "certificate")
}

/// The verifier of server certificates against the CA (chain, expiry, name, EKU).
fn webpki_server_verifier(
    ca_cert: &Path,
) -> Result<Arc<rustls::client::WebPkiServerVerifier>, String> {
    let roots = Arc::new(crate::directory::ca_file::read_ca_file(ca_cert)?);
    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| format!("cannot build a verifier from {}: {e}", ca_cert.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether the certificate file `cert` is one the organisation CA signed for `fqdn`
/// (chain, expiry, name): Err says what the file holds and why it does not pass.
pub fn check_server_certificate(cert: &Path, ca_cert: &Path, fqdn: &str) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    let certs = read_certs(cert)?;
    let verifier = webpki_server_verifier(ca_cert)?;
    let name = ServerName::try_from(fqdn.to_string())
        .map_err(|_| format!("{fqdn:?} is not a valid server name"))?;
    verifier
        .verify_server_cert(&certs[0], &certs[1..], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{} ({}) does not verify against the organisation CA {}: {}",
                cert.display(),
                super::tls::describe_certificate(&certs[0]),
                ca_cert.display(),
                reason(&e, fqdn)
            )
        })
}

/// webpki's refusal in words.
fn reason(e: &rustls::Error, name: &str) -> String {
    match e {
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        ) => format!("the certificate is not valid for the name {name}"),
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            "it is not signed by the organisation CA (UnknownIssuer)".into()
        }
        // An issuer with the CA's name but another key: another organisation's CA
        // named alike, or a forgery.
        rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature) => {
            "it is not signed by the organisation CA (BadSignature: its issuer has the CA's name but another key)".into()
        }
        other => other.to_string(),
    }
}

/// The TLS of one server, built once at start: what its listeners present, and what
/// its internal hops verify and present.
pub struct ServerTls {
    /// The Front End (:25, :587) and custom receive connectors: no client certificate;
    /// the `frontend_tls_certificate` when the server has one.
    pub public: Arc<rustls::ServerConfig>,
    /// The admin API: the server's own certificate (the one the organisation CA
    /// vouches for), no client certificate.
    pub own: Arc<rustls::ServerConfig>,
    /// Internal listeners (Default <server> :2525, Client Proxy :465, Mailbox Delivery
    /// :475, Outbound Proxy Frontend :717): with a CA, a client certificate the CA
    /// signed is required; without one, as `public`.
    pub internal: Arc<rustls::ServerConfig>,
    /// Internal hops (`OrgConnector::connect`).
    pub client: Arc<rustls::ClientConfig>,
    /// Whether the organisation has a CA (internal hops verified).
    pub verified: bool,
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("reading key {}", path.display()))
}

impl ServerTls {
    /// From the server's certificate and key and the organisation CA (None: legacy).
    /// `frontend`: the certificate and key the internet sees, when not the server's own.
    pub fn new(
        cert: &Path,
        key: &Path,
        ca_cert: Option<&Path>,
        frontend: Option<(&Path, &Path)>,
    ) -> anyhow::Result<ServerTls> {
        let own = super::tls::server_config(cert, key)?;
        let public = match frontend {
            Some((c, k)) => super::tls::server_config(c, k)?,
            None => own.clone(),
        };
        let Some(ca) = ca_cert else {
            return Ok(ServerTls {
                internal: own.clone(),
                own,
                public,
                client: super::tls::client_config(),
                verified: false,
            });
        };
        let chain = read_certs(cert).map_err(anyhow::Error::msg)?;
        let roots =
            Arc::new(crate::directory::ca_file::read_ca_file(ca).map_err(anyhow::Error::msg)?);
        let client_verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .with_context(|| format!("building the client verifier from {}", ca.display()))?;
        let internal = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), read_key(key)?)
            .with_context(|| format!("{} and {} do not match", cert.display(), key.display()))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .with_context(|| format!("building the server verifier from {}", ca.display()))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(super::tls::Verifier::new(
                OrgServerVerifier { inner },
                provider(),
            )))
            .with_client_auth_cert(chain, read_key(key)?)
            .with_context(|| format!("{} and {} do not match", cert.display(), key.display()))?;
        Ok(ServerTls {
            public,
            own,
            internal: Arc::new(internal),
            client: Arc::new(client),
            verified: true,
        })
    }
}

/// A refusal by [`OrgServerVerifier`]: the certificate seen and why, carried through
/// the handshake error to [`ClientError::CertificateRefused`](super::client::ClientError).
#[derive(Debug)]
pub struct OrgRefusal(pub String);

impl std::fmt::Display for OrgRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OrgRefusal {}

/// The refusal text when a handshake failed because the organisation CA did not
/// vouch for the peer's certificate.
pub fn refusal(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<OrgRefusal>().map(|r| r.0.clone())
        }
        _ => None,
    }
}

/// webpki against the organisation CA only, the handshake failing (fail closed, no
/// byte of SMTP inside it) with a refusal that names the certificate seen. The
/// configuration is shared by every session of the server, so nothing per session is
/// kept in the verifier: the text travels in the error instead.
#[derive(Debug)]
struct OrgServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl super::tls::CertificateCheck for OrgServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| {
                let text = format!(
                    "{}: {}; certificate seen: {}",
                    server_name.to_str(),
                    reason(&e, &server_name.to_str()),
                    super::tls::describe_certificate(end_entity),
                );
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                    rustls::OtherError(Arc::new(OrgRefusal(text))),
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, address: &str, bind: Option<&str>) -> Server {
        let text = format!(
            "name = {name:?}\nfqdn = \"{}.contoso.test\"\naddress = {address:?}\n{}data_dir = \"d\"\n[ports]\nfrontend = 25\nclient_frontend = 587\nclient_proxy = 465\noutbound_proxy = 717\ntransport = 2525\nmailbox_delivery = 475\nadmin = 8025\n",
            name.to_lowercase(),
            bind.map(|b| format!("bind = {b:?}\n")).unwrap_or_default()
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn issued_certificates_verify_for_their_names_and_not_against_another_ca() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        create_ca(&p("ca.pem"), &p("ca.key"), "contoso").unwrap();
        assert!(create_ca(&p("ca.pem"), &p("ca.key"), "contoso").is_err());
        let s = server("MBX1", "10.0.0.5", Some("0.0.0.0"));
        issue_server_certificate(&p("ca.pem"), &p("ca.key"), &s, &p("m.pem"), &p("m.key")).unwrap();
        check_server_certificate(&p("m.pem"), &p("ca.pem"), "mbx1.contoso.test").unwrap();
        check_server_certificate(&p("m.pem"), &p("ca.pem"), "mbx1").unwrap();
        check_server_certificate(&p("m.pem"), &p("ca.pem"), "10.0.0.5").unwrap();
        let err =
            check_server_certificate(&p("m.pem"), &p("ca.pem"), "mbx2.contoso.test").unwrap_err();
        assert!(err.contains("not valid for the name"), "{err}");
        create_ca(&p("other.pem"), &p("other.key"), "fabrikam").unwrap();
        let err = check_server_certificate(&p("m.pem"), &p("other.pem"), "mbx1.contoso.test")
            .unwrap_err();
        assert!(err.contains("not signed by the organisation CA"), "{err}");
        assert!(err.contains("issuer=CN=contoso Organization CA"), "{err}");
        // A reissue keeps the old pair.
        issue_server_certificate(&p("ca.pem"), &p("ca.key"), &s, &p("m.pem"), &p("m.key")).unwrap();
        assert!(p("m.pem.old").exists() && p("m.key.old").exists());
        use std::os::unix::fs::PermissionsExt;
        for f in ["ca.key", "ca.pem", "m.key", "m.pem"] {
            let mode = std::fs::metadata(p(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}

//! TLS material: the server's certificate (self-signed when none is configured, as
//! Exchange's setup makes one) and rustls configurations.

use anyhow::Context;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::sync::Arc;

/// Writes a self-signed certificate for `hostname` (PEM) unless the files exist.
pub fn ensure_self_signed(cert: &Path, key: &Path, hostname: &str) -> anyhow::Result<()> {
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let names = vec![hostname.to_string(), "localhost".to_string()];
    let certified = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    for p in [cert, key] {
        if let Some(dir) = p.parent() {
            crate::files::create_private_dir_all(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    crate::files::write_private(cert, certified.cert.pem().as_bytes())
        .with_context(|| format!("writing {}", cert.display()))?;
    crate::files::write_private(key, certified.signing_key.serialize_pem().as_bytes())
        .with_context(|| format!("writing {}", key.display()))?;
    Ok(())
}

/// The rustls server configuration for STARTTLS on every receive connector.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    Ok(Arc::new(config))
}

/// The rustls client configuration for STARTTLS on outgoing connections: any
/// certificate is accepted (see `SmtpClient::starttls` for why).
pub fn client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verifier::new(
                    AcceptAnyCertificate,
                    provider,
                )))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// Opportunistic TLS: encrypt, do not authenticate the peer.
#[derive(Debug)]
struct AcceptAnyCertificate;

impl CertificateCheck for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
}

/// What our server-certificate verifiers differ in: how the certificate is judged.
/// [`Verifier`] adds what they share, the handshake signatures.
pub(crate) trait CertificateCheck: std::fmt::Debug + Send + Sync {
    /// As [`rustls::client::danger::ServerCertVerifier::verify_server_cert`].
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error>;
}

/// A [`CertificateCheck`] as a rustls verifier: the handshake signatures are checked
/// against the certificate with the provider's algorithms (what webpki's verifier does
/// too), whatever the check decided of the certificate, so the session is always with
/// its key holder.
#[derive(Debug)]
pub(crate) struct Verifier<C> {
    check: C,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl<C: CertificateCheck> Verifier<C> {
    pub(crate) fn new(check: C, provider: Arc<rustls::crypto::CryptoProvider>) -> Verifier<C> {
        Verifier { check, provider }
    }
}

impl<C: CertificateCheck> rustls::client::danger::ServerCertVerifier for Verifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.check
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The system's trust anchors (`rustls-native-certs`: the OS store, or the files
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` name), loaded once; unreadable entries are skipped.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!("system trust store: {e}");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if ignored > 0 {
                tracing::warn!("system trust store: {ignored} certificates ignored");
            }
            tracing::debug!("system trust store: {added} certificates");
            Arc::new(roots)
        })
        .clone()
}

/// What the verifier saw of the peer, for the protocol log and the LastError: the
/// certificate described, and why it was refused.
#[derive(Debug, Default)]
pub struct PeerCertificate {
    pub description: Option<String>,
    /// Ok: validated; Err: the reason it was refused; None: not verified (yet).
    pub verdict: Option<Result<(), String>>,
}

/// The rustls client configuration of one outgoing session that validates the peer
/// (a send connector's `tls_auth_level` other than `encryption_only`), and where the
/// verifier leaves what it saw.
pub struct ValidatingClient {
    pub config: Arc<rustls::ClientConfig>,
    pub seen: Arc<std::sync::Mutex<PeerCertificate>>,
}

/// A configuration that verifies the chain (and expiry) to `ca_file`'s anchors, or to
/// the system's without one; the name too when `check_name`.
pub fn validating_client(
    ca_file: Option<&Path>,
    check_name: bool,
) -> Result<ValidatingClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Validating::new(ca_file, check_name, provider.clone())?;
    let seen = verifier.seen.clone();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier::new(verifier, provider)))
        .with_no_client_auth();
    Ok(ValidatingClient {
        config: Arc::new(config),
        seen,
    })
}

/// webpki's verification (chain, expiry, and the name with Exchange's wildcard rule:
/// `*.contoso.com` covers one label, which is webpki's rule too), with the name error
/// forgiven for `certificate_validation`, and what was seen recorded.
#[derive(Debug)]
struct Validating {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
    seen: Arc<std::sync::Mutex<PeerCertificate>>,
}

impl Validating {
    fn new(
        ca_file: Option<&Path>,
        check_name: bool,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Validating, String> {
        let roots = match ca_file {
            Some(p) => Arc::new(crate::directory::ca_file::read_ca_file(p)?),
            None => system_roots(),
        };
        if roots.is_empty() {
            return Err("no trusted CA certificates (the system store is empty)".into());
        }
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| format!("cannot build the certificate verifier: {e}"))?;
        Ok(Validating {
            inner,
            check_name,
            seen: Arc::default(),
        })
    }
}

impl Validating {
    /// webpki's verdict, with the name error forgiven for `certificate_validation`.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_) => Ok(()),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl CertificateCheck for Validating {
    /// Records the verdict and lets the handshake finish: the SMTP client reads the
    /// verdict right after it ([`crate::net::client::SmtpClient::starttls_validated`])
    /// and, on refusal, ends the session with QUIT before anything else is sent, as
    /// Postfix's client does. The handshake signatures are still checked against the
    /// certificate, so the session is with its key holder either way.
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verdict = self
            .check(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                ) => format!(
                    "the certificate is not valid for the name {}",
                    server_name.to_str()
                ),
                other => other.to_string(),
            });
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| rustls::Error::General("certificate verdict lost".into()))?;
        seen.description = Some(describe_certificate(end_entity));
        seen.verdict = Some(verdict);
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
}

/// `subject=…; issuer=…; san=…; valid=… to …` for the protocol log.
pub fn describe_certificate(der: &CertificateDer<'_>) -> String {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return "an unparsable certificate".into();
    };
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => format!(
                            "IP:{}",
                            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or([0; 4]))
                        ),
                        16 => format!(
                            "IP:{}",
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or([0; 16]))
                        ),
                        _ => "IP:?".into(),
                    },
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "subject={}; issuer={}; san={}; valid={} to {}",
        cert.subject(),
        cert.issuer(),
        sans.join(" "),
        cert.validity().not_before,
        cert.validity().not_after,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::{ServerName, UnixTime};

    /// A CA file in `dir` and a certificate it signed for `names`.
    fn ca_and_leaf(dir: &Path, names: &[&str]) -> (PathBuf, CertificateDer<'static>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        (ca_file, leaf.der().clone())
    }

    fn verify(
        ca: &Path,
        check_name: bool,
        leaf: &CertificateDer<'_>,
        name: &str,
    ) -> Result<(), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let v = Validating::new(Some(ca), check_name, provider).unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        v.check(leaf, &[], &name, &[], UnixTime::now())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn certificate_validation_accepts_any_name_but_domain_validation_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, leaf) = ca_and_leaf(dir.path(), &["mx.fabrikam.test"]);
        assert!(verify(&ca, false, &leaf, "other.test").is_ok());
        assert!(verify(&ca, true, &leaf, "mx.fabrikam.test").is_ok());
        assert!(verify(&ca, true, &leaf, "other.test").is_err());
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, leaf) = ca_and_leaf(dir.path(), &["*.contoso.com"]);
        assert!(verify(&ca, true, &leaf, "mail.contoso.com").is_ok());
        assert!(verify(&ca, true, &leaf, "a.mail.contoso.com").is_err());
        assert!(verify(&ca, true, &leaf, "contoso.com").is_err());
    }

    #[test]
    fn an_expired_certificate_is_refused_at_both_levels() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Expiry CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_file = dir.path().join("expiry-ca.pem");
        std::fs::write(&ca_file, issuer.pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["mx.fabrikam.test".to_string()]).unwrap();
        leaf.not_before = rcgen::date_time_ymd(2000, 1, 1);
        leaf.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let leaf = leaf.signed_by(&key, &issuer).unwrap();
        for check_name in [false, true] {
            let err = verify(&ca_file, check_name, leaf.der(), "mx.fabrikam.test").unwrap_err();
            assert!(err.contains("certificate expired"), "{err}");
        }
    }

    #[test]
    fn certificate_validation_still_needs_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = ca_and_leaf(dir.path(), &["mx.fabrikam.test"]);
        let other = rcgen::generate_simple_self_signed(vec!["mx.fabrikam.test".into()]).unwrap();
        let err = verify(&ca, false, other.cert.der(), "mx.fabrikam.test").unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }
}

//! TLS material: the server's certificate (self-signed when none is configured, as
//! Exchange's setup makes one) and rustls configurations.

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::path::Path;
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
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    std::fs::write(cert, certified.cert.pem())
        .with_context(|| format!("writing {}", cert.display()))?;
    std::fs::write(key, certified.signing_key.serialize_pem())
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

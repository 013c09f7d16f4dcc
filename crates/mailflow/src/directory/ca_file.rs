//! The CA bundles the organisation file names (a send connector's `tls_ca_file`, the
//! organisation CA): read and checked when the file loads, and by net/ when it builds
//! a TLS configuration. Imports no service and not net.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, pem::PemObject};

/// Reads the certificates of a PEM file, at least one; `what` names what the file
/// should be ("certificate", "certificate bundle") when it is not PEM.
pub fn read_pem_certificates(
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM {what}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Reads a PEM CA bundle a send connector trusts (`tls_ca_file`): at least one
/// certificate, each one a trust anchor webpki accepts.
pub fn read_ca_file(path: &Path) -> Result<RootCertStore, String> {
    let certs = read_pem_certificates(path, "certificate bundle")?;
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

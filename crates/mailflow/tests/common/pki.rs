//! [`Pki`]: a test CA and certificates it signs (rcgen), as PEM files in a folder
//! every process can read (Postfix reads them as its own user). Imports nothing of
//! the other helpers.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A CA named `common_name`, written to `ca.pem` and `ca.key`.
    pub fn new(common_name: &str) -> Pki {
        let dir = tempfile::Builder::new().prefix("pki-").tempdir().unwrap();
        set_mode(dir.path(), 0o755);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let key_pem = key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(params, key).unwrap();
        let pki = Pki { dir, ca };
        pki.write("ca.pem", &pki.ca.pem());
        pki.write("ca.key", &key_pem);
        pki
    }

    /// Writes `text` to `name` in the folder, readable by every user.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        set_mode(&p, 0o644);
        p
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_key_file(&self) -> PathBuf {
        self.dir.path().join("ca.key")
    }

    /// A certificate for `names` (the first is also the common name; an IP address
    /// becomes an IP SAN) signed by the CA, for server and client authentication:
    /// (`<file>.pem`, `<file>.key`).
    pub fn signed(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (
            self.write(&format!("{file}.pem"), &cert.pem()),
            self.write(&format!("{file}.key"), &key.serialize_pem()),
        )
    }

    /// A self-signed certificate for `name`: (`<file>.pem`, `<file>.key`).
    pub fn self_signed(&self, file: &str, name: &str) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (
            self.write(&format!("{file}.pem"), &c.cert.pem()),
            self.write(&format!("{file}.key"), &c.signing_key.serialize_pem()),
        )
    }
}

/// chmod.
pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

//! Servers prove they belong to the organisation (DESIGN §1), as Exchange's
//! `ExchangeServer` authentication does: AUTH PLAIN with the server's name as the
//! username, the sending service as the authorization identity, and a password derived
//! from the organisation secret. An address in the organisation file is never a
//! credential.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

/// The mechanism name, and the services that may authenticate.
pub const FRONTEND: &str = "FrontendTransport";
pub const HUB: &str = "HubTransport";
pub const SUBMISSION: &str = "MailboxSubmission";

#[derive(Clone)]
pub struct OrgSecret(Vec<u8>);

impl OrgSecret {
    /// Reads the secret, creating it (32 random bytes, hex) when the file is missing and
    /// `create` allows it (a lone server makes its own at start).
    pub fn load(path: &Path, create: bool) -> anyhow::Result<OrgSecret> {
        match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Ok(OrgSecret(text.trim().as_bytes().to_vec())),
            Ok(_) => anyhow::bail!("{}: the organisation secret file is empty", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let bytes: [u8; 32] = rand::random();
                let text = hex::encode(bytes);
                if let Some(dir) = path.parent() {
                    crate::files::create_private_dir_all(dir)?;
                }
                crate::files::write_private(path, format!("{text}\n").as_bytes())?;
                Ok(OrgSecret(text.into_bytes()))
            }
            Err(e) => anyhow::bail!(
                "{}: cannot read the organisation secret: {e}",
                path.display()
            ),
        }
    }

    fn mac(&self, server: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"mailflow ExchangeServer authentication\0");
        mac.update(server.to_ascii_lowercase().as_bytes());
        mac
    }

    /// The password `server` presents.
    pub fn password(&self, server: &str) -> String {
        hex::encode(self.mac(server).finalize().into_bytes())
    }

    /// Checks a presented password in constant time.
    pub fn verify(&self, server: &str, password: &str) -> bool {
        match hex::decode(password) {
            Ok(bytes) => self.mac(server).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_for_their_server() {
        let dir = tempfile::tempdir().unwrap();
        let s = OrgSecret::load(&dir.path().join("secret.key"), true).unwrap();
        let again = OrgSecret::load(&dir.path().join("secret.key"), false).unwrap();
        let p = s.password("MBX1");
        assert!(again.verify("mbx1", &p));
        assert!(!again.verify("MBX2", &p));
        assert!(!again.verify("MBX1", "zz"));
    }
}

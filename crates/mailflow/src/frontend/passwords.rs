//! Mailbox passwords for client submission (AUTH on `Client Frontend` and implicit-TLS
//! connectors): argon2 hashes kept in the organisation file (`password_hash`, written
//! by `mailflow mailbox set-password`), and failed-logon throttling per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::directory::{Directory, Recipient};

/// A new argon2id hash of `password` (PHC string, `$argon2id$…`).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let bytes: [u8; 16] = rand::random();
    let salt =
        SaltString::encode_b64(&bytes).map_err(|e| anyhow::anyhow!("cannot make a salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

/// Who may log on, and with which hash. `set-password` changes the organisation file
/// while servers run, so the file is read again when it changes.
pub struct PasswordBook {
    file: Option<PathBuf>,
    state: Mutex<Book>,
}

struct Book {
    modified: Option<SystemTime>,
    dir: Arc<Directory>,
}

impl PasswordBook {
    pub fn new(dir: Arc<Directory>, file: Option<PathBuf>) -> PasswordBook {
        let modified = file
            .as_ref()
            .and_then(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
        PasswordBook {
            file,
            state: Mutex::new(Book { modified, dir }),
        }
    }

    /// The directory as of the file's latest valid version.
    fn directory(&self) -> Arc<Directory> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = &self.file {
            let modified = std::fs::metadata(file).and_then(|m| m.modified()).ok();
            if modified != state.modified {
                state.modified = modified;
                match Directory::load(file) {
                    Ok(d) => state.dir = Arc::new(d),
                    Err(e) => tracing::warn!(
                        "organisation file changed but is invalid; keeping the previous passwords: {e}"
                    ),
                }
            }
        }
        state.dir.clone()
    }

    /// Checks a logon; on success, the mailbox's primary address and all its addresses.
    pub async fn verify(&self, username: &str, password: &str) -> Option<(String, Vec<String>)> {
        // argon2 takes ~19 MiB and tens of milliseconds per check: a few at a time, so
        // parallel logon attempts cannot exhaust memory.
        static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
        let _permit = CHECKS.acquire().await.ok()?;
        let dir = self.directory();
        let mailbox = match dir.lookup(username) {
            Some(Recipient::Mailbox(i)) => Some(dir.mailbox(i).clone()),
            _ => None,
        };
        // Unknown users and users without a password cost the same time as a wrong
        // password: no oracle for which addresses exist.
        let hash = mailbox
            .as_ref()
            .and_then(|m| m.password_hash.clone())
            .unwrap_or_else(|| DUMMY_HASH.to_string());
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        let mailbox = mailbox.filter(|m| m.password_hash.is_some())?;
        ok.then(|| {
            let mut all = vec![mailbox.address.clone()];
            all.extend(mailbox.aliases.iter().cloned());
            (mailbox.address, all)
        })
    }
}

/// A valid argon2 hash of a random password, checked for unknown users.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$VGKj0uNKDNvJ8y4TXDOWL9oOD4f3vA5/5xC2Kf6tq6Q";

/// Failed logons per client address (Exchange's MaxLogonFailures, 3): past the limit
/// within the window, AUTH is refused without looking at the password.
#[derive(Default)]
pub struct AuthThrottle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const MAX_LOGON_FAILURES: u32 = 3;
const WINDOW: Duration = Duration::from_secs(300);

impl AuthThrottle {
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .is_some_and(|(n, since)| *n >= MAX_LOGON_FAILURES && since.elapsed() < WINDOW)
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Forget old entries so the map cannot grow without bound.
        if map.len() > 10_000 {
            map.retain(|_, (_, since)| since.elapsed() < WINDOW);
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

/// `mailflow mailbox set-password`: writes the hash into the mailbox's entry of the
/// organisation file, keeping the rest of the file (comments, order) as it was.
pub fn set_password_in_file(
    file: &std::path::Path,
    address: &str,
    password: &str,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let entries = doc
        .get_mut("mailboxes")
        .and_then(|m| m.as_array_of_tables_mut())
        .ok_or_else(|| anyhow::anyhow!("{}: no [[mailboxes]]", file.display()))?;
    let wanted = address.to_lowercase();
    let entry = entries
        .iter_mut()
        .find(|t| {
            let primary = t
                .get("address")
                .and_then(|v| v.as_str())
                .map(str::to_lowercase);
            let alias = t
                .get("aliases")
                .and_then(|v| v.as_array())
                .is_some_and(|a| {
                    a.iter()
                        .any(|v| v.as_str().map(str::to_lowercase).as_deref() == Some(&wanted))
                });
            primary.as_deref() == Some(&wanted) || alias
        })
        .ok_or_else(|| anyhow::anyhow!("{}: no mailbox {address}", file.display()))?;
    entry["password_hash"] = toml_edit::value(hash_password(password)?);
    crate::files::replace_preserving_mode(file, doc.to_string().as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_verify_and_throttle_counts() {
        let hash = hash_password("s3cret").unwrap();
        let text = format!(
            "[organization]\nname = \"c\"\naccepted_domains = [\"c.test\"]\n[[servers]]\nname = \"S\"\nfqdn = \"s.c.test\"\naddress = \"127.0.0.1\"\ndata_dir = \"d\"\n[[databases]]\nname = \"DB\"\ncopies = [\"S\"]\n[[mailboxes]]\naddress = \"ann@c.test\"\ndatabase = \"DB\"\naliases = [\"a@c.test\"]\npassword_hash = \"{hash}\"\n"
        );
        let dir = Arc::new(Directory::parse(&text, "t", ".".into()).unwrap());
        let book = PasswordBook::new(dir, None);
        assert_eq!(
            book.verify("A@c.test", "s3cret").await.map(|(p, _)| p),
            Some("ann@c.test".into())
        );
        assert!(book.verify("ann@c.test", "wrong").await.is_none());
        let t = AuthThrottle::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(!t.is_blocked(ip));
            t.failed(ip);
        }
        assert!(t.is_blocked(ip));
    }
}

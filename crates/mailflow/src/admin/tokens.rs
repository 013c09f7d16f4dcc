//! Who may call the admin API (DESIGN §7): per-operator tokens, and short-lived tokens
//! minted by holders of the organisation secret.
//!
//! - **Operator tokens** (`mailflow admin token create`): 256 random bits shown once.
//!   Only their SHA-256 is stored, in `admin-tokens.json` beside the organisation file
//!   (0600). Servers read that file again whenever it changes, so `revoke` takes
//!   effect at the next request without a reload. Each token has a name, which the
//!   server log gives for every call that changes something.
//! - **Secret tokens**: whoever can read the organisation secret (the CLI on a server,
//!   Active Manager calling another server) mints `v1.<label>.<expiry>.<nonce>.<mac>`,
//!   valid for at most five minutes. No permanent token derived from the secret
//!   exists any more, so a token seen once (in a log, a proxy) is soon worthless.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::directory::Directory;

/// The file of operator tokens, beside the organisation file.
pub const TOKENS_FILE: &str = "admin-tokens.json";
/// The prefix of operator tokens (it lets secret scanners and people recognise one).
const OPERATOR_PREFIX: &str = "mfa_";
/// The prefix of secret tokens, with the format version.
const SECRET_PREFIX: &str = "v1.";
/// The longest a secret token may live.
pub const SECRET_TOKEN_LIFETIME: u64 = 300;
/// Clock difference allowed between the server minting a token and the one checking it.
const CLOCK_SKEW: u64 = 60;

/// Where the operator tokens of an organisation are kept.
pub fn tokens_path(dir: &Directory) -> PathBuf {
    dir.path(TOKENS_FILE)
}

/// One operator token as stored: never the token itself.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredToken {
    pub name: String,
    /// A short random id, so two tokens of one name (one revoked) can be told apart.
    pub id: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// The token's last four characters, to recognise it.
    pub last4: String,
    /// When it was revoked (RFC 3339, UTC); a revoked token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct TokenFile {
    pub tokens: Vec<StoredToken>,
}

impl TokenFile {
    /// Reads the file; a missing file holds no tokens.
    pub fn read(path: &Path) -> anyhow::Result<TokenFile> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not an admin token file: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
            Err(e) => anyhow::bail!("{}: cannot read: {e}", path.display()),
        }
    }

    /// Writes the file atomically, 0600 (it says who may manage the servers).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        crate::files::replace_preserving_mode(path, format!("{text}\n").as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
        // A file an administrator widened is narrowed: it decides who is let in.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(crate::files::FILE_MODE),
        )
        .map_err(|e| anyhow::anyhow!("{}: cannot make it private: {e}", path.display()))
    }

    /// Adds a token named `name`; returns the token, which is shown once and never stored.
    pub fn create(&mut self, name: &str) -> anyhow::Result<String> {
        check_name(name)?;
        if self.active(name).next().is_some() {
            anyhow::bail!(
                "an admin token named {name:?} exists; revoke it first or choose another name"
            );
        }
        let token = format!(
            "{OPERATOR_PREFIX}{}",
            hex::encode(rand::random::<[u8; 32]>())
        );
        self.tokens.push(StoredToken {
            name: name.to_string(),
            id: hex::encode(rand::random::<[u8; 4]>()),
            created: now_rfc3339(),
            sha256: sha256_hex(&token),
            last4: token[token.len() - 4..].to_string(),
            revoked: None,
        });
        Ok(token)
    }

    /// Revokes the active token named `name` (or whose id is `name`); how many were.
    pub fn revoke(&mut self, name: &str) -> usize {
        let now = now_rfc3339();
        let mut n = 0;
        for t in &mut self.tokens {
            if t.revoked.is_none() && (t.name == name || t.id == name) {
                t.revoked = Some(now.clone());
                n += 1;
            }
        }
        n
    }

    fn active<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a StoredToken> + 'a {
        self.tokens
            .iter()
            .filter(move |t| t.revoked.is_none() && t.name == name)
    }

    /// The name of the active token `token`, compared in constant time.
    fn find(&self, token: &str) -> Option<&str> {
        let digest = sha256_hex(token);
        let mut found = None;
        for t in self.tokens.iter().filter(|t| t.revoked.is_none()) {
            if constant_time_eq(t.sha256.as_bytes(), digest.as_bytes()) {
                found = Some(t.name.as_str());
            }
        }
        found
    }
}

/// Token names appear in logs and tables: letters, digits and `._@-`, 1–64 of them.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if !ok {
        anyhow::bail!(
            "--name {name:?}: use 1 to 64 letters, digits, '.', '_', '@' or '-' (it names the operator in the server log)"
        );
    }
    Ok(())
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The key secret tokens are signed with, derived from the organisation secret (so it
/// signs nothing else the secret signs).
#[derive(Clone)]
pub struct AdminKey([u8; 32]);

impl AdminKey {
    /// Reads the organisation secret file (as `OrgSecret::load` does: trimmed text).
    pub fn load(path: &Path) -> anyhow::Result<AdminKey> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot read the organisation secret: {e}",
                path.display()
            )
        })?;
        let secret = text.trim();
        if secret.is_empty() {
            anyhow::bail!("{}: the organisation secret file is empty", path.display());
        }
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(b"mailflow admin API token key v1");
        Ok(AdminKey(mac.finalize().into_bytes().into()))
    }

    fn mac(&self, label: &str, expiry: u64, nonce: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(format!("{label}|{expiry}|{nonce}").as_bytes());
        mac
    }

    /// A token for `label` (who mints it: `cli`, a server's name), valid `lifetime`
    /// seconds (at most five minutes).
    pub fn mint(&self, label: &str, lifetime: u64) -> String {
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let expiry = unix_now() + lifetime.min(SECRET_TOKEN_LIFETIME);
        let nonce = hex::encode(rand::random::<[u8; 12]>());
        let mac = hex::encode(self.mac(&label, expiry, &nonce).finalize().into_bytes());
        format!("{SECRET_PREFIX}{label}.{expiry}.{nonce}.{mac}")
    }

    /// The label of a valid, unexpired secret token (MAC checked in constant time).
    pub fn verify(&self, token: &str) -> Result<String, &'static str> {
        let rest = token.strip_prefix(SECRET_PREFIX).ok_or("not a v1 token")?;
        let parts: Vec<&str> = rest.split('.').collect();
        let [label, expiry, nonce, mac] = parts[..] else {
            return Err("malformed token");
        };
        let expiry: u64 = expiry.parse().map_err(|_| "malformed token")?;
        let mac = hex::decode(mac).map_err(|_| "malformed token")?;
        self.mac(label, expiry, nonce)
            .verify_slice(&mac)
            .map_err(|_| "wrong token")?;
        let now = unix_now();
        if expiry < now {
            return Err("expired token");
        }
        if expiry > now + SECRET_TOKEN_LIFETIME + CLOCK_SKEW {
            return Err("token valid for longer than five minutes");
        }
        Ok(label.to_string())
    }
}

/// Who a request's token belongs to, as the server log names them.
pub enum Caller {
    Operator(String),
    SecretHolder(String),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Operator(n) => write!(f, "operator {n}"),
            Caller::SecretHolder(l) => write!(f, "organisation secret holder {l}"),
        }
    }
}

/// What the server checks tokens against: the secret-derived key, and the operator
/// token file, read again when its size, modification time or inode change.
pub struct Verifier {
    key: AdminKey,
    path: PathBuf,
    cache: Mutex<Cached>,
}

struct Cached {
    stamp: Option<(u64, i64, i64, u64)>,
    file: TokenFile,
}

impl Verifier {
    pub fn new(key: AdminKey, path: PathBuf) -> Verifier {
        Verifier {
            key,
            path,
            cache: Mutex::new(Cached {
                stamp: None,
                file: TokenFile::default(),
            }),
        }
    }

    /// The caller a bearer token stands for, or why it is refused.
    pub fn check(&self, token: &str) -> Result<Caller, String> {
        if token.starts_with(SECRET_PREFIX) {
            return self
                .key
                .verify(token)
                .map(Caller::SecretHolder)
                .map_err(str::to_string);
        }
        if !token.starts_with(OPERATOR_PREFIX) {
            return Err("missing or unknown token".into());
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut cache);
        cache
            .file
            .find(token)
            .map(|n| Caller::Operator(n.to_string()))
            .ok_or_else(|| "unknown or revoked token".into())
    }

    /// Reads the token file again if it changed. An unreadable or broken file lets no
    /// operator token in (and says why in the log) rather than keeping revoked ones.
    fn refresh(&self, cache: &mut Cached) {
        use std::os::unix::fs::MetadataExt;
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.size(), m.mtime(), m.mtime_nsec(), m.ino()));
        if cache.stamp.is_some() && cache.stamp == stamp {
            return;
        }
        cache.file = match TokenFile::read(&self.path) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(
                    "admin API: {e:#}; no operator token is accepted until it is fixed"
                );
                TokenFile::default()
            }
        };
        // A missing file is looked at again next time (it may be created any moment).
        cache.stamp = stamp;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AdminKey {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.key");
        std::fs::write(&p, "00112233\n").unwrap();
        AdminKey::load(&p).unwrap()
    }

    #[test]
    fn secret_tokens_verify_until_they_expire_and_not_when_altered() {
        let k = key();
        let t = k.mint("MBX1", 60);
        assert_eq!(k.verify(&t).unwrap(), "MBX1");
        // Another label, or a later expiry, with the same MAC: refused.
        let forged = t.replacen("MBX1", "MBX2", 1);
        assert_eq!(k.verify(&forged), Err("wrong token"));
        let parts: Vec<&str> = t.split('.').collect();
        let later: u64 = parts[2].parse::<u64>().unwrap() + 3600;
        let forged = format!("v1.MBX1.{later}.{}.{}", parts[3], parts[4]);
        assert_eq!(k.verify(&forged), Err("wrong token"));
        // Expired: signed correctly, in the past.
        let past = unix_now() - 1;
        let nonce = "00";
        let mac = hex::encode(k.mac("cli", past, nonce).finalize().into_bytes());
        assert_eq!(
            k.verify(&format!("v1.cli.{past}.{nonce}.{mac}")),
            Err("expired token")
        );
        // Signed correctly but valid for a day: refused.
        let far = unix_now() + 86400;
        let mac = hex::encode(k.mac("cli", far, nonce).finalize().into_bytes());
        assert!(k.verify(&format!("v1.cli.{far}.{nonce}.{mac}")).is_err());
        // Another secret's key.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.key");
        std::fs::write(&p, "other\n").unwrap();
        assert_eq!(AdminKey::load(&p).unwrap().verify(&t), Err("wrong token"));
    }

    #[test]
    fn operator_tokens_are_stored_hashed_and_a_revoke_is_seen_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKENS_FILE);
        let mut f = TokenFile::default();
        let token = f.create("alice").unwrap();
        assert!(f.create("alice").is_err(), "one active token per name");
        assert!(f.create("bad name").is_err());
        f.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&token[4..]),
            "the token itself is never stored"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let v = Verifier::new(key(), path.clone());
        assert!(matches!(v.check(&token), Ok(Caller::Operator(n)) if n == "alice"));
        assert!(v.check("mfa_00").is_err());
        let mut f = TokenFile::read(&path).unwrap();
        assert_eq!(f.revoke("alice"), 1);
        f.write(&path).unwrap();
        assert!(v.check(&token).is_err());
    }
}

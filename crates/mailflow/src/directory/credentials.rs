//! Mailbox passwords for client submission (AUTH on `Client Frontend` and implicit-TLS
//! connectors): argon2 hashes kept in the organisation file (`password_hash`, written
//! by `mailflow mailbox set-password`), and failed-logon throttling per client address
//! and per account. Kept with the directory because the hashes are the organisation
//! file's (the book follows the file as `set-password` changes it); the receive
//! connector (net/) asks it at AUTH. Imports no service (not net, frontend, transport,
//! mailbox or cli).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use mailflow_smtp::{Reply, replies};

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

    /// The account a logon name stands for: the mailbox's primary address (so aliases
    /// and case count as one account), else the name itself in lower case.
    pub fn account_key(&self, username: &str) -> String {
        let dir = self.directory();
        let mut key = match dir.lookup(username) {
            Some(Recipient::Mailbox(i)) => dir.mailbox(i).address.to_lowercase(),
            _ => username.to_lowercase(),
        };
        if key.len() > MAX_ACCOUNT_KEY {
            let mut end = MAX_ACCOUNT_KEY;
            while !key.is_char_boundary(end) {
                end -= 1;
            }
            key.truncate(end);
        }
        key
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

/// MaxLogonFailures (reference §1.2: 3): failures within [`WINDOW`] before logons are
/// refused, counted per client address and per account.
const MAX_LOGON_FAILURES: usize = 3;
/// AuthTarpitInterval (reference §1.2: 5 s): every failed logon is answered this late,
/// so one connection cannot try passwords faster.
const AUTH_TARPIT_INTERVAL: Duration = Duration::from_secs(5);
/// How long a failure counts (a sliding window: each failure ages out on its own).
const WINDOW: Duration = Duration::from_secs(300);
/// How long a successful logon makes its client address trusted for that account.
const KNOWN_GOOD: Duration = Duration::from_secs(24 * 3600);
/// Entries each map keeps at most; past it the expired go first, then the oldest.
const MAX_TRACKED: usize = 10_000;
/// Longest account key kept (RFC 5321 §4.5.3.1: an address is at most 256 octets), so
/// a spray of long logon names cannot inflate the maps.
const MAX_ACCOUNT_KEY: usize = 256;

/// The client as the throttle counts it: an IPv4 address, or an IPv6 /64 (one
/// subscriber's usual allocation, in which an attacker can pick any address).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
    }
}

/// What became of one AUTH attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logon {
    /// The password matched: the mailbox's primary address and all its addresses.
    Accepted((String, Vec<String>)),
    /// Wrong user or password (answered after the tarpit interval).
    Rejected,
    /// Refused without looking at the password: too many recent failures from this
    /// client address, or against this account from addresses it never logged on from.
    Throttled,
}

impl Logon {
    /// The SMTP reply for each outcome.
    pub fn reply(&self) -> Reply {
        match self {
            Logon::Accepted(_) => replies::authentication_successful(),
            Logon::Rejected => replies::credentials_invalid(),
            Logon::Throttled => replies::logon_throttled(),
        }
    }
}

/// Failed-logon throttling for mailbox users (Exchange's MaxLogonFailures and
/// AuthTarpitInterval), built so that:
/// - failures count per client (an IPv4 address or an IPv6 /64) and per account (the
///   logon name as the directory resolves it, so aliases and case do not multiply the
///   tries);
/// - a successful logon clears only its own account's failures from its own address:
///   an attacker holding one valid account cannot reset the count for another;
/// - an account that failed [`MAX_LOGON_FAILURES`] times within the window, from any
///   addresses, is locked for every address that has not logged on to it recently,
///   which slows a distributed attack while its owner's usual clients still get in;
/// - memory is bounded ([`MAX_TRACKED`] entries per map, oldest evicted).
///
/// Time is an argument (`now`), so the rules are tested without waiting.
#[derive(Default)]
pub struct AuthThrottle {
    state: Mutex<ThrottleState>,
}

#[derive(Default)]
struct ThrottleState {
    /// Recent failures from each client address, with the account each was against.
    by_ip: HashMap<IpAddr, VecDeque<(Instant, String)>>,
    /// Recent failures against each account, with the address each came from.
    by_account: HashMap<String, VecDeque<(Instant, IpAddr)>>,
    /// When each (address, account) last logged on successfully.
    known_good: HashMap<(IpAddr, String), Instant>,
}

/// Drops failures older than the window.
fn prune<T>(list: &mut VecDeque<(Instant, T)>, now: Instant) {
    while list
        .front()
        .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= WINDOW)
    {
        list.pop_front();
    }
}

/// Makes room for a new key: expired entries first, then the least recently touched.
fn make_room<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    key: &K,
    last: impl Fn(&V) -> Option<Instant>,
    expired: impl Fn(&V) -> bool,
) {
    if map.len() < MAX_TRACKED || map.contains_key(key) {
        return;
    }
    map.retain(|_, v| !expired(v));
    while map.len() >= MAX_TRACKED {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| last(v))
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        map.remove(&oldest);
    }
}

impl ThrottleState {
    fn is_throttled(&mut self, ip: IpAddr, account: &str, now: Instant) -> bool {
        let from_ip = self.by_ip.get_mut(&ip).map_or(0, |l| {
            prune(l, now);
            l.len()
        });
        if from_ip >= MAX_LOGON_FAILURES {
            return true;
        }
        let against = self.by_account.get_mut(account).map_or(0, |l| {
            prune(l, now);
            l.len()
        });
        let trusted = self
            .known_good
            .get(&(ip, account.to_string()))
            .is_some_and(|t| now.saturating_duration_since(*t) < KNOWN_GOOD);
        against >= MAX_LOGON_FAILURES && !trusted
    }

    fn record_failure(&mut self, ip: IpAddr, account: &str, now: Instant) {
        // A bound per key as well: in-flight attempts may pass the limit a little.
        const PER_KEY: usize = 4 * MAX_LOGON_FAILURES;
        fn latest<T>(l: &VecDeque<(Instant, T)>) -> Option<Instant> {
            l.back().map(|(t, _)| *t)
        }
        fn stale<T>(l: &VecDeque<(Instant, T)>, now: Instant) -> bool {
            l.back()
                .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= WINDOW)
        }
        make_room(&mut self.by_ip, &ip, latest, |l| stale(l, now));
        let list = self.by_ip.entry(ip).or_default();
        list.push_back((now, account.to_string()));
        if list.len() > PER_KEY {
            list.pop_front();
        }
        let key = account.to_string();
        make_room(&mut self.by_account, &key, latest, |l| stale(l, now));
        let list = self.by_account.entry(key).or_default();
        list.push_back((now, ip));
        if list.len() > PER_KEY {
            list.pop_front();
        }
    }

    fn record_success(&mut self, ip: IpAddr, account: &str, now: Instant) {
        // Only this account's failures from this address are forgiven.
        if let Some(l) = self.by_ip.get_mut(&ip) {
            l.retain(|(_, a)| a != account);
        }
        if let Some(l) = self.by_account.get_mut(account) {
            l.retain(|(_, i)| *i != ip);
        }
        let key = (ip, account.to_string());
        make_room(
            &mut self.known_good,
            &key,
            |t| Some(*t),
            |t| now.saturating_duration_since(*t) >= KNOWN_GOOD,
        );
        self.known_good.insert(key, now);
    }
}

impl AuthThrottle {
    fn state(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One AUTH attempt: throttled, checked, and a failure answered after
    /// [`AUTH_TARPIT_INTERVAL`].
    pub async fn logon(
        &self,
        book: &PasswordBook,
        ip: IpAddr,
        username: &str,
        password: &str,
    ) -> Logon {
        let account = book.account_key(username);
        let ip = client_key(ip);
        {
            let mut state = self.state();
            if state.is_throttled(ip, &account, Instant::now()) {
                return Logon::Throttled;
            }
            // Counted before the check, so parallel attempts cannot outrun the limit.
            state.record_failure(ip, &account, Instant::now());
        }
        match book.verify(username, password).await {
            Some(user) => {
                self.state().record_success(ip, &account, Instant::now());
                Logon::Accepted(user)
            }
            None => {
                tokio::time::sleep(AUTH_TARPIT_INTERVAL).await;
                Logon::Rejected
            }
        }
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
    async fn passwords_verify_and_aliases_count_as_one_account() {
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
        assert_eq!(book.account_key("A@C.TEST"), "ann@c.test");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_from_one_address_lock_it_out_and_age_out_of_the_window() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..MAX_LOGON_FAILURES {
            assert!(!t.state().is_throttled(a, "ann@c.test", now), "attempt {i}");
            t.state().record_failure(a, "ann@c.test", now);
        }
        assert!(t.state().is_throttled(a, "ann@c.test", now));
        assert!(
            t.state().is_throttled(a, "bob@c.test", now),
            "the address, any account"
        );
        assert!(!t.state().is_throttled(a, "ann@c.test", now + WINDOW));
    }

    #[test]
    fn a_success_on_one_account_does_not_clear_failures_against_another() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let a = ip("192.0.2.1");
        t.state().record_failure(a, "ann@c.test", now);
        t.state().record_failure(a, "ann@c.test", now);
        t.state().record_success(a, "eve@c.test", now);
        t.state().record_failure(a, "ann@c.test", now);
        assert!(t.state().is_throttled(a, "ann@c.test", now));
        // The owner's own success forgives her own typos from her own address.
        let b = ip("192.0.2.2");
        t.state().record_failure(b, "bob@c.test", now);
        t.state().record_failure(b, "bob@c.test", now);
        t.state().record_success(b, "bob@c.test", now);
        t.state().record_failure(b, "bob@c.test", now);
        assert!(!t.state().is_throttled(b, "bob@c.test", now));
    }

    #[test]
    fn a_distributed_attack_locks_the_account_except_for_known_good_addresses() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let home = ip("192.0.2.10");
        t.state().record_success(home, "ann@c.test", now);
        for i in 1..=MAX_LOGON_FAILURES {
            t.state()
                .record_failure(ip(&format!("198.51.100.{i}")), "ann@c.test", now);
        }
        assert!(
            t.state()
                .is_throttled(ip("198.51.100.200"), "ann@c.test", now)
        );
        assert!(
            !t.state()
                .is_throttled(ip("198.51.100.200"), "bob@c.test", now)
        );
        assert!(!t.state().is_throttled(home, "ann@c.test", now));
        assert!(
            !t.state()
                .is_throttled(ip("198.51.100.200"), "ann@c.test", now + WINDOW)
        );
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn memory_stays_bounded_under_a_spray_of_addresses_and_names() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 500) {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.state().record_failure(a, &format!("user{i}@c.test"), now);
            t.state().record_success(a, &format!("user{i}@c.test"), now);
        }
        let s = t.state();
        assert!(s.by_ip.len() <= MAX_TRACKED);
        assert!(s.by_account.len() <= MAX_TRACKED);
        assert!(s.known_good.len() <= MAX_TRACKED);
    }
}

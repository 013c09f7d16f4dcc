//! A private Postfix instance on loopback that plays "the internet": a real,
//! independent MTA for mailflow to deliver to (and be rejected by).
//!
//! Each instance lives entirely in its own temp dir (config, queue, data, Maildir,
//! log), listens only on 127.0.0.1:<free port>, and leaves /etc/postfix and any
//! system instance on port 25 alone, so parallel tests can each have one.
//! Needs root (Postfix's master must start as root) and Debian's `postfix` package;
//! `static:`/`texthash:` maps are built in, so neither `postmap` nor `postfix-pcre`
//! is needed.
// Every integration test binary compiles this module and uses only some of it.
#![allow(dead_code)]

use super::{file_text, free_ports, wait_for};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const POSTFIX: &str = "/usr/sbin/postfix";

pub struct PostfixOptions {
    /// The only domain this MX accepts; anything else is "Relay access denied".
    pub domain: String,
    /// Recipients refused at RCPT with `550 5.1.1`.
    pub reject: Vec<String>,
    /// Offer STARTTLS with a self-signed certificate (`dir/etc/cert.pem`).
    pub tls: bool,
    /// More main.cf lines, e.g. `smtpd_discard_ehlo_keywords = 8bitmime` for a peer
    /// that does not offer 8BITMIME.
    pub main_cf: String,
}

impl Default for PostfixOptions {
    fn default() -> Self {
        PostfixOptions {
            domain: "fabrikam.test".into(),
            reject: Vec::new(),
            tls: false,
            main_cf: String::new(),
        }
    }
}

pub struct Postfix {
    pub port: u16,
    pub dir: tempfile::TempDir,
    running: bool,
}

impl Postfix {
    /// Starts an instance. A port chosen by `free_ports` may be taken by a parallel
    /// test before master binds it, so a bind failure is retried on a new port.
    pub fn start(opts: PostfixOptions) -> Postfix {
        assert!(
            Path::new(POSTFIX).exists(),
            "Postfix is not installed ({POSTFIX} is missing): apt-get install -y postfix"
        );
        let dir = tempfile::Builder::new()
            .prefix("postfix-")
            .tempdir()
            .unwrap();
        let mut pf = Postfix {
            port: 0,
            dir,
            running: false,
        };
        pf.prepare(&opts);
        for _ in 0..5 {
            pf.port = free_ports(1)[0];
            pf.write_master_cf();
            match pf.try_start(false) {
                Ok(()) => {
                    pf.watchdog();
                    return pf;
                }
                Err(e) if e.contains("Address already in use") => continue,
                Err(e) => panic!("Postfix did not start:\n{e}"),
            }
        }
        panic!("Postfix did not start in 5 attempts:\n{}", pf.log());
    }

    /// Returns once the port refuses connections.
    pub fn stop(&mut self) {
        if let Err(e) = self.shutdown() {
            panic!("{e}");
        }
    }

    /// Not panicking, for Drop.
    fn shutdown(&mut self) -> Result<(), String> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        // `postfix stop` waits for master (and kill -9s it after 5 s), but smtpd
        // children may still hold the inherited listening socket for a moment.
        let stopped = self.postfix("stop");
        let closed = super::poll_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", self.port))
                .is_err()
                .then_some(())
        });
        closed.ok_or_else(|| {
            format!(
                "Postfix port {} still accepts connections after stop ({stopped:?})",
                self.port
            )
        })
    }

    /// Starts again on the same port, with the queue and Maildir kept.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.try_start(true) {
            panic!("Postfix did not restart on port {}:\n{e}", self.port);
        }
    }

    /// Delivered messages of all recipients, oldest first. Postfix stores them with
    /// LF line ends; they are returned with CRLF (as Postfix would send them on),
    /// so the CRLF helpers (`body_of`, `header_values`) work on them. Postfix adds
    /// `Return-Path:`, `Delivered-To: <recipient>` and a `Received:` on top.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut files = Vec::new();
        maildir_files(&self.dir.path().join("mail"), &mut files);
        let mut dated: Vec<_> = files
            .into_iter()
            .filter_map(|f| Some((std::fs::metadata(&f).ok()?.modified().ok()?, f)))
            .collect();
        dated.sort();
        dated
            .into_iter()
            .filter_map(|(_, f)| std::fs::read(f).ok())
            .map(|m| crlf(&m))
            .collect()
    }

    /// Waits until at least `n` messages are delivered; returns them all.
    pub fn wait_messages(&self, n: usize) -> Vec<Vec<u8>> {
        wait_for(
            &format!("{n} messages delivered by Postfix on port {}", self.port),
            Duration::from_secs(60),
            || {
                let m = self.messages();
                (m.len() >= n).then_some(m)
            },
        )
    }

    /// This instance's log (with `smtpd_tls_loglevel = 1`, a STARTTLS session logs
    /// "TLS connection established from").
    pub fn log(&self) -> String {
        file_text(&self.dir.path().join("maillog"))
    }

    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn postfix(&self, action: &str) -> Result<(), String> {
        // To a file, not a pipe: master daemonizes and could keep a pipe open.
        let out_path = self.dir.path().join("postfix.out");
        // Only this run's part, so an earlier bind failure isn't taken for this one's.
        let log_start = self.log().len();
        let out = std::fs::File::create(&out_path).unwrap();
        let status = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.etc())
            .arg(action)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .unwrap_or_else(|e| panic!("run {POSTFIX}: {e}"));
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "postfix -c {} {action}: {status}\n{}{}\n---- maillog ----\n{}",
                self.etc().display(),
                file_text(&out_path),
                self.check_on_tty(),
                &self.log()[log_start..]
            ))
        }
    }

    /// Errors found before main.cf is accepted (a bad parameter value) go neither
    /// to maillog_file nor to a non-tty stderr but to syslog, absent here; `postfix
    /// check` prints them when given a terminal, which `script` (util-linux) lends.
    fn check_on_tty(&self) -> String {
        let cmd = format!("{POSTFIX} -c {} check", self.etc().display());
        match Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => String::from_utf8_lossy(&o.stdout).replace('\r', ""),
            Err(e) => format!("(script for `{cmd}`: {e})\n"),
        }
    }

    /// `quick`: skip the integrity checks (about a second, slower on a loaded
    /// machine), for a restart after a start that passed them.
    fn try_start(&mut self, quick: bool) -> Result<(), String> {
        if quick {
            std::fs::write(self.dir.path().join("spool/quick-start"), "").unwrap();
        }
        // `master -w` returns once master has bound its sockets: no connect probe
        // (it would log a "lost connection after CONNECT").
        self.postfix("start")?;
        self.running = true;
        Ok(())
    }

    /// Everything but master.cf (which holds the port).
    fn prepare(&self, opts: &PostfixOptions) {
        let root = self.dir.path();
        let etc = self.etc();
        let mail = root.join("mail");
        std::fs::create_dir(&etc).unwrap();
        std::fs::create_dir(&mail).unwrap();
        // `postfix start` creates the queue's subdirectories, not the queue itself.
        std::fs::create_dir(root.join("spool")).unwrap();
        // Daemons run as `postfix` and deliveries as `nobody`: they must be able to
        // reach into the 0700 temp dir.
        set_mode(root, 0o755);
        let (uid, gid) = (id("-u"), id("-g"));
        std::os::unix::fs::chown(&mail, Some(uid), Some(gid)).unwrap();

        let domain = &opts.domain;
        let reject: String = opts
            .reject
            .iter()
            .map(|r| format!("{} 550 5.1.1 User unknown\n", r.to_lowercase()))
            .collect();
        std::fs::write(etc.join("reject"), reject).unwrap();

        let tls = if opts.tls {
            let out = Command::new("openssl")
                .args(["req", "-x509", "-nodes", "-newkey", "ec"])
                .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "3650"])
                .arg("-subj")
                .arg(format!("/CN=mx.{domain}"))
                // usable as a trust anchor by a rustls client: names in the SAN, and
                // not a CA (webpki refuses a CA certificate as the server's own)
                .arg("-addext")
                .arg(format!("subjectAltName=DNS:mx.{domain}"))
                .args(["-addext", "basicConstraints=critical,CA:FALSE"])
                .arg("-keyout")
                .arg(etc.join("key.pem"))
                .arg("-out")
                .arg(etc.join("cert.pem"))
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl req: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            format!(
                "smtpd_tls_security_level = may\n\
                 smtpd_tls_chain_files = {e}/key.pem, {e}/cert.pem\n\
                 smtpd_tls_loglevel = 1\n",
                e = etc.display()
            )
        } else {
            "smtpd_tls_security_level = none\n".to_string()
        };

        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
# a file instead of syslog; Postfix only writes under maillog_file_prefixes
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.{domain}
mydomain = {domain}
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
biff = no
# no reverse DNS: there is no network
smtpd_peername_lookup = no
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {root}/mail
# every local part exists; all share one Maildir (virtual(8) refuses regexp
# substitution, so no per-recipient path). Delivered-To tells recipients apart.
virtual_mailbox_maps = static:{domain}/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
# a destination MX, never a relay (even for mynetworks)
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access texthash:{etc}/reject
# bounces and anything not local must not try the (absent) network
default_transport = error:5.3.0 this test MX sends nothing out
relay_transport = $default_transport
{tls}{extra}
",
            root = root.display(),
            etc = etc.display(),
            extra = opts.main_cf,
        );
        std::fs::write(etc.join("main.cf"), main_cf).unwrap();
    }

    fn write_master_cf(&self) {
        // Debian's list without chroot (the chroot would need /etc files copied in),
        // plus postlogd for maillog_file.
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
virtual    unix  - n n -     - virtual
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
",
            port = self.port
        );
        std::fs::write(self.etc().join("master.cf"), master_cf).unwrap();
    }

    /// If the test process dies without unwinding (kill, timeout, Ctrl-C), stops
    /// the orphaned instance and removes its dir; exits once the dir is gone.
    fn watchdog(&self) {
        use std::os::unix::process::CommandExt;
        let script = format!(
            "while kill -0 {pid} 2>/dev/null && [ -d '{etc}' ]; do sleep 1; done; \
             [ -d '{etc}' ] && {POSTFIX} -c '{etc}' stop; rm -rf '{root}'",
            pid = std::process::id(),
            etc = self.etc().display(),
            root = self.dir.path().display(),
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- postfix maillog (port {}) ----\n{}",
                self.port,
                self.log()
            );
        }
        if let Err(e) = self.shutdown() {
            eprintln!("{e}");
        }
    }
}

/// Files in every new/ and cur/ below `dir` (tmp/ holds deliveries in progress).
fn maildir_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        if p.ends_with("new") || p.ends_with("cur") {
            out.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else {
            maildir_files(&p, out);
        }
    }
}

fn crlf(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + m.len() / 40);
    for (i, &b) in m.iter().enumerate() {
        if b == b'\n' && (i == 0 || m[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// uid/gid of `nobody`, the owner of delivered mail (Postfix refuses root).
fn id(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "nobody"])
        .output()
        .expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no user nobody: {}", String::from_utf8_lossy(&out.stderr)))
}

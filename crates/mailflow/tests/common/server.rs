//! For now every helper lives here; they split into their own modules next.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mailflow");

/// Free loopback ports for servers under test. They come from below the kernel's
/// ephemeral range (32768+), so the local ports of outgoing connections can never take
/// them between the pick and the server's bind, and no port is handed out twice within
/// a test process.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        // A different start per process: test binaries run one after another.
        let start = 20000 + (std::process::id() % 600) as u16 * 20;
        let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(port < 32700, "out of test ports");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
    }
    out
}

/// How long the polling helpers wait between two looks.
const POLL: Duration = Duration::from_millis(50);

/// Polls `f` until it returns Some (that value) or the deadline passes (None). The
/// one place where tests wait: every other wait is a condition polled through here.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `f` until it returns Some or the deadline passes (then the test fails).
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Proves that nothing happens for `duration`: `check` must hold at every look (Err
/// says what went wrong) from now until the end, e.g. a message delivered exactly once
/// stays delivered once while a wrong second copy would have time to arrive.
pub fn assert_for(what: &str, duration: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let end = Instant::now() + duration;
    let failed = poll_until(duration + POLL, || {
        if let Err(e) = check() {
            return Some(Some(e));
        }
        (Instant::now() >= end).then_some(None)
    });
    if let Some(Some(e)) = failed {
        panic!("{what} did not hold for {duration:?}: {e}");
    }
}

pub struct Ports {
    pub frontend: u16,
    pub transport: u16,
    pub mailbox_delivery: u16,
    pub admin: u16,
    others: [u16; 3],
}

impl Ports {
    /// Every port 0: the server binds what the system gives and reports it in
    /// `<data_dir>/listeners.json` (only for an organisation of one server).
    pub fn system() -> Ports {
        Ports {
            frontend: 0,
            transport: 0,
            mailbox_delivery: 0,
            admin: 0,
            others: [0; 3],
        }
    }

    /// The ports a running server recorded in `<data_dir>/listeners.json`.
    pub fn bound(data_dir: &Path) -> Option<Ports> {
        let text = std::fs::read_to_string(data_dir.join("listeners.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let p = &v["ports"];
        let port = |k: &str| p[k].as_u64().and_then(|n| u16::try_from(n).ok());
        Some(Ports {
            frontend: port("frontend")?,
            transport: port("transport")?,
            mailbox_delivery: port("mailbox_delivery")?,
            admin: port("admin")?,
            others: [
                port("client_frontend")?,
                port("client_proxy")?,
                port("outbound_proxy")?,
            ],
        })
    }

    /// Explicit free ports, for organisations of several servers (each must know
    /// where the others listen).
    pub fn new() -> Ports {
        let p = free_ports(7);
        Ports {
            frontend: p[0],
            transport: p[1],
            mailbox_delivery: p[2],
            admin: p[3],
            others: [p[4], p[5], p[6]],
        }
    }
    /// The Outbound Proxy Frontend port (:717 in Exchange).
    pub fn others_outbound_proxy(&self) -> u16 {
        self.others[2]
    }
    /// The Client Frontend port (:587 in Exchange).
    pub fn client_frontend(&self) -> u16 {
        self.others[0]
    }
    /// The Client Proxy port (:465 in Exchange).
    pub fn client_proxy(&self) -> u16 {
        self.others[1]
    }

    fn toml(&self) -> String {
        format!(
            "[servers.ports]\nfrontend = {}\nclient_frontend = {}\nclient_proxy = {}\noutbound_proxy = {}\ntransport = {}\nmailbox_delivery = {}\nadmin = {}\n",
            self.frontend,
            self.others[0],
            self.others[1],
            self.others[2],
            self.transport,
            self.mailbox_delivery,
            self.admin
        )
    }
}

/// The standard test organisation: contoso.test with alice (alias a.smith), bob,
/// carol, a group with an external member and a nested loop, and an Internet send
/// connector. `extra` is appended (more servers, databases…).
pub fn org_file(ports: &Ports, extra: &str) -> String {
    org_file_with(ports, "", extra)
}

/// Like `org_file`, with more `[transport]` settings.
pub fn org_file_with(ports: &Ports, transport: &str, extra: &str) -> String {
    format!(
        r#"[organization]
name = "contoso"
secret_file = "secret.key"
accepted_domains = ["contoso.test"]
max_message_size = "1MB"

[transport]
queue_glitch_retry_interval = "1s"
transient_failure_retry_interval = "2s"
outbound_connection_failure_retry_interval = "2s"
intra_org_connector_protocol_logging = "verbose"
mailbox_delivery_connector_protocol_logging = "verbose"
# No DNS on the test machine: a closed port makes MX lookups fail transiently, so
# external recipients wait in their queue (outbound tests use smart hosts).
external_dns_servers = ["127.0.0.1:9"]
{transport}

[[sites]]
name = "Site-A"

[[servers]]
name = "MBX1"
site = "Site-A"
fqdn = "mbx1.contoso.test"
address = "127.0.0.1"
data_dir = "data/MBX1"
transport_protocol_logging = "verbose"
{frontend_limits}
{ports}
[[databases]]
name = "DB01"
copies = ["MBX1"]

[[mailboxes]]
address = "alice@contoso.test"
database = "DB01"
aliases = ["a.smith@contoso.test"]

[[mailboxes]]
address = "bob@contoso.test"
database = "DB01"

[[mailboxes]]
address = "carol@contoso.test"
database = "DB01"

[[groups]]
address = "sales@contoso.test"
members = ["alice@contoso.test", "a.smith@contoso.test", "bob@contoso.test", "ext@fabrikam.test", "team@contoso.test"]
# The tests send to groups from the internet; Exchange's default (true) is tested in
# hardening_permissions.rs.
require_sender_authentication = false

[[groups]]
address = "team@contoso.test"
members = ["sales@contoso.test", "bob@contoso.test"]
require_sender_authentication = false

[[send_connectors]]
name = "Internet"
address_spaces = [{{ domain = "*", cost = 1 }}]
source_servers = ["MBX1"]
{extra}"#,
        ports = ports.toml(),
        frontend_limits = FRONTEND_LIMITS,
    )
}

/// Every test client connects from 127.0.0.1: a limit of 100 sessions per source on
/// `Default Frontend` instead of Exchange's 20 (tests replace this line to test limits).
pub const FRONTEND_LIMITS: &str =
    "connector_limits.frontend = { max_inbound_connection_per_source = 100 }";

/// A running `mailflow serve`.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub ports: Ports,
    child: Option<Child>,
    /// Extra environment for the server process (fault injection in tests).
    pub env: Vec<(String, String)>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with("")
    }

    /// Starts a server; if a port picked for it was taken meanwhile (parallel tests),
    /// the server exits at bind and the start is retried with new ports.
    pub fn start_with(extra: &str) -> Server {
        Server::start_custom("", extra)
    }

    /// With more `[transport]` settings (retry and expiry timers…) and more tables.
    pub fn start_custom(transport: &str, extra: &str) -> Server {
        Server::start_from(|ports| org_file_with(ports, transport, extra))
    }

    /// Starts a server whose standard organisation file is first passed through
    /// `edit` (limits, settings the other helpers do not take).
    pub fn start_edited(edit: impl Fn(String) -> String) -> Server {
        Server::start_from(|ports| edit(org_file(ports, "")))
    }

    /// Writes the organisation file `org` makes and starts the server. A lone server
    /// gets port 0 everywhere and the ports it bound are read back from its
    /// `listeners.json`; a file with more servers gets explicit free ports (up to 5
    /// attempts: a port taken meanwhile by another process fails the start).
    fn start_from(org: impl Fn(&Ports) -> String) -> Server {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let mut ports = Ports::system();
            let mut text = org(&ports);
            if text.matches("[[servers]]").count() > 1 {
                ports = Ports::new();
                text = org(&ports);
            }
            std::fs::write(dir.path().join("mailflow.toml"), text).unwrap();
            std::fs::write(
                dir.path().join("secret.key"),
                "00112233445566778899aabbccddeeff\n",
            )
            .unwrap();
            let mut s = Server {
                dir,
                ports,
                child: None,
                env: Vec::new(),
            };
            if s.try_spawn() {
                return s;
            }
        }
        panic!("mailflow serve did not start in 5 attempts");
    }

    /// The process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("mailflow.toml")
    }

    pub fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "mailflow serve did not start:\n{}",
            self.log()
        );
    }

    /// Starts the process without waiting for it to be ready (it may crash at once).
    pub fn spawn_unchecked(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(self.config())
            .args(["--server", "MBX1"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Starts the process and waits for its "ready" line; false if it exited first.
    fn try_spawn(&mut self) -> bool {
        let log_path = self.dir.path().join("serve.log");
        let before = file_text(&log_path).matches("ready").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(self.config())
            .args(["--server", "MBX1"])
            .env("MAILFLOW_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mailflow serve");
        let started = wait_for(
            "mailflow serve to be ready or exit",
            Duration::from_secs(30),
            || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                (file_text(&log_path).matches("ready").count() > before).then_some(true)
            },
        );
        if started {
            self.child = Some(child);
            // "ready" comes after listeners.json is written.
            self.ports = Ports::bound(&self.data_dir())
                .unwrap_or_else(|| panic!("no listeners.json after ready:\n{}", self.log()));
        }
        started
    }

    /// Waits for the process to end by itself (a crash), true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let exited = poll_until(timeout, || {
            matches!(child.try_wait(), Ok(Some(_))).then_some(())
        });
        if exited.is_some() {
            self.child = None;
        }
        exited.is_some()
    }

    /// kill -9: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; its exit
    /// status, or None if it was still running (then it is killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let status = poll_until(timeout, || c.try_wait().ok().flatten());
        if status.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        status
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let exited = poll_until(Duration::from_secs(10), || {
                matches!(c.try_wait(), Ok(Some(_))).then_some(())
            });
            if exited.is_some() {
                return;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Runs a CLI command against this server's organisation file.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(self.config())
            .args(args)
            .output()
            .unwrap()
    }

    /// Puts `content` in `mailbox`'s Outbox (`mailbox send --eml`), as a user's client
    /// does: Mailbox Transport Submission takes it from there.
    pub fn send_from_outbox(&self, mailbox: &str, content: &str) {
        let eml = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(eml.path(), content).unwrap();
        let out = self.cli(&[
            "mailbox",
            "send",
            mailbox,
            "--eml",
            eml.path().to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "mailflow {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "mailflow {args:?}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The messages of a mailbox folder, as exported (.eml bytes, in delivery order).
    pub fn export(&self, address: &str) -> Vec<Vec<u8>> {
        let out_dir = tempfile::tempdir().unwrap();
        let out = self.cli(&[
            "mailbox",
            "export",
            address,
            "--folder",
            "Inbox",
            "--out",
            out_dir.path().to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "export failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut files: Vec<_> = std::fs::read_dir(out_dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    }

    pub fn inbox_count(&self, address: &str) -> u64 {
        let list = self.cli_json(&["mailbox", "list"]);
        list.as_array()
            .unwrap()
            .iter()
            .find(|m| m["PrimarySmtpAddress"].as_str() == Some(address))
            .map(|m| m["InboxItems"].as_u64().unwrap())
            .unwrap_or(0)
    }

    pub fn wait_inbox(&self, address: &str, count: u64) {
        wait_for(
            &format!("{count} messages in {address}'s Inbox"),
            Duration::from_secs(60),
            || (self.inbox_count(address) >= count).then_some(()),
        );
    }

    /// Tracking events (Get-MessageTrackingLog) with extra filter arguments.
    pub fn track(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = vec!["track", "--result-size", "0"];
        all.extend_from_slice(args);
        self.cli_json(&all).as_array().unwrap().clone()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data/MBX1")
    }

    /// The port a listener (by its name, e.g. a custom receive connector's) bound at
    /// the last start, from `<data_dir>/listeners.json`.
    pub fn listener_port(&self, name: &str) -> u16 {
        let text = file_text(&self.data_dir().join("listeners.json"));
        let v: serde_json::Value = serde_json::from_str(&text).expect("listeners.json");
        v["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .and_then(|l| l["address"].as_str()?.parse::<std::net::SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no listener {name:?} in listeners.json: {text}"))
            .port()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- serve.log ----\n{}", self.log());
        }
    }
}

/// A minimal line-oriented SMTP client for protocol tests.
pub struct Smtp {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Smtp {
    pub fn connect(port: u16) -> Smtp {
        Smtp::try_connect(port).unwrap_or_else(|greeting| panic!("greeting: {greeting}"))
    }

    /// Connects and reads the greeting; `Err` holds a greeting that is not `220`
    /// (e.g. `421 4.3.2` from a connector at its connection limit).
    pub fn try_connect(port: u16) -> Result<Smtp, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut s = Smtp { reader, stream };
        let greeting = s.read_reply();
        if greeting.starts_with("220 ") {
            Ok(s)
        } else {
            Err(greeting)
        }
    }

    /// Reads one reply (all lines), returns it with CRLFs.
    pub fn read_reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// One message; returns the final reply. `body` must use CRLF.
    pub fn send(&mut self, from: &str, to: &[&str], content: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250"), "MAIL: {r}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            assert!(r.starts_with("250"), "RCPT {t}: {r}");
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "DATA: {r}");
        let stuffed = content.replace("\r\n.", "\r\n..");
        self.send_raw(stuffed.as_bytes());
        self.send_raw(b"\r\n.\r\n");
        self.read_reply()
    }

    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}

pub fn message(subject: &str, body: &str) -> String {
    format!(
        "From: Sender <sender@fabrikam.test>\r\nTo: someone@contoso.test\r\nSubject: {subject}\r\nMessage-ID: <{}@fabrikam.test>\r\n\r\n{body}",
        subject.replace(' ', "-")
    )
}

/// The part of a message after its header block.
pub fn body_of(eml: &[u8]) -> &[u8] {
    let pos = eml
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header/body separator");
    &eml[pos + 4..]
}

pub fn header_values(eml: &[u8], name: &str) -> Vec<String> {
    let head =
        String::from_utf8_lossy(&eml[..eml.windows(4).position(|w| w == b"\r\n\r\n").unwrap()])
            .replace("\r\n ", " ");
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn file_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Several `mailflow serve` processes of one organisation, each with its own ports and
/// data folder, sharing one organisation file and secret.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ports: std::collections::HashMap<String, Ports>,
    children: std::collections::HashMap<String, Child>,
}

/// `[[servers]]` entry for a cluster member.
pub fn server_entry(name: &str, site: &str, ports: &Ports) -> String {
    format!(
        "\n[[servers]]\nname = \"{name}\"\nsite = \"{site}\"\nfqdn = \"{fqdn}.contoso.test\"\naddress = \"127.0.0.1\"\ndata_dir = \"data/{name}\"\n{ports}",
        fqdn = name.to_lowercase(),
        ports = ports.toml()
    )
}

impl Cluster {
    /// `org` gets the ports of every server and returns the organisation file.
    pub fn new(
        names: &[&str],
        org: impl Fn(&std::collections::HashMap<String, Ports>) -> String,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: std::collections::HashMap<String, Ports> = names
            .iter()
            .map(|n| (n.to_string(), Ports::new()))
            .collect();
        std::fs::write(dir.path().join("mailflow.toml"), org(&ports)).unwrap();
        std::fs::write(
            dir.path().join("secret.key"),
            "00112233445566778899aabbccddeeff\n",
        )
        .unwrap();
        Cluster {
            dir,
            ports,
            children: Default::default(),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("mailflow.toml")
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    pub fn start(&mut self, name: &str) {
        let log_path = self.log_path(name);
        let before = file_text(&log_path).matches("ready").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(self.config())
            .args(["--server", name])
            .env("MAILFLOW_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let ok = wait_for(
            &format!("{name} to be ready"),
            Duration::from_secs(30),
            || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                (file_text(&log_path).matches("ready").count() > before).then_some(true)
            },
        );
        assert!(ok, "{name} did not start:\n{}", file_text(&log_path));
        self.children.insert(name.to_string(), child);
    }

    pub fn start_all(&mut self) {
        let mut names: Vec<String> = self.ports.keys().cloned().collect();
        names.sort();
        for n in names {
            self.start(&n);
        }
    }

    pub fn kill9(&mut self, name: &str) {
        if let Some(mut c) = self.children.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn frontend(&self, name: &str) -> u16 {
        self.ports[name].frontend
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(self.config())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "mailflow {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Tracking events of one server (or all with `None`).
    pub fn track(&self, server: Option<&str>, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = vec!["track", "--result-size", "0"];
        if let Some(s) = server {
            all.extend(["--server", s]);
        }
        all.extend_from_slice(args);
        self.cli_json(&all).as_array().unwrap().clone()
    }

    pub fn event_ids(&self, server: &str, subject: &str) -> Vec<String> {
        self.track(Some(server), &["--subject", subject])
            .iter()
            .map(|e| e["EventId"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until `count` DELIVER events for `subject` exist across the organisation.
    pub fn wait_delivered(&self, subject: &str, count: usize) -> Vec<serde_json::Value> {
        wait_for(
            &format!("{count} DELIVER events for {subject:?}"),
            Duration::from_secs(60),
            || {
                let d = self.track(None, &["--event-id", "DELIVER", "--subject", subject]);
                (d.len() >= count).then_some(d)
            },
        )
    }

    pub fn queues(&self, server: &str) -> Vec<serde_json::Value> {
        self.cli_json(&["--server", server, "queue", "list"])
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn logs(&self) -> String {
        let mut names: Vec<&String> = self.ports.keys().collect();
        names.sort();
        names
            .iter()
            .map(|n| format!("---- {n} ----\n{}", file_text(&self.log_path(n))))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let names: Vec<String> = self.children.keys().cloned().collect();
        for n in names {
            self.kill9(&n);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Sends one message through a Front End and expects 250.
pub fn send_via(port: u16, to: &[&str], subject: &str) {
    let mut c = Smtp::connect(port);
    c.cmd("EHLO client.fabrikam.test");
    let r = c.send(
        "sender@fabrikam.test",
        to,
        &message(subject, "multi-server\r\n"),
    );
    assert!(r.starts_with("250"), "{subject}: {r}");
    c.cmd("QUIT");
}

/// Postfix's `smtp-sink` on a free loopback port, dumping each transaction to a file:
/// a peer that accepts everything (the ceiling of the benchmarks, a simple "internet").
pub struct Sink {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Sink {
    pub fn start() -> Sink {
        assert!(
            have("smtp-sink"),
            "smtp-sink (Debian package postfix) is installed by scripts/test"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_ports(1)[0];
        let template = format!("{}/%Y%m%d%H%M%S.", dir.path().display());
        let child = Command::new("smtp-sink")
            .args([
                "-u",
                "root",
                "-d",
                &template,
                &format!("127.0.0.1:{port}"),
                "64",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("smtp-sink to listen", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Sink { port, dir, child }
    }

    /// Dumped transactions (envelope lines then the message).
    pub fn transactions(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| file_text(&e.unwrap().path()))
            .collect()
    }

    /// Waits for `n` transactions whose dumps are complete. smtp-sink writes a dump
    /// while the transaction runs and marks no end, so the dumps are complete once
    /// they have not changed for 300 ms.
    pub fn wait_transactions(&self, n: usize) -> Vec<String> {
        const SETTLED: Duration = Duration::from_millis(300);
        let mut last = (Vec::new(), Instant::now());
        wait_for(
            &format!("{n} complete transactions at the sink"),
            Duration::from_secs(30),
            || {
                let mut dumps = self.transactions();
                dumps.sort();
                if dumps != last.0 {
                    last = (dumps, Instant::now());
                    return None;
                }
                (dumps.len() >= n && last.1.elapsed() >= SETTLED).then_some(dumps)
            },
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

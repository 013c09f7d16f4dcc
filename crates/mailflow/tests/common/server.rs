//! [`Server`]: one `mailflow serve` started on loopback from the standard
//! organisation file, its CLI (`mailflow --config …`) and what it wrote; killed on drop.
//! Must not import the SMTP client (tests talk to the ports themselves).

use super::{
    BIN, Ports, assert_success, cli, cli_json, dir_text, export_mailbox, file_text, org_file,
    org_file_with, poll_until, send_from_outbox, wait_for,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

/// Starts `mailflow serve --config <config> [--server <server>]` with `env`, its
/// output appended to `log_path`, and waits up to 30 s for a new "ready" line there:
/// the process, or None if it exited first (e.g. a port taken meanwhile).
pub fn spawn_serve(
    config: &Path,
    server: Option<&str>,
    log_path: &Path,
    env: &[(String, String)],
) -> Option<Child> {
    let before = file_text(log_path).matches("ready").count();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let mut command = Command::new(BIN);
    command.args(["serve", "--config"]).arg(config);
    if let Some(server) = server {
        command.args(["--server", server]);
    }
    let child = command
        .env("MAILFLOW_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start mailflow serve");
    wait_ready(child, log_path, before)
}

/// Waits up to 30 s for `log_path` to hold more than `before` "ready" lines: the
/// process, or None if it exited first.
pub fn wait_ready(mut child: Child, log_path: &Path, before: usize) -> Option<Child> {
    let ready = wait_for(
        "mailflow serve to be ready or exit",
        Duration::from_secs(30),
        || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(false);
            }
            (file_text(log_path).matches("ready").count() > before).then_some(true)
        },
    );
    ready.then_some(child)
}

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
        let Some(child) = spawn_serve(&self.config(), Some("MBX1"), &log_path, &self.env) else {
            return false;
        };
        self.child = Some(child);
        // "ready" comes after listeners.json is written.
        self.ports = Ports::bound(&self.data_dir())
            .unwrap_or_else(|| panic!("no listeners.json after ready:\n{}", self.log()));
        true
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
        cli(&self.config(), args)
    }

    /// Puts `content` in `mailbox`'s Outbox ([`send_from_outbox`]).
    pub fn send_from_outbox(&self, mailbox: &str, content: &str) {
        send_from_outbox(&self.config(), mailbox, content)
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        cli_json(&self.config(), args)
    }

    /// The messages of a mailbox folder, as exported (.eml bytes, in delivery order).
    pub fn export(&self, address: &str) -> Vec<Vec<u8>> {
        export_mailbox(&self.config(), None, address, Some("Inbox"))
            .unwrap_or_else(|e| panic!("export failed: {e}"))
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

    /// The queues (Get-Queue): one JSON object each.
    pub fn queues(&self) -> Vec<serde_json::Value> {
        self.cli_json(&["queue", "list"])
            .as_array()
            .unwrap()
            .clone()
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

    /// The text of one log folder of the data folder (e.g.
    /// `Logs/FrontEnd/ProtocolLog/SmtpReceive`), its files in name order; "" before
    /// anything is written.
    pub fn log_dir(&self, folder: &str) -> String {
        dir_text(&self.data_dir().join(folder))
    }

    /// The lines of one send connector's sessions in the Transport's SEND protocol
    /// log (`Logs/Hub/ProtocolLog/SmtpSend`).
    pub fn send_log(&self, connector: &str) -> Vec<String> {
        self.send_log_of("Hub", connector)
    }

    /// The SMTP Send protocol log lines of `connector` written by `service` (`Hub` for
    /// Transport, `FrontEnd` for the Outbound Proxy: reference §8.1).
    pub fn send_log_of(&self, service: &str, connector: &str) -> Vec<String> {
        let connector = format!(",{connector},");
        self.log_dir(&format!("Logs/{service}/ProtocolLog/SmtpSend"))
            .lines()
            .filter(|l| l.contains(&connector))
            .map(str::to_string)
            .collect()
    }

    /// Waits up to 10 s for `needle` in a log folder (logs are written in batches) and
    /// returns the folder's text.
    pub fn wait_log(&self, folder: &str, needle: &str) -> String {
        poll_until(Duration::from_secs(10), || {
            let text = self.log_dir(folder);
            text.contains(needle).then_some(text)
        })
        .unwrap_or_else(|| {
            panic!(
                "no {needle:?} in {folder} after 10 s:\n{}",
                self.log_dir(folder)
            )
        })
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

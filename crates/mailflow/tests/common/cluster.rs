//! [`Cluster`]: several `mailflow serve` processes of one organisation, each with
//! explicit ports (they must know each other's), killed on drop. Must not import the
//! SMTP client.

use super::{
    BIN, Ports, cli, cli_json, export_mailbox, file_text, send_from_outbox, spawn_serve, wait_for,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::Duration;

/// Several `mailflow serve` processes of one organisation, each with its own ports and
/// data folder, sharing one organisation file and secret.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ports: HashMap<String, Ports>,
    children: HashMap<String, Child>,
}

impl Cluster {
    /// `org` gets the ports of every server and returns the organisation file.
    pub fn new(names: &[&str], org: impl Fn(&HashMap<String, Ports>) -> String) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: HashMap<String, Ports> = names
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
        let child = spawn_serve(&self.config(), Some(name), &log_path, &[])
            .unwrap_or_else(|| panic!("{name} did not start:\n{}", file_text(&log_path)));
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
        cli(&self.config(), args)
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        cli_json(&self.config(), args)
    }

    /// Puts `content` in `mailbox`'s Outbox ([`send_from_outbox`]).
    pub fn send_from_outbox(&self, mailbox: &str, content: &str) {
        send_from_outbox(&self.config(), mailbox, content)
    }

    /// The messages of `address`'s mailbox through `server`'s CLI view
    /// ([`export_mailbox`]).
    pub fn export(
        &self,
        server: Option<&str>,
        address: &str,
        folder: Option<&str>,
    ) -> Result<Vec<Vec<u8>>, String> {
        export_mailbox(&self.config(), server, address, folder)
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

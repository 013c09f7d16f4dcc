//! [`Sink`]: Postfix's `smtp-sink` as a peer that accepts everything. Imports only
//! the port, wait, files and run helpers.

use super::{file_text, free_ports, have, wait_for};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

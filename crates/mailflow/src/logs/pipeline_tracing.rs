//! Pipeline tracing (Set-TransportService `PipelineTracingEnabled`,
//! `PipelineTracingPath`, `PipelineTracingSenderAddress`; reference §8.4,
//! `Logs/Hub/PipelineTracing`, off by default): for messages whose envelope sender is
//! the configured address, snapshots of the message as the Transport pipeline sees it,
//! so an administrator can tell which agent changed what.
//!
//! Layout (Exchange writes a folder per message with one `.eml` per snapshot; ours):
//!
//! ```text
//! <PipelineTracingPath>/<network-message-id>/Original.eml
//!                                           /OnResolvedMessage0001.eml
//!                                           /OnResolvedMessage0002.eml …
//! ```
//!
//! `Original.eml` is the message as the categorizer took it from the Submission queue;
//! `<event><nnnn>.eml` is the message after the `nnnn`th agent that ran at that event
//! (in priority order, as `agent list` shows them), changed or not. The snapshots
//! hold message content: folders are created 0700 and files 0600.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Pipeline tracing of one Transport service, when enabled.
#[derive(Debug, Clone)]
pub struct PipelineTracing {
    dir: PathBuf,
    /// PipelineTracingSenderAddress: only this envelope sender's messages are traced.
    sender: String,
}

impl PipelineTracing {
    /// Traces `sender`'s messages into `dir` (created at the first snapshot). None
    /// without a sender address: Exchange traces nothing then.
    pub fn new(dir: &Path, sender: &str) -> Option<PipelineTracing> {
        let sender = sender.trim();
        (!sender.is_empty()).then(|| PipelineTracing {
            dir: dir.to_path_buf(),
            sender: sender.to_string(),
        })
    }

    /// The snapshots of one message, when its envelope sender is the traced address
    /// (compared without regard to case); None otherwise.
    pub fn message(&self, envelope_sender: &str, network_message_id: &str) -> Option<Trace> {
        if !envelope_sender.eq_ignore_ascii_case(&self.sender) {
            return None;
        }
        // The id is ours (hex), but a folder name must never climb out of the path.
        let folder: String = network_message_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let folder = if folder.is_empty() {
            "message".to_string()
        } else {
            folder
        };
        Some(Trace {
            dir: self.dir.join(folder),
        })
    }
}

/// The snapshot folder of one traced message.
#[derive(Debug, Clone)]
pub struct Trace {
    dir: PathBuf,
}

impl Trace {
    /// `Original.eml`: the message before any agent ran.
    pub fn original(&self, content: &[u8]) {
        self.write("Original.eml", content);
    }

    /// `<event><nnnn>.eml`: the message after the `order`th agent (from 1) at `event`
    /// (e.g. `OnResolvedMessage`).
    pub fn after_agent(&self, event: &str, order: usize, content: &[u8]) {
        self.write(&format!("{event}{order:04}.eml"), content);
    }

    /// Writes one snapshot, 0600 in a 0700 folder. A failure is reported and the
    /// message goes on: tracing is diagnostics, never a reason to hold mail.
    fn write(&self, name: &str, content: &[u8]) {
        let path = self.dir.join(name);
        let written = (|| -> io::Result<()> {
            crate::files::create_private_dir_all(&self.dir)?;
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(crate::files::FILE_MODE)
                .open(&path)?;
            f.write_all(content)
        })();
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "pipeline tracing snapshot not written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_the_traced_sender_private_files_named_by_event_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("PipelineTracing");
        assert!(PipelineTracing::new(&root, " ").is_none());
        let tracing = PipelineTracing::new(&root, "Tracer@Contoso.test").unwrap();
        assert!(tracing.message("other@contoso.test", "abc").is_none());
        let trace = tracing
            .message("tracer@contoso.test", "90afc210-18964d2b/../x")
            .unwrap();
        assert_eq!(trace.dir.as_path(), root.join("90afc210-18964d2bx"));
        trace.original(b"Subject: a\r\n\r\nbody\r\n");
        trace.after_agent("OnResolvedMessage", 1, b"Subject: [ext] a\r\n\r\nbody\r\n");
        let mut names: Vec<String> = fs::read_dir(trace.dir.as_path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["OnResolvedMessage0001.eml", "Original.eml"]);
        assert_eq!(
            fs::read(trace.dir.as_path().join("OnResolvedMessage0001.eml")).unwrap(),
            b"Subject: [ext] a\r\n\r\nbody\r\n"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(trace.dir.as_path()), 0o700);
        assert_eq!(mode(&trace.dir.as_path().join("Original.eml")), 0o600);
    }
}

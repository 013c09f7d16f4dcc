//! Reading what a server wrote: a file's text, a folder's files (protocol logs,
//! tracking logs) as one text. Missing files read as empty, so a poll can wait for
//! them. Imports nothing of the other helpers.

use std::path::{Path, PathBuf};

/// A file's text ("" if it does not exist yet).
pub fn file_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The files directly in `dir`, in name order (none if it does not exist yet).
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The text of every file directly in `dir`, in name order: e.g. one protocol log
/// folder (`Logs/FrontEnd/ProtocolLog/SmtpReceive`).
pub fn dir_text(dir: &Path) -> String {
    files_in(dir).iter().map(|f| file_text(f)).collect()
}

/// The text of every file below `root` (all depths) whose path contains `part`, in
/// path order: e.g. every protocol log of a server (`part` = `ProtocolLog`).
pub fn tree_text(root: &Path, part: &str) -> String {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().contains(part) {
                files.push(path);
            }
        }
    }
    files.sort();
    files.iter().map(|f| file_text(f)).collect()
}

//! Private files (DESIGN §7): what mailflow writes holds password hashes, keys, queued
//! mail and logs, so it is its owner's only. The process umask (077, set in main)
//! covers every file; these helpers make the mode explicit for secrets and keep the
//! mode an administrator chose when a file is rewritten.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of new files: owner read/write only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of new folders: owner only.
pub const DIR_MODE: u32 = 0o700;

/// `create_dir_all`, new folders 0700 (existing ones are left as they are).
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Writes a new file 0600 (a secret or key), replacing any content. An existing file
/// is narrowed to 0600 too: a key readable by others is no longer a secret.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Replaces `path` atomically (a temporary file beside it, then rename) keeping the
/// mode and owner the old file had, or 0600 for a new file. A rewrite must never widen what
/// the administrator narrowed (nor narrow a 0640 they chose for a reader group).
pub fn replace_preserving_mode(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let old = match std::fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mode = old
        .as_ref()
        .map_or(FILE_MODE, |m| m.permissions().mode() & 0o7777);
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if let Some(m) = &old {
            // Keep the owner too (root running `set-password` on the service
            // account's file must not leave a file the service cannot read). Only
            // root may give a file away; anyone else already owns it.
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.set_permissions(Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_keeps_the_mode_the_administrator_chose() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("org.toml");
        replace_preserving_mode(&p, b"a").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        std::fs::set_permissions(&p, Permissions::from_mode(0o640)).unwrap();
        replace_preserving_mode(&p, b"b").unwrap();
        assert_eq!(mode(&p), 0o640);
        assert_eq!(std::fs::read(&p).unwrap(), b"b");
        let k = dir.path().join("sub/key.pem");
        create_private_dir_all(k.parent().unwrap()).unwrap();
        write_private(&k, b"k").unwrap();
        assert_eq!(mode(&k), 0o600);
        assert_eq!(mode(k.parent().unwrap()), 0o700);
    }
}

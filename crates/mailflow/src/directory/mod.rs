//! The directory: the organisation file loaded, validated and indexed, playing the part
//! Active Directory plays for Exchange (recipient → mailbox → database → server), with
//! the topology, send connector selection, transport rules' shape, credentials and CA
//! files. Must not import net, context or a service (scripts/check-arrows).
//!
//! This file builds a [`Directory`] from the file's text: deserialized into the raw
//! shape ([`config`]), checked by [`validate`] (every error at once, by file, line and
//! key), then indexed. Its lookups and accessors are in `lookup.rs`.

pub mod active_copies;
pub mod builtin;
pub mod ca_file;
pub mod config;
pub mod credentials;
pub mod hub_selector;
pub mod live;
mod lookup;
pub mod permissions;
pub mod receive_connectors;
pub mod send_connectors;
pub mod topology;
pub mod transport_rules;
mod validate;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub use config::*;
pub use lookup::Recipient;
pub use receive_connectors::{ReceiveConnector, ReceiveService, ReceiveTls};
pub use validate::{ConfigError, ConfigErrors, parse_ip_range};

/// The loaded organisation.
#[derive(Debug, Clone)]
pub struct Directory {
    /// The file's raw shape; only directory/ reads it; the rest of the crate goes
    /// through the accessors below.
    org: OrgFile,
    /// The file it came from (for messages), or `<built-in>`.
    pub source: String,
    /// The organisation file, when there is one (the built-in organisation has none).
    pub file: Option<PathBuf>,
    /// Relative paths in the file are relative to this folder.
    pub base_dir: PathBuf,
    addresses: HashMap<String, Recipient>,
    accepted: HashSet<String>,
    /// `org.receive_connectors`, typed (same order).
    receive: Vec<ReceiveConnector>,
}

impl Directory {
    /// Reads and validates an organisation file.
    pub fn load(path: &Path) -> Result<Directory, ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: source.clone(),
                line: 0,
                key: "-".into(),
                message: format!("cannot read the organisation file: {e}"),
            }])
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut dir = Directory::parse(&text, &source, base)?;
        dir.file = Some(path.to_path_buf());
        Ok(dir)
    }

    /// Parses and validates organisation-file text.
    pub fn parse(text: &str, source: &str, base_dir: PathBuf) -> Result<Directory, ConfigErrors> {
        let org: OrgFile =
            toml::from_str(text).map_err(|e| validate::syntax_error(text, source, &e))?;
        validate::validate(&org, text, source, &base_dir)?;
        let mut addresses = HashMap::new();
        for (i, m) in org.mailboxes.iter().enumerate() {
            addresses.insert(m.get_ref().address.to_lowercase(), Recipient::Mailbox(i));
            for a in &m.get_ref().aliases {
                addresses.insert(a.to_lowercase(), Recipient::Mailbox(i));
            }
        }
        for (i, g) in org.groups.iter().enumerate() {
            addresses.insert(g.get_ref().address.to_lowercase(), Recipient::Group(i));
        }
        let accepted = org
            .organization
            .accepted_domains
            .iter()
            .map(|d| d.to_lowercase())
            .collect();
        let receive = org
            .receive_connectors
            .iter()
            .map(|r| {
                ReceiveConnector::from_entry(r.get_ref())
                    .expect("the validator accepted this receive connector")
            })
            .collect();
        Ok(Directory {
            org,
            source: source.into(),
            file: None,
            base_dir,
            addresses,
            accepted,
            receive,
        })
    }
}

//! The Pickup and Replay directories (reference §12.4): `.eml` files dropped in a
//! server's folder are validated, rewritten as Exchange does, submitted to the Submission
//! queue and deleted; files that cannot be processed are renamed `.bad`, with the reason
//! in the operational log and a BADMAIL tracking event.
//!
//! Pickup takes the envelope from the headers (Sender or From; To, Cc, Bcc). Replay
//! takes it from leading X-headers (`X-Sender`, `X-Receiver`), for messages exported
//! from a queue (`mailflow message export`) or another system.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::TransportService;
use super::queue::store::{Envelope, QueuedRecipient, RecipientState};
use crate::logs::tracking::{TrackingEvent, now_timestamp};
use crate::message;

/// PickupDirectoryMaxHeaderSize (reference §12.4).
const MAX_HEADER_SIZE: usize = 64 * 1024;
/// PickupDirectoryMaxRecipientsPerMessage.
const MAX_RECIPIENTS: usize = 100;
/// PickupDirectoryMaxMessagesPerMinute, per directory.
const MAX_PER_MINUTE: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pickup,
    Replay,
}

/// Starts watching both directories of this server; each watcher stops between polls
/// once `stop` turns true. The caller (server.rs) owns the returned tasks.
pub fn start(
    service: Arc<TransportService>,
    pickup: PathBuf,
    replay: PathBuf,
    poll: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (dir, kind) in [(pickup, Kind::Pickup), (replay, Kind::Replay)] {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::error!(
                "cannot create the {kind:?} directory {}: {e}",
                dir.display()
            );
            continue;
        }
        recover(&dir);
        let service = service.clone();
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            // The rate limit, spread over polls.
            let per_poll = ((MAX_PER_MINUTE as f64) * poll.as_secs_f64() / 60.0)
                .ceil()
                .max(1.0) as usize;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let files = match eml_files(&dir) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!("cannot read {}: {e}", dir.display());
                        continue;
                    }
                };
                for file in files.into_iter().take(per_poll) {
                    process(&service, &file, kind).await;
                }
            }
        }));
    }
    tasks
}

/// On start, files claimed by a previous run are put back (reference §12.4: duplicates
/// are possible, loss is not).
fn recover(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "tmp") {
            let _ = std::fs::rename(&path, path.with_extension("eml"));
        }
    }
}

fn eml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("eml")))
        .collect();
    files.sort();
    Ok(files)
}

/// A file turned into a submission, or why not.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) envelope_from: String,
    pub(crate) recipients: Vec<String>,
    pub(crate) content: Vec<u8>,
}

async fn process(service: &TransportService, file: &Path, kind: Kind) {
    // Claim the file first, so a crash leaves it to be retried, never half-read twice.
    let claimed = file.with_extension("tmp");
    if std::fs::rename(file, &claimed).is_err() {
        return;
    }
    let ctx = &service.ctx;
    let max_size = ctx.dir().organization().max_message_size;
    let raw = match read_regular(&claimed, max_size) {
        Ok(Ok(r)) => r,
        Ok(Err(reason)) => {
            badmail(service, file, &claimed, kind, reason, &[]);
            return;
        }
        Err(_) => {
            let _ = std::fs::rename(&claimed, file);
            return;
        }
    };
    let result = match kind {
        Kind::Pickup => pickup(&raw, max_size),
        Kind::Replay => replay(&raw, max_size),
    };
    let accepted = match result {
        Ok(a) => a,
        Err(reason) => {
            badmail(service, file, &claimed, kind, &reason, &raw);
            return;
        }
    };
    let (via, source) = match kind {
        Kind::Pickup => ("Pickup", "PICKUP"),
        Kind::Replay => ("Replay", "ADMIN"),
    };
    // Reference §11.3: `Received: from localhost by Pickup …`.
    let mut content = format!(
        "Received: from localhost by {via} with mailflow SMTP Server id {}; {}\r\n",
        env!("CARGO_PKG_VERSION"),
        crate::net::rfc2822_now()
    )
    .into_bytes();
    content.extend_from_slice(&accepted.content);
    let recipients = accepted
        .recipients
        .iter()
        .map(|r| QueuedRecipient {
            address: r.clone(),
            orcpt: None,
            notify: Vec::new(),
            next_hop: None,
            state: RecipientState::Submitted,
            last_error: None,
            delay_notified: false,
        })
        .collect();
    match service
        .submit_local(accepted.envelope_from, content, recipients, source)
        .await
    {
        Ok(()) => {
            let _ = std::fs::remove_file(&claimed);
        }
        Err(e) => {
            tracing::error!(
                "{kind:?} file {}: not queued ({e}); it will be retried",
                file.display()
            );
            let _ = std::fs::rename(&claimed, file);
        }
    }
}

/// Reads a claimed file that must be a regular file in the directory itself: never
/// through a symbolic link (a link to `/etc/shadow` or another user's mail must not
/// be sent), nor a FIFO or device (which would block or never end). The inner `Err`
/// is why the file is badmail; the outer one an I/O error worth a retry. At most a
/// little more than `max_size` is read: more is refused as too big anyway.
fn read_regular(path: &Path, max_size: u64) -> std::io::Result<Result<Vec<u8>, &'static str>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO must not wait for a writer.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        // O_NOFOLLOW on a symbolic link fails with ELOOP.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Err(
                "a symbolic link (Pickup and Replay never follow links)",
            ));
        }
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Ok(Err("not a regular file"));
    }
    let mut raw = Vec::new();
    file.take(max_size.saturating_add(MAX_HEADER_SIZE as u64 + 1))
        .read_to_end(&mut raw)?;
    Ok(Ok(raw))
}

/// Renames a claimed file `.bad` (as Exchange does with files it cannot process),
/// with the reason in the log and a BADMAIL tracking event.
fn badmail(
    service: &TransportService,
    file: &Path,
    claimed: &Path,
    kind: Kind,
    reason: &str,
    raw: &[u8],
) {
    let ctx = &service.ctx;
    let bad = file.with_extension("bad");
    let _ = std::fs::rename(claimed, &bad);
    tracing::warn!("{kind:?} file {} is badmail: {reason}", bad.display());
    ctx.logs.tracking.log(TrackingEvent {
        server_hostname: ctx.name().to_string(),
        source: if kind == Kind::Pickup {
            "PICKUP"
        } else {
            "ADMIN"
        }
        .into(),
        event_id: "BADMAIL".into(),
        source_context: format!("{}: {reason}", bad.display()),
        message_subject: message::subject(raw),
        ..Default::default()
    });
}

/// The header rewrites both directories do: no Received, Resent-* or Bcc; Message-ID
/// and Date added when missing.
fn rewrite(content: &[u8], default_domain_host: &str) -> Vec<u8> {
    let stripped = message::strip_fields(content, |n| {
        n.eq_ignore_ascii_case("Received")
            || n.to_ascii_lowercase().starts_with("resent-")
            || n.eq_ignore_ascii_case("Bcc")
    })
    .unwrap_or_else(|| content.to_vec());
    let mut prefix = String::new();
    if message::get(&stripped, "Message-ID").is_none_or(|v| v.is_empty()) {
        prefix.push_str(&format!(
            "Message-ID: <{}@{default_domain_host}>\r\n",
            uuid::Uuid::new_v4()
        ));
    }
    if message::get(&stripped, "Date").is_none() {
        prefix.push_str(&format!("Date: {}\r\n", crate::net::rfc2822_now()));
    }
    let mut out = prefix.into_bytes();
    out.extend_from_slice(&stripped);
    out
}

/// Files written with bare LF (or bare CR) line ends are normalised to CRLF: the rest
/// of the pipeline refuses bare newlines (SMTP smuggling), so a bare CR left in would
/// make the message undeliverable at the next hop.
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    let mut prev = 0u8;
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'\n' if prev != b'\r' => out.extend_from_slice(b"\r\n"),
            b'\r' if raw.get(i + 1) != Some(&b'\n') => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
        prev = b;
    }
    out
}

fn check_shape(content: &[u8], max_size: u64) -> Result<(), String> {
    if content.len() as u64 > max_size {
        return Err(format!(
            "message size {} exceeds the limit of {max_size} bytes",
            content.len()
        ));
    }
    if content.contains(&0) {
        // As over SMTP (550 5.6.0): no hop after this one would take it.
        return Err("NUL characters are not allowed in message content".into());
    }
    let head = message::header_len(content);
    if head == content.len() && !content.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err("no blank line between the header and the body".into());
    }
    if head > MAX_HEADER_SIZE {
        return Err(format!(
            "header of {head} bytes exceeds PickupDirectoryMaxHeaderSize ({MAX_HEADER_SIZE})"
        ));
    }
    Ok(())
}

pub(crate) fn pickup(raw: &[u8], max_size: u64) -> Result<Accepted, String> {
    let content = crlf(raw);
    check_shape(&content, max_size)?;
    let head = &content[..message::header_len(&content)];
    let parsed = mail_parser::MessageParser::new()
        .parse_headers(head)
        .ok_or("unreadable header")?;
    let addresses = |a: Option<&mail_parser::Address>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
    };
    let from = addresses(parsed.from());
    let sender = addresses(parsed.sender());
    if sender.len() > 1 {
        return Err("Sender has more than one address".into());
    }
    let envelope_from = match (from.len(), sender.first()) {
        (0, None) => return Err("no address in From or Sender".into()),
        (1, _) => from[0].clone(),
        (_, Some(s)) => s.clone(),
        (_, None) => return Err("several From addresses need a single Sender".into()),
    };
    let recipients = message::header_recipients(&content);
    if recipients.is_empty() {
        return Err("no recipient in To, Cc or Bcc".into());
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(format!(
            "{} recipients exceed PickupDirectoryMaxRecipientsPerMessage ({MAX_RECIPIENTS})",
            recipients.len()
        ));
    }
    let host = envelope_from
        .rsplit('@')
        .next()
        .unwrap_or("localhost")
        .to_string();
    Ok(Accepted {
        envelope_from,
        recipients,
        content: rewrite(&content, &host),
    })
}

pub(crate) fn replay(raw: &[u8], max_size: u64) -> Result<Accepted, String> {
    let content = crlf(raw);
    check_shape(&content, max_size)?;
    // X-headers come first; they end at X-EndOfInjectedXHeaders or the first other field.
    let mut sender = None;
    let mut recipients = Vec::new();
    let mut consumed = 0;
    for (name, raw_field) in message::fields(&content) {
        // `fields` skips lines that are not fields; such a line ends the X-headers
        // too, or the rest would start inside it (a CRLF cut in two, found by the
        // fuzzer). A field's offset is where its bytes sit in `content`.
        let at = (raw_field.as_ptr() as usize).wrapping_sub(content.as_ptr() as usize);
        if at != consumed || !name.to_ascii_lowercase().starts_with("x-") {
            break;
        }
        consumed += raw_field.len();
        let value = String::from_utf8_lossy(&raw_field[name.len() + 1..])
            .trim()
            .to_string();
        let address = || {
            value
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches(['<', '>'])
                .to_string()
        };
        match name.to_ascii_lowercase().as_str() {
            "x-sender" => {
                if sender.is_some() {
                    return Err("more than one X-Sender".into());
                }
                sender = Some(address());
            }
            "x-receiver" => recipients.push(address()),
            "x-endofinjectedxheaders" => break,
            _ => {}
        }
    }
    let Some(envelope_from) = sender else {
        return Err("no X-Sender header".into());
    };
    if recipients.is_empty()
        || recipients
            .iter()
            .any(|r| mailflow_smtp::Address::parse(r, true).is_err())
    {
        return Err("no valid X-Receiver header".into());
    }
    let rest = content.get(consumed..).unwrap_or_default();
    let host = envelope_from
        .rsplit('@')
        .next()
        .unwrap_or("localhost")
        .to_string();
    Ok(Accepted {
        envelope_from,
        recipients,
        content: rewrite(rest, &host),
    })
}

/// The envelope of a message submitted by a directory.
pub fn envelope(from: String, content: &[u8], source: &str) -> Envelope {
    Envelope {
        return_path: from,
        network_message_id: uuid::Uuid::new_v4().simple().to_string(),
        message_id: message::get(content, "Message-ID").unwrap_or_default(),
        subject: message::subject(content),
        sender_header: message::sender_address(content),
        received_at: now_timestamp(),
        client_hostname: source.to_string(),
        body: "8BITMIME".into(),
        directionality: "Originating".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickup_rules() {
        let ok = pickup(
            b"From: a@x.test\nTo: b@y.test\nBcc: c@y.test\nReceived: from x\nSubject: s\n\nbody\n",
            1 << 20,
        )
        .unwrap();
        assert_eq!(ok.envelope_from, "a@x.test");
        assert_eq!(ok.recipients, ["b@y.test", "c@y.test"]);
        let text = String::from_utf8(ok.content).unwrap();
        assert!(
            !text.contains("Bcc:") && !text.contains("Received:") && text.contains("Message-ID: <"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nbody\r\n"));
        assert!(
            pickup(b"To: b@y.test\n\nbody\n", 1 << 20)
                .unwrap_err()
                .contains("From")
        );
        assert!(
            pickup(b"From: a@x.test\n\nbody\n", 1 << 20)
                .unwrap_err()
                .contains("recipient")
        );
        assert!(
            pickup(b"From: a@x.test, b@x.test\nTo: c@y.test\n\nbody\n", 1 << 20)
                .unwrap_err()
                .contains("Sender")
        );
        assert!(
            pickup(b"From: a@x.test\nTo: c@y.test\n", 1 << 20)
                .unwrap_err()
                .contains("blank line")
        );
        assert!(
            pickup(b"From: a@x.test\nTo: c@y.test\n\nnul\0byte\n", 1 << 20)
                .unwrap_err()
                .contains("NUL")
        );
    }

    #[test]
    fn bare_cr_line_ends_are_normalised_like_bare_lf() {
        // Found by the fuzzer: a bare CR was queued and refused at the next hop.
        let ok = pickup(b"From: a@x.test\rTo: b@y.test\r\rbody\r\nend\r", 1 << 20).unwrap();
        assert_eq!(ok.recipients, ["b@y.test"]);
        assert!(!mailflow_smtp::data::has_bare_newline(&ok.content));
        assert!(ok.content.ends_with(b"\r\n\r\nbody\r\nend\r\n"));
    }

    #[test]
    fn replay_takes_the_envelope_from_x_headers() {
        let r = replay(b"X-Sender: <a@x.test> BODY=7bit\nX-Receiver: <m@y.test> NOTIFY=NEVER\nX-Receiver: <n@y.test>\nX-EndOfInjectedXHeaders: x\nFrom: other@x.test\nTo: z@y.test\n\nbody\n", 1 << 20).unwrap();
        assert_eq!(r.envelope_from, "a@x.test");
        assert_eq!(r.recipients, ["m@y.test", "n@y.test"]);
        assert!(!String::from_utf8_lossy(&r.content).contains("X-Receiver"));
        assert!(
            replay(b"From: a@x.test\nTo: b@y.test\n\nbody\n", 1 << 20)
                .unwrap_err()
                .contains("X-Sender")
        );
        // A line that is no header field ends the X-headers (found by the fuzzer: the
        // rest of the message began inside that line).
        let r = replay(
            b"X-Sender: <a@x.test>\nX-Receiver: <m@y.test>\n\x80garbage\nX-Receiver: <n@y.test>\n\nbody\n",
            1 << 20,
        )
        .unwrap();
        assert_eq!(r.recipients, ["m@y.test"]);
        assert!(!mailflow_smtp::data::has_bare_newline(&r.content));
        assert!(
            r.content
                .ends_with(b"\r\n\x80garbage\r\nX-Receiver: <n@y.test>\r\n\r\nbody\r\n")
        );
    }
}

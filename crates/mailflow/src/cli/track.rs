//! `mailflow track`: Get-MessageTrackingLog over the MSGTRK* files; works with the
//! server stopped.

use std::process::ExitCode;

use clap::Args;

use super::{Global, load_directory, print_table};
use crate::logs::tracking::{TrackingFilter, search};

#[derive(Args)]
pub struct TrackArgs {
    #[arg(long)]
    sender: Option<String>,
    /// Recipient addresses (repeat or separate with commas).
    #[arg(long, value_delimiter = ',')]
    recipients: Vec<String>,
    /// Partial match on the subject (Get-MessageTrackingLog -MessageSubject).
    #[arg(long)]
    subject: Option<String>,
    #[arg(long = "event-id")]
    event_id: Option<String>,
    #[arg(long)]
    source: Option<String>,
    #[arg(long = "message-id")]
    message_id: Option<String>,
    /// Start (inclusive), RFC 3339 or `YYYY-MM-DD HH:MM:SS` (UTC).
    #[arg(long)]
    start: Option<String>,
    /// End (exclusive).
    #[arg(long)]
    end: Option<String>,
    /// Most rows (Exchange's default 1000; 0 = unlimited).
    #[arg(long = "result-size", default_value_t = 1000)]
    result_size: usize,
}

fn parse_time(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    anyhow::bail!(
        "cannot read the time {s:?}: use RFC 3339 (2026-11-24T10:00:00Z) or YYYY-MM-DD [HH:MM:SS] in UTC"
    )
}

pub fn run(g: &Global, a: TrackArgs) -> anyhow::Result<ExitCode> {
    let dir = load_directory(g)?;
    let servers: Vec<_> = match &g.server {
        Some(name) => vec![dir.choose_server(Some(name))?.clone()],
        None => dir.servers().cloned().collect(),
    };
    let dirs: Vec<_> = servers
        .iter()
        .map(|s| {
            // MessageTrackingLogPath of `[servers.transport_service]`, else the default.
            s.log_paths(&dir.data_dir(s), &|p| dir.path(p))
                .message_tracking
                .dir
        })
        .collect();
    let filter = TrackingFilter {
        sender: a.sender,
        recipients: a.recipients,
        subject: a.subject,
        event_id: a.event_id,
        source: a.source,
        message_id: a.message_id,
        network_message_id: None,
        start: a.start.as_deref().map(parse_time).transpose()?,
        end: a.end.as_deref().map(parse_time).transpose()?,
        result_size: Some(a.result_size),
    };
    let events = search(&dirs, &filter)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.date_time.clone(),
                e.event_id.clone(),
                e.source.clone(),
                e.sender_address.clone(),
                e.recipient_address.join(";"),
                e.message_subject.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "Timestamp",
            "EventId",
            "Source",
            "Sender",
            "Recipients",
            "MessageSubject",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

//! `mailflow track`: Get-MessageTrackingLog over the MSGTRK* files; works with the
//! server stopped. With `--all-servers` (`Get-TransportService |
//! Get-MessageTrackingLog`) each server is asked through its admin API instead, so
//! servers on other machines, with their own data folders, answer one command.

use std::process::ExitCode;

use clap::Args;

use super::{Global, load_directory, print_table};
use crate::admin::TrackingQuery;
use crate::admin::client::AdminClient;
use crate::directory::Directory;
use crate::logs::tracking::{DEFAULT_RESULT_SIZE, TrackingEvent, TrackingFilter, search};

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
    /// The server's own number for the message (-InternalMessageId; per server).
    #[arg(long = "internal-message-id")]
    internal_message_id: Option<String>,
    /// The GUID that follows the message across servers (-NetworkMessageId).
    #[arg(long = "network-message-id")]
    network_message_id: Option<String>,
    /// The `reference` field, e.g. the original message's id on DSN rows (-Reference).
    #[arg(long)]
    reference: Option<String>,
    /// Start (inclusive), RFC 3339 or `YYYY-MM-DD HH:MM:SS` (UTC).
    #[arg(long)]
    start: Option<String>,
    /// End (exclusive).
    #[arg(long)]
    end: Option<String>,
    /// Most rows (Exchange's default 1000; 0 = unlimited).
    #[arg(long = "result-size", default_value_t = 1000)]
    result_size: usize,
    /// Ask every server's admin API and merge the rows in time order
    /// (Get-TransportService | Get-MessageTrackingLog); servers must be running.
    #[arg(long = "all-servers")]
    all_servers: bool,
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
    if a.all_servers && g.server.is_some() {
        anyhow::bail!("--all-servers asks every server; leave out --server");
    }
    let filter = TrackingFilter {
        sender: a.sender,
        recipients: a.recipients,
        subject: a.subject,
        event_id: a.event_id,
        source: a.source,
        message_id: a.message_id,
        internal_message_id: a.internal_message_id,
        network_message_id: a.network_message_id,
        reference: a.reference,
        start: a.start.as_deref().map(parse_time).transpose()?,
        end: a.end.as_deref().map(parse_time).transpose()?,
        result_size: Some(a.result_size),
    };
    if a.all_servers {
        let (rows, failed) = search_all_servers(&dir, &filter);
        for (server, e) in &failed {
            eprintln!("{server}: no answer: {e:#}");
        }
        print_events(g.json, &rows, true)?;
        return Ok(if failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
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
    let events: Vec<ServerEvent> = search(&dirs, &filter)?
        .into_iter()
        .map(|event| ServerEvent {
            server: String::new(),
            event,
        })
        .collect();
    print_events(g.json, &events, false)?;
    Ok(ExitCode::SUCCESS)
}

/// One tracking row and the server whose log holds it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerEvent {
    #[serde(rename = "Server")]
    pub server: String,
    #[serde(flatten)]
    pub event: TrackingEvent,
}

/// Asks every server of the organisation for the rows `filter` selects, at the same
/// time, and merges them in time order (rows of one time keep the file order of their
/// server, servers in file order). Returns the rows and the servers that did not
/// answer, with why.
pub fn search_all_servers(
    dir: &Directory,
    filter: &TrackingFilter,
) -> (Vec<ServerEvent>, Vec<(String, anyhow::Error)>) {
    let pairs = TrackingQuery::from_filter(filter).pairs();
    let answers: Vec<(String, anyhow::Result<Vec<TrackingEvent>>)> = std::thread::scope(|s| {
        let asks: Vec<_> = dir
            .servers()
            .map(|server| {
                let pairs = &pairs;
                let name = server.name.clone();
                let ask = s.spawn(move || -> anyhow::Result<Vec<TrackingEvent>> {
                    let admin = AdminClient::new(dir, server)?;
                    Ok(admin
                        .get_query("/api/tracking", pairs)?
                        .body_mut()
                        .read_json()?)
                });
                (name, ask)
            })
            .collect();
        asks.into_iter()
            .map(|(name, ask)| {
                let answer = ask
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the request panicked")));
                (name, answer)
            })
            .collect()
    });
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (server, answer) in answers {
        match answer {
            Ok(events) => rows.extend(events.into_iter().map(|event| ServerEvent {
                server: server.clone(),
                event,
            })),
            Err(e) => failed.push((server, e)),
        }
    }
    // Stable: equal times keep server order, and each server's own order.
    rows.sort_by(|a, b| a.event.date_time.cmp(&b.event.date_time));
    match filter.result_size {
        Some(0) => {}
        size => rows.truncate(size.unwrap_or(DEFAULT_RESULT_SIZE)),
    }
    (rows, failed)
}

fn print_events(json: bool, events: &[ServerEvent], with_server: bool) -> anyhow::Result<()> {
    if json {
        let text = if with_server {
            serde_json::to_string_pretty(events)?
        } else {
            let plain: Vec<&TrackingEvent> = events.iter().map(|e| &e.event).collect();
            serde_json::to_string_pretty(&plain)?
        };
        println!("{text}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|r| {
            let e = &r.event;
            let mut row = vec![
                e.date_time.clone(),
                e.event_id.clone(),
                e.source.clone(),
                e.sender_address.clone(),
                e.recipient_address.join(";"),
                e.message_subject.clone(),
            ];
            if with_server {
                row.insert(0, r.server.clone());
            }
            row
        })
        .collect();
    let mut header = vec![
        "Timestamp",
        "EventId",
        "Source",
        "Sender",
        "Recipients",
        "MessageSubject",
    ];
    if with_server {
        header.insert(0, "Server");
    }
    print_table(&header, &rows);
    Ok(())
}

//! `mailflow test-mailflow --from A --to B` (Test-Mailflow, reference §13): sends a
//! probe message through the real path and follows it in the message tracking logs of
//! every server (through their admin APIs, so servers on other machines count) until
//! it is delivered, fails, or the timeout passes; prints each hop and, on failure,
//! which hop failed or where the message waits.
//!
//! Exchange's Test-Mailflow sends from the system mailbox of one server, through
//! Mailbox Transport Submission, to another server's mailbox. mailflow has no system
//! mailbox, so: when `--from` is a mailbox of the organisation whose database can be
//! written from here (its SQLite file is on this machine, or it is in PostgreSQL),
//! the probe goes into its Outbox (the same path: Mailbox Transport Submission →
//! Transport → Mailbox Delivery). Otherwise (another sender, or the command runs on
//! an administrator's machine) it is sent by SMTP to the `Default Frontend` (:25) of
//! `--server`, else of the server holding the sender's database, else of the only
//! server, as a message from the internet would come.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

use super::track::{ServerEvent, search_all_servers};
use super::{Global, load_directory, print_table};
use crate::directory::{Directory, Recipient};
use crate::logs::tracking::TrackingFilter;
use crate::net::org_connector::INTRA_ORG_SEND_CONNECTOR;

#[derive(Args)]
pub struct TestMailflowArgs {
    /// The sender: a mailbox of the organisation (its Outbox), or any address (SMTP to
    /// the Front End of --server).
    #[arg(long)]
    from: String,
    /// The recipient (Test-Mailflow -TargetEmailAddress).
    #[arg(long)]
    to: String,
    /// Seconds to wait for DELIVER or FAIL (Test-Mailflow -ExecutionTimeout).
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// One row of the probe's path.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Hop {
    /// Seconds since the probe was submitted.
    elapsed: f64,
    timestamp: String,
    server: String,
    event_id: String,
    source: String,
    connector_id: String,
    recipient_status: String,
}

/// Test-Mailflow's result object.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct TestMailflowResult {
    /// `Success` or `*FAILURE*`, as Exchange prints it.
    test_mailflow_result: &'static str,
    /// Submission to delivery (or to the failing or last hop), `hh:mm:ss.ffff`.
    message_latency_time: String,
    message_id: String,
    subject: String,
    hops: Vec<Hop>,
    /// The hop that failed (FAIL) or, on a timeout, the last hop seen: the message
    /// waits after it.
    failed_hop: Option<Hop>,
    /// Why it is a failure, in words.
    error: Option<String>,
    /// Servers whose admin API did not answer (their hops are missing).
    servers_not_answering: Vec<String>,
}

fn latency(d: Duration) -> String {
    let ms = d.as_millis();
    format!(
        "{:02}:{:02}:{:02}.{:04}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        (ms % 1000) * 10
    )
}

fn hop(e: &ServerEvent, submitted: DateTime<Utc>) -> Hop {
    let elapsed = DateTime::parse_from_rfc3339(&e.event.date_time)
        .map(|t| (t.with_timezone(&Utc) - submitted).num_milliseconds() as f64 / 1000.0)
        .unwrap_or(0.0);
    Hop {
        elapsed,
        timestamp: e.event.date_time.clone(),
        server: e.server.clone(),
        event_id: e.event.event_id.clone(),
        source: e.event.source.clone(),
        connector_id: e.event.connector_id.clone(),
        recipient_status: e.event.recipient_status.join(";"),
    }
}

/// The probe, as Exchange words it (reference §13).
fn probe(from: &str, to: &str, subject: &str, message_id: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\nDate: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nThis is a Test-Mailflow probe message\r\n",
        Utc::now().to_rfc2822()
    )
    .into_bytes()
}

/// Sends `content` by SMTP to `addr` (a Default Frontend), plain, as an internet
/// sender would; any reply but the expected one is an error naming it.
fn smtp_send(addr: SocketAddr, from: &str, to: &str, content: &[u8]) -> anyhow::Result<()> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("cannot connect to the Front End at {addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut reply = || -> anyhow::Result<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                anyhow::bail!("{addr} closed the connection");
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(all.trim_end().to_string());
            }
        }
    };
    let mut step = |send: Option<&[u8]>, want: &str| -> anyhow::Result<()> {
        if let Some(bytes) = send {
            writer.write_all(bytes)?;
        }
        let r = reply()?;
        if !r.starts_with(want) {
            anyhow::bail!("the Front End at {addr} answered: {r}");
        }
        Ok(())
    };
    step(None, "220")?;
    step(Some(b"EHLO test-mailflow\r\n"), "250")?;
    step(Some(format!("MAIL FROM:<{from}>\r\n").as_bytes()), "250")?;
    step(Some(format!("RCPT TO:<{to}>\r\n").as_bytes()), "250")?;
    step(Some(b"DATA\r\n"), "354")?;
    // Dot-stuffing (RFC 5321 §4.5.2); the probe has no line starting with a dot, but
    // stay correct if its wording changes.
    let mut data = Vec::with_capacity(content.len() + 5);
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    data.extend_from_slice(b".\r\n");
    step(Some(&data), "250")?;
    let _ = writer.write_all(b"QUIT\r\n");
    Ok(())
}

/// The Default Frontend of `--server`, else of the first server of `database`, else
/// of the only server: the file's port, or the bound one when the file leaves it to
/// the system.
fn frontend_addr(
    dir: &Directory,
    g: &Global,
    database: Option<&str>,
) -> anyhow::Result<(String, SocketAddr)> {
    let near = database
        .and_then(|d| dir.database(d))
        .and_then(|d| d.copies.first())
        .map(String::as_str);
    let server = dir.choose_server(g.server.as_deref().or(near))?;
    let mut port = server.ports.frontend;
    if port == 0 {
        port = crate::net::listeners::read_listeners(&dir.data_dir(server))
            .map_or(0, |l| l.ports.frontend);
    }
    let ip = server
        .bind_ip()
        .filter(|b| !b.is_unspecified())
        .unwrap_or(server.ip());
    Ok((server.name.clone(), SocketAddr::new(ip, port)))
}

/// Where the probe waits on `server` (Get-Message): its queue and last error, if the
/// server answers and holds it.
fn waiting_in(dir: &Directory, server: &str, message_id: &str) -> Option<(String, Option<String>)> {
    let server = dir.server(server)?;
    let admin = crate::admin::client::AdminClient::new(dir, server).ok()?;
    let list: Vec<serde_json::Value> = admin
        .get("/api/messages")
        .ok()?
        .body_mut()
        .read_json()
        .ok()?;
    let m = list
        .iter()
        .find(|m| m["InternetMessageId"].as_str() == Some(message_id))?;
    Some((
        m["Queue"].as_str().unwrap_or_default().to_string(),
        m["LastError"].as_str().map(str::to_string),
    ))
}

pub fn run(g: &Global, a: TestMailflowArgs) -> anyhow::Result<ExitCode> {
    let dir = load_directory(g)?;
    let id = uuid::Uuid::new_v4();
    let subject = format!("Test-Mailflow {id}");
    let domain = dir
        .first_accepted_domain()
        .unwrap_or("localhost")
        .to_string();
    let message_id = format!("<{}@{domain}>", id.simple());
    let content = probe(&a.from, &a.to, &subject, &message_id);
    let submitted = Utc::now();
    let started = Instant::now();
    let front_end = match dir.lookup(&a.from) {
        Some(Recipient::Mailbox(i)) if super::mailbox::outbox_reachable(&dir, i) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(super::mailbox::put_in_outbox(&dir, i, content.clone()))?;
            None
        }
        Some(Recipient::Mailbox(i)) => {
            Some(frontend_addr(&dir, g, Some(&dir.mailbox(i).database))?)
        }
        _ => Some(frontend_addr(&dir, g, None)?),
    };
    // A refusal at the Front End is the first hop failing: nothing else to follow.
    let refused = front_end.and_then(|(server, addr)| {
        let e = smtp_send(addr, &a.from, &a.to, &content).err()?;
        Some((
            Hop {
                server: server.clone(),
                source: "SMTP".into(),
                event_id: "RECEIVE".into(),
                connector_id: format!("{server}\\Default Frontend {server}"),
                recipient_status: format!("{e:#}"),
                ..Hop::default()
            },
            format!("the Front End of {server} did not take the probe: {e:#}"),
        ))
    });

    let filter = TrackingFilter {
        message_id: Some(message_id.clone()),
        result_size: Some(0),
        ..Default::default()
    };
    let timeout = Duration::from_secs(a.timeout);
    // Tracking rows name a mailbox by its primary address, also when --to is an alias.
    let mut targets = vec![a.to.clone()];
    if let Some(Recipient::Mailbox(i)) = dir.lookup(&a.to) {
        targets.push(dir.mailbox(i).address.clone());
    }
    let for_recipient = |e: &ServerEvent| {
        e.event
            .recipient_address
            .iter()
            .any(|r| targets.iter().any(|t| r.eq_ignore_ascii_case(t)))
    };
    let (rows, failed, outcome) = loop {
        if let Some(r) = refused {
            break (Vec::new(), Vec::new(), Err(r));
        }
        let (rows, failed) = search_all_servers(&dir, &filter);
        let delivered = rows.iter().find(|e| {
            for_recipient(e)
                && (e.event.event_id == "DELIVER"
                    // Out of the organisation through a send connector: that is as far
                    // as tracking can follow it.
                    || (e.event.event_id == "SEND"
                        && e.event.source == "SMTP"
                        && !e.event.connector_id.is_empty()
                        && e.event.connector_id != INTRA_ORG_SEND_CONNECTOR))
        });
        let fail = rows
            .iter()
            .find(|e| for_recipient(e) && e.event.event_id == "FAIL");
        let outcome = match (delivered, fail) {
            (Some(d), _) => Some(Ok(hop(d, submitted))),
            (None, Some(f)) => Some(Err((
                hop(f, submitted),
                format!(
                    "{} failed on {} ({} {}): {}",
                    a.to,
                    f.server,
                    f.event.source,
                    f.event.connector_id,
                    f.event.recipient_status.join(";")
                ),
            ))),
            (None, None) => None,
        };
        if let Some(o) = outcome {
            break (rows, failed, o);
        }
        if started.elapsed() >= timeout {
            let mut last = rows.last().map(|e| hop(e, submitted));
            let queued = last
                .as_ref()
                .and_then(|h| waiting_in(&dir, &h.server, &message_id));
            if let (Some(h), Some((_, Some(error)))) = (&mut last, &queued)
                && h.recipient_status.is_empty()
            {
                h.recipient_status = error.clone();
            }
            let why = match &last {
                Some(h) => format!(
                    "not delivered within {}s: the last hop is {} {} on {}; the message waits after it{}",
                    a.timeout,
                    h.source,
                    h.event_id,
                    h.server,
                    match &queued {
                        Some((queue, Some(error))) => format!(" in {queue}: {error}"),
                        Some((queue, None)) => format!(" in {queue}"),
                        None if !h.recipient_status.is_empty() => {
                            format!(" ({})", h.recipient_status)
                        }
                        None => String::new(),
                    }
                ),
                None => format!(
                    "no server logged the probe within {}s (was it submitted?)",
                    a.timeout
                ),
            };
            break (rows, failed, Err((last.unwrap_or_default(), why)));
        }
        std::thread::sleep(Duration::from_millis(300));
    };

    let hops: Vec<Hop> = rows.iter().map(|e| hop(e, submitted)).collect();
    let (ok, end_hop, failed_hop, error) = match outcome {
        Ok(h) => (true, h.elapsed, None, None),
        Err((h, why)) => (false, h.elapsed, Some(h), Some(why)),
    };
    let result = TestMailflowResult {
        test_mailflow_result: if ok { "Success" } else { "*FAILURE*" },
        message_latency_time: latency(Duration::from_secs_f64(end_hop.max(0.0))),
        message_id,
        subject,
        hops,
        failed_hop,
        error,
        servers_not_answering: failed.iter().map(|(s, _)| s.clone()).collect(),
    };
    for (server, e) in &failed {
        eprintln!("{server}: no answer: {e:#}");
    }
    if g.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        let rows: Vec<Vec<String>> = result
            .hops
            .iter()
            .map(|h| {
                vec![
                    format!("{:.3}s", h.elapsed),
                    h.server.clone(),
                    h.source.clone(),
                    h.event_id.clone(),
                    h.connector_id.clone(),
                    h.recipient_status.clone(),
                ]
            })
            .collect();
        println!("{} → {}: {}", a.from, a.to, result.subject);
        print_table(
            &[
                "Elapsed",
                "Server",
                "Source",
                "EventId",
                "ConnectorId",
                "RecipientStatus",
            ],
            &rows,
        );
        println!();
        println!("TestMailflowResult  {}", result.test_mailflow_result);
        println!("MessageLatencyTime  {}", result.message_latency_time);
        if let Some(h) = &result.failed_hop {
            println!(
                "FailedHop           {} {} {} {}",
                h.server, h.source, h.event_id, h.connector_id
            );
        }
        if let Some(why) = &result.error {
            println!("Error               {why}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

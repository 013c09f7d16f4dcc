//! The last logs of issue 15 (reference §7.1, §8.4, the Set-TransportService row of
//! §13): the queue log (QueueLogPath …), pipeline tracing (PipelineTracingEnabled,
//! PipelineTracingPath, PipelineTracingSenderAddress) and the `…Enabled` switches
//! (MessageTrackingLogSubjectLoggingEnabled, ConnectivityLogEnabled, AgentLogEnabled),
//! each set in the organisation file's `[servers.transport_service]` tables.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Server, Smtp, message, wait_for};

const WAIT: Duration = Duration::from_secs(20);

/// The text of every file under `dir` (recursively) whose name starts with `prefix`.
fn text_of(dir: &Path, prefix: &str) -> String {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .map(|p| fs::read_to_string(p).unwrap_or_default())
        .collect()
}

/// Every file under `dir`, recursively, in name order ([] when `dir` is missing).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The data rows of a queue log text, split into its 10 fields.
fn queue_rows(text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

fn send(server: &Server, from: &str, to: &[&str], subject: &str) {
    let mut smtp = Smtp::connect(server.ports.frontend);
    smtp.cmd("EHLO client.fabrikam.test");
    let reply = smtp.send(from, to, &message(subject, "body"));
    assert!(reply.starts_with("250"), "{reply}");
    smtp.cmd("QUIT");
}

/// A queue to fabrikam.test (the group's external member) that stays (no DNS on the test machine) is in the queue log
/// at its configured path: created, in the snapshots, suspended and resumed. Pipeline
/// tracing writes the traced sender's message before and after the Transport Rule
/// agent changed its subject, and nothing for another sender. Subject logging is on by
/// default: the tracking log shows the subject.
#[test]
fn queue_log_and_pipeline_tracing_at_their_configured_paths() {
    let server = Server::start_edited(|org| {
        org.replace(
            "[transport]\n",
            "[transport]\nqueue_log_interval = \"1s\"\n",
        )
        .replacen(
            "transport_protocol_logging = \"verbose\"\n",
            "transport_protocol_logging = \"verbose\"\n\
                 transport_service.queue_log.path = \"logs/queues\"\n\
                 transport_service.pipeline_tracing = { enabled = true, path = \"logs/trace\", \
                 sender_address = \"Tracer@fabrikam.test\" }\n",
            1,
        ) + "\n[[transport_rules]]\nname = \"Tag\"\nif = { subject_contains_words = [\"tag me\"] }\n\
               then = { prepend_subject = \"[Tagged] \" }\n"
    });
    let root = server.dir.path();
    send(
        &server,
        "tracer@fabrikam.test",
        // The group has an external member: a queue to fabrikam.test.
        &["sales@contoso.test"],
        "please tag me",
    );
    server.wait_inbox("bob@contoso.test", 1);

    // Pipeline tracing: one folder, the original and the message after the agent.
    let trace = root.join("logs/trace");
    let snapshots = wait_for("the pipeline tracing snapshots", WAIT, || {
        let files = files_under(&trace);
        (files.len() == 2).then_some(files)
    });
    let names: Vec<&str> = snapshots
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(names, ["OnResolvedMessage0001.eml", "Original.eml"]);
    let folder = snapshots[0].parent().unwrap();
    assert_eq!(folder.parent().unwrap(), trace);
    let original = fs::read_to_string(&snapshots[1]).unwrap();
    let after = fs::read_to_string(&snapshots[0]).unwrap();
    assert!(
        original.contains("Subject: please tag me\r\n"),
        "{original}"
    );
    assert!(
        after.contains("Subject: [Tagged] please tag me\r\n"),
        "{after}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(folder), 0o700);
        assert_eq!(mode(&snapshots[0]), 0o600);
        assert_eq!(mode(&snapshots[1]), 0o600);
    }
    // The folder is the message's network message id.
    let received = wait_for("the RECEIVE row", WAIT, || {
        let rows = server.track(&["--event-id", "RECEIVE", "--subject", "please tag me"]);
        (!rows.is_empty()).then_some(rows)
    });
    let network_id = received[0]["NetworkMessageId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        folder.file_name().unwrap().to_str().unwrap(),
        network_id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "")
    );
    // Subject logging is on by default.
    assert_eq!(received[0]["MessageSubject"], "please tag me");

    // Another sender's message, changed by the same rule, is not traced.
    send(
        &server,
        "someone@fabrikam.test",
        &["bob@contoso.test"],
        "tag me too",
    );
    server.wait_inbox("bob@contoso.test", 2);
    assert_eq!(files_under(&trace).len(), 2, "{:?}", files_under(&trace));

    // The queue log: the fabrikam.test queue created, then in the snapshots with its
    // message.
    let queues = root.join("logs/queues");
    let row_of = |rows: &[Vec<String>], event: &str| {
        rows.iter()
            .find(|r| r[1] == event && r[6] == "fabrikam.test")
            .cloned()
    };
    let rows = wait_for("the fabrikam.test queue in the queue log", WAIT, || {
        let rows = queue_rows(&text_of(&queues, "QUEUELOG"));
        let snapshot = row_of(&rows, "Snapshot")?;
        (snapshot[5] == "1").then_some(rows)
    });
    let created = row_of(&rows, "Created").expect("a Created line");
    assert!(created[2].starts_with("MBX1\\"), "{created:?}");
    assert_eq!(created[3], "DnsConnectorDelivery");
    let text = text_of(&queues, "QUEUELOG");
    assert!(
        text.starts_with(
            "#Software: Microsoft Exchange Server\r\n#Version: 15.0.0.0\r\n\
             #Log-Type: Transport Queue Log\r\n#Date: "
        ),
        "{text}"
    );
    assert!(text.contains(
        "\r\n#Fields: date-time,event,queue-identity,delivery-type,status,message-count,\
         next-hop-domain,next-hop-category,last-error,next-retry-time\r\n"
    ));
    // The Submission queue is in the snapshots as `queue list` shows it.
    assert!(rows.iter().any(|r| r[2] == "MBX1\\Submission"), "{rows:?}");

    // Suspend-Queue and Resume-Queue each write a line.
    for (verb, event) in [("suspend", "Suspended"), ("resume", "Resumed")] {
        let out = server.cli(&["queue", verb, "fabrikam.test"]);
        assert!(out.status.success(), "{out:?}");
        let line = wait_for(&format!("a {event} line"), WAIT, || {
            row_of(&queue_rows(&text_of(&queues, "QUEUELOG")), event)
        });
        assert_eq!(line[2], created[2]);
    }
    let suspended = row_of(&queue_rows(&text_of(&queues, "QUEUELOG")), "Suspended").unwrap();
    assert_eq!(suspended[4], "Suspended");

    // Nothing at the default places.
    let defaults = server.data_dir().join("Logs/Hub");
    assert!(!defaults.join("QueueViewer").exists());
    assert!(!defaults.join("PipelineTracing").exists());
}

/// MessageTrackingLogSubjectLoggingEnabled off: the tracking rows have an empty
/// subject. ConnectivityLogEnabled and AgentLogEnabled off: no CONNECTLOG or AGENTLOG
/// file anywhere. Pipeline tracing and the queue log off by default leave no folder.
#[test]
fn subject_logging_connectivity_and_agent_logs_off() {
    let server = Server::start_edited(|org| {
        org.replacen(
            "transport_protocol_logging = \"verbose\"\n",
            "transport_protocol_logging = \"verbose\"\n\
             transport_service.message_tracking_log.subject_logging_enabled = false\n\
             transport_service.connectivity_log.enabled = false\n\
             transport_service.agent_log.enabled = false\n\
             transport_service.queue_log.enabled = false\n\
             frontend_transport_service.connectivity_log.enabled = false\n\
             mailbox_transport_service.connectivity_log.enabled = false\n",
            1,
        )
    });
    send(
        &server,
        "someone@fabrikam.test",
        &["bob@contoso.test"],
        "A private subject",
    );
    server.wait_inbox("bob@contoso.test", 1);
    server.send_from_outbox(
        "alice@contoso.test",
        "From: alice@contoso.test\r\nTo: bob@contoso.test\r\nSubject: Another private one\r\n\r\nvia MTS\r\n",
    );
    server.wait_inbox("bob@contoso.test", 2);
    let logs = server.data_dir().join("Logs");
    let tracking = wait_for("two DELIVER rows", WAIT, || {
        let text = text_of(&logs.join("MessageTracking"), "MSGTRK");
        (text.matches(",DELIVER,").count() >= 2).then_some(text)
    });
    // (The Message-ID the test client makes from the subject has dashes.)
    assert!(
        !tracking.contains("A private subject") && !tracking.contains("Another private one"),
        "a subject was logged:\n{tracking}"
    );
    let events = server.track(&["--recipients", "bob@contoso.test"]);
    assert!(events.len() >= 4, "{events:?}");
    for e in &events {
        assert_eq!(e["MessageSubject"], "", "{e}");
    }
    // The sessions that would have been logged did happen (Front End → Transport →
    // Mailbox Delivery, Submission → Transport): their protocol logs are there.
    assert!(!text_of(&logs.join("Hub/ProtocolLog/SmtpSend"), "SEND").is_empty());
    for f in files_under(&logs) {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            !name.starts_with("CONNECTLOG")
                && !name.starts_with("AGENTLOG")
                && !name.starts_with("QUEUELOG"),
            "{} written while off",
            f.display()
        );
    }
    for folder in [
        "Hub/Connectivity",
        "FrontEnd/Connectivity",
        "Mailbox/Connectivity",
        "Hub/AgentLog",
        "Hub/QueueViewer",
        "Hub/PipelineTracing",
    ] {
        assert!(!logs.join(folder).exists(), "{folder} made while off");
    }
}

/// A switch where Exchange has none, or a bad value, names the file, the line and the
/// key.
#[test]
fn switch_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mailflow.toml");
    let head = "[organization]\nname = \"c\"\naccepted_domains = [\"c.test\"]\n\n[[servers]]\n\
                name = \"S\"\nfqdn = \"s.c.test\"\naddress = \"127.0.0.1\"\ndata_dir = \"d\"\n";
    for (table, line, key) in [
        (
            "[servers.transport_service.connectivity_log]\nsubject_logging_enabled = false\n",
            11,
            "subject_logging_enabled",
        ),
        (
            "[servers.transport_service.receive_protocol_log]\nenabled = false\n",
            11,
            "enabled",
        ),
        (
            "[servers.transport_service.pipeline_tracing]\nenabled = true\nsender_adress = \"a@c.test\"\n",
            12,
            "sender_adress",
        ),
        (
            "[servers.transport_service.message_tracking_log]\nsubject_logging_enabled = \"no\"\n",
            11,
            "subject_logging_enabled",
        ),
    ] {
        fs::write(&file, format!("{head}{table}")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailflow"))
            .args(["--config", file.to_str().unwrap(), "check-config"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{table}: {err}");
        assert!(
            err.contains(&format!("mailflow.toml:{line}: ")) && err.contains(key),
            "{table}: {err}"
        );
    }
}

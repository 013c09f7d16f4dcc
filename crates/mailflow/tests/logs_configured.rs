//! Every log an administrator configures (issue 15, reference §7.1, §8): the paths and
//! logging levels of `[servers.transport_service]`, `[servers.frontend_transport_service]`
//! and `[servers.mailbox_transport_service]` (Set-TransportService,
//! Set-FrontendTransportService, Set-MailboxTransportService), and circular logging
//! enforced while the server runs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{Server, Smtp, message, wait_for};

const WAIT: Duration = Duration::from_secs(20);

/// The organisation-wide levels off, so only the new per-service settings can turn the
/// implicit connectors' logging on; every log of MBX1 in a folder of its own.
fn configured(org: String) -> String {
    let org = org
        .replace(
            "intra_org_connector_protocol_logging = \"verbose\"",
            "intra_org_connector_protocol_logging = \"none\"",
        )
        .replace(
            "mailbox_delivery_connector_protocol_logging = \"verbose\"",
            "mailbox_delivery_connector_protocol_logging = \"none\"",
        );
    // A rule that acts on the seed's message, so the Transport Rule agent writes to the
    // agent log (it writes only when a rule applied).
    let org = format!(
        "{org}\n[[transport_rules]]\nname = \"Tag seed\"\nif = {{ subject_contains_words = [\"Seed 004\"] }}\nthen = {{ prepend_subject = \"[seed] \" }}\n"
    );
    org.replacen(
        "transport_protocol_logging = \"verbose\"\n",
        r#"transport_protocol_logging = "verbose"
transport_service.intra_org_connector_protocol_logging_level = "verbose"
transport_service.message_tracking_log.path = "logs/tracking"
transport_service.receive_protocol_log.path = "logs/hub/recv"
transport_service.send_protocol_log.path = "logs/hub/send"
transport_service.connectivity_log.path = "logs/hub/connect"
transport_service.routing_table_log.path = "logs/hub/routing"
transport_service.agent_log.path = "logs/hub/agent"
frontend_transport_service.intra_org_connector_protocol_logging_level = "verbose"
frontend_transport_service.receive_protocol_log.path = "logs/fe/recv"
frontend_transport_service.send_protocol_log.path = "logs/fe/send"
frontend_transport_service.connectivity_log.path = "logs/fe/connect"
frontend_transport_service.routing_table_log.path = "logs/fe/routing"
mailbox_transport_service.mailbox_delivery_connector_protocol_logging_level = "verbose"
mailbox_transport_service.receive_protocol_log.path = "logs/mbx/recv"
mailbox_transport_service.send_protocol_log.path = "logs/mbx/send"
mailbox_transport_service.connectivity_log.path = "logs/mbx/connect"
mailbox_transport_service.routing_table_log.path = "logs/mbx/routing"
"#,
        1,
    )
}

/// The names and text of the files of `dir` whose names start with `prefix`.
fn files(dir: &Path, prefix: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            name.starts_with(prefix)
                .then(|| (name, fs::read_to_string(e.path()).unwrap_or_default()))
        })
        .collect();
    v.sort();
    v
}

/// All the text of `dir`'s files of `prefix`, once `done` holds for it.
fn wait_text(dir: &Path, prefix: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    wait_for(what, WAIT, || {
        let text: String = files(dir, prefix).into_iter().map(|(_, t)| t).collect();
        done(&text).then_some(text)
    })
}

/// The data lines of a protocol log text, split into their 9 fields.
fn protocol_lines(text: &str) -> Vec<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

/// Seed 004's chain with the implicit connectors' logging turned on by the new
/// settings: a message from the internet goes Front End → Transport → Mailbox
/// Delivery, one from a mailbox through Mailbox Transport Submission, and every log
/// is read where the organisation file put it.
#[test]
fn seed_004_chain_writes_every_log_at_its_configured_path() {
    let server = Server::start_edited(configured);
    let root = server.dir.path();
    let logs = root.join("logs");
    let mut smtp = Smtp::connect(server.ports.frontend);
    smtp.cmd("EHLO client.fabrikam.test");
    let reply = smtp.send(
        "someone@fabrikam.test",
        &["bob@contoso.test"],
        &message("Seed 004", "through the chain"),
    );
    assert!(reply.starts_with("250"), "{reply}");
    smtp.cmd("QUIT");
    server.wait_inbox("bob@contoso.test", 1);
    server.send_from_outbox(
        "alice@contoso.test",
        "From: alice@contoso.test\r\nTo: bob@contoso.test\r\nSubject: From Outlook\r\n\r\nvia MTS\r\n",
    );
    server.wait_inbox("bob@contoso.test", 2);

    // Front End receive log: permissions, the message, and the proxy session.
    let fe_recv = wait_text(&logs.join("fe/recv"), "RECV", "FE receive log", |t| {
        t.contains("Proxy session")
    });
    let lines = protocol_lines(&fe_recv);
    let star = |data_prefix: &str, context: &str| {
        lines
            .iter()
            .find(|l| l[6] == "*" && l[7].starts_with(data_prefix) && l[8] == context)
            .cloned()
    };
    let permissions = star("SMTPSubmit", "Set Session Permissions").expect("permissions line");
    assert_eq!(
        permissions[7],
        "SMTPSubmit SMTPAcceptAnySender SMTPAcceptAuthoritativeDomainSender AcceptRoutingHeaders"
    );
    assert_eq!(permissions[1], "MBX1\\Default Frontend MBX1");
    let session = &permissions[2];
    let receiving = lines
        .iter()
        .find(|l| l[8] == "receiving message")
        .expect("receiving message line");
    let parts: Vec<&str> = receiving[7].split(';').collect();
    assert_eq!(parts.len(), 3, "{receiving:?}");
    assert_eq!(parts[0], session);
    assert!(
        parts[1].ends_with('Z') && parts[1].len() == 24,
        "{receiving:?}"
    );
    assert_eq!(parts[2], "1");
    let proxy = lines
        .iter()
        .find(|l| l[8] == "Proxy session established")
        .expect("proxy session line");
    let (proxy_id, proxy_target) = proxy[7].split_once(';').expect("id;target");
    assert!(
        proxy_id.starts_with("08DE") && proxy_id.len() == 16,
        "{proxy:?}"
    );
    // The `*` lines sit between the command read and the reply to it.
    let at = |l: &Vec<String>| lines.iter().position(|x| x == l).unwrap();
    let mail = lines
        .iter()
        .position(|l| l[6] == "<" && l[7].starts_with("MAIL FROM"))
        .unwrap();
    assert!(at(receiving) > mail && lines[at(receiving) + 1][6] == ">");

    // Front End send log: the same proxy session, with real local ports.
    let fe_send = wait_text(&logs.join("fe/send"), "SEND", "FE send log", |t| {
        t.contains(proxy_id)
    });
    let sends = protocol_lines(&fe_send);
    let proxied: Vec<_> = sends.iter().filter(|l| l[2] == proxy_id).collect();
    assert_eq!(proxied[0][1], "Inbound Proxy Internal Send Connector");
    assert_eq!(proxied[0][5], proxy_target);
    for l in &sends {
        assert!(!l[4].ends_with(":0"), "local port 0 in {l:?}");
    }

    // Transport: its receive log with the server's permissions once authenticated, and
    // the intra-organisation sends to Mailbox Delivery (the new level, not [transport]'s).
    let hub_recv = wait_text(&logs.join("hub/recv"), "RECV", "Hub receive log", |t| {
        t.contains("SMTPAcceptAnyRecipient")
    });
    assert!(
        hub_recv.contains(",*,None,Set Session Permissions"),
        "{hub_recv}"
    );
    let hub_send = wait_text(&logs.join("hub/send"), "SEND", "Hub send log", |t| {
        t.contains("Intra-Organization SMTP Send Connector")
    });
    for l in protocol_lines(&hub_send) {
        assert!(!l[4].ends_with(":0"), "local port 0 in {l:?}");
    }

    // Mailbox: Delivery's receive log and Submission's sends in their subfolders.
    wait_text(
        &logs.join("mbx/recv/Delivery"),
        "RECV",
        "Mailbox Delivery receive log",
        |t| t.contains("Default Mailbox Delivery MBX1"),
    );
    let submission = wait_text(
        &logs.join("mbx/send/Submission"),
        "SEND",
        "Submission send log",
        |t| t.contains("Intra-Organization SMTP Send Connector"),
    );
    assert!(submission.starts_with("#Software: Microsoft Exchange Server\r\n"));

    // Connectivity logs: Front End (internalproxy), Transport, Submission.
    let header_ok = |text: &str| {
        text.starts_with(
            "#Software: Microsoft Exchange Server\r\n#Version: 15.0.0.0\r\n\
             #Log-Type: Transport Connectivity Log\r\n#Date: ",
        ) && text
            .contains("\r\n#Fields: date-time,session,source,destination,direction,description\r\n")
    };
    let fe_connect = wait_text(
        &logs.join("fe/connect"),
        "CONNECTLOG",
        "FE connectivity",
        // The proxy session stays in the Front End's pool (its `-` comes later).
        |t| t.contains(",SMTP,internalproxy,>,Established connection to "),
    );
    assert!(header_ok(&fe_connect), "{fe_connect}");
    assert!(fe_connect.contains(
        ",SMTP,internalproxy,+,Intra-Organization SMTP Send Connector to mbx1.contoso.test"
    ));
    let [(name, _)] = &files(&logs.join("fe/connect"), "CONNECTLOG")[..] else {
        panic!("one connectivity file");
    };
    assert!(name.ends_with("-1.log") && name.len() == "CONNECTLOG20261203-1.log".len());
    // Transport's sessions to Mailbox Delivery end (the connection cache is 2 s) with
    // their counts.
    let hub_connect = wait_text(
        &logs.join("hub/connect"),
        "CONNECTLOG",
        "Hub connectivity",
        |t| {
            t.lines()
                .any(|l| l.contains(",-,Messages: ") && !l.contains(",-,Messages: 0 "))
        },
    );
    assert!(header_ok(&hub_connect));
    assert!(
        hub_connect.contains(",SMTP,mbx1.contoso.test,+,Intra-Organization SMTP Send Connector")
    );
    // No line per message (Exchange counts them in the `-` line).
    assert!(!hub_connect.contains("Message sent"), "{hub_connect}");
    let mts_connect = wait_text(
        &logs.join("mbx/connect/Submission"),
        "CONNECTLOG",
        "Submission connectivity",
        |t| t.contains(",SMTP,mailboxtransportsubmissioninternalproxy,-,Messages: 1 Bytes: "),
    );
    assert!(header_ok(&mts_connect));

    // Tracking and the routing table at their paths.
    let tracking = wait_text(&logs.join("tracking"), "MSGTRK", "tracking", |t| {
        t.contains(",DELIVER,")
    });
    assert!(tracking.contains(",SMTP,RECEIVE,"));
    assert!(!files(&logs.join("tracking"), "MSGTRKMD").is_empty());
    // A routing table log per service (Hub, FrontEnd, Mailbox).
    for service in ["hub", "fe", "mbx"] {
        let tables = files(&logs.join(service).join("routing"), "RoutingTable");
        let [(_, table), ..] = &tables[..] else {
            panic!("no routing table log for {service}");
        };
        assert!(table.contains("\"Server\": \"MBX1\""), "{table}");
    }
    // The agent log (reference §8.4): the Transport Rule agent at OnResolvedMessage,
    // for the message its rule applied to only.
    let agent = wait_text(&logs.join("hub/agent"), "AGENTLOG", "the agent log", |t| {
        t.contains("Transport Rule Agent,OnResolvedMessage,AcceptMessage")
    });
    assert!(agent.contains("#Log-type: Agent Log"), "{agent}");
    let acted: Vec<&str> = agent.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        acted.len(),
        1,
        "only the message the rule applied to: {agent}"
    );
    // `mailflow track` reads the configured folder.
    let delivered = server.track(&["--event-id", "DELIVER", "--subject", "Seed 004"]);
    assert_eq!(delivered.len(), 1, "{delivered:?}");

    // Nothing was written at the default places of what was moved.
    let defaults = server.data_dir().join("Logs");
    for moved in [
        "MessageTracking",
        "Hub/ProtocolLog",
        "FrontEnd/ProtocolLog",
        "Mailbox/ProtocolLog",
        "Hub/Connectivity",
        "FrontEnd/Connectivity",
        "Hub/Routing",
        "Hub/AgentLog",
        "FrontEnd/Routing",
        "Mailbox/Routing",
    ] {
        assert!(
            !defaults.join(moved).exists(),
            "{moved} written at the default path"
        );
    }
}

/// Sets a file's last write `age` ago.
fn age(path: &Path, age: Duration) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

/// The newest file of `prefix` in `dir` (the one being written).
fn newest(dir: &Path, prefix: &str) -> PathBuf {
    let mut v: Vec<(SystemTime, PathBuf)> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            name.starts_with(prefix)
                .then(|| (e.metadata().unwrap().modified().unwrap(), e.path()))
        })
        .collect();
    v.sort();
    v.pop().expect("a log file").1
}

/// Tiny MaxAge and MaxDirectorySize: old files go while the server runs, the file being
/// written stays, other files of the folder are not touched.
#[test]
fn retention_deletes_old_files_while_running_and_keeps_the_current_one() {
    let server = Server::start_edited(|org| {
        org.replace(
            "[transport]\n",
            "[transport]\nlog_retention_interval = \"1s\"\n",
        )
        .replacen(
            "transport_protocol_logging = \"verbose\"\n",
            "transport_protocol_logging = \"verbose\"\n\
             transport_service.receive_protocol_log.max_age = \"1h\"\n\
             transport_service.message_tracking_log.max_directory_size = \"1KB\"\n",
            1,
        )
    });
    let mut smtp = Smtp::connect(server.ports.frontend);
    smtp.cmd("EHLO client.fabrikam.test");
    let reply = smtp.send(
        "a@fabrikam.test",
        &["bob@contoso.test"],
        &message("one", "x"),
    );
    assert!(reply.starts_with("250"), "{reply}");
    smtp.cmd("QUIT");
    server.wait_inbox("bob@contoso.test", 1);
    let logs = server.data_dir().join("Logs");
    let recv = logs.join("Hub/ProtocolLog/SmtpReceive");
    let tracking = logs.join("MessageTracking");
    wait_for("tracking past 1 KB", WAIT, || {
        let text: String = files(&tracking, "MSGTRK2")
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        (text.len() > 1024).then_some(())
    });
    let current_recv = newest(&recv, "RECV");
    let current_tracking = newest(&tracking, "MSGTRK2");

    // Files of earlier days, as a server running for a while leaves them.
    let old_recv = recv.join("RECV2020010100-1.LOG");
    fs::write(&old_recv, "#Software: Microsoft Exchange Server\r\n").unwrap();
    age(&old_recv, Duration::from_secs(2 * 3600));
    let young_recv = recv.join("RECV2020010101-1.LOG");
    fs::write(&young_recv, "#Software: Microsoft Exchange Server\r\n").unwrap();
    age(&young_recv, Duration::from_secs(60));
    let mut old_tracking = Vec::new();
    for (i, minutes) in [30u64, 20, 10].into_iter().enumerate() {
        let p = tracking.join(format!("MSGTRK202001010{i}-1.LOG"));
        fs::write(&p, vec![b'x'; 600]).unwrap();
        age(&p, Duration::from_secs(minutes * 60));
        old_tracking.push(p);
    }
    let other = tracking.join("notes.txt");
    fs::write(&other, vec![b'x'; 5000]).unwrap();
    age(&other, Duration::from_secs(40 * 24 * 3600));

    wait_for("old files deleted", WAIT, || {
        (!old_recv.exists() && old_tracking.iter().all(|p| !p.exists())).then_some(())
    });
    assert!(
        young_recv.exists(),
        "a file younger than MaxAge was deleted"
    );
    assert!(other.exists(), "a file of no log prefix was deleted");
    assert!(current_recv.exists() && current_tracking.exists());
    // The current tracking file (alone past MaxDirectorySize) stays and takes the next
    // message's rows.
    let before = fs::metadata(&current_tracking).unwrap().len();
    let mut smtp = Smtp::connect(server.ports.frontend);
    smtp.cmd("EHLO client.fabrikam.test");
    smtp.send(
        "a@fabrikam.test",
        &["bob@contoso.test"],
        &message("two", "y"),
    );
    smtp.cmd("QUIT");
    server.wait_inbox("bob@contoso.test", 2);
    wait_for("the current file grows", WAIT, || {
        (current_tracking.exists() && fs::metadata(&current_tracking).ok()?.len() > before)
            .then_some(())
    });
}

/// A bad value in a per-service log table names the file, the line and the key.
#[test]
fn log_settings_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mailflow.toml");
    fs::write(
        &file,
        "[organization]\nname = \"c\"\naccepted_domains = [\"c.test\"]\n\n[[servers]]\n\
         name = \"S\"\nfqdn = \"s.c.test\"\naddress = \"127.0.0.1\"\ndata_dir = \"d\"\n\
         [servers.transport_service.connectivity_log]\nmax_age = \"soon\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailflow"))
        .args(["--config", file.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("mailflow.toml:11: ") && err.contains("max_age"),
        "{err}"
    );
}

//! Hardening: limits, files and logs. Nothing an outside client sends can stop or
//! subvert the mail flow: connection floods, slow clients, recipient harvesting,
//! control characters in names and content, and symbolic links in Pickup.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The standard organisation with `Default Frontend` limits of this test. The other
/// connectors take 200 connections each, so the sum of the caps stays below what the
/// open-files limit of any test machine leaves (else every cap is lowered in
/// proportion).
fn start_with_frontend_limits(limits: &str) -> Server {
    let line = format!("max_inbound_connections = 200\nconnector_limits.frontend = {{ {limits} }}");
    Server::start_edited(move |org| org.replace(FRONTEND_LIMITS, &line))
}

#[test]
fn connections_past_the_per_source_and_connector_limits_get_421_4_3_2_and_others_are_served() {
    let server = start_with_frontend_limits(
        "max_inbound_connection = 5, max_inbound_connection_per_source = 3, \
         max_inbound_connection_percentage_per_source = 100",
    );
    let port = server.ports.frontend;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (c, greeting) = Smtp::connect_from("127.0.0.1", port);
        assert!(greeting.starts_with("220 "), "greeting: {greeting}");
        held.push(c);
    }
    // The fourth from the same address is told and closed, not left in the backlog.
    let (mut c, reply) = Smtp::connect_from("127.0.0.1", port);
    assert_eq!(
        reply,
        "421 4.3.2 The maximum number of concurrent connections has exceeded a limit, closing transmission channel\r\n"
    );
    assert!(c.is_closed(), "closed after 421");

    // Another address is served meanwhile.
    let (_c2, greeting) = Smtp::connect_from("127.0.0.2", port);
    assert!(greeting.starts_with("220 "), "other source: {greeting}");
    let (_c3, greeting) = Smtp::connect_from("127.0.0.2", port);
    assert!(greeting.starts_with("220 "), "other source: {greeting}");
    // Five sessions now: MaxInboundConnection refuses a sixth from anywhere.
    let (_c4, reply) = Smtp::connect_from("127.0.0.3", port);
    assert_eq!(
        reply,
        "421 4.3.2 The maximum number of concurrent server connections has exceeded a limit, closing transmission channel\r\n"
    );

    // A session that ends gives its place back.
    drop(held.pop());
    let greeting = wait_for(
        "a place for 127.0.0.1 again",
        Duration::from_secs(10),
        || {
            let (_c, first) = Smtp::connect_from("127.0.0.1", port);
            first.starts_with("220 ").then_some(first)
        },
    );
    assert!(greeting.starts_with("220 "));
}

/// `mailflow serve` of the organisation file `config`, started through `sh -c
/// "<prefix> exec mailflow serve …"`, once it logged "ready" (its output goes to
/// `log_path`).
fn spawn_serve_in_shell(config: &Path, log_path: &Path, prefix: &str) -> std::process::Child {
    let log = std::fs::File::create(log_path).unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("{prefix} exec \"$0\" serve --config \"$1\""))
        .arg(BIN)
        .arg(config)
        .env("MAILFLOW_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(child, log_path, 0)
        .unwrap_or_else(|| panic!("serve did not start: {}", file_text(log_path)))
}

/// Kills the child on drop, so a failed assertion leaves no server behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_raises_its_open_files_soft_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::system();
    let config = dir.path().join("mailflow.toml");
    std::fs::write(&config, org_file(&ports, "")).unwrap();
    std::fs::write(
        dir.path().join("secret.key"),
        "00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    // Started with a soft limit of 256, as a shell's default of 1,024 would be.
    let child = Killed(spawn_serve_in_shell(
        &config,
        &dir.path().join("serve.log"),
        "ulimit -S -n 256 &&",
    ));
    let limits = file_text(Path::new(&format!("/proc/{}/limits", child.0.id())));
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files in /proc/<pid>/limits");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "soft limit raised to the hard limit: {line}");
}

/// Every file and folder under `root`, with its mode.
fn modes_under(root: &Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        out.push((p.clone(), meta.permissions().mode() & 0o7777));
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn init_serve_and_set_password_leave_no_file_readable_by_group_or_others() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let org = dir.path().join("org");
    // The umask most shells have: the files must be private anyway.
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 022 && exec \"$0\" init --domain contoso.test --server MBX1 --mailbox alice@contoso.test --dir \"$1\"")
        .arg(BIN)
        .arg(&org)
        .output()
        .unwrap();
    assert_success(&out);
    let config = org.join("mailflow.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    // A lone server: every port from the system, read back from listeners.json.
    for key in [
        "frontend = 25",
        "transport = 2525",
        "mailbox_delivery = 475",
        "admin = 8025",
        "client_frontend = 587",
        "client_proxy = 465",
        "outbound_proxy = 717",
    ] {
        let name = key.split(' ').next().unwrap();
        assert!(text.contains(key), "init wrote no `{key}`");
        text = text.replace(key, &format!("{name} = 0"));
    }
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();

    let server = Killed(spawn_serve_in_shell(
        &config,
        &dir.path().join("serve.log"),
        "umask 022 &&",
    ));
    let ports = Ports::bound(&org.join("data/MBX1")).expect("listeners.json");
    let mut c = Smtp::connect(ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    let r = c.send(
        "sender@fabrikam.test",
        &["alice@contoso.test"],
        &message("private files", "kept private\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    let mailbox_list = || cli(&config, &["mailbox", "list", "--json"]);
    wait_for("delivery to alice", Duration::from_secs(60), || {
        let out = mailbox_list();
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        list.as_array()?
            .iter()
            .any(|m| m["InboxItems"].as_u64() == Some(1))
            .then_some(())
    });

    let set_password = || {
        let out = Command::new("sh")
            .arg("-c")
            .arg("umask 022 && exec \"$0\" --config \"$1\" mailbox set-password alice@contoso.test --password 'S3cret-pass!'")
            .arg(BIN)
            .arg(&config)
            .output()
            .unwrap();
        assert_success(&out);
    };
    set_password();
    let mut open = Vec::new();
    for (path, mode) in modes_under(&org) {
        let is_dir = path.is_dir();
        if mode & 0o077 != 0 || (is_dir && mode != 0o700) {
            open.push(format!("{:o} {}", mode, path.display()));
        }
    }
    drop(server);
    assert!(open.is_empty(), "not private:\n{}", open.join("\n"));

    // An administrator who lets a group read the file keeps that choice.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    set_password();
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o640,
        "set-password changed the mode the administrator chose"
    );
}

use std::path::Path;

#[test]
fn content_trickled_below_the_minimum_data_rate_gets_421_4_4_2_and_the_session_closes() {
    let server =
        start_with_frontend_limits("min_data_rate = \"1KB\", min_data_rate_interval = \"1s\"");
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO slow.fabrikam.test");
    assert!(c.cmd("MAIL FROM:<s@fabrikam.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@contoso.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    // 20 bytes every 100 ms: 200 bytes/s, a fifth of the minimum.
    let mut writer = c.stream().try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        // The attack's own pace, until the server closes (or 15 s).
        poll_every(Duration::from_millis(100), Duration::from_secs(15), || {
            writer
                .write_all(b"X-Slow: aaaaaaaaaa\r\n")
                .is_err()
                .then_some(())
        })
    });
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reply = c.read_reply();
    assert_eq!(
        reply,
        "421 4.4.2 Data rate too low, closing transmission channel\r\n"
    );
    assert!(c.is_closed());
    let _ = trickle.join();

    // A client sending at a normal pace is unaffected.
    let mut ok = Smtp::connect(server.ports.frontend);
    ok.cmd("EHLO fast.fabrikam.test");
    let r = ok.send(
        "s@fabrikam.test",
        &["alice@contoso.test"],
        &message("fast", "at full speed\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
}

#[test]
fn unknown_recipients_past_the_second_are_tarpitted_while_other_sessions_are_served() {
    let server = start_with_frontend_limits("tarpit_interval = \"1s\"");
    let port = server.ports.frontend;
    let mut c = Smtp::connect(port);
    c.cmd("EHLO harvester.fabrikam.test");
    assert!(c.cmd("MAIL FROM:<h@fabrikam.test>").starts_with("250"));
    let mut times = Vec::new();
    for i in 0..4 {
        let t = Instant::now();
        let r = c.cmd(&format!("RCPT TO:<nobody{i}@contoso.test>"));
        assert!(r.starts_with("550 5.1.1"), "{r}");
        times.push(t.elapsed());
    }
    // The third and fourth replies waited for the tarpit interval.
    assert!(
        times[2] >= Duration::from_secs(1) && times[3] >= Duration::from_secs(1),
        "tarpit not applied: {times:?}"
    );
    // While the fifth is held, another client is served at once.
    c.send_raw(b"RCPT TO:<nobody5@contoso.test>\r\n");
    let t = Instant::now();
    let mut other = Smtp::connect(port);
    assert!(other.cmd("EHLO other.fabrikam.test").starts_with("250"));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "other session waited for the tarpit"
    );
    assert!(c.read_reply().starts_with("550 5.1.1"));
    // A known recipient is never delayed.
    let t = Instant::now();
    assert!(c.cmd("RCPT TO:<alice@contoso.test>").starts_with("250"));
    assert!(t.elapsed() < Duration::from_secs(1));
}

/// Every physical line of the message tracking logs under `root` (headers skipped).
fn tracking_lines(root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for (path, _) in modes_under(root) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("MSGTRK") && name.ends_with(".LOG") {
            let text = file_text(&path);
            lines.extend(
                text.split("\r\n")
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
    }
    lines
}

#[test]
fn encoded_line_breaks_and_formulas_in_a_message_cannot_forge_tracking_rows_or_cells() {
    let server = Server::start();
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    // A subject whose decoded text holds CR LF and then a whole forged row.
    let forged = "2026-01-01T00:00:00.000Z,10.9.9.9,evil,,,,,SMTP,DELIVER,1,<forged@x>";
    let subject = format!(
        "=?utf-8?q?hi=0D=0A{}?=",
        forged.replace(',', "=2C").replace(' ', "_")
    );
    let content = format!(
        "From: <=1+2@fabrikam.test>\r\nTo: alice@contoso.test\r\nSubject: {subject}\r\nMessage-ID: <@injection@fabrikam.test>\r\n\r\nbody\r\n"
    );
    let r = c.send("=1+2@fabrikam.test", &["alice@contoso.test"], &content);
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    server.wait_inbox("alice@contoso.test", 1);
    let lines = wait_for("DELIVER in tracking", Duration::from_secs(30), || {
        let lines = tracking_lines(&server.data_dir());
        lines
            .iter()
            .any(|l| l.contains(",DELIVER,"))
            .then_some(lines)
    });
    for line in &lines {
        // One event per physical line: it starts with its own timestamp and parses
        // as exactly 30 fields.
        assert!(
            !line.starts_with("2026-01-01T00:00:00.000Z"),
            "the subject forged a row: {line}"
        );
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(line.as_bytes());
        let record = reader
            .records()
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("not one CSV row: {line}"));
        assert_eq!(record.len(), 30, "{line}");
        for cell in record.iter() {
            assert!(
                cell.len() < 2 || !cell.starts_with(['=', '+', '-', '@']),
                "a cell a spreadsheet would run as a formula: {cell:?} in {line}"
            );
        }
    }
}

#[test]
fn helo_with_control_characters_gets_501_5_5_4_and_never_reaches_the_logs() {
    let server = Server::start();
    for hello in [
        &b"EHLO evil\x1b[2J.test\r\n"[..],
        b"HELO a\0b.test\r\n",
        b"EHLO x\ry.test\r\n",
    ] {
        let mut c = Smtp::connect(server.ports.frontend);
        c.send_raw(hello);
        let r = c.read_reply();
        assert_eq!(
            r,
            "501 5.5.4 Invalid domain name\r\n",
            "{:?}",
            String::from_utf8_lossy(hello)
        );
        // The session goes on: a proper name is accepted.
        assert!(c.cmd("EHLO client.fabrikam.test").starts_with("250"));
        c.cmd("QUIT");
    }
    // The protocol log shows the refused command escaped, on one line.
    let log = wait_for("the protocol log", Duration::from_secs(10), || {
        let text = tree_text(&server.data_dir(), "ProtocolLog");
        text.contains("Invalid domain name").then_some(text)
    });
    assert!(!log.contains('\u{1b}') && !log.contains('\0'), "{log:?}");
    assert!(log.contains("EHLO evil\\x1B[2J.test"), "{log}");
}

#[test]
fn content_with_a_nul_byte_is_refused_with_550_5_6_0_and_not_stored() {
    let server = Server::start();
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    let r = c.send(
        "sender@fabrikam.test",
        &["alice@contoso.test"],
        &message("nul", "before\0after\r\n"),
    );
    assert_eq!(
        r,
        "550 5.6.0 NUL characters are not allowed in message content\r\n"
    );
    // BDAT too.
    assert!(c.cmd("MAIL FROM:<sender@fabrikam.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@contoso.test>").starts_with("250"));
    let content = message("nul bdat", "a\0b\r\n");
    c.send_raw(format!("BDAT {} LAST\r\n", content.len()).as_bytes());
    c.send_raw(content.as_bytes());
    let r = c.read_reply();
    assert!(r.starts_with("550 5.6.0"), "{r}");
    // The session goes on, and a clean message is delivered.
    let r = c.send(
        "sender@fabrikam.test",
        &["alice@contoso.test"],
        &message("clean", "no nul\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    server.wait_inbox("alice@contoso.test", 1);
    let stored = server.export("alice@contoso.test");
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].contains(&0u8));
}

#[test]
fn pickup_never_follows_a_symbolic_link_or_opens_a_fifo_and_renames_them_bad() {
    let server = Server::start_custom("pickup_directory_poll_interval = \"200ms\"", "");
    let pickup = server.data_dir().join("Pickup");
    wait_for("the Pickup directory", Duration::from_secs(10), || {
        pickup.is_dir().then_some(())
    });
    // A file outside Pickup that reads as a message: the link must not send it.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    let secret_text = "From: app@contoso.test\nTo: bob@contoso.test\nSubject: leaked\n\nsecret\n";
    std::fs::write(&secret, secret_text).unwrap();
    std::os::unix::fs::symlink(&secret, pickup.join("a-leak.eml")).unwrap();
    // A FIFO would block a reader forever.
    let made = Command::new("mkfifo")
        .arg(pickup.join("b-fifo.eml"))
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(
        pickup.join("c-good.eml"),
        "From: app@contoso.test\nTo: bob@contoso.test\nSubject: after the link\n\nok\n",
    )
    .unwrap();
    server.wait_inbox("bob@contoso.test", 1);
    wait_for("a-leak.bad and b-fifo.bad", Duration::from_secs(10), || {
        (pickup.join("a-leak.bad").symlink_metadata().is_ok()
            && pickup.join("b-fifo.bad").symlink_metadata().is_ok())
        .then_some(())
    });
    let bob = server.export("bob@contoso.test");
    assert_eq!(bob.len(), 1);
    assert_eq!(header_values(&bob[0], "Subject"), ["after the link"]);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), secret_text);
    assert!(server.log().contains("symbolic link"), "{}", server.log());
    let badmail = server.track(&["--event-id", "BADMAIL"]);
    assert_eq!(badmail.len(), 2, "{badmail:?}");
}

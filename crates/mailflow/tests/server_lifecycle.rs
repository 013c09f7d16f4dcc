//! A server's life cycle (issue 14): SIGTERM closes every listener and the process
//! exits 0 within a deadline, even with a session open; mail accepted before the signal
//! is delivered after a restart.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// How long a SIGTERMed server may take to exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(15);

/// Every address in `<data_dir>/listeners.json`.
fn listener_addresses(server: &Server) -> Vec<(String, SocketAddr)> {
    let text = file_text(&server.data_dir().join("listeners.json"));
    let v: serde_json::Value = serde_json::from_str(&text).expect("listeners.json");
    v["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| {
            let name = l["name"].as_str().unwrap().to_string();
            let addr: SocketAddr = l["address"].as_str().unwrap().parse().unwrap();
            (name, addr)
        })
        .collect()
}

/// The address a client uses for a listener (loopback for one on every interface).
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), addr.port())
    } else {
        addr
    }
}

#[test]
fn sigterm_closes_every_listener_exits_0_and_accepted_mail_survives_the_restart() {
    let mut server = Server::start();
    let listeners = listener_addresses(&server);
    assert!(listeners.len() >= 7, "listeners.json: {listeners:?}");
    for (name, addr) in &listeners {
        assert!(
            TcpStream::connect_timeout(&reachable(*addr), Duration::from_secs(5)).is_ok(),
            "{name} at {addr} does not accept before the signal"
        );
    }
    let mut c = Smtp::connect(server.ports.frontend);
    c.cmd("EHLO client.fabrikam.test");
    let r = c.send(
        "sender@fabrikam.test",
        &["carol@contoso.test"],
        &message("warm up", "x\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    server.wait_inbox("carol@contoso.test", 1);
    // Hold the mailbox queue so the message is certainly still queued at the signal.
    let out = server.cli(&["queue", "suspend", "DB01"]);
    assert_success(&out);
    let r = c.send(
        "sender@fabrikam.test",
        &["alice@contoso.test"],
        &message("accepted before SIGTERM", "x\r\n"),
    );
    assert!(r.starts_with("250"), "{r}");
    // An idle session stays open across the signal: it must not hold the exit.
    let idle = Smtp::connect(server.ports.frontend);

    let status = server
        .terminate(EXIT_DEADLINE)
        .unwrap_or_else(|| panic!("no exit {EXIT_DEADLINE:?} after SIGTERM:\n{}", server.log()));
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    for (name, addr) in &listeners {
        assert!(
            TcpStream::connect_timeout(&reachable(*addr), Duration::from_secs(5)).is_err(),
            "{name} at {addr} still accepts after exit"
        );
    }
    let log = server.log();
    // Listeners close before the services stop, Transport's own tasks (categorizer,
    // transmitters, sweepers) end before the queue database closes.
    let closed = log.find("every listener closed");
    let transport = log.find("Transport's categorizer, transmitters and sweepers stopped");
    let db = log.find("queue database closed");
    assert!(
        closed.is_some() && closed < transport && transport < db,
        "{log}"
    );
    assert!(!log.contains("did not stop"), "{log}");
    drop(idle);

    server.spawn();
    let out = server.cli(&["queue", "resume", "DB01"]);
    assert_success(&out);
    server.wait_inbox("alice@contoso.test", 1);
    let delivered = server.export("alice@contoso.test");
    assert_eq!(delivered.len(), 1);
    assert!(
        header_values(&delivered[0], "Subject")
            .iter()
            .any(|s| s.contains("accepted before SIGTERM"))
    );
}

//! Test helpers: start the real `mailflow` binary on loopback with an organisation
//! file written for the test, talk to it with real clients, and clean up.
//!
//! Ports: a lone server ([`Server`]) gets port 0 for every listener and the test reads
//! what it bound from `<data_dir>/listeners.json`; the servers of a [`Cluster`] must
//! know each other's ports, so those come from [`free_ports`] (racy, retried).
//! Waiting: [`wait_for`] polls a condition with a deadline and [`assert_for`] proves
//! that nothing happens for a while; [`poll_every`] also paces a client that must act
//! at a rate. No test sleeps otherwise: the one `sleep` is the interval in `wait.rs`.
//! Layout: one module a concern, each saying what it must not import; this file only
//! declares and re-exports them, so a test needs `mod common; use common::*;`.
// Every integration test binary compiles this module and uses only some of its items
// and re-exports.
#![allow(dead_code, unused_imports)]

mod cluster;
mod files;
mod org;
mod pki;
mod ports;
pub mod postfix;
mod run;
mod server;
mod sink;
mod smtp;
mod wait;

pub use cluster::*;
pub use files::*;
pub use org::*;
pub use pki::*;
pub use ports::*;
pub use run::*;
pub use server::*;
pub use sink::*;
pub use smtp::*;
pub use wait::*;

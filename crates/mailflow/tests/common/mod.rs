//! Test helpers: start the real `mailflow` binary on loopback with an organisation
//! file written for the test, talk to it with real clients, and clean up.
//!
//! Ports: a lone server ([`Server`]) gets port 0 for every listener and the test reads
//! what it bound from `<data_dir>/listeners.json`; the servers of a [`Cluster`] must
//! know each other's ports, so those come from [`free_ports`] (racy, retried).
//! Waiting: [`wait_for`] polls a condition with a deadline and [`assert_for`] proves
//! that nothing happens for a while; no test sleeps otherwise.
// Every integration test binary compiles this module and uses only some of it.
#![allow(dead_code, unused_imports)]

pub mod postfix;
mod server;

pub use server::*;

//! The fuzz / property harness shared by the property tests of both crates (included
//! with `#[path]`: it is test code only, and a crate for forty lines would be more).
//!
//! Each target runs a fixed number of cases from a fixed seed in a plain `cargo test`,
//! so the suite stays fast and repeatable. With `MAILFLOW_FUZZ_SECONDS=n` it instead
//! runs batches from fresh random seeds until `n` seconds have passed, and prints
//! `fuzz <target>: <cases> cases, <failures> failures` (what `scripts/fuzz` reads).
//!
//! A failure is shrunk and its seed saved in `fuzz/regressions/<target>.txt` (proptest's
//! persistence, committed), which every later run replays first; inputs worth keeping
//! by value (the crashes found by hand) are replayed with [`replay`].

#![allow(dead_code)]

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngSeed, TestCaseError, TestError, TestRunner,
};

/// Cases per target in a plain `cargo test`.
pub const CASES: u32 = 256;

/// The time budget per target from `MAILFLOW_FUZZ_SECONDS`, when set.
fn budget() -> Option<Duration> {
    std::env::var("MAILFLOW_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
}

/// Runs `test` on values of `strategy`: `cases` of them, or batches until the budget.
pub fn fuzz<S>(
    target: &'static str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    // Absolute (the crate that includes this file): proptest looks a relative source
    // file up from the working directory, and warns when it does not exist yet.
    let regressions: &'static str = Box::leak(
        format!(
            "{}/fuzz/regressions/{target}.txt",
            env!("CARGO_MANIFEST_DIR")
        )
        .into_boxed_str(),
    );
    let deadline = budget().map(|b| Instant::now() + b);
    let config = |cases, rng_seed| Config {
        cases,
        rng_seed,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        source_file: Some(regressions),
        // Shrinking a large input must not eat the whole budget.
        max_shrink_time: 20_000,
        ..Config::default()
    };
    let (mut run, mut failure) = (0u64, None);
    loop {
        let (batch, seed) = match deadline {
            // "mailflow" in ASCII: the same cases on every plain run.
            None => (cases, RngSeed::Fixed(0x6d61_696c_666c_6f77)),
            Some(_) => (cases.max(64), RngSeed::Random),
        };
        let mut runner = TestRunner::new(config(batch, seed));
        match runner.run(&strategy, &test) {
            Ok(()) => run += u64::from(batch),
            Err(TestError::Fail(why, value)) => {
                failure = Some(format!("{why}\nminimal failing input: {value:?}"));
            }
            Err(TestError::Abort(why)) => failure = Some(format!("aborted: {why}")),
        }
        let out_of_time = deadline.is_none_or(|d| Instant::now() >= d);
        if failure.is_some() || out_of_time {
            break;
        }
    }
    println!(
        "fuzz {target}: {run} cases, {} failures",
        usize::from(failure.is_some())
    );
    if let Some(failure) = failure {
        panic!(
            "fuzz target {target} failed (seed saved in {regressions}): {}",
            shorten(&failure)
        );
    }
}

/// A failure message short enough to read (inputs can be kilobytes).
fn shorten(text: &str) -> String {
    const MAX: usize = 3000;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}

/// Runs `test` on inputs kept by value: crashes found before, never to return.
pub fn replay<T: Debug>(
    inputs: impl IntoIterator<Item = T>,
    test: impl Fn(T) -> Result<(), TestCaseError>,
) {
    for input in inputs {
        let shown = format!("{input:?}");
        if let Err(e) = test(input) {
            panic!(
                "regression input {} failed: {}",
                shorten(&shown),
                shorten(&e.to_string())
            );
        }
    }
}

//! Waiting in tests: poll a condition with a deadline ([`wait_for`], [`poll_until`])
//! or prove that a condition holds for a while ([`assert_for`]). The only sleep in the
//! tests is the poll interval here. Imports nothing of the other helpers.

use std::time::{Duration, Instant};

/// How long the polling helpers wait between two looks.
const POLL: Duration = Duration::from_millis(50);

/// Polls `f` until it returns Some (that value) or the deadline passes (None). The
/// one place where tests wait: every other wait is a condition polled through here.
pub fn poll_until<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(POLL, timeout, f)
}

/// Like [`poll_until`], looking every `interval`: also a pace for a test that must act
/// at a given rate (a client trickling bytes), `f` returning Some to stop early.
pub fn poll_every<T>(
    interval: Duration,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// Polls `f` until it returns Some or the deadline passes (then the test fails).
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Proves that nothing happens for `duration`: `check` must hold at every look (Err
/// says what went wrong) from now until the end, e.g. a message delivered exactly once
/// stays delivered once while a wrong second copy would have time to arrive.
pub fn assert_for(what: &str, duration: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let end = Instant::now() + duration;
    let failed = poll_until(duration + POLL, || {
        if let Err(e) = check() {
            return Some(Some(e));
        }
        (Instant::now() >= end).then_some(None)
    });
    if let Some(Some(e)) = failed {
        panic!("{what} did not hold for {duration:?}: {e}");
    }
}

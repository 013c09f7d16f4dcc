//! When queued mail goes again and when it gives up (reference §6): the retry ladder
//! ([`RetryPolicy`]), message expiration and delay notices ([`Expiry`]) and a message's
//! arrival time. Pure: callers pass the clock. It must not import the queues or send/.

use std::time::{Duration, Instant, SystemTime};

/// When a message arrived, from its envelope's `received_at` (RFC 3339); `now` for an
/// envelope without a readable one (its expiry then counts from the load).
pub fn arrival_time(received_at: &str, now: SystemTime) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(received_at)
        .map(SystemTime::from)
        .unwrap_or(now)
}

/// Message expiration and delay notices (reference §6): both count from the message's
/// arrival on this server. Pure: the sweeper passes the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    /// MessageExpirationTimeout: the message fails with 4.4.7 after this long.
    pub expiration: Duration,
    /// DelayNotificationTimeout: its recipients get one delay notice after this long.
    pub delay: Duration,
}

impl Expiry {
    /// Whether a message that arrived at `arrival` has expired at `now`.
    pub fn expired(&self, arrival: SystemTime, now: SystemTime) -> bool {
        Self::reached(arrival, self.expiration, now)
    }

    /// Whether a delay notice is due at `now` for a message that arrived at `arrival`.
    pub fn delay_due(&self, arrival: SystemTime, now: SystemTime) -> bool {
        Self::reached(arrival, self.delay, now)
    }

    /// `arrival + timeout <= now`; an arrival in the future (a clock set back) has
    /// reached nothing yet.
    fn reached(arrival: SystemTime, timeout: Duration, now: SystemTime) -> bool {
        now.duration_since(arrival).is_ok_and(|age| age >= timeout)
    }

    /// How often the sweeper looks: often enough to be punctual (1/60 of the shorter
    /// timeout), rarely enough to cost nothing on long queues (0.5 s to 1 min).
    pub fn sweep_period(&self) -> Duration {
        (self.expiration.min(self.delay) / 60)
            .clamp(Duration::from_millis(500), Duration::from_secs(60))
    }
}

/// Retry intervals (reference §6): glitch retries, then transient ones, then the
/// outbound-connection-failure interval until expiry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub glitch_count: u32,
    pub glitch_interval: Duration,
    pub transient_count: u32,
    pub transient_interval: Duration,
    pub failure_interval: Duration,
}

impl RetryPolicy {
    /// How long to wait after failed attempt number `attempt` (0 for the first).
    pub fn interval(&self, attempt: u32) -> Duration {
        if attempt < self.glitch_count {
            self.glitch_interval
        } else if attempt < self.glitch_count + self.transient_count {
            self.transient_interval
        } else {
            self.failure_interval
        }
    }

    /// When an item that failed attempt number `attempt` at `now` may go again (a
    /// recipient's transient failure, a rerouted or crashed message's glitch retry).
    pub fn not_before(&self, attempt: u32, now: Instant) -> Instant {
        now + self.interval(attempt)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Exchange's defaults (reference §6): 4 glitch retries a minute apart, 6 transient
    /// retries 5 minutes apart, then 10 minutes.
    pub(crate) fn reference_policy() -> RetryPolicy {
        RetryPolicy {
            glitch_count: 4,
            glitch_interval: Duration::from_secs(60),
            transient_count: 6,
            transient_interval: Duration::from_secs(300),
            failure_interval: Duration::from_secs(600),
        }
    }

    pub(crate) fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn retry_ladder_follows_the_reference() {
        let p = reference_policy();
        let ladder: Vec<u64> = (0..12).map(|i| p.interval(i).as_secs()).collect();
        assert_eq!(
            ladder,
            [60, 60, 60, 60, 300, 300, 300, 300, 300, 300, 600, 600]
        );
        // (policy, attempt, wait before the next one)
        let none = RetryPolicy {
            glitch_count: 0,
            transient_count: 0,
            ..reference_policy()
        };
        let no_glitch = RetryPolicy {
            glitch_count: 0,
            ..reference_policy()
        };
        let cases = [
            (&none, 0, 600),
            (&none, 99, 600),
            (&no_glitch, 0, 300),
            (&no_glitch, 5, 300),
            (&no_glitch, 6, 600),
            (&p, 3, 60),
            (&p, 4, 300),
            (&p, u32::MAX, 600),
        ];
        let t0 = Instant::now();
        for (policy, attempt, wait) in cases {
            assert_eq!(policy.interval(attempt), secs(wait), "attempt {attempt}");
            assert_eq!(policy.not_before(attempt, t0), t0 + secs(wait));
        }
    }

    #[test]
    fn expiry_and_delay_notices_count_from_arrival() {
        let e = Expiry {
            expiration: secs(2 * 86400),
            delay: secs(4 * 3600),
        };
        let arrival = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
        // (seconds after arrival — negative: a clock set back —, expired, delay due)
        let cases: [(i64, bool, bool); 7] = [
            (-3600, false, false),
            (0, false, false),
            (4 * 3600 - 1, false, false),
            (4 * 3600, false, true),
            (2 * 86400 - 1, false, true),
            (2 * 86400, true, true),
            (30 * 86400, true, true),
        ];
        for (age, expired, delay) in cases {
            let now = if age < 0 {
                arrival - secs(age.unsigned_abs())
            } else {
                arrival + secs(age as u64)
            };
            assert_eq!(e.expired(arrival, now), expired, "age {age}s");
            assert_eq!(e.delay_due(arrival, now), delay, "age {age}s");
        }
    }

    #[test]
    fn the_sweeper_period_is_a_sixtieth_of_the_shorter_timeout_within_bounds() {
        // (expiration, delay, period in ms)
        let cases = [
            (secs(2 * 86400), secs(4 * 3600), 60_000),
            (secs(3600), secs(1800), 30_000),
            (secs(60), secs(4 * 3600), 1000),
            (secs(5), secs(10), 500),
            (Duration::ZERO, secs(10), 500),
        ];
        for (expiration, delay, ms) in cases {
            let e = Expiry { expiration, delay };
            assert_eq!(e.sweep_period(), Duration::from_millis(ms), "{e:?}");
        }
    }

    #[test]
    fn arrival_comes_from_the_envelope_or_the_load_time() {
        let now = SystemTime::UNIX_EPOCH + secs(1_800_000_000);
        // (received_at, seconds since the epoch)
        let cases = [
            ("2023-11-14T22:13:20Z", 1_700_000_000),
            ("2023-11-14T23:13:20+01:00", 1_700_000_000),
            ("", 1_800_000_000),
            ("yesterday", 1_800_000_000),
        ];
        for (text, epoch) in cases {
            assert_eq!(
                arrival_time(text, now),
                SystemTime::UNIX_EPOCH + secs(epoch),
                "{text:?}"
            );
        }
    }
}

//! When to check next (updates.md §3.6): CoreOS's schedule — the first check 2 to 12
//! minutes after start, then every 40 to 50 minutes; a server's `PollInterval`; twice the
//! last interval after HTTP 500 or 503; at most 4 hours — or Ferrite's `CHECK_INTERVAL`, a
//! fixed interval for local clusters. Pure functions of their inputs and a random number,
//! so tests need no clock.

use std::time::Duration;

const MINUTE: u64 = 60;
/// The first check, before fuzz.
const FIRST: u64 = 7 * MINUTE;
/// The periodic check, before fuzz.
const PERIODIC: u64 = 45 * MINUTE;
/// The fuzz around both.
const FUZZ: u64 = 10 * MINUTE;
/// The longest interval.
const MAX: u64 = 4 * 60 * MINUTE;

/// update_engine's `FuzzInt(value, range)`: uniform in `[value - range/2, value + range -
/// range/2]`, drawn from `rand`.
pub fn fuzz(value: u64, range: u64, rand: u64) -> u64 {
    value.saturating_sub(range / 2) + rand % (range + 1)
}

/// The delay before the first check after start.
pub fn first_check(fixed: Option<u64>, rand: u64) -> Duration {
    Duration::from_secs(fixed.unwrap_or_else(|| fuzz(FIRST, FUZZ, rand)))
}

/// Why the last check ended as it did, for the next interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LastCheck {
    /// The server's `PollInterval`, seconds.
    pub poll_interval: Option<u64>,
    /// The server answered 500 or 503.
    pub server_busy: bool,
}

/// The delay before the next check, after `last` (the previous delay).
pub fn next_check(fixed: Option<u64>, last: Duration, check: LastCheck, rand: u64) -> Duration {
    if let Some(s) = fixed {
        return Duration::from_secs(s);
    }
    let interval = match check {
        LastCheck {
            poll_interval: Some(p),
            ..
        } => p,
        LastCheck {
            server_busy: true, ..
        } => last.as_secs().saturating_mul(2),
        // Nothing said: the periodic check (below).
        _ => 0,
    }
    .min(MAX);
    Duration::from_secs(if interval < PERIODIC {
        fuzz(PERIODIC, FUZZ, rand)
    } else {
        fuzz(interval, interval, rand)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(f: impl Fn(u64) -> Duration) -> (u64, u64) {
        // Every remainder the fuzz can take (the widest range is 4 h).
        let all: Vec<u64> = (0..=4 * 3600u64).map(|r| f(r).as_secs()).collect();
        (
            all.iter().copied().min().unwrap_or(0),
            all.iter().copied().max().unwrap_or(0),
        )
    }

    #[test]
    fn coreos_schedule() {
        assert_eq!(range(|r| first_check(None, r)), (2 * MINUTE, 12 * MINUTE));
        let after = |check| range(move |r| next_check(None, Duration::from_secs(0), check, r));
        assert_eq!(after(LastCheck::default()), (40 * MINUTE, 50 * MINUTE));
        // A short PollInterval is raised to the periodic check.
        let short = LastCheck {
            poll_interval: Some(5),
            server_busy: false,
        };
        assert_eq!(after(short), (40 * MINUTE, 50 * MINUTE));
        // A long one is fuzzed by half itself; 4 hours at most.
        let long = LastCheck {
            poll_interval: Some(2 * 60 * MINUTE),
            server_busy: false,
        };
        assert_eq!(after(long), (60 * MINUTE, 180 * MINUTE));
        let huge = LastCheck {
            poll_interval: Some(u64::MAX),
            server_busy: false,
        };
        assert_eq!(after(huge), (2 * 60 * MINUTE, 6 * 60 * MINUTE));
        // A busy server doubles the last interval.
        let busy = LastCheck {
            poll_interval: None,
            server_busy: true,
        };
        assert_eq!(
            range(|r| next_check(None, Duration::from_secs(60 * MINUTE), busy, r)),
            (60 * MINUTE, 180 * MINUTE)
        );
        // Ferrite's fixed interval, for local clusters.
        assert_eq!(first_check(Some(5), 123), Duration::from_secs(5));
        assert_eq!(
            next_check(Some(5), Duration::ZERO, busy, 7),
            Duration::from_secs(5)
        );
    }
}

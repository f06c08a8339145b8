//! The time, injectable: the token lifecycle and the key cache read it through [`Clock`], so
//! tests and the budget benchmark can move it forward without waiting. Leases always use the
//! real clock (they coordinate real processes).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};

pub trait Clock: Send + Sync {
    /// Monotonic time, for ages and intervals.
    fn now(&self) -> Instant;
    /// Wall-clock time, for token lifetimes and JWT `exp`, `nbf`, `iat`.
    fn utc(&self) -> DateTime<Utc>;
    /// Seconds since the Unix epoch.
    fn unix_now(&self) -> i64 {
        self.utc().timestamp()
    }
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn utc(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that starts at the real time and moves only when told to (tests, simulations).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    start_utc: DateTime<Utc>,
    offset_ms: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    pub fn new() -> Self {
        Self { start: Instant::now(), start_utc: Utc::now(), offset_ms: AtomicU64::new(0) }
    }

    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.offset()
    }

    fn utc(&self) -> DateTime<Utc> {
        self.start_utc + delta(self.offset())
    }

    fn unix_now(&self) -> i64 {
        // Whole seconds of the offset, as a JWT validator counts them.
        self.start_utc.timestamp() + i64::try_from(self.offset().as_secs()).unwrap_or(i64::MAX / 2)
    }
}

/// The real time plus an offset that only grows: the instances (`App`s) of one process that share
/// it see the same jumps
/// while real time (and so real leases and timeouts) goes on as usual.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_ms: AtomicI64,
}

impl OffsetClock {
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4), Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> Instant {
        let offset = Duration::from_millis(self.offset_ms.load(Ordering::SeqCst).max(0).unsigned_abs());
        Instant::now() + offset
    }

    fn utc(&self) -> DateTime<Utc> {
        Utc::now() + TimeDelta::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }
}

/// A std duration as a chrono one. Durations here are bounded (lifetimes are capped at 366 days
/// when parsed); the cap keeps date arithmetic from overflowing whatever comes in.
pub fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration.min(Duration::from_secs(400 * 86_400))).expect("400 days fit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_both_clocks() {
        let clock = ManualClock::new();
        let (instant, unix, utc) = (clock.now(), clock.unix_now(), clock.utc());
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - instant, Duration::from_secs(90));
        assert_eq!(clock.unix_now() - unix, 90);
        assert_eq!(clock.utc() - utc, TimeDelta::seconds(90));
    }

    #[test]
    fn offset_clock_runs_ahead_of_real_time() {
        let clock = OffsetClock::default();
        clock.advance(Duration::from_secs(3600));
        let ahead = clock.utc() - Utc::now();
        assert!(ahead > TimeDelta::seconds(3590) && ahead <= TimeDelta::seconds(3600), "{ahead}");
    }
}

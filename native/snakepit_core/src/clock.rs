//! Time, behind a trait so tests can move it by hand instead of sleeping.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the store gets its time from.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time in microseconds since the Unix epoch, for timestamps.
    fn wall_micros(&self) -> i64;
    /// Monotonic time since an arbitrary origin, for idle-TTL accounting.
    fn monotonic(&self) -> Duration;
}

/// The real clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock { origin: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn wall_micros(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to; for tests of expiry.
#[derive(Debug, Default)]
pub struct ManualClock {
    wall_micros: AtomicI64,
    mono_micros: AtomicU64,
}

impl ManualClock {
    /// Moves both readings forward by `by`.
    pub fn advance(&self, by: Duration) {
        let us = by.as_micros() as u64;
        self.wall_micros.fetch_add(us as i64, Ordering::SeqCst);
        self.mono_micros.fetch_add(us, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn wall_micros(&self) -> i64 {
        self.wall_micros.load(Ordering::SeqCst)
    }

    fn monotonic(&self) -> Duration {
        Duration::from_micros(self.mono_micros.load(Ordering::SeqCst))
    }
}

/// Days since 1970-01-01 as a proleptic Gregorian (year, month, day), for
/// callers that build calendar dates themselves (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::default();
        assert_eq!(c.monotonic(), Duration::ZERO);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.monotonic(), Duration::from_millis(1500));
        assert_eq!(c.wall_micros(), 1_500_000);
    }
}

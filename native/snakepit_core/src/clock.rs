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
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
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

//! A read-rate limit: at most `rate` bytes per second on average since the start, so that a
//! full scan (an audit, a scrub) does not starve the production workload of disk bandwidth.
//! Shared by the threads that read; a caller asks to be admitted before (or just after) each
//! read, and sleeps until its bytes fit under the rate. A stop ends the wait at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A token bucket without burst: bytes are admitted at `rate` per second from the start.
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    start: Instant,
    admitted: AtomicU64,
}

impl Throttle {
    /// At most `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> Throttle {
        Throttle {
            rate: bytes_per_second.max(1),
            start: Instant::now(),
            admitted: AtomicU64::new(0),
        }
    }

    /// When `bytes` more may have been read, counting everything admitted so far.
    fn due(&self, bytes: u64) -> Instant {
        let total = self.admitted.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.start + Duration::from_secs_f64(total as f64 / self.rate as f64)
    }

    /// Waits until `bytes` fit under the rate (or `cancel` is set).
    pub fn admit(&self, bytes: u64, cancel: &AtomicBool) {
        let due = self.due(bytes);
        while !cancel.load(Ordering::Relaxed) {
            let Some(left) = due.checked_duration_since(Instant::now()) else {
                return;
            };
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_never_runs_ahead_of_the_rate() {
        let throttle = Throttle::new(1000);
        // 2500 bytes at 1000 B/s are due 2.5 s after the start: the schedule, not a timing.
        let first = throttle.due(1000);
        let second = throttle.due(1500);
        assert_eq!(first - throttle.start, Duration::from_secs(1));
        assert_eq!(second - throttle.start, Duration::from_millis(2500));
        // A stop ends the wait at once.
        let stopped = AtomicBool::new(true);
        throttle.admit(1_000_000, &stopped);
    }
}

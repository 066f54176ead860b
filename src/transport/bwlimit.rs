//! A bandwidth limit on bytes put on the wire (`send --bwlimit RATE`): a token bucket that
//! fills at `rate` bytes per second up to `burst` bytes. A frame takes its bytes from the
//! bucket *before* it is written, possibly into debt, and is written once the debt is paid,
//! so that at every moment `t` since the limit was made, at most `burst + rate * t` bytes have
//! been written, however large the frames (a 16 MiB extent against a 1 MiB burst just waits
//! longer). The arithmetic is in integers (byte-nanoseconds), so the bound is exact, and the
//! schedule is a pure function of the request times ([`Bucket::reserve`]), which the tests
//! drive with their own clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const NANOS: i128 = 1_000_000_000;

/// The bucket's arithmetic, free of clocks: times are durations since the limit was made.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: u64,
    burst: u64,
    /// Tokens in byte-nanoseconds (bytes x 1e9): negative while in debt.
    tokens: i128,
    /// When `tokens` was last brought up to date.
    at: Duration,
}

impl Bucket {
    /// A full bucket: `rate` bytes per second (at least 1), `burst` bytes at most.
    pub fn new(rate: u64, burst: u64) -> Bucket {
        Bucket {
            rate: rate.max(1),
            burst,
            tokens: burst as i128 * NANOS,
            at: Duration::ZERO,
        }
    }

    /// Takes `bytes` at time `now` and returns how long to wait before writing them (zero
    /// when the bucket held enough). Requests are served in the order they reserve.
    pub fn reserve(&mut self, now: Duration, bytes: u64) -> Duration {
        if now > self.at {
            let refill = (now - self.at).as_nanos() as i128 * self.rate as i128;
            self.tokens = (self.tokens + refill).min(self.burst as i128 * NANOS);
            self.at = now;
        }
        self.tokens -= bytes as i128 * NANOS;
        if self.tokens >= 0 {
            return Duration::ZERO;
        }
        // Paid back at `rate` bytes (rate x 1e9 byte-nanoseconds) per second, i.e. `rate`
        // byte-nanoseconds per nanosecond; rounded up so the debt is paid when the wait ends.
        let nanos = (-self.tokens + self.rate as i128 - 1) / self.rate as i128;
        Duration::from_nanos(nanos.min(u64::MAX as i128) as u64)
    }
}

/// A [`Bucket`] on the real clock, shared by the writers of one destination.
#[derive(Debug)]
pub struct WireLimit {
    epoch: Instant,
    bucket: Mutex<Bucket>,
    rate: u64,
}

impl WireLimit {
    /// `rate` bytes per second, with a burst of a twentieth of a second's worth (at least
    /// 64 KiB, at most 4 MiB): smooth enough for a shared link, large enough that small
    /// frames do not each wait.
    pub fn new(rate: u64) -> WireLimit {
        let burst = (rate / 20).clamp(64 << 10, 4 << 20);
        WireLimit {
            epoch: Instant::now(),
            bucket: Mutex::new(Bucket::new(rate, burst)),
            rate,
        }
    }

    /// The limit, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// How long to wait before writing `bytes` now.
    pub fn reserve(&self, bytes: u64) -> Duration {
        let now = self.epoch.elapsed();
        self.bucket
            .lock()
            .expect("bwlimit lock")
            .reserve(now, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_paces() {
        let mut b = Bucket::new(1000, 500);
        assert_eq!(b.reserve(Duration::ZERO, 500), Duration::ZERO);
        assert_eq!(b.reserve(Duration::ZERO, 250), Duration::from_millis(250));
        // A frame larger than the burst waits for its whole debt.
        assert_eq!(
            b.reserve(Duration::from_millis(250), 2000),
            Duration::from_secs(2)
        );
        // Idle time refills no more than the burst.
        let later = Duration::from_secs(100);
        assert_eq!(b.reserve(later, 500), Duration::ZERO);
        assert_eq!(b.reserve(later, 1), Duration::from_millis(1));
    }

    proptest! {
        /// At every write, all bytes written so far fit under burst + rate x t: requests of
        /// any size arrive at random times, each is written when its wait ends.
        #[test]
        fn never_more_than_burst_plus_rate_times_elapsed(
            rate in 1u64..10_000_000,
            burst in 0u64..4_000_000,
            requests in proptest::collection::vec((0u64..2_000_000, 1u64..20_000_000), 1..200),
        ) {
            let mut bucket = Bucket::new(rate, burst);
            let mut now = Duration::ZERO;
            let mut writes: Vec<(Duration, u64)> = Vec::new();
            for (gap_us, bytes) in requests {
                now += Duration::from_micros(gap_us);
                let wait = bucket.reserve(now, bytes);
                // One writer: the next request comes after this write.
                now += wait;
                writes.push((now, bytes));
            }
            let mut written: u128 = 0;
            for (at, bytes) in writes {
                written += bytes as u128;
                let allowed = burst as u128 * NANOS as u128 + rate as u128 * at.as_nanos();
                prop_assert!(
                    written * NANOS as u128 <= allowed,
                    "{written} bytes written by {at:?} at {rate} B/s, burst {burst}"
                );
            }
        }

        /// The pace is not slower than the rate either: a writer that is never idle gets
        /// all its bytes out by the time the rate says, give or take one nanosecond each.
        #[test]
        fn a_busy_writer_gets_the_whole_rate(
            rate in 1_000u64..10_000_000,
            sizes in proptest::collection::vec(1u64..1_000_000, 1..100),
        ) {
            let mut bucket = Bucket::new(rate, 0);
            let mut now = Duration::ZERO;
            for &bytes in &sizes {
                now += bucket.reserve(now, bytes);
            }
            let total: u64 = sizes.iter().sum();
            let ideal = total as u128 * NANOS as u128 / rate as u128;
            prop_assert!(now.as_nanos() <= ideal + sizes.len() as u128);
        }
    }
}

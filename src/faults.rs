//! Fault-injection points for the test suites, read from the environment. Each is inert unless
//! its variable is set, which nothing but a test does: they exist so that a test can hold a
//! cycle in a given phase (a slow fsync, a slow scan) and act on it there, instead of sleeping
//! and hoping.
//!
//! * `BLKMIRROR_FAULT_SYNC_DELAY_MS`: the receiver's target fsync takes this much longer.
//! * `BLKMIRROR_FAULT_SCAN_DELAY_MS`: the scan waits this long after each chunk.
//! * `BLKMIRROR_FAULT_THIN_HOLD_DELAY_MS`: the thin tracker waits this long while it holds
//!   the pool's metadata snapshot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Sleeps for the number of milliseconds in `variable`, if it is set.
pub fn delay(variable: &str) {
    if let Some(ms) = millis(variable) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// The same, but ends early when `cancel` is set: a held phase still notices a stop as fast
/// as the real one would.
pub fn delay_unless(variable: &str, cancel: &AtomicBool) {
    let Some(ms) = millis(variable) else {
        return;
    };
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until && !cancel.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn millis(variable: &str) -> Option<u64> {
    std::env::var(variable).ok()?.parse().ok()
}

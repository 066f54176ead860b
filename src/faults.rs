//! Fault-injection points for the test suites, read from the environment. Each is inert unless
//! its variable is set, which nothing but a test does: they exist so that a test can hold a
//! cycle in a given phase (a slow fsync, a slow scan) and act on it there, instead of sleeping
//! and hoping.
//!
//! * `BLKMIRROR_FAULT_SYNC_DELAY_MS`: the receiver's target fsync takes this much longer.
//! * `BLKMIRROR_FAULT_SCAN_DELAY_MS`: the scan waits this long after each chunk.

use std::time::Duration;

/// Sleeps for the number of milliseconds in `variable`, if it is set.
pub fn delay(variable: &str) {
    if let Some(ms) = std::env::var(variable)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

//! Watching a cycle while it reads: a view that goes bad (a classic snapshot that overflowed)
//! cancels the scan, so its data is never committed; so does a requested stop, within
//! [`STOP_POLL`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::snapshot::{FrozenView, SnapshotError};

/// How often a view's health is checked during a cycle.
const HEALTH_POLL: Duration = Duration::from_secs(2);
/// How often the stop flag is looked at.
const STOP_POLL: Duration = Duration::from_millis(50);

/// A thread that cancels the scan when the view goes bad or a stop is requested.
pub(crate) struct HealthWatch {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), SnapshotError>>>,
}

/// Starts watching `view`; sets `cancel` when it goes bad or `stop` is set.
pub(crate) fn watch_health(
    view: &FrozenView,
    stop: Arc<AtomicBool>,
    cancel: Arc<AtomicBool>,
) -> HealthWatch {
    let done = Arc::new(AtomicBool::new(false));
    let check = view.health.clone();
    let finished = done.clone();
    let thread = std::thread::spawn(move || {
        let mut checked: Option<Instant> = None;
        while !finished.load(Ordering::Relaxed) {
            if stop.load(Ordering::Relaxed) {
                cancel.store(true, Ordering::Relaxed);
                return Ok(());
            }
            let due = checked.is_none_or(|at| at.elapsed() >= HEALTH_POLL);
            if let Some(check) = check.as_ref().filter(|_| due) {
                checked = Some(Instant::now());
                if let Err(e) = check() {
                    cancel.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            std::thread::park_timeout(STOP_POLL);
        }
        Ok(())
    });
    HealthWatch {
        done,
        thread: Some(thread),
    }
}

impl HealthWatch {
    /// Stops watching; the view's failure, if it failed.
    pub(crate) fn finish(mut self) -> Result<(), SnapshotError> {
        self.done.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => {
                thread.thread().unpark();
                thread.join().expect("health watcher panicked")
            }
            None => Ok(()),
        }
    }
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

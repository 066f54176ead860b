//! Watching a frozen view while a cycle reads it: a view that goes bad (a classic snapshot
//! that overflowed) cancels the scan, so its data is never committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::snapshot::SnapshotError;

/// Polls the view's health while the cycle reads it; a failure cancels the scan.
pub(crate) struct HealthWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), SnapshotError>>>,
}

/// How often a view's health is polled during a cycle.
const HEALTH_POLL: Duration = Duration::from_secs(2);

pub(crate) fn watch_health(
    view: &crate::snapshot::FrozenView,
    cancel: Arc<AtomicBool>,
) -> HealthWatch {
    let stop = Arc::new(AtomicBool::new(false));
    let Some(check) = view.health.clone() else {
        return HealthWatch { stop, thread: None };
    };
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            if let Err(e) = check() {
                cancel.store(true, Ordering::Relaxed);
                return Err(e);
            }
            std::thread::park_timeout(HEALTH_POLL);
        }
        Ok(())
    });
    HealthWatch {
        stop,
        thread: Some(thread),
    }
}

impl HealthWatch {
    pub(crate) fn finish(mut self) -> Result<(), SnapshotError> {
        self.stop.store(true, Ordering::Relaxed);
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
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

//! The `none` provider: no snapshot, the live source is read as it is. Correct only when
//! nothing writes to the source during a cycle; it warns once per process.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Consistency, FrozenView, SnapshotError, SnapshotProvider};

/// The `none` provider: hands out the live source as the view.
#[derive(Default)]
pub struct NoSnapshot {
    warned: AtomicBool,
}

impl SnapshotProvider for NoSnapshot {
    fn name(&self) -> &'static str {
        "none"
    }

    fn freeze(&self, source: &Path, _stop: &AtomicBool) -> Result<FrozenView, SnapshotError> {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                source = %source.display(),
                "--snapshot none reads the source live: it must be quiescent during each cycle, \
                 or the target may mix blocks from different moments (it is still verified \
                 against what was read)"
            );
        }
        Ok(FrozenView::new(source.to_owned(), Consistency::Live, None))
    }
}

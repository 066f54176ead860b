//! The snapshot seam: a provider turns a live source into a frozen view for one cycle and
//! releases it afterwards. The view is released when its [`FrozenView`] guard is dropped (every
//! exit path) or explicitly with [`FrozenView::release`] to see the error.
//!
//! Providers: `none` (reads the live source, with a warning). LVM classic, LVM thin and
//! reflink providers plug in here; a provider that can tell which ranges changed since the
//! previous cycle fills [`FrozenView::changed_hint`] (the scan may then read only those).

mod none;

use std::path::{Path, PathBuf};

pub use none::NoSnapshot;

/// Which provider to use (`--snapshot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SnapshotKind {
    /// Read the source as it is, live. The source should be quiescent.
    None,
}

/// Why a snapshot could not be taken or released.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot of {source_path} failed: {reason}")]
    Failed {
        source_path: PathBuf,
        reason: String,
    },
}

/// What consistency a view gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Read live: blocks may come from different moments.
    Live,
    /// A point-in-time image, as after a power cut.
    CrashConsistent,
}

/// A frozen (or, for `none`, live) view of the source for one cycle.
pub struct FrozenView {
    /// Path to read the view from.
    pub path: PathBuf,
    pub consistency: Consistency,
    /// Byte ranges known to hold every change since the previous cycle's view, when the
    /// provider can tell (none do yet): `None` means scan everything.
    pub changed_hint: Option<Vec<std::ops::Range<u64>>>,
    release: Option<Box<dyn FnOnce() -> Result<(), SnapshotError> + Send>>,
}

impl FrozenView {
    pub fn new(
        path: PathBuf,
        consistency: Consistency,
        release: Option<Box<dyn FnOnce() -> Result<(), SnapshotError> + Send>>,
    ) -> Self {
        FrozenView {
            path,
            consistency,
            changed_hint: None,
            release,
        }
    }

    /// Releases the view now, reporting failure.
    pub fn release(mut self) -> Result<(), SnapshotError> {
        match self.release.take() {
            Some(release) => release(),
            None => Ok(()),
        }
    }
}

impl Drop for FrozenView {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            if let Err(e) = release() {
                tracing::error!(error = %e, "could not release snapshot");
            }
        }
    }
}

/// A way to freeze a source.
pub trait SnapshotProvider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Freezes `source` for one cycle.
    fn freeze(&self, source: &Path) -> Result<FrozenView, SnapshotError>;
}

/// The provider for a `--snapshot` choice.
pub fn provider(kind: SnapshotKind) -> Box<dyn SnapshotProvider> {
    match kind {
        SnapshotKind::None => Box::new(NoSnapshot::default()),
    }
}

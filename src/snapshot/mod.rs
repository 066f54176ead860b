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

/// Releases a view (removes the snapshot, deletes the clone).
pub type ReleaseFn = Box<dyn FnOnce() -> Result<(), SnapshotError> + Send>;
/// Says whether a view is still valid (a classic snapshot that overflowed is not).
pub type HealthFn = std::sync::Arc<dyn Fn() -> Result<(), SnapshotError> + Send + Sync>;

/// A frozen (or, for `none`, live) view of the source for one cycle.
pub struct FrozenView {
    /// Path to read the view from.
    pub path: PathBuf,
    pub consistency: Consistency,
    /// Byte ranges known to hold every change since the previous cycle's view, when the
    /// provider can tell (none do yet): `None` means scan everything.
    pub changed_hint: Option<Vec<std::ops::Range<u64>>>,
    /// Polled during the cycle and checked once more after the last read, before the cycle
    /// may commit: data read from an invalidated snapshot must never be committed.
    pub health: Option<HealthFn>,
    release: Option<ReleaseFn>,
}

impl FrozenView {
    pub fn new(path: PathBuf, consistency: Consistency, release: Option<ReleaseFn>) -> Self {
        FrozenView {
            path,
            consistency,
            changed_hint: None,
            health: None,
            release,
        }
    }

    /// Adds a validity check (see [`FrozenView::health`]).
    pub fn with_health(mut self, health: HealthFn) -> Self {
        self.health = Some(health);
        self
    }

    /// Is the view still valid?
    pub fn check_health(&self) -> Result<(), SnapshotError> {
        match &self.health {
            Some(check) => check(),
            None => Ok(()),
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

/// Options every provider may use (from the command line).
#[derive(Clone, Debug, Default)]
pub struct SnapshotOptions {
    /// The sender's state dir (reflink clones live under it).
    pub state_dir: PathBuf,
    /// Stable identity of the source (snapshot names carry a key of it).
    pub source_identity: String,
    /// Size of a classic LVM snapshot's COW space; `None`: the provider's default rule.
    pub snapshot_size: Option<u64>,
    /// Shell command run just before the snapshot (e.g. flush a database, `fsfreeze -f`).
    pub pre_snapshot: Option<String>,
    /// Shell command run just after the snapshot (e.g. `fsfreeze -u`); runs even when the
    /// snapshot failed.
    pub post_snapshot: Option<String>,
}

/// A way to freeze a source.
pub trait SnapshotProvider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Removes snapshots of this source left behind by a crashed run (only this program's,
    /// only this source's). Called once before the first cycle.
    fn cleanup_stale(&self, _source: &Path) -> Result<(), SnapshotError> {
        Ok(())
    }
    /// Freezes `source` for one cycle.
    fn freeze(&self, source: &Path) -> Result<FrozenView, SnapshotError>;
}

/// The provider for a `--snapshot` choice and a source.
pub fn provider(
    kind: SnapshotKind,
    _source: &Path,
    _options: &SnapshotOptions,
) -> Result<Box<dyn SnapshotProvider>, SnapshotError> {
    match kind {
        SnapshotKind::None => Ok(Box::new(NoSnapshot::default())),
    }
}

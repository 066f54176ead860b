//! The change-tracker seam: which byte ranges of a frozen view may differ from the view whose
//! content the base manifest describes. A tracker that can tell (from `thin_delta`, a classic
//! snapshot's COW table, FIEMAP of reflink clones) lets the scan read only those ranges;
//! [`FullScan`] cannot and always says "everything".
//!
//! The cycle asks a tracker only when the base manifest is the sender's own committed one
//! (the receiver's root agrees with it): a tracker's ranges are relative to what *we*
//! committed, and mean nothing against a manifest the receiver rebuilt. Any doubt is a full
//! scan, with the reason in the cycle's figures.

mod classic;
pub mod cow;
pub mod fiemap;
pub mod fiemap_ioctl;
mod given;
pub mod kept;
mod reflink;
mod thin;
pub mod thin_delta;

use std::path::Path;
use std::sync::Arc;

use crate::blockdiff::manifest::BlockHash;
use crate::blockdiff::ranges::RangeSet;
use crate::snapshot::{FrozenView, SnapshotProvider};

pub use classic::CowTracker;
pub use given::Given;
pub use kept::KeptViews;
pub use reflink::ReflinkTracker;
pub use thin::ThinTracker;

/// What the base manifest describes: the sender's committed generation and its root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Since {
    /// The committed generation the base manifest belongs to.
    pub generation: u64,
    /// Its root.
    pub root: BlockHash,
}

/// A tracker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes {
    /// Only these byte ranges may have changed (the scan reads them, nothing else).
    Ranges(RangeSet),
    /// Everything must be read. `reason` says why when a tracker had to give up; `None` for
    /// a tracker that always reads everything.
    Everything {
        /// Why the tracker could not tell, if it is one that usually can.
        reason: Option<String>,
    },
}

impl Changes {
    /// Everything, because a tracker that usually can tell could not, for `reason`.
    pub fn fallback(reason: impl Into<String>) -> Changes {
        Changes::Everything {
            reason: Some(reason.into()),
        }
    }

    /// The ranges a tracker found, or everything for the reason it could not.
    pub fn from_answer(answer: Result<RangeSet, String>) -> Changes {
        answer.map_or_else(Changes::fallback, Changes::Ranges)
    }
}

/// Finds what changed since the generation the base manifest describes.
pub trait ChangeTracker: Send + Sync {
    /// Short name for figures and logs (`full-scan`, `reflink-fiemap`, `thin-delta`, ...).
    fn name(&self) -> &'static str;
    /// Whether it compares against the previous cycle's snapshot, which must then be kept
    /// alive between cycles ([`KeptViews`]).
    fn keeps_previous(&self) -> bool {
        false
    }
    /// The ranges of `current` that may differ from the view of generation `since`;
    /// `previous` is that view when this tracker keeps one (and it could be found).
    fn changed(
        &self,
        previous: Option<&FrozenView>,
        current: &FrozenView,
        since: &Since,
    ) -> Changes;
    /// Cleans up what a crashed run of this tracker left (called once at start).
    fn recover(&self) {}
    /// The extents of the image's map counted by a comparison since the last call (the
    /// reflink tracker: what the clone and the maps cost in proportion to), once: a cycle that
    /// compared nothing gets `None`, never an older cycle's count. `None` for other trackers.
    fn take_image_extents(&self) -> Option<u64> {
        None
    }
}

/// The tracker for a provider's views of `source`: FIEMAP of reflink clones for `reflink`,
/// `thin_delta` for `lvm-thin`, the COW table for `lvm`, else a full scan. `state_dir` holds
/// what a tracker must record (a held thin-pool metadata snapshot).
pub fn for_provider(
    provider: &dyn SnapshotProvider,
    source: &Path,
    state_dir: &Path,
) -> Arc<dyn ChangeTracker> {
    let lv = || match crate::snapshot::lvm::find_source_lv(source) {
        Ok(Some(lv)) => Some(lv),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look the source LV up: full scans");
            None
        }
    };
    match provider.name() {
        "reflink" => Arc::new(ReflinkTracker::new()),
        "lvm-thin" => match lv() {
            Some(lv) if !lv.row.pool_lv.is_empty() => {
                let key = crate::state::key(&lv.lv.to_string());
                let hold = state_dir.join("holds").join(format!("{key}.json"));
                Arc::new(ThinTracker::new(&lv.lv, &lv.row.pool_lv, hold))
            }
            _ => Arc::new(FullScan),
        },
        "lvm" => match lv() {
            Some(lv) => Arc::new(CowTracker::new(&lv.lv.vg)),
            None => Arc::new(FullScan),
        },
        _ => Arc::new(FullScan),
    }
}

/// Reads everything, every cycle: the fallback, and the tracker of sources nothing can track
/// (`--snapshot none`, plain devices).
pub struct FullScan;

impl ChangeTracker for FullScan {
    fn name(&self) -> &'static str {
        "full-scan"
    }

    fn changed(&self, _: Option<&FrozenView>, _: &FrozenView, _: &Since) -> Changes {
        Changes::Everything { reason: None }
    }
}

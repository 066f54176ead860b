//! The reflink tracker: what changed between the previous cycle's clone of an image and this
//! cycle's, by comparing their extent maps ([`super::fiemap`]). Needs the previous clone kept
//! ([`super::KeptViews`]); a missing clone, a size change or maps that cannot be compared mean
//! a full scan, with the reason.

use crate::snapshot::FrozenView;

use super::fiemap::{changed_ranges, ExtentSource, Fiemap};
use super::{ChangeTracker, Changes, Since};

/// Compares clones' extent maps.
pub struct ReflinkTracker {
    extents: Box<dyn ExtentSource>,
}

impl ReflinkTracker {
    /// The tracker reading maps with `FS_IOC_FIEMAP`.
    pub fn new() -> Self {
        ReflinkTracker::with_source(Box::new(Fiemap))
    }

    /// The tracker reading maps from `extents` (tests inject faults here).
    pub fn with_source(extents: Box<dyn ExtentSource>) -> Self {
        ReflinkTracker { extents }
    }
}

impl Default for ReflinkTracker {
    fn default() -> Self {
        ReflinkTracker::new()
    }
}

fn size(view: &FrozenView) -> Result<u64, String> {
    std::fs::metadata(&view.path)
        .map(|m| m.len())
        .map_err(|e| format!("cannot stat {}: {e}", view.path.display()))
}

impl ChangeTracker for ReflinkTracker {
    fn name(&self) -> &'static str {
        "reflink-fiemap"
    }

    fn keeps_previous(&self) -> bool {
        true
    }

    fn changed(&self, previous: Option<&FrozenView>, current: &FrozenView, _: &Since) -> Changes {
        let Some(previous) = previous else {
            return Changes::fallback("no previous clone");
        };
        let sizes = size(previous).and_then(|p| Ok((p, size(current)?)));
        match sizes {
            Ok((before, now)) if before != now => {
                Changes::fallback(format!("the image changed size ({before} -> {now} bytes)"))
            }
            Ok((_, now)) => Changes::from_answer(changed_ranges(
                &*self.extents,
                &previous.path,
                &current.path,
                now,
            )),
            Err(reason) => Changes::fallback(reason),
        }
    }
}

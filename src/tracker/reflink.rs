//! The reflink tracker: what changed between the previous cycle's clone of an image and this
//! cycle's, by comparing their extent maps ([`super::fiemap`]). Needs the previous clone kept
//! ([`super::KeptViews`]); a missing clone, a size change or maps that cannot be compared mean
//! a full scan, with the reason.
//!
//! The kept clone shares every extent of the image, so each write to the image between cycles
//! is copied elsewhere and splits an extent: the image fragments, and the clone and the extent
//! maps cost time in proportion to its extents. Each comparison logs both maps' extent counts,
//! and a warning each time the image's count first reaches [`FRAGMENTED_EXTENTS`] times a
//! power of two, with the remedy (docs/snapshots.md, "Fragmentation"); the last count is also
//! a metric (`blkmirror_source_extents`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::snapshot::FrozenView;

use super::fiemap::{changed_ranges, Compared, ExtentSource, Fiemap};
use super::{ChangeTracker, Changes, Since};

/// Extents past which an image is worth defragmenting: measured on xfs, the clone and the two
/// readings of the maps cost about 13 µs per extent, so about 1.3 s of every cycle here.
pub const FRAGMENTED_EXTENTS: u64 = 100_000;

/// Compares clones' extent maps.
pub struct ReflinkTracker {
    extents: Box<dyn ExtentSource>,
    /// The highest fragmentation level warned about in this run (0: none).
    warned_at: AtomicU64,
    /// The image's extents at the last comparison, until taken ([`NOT_COMPARED`]: none).
    last_extents: AtomicU64,
}

/// [`ReflinkTracker::last_extents`] before any comparison.
const NOT_COMPARED: u64 = u64::MAX;

impl ReflinkTracker {
    /// The tracker reading maps with `FS_IOC_FIEMAP`.
    pub fn new() -> Self {
        ReflinkTracker::with_source(Box::new(Fiemap))
    }

    /// The tracker reading maps from `extents` (tests inject faults here).
    pub fn with_source(extents: Box<dyn ExtentSource>) -> Self {
        ReflinkTracker {
            extents,
            warned_at: AtomicU64::new(0),
            last_extents: AtomicU64::new(NOT_COMPARED),
        }
    }

    /// Logs what the comparison found, and warns when the image has fragmented past a level
    /// it had not reached before in this run.
    fn report(&self, compared: &Compared) {
        let (previous, current) = (compared.previous_extents, compared.current_extents);
        self.last_extents.store(current, Ordering::Relaxed);
        tracing::info!(
            event = "extent_maps_compared",
            previous_extents = previous,
            current_extents = current,
            ranges = compared.changed.range_count(),
            "extent maps compared"
        );
        let level = fragmentation_level(current);
        if level > self.warned_at.fetch_max(level, Ordering::Relaxed) {
            tracing::warn!(
                event = "image_fragmented",
                extents = current,
                "the image is in {current} extents, and its clone and extent maps cost time in proportion every cycle; defragmenting it (`xfs_fsr IMAGE` on xfs, `btrfs filesystem defragment IMAGE` on btrfs) makes the next cycle read it whole once and the cycles after it cheap again (docs/snapshots.md, \"Fragmentation\")"
            );
        }
    }
}

impl Default for ReflinkTracker {
    fn default() -> Self {
        ReflinkTracker::new()
    }
}

/// The fragmentation level `extents` has reached: the largest [`FRAGMENTED_EXTENTS`] times a
/// power of two at most `extents` (0 below it).
fn fragmentation_level(extents: u64) -> u64 {
    match extents / FRAGMENTED_EXTENTS {
        0 => 0,
        times => FRAGMENTED_EXTENTS << times.ilog2(),
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

    fn take_image_extents(&self) -> Option<u64> {
        Some(self.last_extents.swap(NOT_COMPARED, Ordering::Relaxed)).filter(|&n| n != NOT_COMPARED)
    }

    fn changed(&self, previous: Option<&FrozenView>, current: &FrozenView, _: &Since) -> Changes {
        // A cycle that cannot compare has no count: never an older one.
        self.last_extents.store(NOT_COMPARED, Ordering::Relaxed);
        let Some(previous) = previous else {
            return Changes::fallback("no previous clone");
        };
        let sizes = size(previous).and_then(|p| Ok((p, size(current)?)));
        match sizes {
            Ok((before, now)) if before != now => {
                Changes::fallback(format!("the image changed size ({before} -> {now} bytes)"))
            }
            Ok((_, now)) => {
                let compared = changed_ranges(&*self.extents, &previous.path, &current.path, now);
                if let Ok(compared) = &compared {
                    self.report(compared);
                }
                Changes::from_answer(compared.map(|c| c.changed))
            }
            Err(reason) => Changes::fallback(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragmentation_levels_double_from_the_threshold() {
        assert_eq!(fragmentation_level(0), 0);
        assert_eq!(fragmentation_level(FRAGMENTED_EXTENTS - 1), 0);
        assert_eq!(fragmentation_level(FRAGMENTED_EXTENTS), FRAGMENTED_EXTENTS);
        assert_eq!(
            fragmentation_level(3 * FRAGMENTED_EXTENTS),
            2 * FRAGMENTED_EXTENTS
        );
        assert_eq!(
            fragmentation_level(4 * FRAGMENTED_EXTENTS),
            4 * FRAGMENTED_EXTENTS
        );
        assert!(fragmentation_level(u64::MAX) > 0);
    }
}

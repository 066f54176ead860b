//! The reflink tracker's core: compare the extent maps (`FS_IOC_FIEMAP`) of the previous
//! cycle's clone and the current one. Both are frozen clones of the same image: a range whose
//! extents are the same (same physical address at the same logical offset) in both holds the
//! same bytes; a range the source rewrote since the previous clone was taken got new extents
//! (copy-on-write: the previous clone still shares the old ones), so it differs.
//!
//! Rules, from the kernel's fiemap documentation and the peers' pitfalls:
//! * extents flagged unknown, delalloc, encoded, encrypted, not-aligned, inline or tail count
//!   as changed (their address says nothing); so does any range where only one side is
//!   unwritten;
//! * a hole on both sides is the same; a hole on one side only is a change (the scan reads
//!   holes as zeros without reading them);
//! * the SHARED flag is never trusted (btrfs can misreport it after merging extent maps);
//! * extent lists are streamed, never collected (a fragmented image has millions of extents);
//! * a filesystem may move extents between two calls (btrfs relocation, defragmentation):
//!   both maps are read twice, and the pair is used only when both readings agree (a digest of
//!   each list); else it retries, then gives up (full scan).

use std::io;
use std::path::Path;

use crate::blockdiff::ranges::RangeSet;

/// One extent of a file, as FIEMAP reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file.
    pub logical: u64,
    /// Address on the device (or in the filesystem's address space).
    pub physical: u64,
    /// Bytes.
    pub length: u64,
    /// Allocated but reads as zeros.
    pub unwritten: bool,
    /// Its address cannot be compared (unknown, delalloc, encoded, not aligned...).
    pub opaque: bool,
}

/// A stream of a file's extents, ascending.
pub type Extents<'a> = Box<dyn Iterator<Item = io::Result<Extent>> + 'a>;

/// Where extent maps come from: the filesystem, or a test double.
pub trait ExtentSource: Send + Sync {
    /// The extents of the file at `path`, ascending by logical offset.
    fn extents<'a>(&'a self, path: &Path) -> io::Result<Extents<'a>>;
}

/// Extent maps read with `FS_IOC_FIEMAP` (`FIEMAP_FLAG_SYNC`, looped to the last extent, in
/// large batches: [`super::fiemap_ioctl`]).
pub struct Fiemap;

impl ExtentSource for Fiemap {
    fn extents<'a>(&'a self, path: &Path) -> io::Result<Extents<'a>> {
        use super::fiemap_ioctl as F;
        let opaque = F::EXTENT_UNKNOWN
            | F::EXTENT_DELALLOC
            | F::EXTENT_ENCODED
            | F::EXTENT_DATA_ENCRYPTED
            | F::EXTENT_NOT_ALIGNED
            | F::EXTENT_DATA_INLINE
            | F::EXTENT_DATA_TAIL;
        let reader = F::ExtentReader::open(path)?;
        Ok(Box::new(reader.map(move |extent| {
            extent.map(|e| Extent {
                logical: e.logical,
                physical: e.physical,
                length: e.length,
                unwritten: e.flags & F::EXTENT_UNWRITTEN != 0,
                opaque: e.flags & opaque != 0,
            })
        })))
    }
}

/// What a byte of a file is, as far as its extent map says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backing {
    Hole,
    /// Stored at this address (for the byte at the cursor), written or not.
    At {
        physical: u64,
        unwritten: bool,
    },
    Opaque,
}

/// A cursor over one extent stream, digesting and counting what it reads.
struct Cursor<'a> {
    extents: Extents<'a>,
    current: Option<Extent>,
    end_seen: u64,
    digest: blake3::Hasher,
    count: u64,
}

/// What a whole reading of one extent map amounts to: a digest of it (a second reading must
/// give the same) and how many extents it had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MapDigest {
    hash: blake3::Hash,
    extents: u64,
}

impl<'a> Cursor<'a> {
    fn new(extents: Extents<'a>) -> Self {
        Cursor {
            extents,
            current: None,
            end_seen: 0,
            digest: blake3::Hasher::new(),
            count: 0,
        }
    }

    /// Moves to the extent that covers or follows `at`.
    fn seek(&mut self, at: u64) -> io::Result<()> {
        while self.current.is_none_or(|e| e.logical + e.length <= at) {
            let Some(next) = self.extents.next().transpose()? else {
                self.current = None;
                return Ok(());
            };
            if next.logical < self.end_seen || next.length == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("extent map out of order at byte {}", next.logical),
                ));
            }
            self.end_seen = next.logical + next.length;
            self.count += 1;
            self.digest.update(&next.logical.to_le_bytes());
            self.digest.update(&next.physical.to_le_bytes());
            self.digest.update(&next.length.to_le_bytes());
            self.digest
                .update(&[next.unwritten as u8, next.opaque as u8]);
            self.current = Some(next);
        }
        Ok(())
    }

    /// What backs the byte at `at`, and where that changes next (at most `end`).
    fn backing(&mut self, at: u64, end: u64) -> io::Result<(Backing, u64)> {
        self.seek(at)?;
        Ok(match self.current {
            None => (Backing::Hole, end),
            Some(e) if e.logical > at => (Backing::Hole, e.logical.min(end)),
            Some(e) if e.opaque => (Backing::Opaque, (e.logical + e.length).min(end)),
            Some(e) => (
                Backing::At {
                    physical: e.physical + (at - e.logical),
                    unwritten: e.unwritten,
                },
                (e.logical + e.length).min(end),
            ),
        })
    }

    /// Reads the rest of the stream into the digest, and returns it.
    fn finish(mut self) -> io::Result<MapDigest> {
        self.seek(u64::MAX)?;
        Ok(MapDigest {
            hash: self.digest.finalize(),
            extents: self.count,
        })
    }
}

/// One comparison of two extent streams over `[0, size)`: the ranges that may differ, and a
/// digest of each stream (whole, so a second reading can be checked against it).
fn compare_once(
    previous: Extents<'_>,
    current: Extents<'_>,
    size: u64,
) -> io::Result<(RangeSet, MapDigest, MapDigest)> {
    let (mut a, mut b) = (Cursor::new(previous), Cursor::new(current));
    let mut changed = RangeSet::new();
    let mut at = 0;
    while at < size {
        let (left, left_end) = a.backing(at, size)?;
        let (right, right_end) = b.backing(at, size)?;
        let next = left_end.min(right_end);
        let same = match (left, right) {
            (Backing::Hole, Backing::Hole) => true,
            (Backing::At { .. }, Backing::At { .. }) => left == right,
            _ => false,
        };
        if !same {
            changed.insert(at..next);
        }
        at = next;
    }
    Ok((changed, a.finish()?, b.finish()?))
}

/// How many times a pair of maps is read before giving up on a moving filesystem.
const ATTEMPTS: usize = 3;

/// What a comparison of two clones' extent maps found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compared {
    /// The byte ranges that may differ.
    pub changed: RangeSet,
    /// Extents in the previous clone's map.
    pub previous_extents: u64,
    /// Extents in the current clone's map: the image's fragmentation, which the clone and
    /// every reading of the maps cost in proportion to.
    pub current_extents: u64,
}

/// The byte ranges of `current` (a clone of `size` bytes) that may differ from `previous`, or
/// why it cannot tell.
pub fn changed_ranges(
    source: &dyn ExtentSource,
    previous: &Path,
    current: &Path,
    size: u64,
) -> Result<Compared, String> {
    let digest =
        |path: &Path| -> io::Result<MapDigest> { Cursor::new(source.extents(path)?).finish() };
    for _ in 0..ATTEMPTS {
        let first = source
            .extents(previous)
            .and_then(|a| Ok((a, source.extents(current)?)))
            .and_then(|(a, b)| compare_once(a, b, size))
            .map_err(|e| format!("FIEMAP failed: {e}"))?;
        let (changed, previous_digest, current_digest) = first;
        let again = digest(previous)
            .and_then(|p| Ok((p, digest(current)?)))
            .map_err(|e| format!("FIEMAP failed: {e}"))?;
        if again == (previous_digest, current_digest) {
            return Ok(Compared {
                changed,
                previous_extents: previous_digest.extents,
                current_extents: current_digest.extents,
            });
        }
        tracing::debug!("extent maps moved between two readings; reading them again");
    }
    Err(format!(
        "the clones' extent maps kept moving between readings ({ATTEMPTS} attempts: relocation or defragmentation?)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn extent(logical: u64, physical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical,
            length,
            unwritten: false,
            opaque: false,
        }
    }

    /// Maps by path name; each reading of a path may give the next of several maps.
    struct Maps {
        maps: Mutex<Vec<(String, Vec<Vec<Extent>>)>>,
        reads: AtomicUsize,
    }

    impl Maps {
        fn new(previous: Vec<Vec<Extent>>, current: Vec<Vec<Extent>>) -> Maps {
            Maps {
                maps: Mutex::new(vec![("prev".into(), previous), ("cur".into(), current)]),
                reads: AtomicUsize::new(0),
            }
        }
    }

    impl ExtentSource for Maps {
        fn extents<'a>(&'a self, path: &Path) -> io::Result<Extents<'a>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let mut maps = self.maps.lock().unwrap();
            let (_, versions) = maps
                .iter_mut()
                .find(|(name, _)| Path::new(name) == path)
                .unwrap();
            let map = if versions.len() > 1 {
                versions.remove(0)
            } else {
                versions[0].clone()
            };
            Ok(Box::new(map.into_iter().map(Ok)))
        }
    }

    fn compare(
        previous: Vec<Extent>,
        current: Vec<Extent>,
        size: u64,
    ) -> Vec<std::ops::Range<u64>> {
        let maps = Maps::new(vec![previous], vec![current]);
        changed_ranges(&maps, Path::new("prev"), Path::new("cur"), size)
            .unwrap()
            .changed
            .iter()
            .cloned()
            .collect()
    }

    #[test]
    fn same_extents_are_unchanged_and_moved_ones_changed() {
        let previous = vec![extent(0, 1000, 4096), extent(4096, 9000, 8192)];
        // The source rewrote 8192..12288: that piece now lives elsewhere.
        let current = vec![
            extent(0, 1000, 4096),
            extent(4096, 9000, 4096),
            extent(8192, 50_000, 4096),
        ];
        assert_eq!(compare(previous.clone(), previous.clone(), 12288), vec![]);
        assert_eq!(compare(previous, current, 12288), vec![8192..12288]);
    }

    #[test]
    fn the_comparison_counts_each_map_s_extents() {
        let previous = vec![extent(0, 1000, 8192)];
        let current = vec![extent(0, 1000, 4096), extent(8192, 5096, 4096)];
        let maps = Maps::new(vec![previous], vec![current]);
        let compared = changed_ranges(&maps, Path::new("prev"), Path::new("cur"), 16384).unwrap();
        assert_eq!(compared.previous_extents, 1);
        assert_eq!(compared.current_extents, 2);
    }

    #[test]
    fn extents_split_differently_but_contiguous_are_the_same() {
        let previous = vec![extent(0, 1000, 8192)];
        let current = vec![extent(0, 1000, 4096), extent(4096, 5096, 4096)];
        assert_eq!(compare(previous, current, 8192), vec![]);
    }

    #[test]
    fn holes_unwritten_and_opaque_extents() {
        let previous = vec![extent(0, 1000, 4096), extent(8192, 3000, 4096)];
        let mut unwritten = extent(8192, 3000, 4096);
        unwritten.unwritten = true;
        let mut opaque = extent(12288, 7000, 4096);
        opaque.opaque = true;
        // 0..4096 punched (now a hole), 4096..8192 a hole on both sides, 8192.. unwritten now,
        // 12288.. opaque on one side.
        let current = vec![unwritten, opaque];
        assert_eq!(
            compare(previous.clone(), current, 16384),
            vec![0..4096, 8192..16384]
        );
        let mut also_opaque = previous.clone();
        also_opaque[1].opaque = true;
        assert_eq!(compare(previous, also_opaque, 16384), vec![8192..12288]);
    }

    #[test]
    fn maps_that_move_between_readings_are_read_again_then_refused() {
        let stable = vec![extent(0, 1000, 4096)];
        let moved = vec![extent(0, 2000, 4096)];
        // The current clone's map moves once between the two readings, then holds still.
        let maps = Maps::new(
            vec![stable.clone()],
            vec![stable.clone(), moved.clone(), moved.clone()],
        );
        let compared = changed_ranges(&maps, Path::new("prev"), Path::new("cur"), 4096).unwrap();
        let changed = compared.changed.iter().cloned().collect::<Vec<_>>();
        assert_eq!(changed, vec![0..4096]);
        assert_eq!(
            (compared.previous_extents, compared.current_extents),
            (1, 1)
        );
        assert_eq!(
            maps.reads.load(Ordering::SeqCst),
            8,
            "two attempts of four readings"
        );
        // A map that moves at every reading is refused.
        let restless = (0..20).map(|i| vec![extent(0, i * 100, 4096)]).collect();
        let maps = Maps::new(vec![stable], restless);
        let refused = changed_ranges(&maps, Path::new("prev"), Path::new("cur"), 4096);
        assert!(refused.unwrap_err().contains("kept moving"));
    }

    #[test]
    fn overlapping_extents_are_refused() {
        let bad = vec![extent(0, 1000, 8192), extent(4096, 9000, 4096)];
        let maps = Maps::new(vec![bad.clone()], vec![bad]);
        let refused = changed_ranges(&maps, Path::new("prev"), Path::new("cur"), 8192);
        assert!(refused.unwrap_err().contains("out of order"));
    }
}

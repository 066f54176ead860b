//! The classic-snapshot tracker: the previous cycle's snapshot, kept alive, has copied aside
//! every origin chunk written since it was taken; its exception table
//! ([`super::cow`], read from `/dev/mapper/VG-SNAP-cow` with direct reads, so no stale page
//! cache) names those chunks. Read after the current snapshot exists, they are a superset of
//! what changed between the two. An invalid (overflowed) previous snapshot, or a table that
//! does not read, is a full scan with the reason.
//!
//! The cost, documented in docs/snapshots.md: while two snapshots are alive, every first
//! write to an origin chunk is copied into both, and the previous snapshot's COW space must
//! hold a whole interval's writes.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::snapshot::lvm::LvRef;
use crate::snapshot::FrozenView;

use super::cow::read_table;
use super::{ChangeTracker, Changes, Since};

/// Finds changes through the previous classic snapshot's exception table.
pub struct CowTracker {
    vg: String,
}

impl CowTracker {
    /// The tracker of classic snapshots in volume group `vg`.
    pub fn new(vg: &str) -> CowTracker {
        CowTracker { vg: vg.to_string() }
    }

    /// `/dev/mapper/VG-SNAP-cow`, dashes doubled.
    fn cow_device(&self, snapshot: &str) -> PathBuf {
        Path::new("/dev/mapper").join(LvRef::new(&self.vg, snapshot).dm_name("-cow"))
    }
}

/// Reads chunk `index` (of `chunk_bytes`) of `file` into `buf` with a direct read: through a
/// page-aligned buffer of at least a page (the 512-byte header is read as a whole page).
fn read_direct(file: &File, index: u64, buf: &mut [u8], chunk_bytes: u64) -> io::Result<()> {
    let len = buf.len().max(4096).next_power_of_two();
    let mut aligned = memmap2::MmapMut::map_anon(len)?;
    let offset = index * chunk_bytes;
    let mut done = 0;
    while done < len {
        match file.read_at(&mut aligned[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    if done < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the COW device ended",
        ));
    }
    buf.copy_from_slice(&aligned[..buf.len()]);
    Ok(())
}

impl ChangeTracker for CowTracker {
    fn name(&self) -> &'static str {
        "cow-table"
    }

    fn keeps_previous(&self) -> bool {
        true
    }

    fn changed(&self, previous: Option<&FrozenView>, current: &FrozenView, _: &Since) -> Changes {
        let Some(name) = previous.and_then(|p| p.name.as_deref()) else {
            return Changes::fallback("no previous snapshot");
        };
        let answer = (|| {
            let size = crate::source::BlockSource::open(&current.path)
                .map_err(|e| e.to_string())?
                .size();
            let device = self.cow_device(name);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&device)
                .map_err(|e| format!("cannot open {}: {e}", device.display()))?;
            // The header is read first (512 bytes at chunk 0); the chunk size it gives places
            // every later read.
            let mut chunk_bytes = 512;
            read_table(
                |index, buf| {
                    if index == 0 {
                        read_direct(&file, 0, buf, 512)?;
                        chunk_bytes =
                            u32::from_le_bytes(buf[12..16].try_into().expect("4")) as u64 * 512;
                        return Ok(());
                    }
                    read_direct(&file, index, buf, chunk_bytes)
                },
                size,
            )
            .map(|table| table.written)
        })();
        Changes::from_answer(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cow_device_names_double_dashes() {
        let tracker = CowTracker::new("vg-data");
        assert_eq!(
            tracker.cow_device("blkmirror-snap-0123-42"),
            PathBuf::from("/dev/mapper/vg--data-blkmirror--snap--0123--42-cow")
        );
    }
}

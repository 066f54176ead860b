//! A target's cheap identity and change marks (size, device and inode, modification and change
//! times), recorded whenever the receiver's manifest is known to describe the target and
//! compared at the start of the next cycle: a difference means something else wrote to the
//! target, resized it, or put another file at its path, so the manifest is not trusted.
//!
//! What it can see: any write to a file target through the filesystem (the kernel updates
//! mtime and ctime), a resize, a replaced file. What it cannot: writes to a block device (a
//! device node's times do not follow its content), or a write in the same timestamp tick as
//! the receiver's own last write. A scrub (`blkmirror scrub`, `receive --scrub-every`)
//! covers those.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use serde::{Deserialize, Serialize};

/// What a target looked like at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Bytes.
    pub size: u64,
    /// Device number of the file's filesystem, or of the device itself for a block device.
    pub dev: u64,
    /// Inode of a file; 0 for a block device.
    pub ino: u64,
    /// Last modification, nanoseconds since the epoch; 0 for a block device.
    pub mtime_ns: i64,
    /// Last status change, nanoseconds since the epoch; 0 for a block device.
    pub ctime_ns: i64,
}

impl Fingerprint {
    /// The fingerprint of an open target of `size` bytes.
    pub fn of(file: &File, size: u64) -> io::Result<Fingerprint> {
        let meta = file.metadata()?;
        let ns = |secs: i64, nsecs: i64| secs.saturating_mul(1_000_000_000).saturating_add(nsecs);
        if meta.file_type().is_block_device() {
            return Ok(Fingerprint {
                size,
                dev: meta.rdev(),
                ino: 0,
                mtime_ns: 0,
                ctime_ns: 0,
            });
        }
        Ok(Fingerprint {
            size,
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// How `now` differs from this recorded fingerprint, in words; `None` when it does not.
    pub fn change_to(&self, now: &Fingerprint) -> Option<String> {
        if self.dev != now.dev || self.ino != now.ino {
            return Some("it is another file or device than at the last commit".into());
        }
        if self.size != now.size {
            return Some(format!(
                "its size changed from {} to {} bytes since the last commit",
                self.size, now.size
            ));
        }
        if self.mtime_ns != now.mtime_ns || self.ctime_ns != now.ctime_ns {
            return Some("it was modified since the last commit (mtime or ctime changed)".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_write_through_another_handle_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let file = File::create(&path).unwrap();
        file.set_len(8192).unwrap();
        let before = Fingerprint::of(&file, 8192).unwrap();
        assert_eq!(
            before.change_to(&Fingerprint::of(&file, 8192).unwrap()),
            None
        );
        // Timestamps are taken from a coarse clock: wait for it to move on.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        other.write_all_at(b"junk", 100).unwrap();
        let after = Fingerprint::of(&file, 8192).unwrap();
        assert!(before.change_to(&after).unwrap().contains("modified"));
        let resized = Fingerprint {
            size: 4096,
            ..after.clone()
        };
        assert!(after.change_to(&resized).unwrap().contains("size"));
    }
}

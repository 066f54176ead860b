//! The real target: a regular file (kept sparse: zero runs punch holes) or a block device
//! (opened exclusively, so a mounted or in-use device is refused; zero runs use BLKZEROOUT).
//! Owns opening, creating, positioned writes, zeroing and durability (fsync). Writeback is
//! started every [`WRITEBACK_KICK`] bytes written, so the commit's fsync finds little left to
//! write and the disk writes while the cycle still reads.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::device::{classify, size_of, DeviceError, DeviceKind};

use super::{write_zeroes_by_writing, BlockTarget, Fingerprint, TargetError};

nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

/// Bytes written after which writeback of the target is started (without waiting for it).
pub const WRITEBACK_KICK: u64 = 16 << 20;

/// An open, writable file or block device.
pub struct FileTarget {
    file: File,
    path: PathBuf,
    kind: DeviceKind,
    size: AtomicU64,
    /// Bytes written since writeback was last started.
    unstarted: AtomicU64,
    /// A file target's exclusive lock, held while it is open.
    _lock: Option<nix::fcntl::Flock<File>>,
}

/// Checks that `path` can serve as a target without opening it for writing.
pub fn check_path(path: &Path, create: bool) -> Result<(), TargetError> {
    match classify(path) {
        Ok(_) => Ok(()),
        Err(DeviceError::Missing(_)) if create => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            match parent {
                Some(dir) if !dir.is_dir() => Err(TargetError::Open {
                    path: path.to_owned(),
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("directory {} does not exist", dir.display()),
                    ),
                }),
                _ => Ok(()),
            }
        }
        Err(e) => Err(map_classify_error(path, e)),
    }
}

fn map_classify_error(path: &Path, error: DeviceError) -> TargetError {
    match error {
        DeviceError::Missing(p) => TargetError::Missing(p),
        DeviceError::Directory(p) => TargetError::Directory(p),
        DeviceError::NotFileOrDevice(p) => TargetError::NotFileOrDevice(p),
        DeviceError::Unreadable { source, .. } => TargetError::Open {
            path: path.to_owned(),
            source,
        },
    }
}

/// Takes an exclusive `flock` on a file target for as long as it is open: the lock belongs to
/// the file itself (its inode), so a second receiver reaching it by a symlink, a hard link or
/// another state dir is refused. (A block device is opened with `O_EXCL`, which the kernel
/// holds exclusive the same way.)
/// The lock is taken through a duplicate of the file's descriptor (same open file, so the
/// same lock), which the returned guard owns.
fn lock_exclusive(file: &File, path: &Path) -> Result<nix::fcntl::Flock<File>, TargetError> {
    use nix::fcntl::{Flock, FlockArg};
    let open_error = |source| TargetError::Open {
        path: path.to_owned(),
        source,
    };
    let handle = file.try_clone().map_err(open_error)?;
    match Flock::lock(handle, FlockArg::LockExclusiveNonblock) {
        Ok(guard) => Ok(guard),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(TargetError::Locked(path.to_owned())),
        Err((_, errno)) => Err(open_error(errno.into())),
    }
}

impl FileTarget {
    /// Opens an existing target, or creates a sparse file of `create_size` bytes when it is
    /// missing and `create_size` is given.
    pub fn open(path: &Path, create_size: Option<u64>) -> Result<FileTarget, TargetError> {
        let kind = match classify(path) {
            Ok(kind) => kind,
            Err(DeviceError::Missing(_)) if create_size.is_some() => {
                return FileTarget::create(path, create_size.unwrap_or(0))
            }
            Err(e) => return Err(map_classify_error(path, e)),
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if kind == DeviceKind::BlockDevice {
            // O_EXCL on a block device fails with EBUSY when it is mounted or claimed.
            options.custom_flags(libc::O_EXCL);
        }
        let file = options.open(path).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => TargetError::InUse(path.to_owned()),
            _ => TargetError::Open {
                path: path.to_owned(),
                source: e,
            },
        })?;
        let size = size_of(&file).map_err(|e| TargetError::Open {
            path: path.to_owned(),
            source: e,
        })?;
        let lock = match kind {
            DeviceKind::File => Some(lock_exclusive(&file, path)?),
            DeviceKind::BlockDevice => None,
        };
        Ok(FileTarget {
            _lock: lock,
            file,
            path: path.to_owned(),
            kind,
            size: AtomicU64::new(size),
            unstarted: AtomicU64::new(0),
        })
    }

    fn create(path: &Path, size: u64) -> Result<FileTarget, TargetError> {
        let open_error = |e| TargetError::Open {
            path: path.to_owned(),
            source: e,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(open_error)?;
        let lock = lock_exclusive(&file, path)?;
        file.set_len(size).map_err(open_error)?;
        tracing::info!(target = %path.display(), size, "created sparse target file");
        Ok(FileTarget {
            _lock: Some(lock),
            file,
            path: path.to_owned(),
            kind: DeviceKind::File,
            size: AtomicU64::new(size),
            unstarted: AtomicU64::new(0),
        })
    }

    /// Counts `len` bytes written and, every [`WRITEBACK_KICK`] bytes, asks the kernel to start
    /// writing the file's dirty pages back (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), without
    /// waiting for them: durability still comes from [`BlockTarget::sync`] alone.
    #[allow(unsafe_code)]
    fn count_written(&self, len: u64) {
        let before = self.unstarted.fetch_add(len, Ordering::Relaxed);
        if before + len < WRITEBACK_KICK {
            return;
        }
        self.unstarted.store(0, Ordering::Relaxed);
        // SAFETY: sync_file_range takes the fd of this open file (valid for the call) and plain
        // integers; offset 0 and length 0 mean the whole file. A failure only means the commit's
        // fsync does the work, so it is ignored.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    fn io_error(&self, source: io::Error) -> TargetError {
        TargetError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl BlockTarget for FileTarget {
    fn name(&self) -> &Path {
        &self.path
    }

    fn kind(&self) -> DeviceKind {
        self.kind
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn set_len(&self, len: u64) -> Result<(), TargetError> {
        if self.kind != DeviceKind::File {
            return Err(self.io_error(io::Error::new(
                io::ErrorKind::Unsupported,
                "a block device cannot be resized",
            )));
        }
        self.file.set_len(len).map_err(|e| self.io_error(e))?;
        self.size.store(len, Ordering::Relaxed);
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TargetError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io_error(e))
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), TargetError> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| self.io_error(e))?;
        self.count_written(data.len() as u64);
        Ok(())
    }

    /// Punches a hole in a file, asks a device to zero the range, and falls back to writing
    /// zeros.
    #[allow(unsafe_code)]
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        let fd = self.file.as_raw_fd();
        let done = match self.kind {
            DeviceKind::File => nix::fcntl::fallocate(
                fd,
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset as i64,
                len as i64,
            )
            .is_ok(),
            // SAFETY: `fd` is this target's open block device for the whole call, and BLKZEROOUT
            // reads one [start, len] pair of u64 from the pointer, a temporary that outlives it.
            DeviceKind::BlockDevice => unsafe { blkzeroout(fd, &[offset, len]) }.is_ok(),
        };
        if done {
            return Ok(());
        }
        write_zeroes_by_writing(self, offset, len)
    }

    fn sync(&self) -> Result<(), TargetError> {
        self.file.sync_all().map_err(|e| self.io_error(e))
    }

    /// Asks the kernel to start reading the range into the page cache, without waiting.
    fn prefetch(&self, offset: u64, len: u64) {
        let _ = nix::fcntl::posix_fadvise(
            self.file.as_raw_fd(),
            offset as i64,
            len as i64,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn fingerprint(&self) -> Option<Fingerprint> {
        Fingerprint::of(&self.file, self.size()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn create_sparse_write_and_punch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.img");
        assert!(matches!(
            FileTarget::open(&path, None),
            Err(TargetError::Missing(_))
        ));
        let target = FileTarget::open(&path, Some(8 << 20)).unwrap();
        assert_eq!(target.size(), 8 << 20);
        assert!(std::fs::metadata(&path).unwrap().blocks() < 64);
        target.write_at(&[7u8; 65536], 65536).unwrap();
        target.write_zeroes(65536, 4096).unwrap();
        let mut buf = [1u8; 8192];
        target.read_at(&mut buf, 65536).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..].iter().all(|&b| b == 7));
        assert!(matches!(
            crate::target::fit(&target, 16 << 20, false),
            Err(TargetError::TooSmall { .. })
        ));
        crate::target::fit(&target, 16 << 20, true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 << 20);
        assert!(matches!(
            FileTarget::open(dir.path(), None),
            Err(TargetError::Directory(_))
        ));
    }
}

//! Opening a source (regular file or block device) for reading, finding its size, and the
//! ways a scan may read it: [`readahead`] of its chunks by several direct reads in flight, and
//! [`compare`] of two devices byte by byte (`verify`). The default is a measured choice (see `docs/benchmarks.md`):
//! several direct (`O_DIRECT`) reads in flight read a cold image or device fastest and with
//! the least CPU, and leave the page cache to the applications.

use crate::device::{classify, size_of, DeviceError, DeviceKind};

pub mod compare;
pub mod readahead;
pub mod throttle;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How the scan reads the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Direct reads ahead, cached reads where the file system refuses `O_DIRECT` (default).
    #[default]
    Auto,
    /// `pread` through the page cache, several reads ahead.
    Cached,
    /// A read-only memory map with `madvise(SEQUENTIAL)`, pages dropped behind the scan
    /// (regular files only; kept for comparison in benchmarks).
    Mmap,
}

impl ReadMode {
    /// The concrete mode for a source. Block devices are never mapped: a read error there (a
    /// snapshot invalidated mid-cycle) must be an error the cycle reports, not a SIGBUS.
    pub fn resolve(self, kind: DeviceKind) -> ReadMode {
        match (self, kind) {
            (ReadMode::Mmap, DeviceKind::BlockDevice) => ReadMode::Cached,
            (mode, _) => mode,
        }
    }
}

/// Why a source cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Nothing at this path.
    #[error("source {0} does not exist")]
    Missing(PathBuf),
    /// The path is a directory.
    #[error("source {0} is a directory; give an image file or a block device")]
    Directory(PathBuf),
    /// The path is a socket, FIFO, character device...
    #[error("source {0} is neither a regular file nor a block device")]
    NotFileOrDevice(PathBuf),
    /// Opening, sizing or reading it failed.
    #[error("cannot read source {path}: {source}")]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The same problem with a device read in another role (`verify`'s target).
    #[error("{role} {}", .error.to_string().trim_start_matches("source "))]
    As {
        /// The role that replaces "source" in the message (e.g. "target").
        role: &'static str,
        /// The problem, as worded for a source.
        error: Box<SourceError>,
    },
}

impl SourceError {
    /// Names the device by its role (e.g. "target") instead of "source".
    pub fn as_role(self, role: &'static str) -> SourceError {
        SourceError::As {
            role,
            error: Box::new(self),
        }
    }
}

/// An open, readable source.
pub struct BlockSource {
    file: File,
    path: PathBuf,
    size: u64,
    kind: DeviceKind,
}

impl From<DeviceError> for SourceError {
    fn from(error: DeviceError) -> Self {
        match error {
            DeviceError::Missing(path) => SourceError::Missing(path),
            DeviceError::Directory(path) => SourceError::Directory(path),
            DeviceError::NotFileOrDevice(path) => SourceError::NotFileOrDevice(path),
            DeviceError::Unreadable { path, source } => SourceError::Unreadable { path, source },
        }
    }
}

impl BlockSource {
    /// Opens a regular file or block device read-only and learns its size.
    pub fn open(path: &Path) -> Result<BlockSource, SourceError> {
        let kind = classify(path)?;
        let unreadable = |source| SourceError::Unreadable {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(unreadable)?;
        let size = size_of(&file).map_err(unreadable)?;
        // Tell the kernel we read sequentially: larger read-ahead on files and devices.
        let _ = nix::fcntl::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
        );
        Ok(BlockSource {
            file,
            path: path.to_owned(),
            size,
            kind,
        })
    }

    /// Bytes to read: the source's size when opened, or less after [`BlockSource::limited_to`].
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads at most the first `size` bytes (a target larger than the source).
    pub fn limited_to(mut self, size: u64) -> Self {
        self.size = self.size.min(size);
        self
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Regular file or block device.
    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Maps the whole source read-only. The caller must not let the source shrink while
    /// mapped (a frozen view never does).
    #[allow(unsafe_code)]
    pub fn map(&self) -> io::Result<memmap2::Mmap> {
        // SAFETY: the mapping is read-only and the scan reads a frozen view; a concurrent
        // truncation would raise SIGBUS, one reason the default reads instead of mapping.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(self.size as usize)
                .map(&self.file)?
        };
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(map)
    }
}

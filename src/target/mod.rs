//! Where the receiver's blocks land, behind one trait: [`BlockTarget`]. Implementations:
//! [`FileTarget`] (a regular file kept sparse, or a block device opened exclusively),
//! [`MemTarget`] (bytes in memory, for tests and tools) and [`CrashTarget`] (a fault
//! injector that models power loss between writes and syncs; its state-store companion is
//! [`crate::state::CrashStore`]).
//!
//! A target knows nothing of manifests, hashes or the protocol: it stores bytes.
//!
//! # The contract (what the receiver relies on)
//! * **Read your writes.** `read_at` returns what the latest `write_at` / `write_zeroes` /
//!   `set_len` put there, synced or not.
//! * **Durability only at `sync`.** When `sync` returns `Ok`, every earlier write, zeroing and
//!   size change survives a crash. Anything done after the last successful `sync` may be lost
//!   on a crash; the receiver therefore never records a generation as committed (nor a
//!   manifest as exact) before the `sync` that covers its writes has returned.
//! * **Failed writes.** After a `write_at` or `write_zeroes` error, the range's content is
//!   unknown (some, all or none of it may have changed).
//! * **Zeroing.** After `write_zeroes(o, l)` the range reads as zeros; it may be deallocated.
//! * **Sizes.** `size` is the current length; `set_len` changes it for files (and fails on a
//!   block device, whose size is fixed).
//! * **Threads.** Methods take `&self` and may be called from several threads at once for
//!   disjoint ranges (a resize is never concurrent with other calls).

mod crash;
mod file;
mod fingerprint;
mod mem;

use std::io;
use std::path::{Path, PathBuf};

use crate::device::DeviceKind;

pub use crash::{CrashTarget, Power};
pub use file::{check_path, FileTarget};
pub use fingerprint::Fingerprint;
pub use mem::MemTarget;

/// Why a target cannot be used, or an operation on it failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The target does not exist and may not be created.
    #[error("target {0} does not exist (pass --create to create it as a sparse file)")]
    Missing(PathBuf),
    /// The target is a directory.
    #[error("target {0} is a directory; give a file or a block device")]
    Directory(PathBuf),
    /// The target is a socket, FIFO, character device...
    #[error("target {0} is neither a regular file nor a block device")]
    NotFileOrDevice(PathBuf),
    /// A block device that is mounted or claimed by another program.
    #[error("target {0} is in use (mounted, or held open by another program); refusing to write")]
    InUse(PathBuf),
    /// A file another blkmirror receiver is writing (under whatever path or state dir).
    #[error("target {0} is being written by another blkmirror receiver (the same file, maybe under another path or state dir); refusing a second one")]
    Locked(PathBuf),
    /// A target smaller than the source, which may not be resized.
    #[error("target {path} holds {has} bytes but the source needs {need}; refusing to write")]
    TooSmall {
        /// The target.
        path: PathBuf,
        /// Its size.
        has: u64,
        /// The source's size.
        need: u64,
    },
    /// The target could not be opened or created.
    #[error("cannot open target {path}: {source}")]
    Open {
        /// The target.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A read, write, zeroing, resize or sync failed.
    #[error("I/O error on target {path}: {source}")]
    Io {
        /// The target.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl TargetError {
    /// True when a later cycle may succeed without the user changing anything (an I/O error
    /// may be a transient device or path problem; a wrong kind or size is not).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TargetError::Io { .. } | TargetError::InUse(_) | TargetError::Locked(_)
        )
    }
}

/// A place blocks are written to. See the module doc for the contract.
pub trait BlockTarget: Send + Sync {
    /// The target's name in messages (its path, or a description).
    fn name(&self) -> &Path;
    /// A regular file (resizable) or a block device (fixed size).
    fn kind(&self) -> DeviceKind;
    /// Current length in bytes.
    fn size(&self) -> u64;
    /// Makes the target `len` bytes long (files only).
    fn set_len(&self, len: u64) -> Result<(), TargetError>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TargetError>;
    /// Writes all of `data` at `offset`.
    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), TargetError>;
    /// Makes `len` bytes at `offset` read as zeros (punching holes where it can).
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), TargetError>;
    /// Makes everything done so far durable.
    fn sync(&self) -> Result<(), TargetError>;
    /// A hint that `len` bytes at `offset` will be read soon. Default: nothing.
    fn prefetch(&self, _offset: u64, _len: u64) {}
    /// The file or device behind the target, when there is one: the receiver then hashes it
    /// with the parallel direct-read scan instead of `read_at`.
    fn path(&self) -> Option<&Path> {
        None
    }
    /// The target's identity and change marks now ([`Fingerprint`]), when it has any (files
    /// and devices do; targets in memory do not). Default: none.
    fn fingerprint(&self) -> Option<Fingerprint> {
        None
    }
}

/// Makes the target hold exactly `need` bytes when it is a file we may resize, or checks that
/// a device (or a file we may not resize) is large enough.
pub fn fit(target: &dyn BlockTarget, need: u64, may_resize_file: bool) -> Result<(), TargetError> {
    if target.kind() == DeviceKind::File && may_resize_file {
        if target.size() != need {
            target.set_len(need)?;
        }
        return Ok(());
    }
    if target.size() < need {
        return Err(TargetError::TooSmall {
            path: target.name().to_owned(),
            has: target.size(),
            need,
        });
    }
    Ok(())
}

/// Writes zeros over a range by plain writes (when a target cannot punch or zero out).
pub(crate) fn write_zeroes_by_writing(
    target: &dyn BlockTarget,
    offset: u64,
    len: u64,
) -> Result<(), TargetError> {
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(zeros.len() as u64) as usize;
        target.write_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

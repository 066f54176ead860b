//! Hashing a whole target, block by block: with the parallel direct-read scan when it is a
//! file or a device (fast: several reads in flight, holes skipped), else through the
//! [`BlockTarget`] itself. Used to rebuild a lost manifest and to scrub. A requested stop ends
//! it early; a throttle bounds its read rate.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::blockdiff::manifest::{block_count, block_len, hash_block, BlockHash};
use crate::blockdiff::scan::{hash_all, ScanError, ScanOptions};
use crate::progress::Progress;
use crate::source::throttle::Throttle;
use crate::source::BlockSource;
use crate::target::{BlockTarget, TargetError};

use super::error::ReceiveError;

/// What hashing a target needs.
pub struct Hashing<'a> {
    /// Manifest block size.
    pub block_size: u32,
    /// Bytes to hash (the manifest's device size).
    pub size: u64,
    /// Hashing threads (the mmap read mode; the scan hashes on its readers).
    pub pool: &'a rayon::ThreadPool,
    /// Set on a requested stop.
    pub stop: &'a AtomicBool,
    /// Progress of the stage.
    pub progress: &'a dyn Progress,
    /// A read-rate limit (scrubs).
    pub throttle: Option<Arc<Throttle>>,
}

/// Every block's hash of `target`'s first `hashing.size` bytes.
pub fn hash_device(
    target: &dyn BlockTarget,
    hashing: &Hashing<'_>,
) -> Result<Vec<BlockHash>, ReceiveError> {
    match target.path() {
        Some(path) => hash_path(path, hashing),
        None => hash_by_reading(target, hashing.block_size, hashing.size),
    }
}

/// Every block's hash of the file or device at `path` (read only).
pub fn hash_path(path: &Path, hashing: &Hashing<'_>) -> Result<Vec<BlockHash>, ReceiveError> {
    let io_error = |source: std::io::Error| {
        ReceiveError::Target(TargetError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let source = BlockSource::open(path)
        .map_err(|e| io_error(std::io::Error::other(e)))?
        .limited_to(hashing.size);
    if source.size() < hashing.size {
        return Err(io_error(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "it holds {} bytes, fewer than {}",
                source.size(),
                hashing.size
            ),
        )));
    }
    let options = ScanOptions {
        throttle: hashing.throttle.clone(),
        ..ScanOptions::new(hashing.block_size)
    };
    hash_all(
        &source,
        &options,
        hashing.pool,
        hashing.stop,
        hashing.progress,
    )
    .map_err(|e| match e {
        ScanError::Cancelled => ReceiveError::Stopped,
        other => io_error(std::io::Error::other(other)),
    })
}

/// Hashes a target block by block through [`BlockTarget::read_at`].
fn hash_by_reading(
    target: &dyn BlockTarget,
    block_size: u32,
    device_size: u64,
) -> Result<Vec<BlockHash>, ReceiveError> {
    let count = block_count(device_size, block_size);
    let mut buf = vec![0u8; block_size as usize];
    let mut hashes = Vec::with_capacity(count as usize);
    for index in 0..count {
        let len = block_len(device_size, block_size, index);
        target.read_at(&mut buf[..len], index * block_size as u64)?;
        hashes.push(hash_block(&buf[..len]));
    }
    Ok(hashes)
}

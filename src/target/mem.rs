//! A target in memory: for tests (plan then apply must reproduce a source) and tools. A
//! "file" kind target: it can be resized; `sync` does nothing (memory is as durable as it
//! gets here).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use crate::device::DeviceKind;

use super::{BlockTarget, TargetError};

/// Bytes in memory behind the [`BlockTarget`] contract.
pub struct MemTarget {
    name: PathBuf,
    bytes: RwLock<Vec<u8>>,
    /// The byte ranges `prefetch` was asked for, in order.
    prefetched: Mutex<Vec<Range<u64>>>,
}

impl MemTarget {
    /// A target holding `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        MemTarget {
            name: PathBuf::from("(memory)"),
            bytes: RwLock::new(bytes),
            prefetched: Mutex::new(Vec::new()),
        }
    }

    /// The byte ranges hinted with `prefetch` so far, in order.
    pub fn prefetched(&self) -> Vec<Range<u64>> {
        self.prefetched.lock().expect("prefetch log lock").clone()
    }

    /// A copy of what the target holds.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.read().expect("target lock").clone()
    }
}

pub(super) fn out_of_range(name: &Path, offset: u64, len: usize, size: u64) -> TargetError {
    TargetError::Io {
        path: name.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{len} bytes at {offset} lie beyond the end ({size} bytes)"),
        ),
    }
}

/// The range `[offset, offset + len)` of a buffer of `size` bytes, if it lies within.
pub(super) fn span(offset: u64, len: usize, size: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(len)?;
    (end <= size).then_some(start..end)
}

impl BlockTarget for MemTarget {
    fn name(&self) -> &Path {
        &self.name
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::File
    }

    fn size(&self) -> u64 {
        self.bytes.read().expect("target lock").len() as u64
    }

    fn set_len(&self, len: u64) -> Result<(), TargetError> {
        self.bytes
            .write()
            .expect("target lock")
            .resize(len as usize, 0);
        Ok(())
    }

    fn prefetch(&self, offset: u64, len: u64) {
        let mut log = self.prefetched.lock().expect("prefetch log lock");
        log.push(offset..offset + len);
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TargetError> {
        let bytes = self.bytes.read().expect("target lock");
        let range = span(offset, buf.len(), bytes.len())
            .ok_or_else(|| out_of_range(&self.name, offset, buf.len(), bytes.len() as u64))?;
        buf.copy_from_slice(&bytes[range]);
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), TargetError> {
        let mut bytes = self.bytes.write().expect("target lock");
        let range = span(offset, data.len(), bytes.len())
            .ok_or_else(|| out_of_range(&self.name, offset, data.len(), bytes.len() as u64))?;
        bytes[range].copy_from_slice(data);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        let mut bytes = self.bytes.write().expect("target lock");
        let range = span(offset, len as usize, bytes.len())
            .ok_or_else(|| out_of_range(&self.name, offset, len as usize, bytes.len() as u64))?;
        bytes[range].fill(0);
        Ok(())
    }

    fn sync(&self) -> Result<(), TargetError> {
        Ok(())
    }
}

//! Which targets history supports: image files (snapshots are reflink clones). Block devices
//! (a thin LV could be snapshotted with LVM) are recognised and refused, for now.

use std::path::Path;

use crate::device::{self, DeviceError, DeviceKind};

use super::error::HistoryError;

/// A target history can keep snapshots of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// A regular file: snapshots are reflink clones next to it.
    File,
}

/// Says how history would snapshot `target`: [`TargetKind::File`] for a regular file;
/// [`HistoryError::BlockDevice`] ("not supported yet") for a block device, and an error naming
/// the problem for anything else.
pub fn classify(target: &Path) -> Result<TargetKind, HistoryError> {
    match device::classify(target) {
        Ok(DeviceKind::File) => Ok(TargetKind::File),
        Ok(DeviceKind::BlockDevice) => Err(HistoryError::BlockDevice {
            target: target.to_owned(),
        }),
        Err(DeviceError::Missing(target)) => Err(HistoryError::TargetMissing { target }),
        Err(DeviceError::Directory(target) | DeviceError::NotFileOrDevice(target)) => {
            Err(HistoryError::NotAFile { target })
        }
        Err(DeviceError::Unreadable { path, source }) => Err(HistoryError::Io {
            what: "cannot examine target",
            path,
            error: source,
        }),
    }
}

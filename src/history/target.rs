//! Which targets history supports: image files (reflink clones in a history directory,
//! `store.rs`) and thin LVs (thin snapshots in the LV's volume group, `thin.rs`). Other block
//! devices are refused by [`classify`] with one line saying why.

use std::path::{Path, PathBuf};

use crate::device::{self, DeviceError, DeviceKind};

use super::error::HistoryError;
use super::thin;

/// A target history can keep snapshots of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// A regular file: snapshots are reflink clones in a history directory.
    File,
    /// A thin LV: snapshots are thin snapshots in its volume group.
    ThinLv {
        /// Its volume group.
        vg: String,
        /// Its name in the group.
        lv: String,
    },
}

/// Says how history would snapshot `target`: [`TargetKind::File`] for a regular file,
/// [`TargetKind::ThinLv`] for a thin LV (asking lvm2 which); [`HistoryError::NotThinLv`] for
/// any other LV (a classic snapshot per generation is refused), [`HistoryError::NotAnLv`] for
/// any other block device, and an error naming the problem for anything else.
pub fn classify(target: &Path) -> Result<TargetKind, HistoryError> {
    match device::classify(target) {
        Ok(DeviceKind::File) => Ok(TargetKind::File),
        Ok(DeviceKind::BlockDevice) => match thin::lv_of_device(target)? {
            None => Err(HistoryError::NotAnLv {
                target: target.to_owned(),
            }),
            Some((lv, attr)) if attr.is_thin_volume() => Ok(TargetKind::ThinLv {
                vg: lv.vg,
                lv: lv.lv,
            }),
            Some((lv, attr)) => Err(HistoryError::NotThinLv {
                target: target.to_owned(),
                lv: lv.to_string(),
                what: attr.type_words(),
            }),
        },
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

/// The default history dir of a file target: `.NAME.history` next to it (a reflink clone
/// must stay on the target's filesystem).
pub fn default_dir(target: &Path) -> PathBuf {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    target.with_file_name(format!(".{name}.history"))
}

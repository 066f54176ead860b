//! What a path names, whatever role it plays: a regular file or a block device, and its size.
//! Sources and targets both start here; this module knows neither role, so each turns a
//! [`DeviceError`] into its own message ("source X does not exist", "target X ...").

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// What kind of object a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A regular file (an image).
    File,
    /// A block device (a disk, a partition, an LV).
    BlockDevice,
}

/// Why a path cannot serve as a device.
#[derive(Debug)]
pub enum DeviceError {
    /// Nothing exists at the path.
    Missing(PathBuf),
    /// The path is a directory.
    Directory(PathBuf),
    /// The path is a socket, a FIFO, a character device...
    NotFileOrDevice(PathBuf),
    /// The path could not be examined.
    Unreadable {
        /// The path given.
        path: PathBuf,
        /// What `stat` said.
        source: io::Error,
    },
}

/// Classifies `path` (following symlinks).
pub fn classify(path: &Path) -> Result<DeviceKind, DeviceError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => DeviceError::Missing(path.to_owned()),
        _ => DeviceError::Unreadable {
            path: path.to_owned(),
            source: e,
        },
    })?;
    let file_type = meta.file_type();
    if file_type.is_dir() {
        Err(DeviceError::Directory(path.to_owned()))
    } else if file_type.is_file() {
        Ok(DeviceKind::File)
    } else if file_type.is_block_device() {
        Ok(DeviceKind::BlockDevice)
    } else {
        Err(DeviceError::NotFileOrDevice(path.to_owned()))
    }
}

/// Size of an open file or block device (seeking to the end works for both; metadata
/// reports 0 for devices).
pub fn size_of(file: &File) -> io::Result<u64> {
    let mut handle = file;
    let size = handle.seek(SeekFrom::End(0))?;
    handle.seek(SeekFrom::Start(0))?;
    Ok(size)
}

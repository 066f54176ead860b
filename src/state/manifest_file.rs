//! Manifests on disk: saved atomically (temp file, fsync, rename, fsync the directory) in the
//! format of [`crate::blockdiff::manifest`], loaded with every check its decoder makes.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::Path;

use crate::blockdiff::manifest::{Manifest, ManifestError};

/// Saves `manifest` at `path` atomically.
pub fn save(manifest: &Manifest, path: &Path) -> io::Result<()> {
    super::atomic_write(path, |file| {
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        manifest.encode(&mut writer)?;
        writer.flush()
    })
}

/// Loads a manifest saved by [`save`]. `Ok(None)` when the file does not exist.
pub fn load(path: &Path) -> Result<Option<Manifest>, ManifestError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    Manifest::decode(&mut reader, len).map(Some)
}

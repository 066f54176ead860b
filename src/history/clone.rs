//! The file-system primitives the store needs: a reflink clone held with a lock (on
//! [`crate::fsclone`], which also has the rename that never replaces), fsync of a directory,
//! and the removal of leftovers no one holds. No policy, no names.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub use crate::fsclone::{no_reflink, rename_noreplace, CloneFailure};

/// Creates `dest` (mode 0600, must not exist), holds it with an exclusive `flock` (a
/// concurrent clean-up of leftovers skips it), and makes it a reflink clone of `source`. On
/// failure `dest` is removed.
pub fn clone_new(source: &Path, dest: &Path) -> Result<Flock<File>, CloneFailure> {
    crate::fsclone::clone_new_held(source, dest, |file| {
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| errno.into())
    })
}

/// Makes the entries of `dir` (creations, renames, deletions) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Deletes a leftover partial file unless another process holds it (a take in progress).
/// Returns whether it was deleted.
pub fn remove_unless_held(path: &Path) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let _held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => held,
        Err((_, Errno::EWOULDBLOCK)) => return Ok(false),
        Err((_, errno)) => return Err(errno.into()),
    };
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

//! The file-system primitives the store needs: a reflink clone (FICLONE), a rename that never
//! replaces, and fsync of a directory. No policy, no names.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Why a clone failed.
#[derive(Debug)]
pub enum CloneFailure {
    /// The source could not be opened.
    Open(io::Error),
    /// The destination could not be created (it exists, no space, permissions...).
    Create(io::Error),
    /// FICLONE refused.
    Ficlone(Errno),
}

/// Creates `dest` (mode 0600, must not exist), holds it with an exclusive `flock` (a
/// concurrent clean-up of leftovers skips it), and makes it a reflink clone of `source`. On
/// failure `dest` is removed.
pub fn clone_new(source: &Path, dest: &Path) -> Result<Flock<File>, CloneFailure> {
    let src = File::open(source).map_err(CloneFailure::Open)?;
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(CloneFailure::Create)?;
    let dst = match Flock::lock(dst, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((file, errno)) => {
            drop(file);
            let _ = std::fs::remove_file(dest);
            return Err(CloneFailure::Create(errno.into()));
        }
    };
    let result = crate::fsclone::clone_into(&src, &dst);
    match result {
        Ok(_) => Ok(dst),
        Err(errno) => {
            drop(dst);
            let _ = std::fs::remove_file(dest);
            Err(CloneFailure::Ficlone(errno))
        }
    }
}

/// True when FICLONE's error means "this file system cannot reflink" rather than "this clone
/// failed" (EXDEV, two file systems, is told apart by the caller).
pub fn no_reflink(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOTTY | Errno::ENOSYS
    )
}

/// Renames `from` to `to` unless `to` exists (`RENAME_NOREPLACE`: EEXIST then).
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<(), Errno> {
    nix::fcntl::renameat2(
        None,
        from,
        None,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
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

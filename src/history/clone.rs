//! The file-system primitives the store needs: a reflink clone (FICLONE), a rename that never
//! replaces, and fsync of a directory. No policy, no names.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

// FICLONE = _IOW(0x94, 9, int): make the destination share all the source's extents.
nix::ioctl_write_int!(
    /// `ioctl(dest_fd, FICLONE, source_fd)`.
    ///
    /// # Safety
    ///
    /// Both descriptors must be open for the whole call.
    ficlone,
    0x94,
    9
);
// FS_IOC_GETFLAGS / FS_IOC_SETFLAGS: declared with `long`, but the kernel moves an `int`.
nix::ioctl_read_bad!(
    /// `ioctl(fd, FS_IOC_GETFLAGS, &mut flags)`: reads the inode flags (`chattr`'s).
    ///
    /// # Safety
    ///
    /// `fd` must be open and the pointer must point at a writable `c_int`.
    get_flags,
    nix::request_code_read!(b'f', 1, std::mem::size_of::<libc::c_long>()),
    libc::c_int
);
nix::ioctl_write_ptr_bad!(
    /// `ioctl(fd, FS_IOC_SETFLAGS, &flags)`: sets the inode flags (`chattr`'s).
    ///
    /// # Safety
    ///
    /// `fd` must be open and the pointer must point at a readable `c_int`.
    set_flags,
    nix::request_code_write!(b'f', 2, std::mem::size_of::<libc::c_long>()),
    libc::c_int
);
/// btrfs' "no copy-on-write" inode flag: source and clone must agree on it.
const FS_NOCOW_FL: libc::c_int = 0x0080_0000;

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
#[allow(unsafe_code)]
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
    copy_nocow_flag(&src, &dst);
    // SAFETY: both descriptors are open for the whole call; FICLONE takes the source fd as
    // its integer argument.
    let result = unsafe { ficlone(dst.as_raw_fd(), src.as_raw_fd() as libc::c_ulong) };
    match result {
        Ok(_) => Ok(dst),
        Err(errno) => {
            drop(dst);
            let _ = std::fs::remove_file(dest);
            Err(CloneFailure::Ficlone(errno))
        }
    }
}

/// btrfs refuses to clone between a NOCOW file (`chattr +C`, common for VM images) and a
/// normal one: give the (still empty) clone the source's NOCOW flag. Best effort.
#[allow(unsafe_code)]
fn copy_nocow_flag(src: &File, dst: &File) {
    let mut flags: libc::c_int = 0;
    // SAFETY: `src` is open for the whole call, and the kernel writes one int into `flags`.
    if unsafe { get_flags(src.as_raw_fd(), &mut flags) }.is_err() || flags & FS_NOCOW_FL == 0 {
        return;
    }
    let mut dst_flags: libc::c_int = 0;
    // SAFETY: as above, for `dst`; then the kernel reads one int from `dst_flags`.
    unsafe {
        if get_flags(dst.as_raw_fd(), &mut dst_flags).is_ok() {
            dst_flags |= FS_NOCOW_FL;
            let _ = set_flags(dst.as_raw_fd(), &dst_flags);
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

//! Reflink clones (FICLONE), what the `reflink` snapshot provider (clones of a source image)
//! and the target's history (clones of a mirror) share: a clone into a new file, the errors
//! that mean "no reflink here", and a rename that never replaces. A clone is a metadata-only
//! copy that shares every extent of the original, on xfs (`reflink=1`) and btrfs; the callers
//! name, lock and remove the files themselves.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;

// FICLONE = _IOW(0x94, 9, int): make the destination share all the source's extents.
nix::ioctl_write_int!(
    /// `ioctl(dest_fd, FICLONE, source_fd)`.
    ///
    /// # Safety
    ///
    /// Both descriptors must be open for the whole call.
    ficlone_ioctl,
    0x94,
    9
);
/// `struct file_clone_range` of `<linux/fs.h>`: FICLONERANGE's argument.
#[repr(C)]
pub struct FileCloneRange {
    /// The source's descriptor.
    pub src_fd: i64,
    /// Where the range starts in the source.
    pub src_offset: u64,
    /// Its length (0: to the source's end).
    pub src_length: u64,
    /// Where it goes in the destination.
    pub dest_offset: u64,
}
// FICLONERANGE = _IOW(0x94, 13, struct file_clone_range): share one range of extents.
nix::ioctl_write_ptr!(
    /// `ioctl(dest_fd, FICLONERANGE, &range)`.
    ///
    /// # Safety
    ///
    /// Both descriptors must be open for the whole call.
    ficlonerange_ioctl,
    0x94,
    13,
    FileCloneRange
);
// FS_IOC_GETFLAGS / FS_IOC_SETFLAGS: declared with `long`, but the kernel moves an `int`.
nix::ioctl_read_bad!(
    /// `ioctl(fd, FS_IOC_GETFLAGS, &mut flags)`: reads the inode flags (`chattr`'s).
    ///
    /// # Safety
    ///
    /// `fd` must be open and the pointer must point at a writable `c_int`.
    fs_ioc_getflags,
    nix::request_code_read!(b'f', 1, std::mem::size_of::<libc::c_long>()),
    libc::c_int
);
nix::ioctl_write_ptr_bad!(
    /// `ioctl(fd, FS_IOC_SETFLAGS, &flags)`: sets the inode flags (`chattr`'s).
    ///
    /// # Safety
    ///
    /// `fd` must be open and the pointer must point at a readable `c_int`.
    fs_ioc_setflags,
    nix::request_code_write!(b'f', 2, std::mem::size_of::<libc::c_long>()),
    libc::c_int
);
/// btrfs' "no copy-on-write" inode flag: source and clone must agree on it.
const FS_NOCOW_FL: libc::c_int = 0x0080_0000;

/// Why a clone into a new file failed.
#[derive(Debug)]
pub enum CloneFailure {
    /// The source could not be opened.
    Open(io::Error),
    /// The destination could not be created or held (it exists, no space, permissions...).
    Create(io::Error),
    /// FICLONE refused.
    Ficlone(Errno),
}

/// Creates `dest` (mode 0600, must not exist) and makes it a clone of `source`; `dest` is
/// removed on failure.
pub fn clone_new(source: &Path, dest: &Path) -> Result<File, CloneFailure> {
    clone_new_held(source, dest, |file| Ok(Box::new(file))).map(|file| *file)
}

/// [`clone_new`], letting `hold` take the new file before it is cloned into (to lock it, so
/// that a concurrent clean-up of leftovers skips it). `dest` is removed on any failure.
pub fn clone_new_held<T: Deref<Target = File>>(
    source: &Path,
    dest: &Path,
    hold: impl FnOnce(File) -> io::Result<T>,
) -> Result<T, CloneFailure> {
    let src = File::open(source).map_err(CloneFailure::Open)?;
    let created = create_private(dest).map_err(CloneFailure::Create)?;
    let cloned =
        hold(created)
            .map_err(CloneFailure::Create)
            .and_then(|dst| match clone_into(&src, &dst) {
                Ok(()) => Ok(dst),
                Err(errno) => Err(CloneFailure::Ficlone(errno)),
            });
    if cloned.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    cloned
}

/// Checks that `source` can be cloned into `dir`'s file system, at a cost that does not grow
/// with the source: clones at most its first `st_blksize` bytes (one or a few blocks) into a
/// new file `probe`, which is then removed. FICLONE of the whole file would cost what a
/// snapshot costs (linear in the source's extents: about a second for a fragmented 10 GiB
/// image); a range clone meets the same refusals (another file system, no reflink support, a
/// NOCOW mismatch) without it.
#[allow(unsafe_code)]
pub fn probe_clone(source: &Path, probe: &Path) -> Result<(), CloneFailure> {
    use std::os::unix::fs::MetadataExt;
    let src = File::open(source).map_err(CloneFailure::Open)?;
    let meta = src.metadata().map_err(CloneFailure::Open)?;
    let dst = create_private(probe).map_err(CloneFailure::Create)?;
    copy_nocow_flag(&src, &dst);
    // A length that is a multiple of the file system's block size (st_blksize is), or 0 ("to
    // the end") for a source shorter than that: both are what FICLONERANGE accepts.
    let block = meta.blksize().max(1);
    let range = FileCloneRange {
        src_fd: src.as_raw_fd() as i64,
        src_offset: 0,
        src_length: if meta.len() >= block { block } else { 0 },
        dest_offset: 0,
    };
    // SAFETY: both descriptors are open for the whole call, and `range` is a live
    // `struct file_clone_range` the kernel only reads.
    let cloned = unsafe { ficlonerange_ioctl(dst.as_raw_fd(), &range) }.map(|_| ());
    drop(dst);
    let _ = std::fs::remove_file(probe);
    cloned.map_err(CloneFailure::Ficlone)
}

/// Creates `path` (read-write, mode 0600), which must not exist: a clone's file.
fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
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

/// Makes the empty file `dst` a clone of `src` (both open; `dst` writable): first gives it
/// `src`'s NOCOW flag (btrfs refuses to clone between a NOCOW file, common for VM images, and
/// a normal one), then FICLONE.
#[allow(unsafe_code)]
pub fn clone_into(src: &File, dst: &File) -> Result<(), Errno> {
    copy_nocow_flag(src, dst);
    // SAFETY: both descriptors are open for the whole call; FICLONE takes the source fd as
    // its integer argument.
    unsafe { ficlone_ioctl(dst.as_raw_fd(), src.as_raw_fd() as libc::c_ulong) }.map(|_| ())
}

/// Gives the (still empty) `dst` the NOCOW flag when `src` has it. Best effort.
#[allow(unsafe_code)]
fn copy_nocow_flag(src: &File, dst: &File) {
    let mut flags: libc::c_int = 0;
    // SAFETY: `src` is open for the whole call, and the kernel writes one int into `flags`.
    if unsafe { fs_ioc_getflags(src.as_raw_fd(), &mut flags) }.is_err() || flags & FS_NOCOW_FL == 0
    {
        return;
    }
    let mut dst_flags: libc::c_int = 0;
    // SAFETY: as above, for `dst`; then the kernel reads one int from `dst_flags`.
    unsafe {
        if fs_ioc_getflags(dst.as_raw_fd(), &mut dst_flags).is_ok() {
            dst_flags |= FS_NOCOW_FL;
            let _ = fs_ioc_setflags(dst.as_raw_fd(), &dst_flags);
        }
    }
}

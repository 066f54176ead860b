//! Reflink clones (FICLONE): the one primitive that the `reflink` snapshot provider (clones of
//! a source image) and the target's history (clones of a mirror) share. A clone is a
//! metadata-only copy that shares every extent of the original, on xfs (`reflink=1`) and
//! btrfs; the callers open, name, lock and remove the files themselves.

use std::fs::File;
use std::os::fd::AsRawFd;

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

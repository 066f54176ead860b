//! [`HistoryError`]: why taking, listing, pruning or restoring snapshots of a target failed.
//! (A bad `--keep` spec is a [`super::PolicyError`].)

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

/// Why a history operation failed. Messages name the path and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The target's file system (or the history directory's) cannot share extents.
    #[error("history needs a filesystem with reflink (xfs reflink=1, btrfs): FICLONE on {} failed: {}", dir.display(), errno_text(*errno))]
    NoReflink {
        /// The history directory the clone was to go to.
        dir: PathBuf,
        /// FICLONE's error.
        errno: Errno,
    },
    /// The history directory is on another file system than the target.
    #[error("history dir {} is on another filesystem than target {}: a reflink clone stays within one filesystem; put the history dir on the target's filesystem", dir.display(), target.display())]
    CrossDevice {
        /// The target file.
        target: PathBuf,
        /// The history directory.
        dir: PathBuf,
    },
    /// A restore's destination is on another file system than the history directory.
    #[error("cannot restore into {}: it is on another filesystem than {} and a reflink clone stays within one filesystem; restore next to the history dir, or copy the snapshot (cp {} DEST)", dest.display(), dir.display(), snapshot.display())]
    RestoreCrossDevice {
        /// The snapshot to restore.
        snapshot: PathBuf,
        /// The history directory.
        dir: PathBuf,
        /// The destination asked for.
        dest: PathBuf,
    },
    /// FICLONE works on this file system, but this clone failed (no space, I/O error...).
    #[error("cannot clone {} to {}: FICLONE failed: {}; check free space and the kernel log", from.display(), to.display(), errno_text(*errno))]
    CloneFailed {
        /// What was cloned.
        from: PathBuf,
        /// The new file.
        to: PathBuf,
        /// FICLONE's error.
        errno: Errno,
    },
    /// A block device that is no LVM logical volume.
    #[error("history cannot keep snapshots of {}: it is a block device but not an LVM logical volume; history works for image files on xfs (reflink=1) or btrfs, and for thin LVs", target.display())]
    NotAnLv {
        /// The target given.
        target: PathBuf,
    },
    /// An LV that is not a thin LV (a plain LV, a thin pool, a classic snapshot...).
    #[error("history cannot keep snapshots of {}: it is LV {lv}, {what}, not a thin LV; a classic snapshot per generation would need its own copy-on-write space and slow every write to the LV; put the target on a thin LV (lvcreate -V SIZE -T VG/POOL -n NAME)", target.display())]
    NotThinLv {
        /// The target given.
        target: PathBuf,
        /// Its LV, `VG/LV`.
        lv: String,
        /// Its kind in words ("a plain LV").
        what: &'static str,
    },
    /// `--history-dir` given for a thin-LV target, whose snapshots are LVs.
    #[error("--history-dir does not apply to {}: it is thin LV {lv}, whose history snapshots are thin LVs in its volume group; drop --history-dir", target.display())]
    HistoryDirForThinLv {
        /// The target given.
        target: PathBuf,
        /// Its LV, `VG/LV`.
        lv: String,
    },
    /// An lvm2 command failed, or lvm2 cannot be run (not installed, not root).
    #[error("{message}")]
    Lvm {
        /// What failed and what to do, in one line.
        message: String,
    },
    /// Nothing exists at the target path.
    #[error("target {} does not exist", target.display())]
    TargetMissing {
        /// The target given.
        target: PathBuf,
    },
    /// The target is a directory, a socket, a FIFO...
    #[error("target {} is not a regular file (history keeps snapshots of image files)", target.display())]
    NotAFile {
        /// The target given.
        target: PathBuf,
    },
    /// A snapshot of this generation taken at this second exists already.
    #[error("snapshot {} exists already: not taken again", path.display())]
    SnapshotExists {
        /// The snapshot.
        path: PathBuf,
    },
    /// A restore would overwrite something.
    #[error("restore refuses to overwrite {}: it exists; give a new path, or remove it first", dest.display())]
    DestinationExists {
        /// The destination asked for.
        dest: PathBuf,
    },
    /// No snapshot of that generation.
    #[error("no snapshot of generation {generation} in {}{}", dir.display(), available_text(available))]
    NoSuchGeneration {
        /// The history directory.
        dir: PathBuf,
        /// The generation asked for.
        generation: u64,
        /// The generations there are, in increasing order.
        available: Vec<u64>,
    },
    /// No history snapshot of that generation of a thin LV.
    #[error(
        "no history snapshot of generation {generation} of LV {lv}{}",
        available_text(available)
    )]
    NoSuchThinGeneration {
        /// The LV, `VG/LV`.
        lv: String,
        /// The generation asked for.
        generation: u64,
        /// The generations there are, in increasing order.
        available: Vec<u64>,
    },
    /// Several snapshots of that generation (its state was lost and generations restarted).
    #[error("{} snapshots hold generation {generation} (taken at different times): restore one by hand (cp --reflink=always for files, dd for LVs): {}", paths.len(), paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// The generation asked for.
        generation: u64,
        /// The snapshots that hold it.
        paths: Vec<PathBuf>,
    },
    /// A file-system operation failed.
    #[error("{what} {}: {error}", path.display())]
    Io {
        /// What was being done, ending before the path (e.g. "cannot list").
        what: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The error.
        #[source]
        error: io::Error,
    },
}

impl HistoryError {
    /// True when a later attempt may succeed without anyone changing anything: a clone, an
    /// lvm2 command or a file operation that hit a passing problem (space, I/O).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HistoryError::CloneFailed { .. } | HistoryError::Io { .. } | HistoryError::Lvm { .. }
        )
    }
}

/// `Operation not supported`: the C library's text for an errno.
fn errno_text(errno: Errno) -> String {
    let text = io::Error::from_raw_os_error(errno as i32).to_string();
    match text.find(" (os error") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

/// `" (there are: 3, 7, 12)"`, `" (there are none)"`, or the first and last few of many.
fn available_text(available: &[u64]) -> String {
    const SHOWN: usize = 10;
    let list = |gens: &[u64]| {
        gens.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match available.len() {
        0 => " (there are none)".to_string(),
        n if n <= SHOWN => format!(" (there are: {})", list(available)),
        n => format!(
            " (there are {n}: {}, ..., {})",
            list(&available[..SHOWN / 2]),
            list(&available[n - SHOWN / 2..])
        ),
    }
}

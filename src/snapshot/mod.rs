//! The snapshot seam: a provider turns a live source into a frozen view for one cycle and
//! releases it afterwards. The view is released when its [`FrozenView`] guard is dropped (every
//! exit path) or explicitly with [`FrozenView::release`] to see the error.
//!
//! Providers: `lvm` (classic COW snapshot, [`lvm::classic`]), `lvm-thin` ([`lvm::thin`]),
//! `reflink` (FICLONE of an image file, [`reflink`]), `none` (reads the live source, with a
//! warning) and `auto`, resolved by [`provider`]. Hooks around snapshots live in [`hooks`],
//! snapshot names (prefix + source key) in [`naming`]. What changed between two views is a
//! change tracker's business ([`crate::tracker`]). See docs/snapshots.md.

pub mod command;
pub mod hooks;
pub mod lvm;
pub mod naming;
mod none;
pub mod reflink;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

pub use command::find_program;
pub use none::NoSnapshot;

/// Which provider to use (`--snapshot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SnapshotKind {
    /// Pick from the source: an LVM LV gets lvm-thin (thin LV) or lvm, an image file reflink
    /// (when its filesystem can); anything else is refused.
    Auto,
    /// Classic LVM snapshot (copy-on-write space sized by --snapshot-size).
    Lvm,
    /// LVM thin snapshot of a thin LV (no size needed).
    LvmThin,
    /// FICLONE of an image file on xfs (reflink=1) or btrfs.
    Reflink,
    /// Read the source live: nothing may write to it during a cycle, or the target may mix
    /// blocks from different moments.
    None,
}

/// The tail of every message that suggests reading live.
const NONE_RISK: &str =
    "pass --snapshot none to read it live (the target may then mix blocks from different moments)";

/// Why a snapshot could not be taken, checked or released. Each message is one line: the
/// thing, the cause, what to do.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A provider failed for a reason of its own (the fake providers of tests use it).
    #[error("snapshot of {source_path} failed: {reason}")]
    Failed {
        /// The source that was to be frozen.
        source_path: PathBuf,
        /// Why, in words.
        reason: String,
    },
    /// An lvm2 program was needed and is not installed.
    #[error("lvm2 is not installed ({program} not found): install lvm2 or use --snapshot none")]
    LvmMissing {
        /// The program looked for (`lvs`, `lvcreate`...).
        program: &'static str,
    },
    /// `--snapshot auto` on a block device, with no `lvs` to tell whether it is an LV.
    #[error("source {source_path} is a block device and lvm2 is not installed (lvs not found), so it cannot be snapshotted: install lvm2 if it is an LVM logical volume, or {NONE_RISK}")]
    LvmMissingForDevice {
        /// The block device given as source.
        source_path: PathBuf,
    },
    /// An lvm2 command needs root: this process is not root, or lvm2 said so.
    #[error("LVM snapshots need root ({program}: {detail}): run `blkmirror send` as root, or use --snapshot none")]
    NotRoot {
        /// The lvm2 program that was to run.
        program: &'static str,
        /// This process's uid, or lvm2's own complaint.
        detail: String,
    },
    /// An lvm2 command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}; {hint}")]
    LvmCommand {
        /// The command line, quoted for a shell.
        command: String,
        /// How it ended: `exit N` or `killed by signal N`.
        status: String,
        /// Its stderr, non-empty lines joined with "; ".
        stderr: String,
        /// What the user may do about it.
        hint: &'static str,
    },
    /// An lvm2 report (`lvs`, `vgs`) that could not be parsed or lacks what was asked for.
    #[error("cannot understand the output of `{command}` ({reason}): report this with your lvm2 version (`lvs --version`), or use --snapshot none")]
    LvmOutput {
        /// The command line whose output it was.
        command: String,
        /// What was wrong with the output.
        reason: String,
    },
    /// An lvm2 program could not be started.
    #[error(
        "cannot run `{command}`: {error}; check the lvm2 installation, or use --snapshot none"
    )]
    Spawn {
        /// The command line, quoted for a shell.
        command: String,
        /// The error of the spawn.
        error: std::io::Error,
    },
    /// An lvm provider was asked for a source that is not an LV.
    #[error("source {source_path} is not an LVM logical volume: {hint}")]
    NotAnLv {
        /// The source given.
        source_path: PathBuf,
        /// What to use instead (depends on whether it is a device or a file).
        hint: &'static str,
    },
    /// The source is an LV of a kind the chosen provider cannot snapshot.
    #[error("source {source_path} is LV {lv}, {what}: {hint}")]
    WrongLvKind {
        /// The source given.
        source_path: PathBuf,
        /// The LV, as `VG/LV`.
        lv: String,
        /// The LV's kind in words, from its `lv_attr` (e.g. "a classic snapshot").
        what: &'static str,
        /// What to use instead.
        hint: &'static str,
    },
    /// A classic snapshot needs copy-on-write space, and the VG has none free.
    #[error("volume group {vg} has no free space for the copy-on-write store of a classic snapshot of {lv}: add space (vgextend) or shrink an LV, use a thin LV (--snapshot lvm-thin), or use --snapshot none")]
    NoFreeSpace {
        /// The volume group.
        vg: String,
        /// The origin LV, as `VG/LV`.
        lv: String,
    },
    /// `--snapshot-size` asks for more copy-on-write space than the VG has free.
    #[error("--snapshot-size {wanted} is more than volume group {vg} has free ({free}): lower --snapshot-size, or free space in {vg}")]
    SizeTooLarge {
        /// The volume group.
        vg: String,
        /// The size asked for, human-readable (e.g. `8.0 GiB`).
        wanted: String,
        /// The VG's free space, human-readable.
        free: String,
    },
    /// The snapshot LV was created but its device node never appeared.
    #[error("snapshot {lv} was created but {path} did not appear: check udev and `lvs`, or use --snapshot none")]
    DeviceMissing {
        /// The snapshot LV, as `VG/LV`.
        lv: String,
        /// The device node waited for.
        path: PathBuf,
    },
    /// A classic snapshot's copy-on-write space filled up: it no longer holds the old image.
    #[error("snapshot {lv} overflowed (COW space full at {size}): the origin changed more than the snapshot could hold during the cycle; raise --snapshot-size or shorten cycles")]
    Overflowed {
        /// The snapshot LV, as `VG/LV`.
        lv: String,
        /// The snapshot's size, human-readable (`?` when lvs did not say).
        size: String,
    },
    /// The snapshot is in a state that cannot be read (inactive, invalid, suspended...).
    #[error("snapshot {lv} is {state}, no longer readable: the cycle was aborted (the target keeps its last generation); check `lvs` and the kernel log")]
    Unusable {
        /// The snapshot LV, as `VG/LV`.
        lv: String,
        /// Its state in words, from its `lv_attr` (e.g. "inactive").
        state: &'static str,
    },
    /// The snapshot LV is gone during the cycle.
    #[error("snapshot {lv} disappeared during the cycle (removed from outside?): the cycle was aborted (the target keeps its last generation); the next cycle takes a new one")]
    Vanished {
        /// The snapshot LV, as `VG/LV`.
        lv: String,
    },
    /// The source's filesystem cannot share extents (FICLONE refused).
    #[error("source {source_path} is on a filesystem without reflink (FICLONE: {errno}): use an LVM source, put the image on xfs (reflink=1) or btrfs, or {NONE_RISK}")]
    NoReflink {
        /// The image file given as source.
        source_path: PathBuf,
        /// The C library's text for FICLONE's errno.
        errno: String,
    },
    /// FICLONE works on this filesystem but this clone failed.
    #[error("cannot clone {source_path} into {dir} (FICLONE: {errno}): check free space and permissions there, or use --snapshot none")]
    CloneFailed {
        /// The image file given as source.
        source_path: PathBuf,
        /// Where the clone was to go.
        dir: PathBuf,
        /// The C library's text for FICLONE's errno.
        errno: String,
    },
    /// `--snapshot reflink` on something that is not a regular file.
    #[error("source {source_path} is not a regular file, and reflink clones image files: use --snapshot auto, lvm or lvm-thin for an LV, or {NONE_RISK}")]
    NotAFile {
        /// The source given.
        source_path: PathBuf,
    },
    /// `--snapshot auto` on a source that is neither a block device nor a regular file.
    #[error("source {source_path} is neither an LVM logical volume nor a regular file, so it cannot be snapshotted: use an LV (--snapshot lvm or lvm-thin) or an image file on xfs/btrfs (--snapshot reflink), or {NONE_RISK}")]
    Unsupported {
        /// The source given.
        source_path: PathBuf,
    },
    /// A file system operation on the source, a clone or the state dir failed.
    #[error("{what} {path}: {error}; {hint}")]
    Io {
        /// What was being done, ending before the path (e.g. "cannot stat source").
        what: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
        /// What the user may do about it.
        hint: &'static str,
    },
    /// A `--pre-snapshot` or `--post-snapshot` command exited with failure.
    #[error("{which}-snapshot hook `{command}` failed ({status}): {last_line}; the cycle was aborted: fix the command or drop --{which}-snapshot")]
    Hook {
        /// `pre` or `post`.
        which: &'static str,
        /// The shell command as given.
        command: String,
        /// How it ended: `exit N` or `killed by signal N`.
        status: String,
        /// The last line it wrote on stderr.
        last_line: String,
    },
    /// A hook could not be started (no `sh`?).
    #[error(
        "cannot start the {which}-snapshot hook `{command}`: {error}; check that sh is installed"
    )]
    HookSpawn {
        /// `pre` or `post`.
        which: &'static str,
        /// The shell command as given.
        command: String,
        /// The error of the spawn.
        error: std::io::Error,
    },
    /// A stop was requested while a hook ran (it was killed).
    #[error("stopped on request")]
    Stopped,
}

impl SnapshotError {
    /// True when the next cycle may succeed without the user changing anything: the
    /// snapshot went bad or vanished during the cycle (the next takes a new one), a device
    /// node was slow to appear, or a clone hit a passing I/O problem.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SnapshotError::Vanished { .. }
                | SnapshotError::Unusable { .. }
                | SnapshotError::Overflowed { .. }
                | SnapshotError::DeviceMissing { .. }
                | SnapshotError::CloneFailed { .. }
                | SnapshotError::Io { .. }
        )
    }
}

/// What consistency a view gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Read live: blocks may come from different moments.
    Live,
    /// A point-in-time image, as after a power cut.
    CrashConsistent,
}

/// Releases a view (removes the snapshot, deletes the clone).
pub type ReleaseFn = Box<dyn FnOnce() -> Result<(), SnapshotError> + Send>;
/// Says whether a view is still valid (a classic snapshot that overflowed is not).
pub type HealthFn = std::sync::Arc<dyn Fn() -> Result<(), SnapshotError> + Send + Sync>;

/// A frozen (or, for `none`, live) view of the source for one cycle.
pub struct FrozenView {
    /// Path to read the view from.
    pub path: PathBuf,
    /// Point-in-time or live.
    pub consistency: Consistency,
    /// Polled during the cycle and checked once more after the last read, before the cycle
    /// may commit: data read from an invalidated snapshot must never be committed.
    pub health: Option<HealthFn>,
    /// The snapshot's name (an LV name, a clone's file name), when it has one: what a kept
    /// snapshot is recorded and found again by ([`SnapshotProvider::reopen`]).
    pub name: Option<String>,
    release: Option<ReleaseFn>,
}

impl FrozenView {
    /// A view read from `path`; `release` (if any) runs when the view is released or dropped.
    pub fn new(path: PathBuf, consistency: Consistency, release: Option<ReleaseFn>) -> Self {
        FrozenView {
            path,
            consistency,
            health: None,
            name: None,
            release,
        }
    }

    /// Names the snapshot (see [`FrozenView::name`]).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Takes the release out: the view no longer releases itself when dropped, and whoever
    /// holds the returned function decides when the snapshot goes (a kept snapshot outlives
    /// the process; a later start finds it by name).
    pub fn disarm(&mut self) -> Option<ReleaseFn> {
        self.release.take()
    }

    /// Adds a validity check (see [`FrozenView::health`]).
    pub fn with_health(mut self, health: HealthFn) -> Self {
        self.health = Some(health);
        self
    }

    /// Is the view still valid?
    pub fn check_health(&self) -> Result<(), SnapshotError> {
        match &self.health {
            Some(check) => check(),
            None => Ok(()),
        }
    }

    /// Releases the view now, reporting failure.
    pub fn release(mut self) -> Result<(), SnapshotError> {
        match self.release.take() {
            Some(release) => release(),
            None => Ok(()),
        }
    }
}

impl Drop for FrozenView {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            if let Err(e) = release() {
                tracing::error!(error = %e, "could not release snapshot");
            }
        }
    }
}

/// Options every provider may use (from the command line).
#[derive(Clone, Debug, Default)]
pub struct SnapshotOptions {
    /// The sender's state dir (reflink clones live under it).
    pub state_dir: PathBuf,
    /// Stable identity of the source (snapshot names carry a key of it).
    pub source_identity: String,
    /// Size of a classic LVM snapshot's COW space; `None`: the provider's default rule.
    pub snapshot_size: Option<u64>,
    /// Shell command run just before the snapshot (e.g. flush a database, `fsfreeze -f`).
    pub pre_snapshot: Option<String>,
    /// Shell command run just after the snapshot (e.g. `fsfreeze -u`); runs even when the
    /// snapshot failed.
    pub post_snapshot: Option<String>,
    /// Each hook is killed after this long and counts as failed.
    pub hook_timeout: std::time::Duration,
}

/// How full the space behind a provider's snapshots is, for the metrics (docs/metrics.md).
/// Each figure is a fraction, 0 to 1.
#[derive(Clone, Debug, PartialEq)]
pub enum Space {
    /// The provider's snapshots take no space worth watching (`reflink`, `none`).
    None,
    /// Classic snapshots: the fill of each copy-on-write space asked about, by snapshot name
    /// (1 for one the kernel invalidated). A snapshot missing here could not be read.
    Cow(Vec<(String, f64)>),
    /// Thin snapshots: their pool's usage.
    ThinPool(PoolSpace),
}

/// A thin pool's usage (`lvs -o data_percent,metadata_percent VG/POOL`, as fractions).
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSpace {
    /// The pool, `VG/POOL`.
    pub pool: String,
    /// How full its data space is (`None`: it could not be read).
    pub data: Option<f64>,
    /// How full its metadata space is (`None`: it could not be read).
    pub metadata: Option<f64>,
}

/// A way to freeze a source.
pub trait SnapshotProvider: Send + Sync {
    /// The provider's `--snapshot` name (`lvm`, `lvm-thin`, `reflink`, `none`).
    fn name(&self) -> &'static str;
    /// Removes snapshots of this source left behind by a crashed run (only this program's,
    /// only this source's), except those named in `spare` (kept on purpose: the previous
    /// cycle's snapshot a change tracker compares against). Called once before the first
    /// cycle.
    fn cleanup_stale(&self, _source: &Path, _spare: &[String]) -> Result<(), SnapshotError> {
        Ok(())
    }
    /// Finds a snapshot this provider took and kept (by [`FrozenView::name`]): a view of it
    /// whose release removes it, or `None` when it is gone or unusable.
    fn reopen(&self, _name: &str) -> Result<Option<FrozenView>, SnapshotError> {
        Ok(None)
    }
    /// Freezes `source` for one cycle. Long steps that may be abandoned safely (hooks) end
    /// early when `stop` is set, with [`SnapshotError::Stopped`].
    fn freeze(&self, source: &Path, stop: &AtomicBool) -> Result<FrozenView, SnapshotError>;
    /// For the metrics: how full the space behind this provider's snapshots is now, for the
    /// snapshots named (by [`FrozenView::name`]). Never fails: a figure that cannot be read is
    /// left out, and the failure logged (a warning the first time, debug after).
    fn space(&self, _snapshots: &[&str]) -> Space {
        Space::None
    }
}

/// The provider for a `--snapshot` choice and a source, with the hooks around it. `auto` is
/// resolved here, and every provider checks what it can up front (the LV exists, the
/// filesystem can reflink), so a wrong choice fails before any connection is made.
pub fn provider(
    kind: SnapshotKind,
    source: &Path,
    options: &SnapshotOptions,
) -> Result<Box<dyn SnapshotProvider>, SnapshotError> {
    let options = &with_identity(source, options);
    let inner: Box<dyn SnapshotProvider> = match kind {
        SnapshotKind::None => Box::new(NoSnapshot::default()),
        SnapshotKind::Lvm => Box::new(lvm::ClassicLvm::new(source, options)?),
        SnapshotKind::LvmThin => Box::new(lvm::ThinLvm::new(source, options)?),
        SnapshotKind::Reflink => Box::new(reflink::Reflink::new(source, options)?),
        SnapshotKind::Auto => {
            let chosen = auto(source, options)?;
            tracing::info!(source = %source.display(), provider = chosen.name(), "--snapshot auto");
            chosen
        }
    };
    if options.snapshot_size.is_some() && inner.name() != "lvm" {
        tracing::warn!(
            provider = inner.name(),
            "--snapshot-size only applies to classic LVM snapshots (--snapshot lvm): ignored"
        );
    }
    Ok(hooks::Hooked::wrap(
        inner,
        options.pre_snapshot.clone(),
        options.post_snapshot.clone(),
        options.hook_timeout,
    ))
}

/// Options whose identity is set (the canonical source path when the caller gave none).
fn with_identity(source: &Path, options: &SnapshotOptions) -> SnapshotOptions {
    let mut options = options.clone();
    if options.source_identity.is_empty() {
        let path = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_owned());
        options.source_identity = path.display().to_string();
    }
    options
}

/// `--snapshot auto`: an LV by `lvs` (thin or classic), a regular file by whether FICLONE
/// works, anything else refused.
fn auto(
    source: &Path,
    options: &SnapshotOptions,
) -> Result<Box<dyn SnapshotProvider>, SnapshotError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = stat_source(source)?;
    if meta.is_file() {
        return Ok(Box::new(reflink::Reflink::new(source, options)?));
    }
    if !meta.file_type().is_block_device() {
        return Err(SnapshotError::Unsupported {
            source_path: source.to_owned(),
        });
    }
    if !command::lvm_installed(command::LvmTool::Lvs) {
        return Err(SnapshotError::LvmMissingForDevice {
            source_path: source.to_owned(),
        });
    }
    let lv = lvm::find_source_lv(source)?.ok_or_else(|| lvm::not_an_lv(source, true))?;
    if lv.attr.is_thin_volume() {
        Ok(Box::new(lvm::ThinLvm::for_lv(lv, source, options)?))
    } else {
        Ok(Box::new(lvm::ClassicLvm::for_lv(lv, source, options)?))
    }
}

/// The source's metadata, or the error a user should see.
pub(crate) fn stat_source(source: &Path) -> Result<std::fs::Metadata, SnapshotError> {
    std::fs::metadata(source).map_err(|error| SnapshotError::Io {
        what: "cannot stat source",
        path: source.to_owned(),
        error,
        hint: "check the path",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> SnapshotOptions {
        SnapshotOptions {
            state_dir: dir.join("state"),
            ..SnapshotOptions::default()
        }
    }

    #[test]
    fn auto_refuses_what_it_cannot_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        // A directory is neither an LV nor an image file.
        let e = provider(SnapshotKind::Auto, dir.path(), &options(dir.path()))
            .err()
            .expect("a directory");
        assert!(matches!(e, SnapshotError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("--snapshot none"), "{e}");
        // A character device neither.
        let e = provider(
            SnapshotKind::Auto,
            Path::new("/dev/null"),
            &options(dir.path()),
        )
        .err()
        .expect("/dev/null");
        assert!(matches!(e, SnapshotError::Unsupported { .. }), "{e}");
    }

    #[test]
    fn lvm_kinds_refuse_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("image");
        std::fs::write(&file, b"x").unwrap();
        for kind in [SnapshotKind::Lvm, SnapshotKind::LvmThin] {
            let e = provider(kind, &file, &options(dir.path()))
                .err()
                .expect("a file is no LV");
            assert!(matches!(e, SnapshotError::NotAnLv { .. }), "{e}");
            assert!(e.to_string().contains("--snapshot reflink"), "{e}");
        }
    }

    #[test]
    fn none_is_live_and_hooked() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(dir.path());
        let marker = dir.path().join("ran");
        o.pre_snapshot = Some(format!("touch '{}'", marker.display()));
        let p = provider(SnapshotKind::None, dir.path(), &o).unwrap();
        assert_eq!(p.name(), "none");
        let view = p.freeze(dir.path(), &AtomicBool::new(false)).unwrap();
        assert_eq!(view.consistency, Consistency::Live);
        assert!(marker.exists());
    }

    #[test]
    fn messages_are_one_line() {
        let samples = [
            SnapshotError::LvmMissing {
                program: "lvcreate",
            },
            SnapshotError::NoReflink {
                source_path: "/srv/vm.img".into(),
                errno: "Operation not supported".into(),
            },
            SnapshotError::LvmMissingForDevice {
                source_path: "/dev/sdb".into(),
            },
        ];
        for e in samples {
            let text = e.to_string();
            assert!(!text.contains('\n'), "{text}");
            assert!(text.contains("--snapshot none"), "{text}");
        }
        assert_eq!(
            SnapshotError::LvmMissing {
                program: "lvcreate"
            }
            .to_string(),
            "lvm2 is not installed (lvcreate not found): install lvm2 or use --snapshot none"
        );
        assert_eq!(
            SnapshotError::NoReflink {
                source_path: "/srv/vm.img".into(),
                errno: "Operation not supported".into(),
            }
            .to_string(),
            "source /srv/vm.img is on a filesystem without reflink (FICLONE: Operation not supported): use an LVM source, put the image on xfs (reflink=1) or btrfs, or pass --snapshot none to read it live (the target may then mix blocks from different moments)"
        );
    }
}

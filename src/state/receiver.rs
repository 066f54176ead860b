//! The receiver's state for one target: where it lives, the per-target lock, and the state
//! record that says whether the target is consistent or mid-cycle.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::blockdiff::manifest::{Manifest, ManifestError};
use crate::target::Fingerprint;

use super::{create_dir_durable, key, now, read_json, write_json};

/// Where the receiver keeps state for one target.
#[derive(Clone, Debug)]
pub struct ReceiverPaths {
    /// `STATE/targets/<key>/`, the key made from the target path.
    pub dir: PathBuf,
    /// `state.json`: the [`ReceiverState`] record.
    pub state: PathBuf,
    /// `manifest`: the target's manifest.
    pub manifest: PathBuf,
    /// `lock`: flocked by the session serving the target.
    pub lock: PathBuf,
    /// `reserve`: space set aside so that the state can be recorded on a full filesystem.
    pub reserve: PathBuf,
}

impl ReceiverPaths {
    /// The paths for `target` (as the receiver names it: absolute) under `state_dir`.
    pub fn new(state_dir: &Path, target: &Path) -> Self {
        let dir = state_dir
            .join("targets")
            .join(key(&target.display().to_string()));
        ReceiverPaths {
            state: dir.join("state.json"),
            manifest: dir.join("manifest"),
            lock: dir.join("lock"),
            reserve: dir.join("reserve"),
            dir,
        }
    }

    /// Takes the per-target lock; `Ok(None)` when another session holds it.
    pub fn lock(&self) -> io::Result<Option<nix::fcntl::Flock<File>>> {
        create_dir_durable(&self.dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(errno.into()),
        }
    }
}

/// What the receiver's target holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// The target is byte-identical to the committed generation; the manifest describes it.
    Consistent,
    /// A cycle is being applied, or the receiver died while applying: the target is
    /// mid-cycle and the saved manifest may not describe it (it is rebuilt by hashing).
    Applying,
    /// A cycle was aborted cleanly: the target is mid-cycle, but the saved manifest
    /// describes it exactly.
    Interrupted,
    /// A scrub found blocks that differ from the committed generation (written outside
    /// blkmirror, or rotted): the manifest marks them unknown, the next cycle ships them.
    Drifted,
}

/// The receiver's state record for one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceiverState {
    /// Format of this record: 1 (a record of another format is unreadable: the target is
    /// then unknown and re-hashed).
    pub format: u32,
    /// The target path, as displayed.
    pub target: String,
    /// Whether the target is consistent or mid-cycle.
    pub condition: Condition,
    /// Last generation committed to the target; 0 if none.
    pub committed_generation: u64,
    /// Manifest root after that commit, 64 hex digits; empty if none.
    pub committed_root: String,
    /// The generation being (or last being) applied; `None` once it committed.
    pub applying_generation: Option<u64>,
    /// Block size of the current or last cycle, in bytes.
    pub block_size: u32,
    /// Source size announced by the current or last cycle, in bytes.
    pub device_size: u64,
    /// Unix time (seconds) of the last save of this record.
    pub updated_at: u64,
    /// Unix time (seconds) of the last commit; `None` if none.
    pub committed_at: Option<u64>,
    /// Bytes written or zeroed on the target by the last cycle.
    pub last_cycle_bytes_written: u64,
    /// Why the last cycle did not commit, if it did not.
    pub last_error: Option<String>,
    /// The last scrub's findings (absent until a scrub ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scrub: Option<ScrubRecord>,
    /// The target's identity and change marks when this record last said its manifest
    /// describes it (commit, clean abort, scrub); absent for targets without any, and in
    /// records of older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_fingerprint: Option<Fingerprint>,
}

/// What a scrub of the target found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubRecord {
    /// Unix seconds when it ended.
    pub at: u64,
    /// Blocks compared with the manifest.
    pub blocks_checked: u64,
    /// Blocks that differed (marked unknown for the next cycle to repair).
    pub blocks_drifted: u64,
}

impl ReceiverState {
    /// `self` when its format is the one this build reads (1), else an `InvalidData` error
    /// saying so: such a record says nothing this build may trust.
    pub fn known_format(self) -> io::Result<Self> {
        if self.format == 1 {
            return Ok(self);
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "format {} is not supported (this build reads format 1)",
                self.format
            ),
        ))
    }

    /// The record of a target never served: `applying`, nothing committed.
    pub fn new(target: &Path) -> Self {
        ReceiverState {
            format: 1,
            target: target.display().to_string(),
            condition: Condition::Applying,
            committed_generation: 0,
            committed_root: String::new(),
            applying_generation: None,
            block_size: 0,
            device_size: 0,
            updated_at: now(),
            committed_at: None,
            last_cycle_bytes_written: 0,
            last_error: None,
            last_scrub: None,
            target_fingerprint: None,
        }
    }
}

/// Reads a receiver's `state.json`: `Ok(None)` when there is none, an `InvalidData` error
/// when it does not parse or is of a format this build does not read.
pub fn read_state(path: &Path) -> io::Result<Option<ReceiverState>> {
    read_json::<ReceiverState>(path)?
        .map(ReceiverState::known_format)
        .transpose()
}

/// Where a receiver keeps one target's state record and manifest. Every save is atomic and
/// durable once it returns `Ok`: after a crash a load finds the old record or the new one,
/// whole. [`DirStore`] keeps them as files; [`crate::state::CrashStore`] models power loss.
pub trait ReceiverStore: Send {
    /// Where the records live, for messages.
    fn location(&self) -> &Path;
    /// The state record, `Ok(None)` when there is none yet; an `InvalidData` error when it
    /// does not parse or is of another format ([`ReceiverState::known_format`]).
    fn load_state(&self) -> io::Result<Option<ReceiverState>>;
    /// Replaces the state record.
    fn save_state(&mut self, state: &ReceiverState) -> io::Result<()>;
    /// The target's manifest, `Ok(None)` when there is none.
    fn load_manifest(&self) -> Result<Option<Manifest>, ManifestError>;
    /// Replaces the manifest.
    fn save_manifest(&mut self, manifest: &Manifest) -> io::Result<()>;
}

/// The state files of one target under a state dir (`STATE/targets/<key>/`).
pub struct DirStore {
    paths: ReceiverPaths,
}

impl DirStore {
    /// The store at `paths`.
    pub fn new(paths: ReceiverPaths) -> Self {
        DirStore { paths }
    }
}

/// Space kept in `reserve` besides room for one more copy of the manifest.
const RESERVE_SLACK: u64 = 1 << 20;

impl DirStore {
    /// Runs a save; on a full filesystem (ENOSPC), gives up the reserve and tries once more.
    /// The state dir often shares the target's filesystem, and a cycle must record "applying"
    /// before it may free space (punch holes): without the reserve, a full filesystem would
    /// stop mirroring for good.
    fn saving(&self, save: impl Fn() -> io::Result<()>) -> io::Result<()> {
        match save() {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && self.paths.reserve.exists() => {
                tracing::warn!(
                    reserve = %self.paths.reserve.display(),
                    "filesystem of the state dir is full: using the reserved space to record the state"
                );
                std::fs::remove_file(&self.paths.reserve)?;
                save()
            }
            other => other,
        }
    }

    /// Sets the reserve aside again once a target is consistent (room for one more copy of
    /// its manifest, plus a slack), if it is missing; a filesystem still full leaves it
    /// missing, with a warning, and the next consistent save tries again.
    fn keep_reserve(&self) {
        if self.paths.reserve.exists() {
            return;
        }
        let manifest = std::fs::metadata(&self.paths.manifest).map_or(0, |m| m.len());
        let size = manifest + RESERVE_SLACK;
        let made = std::fs::File::create(&self.paths.reserve).and_then(|file| {
            nix::fcntl::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, size as i64)
                .map_err(io::Error::from)?;
            file.sync_all()
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&self.paths.reserve);
            tracing::warn!(reserve = %self.paths.reserve.display(), error = %e, "cannot set space aside for recording the state");
        }
    }
}

impl ReceiverStore for DirStore {
    fn location(&self) -> &Path {
        &self.paths.dir
    }

    fn load_state(&self) -> io::Result<Option<ReceiverState>> {
        read_state(&self.paths.state)
    }

    fn save_state(&mut self, state: &ReceiverState) -> io::Result<()> {
        self.saving(|| write_json(&self.paths.state, state))?;
        if state.condition == Condition::Consistent {
            self.keep_reserve();
        }
        Ok(())
    }

    fn load_manifest(&self) -> Result<Option<Manifest>, ManifestError> {
        super::manifest_file::load(&self.paths.manifest)
    }

    fn save_manifest(&mut self, manifest: &Manifest) -> io::Result<()> {
        self.saving(|| super::manifest_file::save(manifest, &self.paths.manifest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ReceiverPaths::new(dir.path(), Path::new("/dev/x"));
        let first = paths.lock().unwrap();
        assert!(first.is_some());
        assert!(paths.lock().unwrap().is_none());
        drop(first);
        assert!(paths.lock().unwrap().is_some());
    }
}

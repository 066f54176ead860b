//! Where the snapshots of one target live and how they are made: the one place that
//! dispatches between the two kinds [`super::classify`] accepts (reflink clones of a file
//! target in a history directory, `store.rs`; thin snapshots of a thin LV, `thin.rs`).

use std::path::{Path, PathBuf};

use super::error::HistoryError;
use super::naming::Entry;
use super::policy::Policy;
use super::target::{classify, default_dir, TargetKind};
use super::{store, thin};

/// Where the snapshots of one target are, and how they are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Store {
    /// Reflink clones of a file target in a directory (`store.rs`).
    Files {
        /// The history directory.
        dir: PathBuf,
    },
    /// Thin snapshots of a thin LV in its volume group (`thin.rs`).
    Thin {
        /// The volume group.
        vg: String,
        /// The target LV.
        lv: String,
    },
}

impl Store {
    /// The store of a target of kind `kind`; `dir` is where a file target's clones go (unused
    /// for a thin LV).
    pub fn of(kind: TargetKind, dir: PathBuf) -> Store {
        match kind {
            TargetKind::File => Store::Files { dir },
            TargetKind::ThinLv { vg, lv } => Store::Thin { vg, lv },
        }
    }

    /// The store of `target` ([`classify`]), with `history_dir` when one was given (else the
    /// [`default_dir`]). A missing target is taken for a file target (its history dir may
    /// outlive it). Refuses `history_dir` for a thin LV, and every unsupported target.
    pub fn for_target(target: &Path, history_dir: Option<&Path>) -> Result<Store, HistoryError> {
        let kind = match classify(target) {
            Ok(kind) => kind,
            Err(HistoryError::TargetMissing { .. }) => TargetKind::File,
            Err(e) => return Err(e),
        };
        if let (TargetKind::ThinLv { vg, lv }, Some(_)) = (&kind, history_dir) {
            return Err(HistoryError::HistoryDirForThinLv {
                target: target.to_owned(),
                lv: format!("{vg}/{lv}"),
            });
        }
        let dir = history_dir.map_or_else(|| default_dir(target), Path::to_owned);
        Ok(Store::of(kind, dir))
    }

    /// Checks, before the first snapshot, that this store can work for `target`: for a file,
    /// that a reflink clone of it can be made in the history dir ([`store::check`]); for a
    /// thin LV nothing more than [`classify`] did.
    pub fn check(&self, target: &Path) -> Result<(), HistoryError> {
        match self {
            Store::Files { dir } => store::check(target, dir),
            Store::Thin { .. } => Ok(()),
        }
    }

    /// Takes a snapshot of `target` (the file, or this store's LV) as `generation` at `now`.
    pub fn take(&self, target: &Path, generation: u64, now: u64) -> Result<Entry, HistoryError> {
        match self {
            Store::Files { dir } => store::take(target, dir, generation, now),
            Store::Thin { vg, lv } => thin::take(vg, lv, generation, now),
        }
    }

    /// The snapshots, by generation then creation time.
    pub fn list(&self) -> Result<Vec<Entry>, HistoryError> {
        match self {
            Store::Files { dir } => store::list(dir),
            Store::Thin { vg, lv } => thin::list(vg, lv),
        }
    }

    /// Deletes the snapshots `policy` prunes at `now`; returns them.
    pub fn prune(&self, policy: &Policy, now: u64) -> Result<Vec<Entry>, HistoryError> {
        match self {
            Store::Files { dir } => store::prune(dir, policy, now),
            Store::Thin { vg, lv } => thin::prune(vg, lv, policy, now),
        }
    }

    /// Makes `dest`, a new file, hold the snapshot of `generation`.
    pub fn restore(&self, generation: u64, dest: &Path) -> Result<Entry, HistoryError> {
        match self {
            Store::Files { dir } => store::restore(dir, generation, dest),
            Store::Thin { vg, lv } => thin::restore(vg, lv, generation, dest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_missing_targets_use_the_history_dir() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.img");
        // Missing: still a file target (its history may outlive it).
        assert_eq!(
            Store::for_target(&target, None).unwrap(),
            Store::Files {
                dir: dir.path().join(".t.img.history")
            }
        );
        std::fs::write(&target, b"x").unwrap();
        let given = dir.path().join("h");
        assert_eq!(
            Store::for_target(&target, Some(&given)).unwrap(),
            Store::Files { dir: given.clone() }
        );
        assert_eq!(classify(&target).unwrap(), TargetKind::File);
        let error = classify(dir.path()).unwrap_err();
        assert!(matches!(error, HistoryError::NotAFile { .. }), "{error}");
    }

    #[test]
    fn a_thin_store_ignores_the_dir() {
        let kind = TargetKind::ThinLv {
            vg: "vg".into(),
            lv: "data".into(),
        };
        assert_eq!(
            Store::of(kind, PathBuf::from("/unused")),
            Store::Thin {
                vg: "vg".into(),
                lv: "data".into()
            }
        );
    }
}

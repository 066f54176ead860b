//! The previous cycle's snapshot, kept for a tracker to compare against. After a cycle
//! commits, its view is kept (its release disarmed) instead of released, and recorded in the
//! sender's state with the generation and root it was committed as; the view kept before is
//! released. A restart finds the kept snapshot again by that record (the stale clean-up
//! spares it). A record that does not match the generation the cycle diffs against, or a
//! snapshot gone missing, means "no previous": the cycle scans everything.
//!
//! Crash safety: the record is written after the sender saved its manifest and before the
//! older snapshot is released. A crash in between leaves either a record one generation
//! behind the manifest (a full scan, then the record moves on) or an unrecorded snapshot (the
//! next start's clean-up removes it).

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::blockdiff::manifest::BlockHash;
use crate::snapshot::{FrozenView, ReleaseFn, SnapshotError, SnapshotProvider};

use super::Since;

/// The record of a kept snapshot (`dest-<key>.kept`, JSON, beside the sender's manifest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptRecord {
    /// Always 1.
    pub format: u32,
    /// The generation committed from this snapshot.
    pub generation: u64,
    /// Its root (hex).
    pub root: String,
    /// The snapshot's name, for the provider to find it again.
    pub snapshot: String,
}

struct Kept {
    record: KeptRecord,
    view: FrozenView,
    release: Option<ReleaseFn>,
}

/// The kept snapshot of one (source, destination) pair.
pub struct KeptViews {
    record_path: PathBuf,
    provider: Arc<dyn SnapshotProvider>,
    kept: Option<Kept>,
    loaded: bool,
}

impl KeptViews {
    /// The kept snapshot recorded at `record_path`, found through `provider` when first asked.
    pub fn new(record_path: PathBuf, provider: Arc<dyn SnapshotProvider>) -> Self {
        KeptViews {
            record_path,
            provider,
            kept: None,
            loaded: false,
        }
    }

    /// The names of kept snapshots recorded at `record_path` (the stale clean-up spares them).
    pub fn spared(record_path: &std::path::Path) -> Vec<String> {
        match crate::state::read_json::<KeptRecord>(record_path) {
            Ok(Some(record)) => vec![record.snapshot],
            _ => Vec::new(),
        }
    }

    /// The kept view of generation `since`, or why there is none.
    pub fn previous(&mut self, since: &Since) -> Result<&FrozenView, String> {
        self.load()?;
        let Some(kept) = &self.kept else {
            return Err("no previous snapshot (first cycle, or it was removed)".into());
        };
        if kept.record.generation != since.generation || kept.record.root != hex::encode(since.root)
        {
            return Err(format!(
                "the kept snapshot is of generation {}, the target holds generation {}",
                kept.record.generation, since.generation
            ));
        }
        Ok(&kept.view)
    }

    /// The kept view and what it was committed as, whatever generation a destination holds
    /// (fan-out: each destination has its own generations; the root says which content the
    /// view holds). Or why there is none.
    pub fn recorded(&mut self) -> Result<(&FrozenView, Since), String> {
        self.load()?;
        let Some(kept) = &self.kept else {
            return Err("no previous snapshot (first cycle, or it was removed)".into());
        };
        let mut root = [0u8; 32];
        hex::decode_to_slice(&kept.record.root, &mut root).map_err(|_| {
            format!(
                "kept-snapshot record with a bad root {:?}",
                kept.record.root
            )
        })?;
        let since = Since {
            generation: kept.record.generation,
            root,
        };
        Ok((&kept.view, since))
    }

    /// The kept snapshot's name, when there is one (found when first asked).
    pub fn kept_name(&mut self) -> Option<String> {
        let _ = self.load();
        self.kept.as_ref().map(|k| k.record.snapshot.clone())
    }

    fn load(&mut self) -> Result<(), String> {
        if self.loaded {
            return Ok(());
        }
        self.loaded = true;
        let record = match crate::state::read_json::<KeptRecord>(&self.record_path) {
            Ok(Some(record)) if record.format == 1 => record,
            Ok(Some(record)) => {
                return Err(format!("kept-snapshot record of format {}", record.format))
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("kept-snapshot record unreadable: {e}")),
        };
        match self.provider.reopen(&record.snapshot) {
            Ok(Some(mut view)) => {
                let release = view.disarm();
                self.kept = Some(Kept {
                    record,
                    view,
                    release,
                });
                Ok(())
            }
            Ok(None) => Err(format!("the kept snapshot {} is gone", record.snapshot)),
            Err(e) => Err(format!(
                "the kept snapshot {} is unusable: {e}",
                record.snapshot
            )),
        }
    }

    /// Keeps `view` as the snapshot of `generation` (root `root`), records it, and releases
    /// the one kept before. A view without a name cannot be found again: it is released.
    pub fn keep(
        &mut self,
        mut view: FrozenView,
        generation: u64,
        root: BlockHash,
    ) -> Result<(), SnapshotError> {
        let Some(name) = view.name.clone() else {
            return view.release();
        };
        let _ = self.load();
        let record = KeptRecord {
            format: 1,
            generation,
            root: hex::encode(root),
            snapshot: name,
        };
        crate::state::write_json(&self.record_path, &record).map_err(|error| {
            SnapshotError::Io {
                what: "cannot record the kept snapshot in",
                path: self.record_path.clone(),
                error,
                hint: "check the state directory",
            }
        })?;
        let release = view.disarm();
        let older = self.kept.replace(Kept {
            record,
            view,
            release,
        });
        match older.and_then(|mut k| k.release.take()) {
            Some(release) => release(),
            None => Ok(()),
        }
    }
}

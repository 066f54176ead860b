//! The sender's state for one (source, destination) pair: where it lives and the status
//! record `status` shows. The pair's manifest is saved beside it (see [`super::manifest_file`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::key;

/// Where the sender keeps state for one (source, destination) pair.
#[derive(Clone, Debug)]
pub struct SenderPaths {
    /// `STATE/sources/<key>/`, the key made from the source identity.
    pub dir: PathBuf,
    /// `dest-<key>.manifest`: the source's manifest as last committed to this destination.
    pub manifest: PathBuf,
    /// `dest-<key>.json`: the [`SenderStatus`] record.
    pub status: PathBuf,
    /// The record of the snapshot kept for the change tracker (JSON; not named `.json`, so
    /// `status` does not take it for a status record).
    pub kept: PathBuf,
    /// The record of the last full-hash cycle (JSON).
    pub audit: PathBuf,
}

impl SenderPaths {
    /// The paths for a source identity and a destination (its canonical text) under
    /// `state_dir`.
    pub fn new(state_dir: &Path, source_identity: &str, dest: &str) -> Self {
        let dir = state_dir.join("sources").join(key(source_identity));
        let dest_key = key(dest);
        SenderPaths {
            manifest: dir.join(format!("dest-{dest_key}.manifest")),
            status: dir.join(format!("dest-{dest_key}.json")),
            kept: dir.join(format!("dest-{dest_key}.kept")),
            audit: dir.join(format!("dest-{dest_key}.audit")),
            dir,
        }
    }
}

/// The sender's record of its last committed cycle (what `status` shows).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SenderStatus {
    /// The source path as given on the command line.
    pub source: String,
    /// The source's identity text (e.g. `file:/srv/vm.img`), not hashed.
    pub source_identity: String,
    /// The destination's canonical text.
    pub dest: String,
    /// The committed generation.
    pub generation: u64,
    /// Root of the committed manifest, 64 hex digits.
    pub root: String,
    /// Unix time (seconds) when the sender recorded the commit.
    pub committed_at: u64,
    /// The cycle's report, as `send --json` prints it.
    pub last_cycle: serde_json::Value,
}

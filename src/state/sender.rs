//! The sender's state for one (source, destination) pair: where it lives and the status
//! record `status` shows. The pair's manifest is saved beside it (see [`super::manifest_file`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::key;

/// Where the sender keeps state for one (source, destination) pair.
#[derive(Clone, Debug)]
pub struct SenderPaths {
    /// `STATE/sources/<key(source identity)>`.
    pub dir: PathBuf,
    /// The manifest of what the receiver acknowledged.
    pub manifest: PathBuf,
    /// The status record (`status` lists these).
    pub status: PathBuf,
    /// The record of the snapshot kept for the change tracker (JSON; not named `.json`, so
    /// `status` does not take it for a status record).
    pub kept: PathBuf,
    /// The record of the last full-hash cycle (JSON).
    pub audit: PathBuf,
}

impl SenderPaths {
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
    pub source: String,
    pub source_identity: String,
    pub dest: String,
    pub generation: u64,
    pub root: String,
    pub committed_at: u64,
    pub last_cycle: serde_json::Value,
}

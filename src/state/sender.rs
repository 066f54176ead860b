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
    /// Unix time (seconds) of the snapshot the committed generation was read from: the age of
    /// the data the target holds is the time since (its lag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_at: Option<u64>,
    /// The last cycle that failed, whether or not one committed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// Cycles that failed since the last commit (0 after a commit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: u32,
    /// Unix time (seconds) the looping sender plans its next cycle (or retry) for; absent when
    /// the run ended (`--once`) or stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cycle_at: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Records when the looping sender plans its next cycle for this destination (best effort: a
/// destination with no record yet gets none).
pub fn record_next_cycle(paths: &SenderPaths, at: Option<u64>) -> std::io::Result<()> {
    match super::read_json::<SenderStatus>(&paths.status) {
        Ok(Some(mut status)) if status.next_cycle_at != at => {
            status.next_cycle_at = at;
            super::write_json(&paths.status, &status)
        }
        _ => Ok(()),
    }
}

/// The age, at `now`, of the source data the destination holds (seconds since the snapshot its
/// committed generation was read from); `None` before the first commit.
pub fn lag_seconds(status: &SenderStatus, now: u64) -> Option<u64> {
    if status.generation == 0 {
        return None;
    }
    Some(now.saturating_sub(status.snapshot_at.unwrap_or(status.committed_at)))
}

/// A failed cycle, as the sender recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Unix time (seconds).
    pub at: u64,
    /// The error, one line.
    pub error: String,
}

/// What a failure record names besides the error.
pub struct FailedCycle<'a> {
    /// The source as given (absolute).
    pub source: &'a str,
    /// The source's identity text.
    pub source_identity: &'a str,
    /// The destination's canonical text.
    pub dest: &'a str,
}

/// Records a failed cycle in the destination's status record (creating one that says nothing
/// was committed yet, when there is none), so `status` shows a failing sender.
pub fn record_failure(
    paths: &SenderPaths,
    cycle: &FailedCycle<'_>,
    error: &str,
) -> std::io::Result<()> {
    let mut status = match super::read_json::<SenderStatus>(&paths.status) {
        Ok(Some(status)) => status,
        _ => SenderStatus {
            source: cycle.source.to_string(),
            source_identity: cycle.source_identity.to_string(),
            dest: cycle.dest.to_string(),
            generation: 0,
            root: String::new(),
            committed_at: 0,
            last_cycle: serde_json::Value::Null,
            snapshot_at: None,
            last_failure: None,
            consecutive_failures: 0,
            next_cycle_at: None,
        },
    };
    status.last_failure = Some(Failure {
        at: super::now(),
        error: error.to_string(),
    });
    status.consecutive_failures = status.consecutive_failures.saturating_add(1);
    super::write_json(&paths.status, &status)
}

//! The sender's safety net under a change tracker: every so often (`--audit-every`, a day by
//! default) a cycle hashes the whole frozen view instead of only what the tracker reported. It
//! still asks the tracker, and every changed block outside the tracker's ranges is a
//! *tracking fault*: logged, counted in the cycle's figures, and shipped like any change, so
//! a tracker that missed something is caught and the target repaired by the same cycle.
//!
//! Any full-scan cycle is an audit (it hashes everything); the time and generation of the last
//! one are kept beside the sender's manifest (`dest-<key>.audit`).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::blockdiff::ranges::RangeSet;

/// How often a cycle is a full-hash audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditEvery {
    /// When this long has passed since the last one.
    Time(Duration),
    /// Every this many generations.
    Cycles(u64),
}

impl Default for AuditEvery {
    fn default() -> Self {
        AuditEvery::Time(Duration::from_secs(24 * 3600))
    }
}

/// When cycles are audits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditPolicy {
    /// The interval.
    pub every: AuditEvery,
    /// Every cycle of this run is an audit (`send --audit`).
    pub always: bool,
}

/// The record of the last full-hash cycle.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unix seconds.
    pub at: u64,
    /// The generation it committed.
    pub generation: u64,
}

impl AuditPolicy {
    /// Whether the cycle that will commit `generation` must hash everything, given the
    /// record at `path`.
    pub fn due(&self, path: &Path, generation: u64) -> bool {
        if self.always {
            return true;
        }
        let Ok(Some(last)) = crate::state::read_json::<AuditRecord>(path) else {
            return true;
        };
        match self.every {
            AuditEvery::Time(interval) => {
                crate::state::now().saturating_sub(last.at) >= interval.as_secs()
            }
            AuditEvery::Cycles(n) => generation.saturating_sub(last.generation) >= n,
        }
    }
}

/// Records a full-hash cycle (best effort: a lost record only brings the next audit forward).
pub fn record(path: &Path, generation: u64) {
    let record = AuditRecord {
        at: crate::state::now(),
        generation,
    };
    if let Err(e) = crate::state::write_json(path, &record) {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the audit");
    }
}

/// The changed blocks (`changed`, block indices) that the tracker's byte ranges (`reported`)
/// did not cover: its faults. Each run is logged.
pub fn faults(changed: &RangeSet, reported: &RangeSet, block_size: u32) -> u64 {
    let covered = reported.to_units(block_size as u64);
    let mut missed = 0;
    for run in changed.iter() {
        let mut at = run.start;
        for cover in covered
            .iter()
            .filter(|c| c.end > run.start && c.start < run.end)
        {
            if cover.start > at {
                missed += log_fault(at..cover.start);
            }
            at = at.max(cover.end);
        }
        if at < run.end {
            missed += log_fault(at..run.end);
        }
    }
    missed
}

fn log_fault(blocks: std::ops::Range<u64>) -> u64 {
    tracing::warn!(
        event = "tracking_fault",
        first_block = blocks.start,
        blocks = blocks.end - blocks.start,
        "tracking fault: these blocks changed but the change tracker did not report them (shipped now)"
    );
    blocks.end - blocks.start
}

/// Parses `--audit-every`: a duration (`24h`, `30m`) or a number of cycles (`100cycles`).
pub fn parse_every(text: &str) -> Result<AuditEvery, String> {
    let text = text.trim();
    if let Some(n) = text
        .strip_suffix("cycles")
        .or_else(|| text.strip_suffix("cycle"))
    {
        return match n.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(AuditEvery::Cycles(n)),
            _ => Err(format!(
                "invalid number of cycles {text:?} (examples: 24h, 100cycles)"
            )),
        };
    }
    crate::units::parse_duration(text).map(AuditEvery::Time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_changed_blocks_outside_the_reported_ranges() {
        let changed = RangeSet::from_ranges([0..2, 5..9, 20..21]);
        // The tracker reported bytes 4096..12288 of 4096-byte blocks: blocks 1 and 2, and
        // 6..8.
        let reported = RangeSet::from_ranges([4096..12288, 24576..32768]);
        assert_eq!(faults(&changed, &reported, 4096), 1 + 1 + 1 + 1);
        assert_eq!(faults(&changed, &RangeSet::full(1 << 20), 4096), 0);
        assert_eq!(faults(&changed, &RangeSet::new(), 4096), 2 + 4 + 1);
    }

    #[test]
    fn due_by_time_or_cycles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit");
        let daily = AuditPolicy::default();
        assert!(daily.due(&path, 1), "never audited");
        record(&path, 1);
        assert!(!daily.due(&path, 2));
        let every_3 = AuditPolicy {
            every: AuditEvery::Cycles(3),
            always: false,
        };
        assert!(!every_3.due(&path, 3));
        assert!(every_3.due(&path, 4));
        let forced = AuditPolicy {
            always: true,
            ..daily
        };
        assert!(forced.due(&path, 2));
    }

    #[test]
    fn every_parses_durations_and_cycles() {
        assert_eq!(parse_every("100cycles"), Ok(AuditEvery::Cycles(100)));
        assert_eq!(
            parse_every("24h"),
            Ok(AuditEvery::Time(Duration::from_secs(86400)))
        );
        assert!(parse_every("0cycles").is_err());
        assert!(parse_every("often").is_err());
    }
}

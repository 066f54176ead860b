//! The figures of one committed cycle (`send --json` prints one per cycle).

use std::time::Duration;

use serde::Serialize;

/// Figures of one committed cycle (printed as JSON with `--json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CycleReport {
    pub generation: u64,
    pub source: String,
    pub dest: String,
    pub device_size: u64,
    pub block_size: u32,
    pub blocks_scanned: u64,
    pub blocks_changed: u64,
    pub blocks_zero: u64,
    pub bytes_read: u64,
    /// Plaintext bytes shipped: whole changed blocks, or the differing 4 KiB sub-blocks of
    /// refined blocks.
    pub bytes_changed: u64,
    /// Changed blocks refined to 4 KiB, and the bytes refinement did not have to ship.
    pub blocks_refined: u64,
    pub bytes_saved_by_refinement: u64,
    /// Bytes of extent payloads after compression.
    pub bytes_payload: u64,
    /// Every byte written to the connection during the cycle.
    pub bytes_sent: u64,
    pub compression_ratio: f64,
    /// "sender" (our manifest), "receiver" (roots disagreed: the receiver's manifest).
    pub base: String,
    pub root: String,
    pub duration_ms: StageDurations,
}

/// Milliseconds per stage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageDurations {
    pub snapshot: u64,
    pub handshake: u64,
    pub scan_and_send: u64,
    pub commit: u64,
    pub total: u64,
}

pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

//! The figures of one committed cycle (`send --json` prints one per cycle).

use std::time::Duration;

use serde::Serialize;

/// Figures of one committed cycle (printed as JSON with `--json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CycleReport {
    /// The generation committed.
    pub generation: u64,
    /// The source as given.
    pub source: String,
    /// The destination's canonical text.
    pub dest: String,
    /// Bytes of the source.
    pub device_size: u64,
    /// Manifest block size.
    pub block_size: u32,
    /// Blocks of the source.
    pub blocks_scanned: u64,
    /// Blocks that differed from the base (data and zero).
    pub blocks_changed: u64,
    /// Of those, blocks that are now zeros.
    pub blocks_zero: u64,
    /// Bytes of the source the scan covered (all of it on a full scan, the tracker's ranges
    /// otherwise).
    pub bytes_scanned: u64,
    /// Bytes actually read from the source: the scanned bytes less the holes of a sparse
    /// file (holes are known zeros, never read).
    pub bytes_read: u64,
    /// Bytes of its target the receiver read for refinement (each refined run is read to
    /// answer, and again to apply its patch).
    pub target_bytes_read: u64,
    /// Plaintext bytes shipped: whole changed blocks, or the differing 4 KiB sub-blocks of
    /// refined blocks.
    pub bytes_changed: u64,
    /// Changed blocks refined to 4 KiB.
    pub blocks_refined: u64,
    /// Bytes of refined blocks refinement did not have to ship.
    pub bytes_saved_by_refinement: u64,
    /// Bytes of extent payloads after compression.
    pub bytes_payload: u64,
    /// Every byte written to the connection during the cycle.
    pub bytes_sent: u64,
    /// Plaintext bytes over payload bytes.
    pub compression_ratio: f64,
    /// "sender" (our manifest), "receiver" (roots disagreed: the receiver's manifest).
    pub base: String,
    /// What the receiver said of its target: "consistent", "mid-cycle", or "unknown" (it had
    /// no usable state and hashed the target).
    pub target_condition: String,
    /// The change tracker asked (`full-scan` when none can tell).
    pub tracker: String,
    /// Why this cycle read everything although a tracker might have said less, if it did.
    pub full_scan_reason: Option<String>,
    /// Ranges the scan read.
    pub ranges_scanned: u64,
    /// This cycle was a scheduled (or requested) full-hash audit.
    pub audit: bool,
    /// Blocks an audit found changed that the tracker had not reported (shipped all the same).
    pub tracking_faults: u64,
    /// The new root (hex).
    pub root: String,
    /// Milliseconds per stage.
    pub duration_ms: StageDurations,
}

impl CycleReport {
    /// Adds the packer's figures.
    pub(crate) fn add_changes(&mut self, stats: &crate::sender::packing::ChangeStats) {
        self.blocks_changed = stats.blocks_changed;
        self.blocks_zero = stats.blocks_zero;
        self.bytes_changed = stats.bytes_changed;
        self.bytes_read = stats.bytes_read;
        self.target_bytes_read = stats.target_bytes_read;
        self.blocks_refined = stats.blocks_refined;
        self.bytes_saved_by_refinement = stats.bytes_saved_by_refinement;
        self.bytes_payload = stats.bytes_payload;
        self.compression_ratio = if stats.bytes_payload == 0 {
            1.0
        } else {
            stats.bytes_changed as f64 / stats.bytes_payload as f64
        };
    }
}

/// Milliseconds per stage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageDurations {
    /// Taking the snapshot (hooks included).
    pub snapshot: u64,
    /// Opening the cycle with the receiver, fetching its manifest if needed.
    pub handshake: u64,
    /// Reading, hashing, packing and shipping.
    pub scan_and_send: u64,
    /// Waiting for the receiver's commit, saving our manifest, releasing the snapshot.
    pub commit: u64,
    /// The whole cycle.
    pub total: u64,
}

pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

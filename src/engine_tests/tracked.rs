//! The change-tracker seam, exercised with a tracker that answers what it is told: the scan
//! reads only the ranges a tracker reports (a change outside them is not seen: what the audit
//! of issue 9 exists to catch), and a tracker is only asked when the base manifest is the
//! sender's own committed one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::blockdiff::ranges::RangeSet;
use crate::receiver::ReceiveError;
use crate::sender::{CycleReport, SendError};
use crate::state::{CrashStore, StoreImage};
use crate::target::{BlockTarget, MemTarget, Power};
use crate::tracker::{ChangeTracker, Changes, FullScan, Given};

use super::Rig;

const BLOCK: u32 = 65536;
const SIZE: usize = 1 << 20;

/// A rig with a `SIZE`-byte source of the pattern `i * step % modulus`, a target of `fill`
/// bytes, and one receiver store image that every cycle's store shares.
struct Setup {
    rig: Rig,
    source: Vec<u8>,
    target: Arc<MemTarget>,
    image: Arc<Mutex<StoreImage>>,
}

impl Setup {
    fn new(step: u32, modulus: u32, fill: u8) -> Self {
        let rig = Rig::new(BLOCK);
        let source: Vec<u8> = (0..SIZE as u32)
            .map(|i| (i * step % modulus) as u8)
            .collect();
        std::fs::write(&rig.source, &source).unwrap();
        Setup {
            rig,
            source,
            target: Arc::new(MemTarget::new(vec![fill; SIZE])),
            image: Arc::new(Mutex::new(StoreImage::default())),
        }
    }

    /// Writes the (changed) source out.
    fn write_source(&self) {
        std::fs::write(&self.rig.source, &self.source).unwrap();
    }

    /// One cycle with `tracker`.
    fn cycle(
        &self,
        tracker: Arc<dyn ChangeTracker>,
    ) -> (Result<CycleReport, SendError>, Result<(), ReceiveError>) {
        let store = Box::new(CrashStore::new(Power::new(None), self.image.clone()));
        self.rig.cycle(self.target.clone(), store, tracker)
    }
}

#[test]
fn the_scan_reads_only_what_the_tracker_reports() {
    let mut x = Setup::new(7, 253, 0xAB);
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let tracker = Arc::new(Given::new(move |_since| {
        counter.fetch_add(1, Ordering::SeqCst);
        Changes::Ranges(RangeSet::from_ranges(std::iter::once(100..200)))
    }));

    // First cycle: no committed manifest of ours, so the tracker is not asked.
    let (sent, received) = x.cycle(tracker.clone());
    let first = sent.unwrap();
    received.unwrap();
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "asked without our own base"
    );
    assert_eq!(first.tracker, "given");
    assert!(first.full_scan_reason.is_some(), "{first:?}");
    assert_eq!(first.bytes_read, SIZE as u64);
    assert!(x.target.contents() == x.source);

    // Two changes; the tracker reports only the first.
    x.source[150] ^= 0xFF;
    x.source[SIZE / 2] ^= 0xFF;
    x.write_source();
    let (sent, received) = x.cycle(tracker.clone());
    let second = sent.unwrap();
    received.unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(second.full_scan_reason, None);
    assert_eq!(
        second.bytes_read, BLOCK as u64,
        "one block read, widened from 100..200"
    );
    assert_eq!(second.ranges_scanned, 1);
    assert_eq!(second.blocks_changed, 1);
    let held = x.target.contents();
    assert_eq!(held[150], x.source[150], "the reported change was shipped");
    assert_ne!(
        held[SIZE / 2],
        x.source[SIZE / 2],
        "the unreported change was not read"
    );

    // A full scan (what an audit does) finds and ships the missed change.
    let (sent, received) = x.cycle(Arc::new(FullScan));
    let third = sent.unwrap();
    received.unwrap();
    assert_eq!(third.blocks_changed, 1);
    assert!(x.target.contents() == x.source);
    assert_eq!(x.target.size(), SIZE as u64);
}

/// A tracker that misses a change is caught by the audit: the block it did not report is
/// counted as a tracking fault and shipped, and the target converges.
#[test]
fn an_audit_catches_a_tracker_that_misses_a_change() {
    let mut x = Setup::new(11, 251, 0);
    let missing = Arc::new(Given::new(|_since| {
        Changes::Ranges(RangeSet::from_ranges(std::iter::once(0..4096)))
    }));
    let (sent, _) = x.cycle(missing.clone());
    let first = sent.unwrap();
    assert!(!first.audit, "the first cycle scans everything anyway");
    assert_eq!(first.bytes_read, SIZE as u64);

    x.source[10] ^= 1; // reported
    x.source[3 * BLOCK as usize + 5] ^= 1; // missed
    x.source[7 * BLOCK as usize] ^= 1; // missed, in another block
    x.write_source();
    x.rig.audit.set(crate::sender::audit::AuditPolicy {
        always: true,
        ..Default::default()
    });
    let (sent, received) = x.cycle(missing);
    let report = sent.unwrap();
    received.unwrap();
    assert!(report.audit, "{report:?}");
    assert_eq!(report.bytes_read, SIZE as u64, "an audit reads everything");
    assert_eq!(report.tracking_faults, 2, "{report:?}");
    assert_eq!(report.blocks_changed, 3);
    assert!(
        x.target.contents() == x.source,
        "the audit repaired what the tracker missed"
    );
}

/// A tracker that reports bytes 100..200 (of block 0) and a few bytes of block 5, which the
/// read-ahead tests never change; returns it and block 5's offset.
fn reporting_an_unchanged_block() -> (Arc<Given>, u64) {
    let unchanged_block = 5 * BLOCK as u64;
    let tracker = Arc::new(Given::new(move |_since| {
        Changes::Ranges(RangeSet::from_ranges([
            100..200,
            unchanged_block + 10..unchanged_block + 20,
        ]))
    }));
    (tracker, unchanged_block)
}

/// A tracked cycle lists the tracker's ranges to the receiver (`Prefetch`) before its data,
/// and the receiver starts reading them from its target: even a reported block that turns out
/// unchanged (so no op ever names it) is read ahead. A full scan lists nothing.
#[test]
fn a_tracked_cycle_has_the_receiver_read_its_ranges_ahead() {
    let mut x = Setup::new(13, 241, 0);
    let (tracker, unchanged_block) = reporting_an_unchanged_block();
    let (sent, received) = x.cycle(tracker.clone());
    sent.unwrap();
    received.unwrap();
    let read_ahead =
        |from: usize| -> Vec<std::ops::Range<u64>> { x.target.prefetched()[from..].to_vec() };
    let unchanged = unchanged_block..unchanged_block + BLOCK as u64;
    assert!(
        !read_ahead(0).contains(&unchanged),
        "the first cycle (a full scan) lists nothing"
    );

    x.source[150] ^= 0xFF;
    x.write_source();
    let before = x.target.prefetched().len();
    let (sent, received) = x.cycle(tracker);
    let report = sent.unwrap();
    received.unwrap();
    assert_eq!(report.full_scan_reason, None);
    assert_eq!(report.blocks_changed, 1);
    let hinted = read_ahead(before);
    assert!(hinted.contains(&(0..BLOCK as u64)), "{hinted:?}");
    assert!(hinted.contains(&unchanged), "{hinted:?}");
    assert!(x.target.contents() == x.source);

    let before = x.target.prefetched().len();
    x.source[3 * BLOCK as usize] ^= 0xFF;
    x.write_source();
    let (sent, received) = x.cycle(Arc::new(FullScan));
    sent.unwrap();
    received.unwrap();
    assert!(
        !read_ahead(before).contains(&unchanged),
        "a full scan lists nothing: {:?}",
        read_ahead(before)
    );
    assert!(x.target.contents() == x.source);
}

/// Each destination of a fan-out is told its tracked ranges (`Prefetch`) as one destination
/// is, so that its receiver reads them from its target ahead: even a reported block that
/// turns out unchanged.
#[test]
fn each_destination_of_a_fanout_reads_its_ranges_ahead() {
    let mut x = Setup::new(13, 241, 0);
    let (tracker, unchanged_block) = reporting_an_unchanged_block();
    let targets = [x.target.clone(), Arc::new(MemTarget::new(vec![0; SIZE]))];
    let images = [x.image.clone(), Default::default()];
    let fanout = |x: &Setup| {
        let dests = targets
            .iter()
            .zip(&images)
            .map(|(target, image)| {
                let store = CrashStore::new(Power::new(None), image.clone());
                (target.clone() as Arc<dyn BlockTarget>, Box::new(store) as _)
            })
            .collect();
        let (sent, received) = x.rig.fanout_cycle(dests, tracker.clone());
        received.into_iter().for_each(|r| r.unwrap());
        sent.into_iter().map(Result::unwrap).collect::<Vec<_>>()
    };
    for report in fanout(&x) {
        assert!(report.full_scan_reason.is_some(), "{report:?}");
    }
    let unchanged = unchanged_block..unchanged_block + BLOCK as u64;
    for target in &targets {
        assert!(
            !target.prefetched().contains(&unchanged),
            "a full scan lists nothing"
        );
    }

    x.source[150] ^= 0xFF;
    x.write_source();
    let before: Vec<usize> = targets.iter().map(|t| t.prefetched().len()).collect();
    for report in fanout(&x) {
        assert_eq!(report.full_scan_reason, None, "{report:?}");
        assert_eq!(report.blocks_changed, 1);
    }
    for (target, before) in targets.iter().zip(before) {
        let hinted = target.prefetched()[before..].to_vec();
        assert!(hinted.contains(&(0..BLOCK as u64)), "{hinted:?}");
        assert!(hinted.contains(&unchanged), "{hinted:?}");
        assert!(target.contents() == x.source);
    }
}

/// A tracked cycle refines its changed blocks: only the changed 4 KiB are shipped, wherever
/// the changed blocks lie in a chunk (sub-block hashes made with another key, or of the wrong
/// sub-blocks, would ship whole blocks: still correct, but not small).
#[test]
fn a_tracked_cycle_ships_only_the_changed_sub_blocks() {
    let mut x = Setup::new(29, 239, 0);
    let block = BLOCK as usize;
    // Two sub-blocks of block 2, one of block 7 (its last), and all of block 9.
    let changed = [2 * block + 4096, 2 * block + 9 * 4096 + 17, 8 * block - 1];
    let tracker = Arc::new(Given::new(move |_since| {
        // One range: the changed blocks lie at several places of one chunk.
        Changes::Ranges(RangeSet::from_ranges(Some(
            2 * BLOCK as u64..10 * BLOCK as u64,
        )))
    }));
    let (sent, received) = x.cycle(tracker.clone());
    sent.unwrap();
    received.unwrap();

    for at in changed {
        x.source[at] ^= 0xFF;
    }
    x.source[9 * block..10 * block]
        .iter_mut()
        .for_each(|b| *b ^= 0x55);
    x.write_source();
    let (sent, received) = x.cycle(tracker);
    let report = sent.unwrap();
    received.unwrap();
    assert_eq!(report.full_scan_reason, None);
    assert_eq!(report.blocks_changed, 3);
    assert_eq!(report.blocks_refined, 3);
    assert_eq!(report.bytes_changed, 3 * 4096 + BLOCK as u64);
    assert!(x.target.contents() == x.source);
}

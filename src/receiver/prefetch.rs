//! Reading the target ahead of a tracked cycle's refinements. The sender lists the block runs
//! its change tracker reported (`Prefetch`) before the cycle's data; each refined run is read
//! from the target to answer its `Refine`, and those reads, one at a time on the apply
//! thread, would otherwise wait on the disk one after another (measured: 14,279 scattered
//! 64 KiB reads of a cold 10 GiB target took 3.2 s one at a time, 1.3 s with 128 hinted
//! ahead). The prefetcher keeps the kernel reading up to [`AHEAD_BYTES`] of the listed runs
//! ahead of the sender's position, so the target's reads overlap the source's and each
//! other. Advisory only: it never changes the target, and a run that is never reached costs
//! one read.

use std::collections::VecDeque;
use std::ops::Range;

use super::apply::Applier;
use super::error::{ReceiveError, Violation};

/// Bytes of listed runs kept in flight (hinted, not yet passed) ahead of the sender. Deep
/// enough that the receiver rarely waits on a read (128 blocks of 64 KiB), and no deeper: the
/// target's reads share the disk with the sender's source reads, which the cycle waits on
/// (measured on the 1,000,000-file change cycle, alternated: 8 MiB took 0.74-1.0x the wall
/// time of 64 MiB, the sender waiting 3.1-4.7 s for its reads instead of 5.7-6.1 s).
pub const AHEAD_BYTES: u64 = 8 << 20;
/// Most runs one cycle may list (16 bytes each, on the wire and held): a bound on the
/// receiver's memory, whatever the sender sends (the sender lists no more).
pub const MAX_RUNS_PER_CYCLE: usize = crate::transport::frame::MAX_PREFETCH_RUNS_PER_CYCLE;
/// Longest piece hinted at once, in bytes (a long run is hinted piece by piece).
const PIECE_BYTES: u64 = 1 << 20;

/// The listed runs of one cycle, in blocks.
#[derive(Default)]
pub struct Prefetcher {
    /// Listed, not hinted yet.
    waiting: VecDeque<Range<u64>>,
    /// Hinted, not yet passed by the sender's position.
    hinted: VecDeque<Range<u64>>,
    hinted_bytes: u64,
    /// Runs listed so far this cycle.
    listed: usize,
    /// The furthest block an op started at.
    position: u64,
}

impl Prefetcher {
    /// Adds listed runs, after checking that each lies on the target, then hints what the
    /// window allows.
    pub fn add(&mut self, runs: &[(u64, u64)], applier: &Applier<'_>) -> Result<(), ReceiveError> {
        self.listed += runs.len();
        if self.listed > MAX_RUNS_PER_CYCLE {
            return Err(Violation::TooManyPrefetchRuns {
                max: MAX_RUNS_PER_CYCLE,
            }
            .into());
        }
        for &(first_block, count) in runs {
            applier.check_run(first_block, count)?;
            self.waiting.push_back(first_block..first_block + count);
        }
        self.fill(applier);
        Ok(())
    }

    /// The sender's ops have reached `first_block`: forgets the runs behind it and hints
    /// more ahead of it.
    pub fn advance(&mut self, first_block: u64, applier: &Applier<'_>) {
        if first_block <= self.position || (self.waiting.is_empty() && self.hinted.is_empty()) {
            return;
        }
        self.position = first_block;
        let block_size = applier.block_size();
        while let Some(run) = self.hinted.front() {
            if run.end > first_block {
                break;
            }
            self.hinted_bytes -= (run.end - run.start) * block_size;
            self.hinted.pop_front();
        }
        self.fill(applier);
    }

    /// Hints listed runs, a piece of at most [`PIECE_BYTES`] at a time, until the window is
    /// full.
    fn fill(&mut self, applier: &Applier<'_>) {
        let block_size = applier.block_size();
        let piece_blocks = (PIECE_BYTES / block_size).max(1);
        while self.hinted_bytes < AHEAD_BYTES {
            let Some(run) = self.waiting.front_mut() else {
                return;
            };
            // What the sender has passed is not read.
            run.start = run.start.max(self.position);
            if run.is_empty() {
                self.waiting.pop_front();
                continue;
            }
            let piece = run.start..run.end.min(run.start + piece_blocks);
            run.start = piece.end;
            if run.is_empty() {
                self.waiting.pop_front();
            }
            applier.prefetch(piece.start, piece.end - piece.start);
            self.hinted_bytes += (piece.end - piece.start) * block_size;
            self.hinted.push_back(piece);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdiff::manifest::Manifest;
    use crate::target::MemTarget;

    const BLOCK: u64 = 65536;
    /// Blocks per piece (16) and per window (128).
    const PIECE: u64 = PIECE_BYTES / BLOCK;
    const WINDOW: u64 = AHEAD_BYTES / BLOCK;

    /// 512 blocks of 64 KiB (32 MiB: four windows).
    fn with_applier(test: impl FnOnce(&Applier<'_>, &MemTarget)) {
        let target = MemTarget::new(vec![0; 512 * BLOCK as usize]);
        let mut manifest = Manifest::zeroed(BLOCK as u32, 512 * BLOCK);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let applier = Applier::new(&target, &mut manifest, &pool);
        test(&applier, &target);
    }

    fn blocks(range: &Range<u64>) -> Range<u64> {
        range.start / BLOCK..range.end / BLOCK
    }

    #[test]
    fn hints_listed_runs_up_to_the_window_then_as_the_sender_advances() {
        assert_eq!((PIECE, WINDOW), (16, 128));
        with_applier(|applier, target| {
            let mut prefetcher = Prefetcher::default();
            prefetcher
                .add(&[(0, 1), (10, 2), (100, 300)], applier)
                .unwrap();
            // 1 + 2 blocks, then pieces of 16 until the window is full: 131 blocks.
            let hinted: Vec<_> = target.prefetched().iter().map(blocks).collect();
            assert_eq!(hinted.len(), 10);
            assert_eq!(hinted[..3], [0..1, 10..12, 100..116]);
            assert_eq!(hinted[9], 212..228);
            assert_eq!(prefetcher.hinted_bytes, 131 * BLOCK);
            // At block 150, 51 blocks are behind; three more pieces fill the window again.
            prefetcher.advance(150, applier);
            let hinted: Vec<_> = target.prefetched().iter().map(blocks).collect();
            assert_eq!(hinted.len(), 13);
            assert_eq!(hinted[12], 260..276);
            assert_eq!(prefetcher.hinted_bytes, WINDOW * BLOCK);
        });
    }

    #[test]
    fn never_more_than_the_window_ahead() {
        with_applier(|applier, target| {
            let mut prefetcher = Prefetcher::default();
            prefetcher.add(&[(0, 512)], applier).unwrap();
            assert_eq!(target.prefetched().len(), 8);
            assert_eq!(prefetcher.hinted_bytes, AHEAD_BYTES);
            // The sender's ops reach block 16: the first piece is behind, one more goes out.
            prefetcher.advance(16, applier);
            let hinted = target.prefetched();
            assert_eq!(hinted.len(), 9);
            assert_eq!(blocks(&hinted[8]), 128..144);
            // An op behind the position changes nothing.
            prefetcher.advance(10, applier);
            assert_eq!(target.prefetched().len(), 9);
            // A jump to block 300: what lies between is never read; a window from 300 is.
            prefetcher.advance(300, applier);
            let hinted = target.prefetched();
            assert_eq!(hinted.len(), 17);
            assert_eq!(blocks(&hinted[9]), 300..316);
            assert_eq!(blocks(&hinted[16]), 412..428);
            // The end: nothing past the sender is left to hint.
            prefetcher.advance(512, applier);
            assert_eq!(target.prefetched().len(), 17);
        });
    }

    #[test]
    fn a_run_off_the_target_is_refused() {
        with_applier(|applier, _| {
            let mut prefetcher = Prefetcher::default();
            assert!(prefetcher.add(&[(511, 2)], applier).is_err());
            assert!(prefetcher.add(&[(u64::MAX, 1)], applier).is_err());
        });
    }
}

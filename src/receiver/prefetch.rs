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

/// Bytes of listed runs kept in flight (hinted, not yet passed) ahead of the sender.
pub const AHEAD_BYTES: u64 = 64 << 20;
/// Most runs one cycle may list (16 bytes each, on the wire and held): a bound on the
/// receiver's memory, whatever the sender sends (the sender lists no more).
pub const MAX_RUNS_PER_CYCLE: usize = crate::transport::frame::MAX_PREFETCH_RUNS_PER_CYCLE;
/// Longest piece hinted at once, in bytes (a long run is hinted piece by piece).
const PIECE_BYTES: u64 = 4 << 20;

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

    /// 2,048 blocks of 64 KiB (128 MiB: twice the window).
    fn with_applier(test: impl FnOnce(&Applier<'_>, &MemTarget)) {
        let target = MemTarget::new(vec![0; 128 << 20]);
        let mut manifest = Manifest::zeroed(65536, 128 << 20);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let applier = Applier::new(&target, &mut manifest, &pool);
        test(&applier, &target);
    }

    #[test]
    fn hints_listed_runs_up_to_the_window_then_as_the_sender_advances() {
        with_applier(|applier, target| {
            let mut prefetcher = Prefetcher::default();
            // 1,024 blocks of 64 KiB listed in 4 runs: the window (64 MiB) takes all of them.
            prefetcher
                .add(&[(0, 1), (10, 2), (100, 500), (700, 321)], applier)
                .unwrap();
            let hinted = target.prefetched();
            assert_eq!(hinted.first(), Some(&(0..65536)));
            assert_eq!(
                hinted.iter().map(|r| r.end - r.start).sum::<u64>(),
                824 * 65536
            );
            assert_eq!(prefetcher.hinted_bytes, 824 * 65536);
            prefetcher.advance(600, applier);
            assert_eq!(prefetcher.hinted_bytes, 321 * 65536);
        });
    }

    #[test]
    fn never_more_than_the_window_ahead() {
        with_applier(|applier, target| {
            let mut prefetcher = Prefetcher::default();
            prefetcher.add(&[(0, 2048)], applier).unwrap();
            // 64 MiB in pieces of 4 MiB (64 blocks).
            assert_eq!(target.prefetched().len(), 16);
            assert_eq!(prefetcher.hinted_bytes, AHEAD_BYTES);
            // The sender's ops reach block 64: the first piece is behind, one more goes out.
            prefetcher.advance(64, applier);
            let hinted = target.prefetched();
            assert_eq!(hinted.len(), 17);
            assert_eq!(hinted[16], (1024 * 65536)..(1088 * 65536));
            // An op behind the position changes nothing.
            prefetcher.advance(10, applier);
            assert_eq!(target.prefetched().len(), 17);
            // At block 1000, 15 pieces are behind: 14 more go out (2 were still ahead).
            prefetcher.advance(1000, applier);
            let hinted = target.prefetched();
            assert_eq!(hinted.len(), 31);
            assert_eq!(hinted[30], (1920 * 65536)..(1984 * 65536));
            // A piece the sender has already passed is never hinted.
            prefetcher.advance(2048, applier);
            assert_eq!(target.prefetched().len(), 31);
        });
    }

    #[test]
    fn a_run_off_the_target_is_refused() {
        with_applier(|applier, _| {
            let mut prefetcher = Prefetcher::default();
            assert!(prefetcher.add(&[(2047, 2)], applier).is_err());
            assert!(prefetcher.add(&[(u64::MAX, 1)], applier).is_err());
        });
    }
}

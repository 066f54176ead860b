//! Block-level change detection: the [`manifest`] (one hash per block), the parallel [`scan`]
//! of a source over a set of [`ranges`] (BLAKE3 on the reader threads), the pure [`diff`] of
//! two hash lists and [`plan`] of how each changed run travels, [`refine`]ment of changed runs
//! down to 4 KiB sub-blocks, and [`delta::Op`], the engines' unit of change.
//! Nothing here touches the network or prints.

pub mod delta;
pub mod diff;
pub mod manifest;
pub mod plan;
pub mod ranges;
pub mod refine;
pub mod scan;

/// Hashing or compression of fewer bytes than this runs on the calling thread rather than on
/// a thread pool. Handing one 64 KiB block to a pool (the usual size of a tracked change)
/// costs more than the work: the caller sleeps on a latch, the pool's threads wake, and when
/// they run out of work they spin in `sched_yield` before sleeping again, taking the CPU the
/// readers and the other end need (measured on the 1,000,000-file change cycle: 10% of its CPU
/// in `sched_yield`, two pool hand-offs per refined block).
pub const PARALLEL_MIN_BYTES: usize = 1 << 20;

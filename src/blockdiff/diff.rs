//! The pure diff: which blocks of a new hash list differ from a base, as runs of data blocks
//! and runs of zero blocks. No I/O; property-tested (`diff(a, a)` is empty, applying
//! `diff(a, b)` to `a` yields `b`).

use super::manifest::BlockHash;

/// A run of consecutive changed blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// Blocks whose new content must be shipped.
    Data {
        /// Index of the run's first block.
        first_block: u64,
        /// Number of blocks in the run (at least 1).
        count: u64,
    },
    /// Blocks that are now all zeros.
    Zero {
        /// Index of the run's first block.
        first_block: u64,
        /// Number of blocks in the run (at least 1).
        count: u64,
    },
}

impl Run {
    /// Index of the run's first block, whatever its kind.
    pub fn first_block(&self) -> u64 {
        match *self {
            Run::Data { first_block, .. } | Run::Zero { first_block, .. } => first_block,
        }
    }
    /// Number of blocks in the run, whatever its kind.
    pub fn count(&self) -> u64 {
        match *self {
            Run::Data { count, .. } | Run::Zero { count, .. } => count,
        }
    }
}

/// Is block `index` (hash `new`) changed relative to `base`? Blocks past the base's end are.
pub fn block_changed(base: &[BlockHash], index: u64, new: &BlockHash) -> bool {
    base.get(index as usize) != Some(new)
}

/// Changed runs within `new` (hashes of blocks `first_block..`), split into data runs of at
/// most `max_data_blocks` and zero runs of any length. `zero[i]` says block i is all zeros.
pub fn changed_runs(
    base: &[BlockHash],
    first_block: u64,
    new: &[BlockHash],
    zero: &[bool],
    max_data_blocks: u64,
) -> Vec<Run> {
    assert_eq!(new.len(), zero.len());
    let mut runs: Vec<Run> = Vec::new();
    for (i, hash) in new.iter().enumerate() {
        let index = first_block + i as u64;
        if !block_changed(base, index, hash) {
            continue;
        }
        extend_runs(&mut runs, index, zero[i], max_data_blocks);
    }
    runs
}

/// Appends block `index` to the last run when it continues it, else starts a new run.
pub fn extend_runs(runs: &mut Vec<Run>, index: u64, is_zero: bool, max_data_blocks: u64) {
    match (runs.last_mut(), is_zero) {
        (Some(Run::Zero { first_block, count }), true) if *first_block + *count == index => {
            *count += 1
        }
        (Some(Run::Data { first_block, count }), false)
            if *first_block + *count == index && *count < max_data_blocks =>
        {
            *count += 1
        }
        (_, true) => runs.push(Run::Zero {
            first_block: index,
            count: 1,
        }),
        (_, false) => runs.push(Run::Data {
            first_block: index,
            count: 1,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdiff::manifest::{block_count, block_len, hash_block, is_zero};
    use proptest::prelude::*;

    const BS: usize = 4096;

    fn hashes_of(data: &[u8]) -> (Vec<BlockHash>, Vec<bool>) {
        let n = block_count(data.len() as u64, BS as u32);
        (0..n)
            .map(|i| {
                let start = i as usize * BS;
                let len = block_len(data.len() as u64, BS as u32, i);
                let block = &data[start..start + len];
                (hash_block(block), is_zero(block))
            })
            .unzip()
    }

    /// Applies runs to `a`, taking data blocks from `b`: what a receiver does.
    fn apply(a: &[u8], b: &[u8], runs: &[Run]) -> Vec<u8> {
        let mut out = a.to_vec();
        out.resize(b.len(), 0xAA); // grown area holds garbage until written
        for run in runs {
            let start = run.first_block() as usize * BS;
            let end = ((run.first_block() + run.count()) as usize * BS).min(b.len());
            match run {
                Run::Data { .. } => out[start..end].copy_from_slice(&b[start..end]),
                Run::Zero { .. } => out[start..end].fill(0),
            }
        }
        out
    }

    fn device() -> impl Strategy<Value = Vec<u8>> {
        (0usize..40, any::<u64>()).prop_map(|(blocks, seed)| {
            let mut state = seed;
            let mut data = vec![0u8; blocks * BS + (seed % 3000) as usize];
            for chunk in data.chunks_mut(BS) {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if state >> 62 != 0 {
                    chunk.fill((state >> 32) as u8 | 1);
                }
            }
            data
        })
    }

    fn mutate(a: &[u8], edits: &[(usize, u8)], grow: usize) -> Vec<u8> {
        let mut b = a.to_vec();
        b.extend(std::iter::repeat_n(7u8, grow));
        for &(pos, val) in edits {
            if !b.is_empty() {
                let p = pos % b.len();
                if val == 0 {
                    let start = p / BS * BS;
                    let end = (start + BS).min(b.len());
                    b[start..end].fill(0);
                } else {
                    b[p] = val;
                }
            }
        }
        b
    }

    proptest! {
        #[test]
        fn diff_of_identical_is_empty(a in device()) {
            let (h, z) = hashes_of(&a);
            prop_assert!(changed_runs(&h, 0, &h, &z, 8).is_empty());
        }

        #[test]
        fn applying_diff_yields_new(a in device(), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..20), grow in 0usize..20000, max in 1u64..6) {
            let b = mutate(&a, &edits, grow);
            let (ha, _) = hashes_of(&a);
            let (hb, zb) = hashes_of(&b);
            let runs = changed_runs(&ha, 0, &hb, &zb, max);
            prop_assert_eq!(apply(&a, &b, &runs), b.clone());
            for run in &runs {
                if let Run::Data { count, .. } = run { prop_assert!(*count <= max); }
                for i in run.first_block()..run.first_block() + run.count() {
                    // never ships an unchanged block
                    prop_assert!(block_changed(&ha, i, &hb[i as usize]));
                }
            }
        }

        #[test]
        fn chunked_diff_equals_whole(a in device(), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..20), split in 1usize..10) {
            let b = mutate(&a, &edits, 0);
            let (ha, _) = hashes_of(&a);
            let (hb, zb) = hashes_of(&b);
            let mut runs = Vec::new();
            for (c, (hc, zc)) in hb.chunks(split).zip(zb.chunks(split)).enumerate() {
                let first = (c * split) as u64;
                for (i, h) in hc.iter().enumerate() {
                    if block_changed(&ha, first + i as u64, h) {
                        extend_runs(&mut runs, first + i as u64, zc[i], 4);
                    }
                }
            }
            prop_assert_eq!(runs, changed_runs(&ha, 0, &hb, &zb, 4));
        }
    }
}

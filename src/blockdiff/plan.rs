//! Planning a scanned chunk against the base manifest: which runs of blocks changed, and how
//! each should travel: as zeros, shipped whole, or refined to 4 KiB (only worth a round trip
//! when the target holds data there to compare with). Pure; the packer on the sender turns
//! the steps into [`super::delta::Op`]s.

use super::diff::{changed_runs, Run};
use super::manifest::{block_len, zero_block_hash, BlockHash, Manifest};

/// How one changed run travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The blocks now read as zeros.
    Zero {
        /// First block of the run.
        first_block: u64,
        /// Blocks in the run.
        count: u64,
    },
    /// Ship the blocks whole.
    Ship {
        /// First block of the run.
        first_block: u64,
        /// Blocks in the run.
        count: u64,
    },
    /// Ask the target which 4 KiB sub-blocks differ, then ship only those.
    Refine {
        /// First block of the run.
        first_block: u64,
        /// Blocks in the run.
        count: u64,
    },
}

/// What planning needs besides the chunk.
#[derive(Clone, Copy, Debug)]
pub struct PlanOptions {
    /// Longest run of data blocks in one step (an extent's size).
    pub max_blocks: u64,
    /// Whether the receiver can refine (and blocks are larger than a sub-block).
    pub refine: bool,
}

/// The steps for the blocks `first_block..` whose new hashes are `hashes` (`zero[i]`: block i
/// is all zeros), against `base` (the manifest of what the target holds).
pub fn plan_chunk(
    base: &Manifest,
    first_block: u64,
    hashes: &[BlockHash],
    zero: &[bool],
    options: PlanOptions,
) -> Vec<Step> {
    changed_runs(base.hashes(), first_block, hashes, zero, options.max_blocks)
        .into_iter()
        .map(|run| match run {
            Run::Zero { first_block, count } => Step::Zero { first_block, count },
            Run::Data { first_block, count }
                if options.refine && holds_data(base, first_block, count) =>
            {
                Step::Refine { first_block, count }
            }
            Run::Data { first_block, count } => Step::Ship { first_block, count },
        })
        .collect()
}

/// Does the target hold data (not zeros) in any block of the run? Only then can refinement
/// find sub-blocks it need not ship; blocks past the base's end hold nothing yet.
fn holds_data(base: &Manifest, first_block: u64, count: u64) -> bool {
    if first_block + count > base.block_count() {
        return false;
    }
    let full_zero = zero_block_hash(base.block_size as usize);
    (first_block..first_block + count).any(|i| {
        let len = block_len(base.device_size, base.block_size, i);
        let zero = if len == base.block_size as usize {
            full_zero
        } else {
            zero_block_hash(len)
        };
        base.hash(i) != Some(&zero)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdiff::manifest::hash_block;

    #[test]
    fn refines_only_over_data_and_ships_zeros_as_zeros() {
        let bs = 8192u32;
        let data = hash_block(&[1u8; 8192]);
        let other = hash_block(&[2u8; 8192]);
        let zero = zero_block_hash(8192);
        // Target: data, zeros, data, zeros.
        let base = Manifest::from_hashes(bs, 4 * 8192, vec![data, zero, data, zero]);
        // New: changed data over data, changed data over zeros, zeros over data, same zeros.
        let new = [other, other, zero, zero];
        let zeros = [false, false, true, true];
        let options = PlanOptions {
            max_blocks: 1,
            refine: true,
        };
        let steps = plan_chunk(&base, 0, &new, &zeros, options);
        assert_eq!(
            steps,
            vec![
                Step::Refine {
                    first_block: 0,
                    count: 1
                },
                Step::Ship {
                    first_block: 1,
                    count: 1
                },
                Step::Zero {
                    first_block: 2,
                    count: 1
                },
            ]
        );
        let plain = plan_chunk(
            &base,
            0,
            &new,
            &zeros,
            PlanOptions {
                refine: false,
                ..options
            },
        );
        assert!(matches!(plain[0], Step::Ship { .. }));
    }
}

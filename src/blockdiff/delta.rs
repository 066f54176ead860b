//! The engine's unit of change: what the sender's packer produces and the receiver's applier
//! consumes. The engines speak these types; only the frame codec
//! ([`crate::transport::frame`]) turns them into wire messages and back.

use super::manifest::BlockHash;
use super::refine::SubHash;

/// The bytes of a run as shipped: zstd-compressed or raw, with their plaintext length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Plaintext length (what decompression must yield, exactly).
    pub raw_len: u32,
    /// Whether `bytes` is a zstd frame (else it is the plaintext itself).
    pub compressed: bool,
    /// What travels.
    pub bytes: Vec<u8>,
}

/// One change to apply to a target, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Whole blocks with new content: `hashes` of each plaintext block, `payload` their bytes.
    Data {
        /// First block of the run.
        first_block: u64,
        /// Hash of every block of the run, checked before anything is written.
        hashes: Vec<BlockHash>,
        /// The run's bytes.
        payload: Payload,
    },
    /// Blocks that now read as zeros.
    Zero {
        /// First block of the run.
        first_block: u64,
        /// Blocks in the run.
        block_count: u64,
    },
    /// The key of this cycle's sub-block hashes (before the first `Refine`).
    RefineKey {
        /// 32 random bytes, new every cycle.
        key: [u8; 32],
    },
    /// These blocks changed; here are the keyed 4 KiB sub-block hashes of their new content.
    /// The target answers which of its sub-blocks differ ([`RefineAnswer`]).
    Refine {
        /// First block of the run.
        first_block: u64,
        /// Blocks in the run.
        block_count: u32,
        /// One short keyed hash per 4 KiB sub-block of the run's new content.
        sub_hashes: Vec<SubHash>,
    },
    /// The differing sub-blocks of a refined run, with the run's whole-block hashes.
    Patch {
        /// First block of the run (as in its `Refine`).
        first_block: u64,
        /// Hash of every block of the run after patching.
        hashes: Vec<BlockHash>,
        /// Bit i set: sub-block i is in the payload.
        bitmap: Vec<u8>,
        /// The selected sub-blocks, concatenated.
        payload: Payload,
    },
}

impl Op {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Data { .. } => "Extent",
            Op::Zero { .. } => "ZeroRun",
            Op::RefineKey { .. } => "RefineKey",
            Op::Refine { .. } => "Refine",
            Op::Patch { .. } => "Patch",
        }
    }

    /// The first block of an op that moves the sender's scan position: `Data`, `Zero` and
    /// `Refine` come in block order; a `Patch` trails its `Refine`.
    pub fn leading_block(&self) -> Option<u64> {
        match self {
            Op::Data { first_block, .. }
            | Op::Zero { first_block, .. }
            | Op::Refine { first_block, .. } => Some(*first_block),
            Op::RefineKey { .. } | Op::Patch { .. } => None,
        }
    }

    /// Payload bytes the op holds in memory.
    pub fn payload_len(&self) -> usize {
        match self {
            Op::Data { payload, .. } | Op::Patch { payload, .. } => payload.bytes.len(),
            _ => 0,
        }
    }
}

/// The target's answer to a [`Op::Refine`]: bit i set when sub-block i differs there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefineAnswer {
    /// First block of the refined run.
    pub first_block: u64,
    /// One bit per 4 KiB sub-block of the run.
    pub bitmap: Vec<u8>,
}

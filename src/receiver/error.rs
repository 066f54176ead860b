//! Why a session or a cycle failed on the receiving side, and whether the next cycle may
//! succeed (see the policy in [`crate::error`]).

use std::path::PathBuf;

use crate::target::TargetError;
use crate::transport::TransportError;

/// Why a session or cycle failed on the receiving side.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The connection failed, or the peer refused.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The target could not be opened, sized, read or written.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Another session holds the target.
    #[error("another sender is already mirroring to {0}; refusing a second one")]
    Busy(PathBuf),
    /// A state record or manifest could not be read or written.
    #[error("state of {path}: {source}")]
    State {
        /// The state file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A block's content does not match the hash the sender gave: corrupted in transit.
    #[error("block hash mismatch at byte {offset}: data corrupted in transit; cycle aborted")]
    BlockHashMismatch {
        /// Byte offset of the block on the device.
        offset: u64,
    },
    /// The sender broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(#[from] Violation),
    /// After applying everything, the target's root differs from the sender's.
    #[error("after applying generation {generation} the target's root {ours} differs from the sender's {theirs}")]
    RootMismatch {
        /// The generation applied.
        generation: u64,
        /// Our root (hex).
        ours: String,
        /// The sender's root (hex).
        theirs: String,
    },
    /// A sender announced a size larger than this receiver lets a file target grow to.
    #[error("the sender announced {announced} bytes for {target}, more than this receiver lets it grow to ({allowed} bytes: {why}); raise the limit with receive --max-size")]
    GrowthRefused {
        /// The target.
        target: PathBuf,
        /// The size announced.
        announced: u64,
        /// The largest size allowed.
        allowed: u64,
        /// Where that limit comes from.
        why: &'static str,
    },
    /// The target's generation counter cannot advance (its state names the largest one).
    #[error("generation counter of {target} is at its maximum ({generation}): its state is damaged; remove STATE/targets/<key>/state.json to rebuild it by hashing the target")]
    GenerationExhausted {
        /// The target.
        target: PathBuf,
        /// The committed generation its state names.
        generation: u64,
    },
    /// A sender named a target this receiver does not serve, or may not write.
    #[error("{0}")]
    Naming(#[from] NamingError),
    /// The worker threads could not be started.
    #[error("cannot start worker threads: {0}")]
    Threads(#[source] rayon::ThreadPoolBuildError),
    /// A stop was requested (signal) during the cycle.
    #[error("stopped on request")]
    Stopped,
}

impl ReceiveError {
    /// True when the next cycle may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            ReceiveError::Transport(e) => e.is_transient(),
            ReceiveError::Target(e) => e.is_transient(),
            ReceiveError::Busy(_)
            | ReceiveError::State { .. }
            | ReceiveError::BlockHashMismatch { .. }
            | ReceiveError::RootMismatch { .. } => true,
            ReceiveError::GenerationExhausted { .. }
            | ReceiveError::GrowthRefused { .. }
            | ReceiveError::Naming(_)
            | ReceiveError::Protocol(_)
            | ReceiveError::Threads(_)
            | ReceiveError::Stopped => false,
        }
    }

    /// True when this error was detected here (worth telling the peer), not a failure of the
    /// connection itself or the peer's own refusal.
    pub fn is_ours(&self) -> bool {
        match self {
            ReceiveError::Transport(e) => e.detected_here(),
            ReceiveError::Stopped => false,
            _ => true,
        }
    }
}

/// Why a sender cannot write the target it named (or did not name), checked before the
/// target is locked, opened or written.
#[derive(Debug, thiserror::Error)]
pub enum NamingError {
    /// A receiver of several targets (`--targets`), and the sender named none.
    #[error("this receiver serves several targets: name one in DEST (tls://HOST:PORT/NAME); you may write: {allowed}")]
    Unnamed {
        /// The names this peer may write, comma-separated (or "none").
        allowed: String,
    },
    /// No target of that name here (or not one this peer may write: the same answer, so a
    /// peer cannot learn the names it is not allowed).
    #[error("no target named {name:?} that peer {peer} may write here")]
    NotAllowed {
        /// The name asked for.
        name: String,
        /// The peer's certificate fingerprint.
        peer: String,
    },
    /// A receiver of one target, and the sender named one.
    #[error("this receiver serves one unnamed target ({target}): drop /{name} from DEST")]
    SingleTarget {
        /// The name the sender gave.
        name: String,
        /// The one target served.
        target: PathBuf,
    },
}

/// What a sender did wrong.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    /// A block size outside the accepted range.
    #[error("{0}")]
    BlockSize(String),
    /// A device too large for the receiver's limits.
    #[error("announced device of {device_size} bytes in {blocks} blocks exceeds the receiver's limits ({max_size} bytes, {max_blocks} blocks; use a larger --block-size)")]
    TooLarge {
        /// Announced size.
        device_size: u64,
        /// Blocks it makes.
        blocks: u64,
        /// Largest size accepted.
        max_size: u64,
        /// Most blocks accepted.
        max_blocks: u64,
    },
    /// More `Prefetch` runs in one cycle than a receiver holds.
    #[error("more than {max} prefetch runs in one cycle")]
    TooManyPrefetchRuns {
        /// The bound.
        max: usize,
    },
    /// A run of blocks that does not lie on the device.
    #[error("blocks {first_block}..+{count} lie outside the device ({blocks} blocks)")]
    OutsideDevice {
        /// First block named.
        first_block: u64,
        /// Blocks named.
        count: u64,
        /// Blocks on the device.
        blocks: u64,
    },
    /// An extent whose length does not match its blocks.
    #[error("extent at block {first_block} claims {claimed} bytes, its blocks hold {holds}")]
    ExtentLength {
        /// First block.
        first_block: u64,
        /// Length it claims.
        claimed: u32,
        /// Length its blocks hold.
        holds: usize,
    },
    /// A payload that does not decompress.
    #[error("{what} at block {first_block} does not decompress: {source}")]
    Decompress {
        /// "extent" or "patch".
        what: &'static str,
        /// First block.
        first_block: u64,
        /// zstd's error.
        #[source]
        source: std::io::Error,
    },
    /// A payload that decompresses to the wrong length.
    #[error("{what} at block {first_block} decompressed to {got} bytes, expected {expected}")]
    DecompressedLength {
        /// "extent" or "patch".
        what: &'static str,
        /// First block.
        first_block: u64,
        /// Bytes it gave.
        got: usize,
        /// Bytes announced.
        expected: u32,
    },
    /// A `Refine` before the cycle's `RefineKey`.
    #[error("Refine before RefineKey")]
    RefineBeforeKey,
    /// A `Refine` with the wrong number of sub-block hashes.
    #[error("refine at block {first_block} carries {hashes} sub-block hashes for {len} bytes")]
    SubHashCount {
        /// First block.
        first_block: u64,
        /// Hashes carried.
        hashes: usize,
        /// Bytes of the run.
        len: usize,
    },
    /// A `Patch` that does not match its run or bitmap.
    #[error("patch at block {first_block} does not match its run ({raw_len} bytes for {selected} selected)")]
    PatchMismatch {
        /// First block.
        first_block: u64,
        /// Plaintext length announced.
        raw_len: u32,
        /// Bytes its bitmap selects.
        selected: usize,
    },
    /// A message that has no place at this point of the protocol.
    #[error("unexpected {got} {during}")]
    Unexpected {
        /// The message's name.
        got: &'static str,
        /// Where it came ("during a cycle", ...).
        during: &'static str,
    },
    /// A cycle that ended under another generation than it started.
    #[error("cycle ended as generation {got}, expected {expected}")]
    GenerationMismatch {
        /// Generation in `CycleEnd`.
        got: u64,
        /// Generation of the cycle.
        expected: u64,
    },
}

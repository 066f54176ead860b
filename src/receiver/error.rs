//! Why a session or a cycle failed on the receiving side.

use std::path::PathBuf;

use crate::target::TargetError;
use crate::transport::TransportError;

/// Why a session or cycle failed on the receiving side.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("another sender is already mirroring to {0}; refusing a second one")]
    Busy(PathBuf),
    #[error("state of {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("block hash mismatch at byte {offset}: data corrupted in transit; cycle aborted")]
    BlockHashMismatch { offset: u64 },
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("after applying generation {generation} the target's root {ours} differs from the sender's {theirs}")]
    RootMismatch {
        generation: u64,
        ours: String,
        theirs: String,
    },
}

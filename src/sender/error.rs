//! Why a cycle failed on the sending side, and whether the next cycle may succeed.

use crate::snapshot::SnapshotError;
use crate::source::SourceError;
use crate::transport::frame::Message;
use crate::transport::TransportError;

/// Why a cycle failed on the sending side.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("read error: {0}")]
    Read(String),
    #[error("state {path}: {source}")]
    State {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("protocol violation by receiver: {0}")]
    Protocol(String),
    #[error("interrupted")]
    Cancelled,
}

impl SendError {
    /// True when the next cycle may succeed without the user changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            SendError::Transport(e) => e.is_transient(),
            SendError::Read(_) => true,
            _ => false,
        }
    }
}

pub(crate) fn unexpected(got: &Message, expected: &'static str) -> SendError {
    SendError::Transport(TransportError::Unexpected {
        got: got.name(),
        expected,
    })
}

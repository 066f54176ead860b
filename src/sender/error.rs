//! Why a cycle failed on the sending side, and whether the next cycle may succeed (see the
//! policy in [`crate::error`]).

use std::path::PathBuf;

use crate::snapshot::SnapshotError;
use crate::source::SourceError;
use crate::transport::frame::Message;
use crate::transport::TransportError;

/// Why a cycle failed on the sending side.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The source cannot be opened or examined.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The snapshot could not be taken, went bad, or could not be released.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The connection failed, or the receiver refused.
    #[error(transparent)]
    Transport(TransportError),
    /// Reading the frozen view failed.
    #[error("read error at byte {offset} of {path}: {source}")]
    Read {
        /// What was read.
        path: String,
        /// Where.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A sender state file could not be written.
    #[error("state {path}: {source}")]
    State {
        /// The state file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The receiver broke the protocol.
    #[error("protocol violation by receiver: {0}")]
    Protocol(#[from] Violation),
    /// No random bytes for the cycle's refinement key.
    #[error("no random bytes for the refinement key: {0}")]
    Randomness(#[source] getrandom::Error),
    /// The receiver cannot do what was asked.
    #[error("{0}")]
    Unsupported(&'static str),
    /// Fan-out: the read shared by the destinations failed; this destination did not get all
    /// of the cycle's data (the cause is logged, and reported by the other destinations).
    #[error("the shared read of the source failed: {0}")]
    SharedRead(String),
    /// A stop was requested (signal) during the cycle.
    #[error("stopped on request")]
    Stopped,
}

impl SendError {
    /// True when this error was found on the sender's side (a bad frame or message from the
    /// receiver, a source read error, a state that cannot be written...): the receiver is
    /// told in a `Refused` before the connection closes, so that its record names the cause.
    /// Not a failure of the connection itself, the receiver's own refusal, or a stop.
    pub fn is_ours(&self) -> bool {
        match self {
            SendError::Transport(e) => e.detected_here(),
            SendError::Stopped => false,
            _ => true,
        }
    }

    /// True when the next cycle may succeed without the user changing anything: network
    /// trouble, a read error of the frozen view, a snapshot that vanished or went bad during
    /// the cycle (the next takes a new one), state that could not be written (a full disk
    /// may be freed).
    pub fn is_transient(&self) -> bool {
        match self {
            SendError::Transport(e) => e.is_transient(),
            SendError::Snapshot(e) => e.is_transient(),
            SendError::Read { .. }
            | SendError::State { .. }
            | SendError::Randomness(_)
            | SendError::SharedRead(_) => true,
            SendError::Source(_)
            | SendError::Protocol(_)
            | SendError::Unsupported(_)
            | SendError::Stopped => false,
        }
    }
}

impl From<TransportError> for SendError {
    /// A stop noticed while waiting on the peer is a stop, not a transport failure.
    fn from(error: TransportError) -> Self {
        match error {
            TransportError::Stopped => SendError::Stopped,
            other => SendError::Transport(other),
        }
    }
}

/// What a receiver did wrong.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    /// A manifest chunk out of order or past the device's end.
    #[error("manifest chunk at block {first_block} of {count} hashes out of order or too long")]
    ManifestChunk {
        /// First block of the chunk.
        first_block: u64,
        /// Hashes in it.
        count: usize,
    },
    /// A manifest that ended short, or whose hashes do not give its root.
    #[error("receiver's manifest is incomplete or does not match its root")]
    ManifestRoot,
    /// A commit under another root than the one sent.
    #[error("receiver committed generation {generation} with another root than ours")]
    CommittedRoot {
        /// The generation.
        generation: u64,
    },
    /// A commit of another generation than the one sent.
    #[error("receiver committed generation {got}, expected {expected}")]
    CommittedGeneration {
        /// What it committed.
        got: u64,
        /// What was sent.
        expected: u64,
    },
    /// A committed generation that cannot be advanced (the counter is at its maximum).
    #[error(
        "receiver's generation counter is at its maximum ({generation}): its state is damaged"
    )]
    GenerationExhausted {
        /// The generation it reported.
        generation: u64,
    },
    /// A refinement answer that does not fit the run asked about.
    #[error("answer for block {got_block} with {got_bytes} bitmap bytes; expected block {block} with {bytes}")]
    RefineAnswer {
        /// Block it answers for.
        got_block: u64,
        /// Bitmap bytes it carries.
        got_bytes: usize,
        /// Block asked about.
        block: u64,
        /// Bitmap bytes expected.
        bytes: usize,
    },
}

/// A message other than the one the cycle waits for.
pub(crate) fn unexpected(got: &Message, expected: &'static str) -> SendError {
    SendError::Transport(TransportError::Unexpected {
        got: got.name(),
        expected,
    })
}

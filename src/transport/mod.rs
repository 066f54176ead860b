//! The wire: frame encoding ([`frame`]), a framed [`Connection`] over any async byte stream,
//! and the streams themselves: in-process ([`local`]), `ssh` child stdio ([`ssh`]) and mutual
//! TLS over TCP with pinned certificate fingerprints ([`tls`]). [`dest`] parses `DEST` URLs.
//!
//! Nothing here knows about cycles or targets. The engines run on their own threads and see a
//! connection as an [`Endpoint`]: blocking `send` and `recv` with bounds, pumped by async tasks.

mod connection;
pub mod dest;
mod endpoint;
pub mod frame;
pub mod local;
pub mod ssh;
pub mod tls;

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

pub use connection::{Connection, FrameReader, FrameWriter};
pub use endpoint::{Endpoint, EndpointOptions};
use frame::FrameError;

/// Any bidirectional byte stream a connection can run over.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

/// A boxed byte stream (TCP+TLS, ssh stdio, in-process duplex).
pub type BoxStream = Box<dyn ByteStream>;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("peer closed the connection")]
    Closed,
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
    #[error("peer speaks protocol version {theirs}; this blkmirror speaks version {ours}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("peer refused: {0}")]
    Refused(String),
    #[error("unexpected {got} from peer while waiting for {expected}")]
    Unexpected {
        got: &'static str,
        expected: &'static str,
    },
    /// The peer sent nothing (or read nothing) for longer than the configured bound.
    #[error("peer silent for {secs} s while {waiting}: giving up")]
    PeerSilent { secs: u64, waiting: &'static str },
    /// A stop was requested (signal) while waiting on the peer.
    #[error("stopped on request")]
    Stopped,
}

impl TransportError {
    /// True when retrying later may succeed (network trouble rather than a refusal).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransportError::Io(_) | TransportError::Closed | TransportError::PeerSilent { .. }
        )
    }
}

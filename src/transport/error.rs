//! Errors shared by the transports: [`TransportError`] (a framed connection failed) and
//! [`IoCause`], the form in which transport errors keep an [`io::Error`] as their source.

use std::fmt;
use std::io;

use super::frame::FrameError;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Reading or writing the stream failed.
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    /// The stream ended (at a frame boundary or inside a frame).
    #[error("peer closed the connection")]
    Closed,
    /// The peer sent bytes that do not decode.
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
    /// The peer's preamble has another protocol version.
    #[error("peer speaks protocol version {theirs}; this blkmirror speaks version {ours}")]
    VersionMismatch {
        /// [`PROTOCOL_VERSION`](super::frame::PROTOCOL_VERSION).
        ours: u32,
        /// The version in the peer's preamble.
        theirs: u32,
    },
    /// The peer sent `Refused` (its reason).
    #[error("peer refused: {0}")]
    Refused(String),
    /// A message other than the one the protocol allows at this point.
    #[error("unexpected {got} from peer while waiting for {expected}")]
    Unexpected {
        /// Name of the message received.
        got: &'static str,
        /// What was awaited, in words.
        expected: &'static str,
    },
    /// The peer sent nothing (or read nothing) for longer than the configured bound.
    #[error("peer silent for {secs} s while {waiting}: giving up")]
    PeerSilent {
        /// The bound, in seconds.
        secs: u64,
        /// What this side was waiting for, in words.
        waiting: &'static str,
    },
    /// A stop was requested (signal) while waiting on the peer.
    #[error("stopped on request")]
    Stopped,
}

impl TransportError {
    /// True when this side found the fault (bad bytes, a message out of place, a peer that
    /// went silent): the first cause, worth telling the peer in a `Refused` before closing, so
    /// that both ends record it rather than one of them "peer closed the connection".
    pub fn detected_here(&self) -> bool {
        matches!(
            self,
            TransportError::Frame(_)
                | TransportError::Unexpected { .. }
                | TransportError::PeerSilent { .. }
        )
    }

    /// True when retrying later may succeed (network trouble rather than a refusal).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransportError::Io(_) | TransportError::Closed | TransportError::PeerSilent { .. }
        )
    }
}

/// An [`io::Error`] kept as the source of a transport error.
///
/// It displays as the error's text without the `(os error N)` suffix, and as `connection
/// refused`, `connection reset by peer` or `timed out` for those kinds, so messages read
/// `cannot connect to host:9000: connection refused`. Its own [`source`] is the io error's
/// (not the io error itself, whose text would only repeat this one's), so a message built
/// from the chain of causes says everything once. [`IoCause::io`] gives the whole error.
///
/// [`source`]: std::error::Error::source
#[derive(Debug)]
pub struct IoCause(io::Error);

impl IoCause {
    /// The io error, whole.
    pub fn io(&self) -> &io::Error {
        &self.0
    }

    /// The io error's kind.
    pub fn kind(&self) -> io::ErrorKind {
        self.0.kind()
    }
}

impl From<io::Error> for IoCause {
    fn from(e: io::Error) -> Self {
        IoCause(e)
    }
}

impl fmt::Display for IoCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.kind() {
            io::ErrorKind::ConnectionRefused => f.write_str("connection refused"),
            io::ErrorKind::ConnectionReset => f.write_str("connection reset by peer"),
            io::ErrorKind::TimedOut => f.write_str("timed out"),
            _ => {
                let text = self.0.to_string();
                match text.find(" (os error ") {
                    Some(at) => f.write_str(&text[..at]),
                    None => f.write_str(&text),
                }
            }
        }
    }
}

impl std::error::Error for IoCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn io_cause_text_drops_the_errno_and_keeps_the_error() {
        let missing = IoCause::from(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(missing.to_string(), "No such file or directory");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert_eq!(missing.io().raw_os_error(), Some(libc::ENOENT));
        let refused = IoCause::from(io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert_eq!(refused.to_string(), "connection refused");
        let reset = IoCause::from(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(reset.to_string(), "connection reset by peer");
        let timed_out = IoCause::from(io::Error::from_raw_os_error(libc::ETIMEDOUT));
        assert_eq!(timed_out.to_string(), "timed out");
        assert!(missing.source().is_none());
    }

    #[test]
    fn transient_transport_errors() {
        assert!(TransportError::Closed.is_transient());
        assert!(TransportError::Io(io::ErrorKind::ConnectionReset.into()).is_transient());
        assert!(!TransportError::Frame(FrameError::Empty).is_transient());
        assert!(!TransportError::VersionMismatch { ours: 1, theirs: 2 }.is_transient());
        assert!(!TransportError::Refused("busy".into()).is_transient());
    }
}

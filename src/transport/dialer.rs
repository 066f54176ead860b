//! Opening a byte stream to a remote destination: the [`Dialer`] trait, what a dial returns
//! ([`Dialed`]: the stream plus a [`Finisher`] for whatever must outlive it), and the error of
//! any dial ([`DialError`], which keeps the transport's own error as its cause). The dialers
//! live with their transports ([`TlsDialer`], [`SshDialer`]); choosing one for a `DEST` is
//! `daemon::link`'s business. This seam knows no transport.
//!
//! A dialer only opens the stream; the protocol handshake is the caller's, over a
//! [`Connection`](super::Connection). Dialers are boxed trait objects (`Send + Sync`), so a
//! caller can hold one per destination and dial them concurrently.
//!
//! [`TlsDialer`]: super::tls::TlsDialer
//! [`SshDialer`]: super::ssh::SshDialer

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use super::BoxStream;

/// The future a [`Dialer`] or [`Finisher`] returns (`async fn` in a trait is not object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens byte streams to one destination.
pub trait Dialer: Send + Sync {
    /// Opens a new stream to the destination. Each call is a new session.
    fn dial(&self) -> BoxFuture<'_, Result<Dialed, DialError>>;
}

/// What must stay alive with a dialed stream and be finished after it: the ssh process,
/// whose exit status tells how the remote side ended.
pub trait Finisher: Send {
    /// Waits for the peer to end and reports a failure. Drop the stream first: the far side
    /// may be waiting for end of input.
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), DialError>>;
}

/// A freshly dialed stream, before the protocol handshake.
pub struct Dialed {
    /// The byte stream to the receiver.
    pub stream: BoxStream,
    /// Finish this after dropping `stream` (`None` when nothing outlives the stream, as
    /// for TLS). Dropping it unfinished ends the peer abruptly (ssh is killed).
    pub finisher: Option<Box<dyn Finisher>>,
}

/// Why a destination could not be dialed, or its peer did not end well: the transport's own
/// error (its message is this error's message), and whether dialing again may succeed.
#[derive(Debug)]
pub struct DialError {
    cause: Box<dyn std::error::Error + Send + Sync + 'static>,
    transient: bool,
}

impl DialError {
    /// Wraps a transport's error; `transient` as that error says.
    pub fn new(cause: impl std::error::Error + Send + Sync + 'static, transient: bool) -> Self {
        DialError {
            cause: Box::new(cause),
            transient,
        }
    }

    /// True when dialing again later may succeed (network trouble rather than a refusal or
    /// a mistake in the configuration).
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The transport's error, when it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.cause.downcast_ref()
    }
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.cause.fmt(f)
    }
}

impl std::error::Error for DialError {
    // Transparent: the cause's own causes follow, the cause itself is this message.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.source()
    }
}

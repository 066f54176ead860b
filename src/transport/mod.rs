//! The wire: frame encoding ([`frame`]), a framed [`Connection`] over any async byte stream,
//! and the streams themselves: in-process ([`local`]), `ssh` child stdio ([`ssh`]) and mutual
//! TLS over TCP with pinned certificate fingerprints ([`tls`]). [`dest`] parses `DEST` URLs;
//! [`dialer`] is the seam that opens a stream to a remote destination (each transport has its
//! [`Dialer`]).
//!
//! Nothing here knows about cycles or targets. The engines run on their own threads and see a
//! connection as an [`Endpoint`]: blocking `send` and `recv` with bounds, pumped by async
//! tasks. A local destination's in-process receiver is wired by `daemon::link`, not here.

pub mod bwlimit;
mod connection;
pub mod dest;
pub mod dialer;
mod endpoint;
mod error;
pub mod frame;
pub mod local;
pub mod ssh;
pub mod tls;

use tokio::io::{AsyncRead, AsyncWrite};

pub use connection::{Connection, FrameReader, FrameWriter};
pub use dialer::{BoxFuture, DialError, Dialed, Dialer, Finisher};
pub use endpoint::{Endpoint, EndpointOptions};
pub use error::{IoCause, TransportError};

/// Any bidirectional byte stream a connection can run over.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

/// A boxed byte stream (TCP+TLS, ssh stdio, in-process duplex).
pub type BoxStream = Box<dyn ByteStream>;

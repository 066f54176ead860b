//! Mutual TLS over TCP (rustls). Identities are a key and a self-signed certificate made by
//! `keygen`; peers are authenticated by pinning the SHA-256 fingerprint of their certificate.
//! There is no unauthenticated mode.
//!
//! Only TLS 1.3 with the ring provider is used. Certificate names, dates and issuers are
//! ignored: a peer is accepted exactly when the SHA-256 of its certificate is pinned and its
//! handshake signature verifies against that certificate.
//!
//! In TLS 1.3 the client finishes its handshake before the server has checked the client's
//! certificate, so after a successful handshake the server sends one confirmation byte
//! ([`ACCEPTED`]) which [`connect`] consumes. A rejected client therefore learns of it in
//! `connect` rather than on its first read. Neither byte is visible to callers.
//!
//! By concern: `identity` (keygen, loading, fingerprint text), `pinning` (the verifier both
//! sides use), `client` ([`connect`], [`TlsDialer`]), `server` ([`TlsServer`]), `socket`
//! (keepalive and time limits on both ends). This module holds what they share:
//! [`TlsError`] and the crypto provider.

mod client;
mod identity;
mod pinning;
mod server;
mod socket;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use rustls::crypto::CryptoProvider;

pub use client::{connect, TlsDialer};
pub use identity::{fingerprint, keygen, load_identity, parse_fingerprint, Identity};
pub use server::TlsServer;
pub use socket::HANDSHAKE_TIMEOUT;

use super::IoCause;

/// The byte the server sends after accepting a client's certificate.
pub const ACCEPTED: u8 = 0x01;

/// Why key generation, loading, listening or a TLS connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `keygen` could not make a key pair or certificate.
    #[error("cannot generate a TLS key: {source}")]
    Generate {
        /// The generator's error.
        source: rcgen::Error,
    },
    /// `keygen` found a key already there (it never overwrites one).
    #[error("{path} already exists; refusing to overwrite")]
    KeyExists {
        /// The existing key file.
        path: PathBuf,
    },
    /// `keygen` could not create the identity directory.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: IoCause,
    },
    /// `keygen` could not write the key or the certificate.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: IoCause,
    },
    /// The key or certificate file of an identity could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: IoCause,
    },
    /// The key or certificate file holds no PEM object of the right kind.
    #[error("{path} does not contain a PEM {what}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// The PEM parser's error.
        source: rustls::pki_types::pem::Error,
    },
    /// The identity's key is not the certificate's (or is of an unsupported kind).
    #[error("{key} does not match {cert}: {source}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// rustls's error.
        source: rustls::Error,
    },
    /// rustls refused the client or server configuration.
    #[error("invalid TLS configuration: {source}")]
    Config {
        /// rustls's error.
        source: rustls::Error,
    },
    /// `--listen` is not `IP:PORT`.
    #[error("invalid listen address {text:?}: expected IP:PORT, e.g. 0.0.0.0:9000 or [::]:9000")]
    BadListenAddr {
        /// The option's text.
        text: String,
    },
    /// Another socket already listens on the address.
    #[error("address {addr} is already in use")]
    AddrInUse {
        /// The listen address.
        addr: SocketAddr,
    },
    /// Listening failed for another reason.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The listen address.
        addr: SocketAddr,
        /// The error.
        source: IoCause,
    },
    /// The TCP connection (or resolving the host) failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `HOST:PORT` as dialed.
        addr: String,
        /// The error.
        source: IoCause,
    },
    /// (Client side) the server's certificate is not the one `--peer` pins.
    #[error("server {addr} presented certificate {presented} but --peer expects {expected}")]
    ServerNotPinned {
        /// `HOST:PORT` as dialed.
        addr: String,
        /// Fingerprint of the certificate presented, `sha256:` + hex.
        presented: String,
        /// Fingerprint pinned with `--peer`.
        expected: String,
    },
    /// (Client side) the server refused our certificate.
    #[error(
        "TLS handshake with {addr} failed: the receiver rejected our certificate \
         (is our fingerprint in its --allow-peer list?)"
    )]
    RejectedByServer {
        /// `HOST:PORT` as dialed.
        addr: String,
    },
    /// The handshake (or the confirmation byte) failed for another reason.
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer's address.
        addr: String,
        /// What went wrong.
        source: HandshakeCause,
    },
    /// The handshake and confirmation took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("TLS handshake with {addr} timed out after {secs} s")]
    Timeout {
        /// The peer's address.
        addr: String,
        /// The limit, in seconds.
        secs: u64,
    },
    /// (Server side) a client presented a certificate that no `--allow-peer` pins.
    #[error("client {addr} presented certificate {fingerprint} which is not in --allow-peer")]
    ClientNotAllowed {
        /// The client's address.
        addr: SocketAddr,
        /// Fingerprint of its certificate, `sha256:` + hex.
        fingerprint: String,
    },
    /// (Server side) a client presented no certificate.
    #[error("client {addr} presented no certificate; only clients in --allow-peer are accepted")]
    ClientNoCertificate {
        /// The client's address.
        addr: SocketAddr,
    },
}

impl TlsError {
    /// True when retrying later may succeed: the network failed (the TCP connect, the
    /// connection under the handshake, or the time limit), rather than a refusal, a pinning
    /// mismatch, a peer that does not speak TLS 1.3, or a problem with our own files.
    ///
    /// Every failed TCP connect counts, including an unresolvable host name: the host or the
    /// resolver may come back.
    pub fn is_transient(&self) -> bool {
        match self {
            TlsError::Connect { .. } | TlsError::Timeout { .. } => true,
            TlsError::Handshake { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

/// Why a TLS handshake (or the confirmation after it) failed, when it was not a pinning
/// decision, which has its own [`TlsError`] variant.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeCause {
    /// The connection failed under the handshake.
    #[error(transparent)]
    Io(IoCause),
    /// The peer closed the connection mid-handshake.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// The peer broke the TLS protocol or does not speak TLS 1.3 (or is not TLS at all).
    #[error(transparent)]
    Tls(rustls::Error),
    /// (Server side) the client sent a certificate alert: it does not pin our certificate.
    #[error("the client rejected our certificate (does its --peer match our fingerprint?)")]
    RejectedOurCertificate,
    /// (Client side) the server sent something other than [`ACCEPTED`].
    #[error("unexpected confirmation byte {0:#04x}")]
    BadConfirmation(u8),
}

impl HandshakeCause {
    /// True for network trouble; a protocol failure or a rejection will happen again.
    pub fn is_transient(&self) -> bool {
        matches!(self, HandshakeCause::Io(_) | HandshakeCause::PeerClosed)
    }
}

impl From<io::Error> for HandshakeCause {
    /// Sorts an io error from tokio-rustls: a rustls error inside, the peer hanging up, or
    /// the network.
    fn from(e: io::Error) -> Self {
        if rustls_error(&e).is_some() {
            let inner = e.into_inner().expect("checked: wraps an error");
            let tls = inner
                .downcast::<rustls::Error>()
                .expect("checked: a rustls error");
            return HandshakeCause::Tls(*tls);
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof => HandshakeCause::PeerClosed,
            _ => HandshakeCause::Io(e.into()),
        }
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn config_error(source: rustls::Error) -> TlsError {
    TlsError::Config { source }
}

/// The rustls error inside an io error from tokio-rustls, if any.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Identities and endpoints for the tests of every part.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::transport::BoxStream;
    use tempfile::TempDir;

    pub(super) fn new_identity() -> (TempDir, Identity, [u8; 32]) {
        let dir = tempfile::tempdir().unwrap();
        let print = keygen(dir.path()).unwrap();
        let identity = load_identity(dir.path()).unwrap();
        (dir, identity, parse_fingerprint(&print).unwrap())
    }

    pub(super) async fn server_for(
        identity: &Identity,
        allowed: Vec<[u8; 32]>,
    ) -> (TlsServer, u16) {
        let server = TlsServer::bind("127.0.0.1:0", identity, allowed)
            .await
            .unwrap();
        let port = server.local_addr().port();
        (server, port)
    }

    /// Accepts one connection and runs the handshake in a task.
    pub(super) fn serve_one(
        server: TlsServer,
    ) -> tokio::task::JoinHandle<Result<(BoxStream, String), TlsError>> {
        tokio::spawn(async move {
            let (tcp, _) = server.accept_tcp().await.unwrap();
            server.handshake(tcp).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_causes_are_sorted_and_read_as_before() {
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        let cause = HandshakeCause::from(tls);
        assert!(matches!(cause, HandshakeCause::Tls(_)), "{cause:?}");
        assert!(!cause.is_transient());
        let eof = HandshakeCause::from(io::Error::from(io::ErrorKind::UnexpectedEof));
        assert_eq!(eof.to_string(), "the peer closed the connection");
        assert!(eof.is_transient());
        let reset = HandshakeCause::from(io::Error::from_raw_os_error(libc::ECONNRESET));
        assert_eq!(reset.to_string(), "connection reset by peer");
        assert!(reset.is_transient());
        let error = TlsError::Handshake {
            addr: "h:1".into(),
            source: reset,
        };
        assert_eq!(
            error.to_string(),
            "TLS handshake with h:1 failed: connection reset by peer"
        );
        assert!(error.is_transient());
        assert_eq!(
            HandshakeCause::BadConfirmation(2).to_string(),
            "unexpected confirmation byte 0x02"
        );
        assert!(!HandshakeCause::BadConfirmation(2).is_transient());
        assert!(!HandshakeCause::RejectedOurCertificate.is_transient());
    }
}

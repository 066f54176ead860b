//! Opening a byte stream to a remote destination: the [`Dialer`] trait, what a dial returns
//! ([`Dialed`]: the stream plus a [`Finisher`] for whatever must outlive it), the error of any
//! dial ([`DialError`]), and [`dialer_for`], which picks the transport's dialer for a parsed
//! `DEST`. The dialers themselves live with their transports: [`TlsDialer`] and
//! [`SshDialer`].
//!
//! A dialer only opens the stream; the protocol handshake is the caller's, over a
//! [`Connection`](super::Connection). Dialers are boxed trait objects (`Send + Sync`), so a
//! caller can hold one per destination and dial them concurrently.
//!
//! [`TlsDialer`]: super::tls::TlsDialer
//! [`SshDialer`]: super::ssh::SshDialer

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use super::dest::Destination;
use super::ssh::{SshDialer, SshError, SshOptions};
use super::tls::{Identity, TlsDialer, TlsError};
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

/// What dialing needs beyond the destination's address.
#[derive(Clone, Debug, Default)]
pub struct DialConfig {
    /// Our TLS identity and the receiver's pinned certificate fingerprint (`tls://`).
    pub tls: Option<(Arc<Identity>, [u8; 32])>,
    /// How to run ssh (`ssh://`).
    pub ssh: SshOptions,
}

/// Why a destination could not be dialed, or its peer did not end well.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Connecting or the TLS handshake failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Starting ssh failed, or ssh ended badly.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// A `tls://` destination without an identity and a pinned peer.
    #[error("tls:// destinations need --identity DIR and --peer FINGERPRINT")]
    MissingIdentity,
    /// A local path was given to [`dialer_for`] (the path).
    #[error("{} is a local path: its receiver runs in this process, not through a dialer", .0.display())]
    Local(PathBuf),
}

impl DialError {
    /// True when dialing again later may succeed (network trouble rather than a refusal or
    /// a mistake in the configuration).
    pub fn is_transient(&self) -> bool {
        match self {
            DialError::Tls(e) => e.is_transient(),
            DialError::Ssh(e) => e.is_transient(),
            DialError::MissingIdentity | DialError::Local(_) => false,
        }
    }
}

/// The dialer for a remote destination: [`TlsDialer`] for `tls://` (which needs
/// `config.tls`), [`SshDialer`] for `ssh://`. A local path has none
/// ([`DialError::Local`]): its receiver runs in-process.
pub fn dialer_for(dest: &Destination, config: &DialConfig) -> Result<Box<dyn Dialer>, DialError> {
    match dest {
        Destination::Local(path) => Err(DialError::Local(path.clone())),
        Destination::Tls { host, port } => {
            let (identity, pinned) = config.tls.clone().ok_or(DialError::MissingIdentity)?;
            Ok(Box::new(TlsDialer {
                host: host.clone(),
                port: *port,
                identity,
                pinned,
            }))
        }
        Destination::Ssh {
            user,
            host,
            port,
            path,
        } => Ok(Box::new(SshDialer {
            user: user.clone(),
            host: host.clone(),
            port: *port,
            path: path.clone(),
            options: config.ssh.clone(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::dest::parse_destination;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn dialer(dest: &str, config: &DialConfig) -> Result<Box<dyn Dialer>, DialError> {
        dialer_for(&parse_destination(dest).unwrap(), config)
    }

    #[test]
    fn local_paths_and_missing_identities_have_no_dialer() {
        let config = DialConfig::default();
        let local = dialer("/dev/sdb", &config).err().unwrap();
        assert!(matches!(&local, DialError::Local(path) if path.to_str() == Some("/dev/sdb")));
        assert!(!local.is_transient());
        let tls = dialer("tls://host:9000", &config).err().unwrap();
        assert_eq!(
            tls.to_string(),
            "tls:// destinations need --identity DIR and --peer FINGERPRINT"
        );
        assert!(!tls.is_transient());
    }

    #[tokio::test]
    async fn ssh_dialer_streams_and_finishes() {
        // `sh -c SCRIPT` ignores the ssh-style arguments after it ($0, $1, ...).
        let config = DialConfig {
            ssh: SshOptions {
                ssh_command: "sh -c 'cat; exit 3'".into(),
                ..SshOptions::default()
            },
            ..DialConfig::default()
        };
        let dialer = dialer("ssh://h/x", &config).unwrap();
        let Dialed {
            mut stream,
            finisher,
        } = dialer.dial().await.unwrap();
        stream.write_all(b"hi").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        drop(stream);
        let error = finisher.expect("ssh has a process").finish().await;
        assert!(
            matches!(
                error,
                Err(DialError::Ssh(SshError::RemoteFailed { code: 3, .. }))
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn tls_dialer_reports_a_refused_connection_as_transient() {
        let dir = tempfile::tempdir().unwrap();
        crate::transport::tls::keygen(dir.path()).unwrap();
        let identity = crate::transport::tls::load_identity(dir.path()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let config = DialConfig {
            tls: Some((Arc::new(identity), [0; 32])),
            ..DialConfig::default()
        };
        let dialer = dialer(&format!("tls://127.0.0.1:{port}"), &config).unwrap();
        let error = dialer.dial().await.err().unwrap();
        assert_eq!(
            error.to_string(),
            format!("cannot connect to 127.0.0.1:{port}: connection refused")
        );
        assert!(error.is_transient());
    }
}

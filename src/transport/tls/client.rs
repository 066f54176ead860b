//! The connecting side: [`connect`] (TCP with a time limit, the TLS handshake with our
//! identity and the pinned server certificate, then the server's confirmation byte) and
//! [`TlsDialer`], the [`Dialer`] for `tls://` destinations.

use std::io;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::identity::fingerprint_of;
use super::pinning::{is_certificate_alert, not_pinned, PinnedVerifier};
use super::socket::{configure_socket, with_timeout, HANDSHAKE_TIMEOUT};
use super::{config_error, provider, rustls_error, HandshakeCause, Identity, TlsError, ACCEPTED};
use crate::transport::dest::host_port;
use crate::transport::dialer::{BoxFuture, DialError, Dialed, Dialer};
use crate::transport::BoxStream;

/// Dials `tls://HOST:PORT` with our identity, accepting only the server whose certificate
/// fingerprint is `pinned` (see [`connect`]). Nothing outlives the stream.
#[derive(Clone, Debug)]
pub struct TlsDialer {
    /// The receiver's host name or IP address.
    pub host: String,
    /// The receiver's TCP port.
    pub port: u16,
    /// Our key and certificate.
    pub identity: Arc<Identity>,
    /// SHA-256 of the receiver's certificate (`--peer`).
    pub pinned: [u8; 32],
    /// Bound on the TCP connect, and on the TLS handshake (`--peer-timeout`).
    pub timeout: std::time::Duration,
}

impl Dialer for TlsDialer {
    fn dial(&self) -> BoxFuture<'_, Result<Dialed, DialError>> {
        Box::pin(async move {
            let stream = connect_within(
                &self.host,
                self.port,
                &self.identity,
                self.pinned,
                self.timeout,
            )
            .await?;
            Ok(Dialed {
                stream,
                finisher: None,
            })
        })
    }
}

impl From<TlsError> for DialError {
    fn from(error: TlsError) -> Self {
        let transient = error.is_transient();
        DialError::new(error, transient)
    }
}

fn client_config(identity: &Identity, peer: [u8; 32]) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(PinnedVerifier::new(vec![peer]))
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(config_error)?;
    config.enable_sni = false;
    Ok(config)
}

/// Maps a client-side handshake (or confirmation) failure to a clear error.
fn client_error(addr: &str, expected: &[u8; 32], e: io::Error) -> TlsError {
    let addr = addr.to_string();
    match rustls_error(&e) {
        Some(tls) if is_certificate_alert(tls) => TlsError::RejectedByServer { addr },
        Some(tls) => match not_pinned(tls) {
            Some(presented) => TlsError::ServerNotPinned {
                addr,
                presented,
                expected: fingerprint_of(expected),
            },
            None => TlsError::Handshake {
                addr,
                source: e.into(),
            },
        },
        None => TlsError::Handshake {
            addr,
            source: e.into(),
        },
    }
}

/// Connects to `host:port`, requires the server to present the certificate pinned by `peer`,
/// authenticates with `identity`, and waits for the server to accept our certificate.
pub async fn connect(
    host: &str,
    port: u16,
    identity: &Identity,
    peer: [u8; 32],
) -> Result<BoxStream, TlsError> {
    connect_within(host, port, identity, peer, HANDSHAKE_TIMEOUT).await
}

/// [`connect`], with `limit` on the TCP connect and on the handshake (each).
pub async fn connect_within(
    host: &str,
    port: u16,
    identity: &Identity,
    peer: [u8; 32],
    limit: std::time::Duration,
) -> Result<BoxStream, TlsError> {
    let addr = host_port(host, port);
    let config = client_config(identity, peer)?;
    let tcp = with_timeout(&addr, limit, async {
        TcpStream::connect((host, port))
            .await
            .map_err(|e| TlsError::Connect {
                addr: addr.clone(),
                source: e.into(),
            })
    })
    .await?;
    configure_socket(&tcp);
    let stream = with_timeout(&addr, limit, client_handshake(&addr, config, tcp, peer)).await?;
    tracing::debug!("TLS connection to {addr} established");
    Ok(stream)
}

async fn client_handshake(
    addr: &str,
    config: rustls::ClientConfig,
    tcp: TcpStream,
    peer: [u8; 32],
) -> Result<BoxStream, TlsError> {
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("blkmirror").expect("static DNS name");
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| client_error(addr, &peer, e))?;
    let mut confirmation = [0u8; 1];
    stream
        .read_exact(&mut confirmation)
        .await
        .map_err(|e| client_error(addr, &peer, e))?;
    if confirmation[0] != ACCEPTED {
        return Err(TlsError::Handshake {
            addr: addr.to_string(),
            source: HandshakeCause::BadConfirmation(confirmation[0]),
        });
    }
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{new_identity, serve_one, server_for};
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn tls_dialer_reports_a_refused_connection_as_transient() {
        let dir = tempfile::tempdir().unwrap();
        crate::transport::tls::keygen(dir.path()).unwrap();
        let identity = crate::transport::tls::load_identity(dir.path()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let dialer = TlsDialer {
            host: "127.0.0.1".into(),
            port,
            identity: Arc::new(identity),
            pinned: [0; 32],
            timeout: HANDSHAKE_TIMEOUT,
        };
        let error = dialer.dial().await.err().unwrap();
        assert_eq!(
            error.to_string(),
            format!("cannot connect to 127.0.0.1:{port}: connection refused")
        );
        assert!(error.is_transient());
    }

    #[tokio::test]
    async fn mutual_handshake_exchanges_bytes() {
        let (_s, server_id, server_fp) = new_identity();
        let (_c, client_id, client_fp) = new_identity();
        let (server, port) = server_for(&server_id, vec![[0; 32], client_fp]).await;
        let accepted = serve_one(server.clone());
        let mut client = connect("127.0.0.1", port, &client_id, server_fp)
            .await
            .unwrap();
        let (mut remote, seen) = accepted.await.unwrap().unwrap();
        assert_eq!(seen, client_id.fingerprint());
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 4];
        remote.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        remote.write_all(b"pong").await.unwrap();
        remote.flush().await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn client_refuses_unpinned_server() {
        let (_s, server_id, server_fp) = new_identity();
        let (_c, client_id, client_fp) = new_identity();
        let (server, port) = server_for(&server_id, vec![client_fp]).await;
        let accepted = serve_one(server);
        let wrong = [7u8; 32];
        let error = connect("127.0.0.1", port, &client_id, wrong)
            .await
            .err()
            .unwrap();
        assert_eq!(
            error.to_string(),
            format!(
                "server 127.0.0.1:{port} presented certificate {} but --peer expects {}",
                fingerprint_of(&server_fp),
                fingerprint_of(&wrong)
            )
        );
        assert!(!error.is_transient());
        let server_error = accepted.await.unwrap().err().unwrap();
        assert!(
            server_error
                .to_string()
                .contains("the client rejected our certificate"),
            "{server_error}"
        );
        assert!(!server_error.is_transient());
    }

    #[tokio::test]
    async fn connection_refused_is_clear() {
        let (_c, client_id, _) = new_identity();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let error = connect("127.0.0.1", port, &client_id, [0; 32])
            .await
            .err()
            .unwrap();
        assert_eq!(
            error.to_string(),
            format!("cannot connect to 127.0.0.1:{port}: connection refused")
        );
        assert!(error.is_transient());
        let TlsError::Connect { source, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn a_server_that_is_not_tls_fails_the_handshake_for_good() {
        let (_c, client_id, _) = new_identity();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let garbage = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
            let mut sink = Vec::new();
            let _ = tcp.read_to_end(&mut sink).await;
        });
        let error = connect("127.0.0.1", port, &client_id, [0; 32])
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                &error,
                TlsError::Handshake {
                    source: HandshakeCause::Tls(_),
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with(&format!("TLS handshake with 127.0.0.1:{port} failed: ")),
            "{error}"
        );
        assert!(!error.is_transient());
        garbage.abort();
    }

    #[tokio::test]
    async fn a_peer_that_hangs_up_mid_handshake_is_transient() {
        let (_c, client_id, _) = new_identity();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hang_up = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            drop(tcp);
        });
        let error = connect("127.0.0.1", port, &client_id, [0; 32])
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                &error,
                TlsError::Handshake {
                    source: HandshakeCause::PeerClosed | HandshakeCause::Io(_),
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.is_transient(), "{error}");
        hang_up.await.unwrap();
    }
}

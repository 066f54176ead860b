//! The accepting side: [`TlsServer`] binds a listener, accepts TCP connections and runs the
//! TLS handshake on each, accepting only clients whose certificate is pinned, then confirms
//! acceptance with one byte ([`ACCEPTED`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::identity::fingerprint;
use super::pinning::{is_certificate_alert, not_pinned, PinnedVerifier};
use super::socket::{configure_socket, with_timeout};
use super::{config_error, provider, rustls_error, HandshakeCause, Identity, TlsError, ACCEPTED};
use crate::transport::BoxStream;

/// A listening TLS endpoint. Cheap to clone; clones share the listener.
#[derive(Clone)]
pub struct TlsServer {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    local_addr: SocketAddr,
}

fn server_config(
    identity: &Identity,
    allowed: Vec<[u8; 32]>,
) -> Result<rustls::ServerConfig, TlsError> {
    rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(PinnedVerifier::new(allowed))
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(config_error)
}

/// Maps a server-side handshake failure to a clear error.
fn server_error(addr: SocketAddr, e: io::Error) -> TlsError {
    let handshake = |source| TlsError::Handshake {
        addr: format!("client {addr}"),
        source,
    };
    match rustls_error(&e) {
        Some(rustls::Error::NoCertificatesPresented) => TlsError::ClientNoCertificate { addr },
        Some(tls) if is_certificate_alert(tls) => handshake(HandshakeCause::RejectedOurCertificate),
        Some(tls) => match not_pinned(tls) {
            Some(fingerprint) => TlsError::ClientNotAllowed { addr, fingerprint },
            None => handshake(e.into()),
        },
        None => handshake(e.into()),
    }
}

fn listen_error(addr: SocketAddr, e: io::Error) -> TlsError {
    match e.kind() {
        io::ErrorKind::AddrInUse => TlsError::AddrInUse { addr },
        _ => TlsError::Listen {
            addr,
            source: e.into(),
        },
    }
}

impl TlsServer {
    /// Listens on `addr` (an `IP:PORT`; port 0 picks a free port), accepting only clients
    /// whose certificate fingerprint is in `allowed`.
    pub async fn bind(
        addr: &str,
        identity: &Identity,
        allowed: Vec<[u8; 32]>,
    ) -> Result<TlsServer, TlsError> {
        let socket_addr: SocketAddr = addr.parse().map_err(|_| TlsError::BadListenAddr {
            text: addr.to_string(),
        })?;
        let config = server_config(identity, allowed)?;
        let listener = TcpListener::bind(socket_addr)
            .await
            .map_err(|e| listen_error(socket_addr, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| listen_error(socket_addr, e))?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let inner = ServerInner {
            listener,
            acceptor,
            local_addr,
        };
        Ok(TlsServer {
            inner: Arc::new(inner),
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Accepts the next TCP connection (with keepalive and a user timeout set). Run
    /// [`TlsServer::handshake`] on it, typically in a spawned task so one slow client does
    /// not block others.
    pub async fn accept_tcp(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (tcp, addr) = self.inner.listener.accept().await?;
        configure_socket(&tcp);
        Ok((tcp, addr))
    }

    /// Runs the TLS handshake (bounded by [`HANDSHAKE_TIMEOUT`]) and confirms acceptance to
    /// the client. Returns the stream and the client's certificate fingerprint.
    ///
    /// [`HANDSHAKE_TIMEOUT`]: super::HANDSHAKE_TIMEOUT
    pub async fn handshake(&self, tcp: TcpStream) -> Result<(BoxStream, String), TlsError> {
        let addr = tcp
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let client = format!("client {addr}");
        with_timeout(
            &client,
            super::HANDSHAKE_TIMEOUT,
            self.server_handshake(addr, tcp),
        )
        .await
    }

    async fn server_handshake(
        &self,
        addr: SocketAddr,
        tcp: TcpStream,
    ) -> Result<(BoxStream, String), TlsError> {
        let mut stream = self
            .inner
            .acceptor
            .accept(tcp)
            .await
            .map_err(|e| server_error(addr, e))?;
        let client = match stream.get_ref().1.peer_certificates() {
            Some([cert, ..]) => fingerprint(cert),
            _ => return Err(TlsError::ClientNoCertificate { addr }),
        };
        let confirm = async {
            stream.write_all(&[ACCEPTED]).await?;
            stream.flush().await
        };
        confirm.await.map_err(|e| server_error(addr, e))?;
        tracing::debug!("TLS client {addr} accepted with certificate {client}");
        Ok((Box::new(stream), client))
    }
}

#[cfg(test)]
mod tests {
    use super::super::connect;
    use super::super::identity::fingerprint_of;
    use super::super::testing::{new_identity, serve_one, server_for};
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio::io::AsyncReadExt;
    use tokio_rustls::TlsConnector;

    #[tokio::test]
    async fn server_refuses_client_not_allowed() {
        let (_s, server_id, server_fp) = new_identity();
        let (_c, client_id, client_fp) = new_identity();
        let (server, port) = server_for(&server_id, vec![[9u8; 32]]).await;
        let accepted = serve_one(server);
        let error = connect("127.0.0.1", port, &client_id, server_fp)
            .await
            .err()
            .unwrap();
        assert_eq!(
            error.to_string(),
            format!(
                "TLS handshake with 127.0.0.1:{port} failed: the receiver rejected our \
                 certificate (is our fingerprint in its --allow-peer list?)"
            )
        );
        assert!(!error.is_transient());
        let server_error = accepted.await.unwrap().err().unwrap();
        let TlsError::ClientNotAllowed { addr, fingerprint } = &server_error else {
            panic!("{server_error:?}");
        };
        assert_eq!(fingerprint, &fingerprint_of(&client_fp));
        assert_eq!(
            server_error.to_string(),
            format!(
                "client {addr} presented certificate {fingerprint} which is not in --allow-peer"
            )
        );
    }

    #[tokio::test]
    async fn server_refuses_client_without_certificate() {
        let (_s, server_id, server_fp) = new_identity();
        let (server, port) = server_for(&server_id, vec![[9u8; 32]]).await;
        let accepted = serve_one(server);
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(PinnedVerifier::new(vec![server_fp]))
            .with_no_client_auth();
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = ServerName::try_from("blkmirror").unwrap();
        let result = async {
            let mut stream = TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?;
            stream.read_u8().await
        };
        let error = result.await.unwrap_err();
        assert!(
            is_certificate_alert(rustls_error(&error).unwrap()),
            "{error}"
        );
        let server_error = accepted.await.unwrap().err().unwrap();
        assert!(
            matches!(server_error, TlsError::ClientNoCertificate { .. }),
            "{server_error}"
        );
        assert!(server_error
            .to_string()
            .ends_with("presented no certificate; only clients in --allow-peer are accepted"));
    }

    #[tokio::test]
    async fn bind_errors_are_clear() {
        let (_s, server_id, _) = new_identity();
        let (server, port) = server_for(&server_id, vec![]).await;
        let again = TlsServer::bind(&format!("127.0.0.1:{port}"), &server_id, vec![]).await;
        assert_eq!(
            again.err().unwrap().to_string(),
            format!("address 127.0.0.1:{port} is already in use")
        );
        drop(server);
        let bad = TlsServer::bind("localhost", &server_id, vec![]).await;
        assert_eq!(
            bad.err().unwrap().to_string(),
            "invalid listen address \"localhost\": expected IP:PORT, e.g. 0.0.0.0:9000 or [::]:9000"
        );
    }
}

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

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, OtherError,
    SignatureScheme,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::dest::host_port;
use super::BoxStream;

/// How long a TCP connect, or a TLS handshake plus confirmation, may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The byte the server sends after accepting a client's certificate.
pub const ACCEPTED: u8 = 0x01;

/// A peer that goes silent (host down, link cut, a NAT that forgot the flow) must not hold
/// a connection, and with it the target's lock, for the kernel's default two hours: TCP
/// keepalive probes after this idle time...
const KEEPALIVE_IDLE_SECS: u32 = 30;
/// ...every this often...
const KEEPALIVE_INTERVAL_SECS: u32 = 10;
/// ...this many unanswered before the connection is dropped...
const KEEPALIVE_PROBES: u32 = 3;
/// ...and data the peer has not acknowledged for this long drops it too. A peer that is slow
/// but alive still acknowledges (its kernel does, even while its process is busy).
const USER_TIMEOUT_MS: u32 = 60_000;

const KEY_FILE: &str = "key.pem";
const CERT_FILE: &str = "cert.pem";

/// Our key and self-signed certificate.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// The `sha256:...` fingerprint peers pin for this identity.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.fingerprint())
    }
}

/// Why key generation, loading, listening or a TLS connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate a TLS key: {cause}")]
    Generate { cause: String },
    #[error("{path} already exists; refusing to overwrite")]
    KeyExists { path: PathBuf },
    #[error("cannot create directory {path}: {cause}")]
    CreateDir { path: PathBuf, cause: String },
    #[error("cannot write {path}: {cause}")]
    Write { path: PathBuf, cause: String },
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: String },
    #[error("{path} does not contain a PEM {what}: {cause}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        cause: String,
    },
    #[error("{key} does not match {cert}: {cause}")]
    KeyMismatch {
        key: PathBuf,
        cert: PathBuf,
        cause: String,
    },
    #[error("invalid TLS configuration: {cause}")]
    Config { cause: String },
    #[error("invalid listen address {text:?}: expected IP:PORT, e.g. 0.0.0.0:9000 or [::]:9000")]
    BadListenAddr { text: String },
    #[error("address {addr} is already in use")]
    AddrInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {cause}")]
    Listen { addr: SocketAddr, cause: String },
    #[error("cannot connect to {addr}: {cause}")]
    Connect { addr: String, cause: String },
    #[error("server {addr} presented certificate {presented} but --peer expects {expected}")]
    ServerNotPinned {
        addr: String,
        presented: String,
        expected: String,
    },
    #[error(
        "TLS handshake with {addr} failed: the receiver rejected our certificate \
         (is our fingerprint in its --allow-peer list?)"
    )]
    RejectedByServer { addr: String },
    #[error("TLS handshake with {addr} failed: {cause}")]
    Handshake { addr: String, cause: String },
    #[error("TLS handshake with {addr} timed out after {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("client {addr} presented certificate {fingerprint} which is not in --allow-peer")]
    ClientNotAllowed {
        addr: SocketAddr,
        fingerprint: String,
    },
    #[error("client {addr} presented no certificate; only clients in --allow-peer are accepted")]
    ClientNoCertificate { addr: SocketAddr },
}

impl TlsError {
    /// True when retrying later may succeed (network trouble rather than a refusal).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TlsError::Connect { .. } | TlsError::Handshake { .. } | TlsError::Timeout { .. }
        )
    }
}

/// `"sha256:"` + 64 lowercase hex digits of SHA-256 over the certificate's DER.
pub fn fingerprint(cert_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert_der)))
}

fn fingerprint_of(bytes: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(bytes))
}

/// Parses a fingerprint with or without `sha256:`, in any case, with optional `:` separators.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let trimmed = text.trim();
    let body = match trimmed.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &trimmed[7..],
        _ => trimmed,
    };
    let digits: String = body.chars().filter(|&c| c != ':').collect();
    let mut out = [0u8; 32];
    match hex::decode_to_slice(&digits, &mut out) {
        Ok(()) => Ok(out),
        Err(_) => Err(format!(
            "invalid fingerprint {text:?}: expected sha256: followed by 64 hex digits"
        )),
    }
}

/// Creates `dir` (mode 0700) if needed and writes a new `key.pem` (0600) and `cert.pem`.
/// Refuses to overwrite an existing key. Returns the new certificate's fingerprint.
pub fn keygen(dir: &Path) -> Result<String, TlsError> {
    let key_path = dir.join(KEY_FILE);
    if key_path.exists() {
        return Err(TlsError::KeyExists { path: key_path });
    }
    let (cert_pem, key_pem, print) = generate()?;
    create_private_dir(dir)?;
    write_file(&dir.join(CERT_FILE), cert_pem.as_bytes(), 0o644, false)?;
    write_file(&key_path, key_pem.as_bytes(), 0o600, true)?;
    Ok(print)
}

/// Returns (certificate PEM, key PEM, fingerprint).
fn generate() -> Result<(String, String, String), TlsError> {
    let fail = |e: rcgen::Error| TlsError::Generate {
        cause: e.to_string(),
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(vec!["blkmirror".to_string()]).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "blkmirror");
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok((cert.pem(), key.serialize_pem(), fingerprint(cert.der())))
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TlsError::CreateDir {
            path: dir.to_path_buf(),
            cause: io_cause(&e),
        })
}

fn write_file(path: &Path, data: &[u8], mode: u32, exclusive: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    match exclusive {
        true => options.create_new(true),
        false => options.create(true).truncate(true),
    };
    let result = options.open(path).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    result.map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => TlsError::KeyExists {
            path: path.to_path_buf(),
        },
        _ => TlsError::Write {
            path: path.to_path_buf(),
            cause: io_cause(&e),
        },
    })
}

/// Loads `dir/key.pem` and `dir/cert.pem` and checks that they belong together.
pub fn load_identity(dir: &Path) -> Result<Identity, TlsError> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let cert_pem = read_file(&cert_path)?;
    let key_pem = read_file(&key_path)?;
    let parse_error = |path: &Path, what, e: rustls::pki_types::pem::Error| TlsError::Parse {
        path: path.to_path_buf(),
        what,
        cause: e.to_string(),
    };
    let cert = CertificateDer::from_pem_slice(&cert_pem)
        .map_err(|e| parse_error(&cert_path, "certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| parse_error(&key_path, "private key", e))?;
    let identity = Identity { cert, key };
    rustls::sign::CertifiedKey::from_der(
        vec![identity.cert.clone()],
        identity.key.clone_key(),
        &provider(),
    )
    .map_err(|e| TlsError::KeyMismatch {
        key: key_path,
        cert: cert_path,
        cause: e.to_string(),
    })?;
    Ok(identity)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        cause: io_cause(&e),
    })
}

/// The io error's text without the `(os error N)` suffix, lowercased for common kinds.
fn io_cause(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset by peer".to_string(),
        io::ErrorKind::TimedOut => "timed out".to_string(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error ") {
                Some(at) => text[..at].to_string(),
                None => text,
            }
        }
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Error a verifier returns for an unpinned certificate; recovered from the handshake error.
#[derive(Debug)]
struct NotPinned {
    fingerprint: String,
}

impl fmt::Display for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate {} is not pinned", self.fingerprint)
    }
}

impl std::error::Error for NotPinned {}

/// Checks a presented certificate against the pinned fingerprints.
fn check_pinned(cert: &CertificateDer<'_>, pinned: &[[u8; 32]]) -> Result<(), rustls::Error> {
    let digest: [u8; 32] = Sha256::digest(cert.as_ref()).into();
    if pinned.contains(&digest) {
        return Ok(());
    }
    let reason = NotPinned {
        fingerprint: fingerprint_of(&digest),
    };
    Err(rustls::Error::InvalidCertificate(CertificateError::Other(
        OtherError(Arc::new(reason)),
    )))
}

/// Accepts exactly the pinned certificates and verifies handshake signatures with ring.
#[derive(Debug)]
struct PinnedVerifier {
    pinned: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedVerifier {
    fn new(pinned: Vec<[u8; 32]>) -> Arc<Self> {
        let algorithms = provider().signature_verification_algorithms;
        Arc::new(PinnedVerifier { pinned, algorithms })
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_pinned(end_entity, &self.pinned).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PinnedVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_pinned(end_entity, &self.pinned).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn config_error(e: rustls::Error) -> TlsError {
    TlsError::Config {
        cause: e.to_string(),
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

/// The rustls error inside an io error from tokio-rustls, if any.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The fingerprint our verifier rejected, if that is why the handshake failed.
fn not_pinned(e: &rustls::Error) -> Option<String> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other
            .0
            .downcast_ref::<NotPinned>()
            .map(|n| n.fingerprint.clone()),
        _ => None,
    }
}

/// Alerts a peer sends when it does not accept our certificate.
fn is_certificate_alert(e: &rustls::Error) -> bool {
    use AlertDescription as A;
    matches!(
        e,
        rustls::Error::AlertReceived(
            A::BadCertificate
                | A::CertificateRequired
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::UnknownCA
                | A::AccessDenied
        )
    )
}

fn handshake_cause(e: &io::Error) -> String {
    match (e.kind(), rustls_error(e)) {
        (_, Some(tls)) => tls.to_string(),
        (io::ErrorKind::UnexpectedEof, None) => "the peer closed the connection".to_string(),
        _ => io_cause(e),
    }
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
                cause: handshake_cause(&e),
            },
        },
        None => TlsError::Handshake {
            addr,
            cause: handshake_cause(&e),
        },
    }
}

/// Maps a server-side handshake failure to a clear error.
fn server_error(addr: SocketAddr, e: io::Error) -> TlsError {
    let handshake = |cause: String| TlsError::Handshake {
        addr: format!("client {addr}"),
        cause,
    };
    match rustls_error(&e) {
        Some(rustls::Error::NoCertificatesPresented) => TlsError::ClientNoCertificate { addr },
        Some(tls) if is_certificate_alert(tls) => handshake(
            "the client rejected our certificate (does its --peer match our fingerprint?)"
                .to_string(),
        ),
        Some(tls) => match not_pinned(tls) {
            Some(fingerprint) => TlsError::ClientNotAllowed { addr, fingerprint },
            None => handshake(tls.to_string()),
        },
        None => handshake(handshake_cause(&e)),
    }
}

async fn with_timeout<T>(
    addr: &str,
    future: impl std::future::Future<Output = Result<T, TlsError>>,
) -> Result<T, TlsError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, future).await {
        Ok(result) => result,
        Err(_) => Err(TlsError::Timeout {
            addr: addr.to_string(),
            secs: HANDSHAKE_TIMEOUT.as_secs(),
        }),
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
    let addr = host_port(host, port);
    let config = client_config(identity, peer)?;
    let tcp = with_timeout(&addr, async {
        TcpStream::connect((host, port))
            .await
            .map_err(|e| TlsError::Connect {
                addr: addr.clone(),
                cause: io_cause(&e),
            })
    })
    .await?;
    configure_socket(&tcp);
    let stream = with_timeout(&addr, client_handshake(&addr, config, tcp, peer)).await?;
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
            cause: format!("unexpected confirmation byte {:#04x}", confirmation[0]),
        });
    }
    Ok(Box::new(stream))
}

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

    /// Accepts the next TCP connection (see [`configure_socket`]). Run
    /// [`TlsServer::handshake`] on it, typically in a spawned task so one slow client does
    /// not block others.
    pub async fn accept_tcp(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (tcp, addr) = self.inner.listener.accept().await?;
        configure_socket(&tcp);
        Ok((tcp, addr))
    }

    /// Runs the TLS handshake (bounded by [`HANDSHAKE_TIMEOUT`]) and confirms acceptance to
    /// the client. Returns the stream and the client's certificate fingerprint.
    pub async fn handshake(&self, tcp: TcpStream) -> Result<(BoxStream, String), TlsError> {
        let addr = tcp
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        with_timeout(&format!("client {addr}"), self.server_handshake(addr, tcp)).await
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

fn listen_error(addr: SocketAddr, e: io::Error) -> TlsError {
    match e.kind() {
        io::ErrorKind::AddrInUse => TlsError::AddrInUse { addr },
        _ => TlsError::Listen {
            addr,
            cause: io_cause(&e),
        },
    }
}

/// TCP_NODELAY (messages go out when written), and liveness: keepalive and a user timeout,
/// so a dead peer ends the session within about a minute. Best effort: a socket that refuses
/// an option still works, with the kernel's defaults.
fn configure_socket(tcp: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = tcp.set_nodelay(true);
    let result = setsockopt(tcp, sockopt::KeepAlive, &true)
        .and_then(|()| setsockopt(tcp, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_SECS))
        .and_then(|()| setsockopt(tcp, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL_SECS))
        .and_then(|()| setsockopt(tcp, sockopt::TcpKeepCount, &KEEPALIVE_PROBES))
        .and_then(|()| setsockopt(tcp, sockopt::TcpUserTimeout, &USER_TIMEOUT_MS));
    if let Err(e) = result {
        tracing::debug!("TCP keepalive options not set: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    #[tokio::test]
    async fn both_ends_of_a_connection_detect_a_dead_peer() {
        use nix::sys::socket::{getsockopt, sockopt};
        let (_dir, identity, _) = new_identity();
        let (server, port) = server_for(&identity, vec![]).await;
        let client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(
            !getsockopt(&client, sockopt::KeepAlive).unwrap(),
            "off by default"
        );
        configure_socket(&client);
        // The server's side, as the receiver accepts it.
        let (accepted, _) = server.accept_tcp().await.unwrap();
        for tcp in [&client, &accepted] {
            assert!(tcp.nodelay().unwrap());
            assert!(getsockopt(tcp, sockopt::KeepAlive).unwrap());
            assert_eq!(
                getsockopt(tcp, sockopt::TcpKeepIdle).unwrap(),
                KEEPALIVE_IDLE_SECS
            );
            assert_eq!(
                getsockopt(tcp, sockopt::TcpKeepInterval).unwrap(),
                KEEPALIVE_INTERVAL_SECS
            );
            assert_eq!(
                getsockopt(tcp, sockopt::TcpKeepCount).unwrap(),
                KEEPALIVE_PROBES
            );
            assert_eq!(
                getsockopt(tcp, sockopt::TcpUserTimeout).unwrap(),
                USER_TIMEOUT_MS
            );
        }
    }

    fn new_identity() -> (TempDir, Identity, [u8; 32]) {
        let dir = tempfile::tempdir().unwrap();
        let print = keygen(dir.path()).unwrap();
        let identity = load_identity(dir.path()).unwrap();
        (dir, identity, parse_fingerprint(&print).unwrap())
    }

    async fn server_for(identity: &Identity, allowed: Vec<[u8; 32]>) -> (TlsServer, u16) {
        let server = TlsServer::bind("127.0.0.1:0", identity, allowed)
            .await
            .unwrap();
        let port = server.local_addr().port();
        (server, port)
    }

    /// Accepts one connection and runs the handshake in a task.
    fn serve_one(
        server: TlsServer,
    ) -> tokio::task::JoinHandle<Result<(BoxStream, String), TlsError>> {
        tokio::spawn(async move {
            let (tcp, _) = server.accept_tcp().await.unwrap();
            server.handshake(tcp).await
        })
    }

    #[test]
    fn keygen_then_load_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("identity");
        let print = keygen(&dir).unwrap();
        assert!(
            print.starts_with("sha256:") && print.len() == 7 + 64,
            "{print}"
        );
        let identity = load_identity(&dir).unwrap();
        assert_eq!(identity.fingerprint(), print);
        assert_eq!(identity.clone().fingerprint(), print);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("key.pem")), 0o600);
        let again = keygen(&dir).unwrap_err().to_string();
        let expected = format!(
            "{} already exists; refusing to overwrite",
            dir.join("key.pem").display()
        );
        assert_eq!(again, expected);
        assert_eq!(load_identity(&dir).unwrap().fingerprint(), print);
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let missing = load_identity(dir.path()).unwrap_err().to_string();
        assert_eq!(
            missing,
            format!("cannot read {}: No such file or directory", cert.display())
        );
        std::fs::write(&cert, "garbage").unwrap();
        std::fs::write(dir.path().join("key.pem"), "garbage").unwrap();
        let bad = load_identity(dir.path()).unwrap_err().to_string();
        assert!(
            bad.starts_with(&format!(
                "{} does not contain a PEM certificate",
                cert.display()
            )),
            "{bad}"
        );
    }

    #[test]
    fn mismatched_key_and_cert_are_refused() {
        let (a, _, _) = new_identity();
        let (b, _, _) = new_identity();
        std::fs::copy(b.path().join("key.pem"), a.path().join("key.pem")).unwrap();
        let error = load_identity(a.path()).unwrap_err().to_string();
        assert!(error.contains("key.pem does not match"), "{error}");
    }

    #[test]
    fn fingerprint_text_variants() {
        let digest = [0xabu8; 32];
        let canonical = fingerprint_of(&digest);
        assert_eq!(canonical, format!("sha256:{}", "ab".repeat(32)));
        let colons = vec!["AB"; 32].join(":");
        for text in [
            canonical.clone(),
            canonical.to_uppercase(),
            "ab".repeat(32),
            colons.clone(),
            format!("SHA256:{colons}"),
            format!(" {canonical}\n"),
        ] {
            assert_eq!(parse_fingerprint(&text), Ok(digest), "{text}");
        }
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            &"ab".repeat(33),
            &"zz".repeat(32),
            "md5:00",
        ] {
            let error = parse_fingerprint(bad).unwrap_err();
            assert_eq!(
                error,
                format!("invalid fingerprint {bad:?}: expected sha256: followed by 64 hex digits")
            );
        }
        assert_eq!(fingerprint(b"").len(), 71);
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
        let server_error = accepted.await.unwrap().err().unwrap().to_string();
        assert!(
            server_error.contains("the client rejected our certificate"),
            "{server_error}"
        );
    }

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

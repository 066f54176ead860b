//! Fingerprint pinning: the certificate verifier both sides use ([`PinnedVerifier`] accepts
//! exactly the pinned certificates, whatever their names, dates and issuers, and checks
//! handshake signatures with ring), and recognising its rejections, and the peer's, in a
//! failed handshake.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, OtherError,
    SignatureScheme,
};
use sha2::{Digest, Sha256};

use super::identity::fingerprint_of;
use super::provider;

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

/// The fingerprint our verifier rejected, if that is why the handshake failed.
pub(super) fn not_pinned(e: &rustls::Error) -> Option<String> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other
            .0
            .downcast_ref::<NotPinned>()
            .map(|n| n.fingerprint.clone()),
        _ => None,
    }
}

/// Alerts a peer sends when it does not accept our certificate.
pub(super) fn is_certificate_alert(e: &rustls::Error) -> bool {
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

/// Accepts exactly the pinned certificates and verifies handshake signatures with ring.
/// The client uses it for the server's certificate, the server for clients' (mandatory).
#[derive(Debug)]
pub(super) struct PinnedVerifier {
    pinned: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedVerifier {
    pub(super) fn new(pinned: Vec<[u8; 32]>) -> Arc<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pinned_certificates_pass_and_rejections_name_the_certificate() {
        let cert = CertificateDer::from(b"not really DER, only hashed".to_vec());
        let digest: [u8; 32] = Sha256::digest(cert.as_ref()).into();
        assert!(check_pinned(&cert, &[[0; 32], digest]).is_ok());
        let rejected = check_pinned(&cert, &[[0; 32]]).unwrap_err();
        assert_eq!(not_pinned(&rejected), Some(fingerprint_of(&digest)));
        assert!(!is_certificate_alert(&rejected));
        let alert = rustls::Error::AlertReceived(AlertDescription::BadCertificate);
        assert!(is_certificate_alert(&alert));
        assert_eq!(not_pinned(&alert), None);
    }
}

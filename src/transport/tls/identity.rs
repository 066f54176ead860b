//! TLS identities: generating a key and self-signed certificate (`keygen`), loading them
//! back (`load_identity`), and certificate fingerprints as text (`sha256:` + hex), both
//! printing and parsing.

use std::fmt;
use std::io;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::{provider, TlsError};

const KEY_FILE: &str = "key.pem";
const CERT_FILE: &str = "cert.pem";

/// Our key and self-signed certificate.
pub struct Identity {
    /// The self-signed certificate (DER); its SHA-256 is the fingerprint peers pin.
    pub cert: CertificateDer<'static>,
    /// The certificate's private key (ECDSA P-256 when made by `keygen`).
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

/// `"sha256:"` + 64 lowercase hex digits of SHA-256 over the certificate's DER.
pub fn fingerprint(cert_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert_der)))
}

/// The text of a fingerprint given as its 32 bytes.
pub(super) fn fingerprint_of(bytes: &[u8; 32]) -> String {
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
    let fail = |source| TlsError::Generate { source };
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
            source: e.into(),
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
            source: e.into(),
        },
    })
}

/// Loads `dir/key.pem` and `dir/cert.pem` and checks that they belong together.
pub fn load_identity(dir: &Path) -> Result<Identity, TlsError> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let cert_pem = read_file(&cert_path)?;
    let key_pem = read_file(&key_path)?;
    let parse_error = |path: &Path, what, source| TlsError::Parse {
        path: path.to_path_buf(),
        what,
        source,
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
    .map_err(|source| TlsError::KeyMismatch {
        key: key_path,
        cert: cert_path,
        source,
    })?;
    Ok(identity)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::new_identity;
    use super::*;

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
        let missing = load_identity(dir.path()).unwrap_err();
        assert_eq!(
            missing.to_string(),
            format!("cannot read {}: No such file or directory", cert.display())
        );
        assert!(!missing.is_transient());
        let TlsError::Read { source, .. } = &missing else {
            panic!("{missing:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
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
}

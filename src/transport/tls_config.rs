//! A TLS listener's server configuration: loading the certificate chain, private key and
//! client CA bundle from PEM files into a rustls `ServerConfig`, replacing it at run time,
//! and the client-certificate identity used as the MQTT username.
//!
//! Owns: the rustls settings RingMQ runs with (the `ring` provider with RingMQ's own
//! ChaCha20-Poly1305 record protection, see `tls_cipher`; TLS 1.2 and 1.3 only,
//! rustls's safe defaults, which have no renegotiation; ALPN `mqtt`, or `http/1.1` for
//! WebSocket listeners, chosen when the client offers it), the reloadable holder whose newest
//! configuration every new connection takes, and the rule that turns a client certificate
//! into a username.
//!
//! Must never: replace a working configuration with one that failed to load, read a file
//! larger than `MAX_PEM_FILE`, or accept a client certificate without a usable identity on
//! a listener that takes its usernames from certificates.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::tls_cipher;
use crate::config::TlsCipherPreference;

/// Largest PEM file read (certificate chain, key or CA bundle). A public CA bundle is about
/// 220 KB; 4 MiB leaves room while keeping a wrong path (a log file, a device) from being
/// read whole into memory.
pub const MAX_PEM_FILE: u64 = 4 * 1024 * 1024;

/// The files of a TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf certificate.
    pub key: PathBuf,
    /// CAs that client certificates must chain to; `None`: no client certificates asked.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: a client without a certificate is refused.
    pub require_client_cert: bool,
    /// Client certificates must carry an identity (`identity_of`): it becomes the username.
    pub identity_required: bool,
    /// Which cipher suite the server picks (`tls_cipher_preference`).
    pub cipher_preference: TlsCipherPreference,
}

/// What went wrong with one file.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileProblem {
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("larger than {MAX_PEM_FILE} bytes; is this the right file?")]
    TooLarge,
    #[error("not valid PEM: {0}")]
    Pem(String),
    #[error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    #[error("holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey,
    #[error("private key does not match the certificate in {0}")]
    KeyMismatch(PathBuf),
    #[error("unusable private key: {0}")]
    BadKey(rustls::Error),
    #[error("unusable CA certificate: {0}")]
    BadCa(String),
    #[error("TLS setup refused: {0}")]
    Setup(rustls::Error),
}

/// A TLS file that could not be used: which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct TlsLoadError {
    pub file: PathBuf,
    pub problem: TlsFileProblem,
}

fn fail(file: &Path, problem: TlsFileProblem) -> TlsLoadError {
    TlsLoadError {
        file: file.to_owned(),
        problem,
    }
}

/// Reads a whole PEM file, refusing one larger than `MAX_PEM_FILE` before reading it.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsLoadError> {
    let file = std::fs::File::open(path).map_err(|e| fail(path, TlsFileProblem::Read(e)))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(path, TlsFileProblem::Read(e)))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(fail(path, TlsFileProblem::TooLarge));
    }
    Ok(bytes)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsLoadError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(path, TlsFileProblem::Pem(e.to_string())))?;
    if certs.is_empty() {
        return Err(fail(path, TlsFileProblem::NoCertificate));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsLoadError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => fail(path, TlsFileProblem::NoPrivateKey),
        other => fail(path, TlsFileProblem::Pem(other.to_string())),
    })
}

/// Builds a `ServerConfig` from the files, checking that the key matches the certificate.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerConfig, TlsLoadError> {
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = tls_cipher::provider(files.cipher_preference);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&files.cert, TlsFileProblem::Setup(e)))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, files, provider)?),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            fail(&files.key, TlsFileProblem::KeyMismatch(files.cert.clone()))
        }
        other => fail(&files.key, TlsFileProblem::BadKey(other)),
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ignore_client_order = tls_cipher::ignores_client_order(files.cipher_preference);
    Ok(config)
}

fn client_verifier(
    ca: &Path,
    files: &TlsFiles,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsLoadError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| fail(ca, TlsFileProblem::BadCa(e.to_string())))?;
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if !files.require_client_cert {
        builder = builder.allow_unauthenticated();
    }
    let inner = builder
        .build()
        .map_err(|e| fail(ca, TlsFileProblem::BadCa(e.to_string())))?;
    Ok(if files.identity_required {
        Arc::new(IdentityRequired { inner })
    } else {
        inner
    })
}

/// Longest identity accepted as a username: an MQTT string holds at most 65535 bytes.
const MAX_IDENTITY: usize = 65_535;

/// The identity of a client certificate: its subject's first common name, else its first
/// DNS name, e-mail address or URI subject alternative name. `None` when the certificate
/// cannot be parsed, has no such name, or the name is not a valid MQTT string (empty, longer
/// than 65535 bytes, or holding U+0000 or another control character [MQTT-1.5.4-2]).
pub fn identity_of(cert: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok());
    let san = || {
        let ext = cert.subject_alternative_name().ok()??;
        ext.value.general_names.iter().find_map(|n| match n {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => Some(*s),
            _ => None,
        })
    };
    let name = cn.or_else(san)?;
    let usable =
        !name.is_empty() && name.len() <= MAX_IDENTITY && !name.chars().any(|c| c.is_control());
    usable.then(|| name.to_owned())
}

/// A client-certificate verifier that also refuses, during the handshake (alert
/// `bad_certificate`), a certificate `identity_of` finds no username in: on a listener whose
/// usernames come from certificates, such a client could never be authorised.
#[derive(Debug)]
struct IdentityRequired {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for IdentityRequired {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match identity_of(end_entity) {
            Some(_) => Ok(verified),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A listener's current `ServerConfig`, replaceable while connections run: each new
/// connection takes the newest (`current`); connections already open keep the one they
/// started with. `reload` builds a new one from the same files and keeps the old one when
/// that fails. Shared by every shard (`Arc`); the lock is held only to clone or swap an
/// `Arc`.
pub struct TlsAcceptor {
    files: TlsFiles,
    alpn: &'static [&'static [u8]],
    current: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("files", &self.files)
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Loads the files; `alpn` lists the protocols chosen when a client offers them.
    pub fn load(
        files: TlsFiles,
        alpn: &'static [&'static [u8]],
    ) -> Result<TlsAcceptor, TlsLoadError> {
        let config = server_config(&files, alpn)?;
        Ok(TlsAcceptor {
            files,
            alpn,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The configuration a connection accepted now uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        // A poisoned lock only means a thread panicked while holding it; the `Arc` inside
        // is whole either way (it is replaced in one assignment).
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the files again and, when they load, makes them current for new connections.
    /// On error the previous configuration stays in use and the error names the file.
    pub fn reload(&self) -> Result<(), TlsLoadError> {
        let config = Arc::new(server_config(&self.files, self.alpn)?);
        match self.current.write() {
            Ok(mut guard) => *guard = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }

    /// The files this acceptor loads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

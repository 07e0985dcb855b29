//! Tests of the transports over memory buffers: literal bytes from the RFCs, an in-process
//! rustls client, tungstenite. Certificates are made by each test run with rcgen and
//! written to a temporary directory that is removed afterwards; no key is in the
//! repository.

mod stack;
mod tls;
mod ws;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{ListenerRuntime, ReadStatus, Transport, TransportError};
use crate::config::{Limits, ListenerConfig};

/// A directory removed when dropped.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ringmq-transport-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub(super) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate and its key, as DER and PEM.
pub(super) struct Issued {
    pub(super) der: CertificateDer<'static>,
    pub(super) pem: String,
    pub(super) key_pem: String,
    pub(super) key_der: Vec<u8>,
}

impl Issued {
    pub(super) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A test CA with a server certificate and client certificates, in PEM files.
pub(super) struct Pki {
    pub(super) dir: TempDir,
    pub(super) ca: Issued,
    ca_issuer: CertifiedIssuer<'static, KeyPair>,
    pub(super) server: Issued,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) ca_file: PathBuf,
}

fn issued(cert: &rcgen::Certificate, key: &KeyPair) -> Issued {
    Issued {
        der: cert.der().clone(),
        pem: cert.pem(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    }
}

impl Pki {
    pub(super) fn new() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "RingMQ test CA");
        let ca_key = KeyPair::generate().expect("key");
        let ca_issuer = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
        let ca = Issued {
            der: ca_issuer.as_ref().der().clone(),
            pem: ca_issuer.as_ref().pem(),
            key_pem: String::new(),
            key_der: Vec::new(),
        };
        let mut pki = Pki {
            dir: TempDir::new(),
            ca,
            ca_issuer,
            server: Issued {
                der: CertificateDer::from(Vec::new()),
                pem: String::new(),
                key_pem: String::new(),
                key_der: Vec::new(),
            },
            cert: PathBuf::new(),
            key: PathBuf::new(),
            ca_file: PathBuf::new(),
        };
        pki.server = pki.issue(Some("ringmq test server"), &["localhost"]);
        pki.cert = pki.dir.write("server.pem", &pki.server.pem);
        pki.key = pki.dir.write("server.key", &pki.server.key_pem);
        pki.ca_file = pki.dir.write("ca.pem", &pki.ca.pem);
        pki
    }

    /// A certificate signed by this CA with the given subject CN and DNS SANs.
    pub(super) fn issue(&self, cn: Option<&str>, dns: &[&str]) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        for name in dns {
            let name = (*name).try_into().expect("dns name");
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca_issuer).expect("sign");
        issued(&cert, &key)
    }

    /// A listener of `url` with this PKI's server files.
    pub(super) fn listener(&self, url: &str) -> ListenerConfig {
        let mut l = ListenerConfig::new(url.parse().expect("url"));
        l.cert = Some(self.cert.clone());
        l.key = Some(self.key.clone());
        l
    }

    /// A rustls client trusting this CA, offering `alpn`, with an optional client cert.
    pub(super) fn client_config(
        &self,
        alpn: &[&[u8]],
        client_cert: Option<&Issued>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der.clone()).expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match client_cert {
            None => builder.with_no_client_auth(),
            Some(c) => builder
                .with_client_auth_cert(vec![c.der.clone()], c.key())
                .expect("client cert"),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    pub(super) fn client(&self, alpn: &[&[u8]], cert: Option<&Issued>) -> rustls::ClientConnection {
        let config = self.client_config(alpn, cert, rustls::DEFAULT_VERSIONS);
        rustls::ClientConnection::new(config, "localhost".try_into().expect("name"))
            .expect("client")
    }
}

#[allow(deprecated)]
pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(super) fn runtime(config: &ListenerConfig) -> Arc<ListenerRuntime> {
    ListenerRuntime::load(config, &Limits::default()).expect("listener loads")
}

pub(super) fn transport(config: &ListenerConfig) -> Box<Transport> {
    runtime(config)
        .new_transport()
        .expect("transport")
        .expect("not plain TCP")
}

/// What one side of an in-memory connection saw.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) app: BytesMut,
    pub(super) status: Option<ReadStatus>,
}

/// Feeds `bytes` to the transport in pieces of at most `chunk`, collecting the MQTT bytes
/// and the wire output.
pub(super) fn feed(
    t: &mut Transport,
    bytes: &[u8],
    chunk: usize,
    seen: &mut Seen,
    wire: &mut BytesMut,
) -> Result<(), TransportError> {
    for piece in bytes.chunks(chunk.max(1)) {
        let mut piece = piece.to_vec();
        seen.status = Some(t.read(&mut piece, &mut seen.app, wire)?);
    }
    Ok(())
}

/// Moves bytes between a rustls client and the transport until neither has anything to
/// send. `chunk` splits what the transport reads.
pub(super) fn pump(
    client: &mut rustls::ClientConnection,
    t: &mut Transport,
    chunk: usize,
    seen: &mut Seen,
) -> Result<(), TransportError> {
    for _ in 0..64 {
        let mut to_server = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut to_server).expect("client write_tls");
        }
        let mut wire = BytesMut::new();
        let result = feed(t, &to_server, chunk, seen, &mut wire);
        let mut from_server = &wire[..];
        while !from_server.is_empty() {
            client.read_tls(&mut from_server).expect("client read_tls");
            if let Err(e) = client.process_new_packets() {
                result?;
                panic!("client refused the server's bytes: {e}");
            }
        }
        result?;
        if to_server.is_empty() && wire.is_empty() {
            return Ok(());
        }
    }
    panic!("pump did not settle");
}

/// Plaintext the client has received.
pub(super) fn client_plaintext(client: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match client.reader().read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return out,
            Err(e) => panic!("client read: {e}"),
        }
    }
}

pub(super) fn client_send(client: &mut rustls::ClientConnection, data: &[u8]) {
    client.set_buffer_limit(None);
    client.writer().write_all(data).expect("client write");
}

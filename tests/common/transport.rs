//! What the transport tests share: a test PKI made at run time with rcgen (CA, server and
//! client certificates in PEM files in a temporary directory; no key is committed), and the
//! byte links a test `Client` speaks MQTT over: TCP, TLS (rustls client), WebSocket and
//! WebSocket over TLS (tungstenite over either).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use ringmq::config::{ListenerConfig, ListenerKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::process::DataDir;

/// A certificate and its key, in memory and in PEM files.
pub struct Issued {
    pub der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Issued {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A test CA, the server certificate it issued (for `localhost` and 127.0.0.1), and client
/// certificates on demand.
pub struct Pki {
    pub dir: DataDir,
    pub ca_der: CertificateDer<'static>,
    pub ca_file: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub server: Issued,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("RingMQ test CA {name}"));
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        let dir = DataDir::new(&format!("pki-{name}"));
        let ca_file = dir.0.join("ca.pem");
        std::fs::write(&ca_file, issuer.as_ref().pem()).expect("write ca");
        let ca_der = issuer.as_ref().der().clone();
        let server = issue(&issuer, &dir, "server", Some("ringmq test server"), true);
        Pki {
            dir,
            ca_der,
            ca_file,
            issuer,
            server,
        }
    }

    /// A client certificate with subject CN `cn` (files `<cn>.pem`, `<cn>.key`).
    pub fn client_cert(&self, cn: &str) -> Issued {
        issue(&self.issuer, &self.dir, cn, Some(cn), false)
    }

    /// The `[[listeners]]` settings of `url` with this PKI's server files when it is TLS.
    pub fn listener(&self, url: &str) -> ListenerConfig {
        let mut l = ListenerConfig::new(url.parse().expect("listener url"));
        if l.url.kind.is_tls() {
            l.cert = Some(self.server.cert_file.clone());
            l.key = Some(self.server.key_file.clone());
        }
        l
    }

    /// The same listener asking for client certificates from this CA, whose identity is
    /// the username.
    pub fn mtls_listener(&self, url: &str) -> ListenerConfig {
        let mut l = self.listener(url);
        l.client_ca = Some(self.ca_file.clone());
        l.require_client_cert = true;
        l.use_identity_as_username = true;
        l
    }

    /// A rustls client configuration trusting this CA.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        cert: Option<&Issued>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match cert {
            None => builder.with_no_client_auth(),
            Some(c) => builder
                .with_client_auth_cert(vec![c.der.clone()], c.key())
                .expect("client cert"),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A TOML `[[listeners]]` table for `l` (for a broker process's `--config`).
    pub fn toml(l: &ListenerConfig) -> String {
        let mut t = format!("[[listeners]]\nurl = \"{}\"\n", l.url);
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        if let Some(c) = path(&l.cert) {
            t += &format!("cert = \"{c}\"\n");
        }
        if let Some(k) = path(&l.key) {
            t += &format!("key = \"{k}\"\n");
        }
        if let Some(ca) = path(&l.client_ca) {
            t += &format!("client_ca = \"{ca}\"\n");
        }
        if l.require_client_cert {
            t += "require_client_cert = true\n";
        }
        if l.use_identity_as_username {
            t += "use_identity_as_username = true\n";
        }
        if l.proxy_protocol {
            t += "proxy_protocol = true\n";
        }
        if let Some(p) = l.tls_cipher_preference {
            t += &format!("tls_cipher_preference = \"{}\"\n", p.name());
        }
        t
    }
}

fn issue(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    dir: &DataDir,
    file: &str,
    cn: Option<&str>,
    server: bool,
) -> Issued {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    if server {
        params
            .subject_alt_names
            .push(SanType::DnsName("localhost".try_into().expect("dns")));
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    let cert_file = dir.0.join(format!("{file}.pem"));
    let key_file = dir.0.join(format!("{file}.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    Issued {
        der: cert.der().clone(),
        key_der: key.serialize_der(),
        cert_file,
        key_file,
    }
}

#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A byte stream: TCP or TLS over TCP.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// What a test client speaks MQTT over.
pub enum Link {
    Stream(Stream),
    Ws(Box<tungstenite::WebSocket<Stream>>),
}

impl Link {
    /// A connection to a listener of `kind` at `addr`: TLS handshakes against `tls` (a
    /// client configuration trusting the test CA), WebSocket upgrades on `/mqtt` with the
    /// `mqtt` subprotocol. Everything is done before it returns.
    pub fn open(
        kind: ListenerKind,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Link {
        let tcp = TcpStream::connect(addr).expect("tcp connect");
        tcp.set_nodelay(true).expect("nodelay");
        tcp.set_read_timeout(Some(super::WAIT)).expect("timeout");
        let stream = if kind.is_tls() {
            let config = tls.expect("a TLS client configuration");
            let name = ServerName::try_from("localhost").expect("name");
            let conn = rustls::ClientConnection::new(config, name).expect("tls client");
            let mut s = rustls::StreamOwned::new(conn, tcp);
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock).expect("TLS handshake");
            }
            Stream::Tls(Box::new(s))
        } else {
            Stream::Tcp(tcp)
        };
        if !kind.is_websocket() {
            return Link::Stream(stream);
        }
        let scheme = if kind.is_tls() { "wss" } else { "ws" };
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{scheme}://localhost:{}/mqtt",
            addr.port()
        ))
        .expect("request");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
        let (ws, response) = tungstenite::client::client(request, stream).expect("upgrade");
        assert_eq!(response.status(), 101);
        Link::Ws(Box::new(ws))
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Link::Stream(s) => s.tcp(),
            Link::Ws(ws) => ws.get_ref().tcp(),
        }
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.tcp().set_read_timeout(Some(d)).expect("timeout");
    }

    /// Writes all of `bytes` (one binary frame over WebSocket).
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Link::Stream(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Link::Ws(ws) => ws
                .send(tungstenite::Message::binary(bytes.to_vec()))
                .map_err(ws_error),
        }
    }

    /// Reads what arrives (0: the peer closed).
    pub fn read(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Link::Stream(s) => {
                let mut chunk = [0u8; 65_536];
                let n = s.read(&mut chunk)?;
                buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Link::Ws(ws) => loop {
                match ws.read().map_err(ws_error)? {
                    tungstenite::Message::Binary(b) => {
                        buf.extend_from_slice(&b);
                        return Ok(b.len().max(1));
                    }
                    tungstenite::Message::Close(_) => return Ok(0),
                    _ => continue,
                }
            },
        }
    }

    /// Closes the writing side (TLS close_notify, WebSocket close frame, then TCP FIN).
    pub fn shutdown(&mut self) {
        match self {
            Link::Stream(Stream::Tcp(_)) => {}
            Link::Stream(Stream::Tls(s)) => {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
            Link::Ws(ws) => {
                let _ = ws.close(None);
                let _ = ws.flush();
            }
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write);
    }
}

/// A WebSocket failure as an I/O error: timeouts stay what they are; anything else means the
/// connection is over (closed, reset, or a frame the client refuses).
fn ws_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::ConnectionReset, other.to_string()),
    }
}

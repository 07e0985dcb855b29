//! Memory an idle connection's transport holds, counted by this binary's allocator: live
//! heap bytes after N connections finished their handshake and exchanged a packet each,
//! minus before, divided by N (the `Box<Transport>` included; allocator rounding and the
//! kernel's socket buffers not). Prints the figures (`--nocapture`) and holds TLS to the
//! 4 KB goal of issue 10, with the listener's default cipher preference (ChaCha20-Poly1305,
//! whose record keys are 44 bytes a direction) and, for comparison, with the client's
//! AES-256-GCM (`tls_cipher_preference = "client"`).
//!
//! `cargo test --test transport_memory -- --nocapture`

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::BytesMut;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use ringmq::config::{Limits, ListenerConfig, TlsCipherPreference};
use ringmq::transport::{ListenerRuntime, ReadStatus, Transport};
use rustls::CipherSuite;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Counts live heap bytes (requested sizes).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to `System` unchanged; the counter is only arithmetic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Connections measured per case.
const N: usize = 1000;

/// Handshakes before measuring: fills rustls's session cache (256 entries, shared by the
/// listener) so that its size is not charged to the measured connections.
const WARM_UP: usize = 300;

const CONNECT: &[u8] = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd";

struct Pki {
    dir: std::path::PathBuf,
    ca: CertificateDer<'static>,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "memory test CA");
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        let dir = std::env::temp_dir().join(format!("ringmq-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = issuer.as_ref().der().clone();
        std::fs::write(dir.join("ca.pem"), issuer.as_ref().pem()).expect("ca");
        let pki = Pki { dir, ca, issuer };
        let (cert, key) = pki.issue("localhost");
        std::fs::write(pki.dir.join("server.pem"), cert.pem()).expect("cert");
        std::fs::write(pki.dir.join("server.key"), key.serialize_pem()).expect("key");
        pki
    }

    fn issue(&self, name: &str) -> (rcgen::Certificate, KeyPair) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert, key)
    }

    fn listener(&self, url: &str, mtls: bool) -> Arc<ListenerRuntime> {
        self.listener_with(url, mtls, None)
    }

    fn listener_with(
        &self,
        url: &str,
        mtls: bool,
        preference: Option<TlsCipherPreference>,
    ) -> Arc<ListenerRuntime> {
        let mut l = ListenerConfig::new(url.parse().expect("url"));
        l.tls_cipher_preference = preference;
        if url.starts_with("mqtts") || url.starts_with("wss") {
            l.cert = Some(self.dir.join("server.pem"));
            l.key = Some(self.dir.join("server.key"));
        }
        if mtls {
            l.client_ca = Some(self.dir.join("ca.pem"));
            l.require_client_cert = true;
            l.use_identity_as_username = true;
        }
        ListenerRuntime::load(&l, &Limits::default()).expect("listener")
    }

    fn client(&self, mtls: bool, tls12: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        Arc::new(if mtls {
            let (cert, key) = self.issue("device-1");
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            builder
                .with_client_auth_cert(vec![cert.der().clone()], key)
                .expect("client cert")
        } else {
            builder.with_no_client_auth()
        })
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server side of a connection under test.
trait Server {
    /// Takes bytes from the client; returns bytes for it, and MQTT bytes received.
    fn exchange(&mut self, from_client: &mut [u8], app: &mut BytesMut) -> Vec<u8>;
}

impl Server for Box<Transport> {
    fn exchange(&mut self, from_client: &mut [u8], app: &mut BytesMut) -> Vec<u8> {
        let mut wire = BytesMut::new();
        let status = self.read(from_client, app, &mut wire).expect("read");
        assert_eq!(status, ReadStatus::Open);
        wire.to_vec()
    }
}

impl Server for rustls::ServerConnection {
    fn exchange(&mut self, from_client: &mut [u8], app: &mut BytesMut) -> Vec<u8> {
        let mut input = &from_client[..];
        while !input.is_empty() {
            self.read_tls(&mut input).expect("read_tls");
            self.process_new_packets().expect("process");
        }
        let mut buf = [0u8; 1024];
        while let Ok(n) = self.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            app.extend_from_slice(&buf[..n]);
        }
        let mut out = Vec::new();
        while self.wants_write() {
            self.write_tls(&mut out).expect("write_tls");
        }
        out
    }
}

/// TLS handshake with a rustls client, then one CONNECT in and one CONNACK out; returns the
/// cipher suite agreed.
fn tls_session<S: Server>(
    server: &mut S,
    client: Arc<rustls::ClientConfig>,
    ws: bool,
) -> CipherSuite {
    let name = "localhost".try_into().expect("name");
    let mut client = rustls::ClientConnection::new(client, name).expect("client");
    let mut app = BytesMut::new();
    let mut sent_request = false;
    for _ in 0..32 {
        if !client.is_handshaking() && !sent_request {
            sent_request = true;
            if ws {
                client.writer().write_all(&ws_request()).expect("request");
            }
            client
                .writer()
                .write_all(&ws_wrap(CONNECT, ws))
                .expect("connect");
        }
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).expect("write_tls");
        }
        let back = server.exchange(&mut out, &mut app);
        let mut back = &back[..];
        while !back.is_empty() {
            client.read_tls(&mut back).expect("read_tls");
            client.process_new_packets().expect("client process");
        }
        if out.is_empty() && sent_request && !app.is_empty() {
            break;
        }
    }
    assert_eq!(&app[..], CONNECT);
    client
        .negotiated_cipher_suite()
        .expect("handshake done")
        .suite()
}

fn ws_request() -> Vec<u8> {
    b"GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
      Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        .to_vec()
}

fn ws_wrap(payload: &[u8], ws: bool) -> Vec<u8> {
    if !ws {
        return payload.to_vec();
    }
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x82, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

/// Live heap bytes per connection that `make` leaves behind.
fn per_connection<T>(mut make: impl FnMut() -> T) -> usize {
    for _ in 0..WARM_UP {
        drop(make());
    }
    let mut kept = Vec::with_capacity(N);
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..N {
        kept.push(make());
    }
    let after = LIVE.load(Ordering::Relaxed);
    drop(kept);
    usize::try_from((after - before) / N as isize).unwrap_or(0)
}

fn transport(runtime: &Arc<ListenerRuntime>) -> Box<Transport> {
    runtime
        .new_transport()
        .expect("transport")
        .expect("not plain")
}

#[test]
fn idle_transport_memory() {
    let pki = Pki::new();
    let mqtts = pki.listener("mqtts://127.0.0.1:8883", false);
    let client13 = pki.client(false, false);
    // The client (rustls's defaults) lists AES-256-GCM first and ChaCha20-Poly1305 third:
    // the listener's default preference takes ChaCha20, `client` the client's first.
    let chacha13 = CipherSuite::TLS13_CHACHA20_POLY1305_SHA256;
    let tls13 = per_connection(|| {
        let mut t = transport(&mqtts);
        assert_eq!(tls_session(&mut t, client13.clone(), false), chacha13);
        assert_eq!(t.buffered(), 0);
        t
    });
    let client12 = pki.client(false, true);
    let tls12 = per_connection(|| {
        let mut t = transport(&mqtts);
        let suite = tls_session(&mut t, client12.clone(), false);
        assert_eq!(
            suite,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        );
        t
    });
    let by_client = pki.listener_with(
        "mqtts://127.0.0.1:8885",
        false,
        Some(TlsCipherPreference::Client),
    );
    let aes13 = per_connection(|| {
        let mut t = transport(&by_client);
        let suite = tls_session(&mut t, client13.clone(), false);
        assert_eq!(suite, CipherSuite::TLS13_AES_256_GCM_SHA384);
        t
    });
    let aes12 = per_connection(|| {
        let mut t = transport(&by_client);
        let suite = tls_session(&mut t, client12.clone(), false);
        assert_eq!(suite, CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384);
        t
    });
    let mtls_listener = pki.listener("mqtts://127.0.0.1:8884", true);
    let mtls_client = pki.client(true, false);
    let mtls = per_connection(|| {
        let mut t = transport(&mtls_listener);
        assert_eq!(tls_session(&mut t, mtls_client.clone(), false), chacha13);
        assert_eq!(t.peer_identity().as_deref(), Some("device-1"));
        t
    });
    let config = mqtts.tls().expect("tls").current();
    let buffered = per_connection(|| {
        let mut s = rustls::ServerConnection::new(config.clone()).expect("server");
        assert_eq!(tls_session(&mut s, client13.clone(), false), chacha13);
        s
    });
    let ws_listener = pki.listener("ws://127.0.0.1:8080/mqtt", false);
    let ws = per_connection(|| {
        let mut t = transport(&ws_listener);
        let mut bytes = ws_request();
        bytes.extend(ws_wrap(CONNECT, true));
        let mut app = BytesMut::new();
        t.exchange(&mut bytes, &mut app);
        assert_eq!(&app[..], CONNECT);
        t
    });
    let wss_listener = pki.listener("wss://127.0.0.1:8443/mqtt", false);
    let wss = per_connection(|| {
        let mut t = transport(&wss_listener);
        assert_eq!(tls_session(&mut t, client13.clone(), true), chacha13);
        t
    });
    let proxy_listener = {
        let mut l = ListenerConfig::new("mqtt://127.0.0.1:1884".parse().expect("url"));
        l.proxy_protocol = true;
        ListenerRuntime::load(&l, &Limits::default()).expect("listener")
    };
    let proxy = per_connection(|| {
        let mut t = transport(&proxy_listener);
        let mut bytes = b"PROXY TCP4 198.51.100.1 192.0.2.1 5000 1884\r\n".to_vec();
        bytes.extend_from_slice(CONNECT);
        t.exchange(&mut bytes, &mut BytesMut::new());
        t
    });
    eprintln!("idle transport memory, live heap bytes per connection ({N} connections):");
    eprintln!(
        "  (size_of Transport {} B, rustls::server::UnbufferedServerConnection {} B)",
        std::mem::size_of::<Transport>(),
        std::mem::size_of::<rustls::server::UnbufferedServerConnection>()
    );
    eprintln!("  mqtts, TLS 1.3 (ChaCha20-Poly1305):  {tls13:>6}");
    eprintln!("  mqtts, TLS 1.2 (ChaCha20-Poly1305):  {tls12:>6}");
    eprintln!("  mqtts, TLS 1.3, client's AES-256-GCM: {aes13:>5}");
    eprintln!("  mqtts, TLS 1.2, client's AES-256-GCM: {aes12:>5}");
    eprintln!("  mqtts, TLS 1.3, client certificate: {mtls:>6}");
    eprintln!("  rustls::ServerConnection, TLS 1.3:  {buffered:>6}");
    eprintln!("  ws:                                 {ws:>6}");
    eprintln!("  wss, TLS 1.3:                       {wss:>6}");
    eprintln!("  mqtt behind PROXY:                  {proxy:>6}");
    assert!(
        tls13 <= 4096,
        "idle TLS connection: {tls13} bytes (goal: 4 KB)"
    );
    assert!(tls12 <= 4096 && mtls <= 4096 && wss <= 4096);
    // The record keys: 2 x 560 bytes with ring's AES-GCM, 2 x 44 with ChaCha20's.
    assert!(
        tls13 + 1000 <= aes13 && tls12 + 1000 <= aes12,
        "ChaCha20 {tls13}/{tls12} B, AES-GCM {aes13}/{aes12} B"
    );
    assert!(ws <= 256 && proxy <= 256);
}

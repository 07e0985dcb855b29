//! Transports on the broker as a process (its log, its exit status, its memory, signals):
//! listener settings that must stop the start, SIGHUP reloading TLS certificates, the PROXY
//! protocol, and bad input on each transport (a TLS record flood, a WebSocket frame of
//! 2^63 bytes, a 1 MB upgrade request, slow handshakes) bounded in memory and time while an
//! existing client's PINGRESP stays fast.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{BrokerProcess, DataDir};
use common::transport::{Link, Pki};
use common::{Client, connect_packet};
use ringmq::codec::{Packet, ProtocolVersion, ReasonCode};
use ringmq::config::ListenerKind;

const V: ProtocolVersion = ProtocolVersion::V311;

/// The broker's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Waits until the broker's log contains `text`.
fn wait_log(broker: &BrokerProcess, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = broker.log();
        if log.contains(text) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {text:?} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain MQTT client whose PINGRESP time is the measure of "other clients unaffected".
struct Pinger(Client);

impl Pinger {
    fn new(addr: SocketAddr) -> Pinger {
        Pinger(Client::connect(addr, V, "pinger", true).0)
    }

    /// One PINGREQ; fails when the PINGRESP takes longer than `bound`.
    fn ping_within(&mut self, bound: Duration) -> Duration {
        let start = Instant::now();
        self.0.ping();
        let took = start.elapsed();
        assert!(took < bound, "PINGRESP took {took:?} (bound {bound:?})");
        took
    }
}

/// Reads until the broker closes the socket (or `limit` passes: the test fails); returns
/// what arrived.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 16_384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "not closed within {limit:?}");
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return got,
        }
    }
}

fn tls_config_toml(pki: &Pki, extra: &str) -> String {
    format!(
        "listen = [\"127.0.0.1:0\"]\n{}{}\n[limits]\nconnect_timeout_secs = 2\n",
        Pki::toml(&pki.listener("mqtts://127.0.0.1:0")),
        extra
    )
}

#[test]
fn a_listener_whose_files_fail_stops_the_start_with_status_2() {
    let pki = Pki::new("bad-files");
    let data = DataDir::new("bad-files");
    let missing = pki.dir.0.join("missing.pem");
    let other = pki.client_cert("someone");
    let cases = [
        (
            format!(
                "[[listeners]]\nurl = \"mqtts://127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
                missing.display(),
                pki.server.key_file.display()
            ),
            "missing.pem",
        ),
        (
            format!(
                "[[listeners]]\nurl = \"mqtts://127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
                pki.server.cert_file.display(),
                other.key_file.display()
            ),
            "someone.key",
        ),
        (
            "[[listeners]]\nurl = \"ws://127.0.0.1:0/mqtt\"\ncert = \"c.pem\"\n".to_owned(),
            "not TLS",
        ),
        (
            format!(
                "[[listeners]]\nurl = \"mqtts://127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\
                 tls_cipher_preference = \"fastest\"\n",
                pki.server.cert_file.display(),
                pki.server.key_file.display()
            ),
            "unknown tls_cipher_preference \"fastest\" (compact or client)",
        ),
    ];
    for (toml, names) in cases {
        let file = data.0.join("bad.toml");
        std::fs::write(&file, &toml).expect("write");
        let args = ["--config", file.to_str().expect("path")];
        match BrokerProcess::try_start_raw(&data, &args) {
            Ok(_) => panic!("started with {toml}"),
            Err((status, log)) => {
                assert!(status.contains("exit status: 2"), "{status}: {log}");
                assert!(log.contains(names), "the message names {names:?}: {log}");
                assert!(!log.contains("listening on"), "{log}");
            }
        }
    }
}

#[test]
fn a_port_in_use_is_a_clear_message_and_status_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let data = DataDir::new("port-in-use");
    let listen = format!("ws://{addr}/mqtt");
    match BrokerProcess::try_start_raw(&data, &["--listen", &listen]) {
        Ok(_) => panic!("started on a port in use"),
        Err((status, log)) => {
            assert!(status.contains("exit status: 2"), "{status}: {log}");
            assert!(
                log.contains(&format!("cannot listen on {addr}")) && log.contains("in use"),
                "{log}"
            );
        }
    }
}

/// Whether a TLS handshake with `config` completes against `addr`.
fn handshake(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<(), String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let name = "localhost".try_into().map_err(|_| "name".to_owned())?;
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn sighup_reloads_certificates_and_keeps_the_old_on_failure() {
    let a = Pki::new("reload-a");
    let b = Pki::new("reload-b");
    let dir = DataDir::new("reload-files");
    let cert = dir.0.join("server.pem");
    let key = dir.0.join("server.key");
    let install = |pki: &Pki| {
        std::fs::copy(&pki.server.cert_file, &cert).expect("cert");
        std::fs::copy(&pki.server.key_file, &key).expect("key");
    };
    install(&a);
    let toml = format!(
        "[[listeners]]\nurl = \"mqtts://127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let broker = BrokerProcess::start_config(&toml, &[]);
    let addr = broker.addrs[0];
    let (trust_a, trust_b) = (a.client_config(&[], None), b.client_config(&[], None));
    handshake(addr, Arc::clone(&trust_a)).expect("A's certificate is served");
    let link = Link::open(ListenerKind::Mqtts, addr, Some(Arc::clone(&trust_a)));
    let (mut before, _) = Client::connect_over(link, connect_packet(V, "before", true));

    install(&b);
    broker.signal(libc::SIGHUP);
    wait_log(&broker, "TLS certificate reloaded");
    handshake(addr, Arc::clone(&trust_b)).expect("B's certificate is served");
    assert!(
        handshake(addr, Arc::clone(&trust_a)).is_err(),
        "A's is gone"
    );
    before.ping(); // open connections keep their session

    std::fs::write(&cert, "not a certificate").expect("garbage");
    broker.signal(libc::SIGHUP);
    let log = wait_log(&broker, "keeps its previous certificate");
    assert!(
        log.contains("server.pem"),
        "the error names the file: {log}"
    );
    handshake(addr, trust_b).expect("B's certificate is still served");
    before.ping();
    assert_eq!(broker.terminate(Duration::from_secs(10)).code(), Some(0));
}

/// A PROXY v2 header for a TCP over IPv4 connection from `src`.
fn proxy_v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&1883u16.to_be_bytes());
    h
}

fn connect_bytes(id: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    let connect = Packet::Connect(Box::new(connect_packet(V, id, true)));
    ringmq::codec::encode(&connect, V, &mut out);
    out.to_vec()
}

/// Sends `prefix` + CONNECT; returns whether CONNACK 0 came back.
fn try_connect(addr: SocketAddr, prefix: &[u8], id: &str) -> bool {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(&connect_bytes(id));
    let _ = s.write_all(&bytes);
    let got = read_until_closed_or(&mut s, 4);
    got.starts_with(&[0x20, 0x02, 0x00, 0x00])
}

/// Reads until `n` bytes, a close or 5 s.
fn read_until_closed_or(s: &mut TcpStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < n {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
    }
    got
}

#[test]
fn proxy_protocol_gives_the_client_address_and_is_required_only_where_enabled() {
    let toml = "listen = [\"127.0.0.1:0\"]\n[[listeners]]\nurl = \"mqtt://127.0.0.1:0\"\n\
                proxy_protocol = true\n";
    let broker = BrokerProcess::start_config(toml, &[]);
    let (plain, proxied) = (broker.addrs[0], broker.addrs[1]);

    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 1883\r\n";
    assert!(try_connect(proxied, v1, "proxied-v1"));
    wait_log(
        &broker,
        "client proxied-v1 connected from 203.0.113.7:51234",
    );
    assert!(try_connect(
        proxied,
        &proxy_v2([198, 51, 100, 9], 4242),
        "proxied-v2"
    ));
    wait_log(
        &broker,
        "client proxied-v2 connected from 198.51.100.9:4242",
    );
    let log = broker.log();
    assert!(log.contains("PROXY header from 127.0.0.1:"), "{log}");

    // Malformed or missing: closed without CONNACK.
    assert!(!try_connect(
        proxied,
        b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n",
        "bad-v1"
    ));
    assert!(!try_connect(proxied, b"", "no-header"));
    let mut v2 = proxy_v2([10, 0, 0, 1], 1);
    v2[12] = 0x31; // version 3
    assert!(!try_connect(proxied, &v2, "bad-v2"));
    // A header where none is expected is not MQTT.
    assert!(!try_connect(plain, v1, "unexpected-v1"));
    assert!(!try_connect(
        plain,
        &proxy_v2([10, 0, 0, 1], 1),
        "unexpected-v2"
    ));
    // The logger thread writes the close lines shortly after the closes.
    let log = wait_log(&broker, "does not start with a PROXY protocol header");
    for id in [
        "bad-v1",
        "no-header",
        "bad-v2",
        "unexpected-v1",
        "unexpected-v2",
    ] {
        assert!(
            !log.contains(&format!("client {id} connected")),
            "{id}: {log}"
        );
    }
}

/// Listeners of every kind with a 2 s CONNECT (and handshake) timeout and the pinger's
/// plain listener first.
fn bad_input_broker(pki: &Pki) -> BrokerProcess {
    let extra = Pki::toml(&pki.listener("ws://127.0.0.1:0/mqtt"))
        + &Pki::toml(&pki.listener("wss://127.0.0.1:0/mqtt"));
    BrokerProcess::start_config(&tls_config_toml(pki, &extra), &["--shards", "2"])
}

/// A TLS record header: handshake content, TLS 1.0 record version, `len` bytes.
fn record(len: u16) -> [u8; 5] {
    let [hi, lo] = len.to_be_bytes();
    [0x16, 0x03, 0x01, hi, lo]
}

#[test]
fn tls_record_flood_before_the_handshake_is_bounded() {
    let pki = Pki::new("flood");
    let broker = bad_input_broker(&pki);
    let (plain, mqtts) = (broker.addrs[0], broker.addrs[1]);
    let mut pinger = Pinger::new(plain);
    let rss_before = rss_kib(broker.pid());
    let start = Instant::now();
    let floods: Vec<_> = (0..14)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(mqtts).expect("connect");
                // A ClientHello header declaring 16 MB, then records of garbage behind it:
                // 10 MB offered per socket.
                let mut first = record(4).to_vec();
                first.extend_from_slice(&[0x01, 0xff, 0xff, 0xff]);
                let mut sent = s.write(&first).unwrap_or(0);
                let mut chunk = record(16_384).to_vec();
                chunk.resize(5 + 16_384, 0x41);
                while sent < 10_000_000 {
                    match s.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(_) => break,
                    }
                }
                (sent, read_until_closed(&mut s, Duration::from_secs(5)))
            })
        })
        .collect();
    for _ in 0..10 {
        pinger.ping_within(Duration::from_millis(300));
    }
    for f in floods {
        // What follows the refusal may be read and thrown away while the connection lingers
        // (so that no reset destroys the alert); it is never kept: the bounds are the RSS
        // and the time below, and `read_until_closed` sees every connection end.
        let (_sent, answer) = f.join().expect("flood thread");
        // rustls answers a refused ClientHello with an alert record (content type 21).
        assert!(answer.is_empty() || answer[0] == 0x15, "{answer:?}");
    }
    let grown = rss_kib(broker.pid()).saturating_sub(rss_before);
    assert!(grown < 20 * 1024, "RSS grew by {grown} KiB");
    assert!(start.elapsed() < Duration::from_secs(10));
    pinger.ping_within(Duration::from_millis(300));
}

fn ws_upgrade_request(extra_header: &str) -> Vec<u8> {
    format!(
        "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n{extra_header}\r\n"
    )
    .into_bytes()
}

#[test]
fn websocket_frame_claiming_2_pow_63_bytes_is_refused_from_its_header() {
    let pki = Pki::new("ws-huge");
    let broker = bad_input_broker(&pki);
    let (plain, ws) = (broker.addrs[0], broker.addrs[2]);
    let mut pinger = Pinger::new(plain);
    let rss_before = rss_kib(broker.pid());
    let mut s = TcpStream::connect(ws).expect("connect");
    s.write_all(&ws_upgrade_request("")).expect("upgrade");
    let response = read_until_closed_or(&mut s, 12);
    assert!(response.starts_with(b"HTTP/1.1 101"), "{response:?}");
    let mut header = vec![0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    header.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&header).expect("frame header");
    let _ = s.write_all(&[0x55; 65_536]);
    let got = read_until_closed(&mut s, Duration::from_secs(5));
    // After the rest of the 101: a close frame with status 1009 (message too big).
    let close = [0x88, 0x02, 0x03, 0xf1];
    assert!(got.windows(4).any(|w| w == close), "{got:?}");
    pinger.ping_within(Duration::from_millis(300));
    let grown = rss_kib(broker.pid()).saturating_sub(rss_before);
    assert!(grown < 4 * 1024, "RSS grew by {grown} KiB");
}

#[test]
fn a_one_megabyte_upgrade_request_is_refused_at_8_kib() {
    let pki = Pki::new("ws-big-header");
    let broker = bad_input_broker(&pki);
    let (plain, ws, wss) = (broker.addrs[0], broker.addrs[2], broker.addrs[3]);
    let mut pinger = Pinger::new(plain);
    let header = format!("X-Filler: {}\r\n", "a".repeat(1 << 20));
    let request = ws_upgrade_request(&header);
    let mut s = TcpStream::connect(ws).expect("connect");
    let start = Instant::now();
    let _ = s.write_all(&request); // the broker may close before taking it all
    let got = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(
        got.starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    // The same over TLS: refused, then closed.
    let config = pki.client_config(&[b"http/1.1"], None);
    let tcp = TcpStream::connect(wss).expect("connect");
    let name = "localhost".try_into().expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Read between writes: once refused, the broker closes with our bytes unread, and the
    // reset that follows would discard an answer not read yet.
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(2)))
        .expect("timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    for chunk in request.chunks(4096) {
        if tls.write_all(chunk).is_err() {
            break;
        }
        match tls.read(&mut buf) {
            Ok(n) if n > 0 => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(_) | Err(_) => {}
        }
    }
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    if answer.is_empty() {
        let _ = tls
            .read(&mut buf)
            .map(|n| answer.extend_from_slice(&buf[..n]));
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{:?} {}",
        String::from_utf8_lossy(&answer),
        broker.log()
    );
    pinger.ping_within(Duration::from_millis(300));
}

#[test]
fn slow_handshakes_end_at_the_connect_timeout() {
    let pki = Pki::new("slowloris");
    let broker = bad_input_broker(&pki);
    let (plain, mqtts, ws, wss) = (
        broker.addrs[0],
        broker.addrs[1],
        broker.addrs[2],
        broker.addrs[3],
    );
    let mut pinger = Pinger::new(plain);
    let rss_before = rss_kib(broker.pid());
    // 300 slow clients: each sends a byte of its handshake every 200 ms and never finishes.
    let hello = {
        let mut h = record(200).to_vec();
        h.extend_from_slice(&[0x01, 0x00, 0x00, 196, 0x03, 0x03]);
        h
    };
    let upgrade = ws_upgrade_request("");
    let start = Instant::now();
    let slow: Vec<_> = (0..300)
        .map(|i| {
            let (addr, bytes) = match i % 3 {
                0 => (mqtts, hello.clone()),
                1 => (ws, upgrade.clone()),
                _ => (wss, hello.clone()),
            };
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .expect("timeout");
                let mut buf = [0u8; 256];
                for b in bytes.iter().cycle() {
                    if s.write_all(&[*b]).is_err() {
                        break;
                    }
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Ok(_) | Err(_) => break,
                    }
                    if start.elapsed() > Duration::from_secs(8) {
                        return None;
                    }
                }
                Some(start.elapsed())
            })
        })
        .collect();
    for _ in 0..10 {
        pinger.ping_within(Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(100));
    }
    for t in slow {
        let closed_after = t.join().expect("thread").expect("closed by the broker");
        assert!(closed_after < Duration::from_secs(5), "{closed_after:?}");
    }
    let grown = rss_kib(broker.pid()).saturating_sub(rss_before);
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");
    pinger.ping_within(Duration::from_millis(300));
    wait_log(&broker, "connection closed: no CONNECT in time");
    let _ = ReasonCode::Success;
}

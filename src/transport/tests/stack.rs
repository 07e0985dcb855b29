//! Layers composed per listener kind: plain, PROXY in front of each layer, WebSocket over
//! TLS with tungstenite over a rustls client.

use std::io::Write;

use bytes::BytesMut;
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

use super::super::{CloseReason, ProxyAddr, ProxyError, ReadStatus, TransportError};
use super::ws::Loopback;
use super::*;

const PROXY_V1: &[u8] = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 1883\r\n";
const CONNECT: &[u8] = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd";

fn plain(url: &str, proxy: bool) -> ListenerConfig {
    let mut l = ListenerConfig::new(url.parse().expect("url"));
    l.proxy_protocol = proxy;
    l
}

#[test]
fn plain_tcp_has_no_transport() {
    let runtime = runtime(&plain("mqtt://127.0.0.1:1883", false));
    assert!(runtime.new_transport().expect("ok").is_none());
    let runtime = runtime_of("127.0.0.1:1883");
    assert!(runtime.new_transport().expect("ok").is_none());
}

fn runtime_of(s: &str) -> std::sync::Arc<ListenerRuntime> {
    runtime(&ListenerConfig::new(s.parse().expect("url")))
}

#[test]
fn proxy_header_then_mqtt() {
    let mut t = transport(&plain("mqtt://127.0.0.1:1883", true));
    let mut stream = PROXY_V1.to_vec();
    stream.extend_from_slice(CONNECT);
    for chunk in [1, 10, 1000] {
        let mut t = transport(&plain("mqtt://127.0.0.1:1883", true));
        let (mut seen, mut wire) = (Seen::default(), BytesMut::new());
        feed(&mut t, &stream, chunk, &mut seen, &mut wire).expect("read");
        assert_eq!(&seen.app[..], CONNECT, "chunk {chunk}");
        assert!(wire.is_empty());
        assert_eq!(
            t.client_addr(),
            Some("203.0.113.7:40000".parse().expect("addr"))
        );
        assert!(t.handshake_done());
    }
    let mut wire = BytesMut::new();
    t.write(b"\x20\x02\x00\x00", &mut wire).expect("write");
    assert_eq!(&wire[..], b"\x20\x02\x00\x00", "plain bytes pass through");

    let (mut app, mut wire) = (BytesMut::new(), BytesMut::new());
    let mut no_header = CONNECT.to_vec();
    let err = t_fresh_read(&mut no_header, &mut app, &mut wire);
    assert!(
        matches!(err, TransportError::Proxy(ProxyError::Missing)),
        "{err}"
    );
    assert!(
        app.is_empty(),
        "nothing reaches MQTT from a connection without its header"
    );
}

fn t_fresh_read(input: &mut [u8], app: &mut BytesMut, wire: &mut BytesMut) -> TransportError {
    let mut t = transport(&plain("mqtt://127.0.0.1:1883", true));
    let err = t.read(input, app, wire).expect_err("refused");
    assert_eq!(
        t.read(&mut [1, 2], app, wire).expect("closed"),
        ReadStatus::Closed
    );
    err
}

#[test]
fn proxy_v2_local_then_tls() {
    let pki = Pki::new();
    let mut config = pki.listener("mqtts://127.0.0.1:8883");
    config.proxy_protocol = true;
    let mut t = transport(&config);
    let mut local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    let (mut app, mut wire) = (BytesMut::new(), BytesMut::new());
    assert_eq!(
        t.read(&mut local, &mut app, &mut wire).expect("header"),
        ReadStatus::Open
    );
    assert_eq!(t.proxy_addr(), Some(ProxyAddr::Local));
    assert_eq!(t.client_addr(), None, "LOCAL: the socket's address stands");
    assert!(!t.handshake_done());
    let mut client = pki.client(&[b"mqtt"], None);
    let mut seen = Seen::default();
    pump(&mut client, &mut t, usize::MAX, &mut seen).expect("handshake");
    client_send(&mut client, CONNECT);
    pump(&mut client, &mut t, usize::MAX, &mut seen).expect("data");
    assert_eq!(&seen.app[..], CONNECT);
    assert!(t.handshake_done());
}

#[test]
fn proxy_then_websocket() {
    let mut t = transport(&plain("ws://127.0.0.1:8080/mqtt", true));
    let mut stream = PROXY_V1.to_vec();
    stream.extend_from_slice(
        b"GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Protocol: mqtt\r\n\r\n",
    );
    let (mut seen, mut wire) = (Seen::default(), BytesMut::new());
    feed(&mut t, &stream, 7, &mut seen, &mut wire).expect("upgrade");
    assert!(wire.starts_with(b"HTTP/1.1 101 "));
    assert_eq!(
        t.client_addr(),
        Some("203.0.113.7:40000".parse().expect("addr"))
    );
}

type WssClient = tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, Loopback>>;

/// A tungstenite client over a rustls client over a loopback into a `wss://` transport,
/// after `prefix` (a PROXY header) was sent in clear.
fn wss_client(pki: &Pki, proxy: bool, prefix: &[u8]) -> WssClient {
    let mut config = pki.listener("wss://127.0.0.1:8443/mqtt");
    config.proxy_protocol = proxy;
    let mut loopback = Loopback::new(transport(&config));
    loopback.write_all(prefix).expect("prefix");
    let tls = rustls::StreamOwned::new(pki.client(&[b"http/1.1"], None), loopback);
    let mut request = "wss://localhost:8443/mqtt"
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let mut attempt = tungstenite::client(request, tls);
    for _ in 0..16 {
        match attempt {
            Ok((ws, response)) => {
                assert_eq!(response.status(), 101);
                return ws;
            }
            Err(tungstenite::HandshakeError::Interrupted(mid)) => attempt = mid.handshake(),
            Err(tungstenite::HandshakeError::Failure(e)) => panic!("handshake: {e}"),
        }
    }
    panic!("handshake did not finish");
}

fn loopback(ws: &mut WssClient) -> &mut Loopback {
    &mut ws.get_mut().sock
}

#[test]
fn websocket_over_tls_with_tungstenite() {
    let pki = Pki::new();
    let mut ws = wss_client(&pki, true, PROXY_V1);
    assert!(loopback(&mut ws).transport.handshake_done());
    assert_eq!(
        loopback(&mut ws).transport.alpn_protocol(),
        Some(&b"http/1.1"[..])
    );
    assert_eq!(
        loopback(&mut ws).transport.client_addr(),
        Some("203.0.113.7:40000".parse().expect("addr"))
    );
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(CONNECT.to_vec())).expect("send");
    ws.send(Message::binary(big.clone())).expect("send big");
    ws.send(Message::Ping(b"p".to_vec().into())).expect("ping");
    let app = loopback(&mut ws).app.split();
    assert_eq!(app.len(), CONNECT.len() + big.len());
    assert!(app[CONNECT.len()..] == big[..]);

    loopback(&mut ws).send(b"\x20\x02\x00\x00");
    let mut got = Vec::new();
    while got.len() < 2 {
        match ws.read() {
            Ok(m) => got.push(m),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("missing messages: {got:?}")
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(&got[0], Message::Pong(p) if &p[..] == b"p"));
    assert!(matches!(&got[1], Message::Binary(b) if &b[..] == b"\x20\x02\x00\x00"));

    // The broker closes: an encrypted close frame, then close_notify.
    let mut wire = BytesMut::new();
    loopback(&mut ws)
        .transport
        .close(CloseReason::GoingAway, &mut wire);
    assert!(!wire.is_empty());
    let lb = loopback(&mut ws);
    lb.deliver(&wire);
    match ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("{other:?}"),
    }
}

#[test]
fn websocket_error_inside_tls_sends_close_then_close_notify() {
    let pki = Pki::new();
    let mut ws = wss_client(&pki, false, b"");
    ws.send(Message::text("MQTT is binary")).expect("send text");
    let status = loopback(&mut ws).status.clone();
    assert!(
        matches!(status, Some(Err(ref e)) if e.contains("text frame")),
        "{status:?}"
    );
    match ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1003),
        other => panic!("{other:?}"),
    }
    let stream = ws.get_mut();
    stream
        .conn
        .process_new_packets()
        .expect("close_notify is valid TLS");
}

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Feeds `stream` with a few bytes changed, in random pieces; the transport must answer
/// every piece without panicking and keep its buffers within their bounds.
fn mangle_and_feed(t: &mut Transport, stream: &[u8], rng: &mut Rng) {
    let mut stream = stream.to_vec();
    for _ in 0..rng.below(4) {
        let i = rng.below(stream.len());
        if let Some(b) = stream.get_mut(i) {
            *b = rng.next() as u8;
        }
    }
    let (mut app, mut wire) = (BytesMut::new(), BytesMut::new());
    let mut rest = &mut stream[..];
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len().min(3000));
        let (piece, later) = std::mem::take(&mut rest).split_at_mut(n);
        rest = later;
        if t.read(piece, &mut app, &mut wire).is_err() {
            break;
        }
        assert!(t.buffered() <= super::super::MAX_PENDING_HANDSHAKE);
    }
}

#[test]
fn mangled_input_never_panics() {
    let pki = Pki::new();
    let mut wss = pki.listener("wss://127.0.0.1:8443/mqtt");
    wss.proxy_protocol = true;
    let listeners = [
        runtime(&pki.listener("mqtts://127.0.0.1:8883")),
        runtime(&wss),
        runtime(&plain("ws://127.0.0.1:8080/mqtt", false)),
        runtime(&plain("mqtt://127.0.0.1:1883", true)),
    ];
    let ws_stream = {
        let mut s =
            b"GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Protocol: mqtt\r\n\r\n"
                .to_vec();
        for len in [0usize, 5, 125, 126, 300] {
            s.push(0x82);
            s.push(0x80 | len.min(126) as u8);
            if len >= 126 {
                s.extend_from_slice(&(len as u16).to_be_bytes());
            }
            s.extend_from_slice(&[9, 8, 7, 6]);
            s.extend(std::iter::repeat_n(0x33, len));
        }
        s
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let runtime = &listeners[round % listeners.len()];
        let mut t = runtime.new_transport().expect("t").expect("not plain");
        let stream = match round % listeners.len() {
            // A client's first flight (TLS listeners), possibly after a PROXY header.
            0 | 1 => {
                let mut client = pki.client(&[b"mqtt"], None);
                let mut s = if round % 4 == 1 {
                    PROXY_V1.to_vec()
                } else {
                    Vec::new()
                };
                client.write_tls(&mut s).expect("hello");
                s
            }
            2 => ws_stream.clone(),
            _ => {
                let mut s = PROXY_V1.to_vec();
                s.extend_from_slice(CONNECT);
                s
            }
        };
        if round % 5 == 0 {
            let noise: Vec<u8> = (0..rng.below(70_000)).map(|_| rng.next() as u8).collect();
            mangle_and_feed(&mut t, &noise, &mut rng);
        } else {
            mangle_and_feed(&mut t, &stream, &mut rng);
        }
    }

    // After a real handshake: mangled records.
    for _ in 0..40 {
        let mut t = transport(&pki.listener("mqtts://127.0.0.1:8883"));
        let mut client = pki.client(&[], None);
        pump(&mut client, &mut t, usize::MAX, &mut Seen::default()).expect("handshake");
        client_send(&mut client, &[0x42; 40_000]);
        let mut records = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut records).expect("records");
        }
        mangle_and_feed(&mut t, &records, &mut rng);
    }
}

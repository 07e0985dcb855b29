//! WebSocket: the upgrade and its refusals, frames as literal bytes (RFC 6455), and
//! tungstenite as a real client.

use bytes::BytesMut;

use super::super::ws::{FrameError, UpgradeError, WsError};
use super::super::ws_handshake::accept_key;
use super::super::{CloseReason, MAX_WS_REQUEST, ReadStatus, TransportError};
use super::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn request(path: &str, protocols: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: broker.example\r\nUpgrade: websocket\r\n\
         Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocols}\r\n\r\n"
    )
}

fn ws_transport() -> Box<Transport> {
    transport(&ListenerConfig::new(
        "ws://127.0.0.1:8080/mqtt".parse().expect("url"),
    ))
}

/// A client frame: FIN and opcode in `b0`, masked with a fixed key.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![b0];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

/// An upgraded transport.
fn open() -> Box<Transport> {
    let mut t = ws_transport();
    let mut wire = BytesMut::new();
    let mut seen = Seen::default();
    feed(
        &mut t,
        request("/mqtt", "mqtt").as_bytes(),
        usize::MAX,
        &mut seen,
        &mut wire,
    )
    .expect("upgrade");
    assert!(wire.starts_with(b"HTTP/1.1 101 "));
    assert!(t.handshake_done());
    t
}

fn read_all(t: &mut Transport, bytes: &[u8]) -> (Result<(), TransportError>, Seen, BytesMut) {
    let (mut seen, mut wire) = (Seen::default(), BytesMut::new());
    let r = feed(t, bytes, usize::MAX, &mut seen, &mut wire);
    (r, seen, wire)
}

#[test]
fn upgrade_answers_101_with_the_rfc_accept_key_and_mqtt() {
    // RFC 6455 section 1.3's example.
    assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    for (offered, chosen) in [
        ("mqtt", "mqtt"),
        ("mqttv3.1", "mqttv3.1"),
        ("mqttv3.1, mqtt", "mqtt"),
        ("x, mqttv3.1", "mqttv3.1"),
    ] {
        let mut t = ws_transport();
        let (r, seen, wire) = read_all(&mut t, request("/mqtt?client=1", offered).as_bytes());
        r.expect("upgrade");
        let text = std::str::from_utf8(&wire).expect("ascii");
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(
            text.contains(&format!("Sec-WebSocket-Protocol: {chosen}\r\n")),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));
        assert!(seen.app.is_empty());
        assert_eq!(t.buffered(), 0);
    }
}

#[test]
fn upgrade_in_pieces_and_frames_right_behind_it() {
    let mut stream = request("/mqtt", "mqtt").into_bytes();
    stream.extend(frame(0x82, b"\x10\x00"));
    for chunk in [1, 2, 3, 17, 100] {
        let mut t = ws_transport();
        let (mut seen, mut wire) = (Seen::default(), BytesMut::new());
        feed(&mut t, &stream, chunk, &mut seen, &mut wire).expect("upgrade");
        assert!(wire.starts_with(b"HTTP/1.1 101 "), "chunk {chunk}");
        assert_eq!(&seen.app[..], b"\x10\x00", "chunk {chunk}");
    }
}

fn refused(req: &str) -> (UpgradeError, String) {
    let mut t = ws_transport();
    let (r, seen, wire) = read_all(&mut t, req.as_bytes());
    assert!(seen.app.is_empty());
    let Err(TransportError::Ws(WsError::Upgrade(e))) = r else {
        panic!("not refused: {req:?}");
    };
    (e, String::from_utf8(wire.to_vec()).expect("ascii"))
}

#[test]
fn requests_that_do_not_upgrade_get_an_http_error() {
    let ok = request("/mqtt", "mqtt");
    let cases = [
        (
            request("/other", "mqtt"),
            UpgradeError::WrongPath,
            "404 Not Found",
        ),
        (
            request("/mqtt/x", "mqtt"),
            UpgradeError::WrongPath,
            "404 Not Found",
        ),
        (
            ok.replace("GET", "POST"),
            UpgradeError::NotGet,
            "405 Method Not Allowed",
        ),
        (
            ok.replace("HTTP/1.1\r\n", "HTTP/1.0\r\n"),
            UpgradeError::NotHttp11,
            "400 Bad Request",
        ),
        (
            ok.replace("Upgrade: websocket\r\n", ""),
            UpgradeError::NotUpgrade,
            "426 Upgrade Required",
        ),
        (
            ok.replace("keep-alive, Upgrade", "keep-alive"),
            UpgradeError::NotUpgrade,
            "426",
        ),
        (
            ok.replace("Version: 13", "Version: 8"),
            UpgradeError::UnsupportedVersion,
            "426",
        ),
        (
            ok.replace(KEY, "c2hvcnQ="),
            UpgradeError::BadKey,
            "400 Bad Request",
        ),
        (
            ok.replace("Host: broker.example\r\n", ""),
            UpgradeError::MissingHost,
            "400",
        ),
        (
            request("/mqtt", "wamp, mqttv5"),
            UpgradeError::NoMqttProtocol,
            "400",
        ),
        (
            ok.replace("Sec-WebSocket-Protocol: mqtt\r\n", ""),
            UpgradeError::NoMqttProtocol,
            "400",
        ),
        (
            "GET /mqtt HTTP/1.1\r\nHost\r\n\r\n".to_owned(),
            UpgradeError::MalformedRequest,
            "400",
        ),
        (
            "\x10\x0c\x00\x04MQTT\r\n\r\n".to_owned(),
            UpgradeError::MalformedRequest,
            "400",
        ),
    ];
    for (req, error, status) in cases {
        let (e, response) = refused(&req);
        assert_eq!(e, error, "{req:?}");
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{response}"
        );
        assert!(response.contains("Connection: close\r\n"));
        assert!(response.ends_with("\r\n\r\n"));
    }
    let (_, response) = refused(&ok.replace("Version: 13", "Version: 8"));
    assert!(
        response.contains("Sec-WebSocket-Version: 13\r\n"),
        "{response}"
    );
}

#[test]
fn oversized_requests_are_refused_early() {
    // A 1 MB header: refused within the first read, having kept at most 8 KiB.
    let huge = format!(
        "GET /mqtt HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let mut t = ws_transport();
    let (mut app, mut wire) = (BytesMut::new(), BytesMut::new());
    let mut first = huge.as_bytes()[..65_536].to_vec();
    let err = t
        .read(&mut first, &mut app, &mut wire)
        .expect_err("refused");
    assert!(matches!(
        err,
        TransportError::Ws(WsError::Upgrade(UpgradeError::RequestTooLarge))
    ));
    assert!(wire.starts_with(b"HTTP/1.1 431 "));
    // The same in small pieces: never more than 8 KiB kept.
    let mut t = ws_transport();
    let mut was_refused = false;
    for piece in huge.as_bytes().chunks(1000) {
        let mut piece = piece.to_vec();
        if t.read(&mut piece, &mut app, &mut wire).is_err() {
            was_refused = true;
            break;
        }
        assert!(t.buffered() < MAX_WS_REQUEST);
    }
    assert!(was_refused);
    let many = format!(
        "GET /mqtt HTTP/1.1\r\n{}\r\n",
        (0..100)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect::<String>()
    );
    assert_eq!(refused(&many).0, UpgradeError::RequestTooLarge);
}

#[test]
fn mqtt_bytes_across_and_within_frames() {
    let connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd";
    // One packet split over a fragmented message (with a ping in the middle), then two
    // packets in one frame.
    let mut stream = frame(0x02, &connect[..5]);
    stream.extend(frame(0x89, b"hi"));
    stream.extend(frame(0x00, &connect[5..9]));
    stream.extend(frame(0x80, &connect[9..]));
    stream.extend(frame(0x82, b"\xc0\x00\xc0\x00"));
    stream.extend(frame(0x82, b""));
    let mut expected = connect.to_vec();
    expected.extend_from_slice(b"\xc0\x00\xc0\x00");
    for chunk in [1, 2, 3, 5, 8, 13, 1000] {
        let mut t = open();
        let (mut seen, mut wire) = (Seen::default(), BytesMut::new());
        feed(&mut t, &stream, chunk, &mut seen, &mut wire).expect("frames");
        assert_eq!(&seen.app[..], &expected[..], "chunk {chunk}");
        assert_eq!(&wire[..], b"\x8a\x02hi", "pong echoes the ping, unmasked");
        assert_eq!(seen.status, Some(ReadStatus::Open));
        assert_eq!(t.buffered(), 0);
    }
}

#[test]
fn length_forms_and_large_frames() {
    for len in [0, 125, 126, 65_535, 65_536, 300_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let mut t = open();
        let (r, seen, _) = read_all(&mut t, &frame(0x82, &payload));
        r.expect("frame");
        assert!(seen.app[..] == payload[..], "len {len}");

        let mut wire = BytesMut::new();
        t.write(&payload, &mut wire).expect("write");
        let header: &[u8] = match len {
            0 => &[0x82, 0],
            125 => &[0x82, 125],
            126 => &[0x82, 126, 0, 126],
            65_535 => &[0x82, 126, 0xff, 0xff],
            65_536 => &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0],
            _ => &[0x82, 127, 0, 0, 0, 0, 0, 4, 0x93, 0xe0],
        };
        if len == 0 {
            assert!(wire.is_empty(), "nothing to send, no frame");
        } else {
            assert_eq!(&wire[..header.len()], header, "len {len}");
            assert!(wire[header.len()..] == payload[..]);
        }
    }
}

fn closed_with(bytes: &[u8], error: FrameError, code: u16) {
    let mut t = open();
    let (r, _, wire) = read_all(&mut t, bytes);
    match r {
        Err(TransportError::Ws(WsError::Frame(e))) => assert_eq!(e, error, "{bytes:02x?}"),
        other => panic!("{bytes:02x?}: {other:?}"),
    }
    let mut close = vec![0x88, 2];
    close.extend_from_slice(&code.to_be_bytes());
    assert_eq!(&wire[..], &close[..], "{error:?}");
    let mut after = frame(0x82, b"x");
    let (mut app, mut wire) = (BytesMut::new(), BytesMut::new());
    assert_eq!(
        t.read(&mut after, &mut app, &mut wire).expect("after"),
        ReadStatus::Closed
    );
    assert!(app.is_empty());
}

#[test]
fn frames_that_break_the_rules_close_with_their_code() {
    closed_with(&frame(0x81, b"text"), FrameError::TextFrame, 1003);
    closed_with(&[0x82, 0x02, b'h', b'i'], FrameError::Unmasked, 1002);
    closed_with(&frame(0xc2, b"x"), FrameError::ReservedBits, 1002);
    closed_with(&frame(0x83, b"x"), FrameError::UnknownOpcode, 1002);
    closed_with(&frame(0x80, b"x"), FrameError::UnexpectedContinuation, 1002);
    let mut two_starts = frame(0x02, b"a");
    two_starts.extend(frame(0x82, b"b"));
    closed_with(&two_starts, FrameError::ExpectedContinuation, 1002);
    closed_with(&frame(0x09, b"x"), FrameError::ControlFragmented, 1002);
    closed_with(&frame(0x89, &[0; 126]), FrameError::ControlTooLong, 1002);
    closed_with(&frame(0x88, &[3]), FrameError::BadClosePayload, 1002);
    closed_with(&frame(0x88, &[0x03, 0xed]), FrameError::BadCloseCode, 1002); // 1005
    closed_with(
        &frame(0x88, &[0x03, 0xe8, 0xff]),
        FrameError::CloseReasonNotUtf8,
        1007,
    );
    // A frame claiming 2^63 bytes is refused at its tenth byte, before its mask arrives.
    closed_with(
        &[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0],
        FrameError::FrameTooLarge,
        1009,
    );
    // Over the listener's cap (1 MiB + slack by default), also from the header alone.
    let cap = u64::from(Limits::default().max_packet_size) + super::super::FRAME_SLACK;
    let mut over = vec![0x82, 0xff];
    over.extend_from_slice(&(cap + 1).to_be_bytes());
    closed_with(&over, FrameError::FrameTooLarge, 1009);
    let mut at = vec![0x82, 0xff];
    at.extend_from_slice(&cap.to_be_bytes());
    let mut t = open();
    let (r, _, _) = read_all(&mut t, &at);
    r.expect("a frame of exactly the cap is accepted");
}

#[test]
fn close_is_echoed_and_ends_the_connection() {
    let mut t = open();
    let mut stream = frame(0x82, b"\xe0\x00");
    stream.extend(frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
    stream.extend(frame(0x82, b"ignored"));
    let (r, seen, wire) = read_all(&mut t, &stream);
    r.expect("close");
    assert_eq!(&seen.app[..], b"\xe0\x00");
    assert_eq!(seen.status, Some(ReadStatus::Closed));
    assert_eq!(&wire[..], &[0x88, 2, 0x03, 0xe8]);
    assert!(matches!(
        t.write(b"x", &mut BytesMut::new()),
        Err(TransportError::Closed)
    ));

    let mut t = open();
    let (r, _, wire) = read_all(&mut t, &frame(0x88, b""));
    r.expect("empty close");
    assert_eq!(&wire[..], &[0x88, 0]);

    let mut t = open();
    let mut wire = BytesMut::new();
    t.close(CloseReason::GoingAway, &mut wire);
    assert_eq!(&wire[..], &[0x88, 2, 0x03, 0xe9]);
    t.close(CloseReason::Normal, &mut wire);
    assert_eq!(wire.len(), 4, "one close frame only");
}

#[test]
fn write_before_the_upgrade_is_refused() {
    let mut t = ws_transport();
    let err = t.write(b"x", &mut BytesMut::new()).expect_err("not open");
    assert!(matches!(err, TransportError::Ws(WsError::NotOpen)));
}

/// The client's socket: what the client writes is read by the transport at once, and the
/// transport's output waits for the client to read it.
pub(super) struct Loopback {
    pub(super) transport: Box<Transport>,
    to_client: std::collections::VecDeque<u8>,
    pub(super) app: BytesMut,
    pub(super) status: Option<Result<ReadStatus, String>>,
}

impl Loopback {
    pub(super) fn new(transport: Box<Transport>) -> Loopback {
        Loopback {
            transport,
            to_client: Default::default(),
            app: BytesMut::new(),
            status: None,
        }
    }

    /// Bytes the broker side sends as they are (already wrapped).
    pub(super) fn deliver(&mut self, wire: &[u8]) {
        self.to_client.extend(wire);
    }

    /// The broker side sends MQTT bytes.
    pub(super) fn send(&mut self, app: &[u8]) {
        let mut wire = BytesMut::new();
        self.transport.write(app, &mut wire).expect("write");
        self.to_client.extend(&wire[..]);
    }
}

impl std::io::Read for Loopback {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.to_client.is_empty() {
            // Once the transport is done the shard closes the socket: the client sees EOF.
            return match self.status {
                Some(Ok(ReadStatus::Open)) | None => Err(std::io::ErrorKind::WouldBlock.into()),
                Some(_) => Ok(0),
            };
        }
        let n = buf.len().min(self.to_client.len());
        for (b, v) in buf.iter_mut().zip(self.to_client.drain(..n)) {
            *b = v;
        }
        Ok(n)
    }
}

impl std::io::Write for Loopback {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut input = buf.to_vec();
        let mut wire = BytesMut::new();
        let status = self.transport.read(&mut input, &mut self.app, &mut wire);
        self.to_client.extend(&wire[..]);
        self.status = Some(status.map_err(|e| e.to_string()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn tungstenite_client_interop() {
    use tungstenite::Message;
    use tungstenite::client::IntoClientRequest;

    let mut request = "ws://127.0.0.1:8080/mqtt"
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let (mut ws, response) =
        tungstenite::client(request, Loopback::new(ws_transport())).expect("handshake");
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "mqtt");

    let connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd".to_vec();
    ws.send(Message::binary(connect.clone())).expect("send");
    ws.send(Message::Ping(b"p".to_vec().into())).expect("ping");
    assert_eq!(&ws.get_ref().app[..], &connect[..]);

    ws.get_mut().send(b"\x20\x02\x00\x00");
    match ws.read().expect("pong") {
        Message::Pong(p) => assert_eq!(&p[..], b"p"),
        other => panic!("{other:?}"),
    }
    match ws.read().expect("connack") {
        Message::Binary(b) => assert_eq!(&b[..], b"\x20\x02\x00\x00"),
        other => panic!("{other:?}"),
    }
    ws.close(None).expect("close");
    ws.flush().expect("flush");
    assert_eq!(ws.get_ref().status, Some(Ok(ReadStatus::Closed)));
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => {}
            Ok(other) => panic!("{other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
}

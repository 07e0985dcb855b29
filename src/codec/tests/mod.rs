//! Codec tests with packets as literal bytes: round trips at every level, literal encodings
//! from the specification, streaming, and one test per decodable row of docs/bad-inputs.md.

mod bad_connect;
mod bad_framing;
mod bad_packets;
mod roundtrip;
mod streaming;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::codec::topic::{TopicFilter, TopicName};

/// Bytes from hex with optional spaces; `'text'` inserts ASCII.
pub(super) fn hex(s: &str) -> BytesMut {
    let mut out = BytesMut::new();
    let mut parts = s.split('\'');
    let mut in_text = false;
    for part in parts.by_ref() {
        if in_text {
            out.extend_from_slice(part.as_bytes());
        } else {
            let digits: Vec<u8> = part.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
            assert!(
                digits.len().is_multiple_of(2),
                "odd hex digit count in {part:?}"
            );
            for pair in digits.chunks(2) {
                let txt = std::str::from_utf8(pair).unwrap();
                out.extend_from_slice(&[u8::from_str_radix(txt, 16).unwrap()]);
            }
        }
        in_text = !in_text;
    }
    out
}

pub(super) fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

pub(super) fn client_limits() -> DecodeLimits {
    DecodeLimits {
        role: Role::Client,
        ..DecodeLimits::default()
    }
}

/// Decodes exactly one packet that fills the whole buffer.
pub(super) fn dec(s: &str, v: Option<ProtocolVersion>) -> Result<Packet, DecodeError> {
    dec_with(s, v, &limits())
}

pub(super) fn dec_with(
    s: &str,
    v: Option<ProtocolVersion>,
    limits: &DecodeLimits,
) -> Result<Packet, DecodeError> {
    let mut buf = hex(s);
    match decode(&mut buf, v, limits)? {
        Some(p) => {
            assert!(buf.is_empty(), "{} bytes left after the packet", buf.len());
            Ok(p)
        }
        None => panic!("incomplete packet: {s}"),
    }
}

pub(super) fn s(x: &str) -> MqttStr {
    MqttStr::try_from_str(x).expect("valid MQTT string")
}

pub(super) fn topic(x: &str) -> TopicName {
    TopicName::new(Bytes::copy_from_slice(x.as_bytes())).expect("valid topic")
}

pub(super) fn filter(x: &str) -> TopicFilter {
    TopicFilter::new(Bytes::copy_from_slice(x.as_bytes())).expect("valid filter")
}

pub(super) fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("non-zero")
}

pub(super) fn enc(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, v, &mut out);
    assert_eq!(
        out.len(),
        encoded_len(p, v),
        "encoded_len disagrees for {p:?}"
    );
    out
}

/// `decode(encode(p)) == p` at `v` (CONNECT is decoded as the first packet).
pub(super) fn roundtrip_with(p: &Packet, v: ProtocolVersion, limits: &DecodeLimits) {
    let mut bytes = enc(p, v);
    let at = if matches!(p, Packet::Connect(_)) {
        None
    } else {
        Some(v)
    };
    let back = decode(&mut bytes, at, limits);
    assert_eq!(back, Ok(Some(p.clone())), "round trip at {v:?}");
    assert!(bytes.is_empty());
}

pub(super) fn roundtrip(p: &Packet, v: ProtocolVersion) {
    roundtrip_with(p, v, &limits());
}

/// Asserts the decode error and the answer the client gets.
pub(super) fn expect_err(
    bytes: &str,
    v: Option<ProtocolVersion>,
    connack_sent: bool,
    err: DecodeError,
    response: ErrorResponse,
) {
    expect_err_with(bytes, v, connack_sent, &limits(), err, response);
}

pub(super) fn expect_err_with(
    bytes: &str,
    v: Option<ProtocolVersion>,
    connack_sent: bool,
    limits: &DecodeLimits,
    err: DecodeError,
    response: ErrorResponse,
) {
    let mut buf = hex(bytes);
    let got = decode(&mut buf, v, limits);
    assert_eq!(got, Err(err), "decoding {bytes}");
    assert_eq!(
        err.response(v, connack_sent),
        response,
        "response to {err:?}"
    );
}

pub(super) const V31: ProtocolVersion = ProtocolVersion::V31;
pub(super) const V311: ProtocolVersion = ProtocolVersion::V311;
pub(super) const V5: ProtocolVersion = ProtocolVersion::V5;

pub(super) fn connack(version: ProtocolVersion, reason: ReasonCode) -> ErrorResponse {
    ErrorResponse::ConnAck { version, reason }
}

pub(super) fn disconnect(reason: ReasonCode) -> ErrorResponse {
    ErrorResponse::Disconnect(reason)
}

pub(super) const CLOSE: ErrorResponse = ErrorResponse::Close;

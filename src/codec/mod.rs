//! Sans-IO MQTT codec for protocol levels 3 (3.1), 4 (3.1.1) and 5 (5.0).
//!
//! Owns: bytes <-> `Packet`. `decode` is streaming and total: any byte sequence yields a
//! packet, `Ok(None)` (need more bytes) or a typed `DecodeError`; nothing is allocated for a
//! packet whose declared length exceeds the limit. `encode` writes one packet and
//! `encoded_len` says how long it will be. `DecodeError::response` is the one place that
//! decides what a client gets for a bad packet.
//!
//! Layout: `reader` (bounded field reading, variable byte integers), `string` (UTF-8 rules),
//! `topic` (topic names and filters, `$share` syntax, matching), `properties` (v5
//! properties), one module per packet family (`connect`, `publish`, `ack`,
//! `subscribe`, `disconnect`), `encode` (sinks and the fixed header), `error`, `reason`.
//!
//! Must never: touch a socket or the clock, panic on input, or use `unsafe`.
#![forbid(unsafe_code)]

mod ack;
mod connect;
mod disconnect;
pub mod encode;
pub mod error;
pub mod model;
mod properties;
mod publish;
pub mod reader;
pub mod reason;
pub mod string;
mod subscribe;
pub mod topic;

#[cfg(test)]
mod tests;

pub use encode::{encode, encode_publish, encoded_len};
pub use error::{DecodeError, ErrorResponse, Malformation};
pub use model::*;
pub use properties::{
    decode_publish_properties, decode_will_properties, encode_publish_properties,
    encode_will_properties,
};
pub use publish::PublishOut;
pub use reason::{ReasonCode, ReasonContext};

use bytes::{Buf, BytesMut};

use reader::{Reader, Vbi, parse_vbi};

/// Which end of the connection decodes. Only one rule differs by direction: a PUBLISH may
/// carry Subscription Identifiers from server to client but not from client to server
/// [MQTT-3.3.4-6].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Role {
    /// The broker: decodes what clients send.
    #[default]
    Server,
    /// A client or a test tool: decodes what the broker sends.
    Client,
}

/// Limits the decoder enforces before and while parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest whole packet (fixed header included) accepted; checked against the declared
    /// remaining length before any allocation.
    pub max_packet_size: u32,
    /// Most user properties accepted in one packet (bad input #26).
    pub max_user_properties: usize,
    /// Which end decodes.
    pub role: Role,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_packet_size: 1024 * 1024,
            max_user_properties: 64,
            role: Role::Server,
        }
    }
}

/// Checks the first byte of the fixed header, before the remaining length is read, so that
/// a wrong first packet or wrong flags fail at once (bad input #2, #3).
fn check_first_byte(b: u8, version: Option<ProtocolVersion>) -> Result<(), DecodeError> {
    let packet_type = b >> 4;
    let flags = b & 0x0F;
    match (version, packet_type) {
        // [MQTT-3.1.0-1]: the first packet must be CONNECT. Its flags are checked once the
        // body is in (see `decode`), so that a 5.0 client can be told CONNACK 0x81.
        (None, 1) => return Ok(()),
        (None, _) => return Err(DecodeError::FirstPacketNotConnect),
        // [MQTT-3.1.0-2]: a second CONNECT is a protocol violation.
        (Some(_), 1) => return Err(DecodeError::SecondConnect),
        (Some(_), 0) => return Err(DecodeError::ReservedPacketType),
        // Type 15 is reserved in 3.1.1 (2.2.1).
        (Some(v), 15) if !v.is_v5() => return Err(DecodeError::UnexpectedAuthOnV3),
        (Some(_), _) => {}
    }
    // [MQTT-2.1.3-1]: flags as table 2-2 lists them; PUBLISH flags are DUP, QoS, RETAIN.
    let expected = match packet_type {
        3 => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS); // [MQTT-3.3.1-4]
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(DecodeError::DupOnQoS0); // [MQTT-3.3.1-2]
            }
            return Ok(());
        }
        6 | 8 | 10 => 0x02, // [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]
        _ => 0x00,
    };
    if flags != expected {
        return Err(DecodeError::InvalidFixedHeaderFlags(b));
    }
    Ok(())
}

/// Decodes one packet from the front of `src`.
///
/// `version` is `None` until CONNECT has been decoded: then only CONNECT is accepted.
/// On success the packet's bytes are split off `src` (payloads, topics, strings and binary
/// properties are zero-copy views of them). `Ok(None)`: more bytes are needed; nothing is
/// consumed. The declared size is checked against `limits.max_packet_size` as soon as the
/// remaining length is known, before the body is waited for [bad input #2], and a remaining
/// length is refused at its fourth byte if that byte says a fifth follows [MQTT-1.5.5-1].
/// After an error the connection must be closed (see `DecodeError::response`); `src` is then
/// in an unspecified state.
pub fn decode(
    src: &mut BytesMut,
    version: Option<ProtocolVersion>,
    limits: &DecodeLimits,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = src.first() else {
        return Ok(None);
    };
    check_first_byte(first, version)?;
    let (remaining, len_bytes) = match parse_vbi(&src[1..]) {
        Vbi::Complete(v, n) => (v as usize, n),
        Vbi::Incomplete => return Ok(None),
        Vbi::TooLong => return Err(DecodeError::RemainingLengthTooLong),
    };
    let header = 1 + len_bytes;
    let total = header + remaining;
    if total > limits.max_packet_size as usize {
        return Err(DecodeError::PacketTooLarge);
    }
    if src.len() < total {
        return Ok(None);
    }
    let mut packet = src.split_to(total).freeze();
    if version.is_none() && first & 0x0F != 0 {
        return Err(connect_flags_error(first, &packet[header..]));
    }
    // `advance` moves the start without another refcount increment (unlike `split_off`).
    packet.advance(header);
    let body = Reader::new(packet);
    decode_body(first, body, version, limits).map(Some)
}

/// The error for a CONNECT whose reserved fixed-header flags are set [MQTT-2.1.3-1]: a 5.0
/// client (name `MQTT`, level 5) is answered CONNACK 0x81 (bad input #5), any other is
/// closed without an answer since its level is unknown or has no code for it.
fn connect_flags_error(first: u8, body: &[u8]) -> DecodeError {
    if body.starts_with(b"\x00\x04MQTT\x05") {
        return DecodeError::MalformedConnect {
            version: ProtocolVersion::V5,
            cause: error::Malformation::FixedHeaderFlags,
        };
    }
    DecodeError::InvalidFixedHeaderFlags(first)
}

/// Decodes a body whose first byte passed `check_first_byte`.
fn decode_body(
    first: u8,
    r: Reader,
    version: Option<ProtocolVersion>,
    limits: &DecodeLimits,
) -> Result<Packet, DecodeError> {
    let Some(v) = version else {
        // `check_first_byte` let only CONNECT through.
        return connect::decode_connect(r, limits);
    };
    let packet = match first >> 4 {
        2 => connect::decode_connack(r, v, limits)?,
        3 => publish::decode_publish(first, r, v, limits)?,
        4 => Packet::PubAck(ack::decode_ack(ReasonContext::PubAck, r, v, limits)?),
        5 => Packet::PubRec(ack::decode_ack(ReasonContext::PubRec, r, v, limits)?),
        6 => Packet::PubRel(ack::decode_ack(ReasonContext::PubRel, r, v, limits)?),
        7 => Packet::PubComp(ack::decode_ack(ReasonContext::PubComp, r, v, limits)?),
        8 => subscribe::decode_subscribe(r, v, limits)?,
        9 => subscribe::decode_suback(r, v, limits)?,
        10 => subscribe::decode_unsubscribe(r, v, limits)?,
        11 => subscribe::decode_unsuback(r, v, limits)?,
        12 => {
            r.finish()?;
            Packet::PingReq
        }
        13 => {
            r.finish()?;
            Packet::PingResp
        }
        14 => disconnect::decode_disconnect(r, v, limits)?,
        15 => disconnect::decode_auth(r, limits)?,
        // Types 0 and 1 were refused by `check_first_byte`.
        _ => return Err(DecodeError::ReservedPacketType),
    };
    Ok(packet)
}

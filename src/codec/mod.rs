//! Sans-IO MQTT codec for protocol levels 3 (3.1), 4 (3.1.1) and 5 (5.0).
//!
//! Owns: bytes <-> `Packet`. `decode` is streaming and total: any byte sequence yields a
//! packet, `Ok(None)` (need more bytes) or a typed `DecodeError`; nothing is allocated for a
//! packet whose declared length exceeds the limit. `encode` writes one packet.
//!
//! Must never: touch a socket or the clock, panic on input, or use `unsafe`.
#![forbid(unsafe_code)]

pub mod error;
pub mod model;
pub mod reason;
pub mod string;

pub use error::{DecodeError, ErrorResponse};
pub use model::*;
pub use reason::{ReasonCode, ReasonContext};

use bytes::BytesMut;

/// Limits the decoder enforces before and while parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest whole packet (fixed header included) accepted; checked against the declared
    /// remaining length before any allocation.
    pub max_packet_size: u32,
    /// Most user properties accepted in one packet (BAD_INPUTS #26).
    pub max_user_properties: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_packet_size: 1024 * 1024,
            max_user_properties: 64,
        }
    }
}

/// Decodes one packet from the front of `src`.
///
/// `version` is `None` until CONNECT has been decoded: then only CONNECT is accepted.
/// On success the packet's bytes are split off `src` (payloads are zero-copy views).
pub fn decode(
    src: &mut BytesMut,
    version: Option<ProtocolVersion>,
    limits: &DecodeLimits,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (src, version, limits);
    Err(DecodeError::MalformedPacket)
}

/// Appends the encoding of `packet` for protocol level `version` to `dst`.
pub fn encode(packet: &Packet, version: ProtocolVersion, dst: &mut BytesMut) {
    let _ = (packet, version, dst);
}

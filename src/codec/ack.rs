//! PUBACK, PUBREC, PUBREL and PUBCOMP (spec 3.4 to 3.7): one wire shape, four packets.
//!
//! Owns: the packet identifier, the optional v5 reason code and properties, and the short
//! forms (Remaining Length 2: success, no properties; 3: reason code only, 3.4.2.1).
//!
//! Must never: decide whether the acknowledgement fits the flow (the session does,
//! bad input #50).

use super::DecodeLimits;
use super::encode::Sink;
use super::error::DecodeError;
use super::model::*;
use super::properties::{read_properties, write_properties};
use super::reader::Reader;
use super::reason::{ReasonCode, ReasonContext};

/// Decodes an acknowledgement body in the context of its packet type.
pub(super) fn decode_ack(
    ctx: ReasonContext,
    mut r: Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Ack, DecodeError> {
    // [MQTT-2.2.1-3]: a non-zero packet identifier.
    let packet_id = PacketId::new(r.u16()?).ok_or(DecodeError::PacketIdZero)?;
    if !version.is_v5() || r.is_empty() {
        r.finish()?;
        return Ok(Ack::new(packet_id));
    }
    let code = r.u8()?;
    // 2.4: a code the packet may not carry (bad input #49: 0x82).
    let reason = ReasonCode::from_wire(ctx, code).ok_or(DecodeError::InvalidReasonCode(code))?;
    // 3.4.2.2: with Remaining Length < 4 there is no property length.
    let properties = if r.is_empty() {
        Default::default()
    } else {
        read_properties(&mut r, limits)?
    };
    r.finish()?;
    Ok(Ack {
        packet_id,
        reason,
        properties,
    })
}

pub(super) fn write_ack<S: Sink>(a: &Ack, version: ProtocolVersion, s: &mut S) {
    s.put_u16(a.packet_id.get());
    if !version.is_v5() {
        return;
    }
    let no_props = a.properties == AckProperties::default();
    if a.reason.code() == 0 && no_props {
        return;
    }
    s.put_u8(a.reason.code());
    if !no_props {
        write_properties(&a.properties, s);
    }
}

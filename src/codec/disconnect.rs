//! DISCONNECT (spec 3.14) and AUTH (spec 3.15).
//!
//! Owns: the optional reason code and properties of both, and their short forms
//! (Remaining Length 0 means Normal disconnection / Success with no properties).
//!
//! Must never: judge whether a client may use a DISCONNECT code or raise its session expiry
//! (bad input #64, #65): the session does, with `ReasonCode::client_may_disconnect_with`.

use super::DecodeLimits;
use super::encode::Sink;
use super::error::DecodeError;
use super::model::*;
use super::properties::{read_properties, write_properties};
use super::reader::Reader;
use super::reason::{ReasonCode, ReasonContext};

pub(super) fn decode_disconnect(
    mut r: Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Packet, DecodeError> {
    // 3.1.1 3.14: no variable header, no payload.
    if !version.is_v5() || r.is_empty() {
        r.finish()?;
        return Ok(Packet::Disconnect(Disconnect::new(
            ReasonCode::NormalDisconnection,
        )));
    }
    let code = r.u8()?;
    let reason = ReasonCode::from_wire(ReasonContext::Disconnect, code)
        .ok_or(DecodeError::InvalidReasonCode(code))?;
    // 3.14.2.2: with Remaining Length < 2 the property length is taken as 0.
    let properties = if r.is_empty() {
        Default::default()
    } else {
        read_properties(&mut r, limits)?
    };
    r.finish()?;
    Ok(Packet::Disconnect(Disconnect { reason, properties }))
}

pub(super) fn write_disconnect<S: Sink>(d: &Disconnect, version: ProtocolVersion, s: &mut S) {
    if !version.is_v5() {
        return;
    }
    let no_props = d.properties == DisconnectProperties::default();
    if d.reason.code() == 0 && no_props {
        return;
    }
    s.put_u8(d.reason.code());
    if !no_props {
        write_properties(&d.properties, s);
    }
}

/// Decodes an AUTH body (5.0 only; the framing layer refuses type 15 at 3.x).
pub(super) fn decode_auth(mut r: Reader, limits: &DecodeLimits) -> Result<Packet, DecodeError> {
    // 3.15.2.1: Remaining Length 0 means Success with no properties; otherwise both the reason
    // code and the property block are present.
    if r.is_empty() {
        return Ok(Packet::Auth(Auth {
            reason: ReasonCode::Success,
            properties: Default::default(),
        }));
    }
    let code = r.u8()?;
    let reason = ReasonCode::from_wire(ReasonContext::Auth, code)
        .ok_or(DecodeError::InvalidReasonCode(code))?;
    let properties = read_properties(&mut r, limits)?;
    r.finish()?;
    Ok(Packet::Auth(Auth { reason, properties }))
}

pub(super) fn write_auth<S: Sink>(a: &Auth, s: &mut S) {
    if a.reason.code() == 0 && a.properties == AuthProperties::default() {
        return;
    }
    s.put_u8(a.reason.code());
    write_properties(&a.properties, s);
}

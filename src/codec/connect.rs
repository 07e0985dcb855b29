//! CONNECT (spec 3.1) and CONNACK (spec 3.2) for all three levels.
//!
//! Owns: protocol name/level recognition, the CONNECT flag rules, the payload order
//! (client id, will properties, will topic, will payload, user name, password) and the
//! CONNACK acknowledge flags and code. Errors inside a CONNECT body carry the CONNECT's level
//! (`DecodeError::in_connect`) so that the answer can be a CONNACK of the right format.
//!
//! Must never: decide authentication or client-id policy beyond what the spec makes a
//! decoding rule; that belongs to the session.

use super::DecodeLimits;
use super::encode::Sink;
use super::error::DecodeError;
use super::model::*;
use super::properties::{read_properties, write_properties};
use super::publish::topic_name;
use super::reader::Reader;
use super::reason::ReasonCode;

const MQTT: &[u8] = b"MQTT";
const MQISDP: &[u8] = b"MQIsdp";

/// Protocol name and level [MQTT-3.1.2-1], [MQTT-3.1.2-2].
fn read_protocol(r: &mut Reader) -> Result<ProtocolVersion, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    match (&name[..], level) {
        (MQISDP, 3) => Ok(ProtocolVersion::V31),
        (MQTT, 4) => Ok(ProtocolVersion::V311),
        (MQTT, 5) => Ok(ProtocolVersion::V5),
        (MQTT | MQISDP, 3..=5) => Err(DecodeError::InvalidProtocolName { level }),
        (MQTT | MQISDP, _) => Err(DecodeError::UnsupportedProtocolVersion { level }),
        _ => Err(DecodeError::InvalidProtocolName { level }),
    }
}

/// Decodes a CONNECT body.
pub(super) fn decode_connect(mut r: Reader, limits: &DecodeLimits) -> Result<Packet, DecodeError> {
    let version = read_protocol(&mut r)?;
    decode_connect_body(r, version, limits)
        .map(|c| Packet::Connect(Box::new(c)))
        .map_err(|e| e.in_connect(version))
}

/// The CONNECT flags byte (3.1.2.3), checked.
struct ConnectFlags {
    clean_start: bool,
    will: Option<(QoS, bool)>,
    username: bool,
    password: bool,
}

fn read_flags(r: &mut Reader, version: ProtocolVersion) -> Result<ConnectFlags, DecodeError> {
    let flags = r.u8()?;
    // [MQTT-3.1.2-3]: the reserved bit must be 0, else Malformed Packet.
    if flags & 0x01 != 0 {
        return Err(DecodeError::ReservedConnectFlag { version });
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password = flags & 0x40 != 0;
    let username = flags & 0x80 != 0;
    // [MQTT-3.1.2-11], [MQTT-3.1.2-13] (3.1.1: -11, -15): no will, no will QoS/retain.
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill { version });
    }
    // [MQTT-3.1.2-12] (3.1.1: [MQTT-3.1.2-14]): will QoS 3 is not allowed.
    let will_qos = QoS::from_bits(will_qos_bits).ok_or(DecodeError::InvalidWillQoS { version })?;
    // [MQTT-3.1.2-22] (3.1.1): password without user name. 5.0 allows it (3.1.2.9).
    if password && !username && !version.is_v5() {
        return Err(DecodeError::PasswordWithoutUsername { version });
    }
    Ok(ConnectFlags {
        clean_start: flags & 0x02 != 0,
        will: will_flag.then_some((will_qos, will_retain)),
        username,
        password,
    })
}

fn decode_connect_body(
    mut r: Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Connect, DecodeError> {
    let flags = read_flags(&mut r, version)?;
    let keep_alive = r.u16()?;
    let properties: ConnectProperties = if version.is_v5() {
        read_properties(&mut r, limits)?
    } else {
        Default::default()
    };
    // [MQTT-3.1.3-3]: the client identifier is the first payload field, a string.
    let client_id = r.string()?;
    let will = match flags.will {
        Some((qos, retain)) => {
            // The user-property cap is per packet: the will gets what CONNECT left.
            let will_limits = DecodeLimits {
                max_user_properties: limits
                    .max_user_properties
                    .saturating_sub(properties.user_properties.len()),
                ..*limits
            };
            let properties = if version.is_v5() {
                read_properties(&mut r, &will_limits)?
            } else {
                Default::default()
            };
            // [MQTT-3.1.3-11] (3.1.1: -10): the will topic is a topic name.
            let topic = topic_name(r.string()?)
                .map_err(|error| DecodeError::InvalidWillTopic { version, error })?;
            let payload = r.binary()?;
            Some(Will {
                topic,
                payload,
                qos,
                retain,
                properties,
            })
        }
        None => None,
    };
    // [MQTT-3.1.3-12] user name is a string; the password is binary data (3.1.3.6).
    let username = if flags.username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if flags.password {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    // Checked last so that a malformed packet is reported as malformed.
    // [MQTT-3.1.3-8] (3.1.1): empty id with clean session 0 gets CONNACK 0x02. 3.1 requires
    // 1 to 23 characters; RingMQ accepts longer ids but refuses empty ones.
    let empty_refused = match version {
        ProtocolVersion::V31 => client_id.is_empty(),
        ProtocolVersion::V311 => client_id.is_empty() && !flags.clean_start,
        ProtocolVersion::V5 => false,
    };
    if empty_refused {
        return Err(DecodeError::ClientIdRejected { version });
    }
    Ok(Connect {
        protocol: version,
        clean_start: flags.clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Writes a CONNECT body at `c.protocol`.
pub(super) fn write_connect<S: Sink>(c: &Connect, s: &mut S) {
    let v5 = c.protocol.is_v5();
    s.put_prefixed(if c.protocol == ProtocolVersion::V31 {
        MQISDP
    } else {
        MQTT
    });
    s.put_u8(c.protocol.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
    }
    flags |= u8::from(c.password.is_some()) << 6;
    flags |= u8::from(c.username.is_some()) << 7;
    s.put_u8(flags);
    s.put_u16(c.keep_alive);
    if v5 {
        write_properties(&c.properties, s);
    }
    s.put_prefixed(c.client_id.as_bytes());
    if let Some(w) = &c.will {
        if v5 {
            write_properties(&w.properties, s);
        }
        s.put_prefixed(w.topic.as_bytes());
        s.put_prefixed(&w.payload);
    }
    if let Some(u) = &c.username {
        s.put_prefixed(u.as_bytes());
    }
    if let Some(p) = &c.password {
        s.put_prefixed(p);
    }
}

/// Decodes a CONNACK body (3.2). Used by clients and tools; a server receiving one lets the
/// session refuse it.
pub(super) fn decode_connack(
    mut r: Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Packet, DecodeError> {
    let ack_flags = r.u8()?;
    // [MQTT-3.2.2-1]: bits 7-1 are reserved.
    if ack_flags & 0xFE != 0 {
        return Err(DecodeError::InvalidConnAckFlags);
    }
    let code = r.u8()?;
    let (reason, properties) = if version.is_v5() {
        let reason = ReasonCode::from_wire(super::ReasonContext::ConnAck, code)
            .ok_or(DecodeError::InvalidReasonCode(code))?;
        (reason, read_properties(&mut r, limits)?)
    } else {
        let reason = ReasonCode::from_v3_connack_return_code(code)
            .ok_or(DecodeError::InvalidReasonCode(code))?;
        (reason, Default::default())
    };
    r.finish()?;
    Ok(Packet::ConnAck(ConnAck {
        session_present: ack_flags & 0x01 != 0,
        reason,
        properties,
    }))
}

pub(super) fn write_connack<S: Sink>(c: &ConnAck, version: ProtocolVersion, s: &mut S) {
    s.put_u8(u8::from(c.session_present));
    if version.is_v5() {
        s.put_u8(c.reason.code());
        write_properties(&c.properties, s);
    } else {
        s.put_u8(c.reason.v3_connack_return_code());
    }
}

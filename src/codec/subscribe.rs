//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (spec 3.8 to 3.11).
//!
//! Owns: the filter lists, the subscription options byte and the per-filter reason codes.
//! Filters are validated as MQTT strings here, then as topic filters by
//! `TopicFilter::from_mqtt_str` (router), which this module never re-implements; the one filter rule
//! that depends on the options byte (No Local on a shared subscription, [MQTT-3.8.3-4]) is
//! checked here.
//!
//! Must never: apply subscription policy (quotas, ACLs, shared-subscription support).

use super::DecodeLimits;
use super::encode::Sink;
use super::error::DecodeError;
use super::model::*;
use super::properties::{UserPropertiesOnly, read_properties, write_properties};
use super::reader::Reader;
use super::reason::{ReasonCode, ReasonContext};
use super::topic::{TopicError, TopicFilter};

/// The prefix of a shared subscription filter (4.8.2).
const SHARE_PREFIX: &[u8] = b"$share/";

fn packet_id(r: &mut Reader) -> Result<PacketId, DecodeError> {
    // [MQTT-2.2.1-3] (3.1.1: [MQTT-2.3.1-1]): SUBSCRIBE/UNSUBSCRIBE and their acks carry a
    // non-zero packet identifier.
    PacketId::new(r.u16()?).ok_or(DecodeError::PacketIdZero)
}

/// A topic filter from the wire: string rules first, then empty [MQTT-4.7.3-1], then the
/// router's filter rules.
fn topic_filter(r: &mut Reader) -> Result<TopicFilter, DecodeError> {
    let s = r.string()?;
    if s.is_empty() {
        return Err(DecodeError::InvalidTopicFilter(TopicError::Empty));
    }
    TopicFilter::from_mqtt_str(s).map_err(DecodeError::InvalidTopicFilter)
}

/// The subscription options byte (5.0: 3.8.3.1; 3.1.1: requested QoS, 3.8.3).
fn subscription_options(
    b: u8,
    version: ProtocolVersion,
) -> Result<SubscriptionOptions, DecodeError> {
    // [MQTT-3.8.3-5] (3.1.1: [MQTT-3-8.3-4]): reserved bits must be 0, else Malformed.
    let reserved = if version.is_v5() { 0xC0 } else { 0xFC };
    if b & reserved != 0 {
        return Err(DecodeError::SubscriptionOptionsReservedBits);
    }
    // 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3."
    let qos = QoS::from_bits(b & 0x03).ok_or(DecodeError::InvalidSubscriptionQoS)?;
    // 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3."
    let retain_handling = match (b >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidRetainHandling),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: b & 0x04 != 0,
        retain_as_published: b & 0x08 != 0,
        retain_handling,
    })
}

fn options_byte(o: &SubscriptionOptions, version: ProtocolVersion) -> u8 {
    let qos = o.qos as u8;
    if !version.is_v5() {
        return qos;
    }
    qos | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

pub(super) fn decode_subscribe(
    mut r: Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Packet, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let properties = if version.is_v5() {
        read_properties(&mut r, limits)?
    } else {
        Default::default()
    };
    // [MQTT-3.8.3-3]: at least one filter.
    if r.is_empty() {
        return Err(DecodeError::NoFilters);
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = topic_filter(&mut r)?;
        let options = subscription_options(r.u8()?, version)?;
        // [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error.
        if options.no_local && filter.as_bytes().starts_with(SHARE_PREFIX) {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        filters.push((filter, options));
    }
    Ok(Packet::Subscribe(Subscribe {
        packet_id,
        filters,
        properties,
    }))
}

pub(super) fn write_subscribe<S: Sink>(p: &Subscribe, version: ProtocolVersion, s: &mut S) {
    s.put_u16(p.packet_id.get());
    if version.is_v5() {
        write_properties(&p.properties, s);
    }
    for (filter, options) in &p.filters {
        s.put_prefixed(filter.as_bytes());
        s.put_u8(options_byte(options, version));
    }
}

/// A 3.x SUBACK return code (3.1.1 3.9.3): granted QoS or 0x80 failure.
fn v3_suback_code(b: u8) -> Result<ReasonCode, DecodeError> {
    match b {
        0x00 => Ok(ReasonCode::GrantedQoS0),
        0x01 => Ok(ReasonCode::GrantedQoS1),
        0x02 => Ok(ReasonCode::GrantedQoS2),
        0x80 => Ok(ReasonCode::UnspecifiedError),
        _ => Err(DecodeError::InvalidReasonCode(b)),
    }
}

/// The v5 body of SUBACK / UNSUBACK after the packet id: properties, then one reason code
/// per filter.
fn read_v5_ack(
    r: &mut Reader,
    limits: &DecodeLimits,
    ctx: ReasonContext,
) -> Result<(AckProperties, Vec<ReasonCode>), DecodeError> {
    let properties = read_properties(r, limits)?;
    let mut codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let b = r.u8()?;
        codes.push(ReasonCode::from_wire(ctx, b).ok_or(DecodeError::InvalidReasonCode(b))?);
    }
    Ok((properties, codes))
}

fn write_v5_ack<S: Sink>(properties: &AckProperties, reasons: &[ReasonCode], s: &mut S) {
    write_properties(properties, s);
    for r in reasons {
        s.put_u8(r.code());
    }
}

pub(super) fn decode_suback(
    mut r: Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Packet, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let (properties, reasons) = if version.is_v5() {
        read_v5_ack(&mut r, limits, ReasonContext::SubAck)?
    } else {
        let mut reasons = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            reasons.push(v3_suback_code(r.u8()?)?);
        }
        (AckProperties::default(), reasons)
    };
    Ok(Packet::SubAck(SubAck {
        packet_id,
        reasons,
        properties,
    }))
}

pub(super) fn write_suback<S: Sink>(p: &SubAck, version: ProtocolVersion, s: &mut S) {
    s.put_u16(p.packet_id.get());
    if version.is_v5() {
        write_v5_ack(&p.properties, &p.reasons, s);
    } else {
        for r in &p.reasons {
            s.put_u8(r.v3_suback_return_code());
        }
    }
}

pub(super) fn decode_unsubscribe(
    mut r: Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Packet, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let UserPropertiesOnly(user_properties) = if version.is_v5() {
        read_properties(&mut r, limits)?
    } else {
        Default::default()
    };
    // [MQTT-3.10.3-2]: at least one filter.
    if r.is_empty() {
        return Err(DecodeError::NoFilters);
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(topic_filter(&mut r)?);
    }
    Ok(Packet::Unsubscribe(Unsubscribe {
        packet_id,
        filters,
        user_properties,
    }))
}

pub(super) fn write_unsubscribe<S: Sink>(p: &Unsubscribe, version: ProtocolVersion, s: &mut S) {
    s.put_u16(p.packet_id.get());
    if version.is_v5() {
        // A borrowed view would avoid this clone; UNSUBSCRIBE is not on a hot path.
        write_properties(&UserPropertiesOnly(p.user_properties.clone()), s);
    }
    for filter in &p.filters {
        s.put_prefixed(filter.as_bytes());
    }
}

pub(super) fn decode_unsuback(
    mut r: Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Packet, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let (properties, reasons) = if version.is_v5() {
        read_v5_ack(&mut r, limits, ReasonContext::UnsubAck)?
    } else {
        // 3.1.1 3.11: only the packet identifier.
        r.finish()?;
        (AckProperties::default(), Vec::new())
    };
    Ok(Packet::UnsubAck(UnsubAck {
        packet_id,
        reasons,
        properties,
    }))
}

pub(super) fn write_unsuback<S: Sink>(p: &UnsubAck, version: ProtocolVersion, s: &mut S) {
    s.put_u16(p.packet_id.get());
    if version.is_v5() {
        write_v5_ack(&p.properties, &p.reasons, s);
    }
}

impl SubscriptionOptions {
    /// The v5 options byte, the form storage keeps.
    pub fn to_byte(&self) -> u8 {
        options_byte(self, ProtocolVersion::V5)
    }

    /// Reads a v5 options byte; `None` when it is not a valid one.
    pub fn from_byte(b: u8) -> Option<SubscriptionOptions> {
        subscription_options(b, ProtocolVersion::V5).ok()
    }
}

//! PUBLISH (spec 3.3): topic, packet identifier, properties and payload.
//!
//! Owns: the PUBLISH variable header and the topic-name hand-off to `topic`: the
//! bytes are first validated as an MQTT string (`Reader::string`), then `TopicName::from_mqtt_str`
//! applies the topic rules, which this module never re-implements. The payload is a
//! zero-copy view of the packet.
//!
//! Must never: allocate on the QoS 0 path without properties (only `Bytes` refcounts), or
//! resolve topic aliases (the session owns the alias table).

use super::encode::{Sink, measure};
use super::error::DecodeError;
use super::model::*;
use super::properties::{PublishPropertiesOut, read_properties};
use super::reader::Reader;
use super::topic::{TopicError, TopicName};
use super::{DecodeLimits, Role};

/// A topic name from a validated string: empty is refused here [MQTT-4.7.3-1] (the empty
/// topic of an aliased PUBLISH is handled by the caller), the rest by `TopicName::from_mqtt_str`.
pub(crate) fn topic_name(s: MqttStr) -> Result<TopicName, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    TopicName::from_mqtt_str(s)
}

/// Decodes a PUBLISH body; `first` is the fixed header's first byte, whose flags were
/// checked by the framing layer (QoS 3 [MQTT-3.3.1-4], DUP on QoS 0 [MQTT-3.3.1-2]).
pub(super) fn decode_publish(
    first: u8,
    mut r: Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Packet, DecodeError> {
    let qos = QoS::from_bits((first >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    // [MQTT-3.3.2-1]: the topic name is a UTF-8 string.
    let topic = r.string()?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        // [MQTT-2.2.1-3]: a non-zero packet identifier when QoS > 0.
        QoS::AtLeastOnce | QoS::ExactlyOnce => {
            Some(PacketId::new(r.u16()?).ok_or(DecodeError::PacketIdZero)?)
        }
    };
    let properties: PublishProperties = if version.is_v5() {
        read_properties(&mut r, limits)?
    } else {
        Default::default()
    };
    // [MQTT-3.3.4-6]: a PUBLISH from a client must not carry a Subscription Identifier.
    if limits.role == Role::Server && !properties.subscription_identifiers.is_empty() {
        return Err(DecodeError::SubscriptionIdentifierFromClient);
    }
    let topic = if topic.is_empty() {
        // 3.3.2.3.4: an empty topic is only valid with a Topic Alias (v5).
        if properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopicWithoutAlias);
        }
        TopicName::default()
    } else {
        TopicName::from_mqtt_str(topic).map_err(DecodeError::InvalidTopicName)?
    };
    Ok(Packet::Publish(Publish {
        dup: first & 0x08 != 0,
        qos,
        retain: first & 0x01 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    }))
}

pub(super) fn write_publish<S: Sink>(p: &Publish, version: ProtocolVersion, s: &mut S) {
    write_publish_out(&PublishOut::from(p), version, s);
}

/// A PUBLISH to encode from borrowed parts: the broker writes one copy per subscriber of a
/// routed message without building (cloning into) an owned `Publish` for each. The
/// per-subscriber values (Message Expiry Interval left, Subscription Identifiers) replace
/// those in `properties`; `topic_alias` is written as given.
#[derive(Clone, Copy, Debug)]
pub struct PublishOut<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a TopicName,
    /// Present iff `qos > AtMostOnce` [MQTT-2.2.1-2].
    pub packet_id: Option<PacketId>,
    pub properties: &'a PublishProperties,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub subscription_identifiers: &'a [u32],
    pub payload: &'a [u8],
}

impl<'a> From<&'a Publish> for PublishOut<'a> {
    fn from(p: &'a Publish) -> PublishOut<'a> {
        PublishOut {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: &p.topic,
            packet_id: p.packet_id,
            properties: &p.properties,
            message_expiry_interval: p.properties.message_expiry_interval,
            topic_alias: p.properties.topic_alias,
            subscription_identifiers: &p.properties.subscription_identifiers,
            payload: &p.payload,
        }
    }
}

/// The one PUBLISH body writer (owned packets go through it too).
pub(super) fn write_publish_out<S: Sink>(p: &PublishOut, version: ProtocolVersion, s: &mut S) {
    s.put_prefixed(p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        debug_assert!(p.packet_id.is_some(), "QoS > 0 PUBLISH without packet id");
        s.put_u16(p.packet_id.map_or(0, PacketId::get));
    }
    if version.is_v5() {
        let props = PublishPropertiesOut {
            base: p.properties,
            message_expiry_interval: p.message_expiry_interval,
            topic_alias: p.topic_alias,
            subscription_identifiers: p.subscription_identifiers,
        };
        let len = measure(|c| props.write(c));
        s.put_vbi(len as u32);
        props.write(s);
    }
    s.put(p.payload);
}

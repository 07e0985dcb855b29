//! The packet model: one `Packet` type for MQTT 3.1 (level 3), 3.1.1 (level 4) and 5.0.
//!
//! Owns the in-memory shape of every control packet. Fields that exist only in 5.0
//! (properties, reason codes) are present on every level and are left at their defaults
//! when a 3.x packet is decoded; the encoder for a 3.x level never writes them.
//!
//! Invariants the types carry (established by the decoder or by constructors, never re-checked):
//! - `MqttStr` holds well-formed UTF-8 that obeys [MQTT-1.5.4-1..3].
//! - `TopicName` / `TopicFilter` hold valid names and filters (see `topic`).
//! - `PacketId` is never zero [MQTT-2.2.1-3].
//!
//! Must never: touch a socket or the clock.

use std::num::NonZeroU16;

use bytes::Bytes;

use super::reason::ReasonCode;
use super::topic::{TopicFilter, TopicName};

/// Protocol level from the CONNECT packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1, protocol name `MQTT`, level 4.
    V311,
    /// MQTT 5.0, protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte on the wire.
    pub const fn level(self) -> u8 {
        match self {
            ProtocolVersion::V31 => 3,
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// Whether this level carries properties and reason codes.
    pub const fn is_v5(self) -> bool {
        matches!(self, ProtocolVersion::V5)
    }

    /// The level for a protocol level byte (3, 4 or 5).
    pub const fn from_level(level: u8) -> Option<ProtocolVersion> {
        match level {
            3 => Some(ProtocolVersion::V31),
            4 => Some(ProtocolVersion::V311),
            5 => Some(ProtocolVersion::V5),
            _ => None,
        }
    }
}

/// Quality of service level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; 3 is malformed [MQTT-3.3.1-4].
    pub const fn from_bits(bits: u8) -> Option<QoS> {
        match bits {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier; zero is not a valid identifier [MQTT-2.2.1-3].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(pub NonZeroU16);

impl PacketId {
    pub const fn new(v: u16) -> Option<PacketId> {
        match NonZeroU16::new(v) {
            Some(n) => Some(PacketId(n)),
            None => None,
        }
    }
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

/// A UTF-8 string field, validated per [MQTT-1.5.4-1], [MQTT-1.5.4-2] and the control-character
/// rule the decoder applies; a zero-copy view of the input.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttStr(Bytes);

impl MqttStr {
    /// Wraps bytes already validated as an MQTT string. Only the codec's string reader and
    /// `from_static`/`try_from_str` construct values.
    pub(crate) fn from_validated(bytes: Bytes) -> MqttStr {
        MqttStr(bytes)
    }

    /// Validates `s` with the same rules the decoder applies.
    pub fn try_from_str(s: &str) -> Option<MqttStr> {
        super::string::validate_str(s.as_bytes())
            .ok()
            .map(|()| MqttStr(Bytes::copy_from_slice(s.as_bytes())))
    }

    /// Validates `bytes` (e.g. read back from storage) with the decoder's rules.
    pub fn try_from_bytes(bytes: Bytes) -> Option<MqttStr> {
        super::string::validate_str(&bytes)
            .ok()
            .map(|()| MqttStr(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A copy that owns exactly its bytes, for a value kept long after its packet: a decoded
    /// value is a view that keeps the whole read it came from alive.
    pub fn detached(&self) -> MqttStr {
        MqttStr(Bytes::copy_from_slice(&self.0))
    }

    pub fn as_bytes_shared(&self) -> &Bytes {
        &self.0
    }

    /// The underlying bytes (zero-copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The string; the bytes were validated as UTF-8 on construction, so the fallback is
    /// unreachable in practice.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for MqttStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// One MQTT 5.0 user property, kept in wire order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserProperty {
    pub name: MqttStr,
    pub value: MqttStr,
}

/// Every control packet. `PubAck`..`PubComp` share one body type because their wire shapes
/// are identical; the variant says which it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// The four-bit packet type of the fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl Packet {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CONNECT / CONNACK
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// 3.x "clean session", 5.0 "clean start".
    pub clean_start: bool,
    /// Seconds; 0 disables keep alive [MQTT-3.1.2-10].
    pub keep_alive: u16,
    /// May be empty (the server then assigns one, or refuses per level).
    pub client_id: MqttStr,
    pub will: Option<Will>,
    pub username: Option<MqttStr>,
    pub password: Option<Bytes>,
    pub properties: ConnectProperties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
}

impl Will {
    /// The same will in buffers of its own: a decoded will is a view into the read of its
    /// CONNECT, which it would keep alive for as long as the session keeps the will.
    pub fn detached(&self) -> Will {
        let p = &self.properties;
        Will {
            topic: TopicName::new(Bytes::copy_from_slice(self.topic.as_bytes()))
                .unwrap_or_else(|_| self.topic.clone()),
            payload: Bytes::copy_from_slice(&self.payload),
            qos: self.qos,
            retain: self.retain,
            properties: WillProperties {
                content_type: p.content_type.as_ref().map(MqttStr::detached),
                response_topic: p.response_topic.as_ref().map(|t| {
                    TopicName::new(Bytes::copy_from_slice(t.as_bytes()))
                        .unwrap_or_else(|_| t.clone())
                }),
                correlation_data: p
                    .correlation_data
                    .as_ref()
                    .map(|b| Bytes::copy_from_slice(b)),
                user_properties: p
                    .user_properties
                    .iter()
                    .map(|u| UserProperty {
                        name: u.name.detached(),
                        value: u.value.detached(),
                    })
                    .collect(),
                ..p.clone()
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    /// Never 0 once decoded [MQTT-3.1.2-... receive maximum of 0 is a protocol error].
    pub receive_maximum: Option<u16>,
    /// Never 0 once decoded.
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub user_properties: Vec<UserProperty>,
    pub authentication_method: Option<MqttStr>,
    pub authentication_data: Option<Bytes>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    pub payload_format_indicator: Option<bool>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<MqttStr>,
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// v5 reason code; for 3.x the encoder maps it to a return code with
    /// `ReasonCode::v3_connack_return_code`.
    pub reason: ReasonCode,
    pub properties: ConnAckProperties,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<MqttStr>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<MqttStr>,
    pub user_properties: Vec<UserProperty>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<MqttStr>,
    pub server_reference: Option<MqttStr>,
    pub authentication_method: Option<MqttStr>,
    pub authentication_data: Option<Bytes>,
}

// ---------------------------------------------------------------------------------------------
// PUBLISH and its acknowledgements
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only on an inbound v5 PUBLISH that carries a Topic Alias [MQTT-3.3.2-... 3.3.4].
    pub topic: TopicName,
    /// Present iff `qos > AtMostOnce` [MQTT-2.2.1-2].
    pub packet_id: Option<PacketId>,
    pub properties: PublishProperties,
    pub payload: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<bool>,
    pub message_expiry_interval: Option<u32>,
    /// Never 0 once decoded [MQTT-3.3.2-8].
    pub topic_alias: Option<u16>,
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
    /// Server to client only; a client that sends one gets 0x82 [MQTT-3.3.4-6].
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<MqttStr>,
}

/// Body of PUBACK, PUBREC, PUBREL and PUBCOMP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: PacketId,
    /// `Success` when absent on the wire (and always for 3.x).
    pub reason: ReasonCode,
    pub properties: AckProperties,
}

impl Ack {
    pub fn new(packet_id: PacketId) -> Ack {
        Ack {
            packet_id,
            reason: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }
}

/// Properties of PUBACK/PUBREC/PUBREL/PUBCOMP/SUBACK/UNSUBACK.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AckProperties {
    pub reason_string: Option<MqttStr>,
    pub user_properties: Vec<UserProperty>,
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE
// ---------------------------------------------------------------------------------------------

/// v5 Retain Handling subscription option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    #[default]
    SendAtSubscribe = 0,
    SendAtSubscribeIfNew = 1,
    DoNotSend = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    /// Never empty [MQTT-3.8.3-3].
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
    pub properties: SubscribeProperties,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    /// 1..=268_435_455 once decoded.
    pub subscription_identifier: Option<u32>,
    pub user_properties: Vec<UserProperty>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: PacketId,
    /// One per requested filter: `GrantedQoS0/1/2` or a failure code; 3.x maps failures to 0x80.
    pub reasons: Vec<ReasonCode>,
    pub properties: AckProperties,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    /// Never empty [MQTT-3.10.3-2].
    pub filters: Vec<TopicFilter>,
    pub user_properties: Vec<UserProperty>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: PacketId,
    /// v5 only: one per filter. Empty for 3.x.
    pub reasons: Vec<ReasonCode>,
    pub properties: AckProperties,
}

// ---------------------------------------------------------------------------------------------
// DISCONNECT / AUTH
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// `NormalDisconnection` when absent (and always for 3.x).
    pub reason: ReasonCode,
    pub properties: DisconnectProperties,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Disconnect {
        Disconnect {
            reason,
            properties: DisconnectProperties::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<MqttStr>,
    pub user_properties: Vec<UserProperty>,
    pub server_reference: Option<MqttStr>,
}

/// v5 only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: AuthProperties,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AuthProperties {
    pub authentication_method: Option<MqttStr>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<MqttStr>,
    pub user_properties: Vec<UserProperty>,
}

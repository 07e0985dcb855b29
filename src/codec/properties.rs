//! MQTT 5.0 properties (spec 2.2.2): identifiers, wire types, which packet may carry which,
//! and their decoding and encoding for every property set of the model.
//!
//! Owns: the property block of every packet. A property block is read through a bounded
//! sub-reader of its declared length; an unknown identifier is 0x81, a known one that the
//! packet may not carry is 0x82, a second copy of a single-instance property is 0x82
//! (2.2.2.2), user properties keep their wire order and their count is capped
//! (`DecodeLimits::max_user_properties`, bad input #26). Parsing is one linear pass.
//!
//! Must never: accept a value the spec forbids (receive maximum 0, a boolean byte other
//! than 0/1, ...), or allocate more than one `Vec` slot per property actually present.

use bytes::Bytes;

use super::DecodeLimits;
use super::encode::{Sink, measure};
use super::error::DecodeError;
use super::model::*;
use super::reader::Reader;
use super::topic::TopicName;

// Identifiers (spec 2.2.2.2, table 2-4).
pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// One property as read from the wire, typed by its identifier's wire type.
#[derive(Debug)]
pub(crate) enum Property {
    Byte(u8, u8),
    TwoByte(u8, u16),
    FourByte(u8, u32),
    Vbi(u8, u32),
    Str(u8, MqttStr),
    Binary(u8, Bytes),
    User(UserProperty),
}

impl Property {
    fn id(&self) -> u8 {
        match self {
            Property::Byte(id, _)
            | Property::TwoByte(id, _)
            | Property::FourByte(id, _)
            | Property::Vbi(id, _)
            | Property::Str(id, _)
            | Property::Binary(id, _) => *id,
            Property::User(_) => USER_PROPERTY,
        }
    }
}

/// Reads one property. The identifier is a variable byte integer (2.2.2.2), but every
/// defined identifier is below 0x80, so a first byte >= 0x80 is unknown whatever follows.
fn read_property(r: &mut Reader) -> Result<Property, DecodeError> {
    let id = r.u8()?;
    Ok(match id {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => Property::Byte(id, r.u8()?),
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
            Property::TwoByte(id, r.u16()?)
        }
        MESSAGE_EXPIRY_INTERVAL
        | SESSION_EXPIRY_INTERVAL
        | WILL_DELAY_INTERVAL
        | MAXIMUM_PACKET_SIZE => Property::FourByte(id, r.u32()?),
        SUBSCRIPTION_IDENTIFIER => Property::Vbi(id, r.vbi()?),
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Property::Str(id, r.string()?),
        CORRELATION_DATA | AUTHENTICATION_DATA => Property::Binary(id, r.binary()?),
        USER_PROPERTY => Property::User(UserProperty {
            name: r.string()?,
            value: r.string()?,
        }),
        _ => return Err(DecodeError::UnknownProperty(id)),
    })
}

/// A packet's property set: which properties it accepts and how they are written.
pub(crate) trait PropertySet: Default {
    /// Identifiers that may appear more than once besides User Property (a bit per id).
    const REPEATABLE: u64 = 0;

    /// Stores one property, or refuses it: `PropertyNotAllowed` for an identifier this packet
    /// may not carry, `InvalidPropertyValue` for a forbidden value.
    fn apply(&mut self, p: Property) -> Result<(), DecodeError>;

    /// Checks across properties once the block is read.
    fn check(&self) -> Result<(), DecodeError> {
        Ok(())
    }

    /// Writes the properties, without the length prefix.
    fn write<S: Sink>(&self, s: &mut S);
}

/// Reads a property block: its length, then properties until that length is used up.
pub(crate) fn read_properties<P: PropertySet>(
    r: &mut Reader,
    limits: &DecodeLimits,
) -> Result<P, DecodeError> {
    let len = r.vbi()?;
    let mut set = P::default();
    if len == 0 {
        set.check()?;
        return Ok(set);
    }
    let mut block = r.sub(len as usize)?;
    let mut seen: u64 = 0;
    let mut users = 0usize;
    while !block.is_empty() {
        let p = read_property(&mut block)?;
        let id = p.id();
        if id == USER_PROPERTY {
            users += 1;
            if users > limits.max_user_properties {
                return Err(DecodeError::TooManyUserProperties);
            }
        } else if P::REPEATABLE & (1 << id) == 0 {
            // Every defined id is below 64 (checked by `read_property`).
            if seen & (1 << id) != 0 {
                return Err(DecodeError::DuplicateProperty(id));
            }
            seen |= 1 << id;
        }
        set.apply(p)?;
    }
    set.check()?;
    Ok(set)
}

/// Writes a property block: length, then the properties.
pub(crate) fn write_properties<P: PropertySet, S: Sink>(set: &P, s: &mut S) {
    let len = measure(|c| set.write(c));
    s.put_vbi(len as u32);
    set.write(s);
}

/// 3.1.2.11.10 (CONNECT) and 3.2.2.3.18 (CONNACK): "It is a Protocol Error to include
/// Authentication Data if there is no Authentication Method."
fn auth_data_has_method(data: &Option<Bytes>, method: &Option<MqttStr>) -> Result<(), DecodeError> {
    if data.is_some() && method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    Ok(())
}

/// A 0/1 byte (2.2.2.2: "It is a Protocol Error to include ... a value other than 0 or 1").
fn flag(id: u8, v: u8) -> Result<bool, DecodeError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

/// A value the spec forbids to be 0 (receive maximum 3.1.2.11.3, maximum packet size
/// 3.1.2.11.4, subscription identifier 3.8.2.1.2).
fn non_zero<T: PartialEq + Default>(id: u8, v: T) -> Result<T, DecodeError> {
    if v == T::default() {
        Err(DecodeError::InvalidPropertyValue(id))
    } else {
        Ok(v)
    }
}

fn response_topic(s: MqttStr) -> Result<TopicName, DecodeError> {
    super::publish::topic_name(s).map_err(DecodeError::InvalidResponseTopic)
}

fn not_allowed(p: &Property) -> DecodeError {
    DecodeError::PropertyNotAllowed(p.id())
}

// ---- writers ----------------------------------------------------------------------------------

fn w_flag<S: Sink>(s: &mut S, id: u8, v: Option<bool>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_u8(u8::from(v));
    }
}
fn w_u16<S: Sink>(s: &mut S, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_u16(v);
    }
}
fn w_u32<S: Sink>(s: &mut S, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_u32(v);
    }
}
fn w_str<S: Sink>(s: &mut S, id: u8, v: Option<&MqttStr>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_prefixed(v.as_bytes());
    }
}
fn w_bin<S: Sink>(s: &mut S, id: u8, v: Option<&Bytes>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_prefixed(v);
    }
}
fn w_users<S: Sink>(s: &mut S, users: &[UserProperty]) {
    for u in users {
        s.put_u8(USER_PROPERTY);
        s.put_prefixed(u.name.as_bytes());
        s.put_prefixed(u.value.as_bytes());
    }
}

// ---- the property sets ----------------------------------------------------------------------

impl PropertySet for ConnectProperties {
    fn apply(&mut self, p: Property) -> Result<(), DecodeError> {
        match p {
            Property::FourByte(SESSION_EXPIRY_INTERVAL, v) => {
                self.session_expiry_interval = Some(v)
            }
            Property::TwoByte(RECEIVE_MAXIMUM, v) => {
                self.receive_maximum = Some(non_zero(RECEIVE_MAXIMUM, v)?)
            }
            Property::FourByte(MAXIMUM_PACKET_SIZE, v) => {
                self.maximum_packet_size = Some(non_zero(MAXIMUM_PACKET_SIZE, v)?)
            }
            Property::TwoByte(TOPIC_ALIAS_MAXIMUM, v) => self.topic_alias_maximum = Some(v),
            Property::Byte(REQUEST_RESPONSE_INFORMATION, v) => {
                self.request_response_information = Some(flag(REQUEST_RESPONSE_INFORMATION, v)?)
            }
            Property::Byte(REQUEST_PROBLEM_INFORMATION, v) => {
                self.request_problem_information = Some(flag(REQUEST_PROBLEM_INFORMATION, v)?)
            }
            Property::User(u) => self.user_properties.push(u),
            Property::Str(AUTHENTICATION_METHOD, v) => self.authentication_method = Some(v),
            Property::Binary(AUTHENTICATION_DATA, v) => self.authentication_data = Some(v),
            other => return Err(not_allowed(&other)),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), DecodeError> {
        auth_data_has_method(&self.authentication_data, &self.authentication_method)
    }

    fn write<S: Sink>(&self, s: &mut S) {
        w_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        w_u16(s, RECEIVE_MAXIMUM, self.receive_maximum);
        w_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        w_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        w_flag(
            s,
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        w_flag(
            s,
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        w_users(s, &self.user_properties);
        w_str(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        );
        w_bin(s, AUTHENTICATION_DATA, self.authentication_data.as_ref());
    }
}

impl PropertySet for WillProperties {
    fn apply(&mut self, p: Property) -> Result<(), DecodeError> {
        match p {
            Property::FourByte(WILL_DELAY_INTERVAL, v) => self.will_delay_interval = Some(v),
            Property::Byte(PAYLOAD_FORMAT_INDICATOR, v) => {
                self.payload_format_indicator = Some(flag(PAYLOAD_FORMAT_INDICATOR, v)?)
            }
            Property::FourByte(MESSAGE_EXPIRY_INTERVAL, v) => {
                self.message_expiry_interval = Some(v)
            }
            Property::Str(CONTENT_TYPE, v) => self.content_type = Some(v),
            Property::Str(RESPONSE_TOPIC, v) => self.response_topic = Some(response_topic(v)?),
            Property::Binary(CORRELATION_DATA, v) => self.correlation_data = Some(v),
            Property::User(u) => self.user_properties.push(u),
            other => return Err(not_allowed(&other)),
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) {
        w_u32(s, WILL_DELAY_INTERVAL, self.will_delay_interval);
        w_flag(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        w_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        w_str(s, CONTENT_TYPE, self.content_type.as_ref());
        if let Some(t) = &self.response_topic {
            s.put_u8(RESPONSE_TOPIC);
            s.put_prefixed(t.as_bytes());
        }
        w_bin(s, CORRELATION_DATA, self.correlation_data.as_ref());
        w_users(s, &self.user_properties);
    }
}

impl PropertySet for ConnAckProperties {
    fn apply(&mut self, p: Property) -> Result<(), DecodeError> {
        match p {
            Property::FourByte(SESSION_EXPIRY_INTERVAL, v) => {
                self.session_expiry_interval = Some(v)
            }
            Property::TwoByte(RECEIVE_MAXIMUM, v) => {
                self.receive_maximum = Some(non_zero(RECEIVE_MAXIMUM, v)?)
            }
            // 3.2.2.3.4: "a value other than 0 or 1" is a Protocol Error.
            Property::Byte(MAXIMUM_QOS, v) => {
                self.maximum_qos = Some(if flag(MAXIMUM_QOS, v)? {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                })
            }
            Property::Byte(RETAIN_AVAILABLE, v) => {
                self.retain_available = Some(flag(RETAIN_AVAILABLE, v)?)
            }
            Property::FourByte(MAXIMUM_PACKET_SIZE, v) => {
                self.maximum_packet_size = Some(non_zero(MAXIMUM_PACKET_SIZE, v)?)
            }
            Property::Str(ASSIGNED_CLIENT_IDENTIFIER, v) => {
                self.assigned_client_identifier = Some(v)
            }
            Property::TwoByte(TOPIC_ALIAS_MAXIMUM, v) => self.topic_alias_maximum = Some(v),
            Property::Str(REASON_STRING, v) => self.reason_string = Some(v),
            Property::User(u) => self.user_properties.push(u),
            Property::Byte(WILDCARD_SUBSCRIPTION_AVAILABLE, v) => {
                self.wildcard_subscription_available =
                    Some(flag(WILDCARD_SUBSCRIPTION_AVAILABLE, v)?)
            }
            Property::Byte(SUBSCRIPTION_IDENTIFIER_AVAILABLE, v) => {
                self.subscription_identifiers_available =
                    Some(flag(SUBSCRIPTION_IDENTIFIER_AVAILABLE, v)?)
            }
            Property::Byte(SHARED_SUBSCRIPTION_AVAILABLE, v) => {
                self.shared_subscription_available = Some(flag(SHARED_SUBSCRIPTION_AVAILABLE, v)?)
            }
            Property::TwoByte(SERVER_KEEP_ALIVE, v) => self.server_keep_alive = Some(v),
            Property::Str(RESPONSE_INFORMATION, v) => self.response_information = Some(v),
            Property::Str(SERVER_REFERENCE, v) => self.server_reference = Some(v),
            Property::Str(AUTHENTICATION_METHOD, v) => self.authentication_method = Some(v),
            Property::Binary(AUTHENTICATION_DATA, v) => self.authentication_data = Some(v),
            other => return Err(not_allowed(&other)),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), DecodeError> {
        auth_data_has_method(&self.authentication_data, &self.authentication_method)
    }

    fn write<S: Sink>(&self, s: &mut S) {
        w_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        w_u16(s, RECEIVE_MAXIMUM, self.receive_maximum);
        let max_qos = self.maximum_qos.map(|q| q != QoS::AtMostOnce);
        w_flag(s, MAXIMUM_QOS, max_qos);
        w_flag(s, RETAIN_AVAILABLE, self.retain_available);
        w_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        w_str(
            s,
            ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_ref(),
        );
        w_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        w_str(s, REASON_STRING, self.reason_string.as_ref());
        w_users(s, &self.user_properties);
        w_flag(
            s,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        w_flag(
            s,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        w_flag(
            s,
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        w_u16(s, SERVER_KEEP_ALIVE, self.server_keep_alive);
        w_str(s, RESPONSE_INFORMATION, self.response_information.as_ref());
        w_str(s, SERVER_REFERENCE, self.server_reference.as_ref());
        w_str(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        );
        w_bin(s, AUTHENTICATION_DATA, self.authentication_data.as_ref());
    }
}

impl PropertySet for PublishProperties {
    /// A PUBLISH carries one Subscription Identifier per matching subscription (3.3.2.3.8).
    const REPEATABLE: u64 = 1 << SUBSCRIPTION_IDENTIFIER;

    fn apply(&mut self, p: Property) -> Result<(), DecodeError> {
        match p {
            Property::Byte(PAYLOAD_FORMAT_INDICATOR, v) => {
                self.payload_format_indicator = Some(flag(PAYLOAD_FORMAT_INDICATOR, v)?)
            }
            Property::FourByte(MESSAGE_EXPIRY_INTERVAL, v) => {
                self.message_expiry_interval = Some(v)
            }
            // [MQTT-3.3.2-8]: a Topic Alias of 0 is not permitted (DISCONNECT 0x94).
            Property::TwoByte(TOPIC_ALIAS, 0) => return Err(DecodeError::TopicAliasZero),
            Property::TwoByte(TOPIC_ALIAS, v) => self.topic_alias = Some(v),
            Property::Str(RESPONSE_TOPIC, v) => self.response_topic = Some(response_topic(v)?),
            Property::Binary(CORRELATION_DATA, v) => self.correlation_data = Some(v),
            Property::User(u) => self.user_properties.push(u),
            Property::Vbi(SUBSCRIPTION_IDENTIFIER, v) => self
                .subscription_identifiers
                .push(non_zero(SUBSCRIPTION_IDENTIFIER, v)?),
            Property::Str(CONTENT_TYPE, v) => self.content_type = Some(v),
            other => return Err(not_allowed(&other)),
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) {
        PublishPropertiesOut {
            base: self,
            message_expiry_interval: self.message_expiry_interval,
            topic_alias: self.topic_alias,
            subscription_identifiers: &self.subscription_identifiers,
        }
        .write(s);
    }
}

/// PUBLISH properties as written: `base` with the per-delivery values replaced. The one
/// writer of PUBLISH properties, for owned packets and borrowed `PublishOut`s alike.
pub(crate) struct PublishPropertiesOut<'a> {
    pub(crate) base: &'a PublishProperties,
    pub(crate) message_expiry_interval: Option<u32>,
    pub(crate) topic_alias: Option<u16>,
    pub(crate) subscription_identifiers: &'a [u32],
}

impl PublishPropertiesOut<'_> {
    pub(crate) fn write<S: Sink>(&self, s: &mut S) {
        let base = self.base;
        w_flag(s, PAYLOAD_FORMAT_INDICATOR, base.payload_format_indicator);
        w_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        w_u16(s, TOPIC_ALIAS, self.topic_alias);
        if let Some(t) = &base.response_topic {
            s.put_u8(RESPONSE_TOPIC);
            s.put_prefixed(t.as_bytes());
        }
        w_bin(s, CORRELATION_DATA, base.correlation_data.as_ref());
        w_users(s, &base.user_properties);
        for &id in self.subscription_identifiers {
            s.put_u8(SUBSCRIPTION_IDENTIFIER);
            s.put_vbi(id);
        }
        w_str(s, CONTENT_TYPE, base.content_type.as_ref());
    }
}

impl PropertySet for AckProperties {
    fn apply(&mut self, p: Property) -> Result<(), DecodeError> {
        match p {
            Property::Str(REASON_STRING, v) => self.reason_string = Some(v),
            Property::User(u) => self.user_properties.push(u),
            other => return Err(not_allowed(&other)),
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) {
        w_str(s, REASON_STRING, self.reason_string.as_ref());
        w_users(s, &self.user_properties);
    }
}

impl PropertySet for SubscribeProperties {
    fn apply(&mut self, p: Property) -> Result<(), DecodeError> {
        match p {
            // 3.8.2.1.2: 1 to 268,435,455; 0 is a Protocol Error (larger values cannot be
            // encoded in four bytes and fail as VariableByteIntegerTooLong).
            Property::Vbi(SUBSCRIPTION_IDENTIFIER, v) => {
                self.subscription_identifier = Some(non_zero(SUBSCRIPTION_IDENTIFIER, v)?)
            }
            Property::User(u) => self.user_properties.push(u),
            other => return Err(not_allowed(&other)),
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) {
        if let Some(id) = self.subscription_identifier {
            s.put_u8(SUBSCRIPTION_IDENTIFIER);
            s.put_vbi(id);
        }
        w_users(s, &self.user_properties);
    }
}

/// The property set of UNSUBSCRIBE: user properties only (3.10.2.1).
#[derive(Debug, Default)]
pub(crate) struct UserPropertiesOnly(pub(crate) Vec<UserProperty>);

impl PropertySet for UserPropertiesOnly {
    fn apply(&mut self, p: Property) -> Result<(), DecodeError> {
        match p {
            Property::User(u) => self.0.push(u),
            other => return Err(not_allowed(&other)),
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) {
        w_users(s, &self.0);
    }
}

impl PropertySet for DisconnectProperties {
    fn apply(&mut self, p: Property) -> Result<(), DecodeError> {
        match p {
            Property::FourByte(SESSION_EXPIRY_INTERVAL, v) => {
                self.session_expiry_interval = Some(v)
            }
            Property::Str(REASON_STRING, v) => self.reason_string = Some(v),
            Property::User(u) => self.user_properties.push(u),
            Property::Str(SERVER_REFERENCE, v) => self.server_reference = Some(v),
            other => return Err(not_allowed(&other)),
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) {
        w_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        w_str(s, REASON_STRING, self.reason_string.as_ref());
        w_users(s, &self.user_properties);
        w_str(s, SERVER_REFERENCE, self.server_reference.as_ref());
    }
}

impl PropertySet for AuthProperties {
    fn apply(&mut self, p: Property) -> Result<(), DecodeError> {
        match p {
            Property::Str(AUTHENTICATION_METHOD, v) => self.authentication_method = Some(v),
            Property::Binary(AUTHENTICATION_DATA, v) => self.authentication_data = Some(v),
            Property::Str(REASON_STRING, v) => self.reason_string = Some(v),
            Property::User(u) => self.user_properties.push(u),
            other => return Err(not_allowed(&other)),
        }
        Ok(())
    }

    /// 3.15.2.2.2: "It is a Protocol Error to omit the Authentication Method".
    fn check(&self) -> Result<(), DecodeError> {
        if self.authentication_method.is_none() {
            return Err(DecodeError::AuthMethodMissing);
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) {
        w_str(
            s,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        );
        w_bin(s, AUTHENTICATION_DATA, self.authentication_data.as_ref());
        w_str(s, REASON_STRING, self.reason_string.as_ref());
        w_users(s, &self.user_properties);
    }
}

// ---- property blocks kept by storage ----------------------------------------------------

/// Limits for reading a property block back from storage: it passed the broker's limits on
/// the way in, so only the format is checked again.
const STORED: DecodeLimits = DecodeLimits {
    max_packet_size: u32::MAX,
    max_user_properties: usize::MAX,
    role: super::Role::Server,
};

/// The v5 property block (length, then properties) of a stored message: what storage
/// keeps of `PublishProperties`, in the wire format the codec already reads and checks.
pub fn encode_publish_properties(p: &PublishProperties, dst: &mut bytes::BytesMut) {
    write_properties(p, dst);
}

/// Reads a block written by `encode_publish_properties`; the whole input must be the block.
pub fn decode_publish_properties(block: Bytes) -> Result<PublishProperties, DecodeError> {
    let mut r = Reader::new(block);
    let p = read_properties(&mut r, &STORED)?;
    r.finish()?;
    Ok(p)
}

/// The v5 property block of a stored will.
pub fn encode_will_properties(p: &WillProperties, dst: &mut bytes::BytesMut) {
    write_properties(p, dst);
}

/// Reads a block written by `encode_will_properties`; the whole input must be the block.
pub fn decode_will_properties(block: Bytes) -> Result<WillProperties, DecodeError> {
    let mut r = Reader::new(block);
    let p = read_properties(&mut r, &STORED)?;
    r.finish()?;
    Ok(p)
}

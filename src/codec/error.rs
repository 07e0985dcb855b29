//! Decode errors and the one place that decides what a client gets for each.
//!
//! Owns: `DecodeError` (one variant per rule the decoder enforces, `Copy`, no allocation),
//! `DecodeError::reason_code` (the v5 reason code of each rule, one exhaustive `match`) and
//! `DecodeError::response` (CONNACK before CONNACK, v5 DISCONNECT after, plain close for 3.x).
//!
//! Must never: pick a code anywhere else, or grow a `_ =>` arm in the mappings below: a new
//! variant must be given its code on purpose.

use super::model::ProtocolVersion;
use super::reason::ReasonCode;
use super::topic::TopicError;

/// The generic field errors, when they happen inside a CONNECT: carried with the CONNECT's
/// level so that `response` can answer a v5 client with CONNACK 0x81 and close a 3.x one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformation {
    InvalidUtf8,
    ForbiddenCodePoint,
    UnexpectedEof,
    TrailingBytes,
    /// Reserved fixed-header flag bits set on the CONNECT [MQTT-2.1.3-1].
    FixedHeaderFlags,
}

/// Why a byte sequence is not a valid packet. `Copy`, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    // ---- fixed header -------------------------------------------------------------------
    /// The remaining length's fourth byte has its continuation bit set [MQTT-1.5.5-1].
    RemainingLengthTooLong,
    /// The declared packet size exceeds `DecodeLimits::max_packet_size` (decided before the
    /// body is buffered) [MQTT-3.1.2-24] for the server's own limit.
    PacketTooLarge,
    /// Packet type 0 is reserved (spec 2.1.2).
    ReservedPacketType,
    /// Packet type 15 (AUTH) exists only in 5.0; reserved in 3.x.
    UnexpectedAuthOnV3,
    /// Reserved fixed-header flag bits are wrong for the packet type [MQTT-2.1.3-1]; the byte
    /// is the whole first byte.
    InvalidFixedHeaderFlags(u8),
    /// The first packet on a connection is not CONNECT [MQTT-3.1.0-1].
    FirstPacketNotConnect,
    /// A CONNECT after the first packet [MQTT-3.1.0-2].
    SecondConnect,

    // ---- fields (any packet) --------------------------------------------------------------
    /// A field runs past the end of the packet or of its length-prefixed block.
    UnexpectedEof,
    /// Bytes left after the last field.
    TrailingBytes,
    /// A string is not well-formed UTF-8 [MQTT-1.5.4-1].
    InvalidUtf8,
    /// A string holds U+0000 [MQTT-1.5.4-2], a control character or a non-character (1.5.4).
    ForbiddenCodePoint,
    /// A variable byte integer in the body (property length, subscription identifier) has more
    /// than four bytes [MQTT-1.5.5-1].
    VariableByteIntegerTooLong,

    // ---- CONNECT ------------------------------------------------------------------------------
    /// A generic field error inside a CONNECT of protocol level `version`.
    MalformedConnect {
        version: ProtocolVersion,
        cause: Malformation,
    },
    /// The protocol name is not the one of the level (`MQIsdp` for 3, `MQTT` for 4 and 5)
    /// [MQTT-3.1.2-1]. `level` picks the CONNACK format of the answer.
    InvalidProtocolName { level: u8 },
    /// The protocol level is not 3, 4 or 5 [MQTT-3.1.2-2].
    UnsupportedProtocolVersion { level: u8 },
    /// CONNECT flags bit 0 is reserved and must be 0 [MQTT-3.1.2-3].
    ReservedConnectFlag { version: ProtocolVersion },
    /// Will QoS or Will Retain set without the Will Flag [MQTT-3.1.2-11], [MQTT-3.1.2-13]
    /// (3.1.1: -11, -15).
    WillFlagsWithoutWill { version: ProtocolVersion },
    /// Will QoS 3 [MQTT-3.1.2-12] (3.1.1: -14).
    InvalidWillQoS { version: ProtocolVersion },
    /// The will topic is not a valid topic name [MQTT-3.1.3-11].
    InvalidWillTopic {
        version: ProtocolVersion,
        error: TopicError,
    },
    /// Password flag without user name flag; only 3.x forbids it [MQTT-3.1.2-22] (3.1.1).
    PasswordWithoutUsername { version: ProtocolVersion },
    /// Empty client id with clean session 0 in 3.1.1 [MQTT-3.1.3-8], or any empty client id
    /// in 3.1 (which requires 1 to 23 characters): CONNACK 0x02.
    ClientIdRejected { version: ProtocolVersion },

    // ---- PUBLISH ------------------------------------------------------------------------------
    /// QoS bits 11 [MQTT-3.3.1-4].
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2].
    DupOnQoS0,
    /// Packet identifier 0 where one is required [MQTT-2.2.1-3] (3.1.1: [MQTT-2.3.1-1]).
    PacketIdZero,
    /// The topic is not a valid topic name (wildcards [MQTT-3.3.2-2], ...).
    InvalidTopicName(TopicError),
    /// Empty topic without a Topic Alias [MQTT-4.7.3-1], 3.3.2.3.4.
    EmptyTopicWithoutAlias,
    /// Topic Alias 0 [MQTT-3.3.2-8]: DISCONNECT 0x94.
    TopicAliasZero,
    /// A client sent a Subscription Identifier in PUBLISH [MQTT-3.3.4-6].
    SubscriptionIdentifierFromClient,

    // ---- SUBSCRIBE / UNSUBSCRIBE -------------------------------------------------------------
    /// SUBSCRIBE/UNSUBSCRIBE without a filter [MQTT-3.8.3-3], [MQTT-3.10.3-2].
    NoFilters,
    /// A filter is not a valid topic filter (spec 4.7, 4.8.2).
    InvalidTopicFilter(TopicError),
    /// Reserved subscription option bits set [MQTT-3.8.3-5] (3.1.1: [MQTT-3-8.3-4]).
    SubscriptionOptionsReservedBits,
    /// Maximum QoS 3 in the subscription options (3.8.3.1).
    InvalidSubscriptionQoS,
    /// Retain Handling 3 (3.8.3.1).
    InvalidRetainHandling,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    NoLocalOnSharedSubscription,

    // ---- acknowledgements ----------------------------------------------------------------------
    /// A reason code (or 3.x return code) the packet may not carry (spec 2.4).
    InvalidReasonCode(u8),
    /// CONNACK acknowledge flags bits 7-1 are reserved [MQTT-3.2.2-1].
    InvalidConnAckFlags,

    // ---- properties (5.0) --------------------------------------------------------------------------
    /// An identifier the spec does not define (2.2.2.2).
    UnknownProperty(u8),
    /// A property that may appear once appears twice (2.2.2.2).
    DuplicateProperty(u8),
    /// A property defined by the spec but not allowed in this packet (2.2.2.2).
    PropertyNotAllowed(u8),
    /// A value the spec forbids (receive maximum 0, a boolean byte of 2, ...).
    InvalidPropertyValue(u8),
    /// The Response Topic is not a valid topic name [MQTT-3.3.2-14].
    InvalidResponseTopic(TopicError),
    /// Authentication Data without Authentication Method (3.1.2.11.10).
    AuthDataWithoutMethod,
    /// An AUTH packet with properties but no Authentication Method (3.15.2.2.2).
    AuthMethodMissing,
    /// More user properties than `DecodeLimits::max_user_properties` (bad input #26).
    TooManyUserProperties,
}

/// What the connection must do after a decode error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorResponse {
    /// Send CONNACK encoded at `version` with `reason` (for 3.x the encoder maps it to a
    /// return code with `ReasonCode::v3_connack_return_code`), then close.
    ConnAck {
        version: ProtocolVersion,
        reason: ReasonCode,
    },
    /// v5: send DISCONNECT with this code, then close.
    Disconnect(ReasonCode),
    /// Close the connection without a packet.
    Close,
}

impl DecodeError {
    /// The v5 reason code for this error (spec 2.4 and 4.13): 0x81 for a packet that cannot
    /// be parsed, 0x82 for a parsed packet that breaks a rule, or the specific code.
    pub fn reason_code(self) -> ReasonCode {
        use DecodeError as E;
        use ReasonCode as R;
        match self {
            E::RemainingLengthTooLong
            | E::ReservedPacketType
            | E::UnexpectedAuthOnV3
            | E::InvalidFixedHeaderFlags(_)
            | E::UnexpectedEof
            | E::TrailingBytes
            | E::InvalidUtf8
            | E::ForbiddenCodePoint
            | E::VariableByteIntegerTooLong
            | E::MalformedConnect { .. }
            | E::ReservedConnectFlag { .. }
            | E::WillFlagsWithoutWill { .. }
            | E::InvalidWillQoS { .. }
            | E::PasswordWithoutUsername { .. }
            | E::InvalidQoS
            | E::DupOnQoS0
            | E::SubscriptionOptionsReservedBits
            | E::InvalidConnAckFlags
            | E::UnknownProperty(_) => R::MalformedPacket,
            E::PacketTooLarge => R::PacketTooLarge,
            E::FirstPacketNotConnect
            | E::SecondConnect
            | E::PacketIdZero
            | E::EmptyTopicWithoutAlias
            | E::SubscriptionIdentifierFromClient
            | E::NoFilters
            | E::InvalidSubscriptionQoS
            | E::InvalidRetainHandling
            | E::NoLocalOnSharedSubscription
            | E::InvalidReasonCode(_)
            | E::DuplicateProperty(_)
            | E::PropertyNotAllowed(_)
            | E::InvalidPropertyValue(_)
            | E::InvalidResponseTopic(_)
            | E::AuthDataWithoutMethod
            | E::AuthMethodMissing => R::ProtocolError,
            E::InvalidProtocolName { .. } | E::UnsupportedProtocolVersion { .. } => {
                R::UnsupportedProtocolVersion
            }
            E::ClientIdRejected { .. } => R::ClientIdentifierNotValid,
            E::InvalidWillTopic { error, .. } | E::InvalidTopicName(error) => {
                topic_name_code(error)
            }
            E::InvalidTopicFilter(error) => topic_filter_code(error),
            E::TopicAliasZero => R::TopicAliasInvalid,
            E::TooManyUserProperties => R::QuotaExceeded,
        }
    }

    /// The protocol level an error implies by itself: the level of the CONNECT it came from,
    /// or 5.0 for errors only a 5.0 packet can produce (properties). `None`: the error says
    /// nothing about the level.
    pub fn implied_version(self) -> Option<ProtocolVersion> {
        use DecodeError as E;
        match self {
            E::MalformedConnect { version, .. }
            | E::ReservedConnectFlag { version }
            | E::WillFlagsWithoutWill { version }
            | E::InvalidWillQoS { version }
            | E::InvalidWillTopic { version, .. }
            | E::PasswordWithoutUsername { version }
            | E::ClientIdRejected { version } => Some(version),
            // A wrong protocol name at level 5 is a 5.0 client: 5.0 CONNACK 0x84
            // [MQTT-3.1.2-1]. A level we do not speak gets the two-byte 3.x CONNACK with return
            // code 0x01 [MQTT-3.1.2-2] (3.1.1): its format is the only one every client level
            // can parse, since we cannot know what a future level's CONNACK looks like.
            E::InvalidProtocolName { level: 5 } => Some(ProtocolVersion::V5),
            E::InvalidProtocolName { .. } | E::UnsupportedProtocolVersion { .. } => {
                Some(ProtocolVersion::V311)
            }
            E::VariableByteIntegerTooLong
            | E::UnknownProperty(_)
            | E::DuplicateProperty(_)
            | E::PropertyNotAllowed(_)
            | E::InvalidPropertyValue(_)
            | E::InvalidResponseTopic(_)
            | E::AuthDataWithoutMethod
            | E::AuthMethodMissing
            | E::TooManyUserProperties
            | E::TopicAliasZero
            | E::SubscriptionIdentifierFromClient => Some(ProtocolVersion::V5),
            E::RemainingLengthTooLong
            | E::PacketTooLarge
            | E::ReservedPacketType
            | E::UnexpectedAuthOnV3
            | E::InvalidFixedHeaderFlags(_)
            | E::FirstPacketNotConnect
            | E::SecondConnect
            | E::UnexpectedEof
            | E::TrailingBytes
            | E::InvalidUtf8
            | E::ForbiddenCodePoint
            | E::InvalidQoS
            | E::DupOnQoS0
            | E::PacketIdZero
            | E::InvalidTopicName(_)
            | E::EmptyTopicWithoutAlias
            | E::NoFilters
            | E::InvalidTopicFilter(_)
            | E::SubscriptionOptionsReservedBits
            | E::InvalidSubscriptionQoS
            | E::InvalidRetainHandling
            | E::NoLocalOnSharedSubscription
            | E::InvalidReasonCode(_)
            | E::InvalidConnAckFlags => None,
        }
    }

    /// The answer for this error given the connection's protocol level (`None` before a
    /// CONNECT decoded) and whether CONNACK has been sent.
    ///
    /// - Before CONNACK, 5.0: CONNACK with `reason_code()` [MQTT-4.13.1-1] (this includes
    ///   errors inside the CONNECT itself, whose level the error carries).
    /// - Before CONNACK, 3.x: CONNACK only for the two return codes 3.1.1 defines for a
    ///   refused CONNECT that is otherwise readable: 0x01 (protocol level) and 0x02 (client
    ///   id) [MQTT-3.1.2-2], [MQTT-3.1.3-8]; anything else closes [MQTT-4.8.0-1].
    /// - After CONNACK, 5.0: DISCONNECT with `reason_code()` [MQTT-4.13.1-1].
    /// - After CONNACK, 3.x, or no level known at all: close.
    pub fn response(self, version: Option<ProtocolVersion>, connack_sent: bool) -> ErrorResponse {
        let reason = self.reason_code();
        match (self.implied_version().or(version), connack_sent) {
            (None, _) => ErrorResponse::Close,
            (Some(ProtocolVersion::V5), false) => ErrorResponse::ConnAck {
                version: ProtocolVersion::V5,
                reason,
            },
            (Some(ProtocolVersion::V5), true) => ErrorResponse::Disconnect(reason),
            (Some(v @ (ProtocolVersion::V31 | ProtocolVersion::V311)), false) => match reason {
                ReasonCode::UnsupportedProtocolVersion | ReasonCode::ClientIdentifierNotValid => {
                    ErrorResponse::ConnAck { version: v, reason }
                }
                _ => ErrorResponse::Close,
            },
            (Some(ProtocolVersion::V31 | ProtocolVersion::V311), true) => ErrorResponse::Close,
        }
    }
}

/// A topic name the router refused: a name that is well formed but not accepted (too long or
/// too deep) is 0x90; one that breaks the spec's syntax (wildcards [MQTT-3.3.2-2], empty
/// [MQTT-4.7.3-1]) cannot be parsed as a topic name and is 0x81.
fn topic_name_code(e: TopicError) -> ReasonCode {
    match e {
        TopicError::TooLong => ReasonCode::TopicNameInvalid,
        TopicError::Empty
        | TopicError::InvalidUtf8
        | TopicError::Wildcard
        | TopicError::BadWildcardPlacement
        | TopicError::BadSharedSubscription => ReasonCode::MalformedPacket,
    }
}

/// A topic filter the router refused: too long or too deep is 0x8F; a malformed shared
/// subscription (empty share name, no filter, 4.8.2) is a protocol error 0x82 (bad input #57);
/// broken wildcard syntax [MQTT-4.7.1-1], [MQTT-4.7.1-2] or an empty filter [MQTT-4.7.3-1] is
/// 0x81.
fn topic_filter_code(e: TopicError) -> ReasonCode {
    match e {
        TopicError::TooLong => ReasonCode::TopicFilterInvalid,
        TopicError::BadSharedSubscription => ReasonCode::ProtocolError,
        TopicError::Empty
        | TopicError::InvalidUtf8
        | TopicError::Wildcard
        | TopicError::BadWildcardPlacement => ReasonCode::MalformedPacket,
    }
}

impl DecodeError {
    /// Wraps the generic field errors of a CONNECT body with the CONNECT's level.
    pub(crate) fn in_connect(self, version: ProtocolVersion) -> DecodeError {
        let cause = match self {
            DecodeError::InvalidUtf8 => Malformation::InvalidUtf8,
            DecodeError::ForbiddenCodePoint => Malformation::ForbiddenCodePoint,
            DecodeError::UnexpectedEof => Malformation::UnexpectedEof,
            DecodeError::TrailingBytes => Malformation::TrailingBytes,
            other => return other,
        };
        DecodeError::MalformedConnect { version, cause }
    }
}

//! The one table of MQTT 5.0 reason codes (spec section 2.4) and their 3.x equivalents.
//!
//! Owns: code <-> name <-> meaning, and the mapping of a v5 code to a 3.x CONNACK return code
//! or SUBACK return code. Every other module names codes through `ReasonCode`, never through
//! a literal byte.

/// Declares the enum, its wire values and its names from one table, so the three can never
/// disagree.
macro_rules! reason_codes {
    ($( $variant:ident = $code:literal, $name:literal; )*) => {
        /// An MQTT 5.0 reason code. Some codes share a byte (0x00 means Success, Normal
        /// disconnection or Granted QoS 0 depending on the packet); those are distinct variants
        /// here so that each use site says what it means.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ReasonCode {
            $( $variant, )*
        }

        impl ReasonCode {
            /// Every code in table order.
            pub const ALL: &'static [ReasonCode] = &[ $( ReasonCode::$variant, )* ];

            /// The byte on the wire.
            pub const fn code(self) -> u8 {
                match self {
                    $( ReasonCode::$variant => $code, )*
                }
            }

            /// The name the specification gives the code.
            pub const fn name(self) -> &'static str {
                match self {
                    $( ReasonCode::$variant => $name, )*
                }
            }
        }
    };
}

reason_codes! {
    Success = 0x00, "Success";
    NormalDisconnection = 0x00, "Normal disconnection";
    GrantedQoS0 = 0x00, "Granted QoS 0";
    GrantedQoS1 = 0x01, "Granted QoS 1";
    GrantedQoS2 = 0x02, "Granted QoS 2";
    DisconnectWithWillMessage = 0x04, "Disconnect with Will Message";
    NoMatchingSubscribers = 0x10, "No matching subscribers";
    NoSubscriptionExisted = 0x11, "No subscription existed";
    ContinueAuthentication = 0x18, "Continue authentication";
    ReAuthenticate = 0x19, "Re-authenticate";
    UnspecifiedError = 0x80, "Unspecified error";
    MalformedPacket = 0x81, "Malformed Packet";
    ProtocolError = 0x82, "Protocol Error";
    ImplementationSpecificError = 0x83, "Implementation specific error";
    UnsupportedProtocolVersion = 0x84, "Unsupported Protocol Version";
    ClientIdentifierNotValid = 0x85, "Client Identifier not valid";
    BadUserNameOrPassword = 0x86, "Bad User Name or Password";
    NotAuthorized = 0x87, "Not authorized";
    ServerUnavailable = 0x88, "Server unavailable";
    ServerBusy = 0x89, "Server busy";
    Banned = 0x8A, "Banned";
    ServerShuttingDown = 0x8B, "Server shutting down";
    BadAuthenticationMethod = 0x8C, "Bad authentication method";
    KeepAliveTimeout = 0x8D, "Keep Alive timeout";
    SessionTakenOver = 0x8E, "Session taken over";
    TopicFilterInvalid = 0x8F, "Topic Filter invalid";
    TopicNameInvalid = 0x90, "Topic Name invalid";
    PacketIdentifierInUse = 0x91, "Packet Identifier in use";
    PacketIdentifierNotFound = 0x92, "Packet Identifier not found";
    ReceiveMaximumExceeded = 0x93, "Receive Maximum exceeded";
    TopicAliasInvalid = 0x94, "Topic Alias invalid";
    PacketTooLarge = 0x95, "Packet too large";
    MessageRateTooHigh = 0x96, "Message rate too high";
    QuotaExceeded = 0x97, "Quota exceeded";
    AdministrativeAction = 0x98, "Administrative action";
    PayloadFormatInvalid = 0x99, "Payload format invalid";
    RetainNotSupported = 0x9A, "Retain not supported";
    QoSNotSupported = 0x9B, "QoS not supported";
    UseAnotherServer = 0x9C, "Use another server";
    ServerMoved = 0x9D, "Server moved";
    SharedSubscriptionsNotSupported = 0x9E, "Shared Subscriptions not supported";
    ConnectionRateExceeded = 0x9F, "Connection rate exceeded";
    MaximumConnectTime = 0xA0, "Maximum connect time";
    SubscriptionIdentifiersNotSupported = 0xA1, "Subscription Identifiers not supported";
    WildcardSubscriptionsNotSupported = 0xA2, "Wildcard Subscriptions not supported";
}

/// The packet a reason code travels in; decoding a code byte needs it because 0x00 means
/// different things in different packets and each packet allows its own subset (spec 2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasonContext {
    ConnAck,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    SubAck,
    UnsubAck,
    Disconnect,
    Auth,
}

impl ReasonCode {
    /// Whether the code reports a failure (byte >= 0x80) [MQTT-2.4].
    pub const fn is_error(self) -> bool {
        self.code() >= 0x80
    }

    /// Decodes a reason byte in the packet it arrived in. `None` means the byte is not a code
    /// that packet may carry (the caller answers 0x81/0x82 as the spec says for that packet).
    pub fn from_wire(ctx: ReasonContext, byte: u8) -> Option<ReasonCode> {
        use ReasonCode as R;
        use ReasonContext as C;
        let allowed: &[ReasonCode] = match ctx {
            C::ConnAck => &[
                R::Success,
                R::UnspecifiedError,
                R::MalformedPacket,
                R::ProtocolError,
                R::ImplementationSpecificError,
                R::UnsupportedProtocolVersion,
                R::ClientIdentifierNotValid,
                R::BadUserNameOrPassword,
                R::NotAuthorized,
                R::ServerUnavailable,
                R::ServerBusy,
                R::Banned,
                R::BadAuthenticationMethod,
                R::TopicNameInvalid,
                R::PacketTooLarge,
                R::QuotaExceeded,
                R::PayloadFormatInvalid,
                R::RetainNotSupported,
                R::QoSNotSupported,
                R::UseAnotherServer,
                R::ServerMoved,
                R::ConnectionRateExceeded,
            ],
            C::PubAck | C::PubRec => &[
                R::Success,
                R::NoMatchingSubscribers,
                R::UnspecifiedError,
                R::ImplementationSpecificError,
                R::NotAuthorized,
                R::TopicNameInvalid,
                R::PacketIdentifierInUse,
                R::QuotaExceeded,
                R::PayloadFormatInvalid,
            ],
            C::PubRel | C::PubComp => &[R::Success, R::PacketIdentifierNotFound],
            C::SubAck => &[
                R::GrantedQoS0,
                R::GrantedQoS1,
                R::GrantedQoS2,
                R::UnspecifiedError,
                R::ImplementationSpecificError,
                R::NotAuthorized,
                R::TopicFilterInvalid,
                R::PacketIdentifierInUse,
                R::QuotaExceeded,
                R::SharedSubscriptionsNotSupported,
                R::SubscriptionIdentifiersNotSupported,
                R::WildcardSubscriptionsNotSupported,
            ],
            C::UnsubAck => &[
                R::Success,
                R::NoSubscriptionExisted,
                R::UnspecifiedError,
                R::ImplementationSpecificError,
                R::NotAuthorized,
                R::TopicFilterInvalid,
                R::PacketIdentifierInUse,
            ],
            C::Disconnect => &[
                R::NormalDisconnection,
                R::DisconnectWithWillMessage,
                R::UnspecifiedError,
                R::MalformedPacket,
                R::ProtocolError,
                R::ImplementationSpecificError,
                R::NotAuthorized,
                R::ServerBusy,
                R::ServerShuttingDown,
                R::KeepAliveTimeout,
                R::SessionTakenOver,
                R::TopicFilterInvalid,
                R::TopicNameInvalid,
                R::ReceiveMaximumExceeded,
                R::TopicAliasInvalid,
                R::PacketTooLarge,
                R::MessageRateTooHigh,
                R::QuotaExceeded,
                R::AdministrativeAction,
                R::PayloadFormatInvalid,
                R::RetainNotSupported,
                R::QoSNotSupported,
                R::UseAnotherServer,
                R::ServerMoved,
                R::SharedSubscriptionsNotSupported,
                R::ConnectionRateExceeded,
                R::MaximumConnectTime,
                R::SubscriptionIdentifiersNotSupported,
                R::WildcardSubscriptionsNotSupported,
            ],
            C::Auth => &[R::Success, R::ContinueAuthentication, R::ReAuthenticate],
        };
        allowed.iter().copied().find(|r| r.code() == byte)
    }

    /// Whether a client may send this code in a DISCONNECT (spec 3.14.2.1: the codes marked
    /// "Client" or "Client or Server"). Others are a protocol error from a client (0x82).
    pub const fn client_may_disconnect_with(self) -> bool {
        use ReasonCode as R;
        matches!(
            self,
            R::NormalDisconnection
                | R::DisconnectWithWillMessage
                | R::UnspecifiedError
                | R::MalformedPacket
                | R::ProtocolError
                | R::ImplementationSpecificError
                | R::TopicNameInvalid
                | R::ReceiveMaximumExceeded
                | R::TopicAliasInvalid
                | R::PacketTooLarge
                | R::MessageRateTooHigh
                | R::QuotaExceeded
                | R::AdministrativeAction
                | R::PayloadFormatInvalid
        )
    }

    /// The 3.x CONNACK return code (3.1.1 section 3.2.2.3) for a v5 CONNACK reason.
    /// 3.x has only six return codes; every v5 refusal maps to its closest one.
    pub const fn v3_connack_return_code(self) -> u8 {
        use ReasonCode as R;
        match self {
            R::Success | R::NormalDisconnection | R::GrantedQoS0 => 0x00,
            R::UnsupportedProtocolVersion => 0x01,
            R::ClientIdentifierNotValid => 0x02,
            R::ServerUnavailable
            | R::ServerBusy
            | R::ServerShuttingDown
            | R::UseAnotherServer
            | R::ServerMoved
            | R::ConnectionRateExceeded
            | R::QuotaExceeded => 0x03,
            R::BadUserNameOrPassword | R::BadAuthenticationMethod => 0x04,
            R::NotAuthorized | R::Banned => 0x05,
            // 3.x has no code for these; the CONNACK is refused as "server unavailable".
            R::GrantedQoS1
            | R::GrantedQoS2
            | R::DisconnectWithWillMessage
            | R::NoMatchingSubscribers
            | R::NoSubscriptionExisted
            | R::ContinueAuthentication
            | R::ReAuthenticate
            | R::UnspecifiedError
            | R::MalformedPacket
            | R::ProtocolError
            | R::ImplementationSpecificError
            | R::KeepAliveTimeout
            | R::SessionTakenOver
            | R::TopicFilterInvalid
            | R::TopicNameInvalid
            | R::PacketIdentifierInUse
            | R::PacketIdentifierNotFound
            | R::ReceiveMaximumExceeded
            | R::TopicAliasInvalid
            | R::PacketTooLarge
            | R::MessageRateTooHigh
            | R::AdministrativeAction
            | R::PayloadFormatInvalid
            | R::RetainNotSupported
            | R::QoSNotSupported
            | R::SharedSubscriptionsNotSupported
            | R::MaximumConnectTime
            | R::SubscriptionIdentifiersNotSupported
            | R::WildcardSubscriptionsNotSupported => 0x03,
        }
    }

    /// The 3.1.1 SUBACK return code: granted QoS, or 0x80 for any failure.
    pub const fn v3_suback_return_code(self) -> u8 {
        match self {
            ReasonCode::GrantedQoS0 => 0x00,
            ReasonCode::GrantedQoS1 => 0x01,
            ReasonCode::GrantedQoS2 => 0x02,
            _ => 0x80,
        }
    }

    /// Reverse of `v3_connack_return_code` for decoding a 3.x CONNACK.
    pub const fn from_v3_connack_return_code(code: u8) -> Option<ReasonCode> {
        match code {
            0x00 => Some(ReasonCode::Success),
            0x01 => Some(ReasonCode::UnsupportedProtocolVersion),
            0x02 => Some(ReasonCode::ClientIdentifierNotValid),
            0x03 => Some(ReasonCode::ServerUnavailable),
            0x04 => Some(ReasonCode::BadUserNameOrPassword),
            0x05 => Some(ReasonCode::NotAuthorized),
            _ => None,
        }
    }

    /// The granted-QoS code for a QoS.
    pub const fn granted(qos: super::model::QoS) -> ReasonCode {
        match qos {
            super::model::QoS::AtMostOnce => ReasonCode::GrantedQoS0,
            super::model::QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            super::model::QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
        }
    }
}

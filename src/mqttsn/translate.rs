//! The fixed correspondences between MQTT-SN and the MQTT session behind it: the MQTT
//! CONNECT a gateway client is given, the DISCONNECTs that end or pause it, and the one table
//! from MQTT 5 reason codes to MQTT-SN return codes.
//!
//! Why MQTT 5 towards the session (the client never sees it): Receive Maximum 1 makes the
//! session keep MQTT-SN's "one QoS 1/2 PUBLISH outstanding" rule (6.6) with its own queue;
//! Maximum Packet Size makes it drop what no datagram could carry; Session Expiry lets a
//! DISCONNECT end a clean session or keep it for the will update (see `WILL_SWAP_EXPIRY_SECS`);
//! and reason codes say why a PUBLISH or SUBSCRIBE was refused.
//!
//! Must never: touch a socket or the clock.

use bytes::Bytes;

use crate::codec::topic::TopicName;
use crate::codec::{
    Connect, ConnectProperties, Disconnect, DisconnectProperties, MqttStr, ProtocolVersion, QoS,
    ReasonCode, Will, WillProperties,
};
use crate::session::ClientId;

use super::codec::ReturnCode;

/// Session Expiry Interval asked for a clean-session client (MQTT-SN CleanSession = 1).
///
/// Not 0: a will update (WILLTOPICUPD/WILLMSGUPD, 6.4) is carried out as DISCONNECT (normal,
/// will discarded) + CONNECT (resume, new will), since MQTT has no packet that changes a will;
/// with expiry 0 the DISCONNECT would end the session. The two are fed to the session in one
/// turn, so the second never finds it expired; every other end of a clean-session client
/// sends `Session Expiry Interval = 0` with its DISCONNECT, and anything else that detaches
/// the session (the runtime) lets it expire within a second.
pub const WILL_SWAP_EXPIRY_SECS: u32 = 1;

/// Receive Maximum given to the session: one QoS 1/2 message in flight to the client at a
/// time (MQTT-SN 6.6 for clients; the gateway follows the same rule towards them).
pub const WINDOW: u16 = 1;

/// A will as the client gave it (WILLTOPIC + WILLMSG, or their updates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WillData {
    pub topic: TopicName,
    pub qos: QoS,
    pub retain: bool,
    pub message: Bytes,
}

/// The MQTT CONNECT for a gateway client: MQTT 5, keep alive 0 (the gateway supervises the
/// MQTT-SN keep alive and sleep itself, 6.11, 6.14; when the broker imposes a Server Keep
/// Alive the gateway pings the session), Receive Maximum `WINDOW`, Maximum Packet Size
/// `max_datagram - 2` (an MQTT PUBLISH is at most 2 bytes shorter than the MQTT-SN PUBLISH
/// it becomes: the proof is in `tests::publish_sizes`).
///
/// `resume`: the second half of a will update, which must find the session whatever
/// CleanSession says; the expiry still follows CleanSession.
pub fn mqtt_connect(
    client: &ClientId,
    clean_session: bool,
    resume: bool,
    will: Option<&WillData>,
    max_datagram: usize,
) -> Connect {
    let expiry = if clean_session {
        WILL_SWAP_EXPIRY_SECS
    } else {
        u32::MAX
    };
    Connect {
        protocol: ProtocolVersion::V5,
        clean_start: clean_session && !resume,
        keep_alive: 0,
        client_id: client.as_mqtt_str().clone(),
        will: will.map(|w| Will {
            topic: w.topic.clone(),
            payload: w.message.clone(),
            qos: w.qos,
            retain: w.retain,
            properties: WillProperties::default(),
        }),
        username: None,
        password: None,
        properties: ConnectProperties {
            session_expiry_interval: Some(expiry),
            receive_maximum: Some(WINDOW),
            maximum_packet_size: Some(
                u32::try_from(max_datagram.saturating_sub(2).max(1)).unwrap_or(u32::MAX),
            ),
            ..ConnectProperties::default()
        },
    }
}

/// How a gateway client's connection ends, as the DISCONNECT its session is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// DISCONNECT without duration from the client (6.12): the will is discarded.
    Normal,
    /// Keep-alive or sleep timeout, retransmissions exhausted, or replaced by a new
    /// connection (6.11, 6.13): the will is published [MQTT-3.1.2-8].
    Lost,
    /// First half of a will update (see `WILL_SWAP_EXPIRY_SECS`): the will is discarded
    /// and the session stays, whatever CleanSession said.
    WillSwap,
}

pub fn mqtt_disconnect(ending: Ending, clean_session: bool) -> Disconnect {
    let reason = match ending {
        Ending::Normal | Ending::WillSwap => ReasonCode::NormalDisconnection,
        Ending::Lost => ReasonCode::DisconnectWithWillMessage,
    };
    let end_now = clean_session && ending != Ending::WillSwap;
    Disconnect {
        reason,
        properties: DisconnectProperties {
            session_expiry_interval: end_now.then_some(0),
            ..DisconnectProperties::default()
        },
    }
}

/// The client id of the gateway's own session, the origin of QoS -1 publishes (6.8). `$` so
/// that it stands apart from ordinary ids; it is never in the client registry, so no client
/// can take it over, and a client that picks the same id only loses No Local for them.
pub const ANONYMOUS_CLIENT_ID: &str = "$ringmq-mqttsn";

/// The CONNECT for the gateway's own session: MQTT 3.1.1 (no Server Keep Alive is imposed
/// on 3.x, so keep alive 0 means none), clean session.
pub fn anonymous_connect() -> Connect {
    Connect {
        protocol: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 0,
        client_id: MqttStr::try_from_str(ANONYMOUS_CLIENT_ID).unwrap_or_default(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// The MQTT-SN return code for an MQTT 5 reason code from the session (CONNACK, PUBACK,
/// PUBREC, SUBACK). The one table: "congestion" for what may pass later, "not supported"
/// for every other refusal. Every variant is listed so that a new code is a compile error.
pub fn return_code(reason: ReasonCode) -> ReturnCode {
    use ReasonCode as R;
    match reason {
        R::Success
        | R::NormalDisconnection
        | R::GrantedQoS0
        | R::GrantedQoS1
        | R::GrantedQoS2
        | R::DisconnectWithWillMessage
        | R::NoMatchingSubscribers
        | R::NoSubscriptionExisted
        | R::ContinueAuthentication
        | R::ReAuthenticate => ReturnCode::Accepted,
        R::ServerUnavailable
        | R::ServerBusy
        | R::QuotaExceeded
        | R::ReceiveMaximumExceeded
        | R::MessageRateTooHigh
        | R::ConnectionRateExceeded => ReturnCode::Congestion,
        R::UnspecifiedError
        | R::MalformedPacket
        | R::ProtocolError
        | R::ImplementationSpecificError
        | R::UnsupportedProtocolVersion
        | R::ClientIdentifierNotValid
        | R::BadUserNameOrPassword
        | R::NotAuthorized
        | R::Banned
        | R::ServerShuttingDown
        | R::BadAuthenticationMethod
        | R::KeepAliveTimeout
        | R::SessionTakenOver
        | R::TopicFilterInvalid
        | R::TopicNameInvalid
        | R::PacketIdentifierInUse
        | R::PacketIdentifierNotFound
        | R::TopicAliasInvalid
        | R::PacketTooLarge
        | R::AdministrativeAction
        | R::PayloadFormatInvalid
        | R::RetainNotSupported
        | R::QoSNotSupported
        | R::UseAnotherServer
        | R::ServerMoved
        | R::SharedSubscriptionsNotSupported
        | R::MaximumConnectTime
        | R::SubscriptionIdentifiersNotSupported
        | R::WildcardSubscriptionsNotSupported => ReturnCode::NotSupported,
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::codec::{PacketId, PublishOut, PublishProperties};
    use crate::mqttsn::codec::{MsgId, SnMessage, SnPublish, SnQoS, TopicId, TopicRef};

    /// An MQTT 5 PUBLISH as the session writes it (no properties) is at most 2 bytes shorter
    /// than the MQTT-SN PUBLISH of the same payload, so a session Maximum Packet Size of
    /// `max - 2` keeps every PUBLISH it writes within `max` once translated.
    #[test]
    fn publish_sizes() {
        let props = PublishProperties::default();
        for topic_len in [1usize, 2, 3, 100] {
            let topic = TopicName::new(Bytes::from(vec![b'a'; topic_len])).expect("topic");
            for payload_len in [0usize, 100, 120, 124, 200, 247, 249, 250, 16_380, 60_000] {
                let payload = Bytes::from(vec![0u8; payload_len]);
                for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                    let mut out = BytesMut::new();
                    let p = PublishOut {
                        dup: false,
                        qos,
                        retain: false,
                        topic: &topic,
                        packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(1)).flatten(),
                        properties: &props,
                        message_expiry_interval: None,
                        topic_alias: None,
                        subscription_identifiers: &[],
                        payload: &payload,
                    };
                    let mqtt = crate::codec::encode_publish(&p, ProtocolVersion::V5, &mut out);
                    let sn = SnMessage::Publish(SnPublish {
                        dup: false,
                        qos: SnQoS::from(qos),
                        retain: false,
                        topic: TopicRef::Normal(TopicId(1)),
                        msg_id: MsgId(1),
                        data: payload.clone(),
                    })
                    .encoded_len();
                    assert!(sn <= mqtt + 2, "topic {topic_len} payload {payload_len}");
                }
            }
        }
    }

    #[test]
    fn ending_a_clean_session_sets_expiry_zero() {
        let d = mqtt_disconnect(Ending::Lost, true);
        assert_eq!(d.reason, ReasonCode::DisconnectWithWillMessage);
        assert_eq!(d.properties.session_expiry_interval, Some(0));
        let d = mqtt_disconnect(Ending::WillSwap, true);
        assert_eq!(d.reason, ReasonCode::NormalDisconnection);
        assert_eq!(d.properties.session_expiry_interval, None);
        assert_eq!(
            mqtt_disconnect(Ending::Normal, false)
                .properties
                .session_expiry_interval,
            None
        );
    }

    #[test]
    fn reason_codes_map_to_return_codes() {
        assert_eq!(return_code(ReasonCode::GrantedQoS1), ReturnCode::Accepted);
        assert_eq!(
            return_code(ReasonCode::QuotaExceeded),
            ReturnCode::Congestion
        );
        assert_eq!(
            return_code(ReasonCode::NotAuthorized),
            ReturnCode::NotSupported
        );
        for &r in ReasonCode::ALL {
            let rc = return_code(r);
            assert_eq!(rc == ReturnCode::Accepted, !r.is_error(), "{r:?}");
        }
    }
}

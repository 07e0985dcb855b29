//! The MQTT-SN 1.2 message model: `SnMessage` and the field types of spec section 5.3
//! (message ids, topic ids, QoS with -1, topic id types, return codes).
//!
//! Must never: touch a socket or the clock.

use bytes::Bytes;

use crate::codec::QoS;

/// A message id (5.3.7): matches an acknowledgement to its message. 0 is what QoS 0 and -1
/// PUBLISH carry; every exchange that is acknowledged uses a non-zero one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MsgId(pub u16);

/// A topic id (5.3.11): a normal id assigned by REGISTER/SUBACK, or a pre-defined one. 0x0000
/// and 0xFFFF are reserved (7.3 of the spec uses 0x0000 for "no id").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TopicId(pub u16);

impl TopicId {
    /// "No topic id": REGISTER from a client, SUBACK for a wildcard or short-name filter.
    pub const NONE: TopicId = TopicId(0);
}

/// QoS bits of the Flags octet (5.3.4): 0, 1, 2, or -1 (`0b11`, "no connection", 6.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnQoS {
    Zero,
    One,
    Two,
    /// QoS -1: PUBLISH without a connection, to a pre-defined id or a short name (6.8).
    MinusOne,
}

impl SnQoS {
    pub(super) const fn bits(self) -> u8 {
        match self {
            SnQoS::Zero => 0b00,
            SnQoS::One => 0b01,
            SnQoS::Two => 0b10,
            SnQoS::MinusOne => 0b11,
        }
    }

    pub(super) const fn from_bits(bits: u8) -> SnQoS {
        match bits & 0b11 {
            0b00 => SnQoS::Zero,
            0b01 => SnQoS::One,
            0b10 => SnQoS::Two,
            _ => SnQoS::MinusOne,
        }
    }

    /// The MQTT QoS; `None` for -1.
    pub const fn mqtt(self) -> Option<QoS> {
        match self {
            SnQoS::Zero => Some(QoS::AtMostOnce),
            SnQoS::One => Some(QoS::AtLeastOnce),
            SnQoS::Two => Some(QoS::ExactlyOnce),
            SnQoS::MinusOne => None,
        }
    }
}

impl From<QoS> for SnQoS {
    fn from(q: QoS) -> SnQoS {
        match q {
            QoS::AtMostOnce => SnQoS::Zero,
            QoS::AtLeastOnce => SnQoS::One,
            QoS::ExactlyOnce => SnQoS::Two,
        }
    }
}

/// The topic of a PUBLISH (5.4.12): the TopicIdType bits of the Flags octet say how the two
/// TopicId octets are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicRef {
    /// `0b00`: an id registered with REGISTER (or returned in SUBACK).
    Normal(TopicId),
    /// `0b01`: a pre-defined id both sides know in advance (6.7).
    Predefined(TopicId),
    /// `0b10`: a two-character topic name carried in the TopicId field (6.7).
    Short([u8; 2]),
}

impl TopicRef {
    pub(super) const fn id_type(self) -> u8 {
        match self {
            TopicRef::Normal(_) => 0b00,
            TopicRef::Predefined(_) => 0b01,
            TopicRef::Short(_) => 0b10,
        }
    }

    pub(super) const fn field(self) -> [u8; 2] {
        match self {
            TopicRef::Normal(id) | TopicRef::Predefined(id) => id.0.to_be_bytes(),
            TopicRef::Short(s) => s,
        }
    }
}

/// The topic of a SUBSCRIBE or UNSUBSCRIBE (5.4.15, 5.4.17).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SubTopic {
    /// `0b00`: a topic name or filter (may hold wildcards), raw bytes.
    Name(Bytes),
    /// `0b01`: a pre-defined topic id.
    Predefined(TopicId),
    /// `0b10`: a two-character short topic name.
    Short([u8; 2]),
}

impl SubTopic {
    pub(super) const fn id_type(&self) -> u8 {
        match self {
            SubTopic::Name(_) => 0b00,
            SubTopic::Predefined(_) => 0b01,
            SubTopic::Short(_) => 0b10,
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            SubTopic::Name(n) => n.len(),
            SubTopic::Predefined(_) | SubTopic::Short(_) => 2,
        }
    }
}

/// Return codes (5.3.10, table 5). 0x04..0xFF are reserved and refused by `decode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReturnCode {
    Accepted = 0x00,
    Congestion = 0x01,
    InvalidTopicId = 0x02,
    NotSupported = 0x03,
}

impl ReturnCode {
    pub(super) const fn from_byte(b: u8) -> Option<ReturnCode> {
        match b {
            0x00 => Some(ReturnCode::Accepted),
            0x01 => Some(ReturnCode::Congestion),
            0x02 => Some(ReturnCode::InvalidTopicId),
            0x03 => Some(ReturnCode::NotSupported),
            _ => None,
        }
    }
}

/// CONNECT (5.4.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnConnect {
    /// The client asks to be prompted for its will topic and message (6.2).
    pub will: bool,
    pub clean_session: bool,
    /// 0x01 for MQTT-SN 1.2 (5.3.8); kept so that the gateway can refuse others with CONNACK.
    pub protocol_id: u8,
    /// Keep alive in seconds (5.3.3, 6.11).
    pub duration: u16,
    /// Raw bytes; 1..23 characters per 5.3.1, checked by the gateway.
    pub client_id: Bytes,
}

/// WILLTOPIC and WILLTOPICUPD body (5.4.7, 5.4.22); the message without Flags and topic
/// (exactly 2 octets) is the "empty" form, `None` in `SnMessage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WillTopic {
    pub qos: QoS,
    pub retain: bool,
    pub topic: Bytes,
}

/// PUBLISH (5.4.12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnPublish {
    pub dup: bool,
    pub qos: SnQoS,
    pub retain: bool,
    pub topic: TopicRef,
    /// 0 for QoS 0 and -1 (5.4.12).
    pub msg_id: MsgId,
    pub data: Bytes,
}

/// SUBSCRIBE (5.4.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnSubscribe {
    pub dup: bool,
    /// Requested QoS; -1 is not a subscription QoS and is refused by `decode`.
    pub qos: QoS,
    pub msg_id: MsgId,
    pub topic: SubTopic,
}

/// Every MQTT-SN 1.2 message (table 3). Field order follows the spec's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnMessage {
    /// 5.4.1: broadcast by a gateway every `duration` seconds.
    Advertise {
        gw_id: u8,
        duration: u16,
    },
    /// 5.4.2.
    SearchGw {
        radius: u8,
    },
    /// 5.4.3: `gw_addr` is empty when a gateway sends it, the gateway's address when a
    /// client answers for one it knows.
    GwInfo {
        gw_id: u8,
        gw_addr: Bytes,
    },
    /// 5.4.4.
    Connect(SnConnect),
    /// 5.4.5.
    ConnAck {
        code: ReturnCode,
    },
    /// 5.4.6.
    WillTopicReq,
    /// 5.4.7; `None`: the empty WILLTOPIC.
    WillTopic(Option<WillTopic>),
    /// 5.4.8.
    WillMsgReq,
    /// 5.4.9.
    WillMsg {
        msg: Bytes,
    },
    /// 5.4.10: `topic_id` is 0 from a client.
    Register {
        topic_id: TopicId,
        msg_id: MsgId,
        topic_name: Bytes,
    },
    /// 5.4.11.
    RegAck {
        topic_id: TopicId,
        msg_id: MsgId,
        code: ReturnCode,
    },
    /// 5.4.12.
    Publish(SnPublish),
    /// 5.4.13.
    PubAck {
        topic_id: TopicId,
        msg_id: MsgId,
        code: ReturnCode,
    },
    /// 5.4.14.
    PubComp {
        msg_id: MsgId,
    },
    PubRec {
        msg_id: MsgId,
    },
    PubRel {
        msg_id: MsgId,
    },
    /// 5.4.15.
    Subscribe(SnSubscribe),
    /// 5.4.16: `qos` is the granted QoS.
    SubAck {
        qos: QoS,
        topic_id: TopicId,
        msg_id: MsgId,
        code: ReturnCode,
    },
    /// 5.4.17.
    Unsubscribe {
        msg_id: MsgId,
        topic: SubTopic,
    },
    /// 5.4.18.
    UnsubAck {
        msg_id: MsgId,
    },
    /// 5.4.19: a sleeping client names itself to wake up (6.14).
    PingReq {
        client_id: Option<Bytes>,
    },
    /// 5.4.20.
    PingResp,
    /// 5.4.21: with a duration the client goes to sleep (6.14).
    Disconnect {
        duration: Option<u16>,
    },
    /// 5.4.22; `None`: the empty form, which deletes the will.
    WillTopicUpd(Option<WillTopic>),
    /// 5.4.24.
    WillTopicResp {
        code: ReturnCode,
    },
    /// 5.4.23.
    WillMsgUpd {
        msg: Bytes,
    },
    /// 5.4.25.
    WillMsgResp {
        code: ReturnCode,
    },
}

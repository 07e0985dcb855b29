//! MQTT-SN 1.2 codec: one datagram <-> one `SnMessage`.
//!
//! Owns: the wire format of every MQTT-SN v1.2 message (spec section 5): the 1-octet and
//! 3-octet (`0x01` + u16) length forms (5.2.1), the message types (5.2.2, table 3), the Flags
//! octet (5.3.4), return codes (5.3.10) and the body of each message (5.4.1..5.4.25).
//! `decode` is total: any byte sequence is one message or a typed `SnDecodeError`; nothing is
//! allocated from a length read off the wire, and fields are zero-copy `Bytes` views of the
//! datagram. `encode` refuses (rather than truncates) a message longer than 65,535 octets.
//!
//! What it leaves to the gateway: the meaning of strings. Client ids, topic names and will
//! topics stay raw bytes here, because the answer to a bad one depends on where it appears
//! (REGACK "not supported" for a REGISTER, CONNACK for a CONNECT, ...) and needs the rest of
//! the message (the msg id) that a decode error would lose.
//!
//! Not supported: the forwarder encapsulation (5.5, type 0xFE) is a typed error; RingMQ
//! talks to clients directly over UDP.
//!
//! Must never: touch a socket or the clock, panic on input, or use `unsafe`.
#![forbid(unsafe_code)]

mod model;
#[cfg(test)]
mod tests;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::QoS;

pub use model::*;

/// The largest message the 3-octet length form can describe (5.2.1).
pub const MAX_MESSAGE_LEN: usize = u16::MAX as usize;

/// The largest message the 1-octet length form can describe (5.2.1).
const MAX_SHORT_LEN: usize = 255;

/// First length octet announcing the 3-octet form (5.2.1).
const LONG_LENGTH_MARKER: u8 = 0x01;

/// Message types (5.2.2, table 3).
mod ty {
    pub const ADVERTISE: u8 = 0x00;
    pub const SEARCHGW: u8 = 0x01;
    pub const GWINFO: u8 = 0x02;
    pub const CONNECT: u8 = 0x04;
    pub const CONNACK: u8 = 0x05;
    pub const WILLTOPICREQ: u8 = 0x06;
    pub const WILLTOPIC: u8 = 0x07;
    pub const WILLMSGREQ: u8 = 0x08;
    pub const WILLMSG: u8 = 0x09;
    pub const REGISTER: u8 = 0x0A;
    pub const REGACK: u8 = 0x0B;
    pub const PUBLISH: u8 = 0x0C;
    pub const PUBACK: u8 = 0x0D;
    pub const PUBCOMP: u8 = 0x0E;
    pub const PUBREC: u8 = 0x0F;
    pub const PUBREL: u8 = 0x10;
    pub const SUBSCRIBE: u8 = 0x12;
    pub const SUBACK: u8 = 0x13;
    pub const UNSUBSCRIBE: u8 = 0x14;
    pub const UNSUBACK: u8 = 0x15;
    pub const PINGREQ: u8 = 0x16;
    pub const PINGRESP: u8 = 0x17;
    pub const DISCONNECT: u8 = 0x18;
    pub const WILLTOPICUPD: u8 = 0x1A;
    pub const WILLTOPICRESP: u8 = 0x1B;
    pub const WILLMSGUPD: u8 = 0x1C;
    pub const WILLMSGRESP: u8 = 0x1D;
    /// Forwarder encapsulation (5.5).
    pub const ENCAPSULATED: u8 = 0xFE;
}

/// Flags octet bits (5.3.4, table 4).
mod flag {
    pub const DUP: u8 = 0x80;
    pub const QOS_SHIFT: u8 = 5;
    pub const RETAIN: u8 = 0x10;
    pub const WILL: u8 = 0x08;
    pub const CLEAN_SESSION: u8 = 0x04;
    pub const TOPIC_ID_TYPE: u8 = 0x03;
}

/// Why a datagram is not an MQTT-SN message. `Copy`, so that the gateway can count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnDecodeError {
    /// Fewer octets than a header (length and type) needs.
    TooShort,
    /// The Length field is 0, or the 3-octet form says less than its own header (5.2.1).
    InvalidLength,
    /// The Length field and the datagram disagree: a datagram is exactly one message.
    LengthMismatch { declared: usize, received: usize },
    /// A reserved message type (table 3).
    UnknownType(u8),
    /// Forwarder encapsulation (5.5), not supported.
    Encapsulated,
    /// The body ends before a field of this message type.
    Truncated { msg_type: u8 },
    /// Octets left after the last field of this message type.
    TrailingBytes { msg_type: u8 },
    /// TopicIdType `0b11` (reserved, 5.3.4).
    ReservedTopicIdType,
    /// QoS -1 where only 0..2 are meaningful (SUBSCRIBE, SUBACK, WILLTOPIC).
    InvalidQoS,
    /// A reserved return code (0x04..0xFF, 5.3.10).
    ReservedReturnCode(u8),
}

impl std::fmt::Display for SnDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnDecodeError::TooShort => f.write_str("datagram shorter than a header"),
            SnDecodeError::InvalidLength => f.write_str("invalid length field"),
            SnDecodeError::LengthMismatch { declared, received } => {
                write!(f, "length field says {declared}, datagram has {received}")
            }
            SnDecodeError::UnknownType(t) => write!(f, "reserved message type {t:#04x}"),
            SnDecodeError::Encapsulated => f.write_str("forwarder encapsulation not supported"),
            SnDecodeError::Truncated { msg_type } => write!(f, "type {msg_type:#04x} truncated"),
            SnDecodeError::TrailingBytes { msg_type } => {
                write!(f, "type {msg_type:#04x} has trailing bytes")
            }
            SnDecodeError::ReservedTopicIdType => f.write_str("reserved topic id type"),
            SnDecodeError::InvalidQoS => f.write_str("QoS -1 where it is not allowed"),
            SnDecodeError::ReservedReturnCode(c) => write!(f, "reserved return code {c:#04x}"),
        }
    }
}

impl std::error::Error for SnDecodeError {}

/// Why a message cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnEncodeError {
    /// Longer than `MAX_MESSAGE_LEN` octets with its header.
    TooLong(usize),
}

/// A cursor over one message body; every read is bounded by what is left.
struct Body {
    buf: Bytes,
    msg_type: u8,
}

impl Body {
    fn truncated(&self) -> SnDecodeError {
        SnDecodeError::Truncated {
            msg_type: self.msg_type,
        }
    }

    fn u8(&mut self) -> Result<u8, SnDecodeError> {
        let b = *self.buf.first().ok_or(self.truncated())?;
        self.buf = self.buf.slice(1..);
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, SnDecodeError> {
        let two = self.array2()?;
        Ok(u16::from_be_bytes(two))
    }

    fn array2(&mut self) -> Result<[u8; 2], SnDecodeError> {
        match *self.buf.as_ref() {
            [a, b, ..] => {
                self.buf = self.buf.slice(2..);
                Ok([a, b])
            }
            _ => Err(self.truncated()),
        }
    }

    fn code(&mut self) -> Result<ReturnCode, SnDecodeError> {
        let b = self.u8()?;
        ReturnCode::from_byte(b).ok_or(SnDecodeError::ReservedReturnCode(b))
    }

    /// Everything left (a variable-length last field).
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The message ends here.
    fn finish(self) -> Result<(), SnDecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(SnDecodeError::TrailingBytes {
                msg_type: self.msg_type,
            })
        }
    }
}

/// Splits the header (5.2): returns the message type and the body. The Length field must
/// equal the datagram's length.
fn split_header(datagram: &Bytes) -> Result<(u8, Bytes), SnDecodeError> {
    let (declared, header) = match *datagram.as_ref() {
        [LONG_LENGTH_MARKER, hi, lo, ..] => (usize::from(u16::from_be_bytes([hi, lo])), 3),
        [LONG_LENGTH_MARKER, ..] => return Err(SnDecodeError::TooShort),
        [0, ..] => return Err(SnDecodeError::InvalidLength),
        [len, ..] => (usize::from(len), 1),
        [] => return Err(SnDecodeError::TooShort),
    };
    if declared < header + 1 {
        return Err(SnDecodeError::InvalidLength);
    }
    if declared != datagram.len() {
        return Err(SnDecodeError::LengthMismatch {
            declared,
            received: datagram.len(),
        });
    }
    let msg_type = datagram[header];
    Ok((msg_type, datagram.slice(header + 1..)))
}

/// Decodes one datagram. Total: every input gives a message or an error.
pub fn decode(datagram: &Bytes) -> Result<SnMessage, SnDecodeError> {
    let (msg_type, buf) = split_header(datagram)?;
    let mut b = Body { buf, msg_type };
    let msg = decode_body(msg_type, &mut b)?;
    b.finish()?;
    Ok(msg)
}

/// The body of a message of type `msg_type` (5.4), up to its last field.
fn decode_body(msg_type: u8, b: &mut Body) -> Result<SnMessage, SnDecodeError> {
    Ok(match msg_type {
        ty::ADVERTISE => SnMessage::Advertise {
            gw_id: b.u8()?,
            duration: b.u16()?,
        },
        ty::SEARCHGW => SnMessage::SearchGw { radius: b.u8()? },
        ty::GWINFO => {
            let gw_id = b.u8()?;
            SnMessage::GwInfo {
                gw_id,
                gw_addr: b.rest(),
            }
        }
        ty::CONNECT => decode_connect(b)?,
        ty::CONNACK => SnMessage::ConnAck { code: b.code()? },
        ty::WILLTOPICREQ => SnMessage::WillTopicReq,
        ty::WILLTOPIC => SnMessage::WillTopic(decode_will_topic(b)?),
        ty::WILLMSGREQ => SnMessage::WillMsgReq,
        ty::WILLMSG => SnMessage::WillMsg { msg: b.rest() },
        ty::REGISTER => SnMessage::Register {
            topic_id: TopicId(b.u16()?),
            msg_id: MsgId(b.u16()?),
            topic_name: b.rest(),
        },
        ty::REGACK => SnMessage::RegAck {
            topic_id: TopicId(b.u16()?),
            msg_id: MsgId(b.u16()?),
            code: b.code()?,
        },
        ty::PUBLISH => decode_publish(b)?,
        ty::PUBACK => SnMessage::PubAck {
            topic_id: TopicId(b.u16()?),
            msg_id: MsgId(b.u16()?),
            code: b.code()?,
        },
        ty::PUBCOMP => SnMessage::PubComp {
            msg_id: MsgId(b.u16()?),
        },
        ty::PUBREC => SnMessage::PubRec {
            msg_id: MsgId(b.u16()?),
        },
        ty::PUBREL => SnMessage::PubRel {
            msg_id: MsgId(b.u16()?),
        },
        ty::SUBSCRIBE => decode_subscribe(b)?,
        ty::SUBACK => decode_suback(b)?,
        ty::UNSUBSCRIBE => {
            let flags = b.u8()?;
            let msg_id = MsgId(b.u16()?);
            let topic = decode_sub_topic(flags, b)?;
            SnMessage::Unsubscribe { msg_id, topic }
        }
        ty::UNSUBACK => SnMessage::UnsubAck {
            msg_id: MsgId(b.u16()?),
        },
        ty::PINGREQ => {
            let id = b.rest();
            SnMessage::PingReq {
                client_id: (!id.is_empty()).then_some(id),
            }
        }
        ty::PINGRESP => SnMessage::PingResp,
        ty::DISCONNECT => {
            let duration = if b.is_empty() { None } else { Some(b.u16()?) };
            SnMessage::Disconnect { duration }
        }
        ty::WILLTOPICUPD => SnMessage::WillTopicUpd(decode_will_topic(b)?),
        ty::WILLTOPICRESP => SnMessage::WillTopicResp { code: b.code()? },
        ty::WILLMSGUPD => SnMessage::WillMsgUpd { msg: b.rest() },
        ty::WILLMSGRESP => SnMessage::WillMsgResp { code: b.code()? },
        ty::ENCAPSULATED => return Err(SnDecodeError::Encapsulated),
        other => return Err(SnDecodeError::UnknownType(other)),
    })
}

fn decode_connect(b: &mut Body) -> Result<SnMessage, SnDecodeError> {
    let flags = b.u8()?;
    let protocol_id = b.u8()?;
    let duration = b.u16()?;
    Ok(SnMessage::Connect(SnConnect {
        will: flags & flag::WILL != 0,
        clean_session: flags & flag::CLEAN_SESSION != 0,
        protocol_id,
        duration,
        client_id: b.rest(),
    }))
}

/// WILLTOPIC / WILLTOPICUPD: empty (no Flags, no topic) or Flags + topic (5.4.7).
fn decode_will_topic(b: &mut Body) -> Result<Option<WillTopic>, SnDecodeError> {
    if b.is_empty() {
        return Ok(None);
    }
    let flags = b.u8()?;
    let qos = qos_0_to_2(flags)?;
    Ok(Some(WillTopic {
        qos,
        retain: flags & flag::RETAIN != 0,
        topic: b.rest(),
    }))
}

fn qos_0_to_2(flags: u8) -> Result<QoS, SnDecodeError> {
    SnQoS::from_bits(flags >> flag::QOS_SHIFT)
        .mqtt()
        .ok_or(SnDecodeError::InvalidQoS)
}

fn decode_publish(b: &mut Body) -> Result<SnMessage, SnDecodeError> {
    let flags = b.u8()?;
    let field = b.array2()?;
    let topic = match flags & flag::TOPIC_ID_TYPE {
        0b00 => TopicRef::Normal(TopicId(u16::from_be_bytes(field))),
        0b01 => TopicRef::Predefined(TopicId(u16::from_be_bytes(field))),
        0b10 => TopicRef::Short(field),
        _ => return Err(SnDecodeError::ReservedTopicIdType),
    };
    let msg_id = MsgId(b.u16()?);
    Ok(SnMessage::Publish(SnPublish {
        dup: flags & flag::DUP != 0,
        qos: SnQoS::from_bits(flags >> flag::QOS_SHIFT),
        retain: flags & flag::RETAIN != 0,
        topic,
        msg_id,
        data: b.rest(),
    }))
}

fn decode_subscribe(b: &mut Body) -> Result<SnMessage, SnDecodeError> {
    let flags = b.u8()?;
    let msg_id = MsgId(b.u16()?);
    let topic = decode_sub_topic(flags, b)?;
    Ok(SnMessage::Subscribe(SnSubscribe {
        dup: flags & flag::DUP != 0,
        qos: qos_0_to_2(flags)?,
        msg_id,
        topic,
    }))
}

/// The topic of SUBSCRIBE/UNSUBSCRIBE: a name takes the rest of the message; a pre-defined
/// id or a short name is exactly two octets.
fn decode_sub_topic(flags: u8, b: &mut Body) -> Result<SubTopic, SnDecodeError> {
    Ok(match flags & flag::TOPIC_ID_TYPE {
        0b00 => SubTopic::Name(b.rest()),
        0b01 => SubTopic::Predefined(TopicId(b.u16()?)),
        0b10 => SubTopic::Short(b.array2()?),
        _ => return Err(SnDecodeError::ReservedTopicIdType),
    })
}

fn decode_suback(b: &mut Body) -> Result<SnMessage, SnDecodeError> {
    let flags = b.u8()?;
    Ok(SnMessage::SubAck {
        qos: qos_0_to_2(flags)?,
        topic_id: TopicId(b.u16()?),
        msg_id: MsgId(b.u16()?),
        code: b.code()?,
    })
}

impl SnMessage {
    /// The message type octet (table 3).
    pub fn msg_type(&self) -> u8 {
        match self {
            SnMessage::Advertise { .. } => ty::ADVERTISE,
            SnMessage::SearchGw { .. } => ty::SEARCHGW,
            SnMessage::GwInfo { .. } => ty::GWINFO,
            SnMessage::Connect(_) => ty::CONNECT,
            SnMessage::ConnAck { .. } => ty::CONNACK,
            SnMessage::WillTopicReq => ty::WILLTOPICREQ,
            SnMessage::WillTopic(_) => ty::WILLTOPIC,
            SnMessage::WillMsgReq => ty::WILLMSGREQ,
            SnMessage::WillMsg { .. } => ty::WILLMSG,
            SnMessage::Register { .. } => ty::REGISTER,
            SnMessage::RegAck { .. } => ty::REGACK,
            SnMessage::Publish(_) => ty::PUBLISH,
            SnMessage::PubAck { .. } => ty::PUBACK,
            SnMessage::PubComp { .. } => ty::PUBCOMP,
            SnMessage::PubRec { .. } => ty::PUBREC,
            SnMessage::PubRel { .. } => ty::PUBREL,
            SnMessage::Subscribe(_) => ty::SUBSCRIBE,
            SnMessage::SubAck { .. } => ty::SUBACK,
            SnMessage::Unsubscribe { .. } => ty::UNSUBSCRIBE,
            SnMessage::UnsubAck { .. } => ty::UNSUBACK,
            SnMessage::PingReq { .. } => ty::PINGREQ,
            SnMessage::PingResp => ty::PINGRESP,
            SnMessage::Disconnect { .. } => ty::DISCONNECT,
            SnMessage::WillTopicUpd(_) => ty::WILLTOPICUPD,
            SnMessage::WillTopicResp { .. } => ty::WILLTOPICRESP,
            SnMessage::WillMsgUpd { .. } => ty::WILLMSGUPD,
            SnMessage::WillMsgResp { .. } => ty::WILLMSGRESP,
        }
    }

    /// Octets after the MsgType octet.
    fn body_len(&self) -> usize {
        let will_topic = |w: &Option<WillTopic>| w.as_ref().map_or(0, |w| 1 + w.topic.len());
        match self {
            SnMessage::Advertise { .. } => 3,
            SnMessage::SearchGw { .. } => 1,
            SnMessage::GwInfo { gw_addr, .. } => 1 + gw_addr.len(),
            SnMessage::Connect(c) => 4 + c.client_id.len(),
            SnMessage::ConnAck { .. }
            | SnMessage::WillTopicResp { .. }
            | SnMessage::WillMsgResp { .. } => 1,
            SnMessage::WillTopicReq | SnMessage::WillMsgReq | SnMessage::PingResp => 0,
            SnMessage::WillTopic(w) | SnMessage::WillTopicUpd(w) => will_topic(w),
            SnMessage::WillMsg { msg } | SnMessage::WillMsgUpd { msg } => msg.len(),
            SnMessage::Register { topic_name, .. } => 4 + topic_name.len(),
            SnMessage::RegAck { .. } | SnMessage::PubAck { .. } => 5,
            SnMessage::Publish(p) => 5 + p.data.len(),
            SnMessage::PubComp { .. }
            | SnMessage::PubRec { .. }
            | SnMessage::PubRel { .. }
            | SnMessage::UnsubAck { .. } => 2,
            SnMessage::Subscribe(s) => 3 + s.topic.len(),
            SnMessage::SubAck { .. } => 6,
            SnMessage::Unsubscribe { topic, .. } => 3 + topic.len(),
            SnMessage::PingReq { client_id } => client_id.as_ref().map_or(0, Bytes::len),
            SnMessage::Disconnect { duration } => duration.map_or(0, |_| 2),
        }
    }

    /// Octets `encode` writes: header (1 or 3 length octets, the type) and body.
    pub fn encoded_len(&self) -> usize {
        let short = 2 + self.body_len();
        if short <= MAX_SHORT_LEN {
            short
        } else {
            short + 2
        }
    }
}

/// Appends the encoded message to `dst` and returns its length; on error nothing is written.
pub fn encode(msg: &SnMessage, dst: &mut BytesMut) -> Result<usize, SnEncodeError> {
    let len = msg.encoded_len();
    if len > MAX_MESSAGE_LEN {
        return Err(SnEncodeError::TooLong(len));
    }
    dst.reserve(len);
    if len <= MAX_SHORT_LEN {
        dst.put_u8(len as u8); // <= 255, checked above
    } else {
        dst.put_u8(LONG_LENGTH_MARKER);
        dst.put_u16(len as u16); // <= 65535, checked above
    }
    dst.put_u8(msg.msg_type());
    encode_body(msg, dst);
    Ok(len)
}

/// Encodes into a new buffer (for one datagram).
pub fn encode_to_bytes(msg: &SnMessage) -> Result<Bytes, SnEncodeError> {
    let mut dst = BytesMut::with_capacity(msg.encoded_len());
    encode(msg, &mut dst)?;
    Ok(dst.freeze())
}

fn qos_flags(q: SnQoS) -> u8 {
    q.bits() << flag::QOS_SHIFT
}

fn bit(set: bool, mask: u8) -> u8 {
    if set { mask } else { 0 }
}

fn encode_body(msg: &SnMessage, dst: &mut BytesMut) {
    match msg {
        SnMessage::Advertise { gw_id, duration } => {
            dst.put_u8(*gw_id);
            dst.put_u16(*duration);
        }
        SnMessage::SearchGw { radius } => dst.put_u8(*radius),
        SnMessage::GwInfo { gw_id, gw_addr } => {
            dst.put_u8(*gw_id);
            dst.put_slice(gw_addr);
        }
        SnMessage::Connect(c) => put_connect(c, dst),
        SnMessage::ConnAck { code }
        | SnMessage::WillTopicResp { code }
        | SnMessage::WillMsgResp { code } => dst.put_u8(*code as u8),
        SnMessage::WillTopicReq | SnMessage::WillMsgReq | SnMessage::PingResp => {}
        SnMessage::WillTopic(w) | SnMessage::WillTopicUpd(w) => {
            if let Some(w) = w {
                dst.put_u8(qos_flags(w.qos.into()) | bit(w.retain, flag::RETAIN));
                dst.put_slice(&w.topic);
            }
        }
        SnMessage::WillMsg { msg } | SnMessage::WillMsgUpd { msg } => dst.put_slice(msg),
        SnMessage::Register {
            topic_id,
            msg_id,
            topic_name,
        } => {
            dst.put_u16(topic_id.0);
            dst.put_u16(msg_id.0);
            dst.put_slice(topic_name);
        }
        SnMessage::RegAck {
            topic_id,
            msg_id,
            code,
        }
        | SnMessage::PubAck {
            topic_id,
            msg_id,
            code,
        } => put_ack(*topic_id, *msg_id, *code, dst),
        SnMessage::Publish(p) => put_publish(p, dst),
        SnMessage::PubComp { msg_id }
        | SnMessage::PubRec { msg_id }
        | SnMessage::PubRel { msg_id }
        | SnMessage::UnsubAck { msg_id } => dst.put_u16(msg_id.0),
        SnMessage::Subscribe(s) => {
            dst.put_u8(bit(s.dup, flag::DUP) | qos_flags(s.qos.into()) | s.topic.id_type());
            dst.put_u16(s.msg_id.0);
            put_sub_topic(&s.topic, dst);
        }
        SnMessage::SubAck {
            qos,
            topic_id,
            msg_id,
            code,
        } => {
            dst.put_u8(qos_flags((*qos).into()));
            put_ack(*topic_id, *msg_id, *code, dst);
        }
        SnMessage::Unsubscribe { msg_id, topic } => {
            dst.put_u8(topic.id_type());
            dst.put_u16(msg_id.0);
            put_sub_topic(topic, dst);
        }
        SnMessage::PingReq { client_id } => dst.put_slice(client_id.as_deref().unwrap_or(&[])),
        SnMessage::Disconnect { duration } => {
            if let Some(d) = duration {
                dst.put_u16(*d);
            }
        }
    }
}

fn put_connect(c: &SnConnect, dst: &mut BytesMut) {
    dst.put_u8(bit(c.will, flag::WILL) | bit(c.clean_session, flag::CLEAN_SESSION));
    dst.put_u8(c.protocol_id);
    dst.put_u16(c.duration);
    dst.put_slice(&c.client_id);
}

/// TopicId, MsgId, ReturnCode: the tail of REGACK, PUBACK and SUBACK.
fn put_ack(topic_id: TopicId, msg_id: MsgId, code: ReturnCode, dst: &mut BytesMut) {
    dst.put_u16(topic_id.0);
    dst.put_u16(msg_id.0);
    dst.put_u8(code as u8);
}

fn put_publish(p: &SnPublish, dst: &mut BytesMut) {
    let flags =
        bit(p.dup, flag::DUP) | qos_flags(p.qos) | bit(p.retain, flag::RETAIN) | p.topic.id_type();
    dst.put_u8(flags);
    dst.put_slice(&p.topic.field());
    dst.put_u16(p.msg_id.0);
    dst.put_slice(&p.data);
}

fn put_sub_topic(topic: &SubTopic, dst: &mut BytesMut) {
    match topic {
        SubTopic::Name(n) => dst.put_slice(n),
        SubTopic::Predefined(id) => dst.put_u16(id.0),
        SubTopic::Short(s) => dst.put_slice(s),
    }
}

//! The generator's own MQTT 3.1.1 / 5.0 wire code: just the packets a load generator sends and
//! receives, plus a frame splitter over a read buffer. Deliberately independent of the broker's
//! codec so that a bug cannot hide by being symmetric on both sides. Decoding is total: any input
//! gives a frame, "need more bytes" (`Ok(None)`) or a `WireError`, never a panic.
//!
//! Hot path: a `PublishTemplate` is encoded once per publisher; each message copies it and
//! patches only the packet id and the payload header in place.

use crate::payload::{HEADER_LEN, PayloadHeader};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// CONNACK property: Receive Maximum (MQTT 5.0 3.2.2.3.3), caps our QoS 1/2 inflight.
const PROP_RECEIVE_MAXIMUM: u8 = 0x21;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}

impl Protocol {
    fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Remaining length longer than 4 bytes [MQTT-1.5.5].
    BadVarint,
    /// A frame larger than we accept.
    TooLarge,
    /// A packet whose fields run past its remaining length, or with impossible values.
    Malformed,
}

/// One complete packet inside a read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// First byte: packet type in the high nibble, flags in the low one.
    pub header: u8,
    pub body: &'a [u8],
}

impl Frame<'_> {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// Decodes a variable byte integer; `Ok(None)` if `buf` ends inside it.
fn get_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, WireError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(WireError::BadVarint)
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Splits the first complete packet off `buf`; returns it and the bytes it used.
pub fn split_frame(buf: &[u8], max_len: usize) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    let Some(&header) = buf.first() else {
        return Ok(None);
    };
    let Some((len, n)) = get_varint(&buf[1..])? else {
        return Ok(None);
    };
    if len > max_len {
        return Err(WireError::TooLarge);
    }
    let total = 1 + n + len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            header,
            body: &buf[1 + n..total],
        },
        total,
    )))
}

/// Wraps a body built after a placeholder into a packet with its remaining length.
fn finish(out: &mut Vec<u8>, start: usize, header: u8) {
    let body = out.split_off(start);
    out.push(header);
    put_varint(out, body.len());
    out.extend_from_slice(&body);
}

/// Session Expiry Interval (s) of a persistent 5.0 session the generator opens.
pub const PERSISTENT_EXPIRY_S: u32 = 300;

/// CONNECT with no will: clean session / clean start, or (`persistent`) a session the
/// broker keeps (3.1.1 clean session 0; 5.0 clean start 0 with a Session Expiry Interval of
/// `PERSISTENT_EXPIRY_S`); with `credentials`, a user name and password.
pub fn encode_connect(
    out: &mut Vec<u8>,
    proto: Protocol,
    client_id: &str,
    keep_alive: u16,
    persistent: bool,
    credentials: Option<(&str, &str)>,
) {
    let start = out.len();
    put_str(out, b"MQTT");
    out.push(proto.level());
    let clean = if persistent { 0x00 } else { 0x02 }; // clean session [MQTT-3.1.2-6]
    let user_password = if credentials.is_some() { 0xC0 } else { 0x00 };
    out.push(clean | user_password);
    out.extend_from_slice(&keep_alive.to_be_bytes());
    if proto == Protocol::V5 {
        if persistent {
            out.push(5); // properties: Session Expiry Interval
            out.push(0x11);
            out.extend_from_slice(&PERSISTENT_EXPIRY_S.to_be_bytes());
        } else {
            out.push(0); // no properties
        }
    }
    put_str(out, client_id.as_bytes());
    if let Some((user, password)) = credentials {
        put_str(out, user.as_bytes());
        put_str(out, password.as_bytes());
    }
    finish(out, start, CONNECT << 4);
}

/// SUBSCRIBE to one filter at `qos`.
pub fn encode_subscribe(out: &mut Vec<u8>, proto: Protocol, packet_id: u16, filter: &str, qos: u8) {
    encode_subscribe_all(out, proto, packet_id, [filter], qos);
}

/// SUBSCRIBE to every filter of `filters` at `qos`, in one packet.
pub fn encode_subscribe_all<S: AsRef<str>>(
    out: &mut Vec<u8>,
    proto: Protocol,
    packet_id: u16,
    filters: impl IntoIterator<Item = S>,
    qos: u8,
) {
    let start = out.len();
    out.extend_from_slice(&packet_id.to_be_bytes());
    if proto == Protocol::V5 {
        out.push(0);
    }
    for filter in filters {
        put_str(out, filter.as_ref().as_bytes());
        out.push(qos);
    }
    finish(out, start, (SUBSCRIBE << 4) | 0x02); // reserved flags 0010 [MQTT-3.8.1-1]
}

/// A QoS 0 PUBLISH of `payload` to `topic`.
pub fn encode_publish_qos0(out: &mut Vec<u8>, proto: Protocol, topic: &[u8], payload: &[u8]) {
    let start = out.len();
    put_str(out, topic);
    if proto == Protocol::V5 {
        out.push(0);
    }
    out.extend_from_slice(payload);
    finish(out, start, PUBLISH << 4);
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP with success (the short form is valid in both versions).
pub fn encode_ack(out: &mut Vec<u8>, kind: u8, packet_id: u16) {
    let flags = if kind == PUBREL { 0x02 } else { 0 }; // [MQTT-3.6.1-1]
    let id = packet_id.to_be_bytes();
    out.extend_from_slice(&[(kind << 4) | flags, 2, id[0], id[1]]);
}

pub fn encode_pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[PINGREQ << 4, 0]);
}

/// DISCONNECT; in 5.0 an empty body means reason 0x00, normal disconnection.
pub fn encode_disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[DISCONNECT << 4, 0]);
}

/// What CONNACK tells the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// 3.1.1 return code or 5.0 reason code; 0 is success in both.
    pub code: u8,
    /// Server's Receive Maximum (5.0); 65535 when absent or 3.1.1.
    pub receive_maximum: u16,
}

pub fn parse_connack(body: &[u8], proto: Protocol) -> Result<ConnAck, WireError> {
    let [_flags, code, rest @ ..] = body else {
        return Err(WireError::Malformed);
    };
    let mut ack = ConnAck {
        code: *code,
        receive_maximum: u16::MAX,
    };
    if proto == Protocol::V5 && !rest.is_empty() {
        let props = property_block(rest)?.0;
        walk_properties(props, |id, value| {
            if id == PROP_RECEIVE_MAXIMUM && value.len() == 2 {
                ack.receive_maximum = u16::from_be_bytes([value[0], value[1]]).max(1);
            }
        })?;
    }
    Ok(ack)
}

/// Splits a 5.0 property block (length-prefixed) from what follows it.
fn property_block(buf: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let (len, n) = get_varint(buf)?.ok_or(WireError::Malformed)?;
    let end = n.checked_add(len).ok_or(WireError::Malformed)?;
    if end > buf.len() {
        return Err(WireError::Malformed);
    }
    Ok((&buf[n..end], &buf[end..]))
}

/// Calls `f(id, value bytes)` for every property; the value width comes from the property
/// table of MQTT 5.0 section 2.2.2.2. Unknown identifiers are malformed.
fn walk_properties(mut buf: &[u8], mut f: impl FnMut(u8, &[u8])) -> Result<(), WireError> {
    while let [id, rest @ ..] = buf {
        let len = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0B => get_varint(rest)?.ok_or(WireError::Malformed)?.1,
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => str_len(rest)?,
            0x26 => {
                let k = str_len(rest)?;
                k + str_len(&rest[k..])?
            }
            _ => return Err(WireError::Malformed),
        };
        let value = rest.get(..len).ok_or(WireError::Malformed)?;
        f(*id, value);
        buf = &rest[len..];
    }
    Ok(())
}

/// Total length (prefix included) of a two-byte-length-prefixed field at the start of `buf`.
fn str_len(buf: &[u8]) -> Result<usize, WireError> {
    match buf {
        [a, b, ..] if buf.len() >= 2 + u16::from_be_bytes([*a, *b]) as usize => {
            Ok(2 + u16::from_be_bytes([*a, *b]) as usize)
        }
        _ => Err(WireError::Malformed),
    }
}

/// SUBACK: packet id and the first reason code (messaging scenarios subscribe to one filter).
pub fn parse_suback(body: &[u8], proto: Protocol) -> Result<(u16, u8), WireError> {
    let (id, codes) = parse_suback_codes(body, proto)?;
    let code = *codes.first().ok_or(WireError::Malformed)?;
    Ok((id, code))
}

/// SUBACK: packet id and every reason code, one per filter of the SUBSCRIBE.
pub fn parse_suback_codes(body: &[u8], proto: Protocol) -> Result<(u16, &[u8]), WireError> {
    let [a, b, rest @ ..] = body else {
        return Err(WireError::Malformed);
    };
    let codes = match proto {
        Protocol::V311 => rest,
        Protocol::V5 => property_block(rest)?.1,
    };
    Ok((u16::from_be_bytes([*a, *b]), codes))
}

/// PUBACK/PUBREC/PUBREL/PUBCOMP: packet id and reason code (0 when omitted).
pub fn parse_ack(body: &[u8]) -> Result<(u16, u8), WireError> {
    match body {
        [a, b] => Ok((u16::from_be_bytes([*a, *b]), 0)),
        [a, b, code, ..] => Ok((u16::from_be_bytes([*a, *b]), *code)),
        _ => Err(WireError::Malformed),
    }
}

/// A received PUBLISH, borrowing from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    pub qos: u8,
    pub packet_id: u16,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

pub fn parse_publish<'a>(frame: Frame<'a>, proto: Protocol) -> Result<Publish<'a>, WireError> {
    let qos = (frame.header >> 1) & 0x03;
    if qos == 3 {
        return Err(WireError::Malformed); // [MQTT-3.3.1-4]
    }
    let tlen = str_len(frame.body)?;
    let topic = &frame.body[2..tlen];
    let mut rest = &frame.body[tlen..];
    let mut packet_id = 0;
    if qos > 0 {
        let [a, b, tail @ ..] = rest else {
            return Err(WireError::Malformed);
        };
        packet_id = u16::from_be_bytes([*a, *b]);
        rest = tail;
    }
    if proto == Protocol::V5 {
        rest = property_block(rest)?.1;
    }
    Ok(Publish {
        qos,
        packet_id,
        topic,
        payload: rest,
    })
}

/// A pre-encoded PUBLISH for one publisher; `write` appends a copy with the packet id and the
/// payload header patched in place. The padding after the header is whatever the template
/// holds (a fixed pattern), so the bytes on the wire have the requested payload size.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    bytes: Vec<u8>,
    /// Offset of the packet id, present for QoS 1 and 2.
    packet_id_at: Option<usize>,
    payload_at: usize,
}

impl PublishTemplate {
    /// `payload_len` must be at least `HEADER_LEN` (checked by the CLI).
    pub fn new(proto: Protocol, topic: &str, qos: u8, payload_len: usize) -> PublishTemplate {
        let mut out = Vec::with_capacity(payload_len + topic.len() + 16);
        put_str(&mut out, topic.as_bytes());
        let packet_id_at = (qos > 0).then(|| {
            out.extend_from_slice(&[0, 0]);
            out.len() - 2
        });
        if proto == Protocol::V5 {
            out.push(0);
        }
        let payload_at = out.len();
        out.extend((0..payload_len.max(HEADER_LEN)).map(|i| b'a' + (i % 26) as u8));
        let mut bytes = Vec::with_capacity(out.len() + 5);
        bytes.push((PUBLISH << 4) | (qos << 1));
        put_varint(&mut bytes, out.len());
        let shift = bytes.len();
        bytes.extend_from_slice(&out);
        PublishTemplate {
            bytes,
            packet_id_at: packet_id_at.map(|o| o + shift),
            payload_at: payload_at + shift,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn write(&self, out: &mut Vec<u8>, packet_id: u16, header: &PayloadHeader) {
        let base = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(at) = self.packet_id_at {
            out[base + at..base + at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        let p = base + self.payload_at;
        header.encode(&mut out[p..p + HEADER_LEN]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_311_literal() {
        let mut out = Vec::new();
        encode_connect(&mut out, Protocol::V311, "ab", 60, false, None);
        assert_eq!(
            out,
            [
                0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, b'a', b'b'
            ]
        );
    }

    #[test]
    fn persistent_connects_keep_their_session() {
        let mut out = Vec::new();
        encode_connect(&mut out, Protocol::V311, "ab", 60, true, None);
        assert_eq!(out[9], 0, "3.1.1: clean session 0");
        out.clear();
        encode_connect(&mut out, Protocol::V5, "c", 10, true, None);
        // flags 0, keep alive, then properties: length 5, Session Expiry Interval 300.
        assert_eq!(&out[9..18], &[0, 0, 10, 5, 0x11, 0, 0, 1, 44]);
    }

    #[test]
    fn connect_5_has_empty_properties() {
        let mut out = Vec::new();
        encode_connect(&mut out, Protocol::V5, "c", 10, false, None);
        assert_eq!(
            out,
            [
                0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 10, 0, 0, 1, b'c'
            ]
        );
    }

    #[test]
    fn connect_with_credentials() {
        let mut out = Vec::new();
        encode_connect(&mut out, Protocol::V311, "c", 60, false, Some(("u", "pw")));
        // flags: user name, password, clean session; payload: id, user name, password.
        assert_eq!(out[9], 0xC2);
        assert_eq!(&out[12..], b"\x00\x01c\x00\x01u\x00\x02pw");
    }

    #[test]
    fn subscribe_literals() {
        let mut out = Vec::new();
        encode_subscribe(&mut out, Protocol::V311, 1, "a/#", 1);
        assert_eq!(out, [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'#', 1]);
        out.clear();
        encode_subscribe(&mut out, Protocol::V5, 7, "t", 2);
        assert_eq!(out, [0x82, 7, 0, 7, 0, 0, 1, b't', 2]);
    }

    #[test]
    fn subscribe_many_and_publish_literals() {
        let mut out = Vec::new();
        encode_subscribe_all(&mut out, Protocol::V311, 2, ["a", "b/+"], 0);
        assert_eq!(out, b"\x82\x0c\x00\x02\x00\x01a\x00\x00\x03b/+\x00");
        let (id, codes) = parse_suback_codes(b"\x00\x02\x00\x80", Protocol::V311).unwrap();
        assert_eq!((id, codes), (2, &[0, 0x80][..]));
        out.clear();
        encode_publish_qos0(&mut out, Protocol::V5, b"t/x", b"hi");
        assert_eq!(out, b"\x30\x08\x00\x03t/x\x00hi");
    }

    #[test]
    fn acks_ping_disconnect() {
        let mut out = Vec::new();
        encode_ack(&mut out, PUBACK, 0x0102);
        encode_ack(&mut out, PUBREL, 5);
        encode_pingreq(&mut out);
        encode_disconnect(&mut out);
        assert_eq!(out, [0x40, 2, 1, 2, 0x62, 2, 0, 5, 0xc0, 0, 0xe0, 0]);
        assert_eq!(parse_ack(&[0, 9]), Ok((9, 0)));
        assert_eq!(parse_ack(&[0, 9, 0x10, 0]), Ok((9, 0x10)));
        assert_eq!(parse_ack(&[0]), Err(WireError::Malformed));
    }

    #[test]
    fn splitter_handles_partial_and_bad_input() {
        assert_eq!(split_frame(&[], 100), Ok(None));
        assert_eq!(split_frame(&[0x30], 100), Ok(None));
        assert_eq!(split_frame(&[0x30, 0x80], 100), Ok(None));
        assert_eq!(split_frame(&[0x30, 3, 1, 2], 100), Ok(None));
        let buf = [0xd0, 0, 0x40, 2, 0, 1, 0x30];
        let (f, used) = split_frame(&buf, 100).unwrap().unwrap();
        assert_eq!((f.kind(), f.body, used), (PINGRESP, &[][..], 2));
        let (f, used) = split_frame(&buf[2..], 100).unwrap().unwrap();
        assert_eq!((f.kind(), f.body, used), (PUBACK, &[0, 1][..], 4));
        assert_eq!(
            split_frame(&[0x30, 0xff, 0xff, 0xff, 0xff], 100),
            Err(WireError::BadVarint)
        );
        assert_eq!(
            split_frame(&[0x30, 0x80, 0x01], 100),
            Err(WireError::TooLarge)
        );
        // 321 = 0xC1 0x02
        let mut big = vec![0x30, 0xc1, 0x02];
        big.resize(3 + 321, 0);
        assert_eq!(split_frame(&big, 1000).unwrap().unwrap().1, 324);
    }

    #[test]
    fn connack_311_and_5() {
        assert_eq!(
            parse_connack(&[0, 0], Protocol::V311),
            Ok(ConnAck {
                code: 0,
                receive_maximum: 65535
            })
        );
        assert_eq!(parse_connack(&[0, 5], Protocol::V311).unwrap().code, 5);
        // v5: session present 0, success, props: topic alias max 10, receive max 20,
        // assigned client id "x", user property ("k","v").
        let body = [
            0, 0, 19, 0x22, 0, 10, 0x21, 0, 20, 0x12, 0, 1, b'x', 0x26, 0, 1, b'k', 0, 1, b'v',
            0x24, 1,
        ];
        assert_eq!(
            parse_connack(&body, Protocol::V5),
            Ok(ConnAck {
                code: 0,
                receive_maximum: 20
            })
        );
        assert_eq!(
            parse_connack(&[0, 0, 0], Protocol::V5)
                .unwrap()
                .receive_maximum,
            65535
        );
        assert_eq!(
            parse_connack(&[0, 0, 3, 0x21, 0], Protocol::V5),
            Err(WireError::Malformed)
        );
        assert_eq!(
            parse_connack(&[0, 0, 1, 0x7f], Protocol::V5),
            Err(WireError::Malformed)
        );
        assert_eq!(parse_connack(&[0], Protocol::V5), Err(WireError::Malformed));
    }

    #[test]
    fn suback_311_and_5() {
        assert_eq!(parse_suback(&[0, 1, 1], Protocol::V311), Ok((1, 1)));
        assert_eq!(parse_suback(&[0, 1, 0x80], Protocol::V311), Ok((1, 0x80)));
        assert_eq!(parse_suback(&[0, 2, 0, 0x02], Protocol::V5), Ok((2, 2)));
        assert_eq!(
            parse_suback(&[0, 2, 3, 0x1f, 0, 0, 0x87], Protocol::V5),
            Ok((2, 0x87))
        );
        assert_eq!(
            parse_suback(&[0, 2, 0], Protocol::V5),
            Err(WireError::Malformed)
        );
    }

    #[test]
    fn publish_parse_311_and_5() {
        let f = Frame {
            header: 0x30,
            body: &[0, 1, b't', 9, 8],
        };
        let p = parse_publish(f, Protocol::V311).unwrap();
        assert_eq!(
            (p.qos, p.packet_id, p.topic, p.payload),
            (0, 0, &b"t"[..], &[9, 8][..])
        );
        // QoS 1, v5, packet id 0x0203, properties: message expiry (4 bytes).
        let f = Frame {
            header: 0x32,
            body: &[0, 1, b't', 2, 3, 5, 0x02, 0, 0, 0, 9, 7],
        };
        let p = parse_publish(f, Protocol::V5).unwrap();
        assert_eq!((p.qos, p.packet_id, p.payload), (1, 0x0203, &[7][..]));
        let bad_qos = Frame {
            header: 0x36,
            body: &[0, 1, b't'],
        };
        assert_eq!(
            parse_publish(bad_qos, Protocol::V311),
            Err(WireError::Malformed)
        );
        let short_topic = Frame {
            header: 0x30,
            body: &[0, 5, b't'],
        };
        assert_eq!(
            parse_publish(short_topic, Protocol::V311),
            Err(WireError::Malformed)
        );
    }

    #[test]
    fn template_patches_id_and_header() {
        let hdr = PayloadHeader {
            tag: 0xAABBCCDD,
            publisher: 3,
            seq: 7,
            sent_ns: 11,
        };
        let t = PublishTemplate::new(Protocol::V5, "t/1", 1, 30);
        let mut out = vec![0xee];
        t.write(&mut out, 0x0102, &hdr);
        assert_eq!(out.len(), 1 + t.len());
        // header, remaining length = 2+3 topic + 2 id + 1 props + 30 payload = 38
        assert_eq!(&out[1..11], &[0x32, 38, 0, 3, b't', b'/', b'1', 1, 2, 0]);
        let (f, used) = split_frame(&out[1..], 1000).unwrap().unwrap();
        assert_eq!(used, t.len());
        let p = parse_publish(f, Protocol::V5).unwrap();
        assert_eq!((p.qos, p.packet_id, p.topic), (1, 0x0102, &b"t/1"[..]));
        assert_eq!(p.payload.len(), 30);
        assert_eq!(PayloadHeader::decode(p.payload), Some(hdr));
        // QoS 0 has no packet id.
        let t0 = PublishTemplate::new(Protocol::V311, "t", 0, HEADER_LEN);
        let mut out = Vec::new();
        t0.write(&mut out, 0, &hdr);
        assert_eq!(&out[..5], &[0x30, 3 + HEADER_LEN as u8, 0, 1, b't']);
        assert_eq!(PayloadHeader::decode(&out[5..]), Some(hdr));
    }
}

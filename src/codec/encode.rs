//! Encoding: the byte sink abstraction, field writers and the top-level `encode` /
//! `encoded_len`.
//!
//! Owns: the fixed header and the dispatch to each packet's writer. Every writer is generic
//! over `Sink`, and `encoded_len` runs the same writer into a `Counter`, so the length the
//! broker checks against a client's Maximum Packet Size can never disagree with the bytes.
//!
//! Must never: touch a socket or the clock; write v5-only fields at a 3.x level.

use bytes::BytesMut;

use super::model::{Packet, ProtocolVersion, QoS};
use super::publish::PublishOut;
use super::{ack, connect, disconnect, publish, subscribe};

/// Where encoded bytes go: a real buffer, or a counter that only measures.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);

    fn put_u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn put_u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }
    /// Variable byte integer (spec 1.5.5), minimum length [MQTT-1.5.5-1].
    fn put_vbi(&mut self, mut v: u32) {
        loop {
            let mut b = (v & 0x7F) as u8;
            v >>= 7;
            if v > 0 {
                b |= 0x80;
            }
            self.put_u8(b);
            if v == 0 {
                break;
            }
        }
    }
    /// Binary data or a string: two-byte length, then the bytes (spec 1.5.4, 1.5.6).
    /// Callers hold values of at most 65,535 bytes (`MqttStr` guarantees it; binary fields are
    /// the caller's contract, checked in debug builds).
    fn put_prefixed(&mut self, bytes: &[u8]) {
        debug_assert!(
            bytes.len() <= usize::from(u16::MAX),
            "length-prefixed field too long"
        );
        self.put_u16(bytes.len() as u16);
        self.put(bytes);
    }
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A sink that only counts bytes.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_vbi(&mut self, v: u32) {
        self.0 += vbi_len(v);
    }
    fn put_prefixed(&mut self, bytes: &[u8]) {
        self.0 += 2 + bytes.len();
    }
}

/// Bytes a variable byte integer takes.
pub(crate) const fn vbi_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Bytes `write` puts into a sink.
pub(crate) fn measure(write: impl FnOnce(&mut Counter)) -> usize {
    let mut c = Counter(0);
    write(&mut c);
    c.0
}

/// PUBLISH flags: DUP, QoS, RETAIN (spec 3.3.1).
fn publish_first_byte(dup: bool, qos: QoS, retain: bool) -> u8 {
    let qos = match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    };
    0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain)
}

/// First byte of the fixed header: type and flags (spec 2.1.2, 2.1.3).
fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => publish_first_byte(p.dup, p.qos, p.retain),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        // [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]: flags 0010.
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// Writes the body (everything after the remaining length).
fn write_body<S: Sink>(packet: &Packet, version: ProtocolVersion, s: &mut S) {
    match packet {
        Packet::Connect(c) => connect::write_connect(c, s),
        Packet::ConnAck(c) => connect::write_connack(c, version, s),
        Packet::Publish(p) => publish::write_publish(p, version, s),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            ack::write_ack(a, version, s)
        }
        Packet::Subscribe(p) => subscribe::write_subscribe(p, version, s),
        Packet::SubAck(p) => subscribe::write_suback(p, version, s),
        Packet::Unsubscribe(p) => subscribe::write_unsubscribe(p, version, s),
        Packet::UnsubAck(p) => subscribe::write_unsuback(p, version, s),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => disconnect::write_disconnect(d, version, s),
        Packet::Auth(a) => disconnect::write_auth(a, s),
    }
}

/// Whether `packet` has an encoding at `version`: AUTH exists only in 5.0.
fn representable(packet: &Packet, version: ProtocolVersion) -> bool {
    !matches!(packet, Packet::Auth(_)) || version.is_v5()
}

/// How many packets this thread encoded: the `$SYS/broker/messages/sent` count (every
/// packet type, as mosquitto counts it). A shard encodes only for its own connections, so a
/// per-thread counter is a per-shard one that costs one addition per packet and no
/// argument through every session call; a packet encoded and then discarded (one that
/// turned out larger than the client's Maximum Packet Size) is taken back with
/// `sent::discard`.
pub mod sent {
    use std::cell::Cell;

    thread_local! {
        static ENCODED: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn count(n: u64) {
        ENCODED.with(|c| c.set(c.get().wrapping_add(n)));
    }

    /// Packets encoded by this thread so far (wrapping), less those discarded.
    pub fn packets() -> u64 {
        ENCODED.with(Cell::get)
    }

    /// One encoded packet was truncated away unsent.
    pub fn discard() {
        ENCODED.with(|c| c.set(c.get().wrapping_sub(1)));
    }
}

/// Appends the encoding of `packet` for protocol level `version` to `dst`.
///
/// A CONNECT is written at its own `protocol` level (`version` is ignored for it). At a 3.x
/// level v5-only fields (properties, reason codes beyond the 3.x return codes) are not
/// written; CONNACK and SUBACK codes map through `ReasonCode::v3_connack_return_code` and
/// `v3_suback_return_code`. AUTH at 3.x has no encoding: nothing is written and
/// `encoded_len` is 0. The caller keeps packets within the protocol's size (remaining length
/// at most 268,435,455, every length-prefixed field at most 65,535 bytes).
pub fn encode(packet: &Packet, version: ProtocolVersion, dst: &mut BytesMut) {
    if !representable(packet, version) {
        return;
    }
    sent::count(1);
    let body = measure(|c| write_body(packet, version, c));
    debug_assert!(
        body <= super::reader::VBI_MAX as usize,
        "packet too large to encode"
    );
    dst.reserve(1 + vbi_len(body as u32) + body);
    dst.put_u8(first_byte(packet));
    dst.put_vbi(body as u32);
    write_body(packet, version, dst);
}

/// Appends a PUBLISH written from borrowed parts; the same bytes as `encode` of the equivalent
/// owned `Packet::Publish`. Returns the bytes appended.
pub fn encode_publish(p: &PublishOut, version: ProtocolVersion, dst: &mut BytesMut) -> usize {
    let body = measure(|c| publish::write_publish_out(p, version, c));
    debug_assert!(
        body <= super::reader::VBI_MAX as usize,
        "packet too large to encode"
    );
    let total = 1 + vbi_len(body as u32) + body;
    sent::count(1);
    dst.reserve(total);
    dst.put_u8(publish_first_byte(p.dup, p.qos, p.retain));
    dst.put_vbi(body as u32);
    publish::write_publish_out(p, version, dst);
    total
}

/// Exactly the number of bytes `encode(packet, version, _)` appends.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    if !representable(packet, version) {
        return 0;
    }
    let body = measure(|c| write_body(packet, version, c));
    1 + vbi_len(body as u32) + body
}

//! Literal bytes in, literal bytes out: the bad-input rows as they travel on the wire,
//! through the real codec.

use super::*;
use crate::codec::{DecodeLimits, decode};

/// Decodes `bytes` as the broker would and hands each packet to the session.
fn feed(h: &mut Harness, bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    let version = h.s.protocol();
    while !buf.is_empty() {
        match decode(&mut buf, version, &DecodeLimits::default()) {
            Ok(Some(p)) => h.packet(p),
            other => panic!("test input does not decode: {other:?}"),
        }
    }
}

/// The bytes written since the last call.
fn written(h: &mut Harness) -> Vec<u8> {
    h.out.split().to_vec()
}

fn decode_connect(bytes: &[u8]) -> Connect {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, None, &DecodeLimits::default()) {
        Ok(Some(Packet::Connect(c))) => *c,
        other => panic!("not a CONNECT: {other:?}"),
    }
}

#[test]
fn bad_input_17_empty_client_id_without_clean_session() {
    // The decoder already refuses `10 0C 0004 MQTT 04 00 000A 0000`; the session checks the
    // same rule for CONNECTs that reach it by another path.
    let c = connect_packet(ProtocolVersion::V311, "", false);
    let code = validate_connect(&c, &Limits::default()).expect_err("refused");
    let mut out = BytesMut::new();
    refuse_connect(c.protocol, code, &mut out);
    assert_eq!(&out[..], [0x20, 0x02, 0x00, 0x02]);
}

#[test]
fn bad_input_23_unsupported_auth_method_v5() {
    // CONNECT v5, clean start, keep alive 10, properties: auth method "SCRAM-X".
    let mut bytes = vec![
        0x10, 0x00, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x0A,
    ];
    bytes.extend_from_slice(&[0x0A, 0x15, 0x00, 0x07]);
    bytes.extend_from_slice(b"SCRAM-X");
    bytes.extend_from_slice(&[0x00, 0x01, b'c']);
    bytes[1] = (bytes.len() - 2) as u8;
    let c = decode_connect(&bytes);
    assert!(validate_connect(&c, &Limits::default()).is_ok());
    // The method is the authentication settings' to judge (the shard asks them).
    let auth = crate::auth::Authenticator::from_texts(&Default::default(), None, None, [0; 32])
        .expect("no files");
    let method = c.properties.authentication_method.as_ref().expect("method");
    let refusal = auth.scram_method(method.as_str()).expect_err("refused");
    let mut out = BytesMut::new();
    refuse_connect(c.protocol, refusal.reason_code(), &mut out);
    assert_eq!(&out[..], [0x20, 0x03, 0x00, 0x8C, 0x00]);
}

#[test]
fn connack_3_1_1_bytes() {
    let mut h = Harness::new(Limits::default());
    h.connect(connect_packet(ProtocolVersion::V311, "c1", true), false);
    assert_eq!(written(&mut h), [0x20, 0x02, 0x00, 0x00]);
}

#[test]
fn qos1_and_qos2_inbound_bytes_3_1_1() {
    let mut h = Harness::v311();
    // PUBLISH QoS 1 "a/b" id 1 "hi" -> PUBACK.
    feed(
        &mut h,
        &[
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'h', b'i',
        ],
    );
    assert_eq!(written(&mut h), [0x40, 0x02, 0x00, 0x01]);
    // PUBLISH QoS 2 id 2 -> PUBREC; PUBREL -> PUBCOMP.
    feed(
        &mut h,
        &[
            0x34, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x02, b'h', b'i',
        ],
    );
    assert_eq!(written(&mut h), [0x50, 0x02, 0x00, 0x02]);
    feed(&mut h, &[0x62, 0x02, 0x00, 0x02]);
    assert_eq!(written(&mut h), [0x70, 0x02, 0x00, 0x02]);
    assert_eq!(h.actions.len(), 2);
}

#[test]
fn bad_input_48_unsolicited_pubrel_v5() {
    let mut h = Harness::v5();
    feed(&mut h, &[0x62, 0x02, 0x00, 0x01]);
    assert_eq!(written(&mut h), [0x70, 0x03, 0x00, 0x01, 0x92]);
    assert!(h.s.is_connected());
}

#[test]
fn bad_input_64_server_reason_in_client_disconnect() {
    let mut h = Harness::v5();
    feed(&mut h, &[0xE0, 0x01, 0x8E]);
    assert_eq!(written(&mut h), [0xE0, 0x01, 0x82]);
    assert_eq!(h.actions, [Action::Close { will: true }, Action::Ended]);
}

#[test]
fn bad_input_65_disconnect_raises_session_expiry() {
    let mut h = Harness::v5();
    feed(
        &mut h,
        &[0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x01],
    );
    assert_eq!(written(&mut h), [0xE0, 0x01, 0x82]);
}

#[test]
fn bad_input_37_publish_into_sys_v5() {
    let mut h = Harness::v5();
    let mut bytes = vec![0x32, 0x00, 0x00, 0x06];
    bytes.extend_from_slice(b"$SYS/x");
    bytes.extend_from_slice(&[0x00, 0x01, 0x00, b'!']);
    bytes[1] = (bytes.len() - 2) as u8;
    feed(&mut h, &bytes);
    assert_eq!(written(&mut h), [0x40, 0x03, 0x00, 0x01, 0x87]);
    assert!(h.actions.is_empty());
}

#[test]
fn bad_input_39_topic_alias_above_maximum() {
    // `30 12 0005 'topic' 03 23 000B ...`: alias 11 > our maximum 10.
    let mut h = Harness::v5();
    let mut bytes = vec![0x30, 0x00, 0x00, 0x05];
    bytes.extend_from_slice(b"topic");
    bytes.extend_from_slice(&[0x03, 0x23, 0x00, 0x0B]);
    bytes.extend_from_slice(b"payload");
    bytes[1] = (bytes.len() - 2) as u8;
    feed(&mut h, &bytes);
    assert_eq!(written(&mut h), [0xE0, 0x01, 0x94]);
}

#[test]
fn pingreq_and_keep_alive_timeout_bytes() {
    let mut h = Harness::v5();
    feed(&mut h, &[0xC0, 0x00]);
    assert_eq!(written(&mut h), [0xD0, 0x00]);
    h.advance(90_000);
    assert_eq!(written(&mut h), [0xE0, 0x01, 0x8D]);
}

#[test]
fn bad_input_29_tiny_maximum_packet_size() {
    // The client accepts at most 20 bytes per packet: a PUBLISH of 2 + 2 + 1 + 3 + 7 = 15
    // bytes goes out, a larger one is dropped and counted, never written.
    let mut c = connect_packet(ProtocolVersion::V5, "c1", true);
    c.properties.maximum_packet_size = Some(20);
    let mut h = Harness::connected(Limits::default(), c);
    h.out.clear();
    h.deliver(&message("a/b", QoS::AtMostOnce), &live(QoS::AtMostOnce));
    let small = written(&mut h);
    assert_eq!(small.len(), 15);
    let big = message("a/very/long/topic/name/for/this/client", QoS::AtLeastOnce);
    h.deliver(&big, &live(QoS::AtLeastOnce));
    assert!(written(&mut h).is_empty());
    assert_eq!(h.s.stats().dropped_too_large, 1);
    // No flow was started for the dropped QoS 1 message.
    assert!(h.s.data().inflight.is_empty());
}

#[test]
fn outbound_publish_bytes_3_1_1() {
    let mut h = Harness::v311();
    h.deliver(&message("t", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    let mut want = vec![0x32, 0x0C, 0x00, 0x01, b't', 0x00, 0x01];
    want.extend_from_slice(b"payload");
    assert_eq!(written(&mut h), want);
    // PUBACK frees it; a duplicate PUBACK is tolerated.
    feed(&mut h, &[0x40, 0x02, 0x00, 0x01, 0x40, 0x02, 0x00, 0x01]);
    assert!(written(&mut h).is_empty());
    assert!(h.s.is_connected());
}

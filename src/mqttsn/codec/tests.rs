//! Codec tests: every message from literal bytes laid out as the tables of spec section 5.4
//! give them, both length forms, flags, return codes, bad datagrams, and a randomized
//! no-panic / round-trip check.

use super::*;

fn b(bytes: &'static [u8]) -> Bytes {
    Bytes::from_static(bytes)
}

/// Decodes `wire`, checks it is `expected`, and that `expected` encodes back to `wire`.
fn both_ways(wire: &'static [u8], expected: SnMessage) {
    let got = decode(&b(wire)).unwrap_or_else(|e| panic!("{wire:02x?}: {e}"));
    assert_eq!(got, expected, "decode {wire:02x?}");
    assert_eq!(
        expected.encoded_len(),
        wire.len(),
        "encoded_len of {expected:?}"
    );
    let bytes = encode_to_bytes(&expected).expect("encodes");
    assert_eq!(&bytes[..], wire, "encode {expected:?}");
}

#[test]
fn gateway_discovery_messages() {
    // 5.4.1 ADVERTISE: Length 5, 0x00, GwId, Duration (900 s = 0x0384).
    both_ways(
        b"\x05\x00\x07\x03\x84",
        SnMessage::Advertise {
            gw_id: 7,
            duration: 900,
        },
    );
    // 5.4.2 SEARCHGW: Length 3, 0x01, Radius.
    both_ways(b"\x03\x01\x02", SnMessage::SearchGw { radius: 2 });
    // 5.4.3 GWINFO from a gateway (no GwAdd) and from a client (with one).
    both_ways(
        b"\x03\x02\x07",
        SnMessage::GwInfo {
            gw_id: 7,
            gw_addr: Bytes::new(),
        },
    );
    both_ways(
        b"\x07\x02\x07\x7f\x00\x00\x01",
        SnMessage::GwInfo {
            gw_id: 7,
            gw_addr: b(b"\x7f\x00\x00\x01"),
        },
    );
}

#[test]
fn connect_and_will_messages() {
    // 5.4.4 CONNECT: Flags (Will 0x08 | CleanSession 0x04), ProtocolId 0x01, Duration 60.
    both_ways(
        b"\x0a\x04\x0c\x01\x00\x3cdev1",
        SnMessage::Connect(SnConnect {
            will: true,
            clean_session: true,
            protocol_id: 1,
            duration: 60,
            client_id: b(b"dev1"),
        }),
    );
    // 5.4.5 CONNACK with each return code (5.3.10).
    for (code, byte) in [
        (ReturnCode::Accepted, 0u8),
        (ReturnCode::Congestion, 1),
        (ReturnCode::InvalidTopicId, 2),
        (ReturnCode::NotSupported, 3),
    ] {
        let wire = [3, 0x05, byte];
        let got = decode(&Bytes::copy_from_slice(&wire)).expect("connack");
        assert_eq!(got, SnMessage::ConnAck { code });
        assert_eq!(&encode_to_bytes(&got).expect("enc")[..], &wire);
    }
    both_ways(b"\x02\x06", SnMessage::WillTopicReq);
    both_ways(b"\x02\x08", SnMessage::WillMsgReq);
    // 5.4.7 WILLTOPIC: QoS 1 (0x20) | Retain (0x10).
    both_ways(
        b"\x06\x07\x30a/b",
        SnMessage::WillTopic(Some(WillTopic {
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: b(b"a/b"),
        })),
    );
    // The empty WILLTOPIC is exactly two octets.
    both_ways(b"\x02\x07", SnMessage::WillTopic(None));
    both_ways(b"\x05\x09bye", SnMessage::WillMsg { msg: b(b"bye") });
    // 5.4.22-25: updates and their responses.
    both_ways(
        b"\x06\x1a\x40x/y",
        SnMessage::WillTopicUpd(Some(WillTopic {
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: b(b"x/y"),
        })),
    );
    both_ways(b"\x02\x1a", SnMessage::WillTopicUpd(None));
    both_ways(
        b"\x03\x1b\x00",
        SnMessage::WillTopicResp {
            code: ReturnCode::Accepted,
        },
    );
    both_ways(b"\x04\x1cok", SnMessage::WillMsgUpd { msg: b(b"ok") });
    both_ways(
        b"\x03\x1d\x03",
        SnMessage::WillMsgResp {
            code: ReturnCode::NotSupported,
        },
    );
}

#[test]
fn register_and_publish_messages() {
    // 5.4.10 REGISTER from a client: TopicId 0x0000, MsgId 0x0001, name.
    both_ways(
        b"\x09\x0a\x00\x00\x00\x01a/b",
        SnMessage::Register {
            topic_id: TopicId(0),
            msg_id: MsgId(1),
            topic_name: b(b"a/b"),
        },
    );
    // 5.4.11 REGACK: TopicId 0x0001, MsgId 0x0001, Accepted.
    both_ways(
        b"\x07\x0b\x00\x01\x00\x01\x00",
        SnMessage::RegAck {
            topic_id: TopicId(1),
            msg_id: MsgId(1),
            code: ReturnCode::Accepted,
        },
    );
    // 5.4.12 PUBLISH: DUP | QoS 1 | Retain | normal id 0x0001, MsgId 0x0002, "hi".
    both_ways(
        b"\x09\x0c\xb0\x00\x01\x00\x02hi",
        SnMessage::Publish(SnPublish {
            dup: true,
            qos: SnQoS::One,
            retain: true,
            topic: TopicRef::Normal(TopicId(1)),
            msg_id: MsgId(2),
            data: b(b"hi"),
        }),
    );
    // QoS -1 (0b11 << 5 = 0x60) to a pre-defined id (0b01), MsgId 0.
    both_ways(
        b"\x08\x0c\x61\x00\x05\x00\x00x",
        SnMessage::Publish(SnPublish {
            dup: false,
            qos: SnQoS::MinusOne,
            retain: false,
            topic: TopicRef::Predefined(TopicId(5)),
            msg_id: MsgId(0),
            data: b(b"x"),
        }),
    );
    // QoS 2 (0x40) to a short name (0b10) "ab".
    both_ways(
        b"\x07\x0c\x42ab\x00\x09",
        SnMessage::Publish(SnPublish {
            dup: false,
            qos: SnQoS::Two,
            retain: false,
            topic: TopicRef::Short(*b"ab"),
            msg_id: MsgId(9),
            data: Bytes::new(),
        }),
    );
    // 5.4.13 PUBACK "invalid topic id".
    both_ways(
        b"\x07\x0d\x00\x01\x00\x02\x02",
        SnMessage::PubAck {
            topic_id: TopicId(1),
            msg_id: MsgId(2),
            code: ReturnCode::InvalidTopicId,
        },
    );
    // 5.4.14 PUBCOMP, PUBREC, PUBREL: Length 4, type, MsgId.
    both_ways(b"\x04\x0e\x00\x09", SnMessage::PubComp { msg_id: MsgId(9) });
    both_ways(b"\x04\x0f\x00\x09", SnMessage::PubRec { msg_id: MsgId(9) });
    both_ways(b"\x04\x10\x00\x09", SnMessage::PubRel { msg_id: MsgId(9) });
}

#[test]
fn subscribe_and_ping_messages() {
    // 5.4.15 SUBSCRIBE QoS 1 (0x20) to a name with a wildcard.
    both_ways(
        b"\x08\x12\x20\x00\x03a/#",
        SnMessage::Subscribe(SnSubscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id: MsgId(3),
            topic: SubTopic::Name(b(b"a/#")),
        }),
    );
    // ... to a pre-defined id (0b01) and a short name (0b10).
    both_ways(
        b"\x07\x12\x01\x00\x04\x00\x05",
        SnMessage::Subscribe(SnSubscribe {
            dup: false,
            qos: QoS::AtMostOnce,
            msg_id: MsgId(4),
            topic: SubTopic::Predefined(TopicId(5)),
        }),
    );
    both_ways(
        b"\x07\x12\xc2\x00\x04ab",
        SnMessage::Subscribe(SnSubscribe {
            dup: true,
            qos: QoS::ExactlyOnce,
            msg_id: MsgId(4),
            topic: SubTopic::Short(*b"ab"),
        }),
    );
    // 5.4.16 SUBACK: granted QoS 1, TopicId 0x0007, MsgId 3, Accepted.
    both_ways(
        b"\x08\x13\x20\x00\x07\x00\x03\x00",
        SnMessage::SubAck {
            qos: QoS::AtLeastOnce,
            topic_id: TopicId(7),
            msg_id: MsgId(3),
            code: ReturnCode::Accepted,
        },
    );
    both_ways(
        b"\x08\x14\x00\x00\x05a/#",
        SnMessage::Unsubscribe {
            msg_id: MsgId(5),
            topic: SubTopic::Name(b(b"a/#")),
        },
    );
    both_ways(
        b"\x04\x15\x00\x05",
        SnMessage::UnsubAck { msg_id: MsgId(5) },
    );
    both_ways(b"\x02\x16", SnMessage::PingReq { client_id: None });
    both_ways(
        b"\x06\x16dev1",
        SnMessage::PingReq {
            client_id: Some(b(b"dev1")),
        },
    );
    both_ways(b"\x02\x17", SnMessage::PingResp);
    both_ways(b"\x02\x18", SnMessage::Disconnect { duration: None });
    both_ways(
        b"\x04\x18\x0e\x10",
        SnMessage::Disconnect {
            duration: Some(3600),
        },
    );
}

#[test]
fn three_octet_length_form() {
    // 5.2.1: 0x01 then the length on two octets, for messages longer than 255 octets.
    let data = vec![0xAB; 300];
    let msg = SnMessage::Publish(SnPublish {
        dup: false,
        qos: SnQoS::Zero,
        retain: false,
        topic: TopicRef::Normal(TopicId(1)),
        msg_id: MsgId(0),
        data: Bytes::from(data.clone()),
    });
    let wire = encode_to_bytes(&msg).expect("encodes");
    assert_eq!(wire.len(), 309);
    assert_eq!(&wire[..8], b"\x01\x01\x35\x0c\x00\x00\x01\x00");
    assert_eq!(decode(&wire), Ok(msg));
    // A message that fits one octet may still arrive in the long form.
    assert_eq!(
        decode(&b(b"\x01\x00\x04\x17")),
        Ok(SnMessage::PingResp),
        "long form of PINGRESP"
    );
    // The boundary: 255 octets take the short form, 256 the long one.
    let at = |n: usize| SnMessage::WillMsg {
        msg: Bytes::from(vec![b'm'; n]),
    };
    assert_eq!(encode_to_bytes(&at(253)).expect("enc")[0], 255);
    assert_eq!(
        &encode_to_bytes(&at(254)).expect("enc")[..3],
        b"\x01\x01\x02"
    );
    // Past 65535 octets nothing is written.
    let mut dst = BytesMut::new();
    assert_eq!(
        encode(&at(65_532), &mut dst),
        Err(SnEncodeError::TooLong(65_536))
    );
    assert!(dst.is_empty());
    assert_eq!(encode(&at(65_531), &mut dst), Ok(65_535));
}

#[test]
fn bad_datagrams_are_typed_errors() {
    use SnDecodeError as E;
    let cases: &[(&[u8], SnDecodeError)] = &[
        (b"", E::TooShort),
        (
            b"\x02",
            E::LengthMismatch {
                declared: 2,
                received: 1,
            },
        ),
        (b"\x01", E::TooShort),
        (b"\x01\x00", E::TooShort),
        (b"\x00\x16", E::InvalidLength),
        (b"\x01\x00\x03\x16", E::InvalidLength),
        // The length lies: too long, too short.
        (
            b"\x05\x16",
            E::LengthMismatch {
                declared: 5,
                received: 2,
            },
        ),
        (
            b"\x02\x17\x00",
            E::LengthMismatch {
                declared: 2,
                received: 3,
            },
        ),
        (
            b"\x01\x00\x09\x17",
            E::LengthMismatch {
                declared: 9,
                received: 4,
            },
        ),
        // Reserved types (0x03, 0x11, 0x19, 0x1E..0xFD, 0xFF) and the encapsulation.
        (b"\x02\x03", E::UnknownType(0x03)),
        (b"\x02\x11", E::UnknownType(0x11)),
        (b"\x02\x19", E::UnknownType(0x19)),
        (b"\x02\x1e", E::UnknownType(0x1E)),
        (b"\x02\xff", E::UnknownType(0xFF)),
        (b"\x04\xfe\x01\x00", E::Encapsulated),
        // Truncated bodies and trailing octets.
        (b"\x02\x05", E::Truncated { msg_type: 0x05 }),
        (b"\x06\x0c\x00\x00\x01\x00", E::Truncated { msg_type: 0x0C }),
        (b"\x03\x18\x01", E::Truncated { msg_type: 0x18 }),
        (b"\x05\x18\x00\x01\x02", E::TrailingBytes { msg_type: 0x18 }),
        (b"\x03\x06\x00", E::TrailingBytes { msg_type: 0x06 }),
        (b"\x05\x0e\x00\x01\x00", E::TrailingBytes { msg_type: 0x0E }),
        (b"\x06\x12\x01\x00\x01\x05", E::Truncated { msg_type: 0x12 }),
        (
            b"\x08\x12\x02\x00\x01abc",
            E::TrailingBytes { msg_type: 0x12 },
        ),
        // Flags and codes.
        (b"\x07\x0c\x03\x00\x01\x00\x00", E::ReservedTopicIdType),
        (b"\x07\x12\x63\x00\x01\x00\x01", E::ReservedTopicIdType),
        (b"\x06\x12\x60\x00\x01a", E::InvalidQoS),
        (b"\x04\x07\x60a", E::InvalidQoS),
        (b"\x03\x05\x04", E::ReservedReturnCode(4)),
        (b"\x07\x0d\x00\x01\x00\x01\xff", E::ReservedReturnCode(0xFF)),
    ];
    for (wire, err) in cases {
        assert_eq!(
            decode(&Bytes::copy_from_slice(wire)),
            Err(*err),
            "{wire:02x?}"
        );
    }
}

/// xorshift64*: a fixed-seed generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
}

/// Random datagrams, half of them with a correct length octet and a known type so that the
/// bodies get exercised: decoding never panics, and whatever decodes re-encodes to something
/// that decodes to the same message (the fuzz target's oracle, in `fuzz/fuzz_targets`).
#[test]
fn random_datagrams_never_panic_and_round_trip() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut decoded = 0;
    for i in 0..200_000 {
        let len = (rng.next() % 24) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        if i % 2 == 0 && len >= 2 {
            v[0] = len as u8;
            v[1] %= 0x1E;
        }
        let datagram = Bytes::from(v);
        if let Ok(msg) = decode(&datagram) {
            decoded += 1;
            let again = encode_to_bytes(&msg).expect("a decoded message encodes");
            assert_eq!(decode(&again), Ok(msg), "{datagram:02x?}");
        }
    }
    assert!(
        decoded > 10_000,
        "only {decoded} decoded: the generator misses the bodies"
    );
}

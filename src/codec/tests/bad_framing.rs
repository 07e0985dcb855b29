//! docs/bad-inputs.md rows 1 to 9: framing, remaining length, flags, truncation, property blocks.

use super::*;
use DecodeError as E;
use ReasonCode as R;

#[test]
fn bad_input_01_remaining_length_with_five_bytes() {
    expect_err(
        "10 FF FF FF FF 7F 0004'MQTT'",
        None,
        false,
        E::RemainingLengthTooLong,
        CLOSE,
    );
    // Decided at the fourth byte: no fifth byte is needed to refuse it.
    expect_err(
        "10 FF FF FF FF",
        None,
        false,
        E::RemainingLengthTooLong,
        CLOSE,
    );
    expect_err(
        "30 80 80 80 80",
        Some(V5),
        true,
        E::RemainingLengthTooLong,
        disconnect(R::MalformedPacket),
    );
    expect_err(
        "30 80 80 80 80",
        Some(V311),
        true,
        E::RemainingLengthTooLong,
        CLOSE,
    );
    // Three continuation bytes still wait for the fourth.
    let mut buf = hex("10 FF FF FF");
    assert_eq!(decode(&mut buf, None, &limits()), Ok(None));
}

#[test]
fn bad_input_01_property_length_vbi_with_five_bytes() {
    // A PUBLISH whose property length has five bytes.
    expect_err(
        "30 0B 0001'a' FF FF FF FF 01 00 00 00",
        Some(V5),
        true,
        E::VariableByteIntegerTooLong,
        disconnect(R::MalformedPacket),
    );
}

#[test]
fn bad_input_02_huge_remaining_length_before_connect() {
    // Every non-CONNECT type fails at its first byte, before the length is even read.
    for first in (0x2u8..=0xF).map(|t| t << 4) {
        let mut buf = BytesMut::from(&[first, 0x80, 0x80, 0x80, 0x74][..]);
        assert_eq!(
            decode(&mut buf, None, &limits()),
            Err(E::FirstPacketNotConnect),
            "{first:#x}"
        );
        assert_eq!(E::FirstPacketNotConnect.response(None, false), CLOSE);
    }
    // A CONNECT declaring ~243 MB is refused from its header; nothing is reserved for it.
    let mut buf = hex("10 80 80 80 74");
    let capacity = buf.capacity();
    assert_eq!(decode(&mut buf, None, &limits()), Err(E::PacketTooLarge));
    assert_eq!(buf.capacity(), capacity);
    assert_eq!(E::PacketTooLarge.response(None, false), CLOSE);
    // After CONNACK a v5 client is told why.
    expect_err(
        "30 80 80 80 74",
        Some(V5),
        true,
        E::PacketTooLarge,
        disconnect(R::PacketTooLarge),
    );
}

#[test]
fn bad_input_03_first_packet_not_connect() {
    expect_err("00 00", None, false, E::FirstPacketNotConnect, CLOSE);
    expect_err("20 02 00 00", None, false, E::FirstPacketNotConnect, CLOSE);
    expect_err(
        "82 07 1234 0003'a/b'",
        None,
        false,
        E::FirstPacketNotConnect,
        CLOSE,
    );
    // Even one byte is enough to decide.
    expect_err("C0", None, false, E::FirstPacketNotConnect, CLOSE);
}

#[test]
fn bad_input_04_reserved_packet_types() {
    expect_err("00 00", Some(V311), true, E::ReservedPacketType, CLOSE);
    expect_err(
        "00 00",
        Some(V5),
        true,
        E::ReservedPacketType,
        disconnect(R::MalformedPacket),
    );
    expect_err("F0 00", Some(V311), true, E::UnexpectedAuthOnV3, CLOSE);
    expect_err("F0 00", Some(V31), true, E::UnexpectedAuthOnV3, CLOSE);
}

#[test]
fn bad_input_05_wrong_fixed_header_flags() {
    for b in [0x11u8, 0x12, 0x14, 0x18] {
        let bytes = format!("{b:02X} 0C 0004'MQTT' 04 02 003C 0000");
        expect_err(&bytes, None, false, E::InvalidFixedHeaderFlags(b), CLOSE);
        // A 5.0 CONNECT is answered CONNACK 0x81 before the close.
        let bytes = format!("{b:02X} 0D 0004'MQTT' 05 02 003C 00 0000");
        let cause = Malformation::FixedHeaderFlags;
        let err = E::MalformedConnect { version: V5, cause };
        expect_err(&bytes, None, false, err, connack(V5, R::MalformedPacket));
    }
    let after_connect = [
        0x63u8,
        0x64,
        0x66,
        0x6A, // PUBREL
        0x80,
        0x83,
        0x84,
        0x86,
        0x8A, // SUBSCRIBE
        0xA0,
        0xA3, // UNSUBSCRIBE
        0xC1, // PINGREQ
        0xE1, // DISCONNECT
        0x40 | 0x01,
        0x50 | 0x02,
        0x72,
        0x91,
        0xB4,
        0xD8,
        0xF1, // others must be 0
    ];
    for b in after_connect {
        let bytes = format!("{b:02X} 02 0001");
        expect_err(
            &bytes,
            Some(V5),
            true,
            E::InvalidFixedHeaderFlags(b),
            disconnect(R::MalformedPacket),
        );
        if b >> 4 != 15 {
            expect_err(
                &bytes,
                Some(V311),
                true,
                E::InvalidFixedHeaderFlags(b),
                CLOSE,
            );
        }
    }
}

#[test]
fn bad_input_06_packet_longer_or_shorter_than_its_fields() {
    expect_err("62 03 0001 00", Some(V311), true, E::TrailingBytes, CLOSE);
    expect_err("C0 01 00", Some(V311), true, E::TrailingBytes, CLOSE);
    expect_err("E0 01 00", Some(V311), true, E::TrailingBytes, CLOSE);
    expect_err(
        "C0 01 00",
        Some(V5),
        true,
        E::TrailingBytes,
        disconnect(R::MalformedPacket),
    );
    expect_err(
        "D0 01 00",
        Some(V5),
        true,
        E::TrailingBytes,
        disconnect(R::MalformedPacket),
    );
    // Shorter: a PUBACK with one byte of packet identifier.
    expect_err("40 01 00", Some(V311), true, E::UnexpectedEof, CLOSE);
    // v5 DISCONNECT with a reason code, a property block and one byte too many.
    expect_err(
        "E0 03 00 00 00",
        Some(V5),
        true,
        E::TrailingBytes,
        disconnect(R::MalformedPacket),
    );
    // UNSUBACK 3.1.1 carries only the packet identifier.
    expect_err("B0 03 0001 00", Some(V311), false, E::TrailingBytes, CLOSE);
}

#[test]
fn bad_input_07_qos1_publish_cut_before_packet_id() {
    expect_err(
        "32 07 0005 746F706963",
        Some(V5),
        true,
        E::UnexpectedEof,
        disconnect(R::MalformedPacket),
    );
    expect_err(
        "32 07 0005 746F706963",
        Some(V311),
        true,
        E::UnexpectedEof,
        CLOSE,
    );
}

#[test]
fn bad_input_08_subscribe_cut_after_the_topic() {
    expect_err(
        "82 07 1234 0003 612F62",
        Some(V311),
        true,
        E::UnexpectedEof,
        CLOSE,
    );
    expect_err(
        "82 08 1234 00 0003 612F62",
        Some(V5),
        true,
        E::UnexpectedEof,
        disconnect(R::MalformedPacket),
    );
}

#[test]
fn bad_input_09_malformed_property_blocks() {
    // Property identifier 0x00 in a v5 CONNECT: CONNACK 0x81.
    let v5_malformed = connack(V5, R::MalformedPacket);
    expect_err(
        "10 10 0004'MQTT' 05 02 000A 02 0001 0001'a'",
        None,
        false,
        E::UnknownProperty(0x00),
        v5_malformed,
    );
    // Unknown identifier 0x04.
    expect_err(
        "10 11 0004'MQTT' 05 02 000A 03 04 0001 0001'a'",
        None,
        false,
        E::UnknownProperty(0x04),
        v5_malformed,
    );
    // A property block longer than the packet.
    let overrun = E::MalformedConnect {
        version: V5,
        cause: Malformation::UnexpectedEof,
    };
    expect_err(
        "10 0E 0004'MQTT' 05 02 000A 0A 11 0000",
        None,
        false,
        overrun,
        v5_malformed,
    );
    // A property value cut by its block's length (session expiry needs 4 bytes, block has 3).
    expect_err(
        "10 11 0004'MQTT' 05 02 000A 03 11 0000 0001'a'",
        None,
        false,
        overrun,
        v5_malformed,
    );
    // After CONNACK the same in a PUBACK is a DISCONNECT 0x81.
    expect_err(
        "40 06 0001 00 02 04 00",
        Some(V5),
        true,
        E::UnknownProperty(0x04),
        disconnect(R::MalformedPacket),
    );
    expect_err(
        "40 06 0001 00 05 1F 00",
        Some(V5),
        true,
        E::UnexpectedEof,
        disconnect(R::MalformedPacket),
    );
}

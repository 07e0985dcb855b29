//! bad-input rows 1-9: framing, remaining length, fixed-header flags, packet bodies that are
//! longer or shorter than their fields, malformed property blocks.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;

use ringmq::codec::ProtocolVersion;
use ringmq::codec::ReasonCode as R;

use super::common::{Broker, Client};
use super::{
    SHARDS, cat, check_bystander, closes_after_connect, connect_bystander, connect_raw,
    exclusive_rss_guard, frame, lp, props, read_until_closed, refused_at_connect, rss_kib,
    subscribe_raw, with_bystander,
};

/// Row 1: a Variable Byte Integer has at most 4 bytes (spec 1.5.5: "The maximum number of
/// bytes in the Variable Byte Integer field is four"); a fifth continuation byte is a
/// Malformed Packet wherever a VBI appears: remaining length, property length, Subscription
/// Identifier.
fn row_01_five_byte_variable_byte_integer(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        // Before CONNECT the level is unknown (it comes after the length): plain close.
        let mut c = Client::tcp(broker.addr, v);
        c.send_bytes(&cat(&[
            &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            &lp(b"MQTT"),
            &[v.level()],
        ]));
        let got = c.expect_closed();
        assert!(
            got.is_empty(),
            "CONNECT with a 5-byte remaining length: no answer, got {got:?}"
        );

        // After CONNECT: a PUBLISH whose remaining length has five bytes.
        let publish = cat(&[&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], &lp(b"t"), b"payload"]);
        closes_after_connect(
            broker.addr,
            v,
            &publish,
            &[R::MalformedPacket],
            "PUBLISH remaining length",
        );

        if v.is_v5() {
            // Property length with five bytes, in CONNECT and in PUBLISH.
            let five = [0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
            let connect = frame(
                0x10,
                &cat(&[&lp(b"MQTT"), &[5, 0x02, 0x00, 0x3C], &five, &lp(b"c")]),
            );
            refused_at_connect(
                broker.addr,
                v,
                &connect,
                &[R::MalformedPacket],
                "CONNECT property length",
            );
            let publish = frame(0x30, &cat(&[&lp(b"t"), &five, b"payload"]));
            closes_after_connect(
                broker.addr,
                v,
                &publish,
                &[R::MalformedPacket],
                "PUBLISH property length",
            );
            // Subscription Identifier with five bytes.
            let sub = subscribe_raw(v, &[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01], &[(b"a/b", 0)]);
            closes_after_connect(
                broker.addr,
                v,
                &sub,
                &[R::MalformedPacket],
                "Subscription Identifier",
            );
        }
    });
}

/// Streams `declared` then up to `STREAM` bytes of zeros; returns whether the broker closed the
/// connection (a write failed, or a read saw the end).
fn stream_after_huge_header(addr: SocketAddr, header: [u8; 5]) -> bool {
    /// How much each socket tries to push: enough that buffering it would show in RSS
    /// (15 sockets x 4 MiB = 60 MiB), small enough to stay fast.
    const STREAM: usize = 4 * 1024 * 1024;
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_write_timeout(Some(super::common::WAIT))
        .expect("write timeout");
    if stream.write_all(&header).is_err() {
        return true;
    }
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < STREAM {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            // Refused (closed by the broker) or blocked for WAIT (the broker stopped reading
            // but kept the connection: read_until_closed below decides).
            Err(_) => break,
        }
    }
    read_until_closed(&mut stream).is_some()
}

/// Row 2: 15 sockets (one per packet type 0x20-0xF0, and CONNECT) declare a remaining length
/// of 0x80808074 bytes (about 232 MiB) before CONNECT and stream data. The broker closes them
/// all, and this process's RSS (the broker runs in it) grows by less than 20 MiB, the bound
/// mosquitto's `01-bad-initial-packets.py` uses for 14 such sockets.
#[test]
fn row_02_huge_remaining_length_before_connect() {
    let _exclusive = exclusive_rss_guard();
    let broker = Broker::start(SHARDS);
    let v = ProtocolVersion::V5;
    let mut bystander = connect_bystander(&broker, v);
    let before = rss_kib();
    let handles: Vec<_> = (1u8..=15)
        .map(|packet_type| {
            let addr = broker.addr;
            let header = [packet_type << 4, 0x80, 0x80, 0x80, 0x74];
            thread::spawn(move || (packet_type, stream_after_huge_header(addr, header)))
        })
        .collect();
    for h in handles {
        let (packet_type, closed) = h.join().expect("streaming thread");
        assert!(
            closed,
            "first byte {:#04x} with a 232 MiB length: connection not closed",
            packet_type << 4
        );
    }
    let after = rss_kib();
    let growth = after.saturating_sub(before);
    eprintln!("row 2: RSS {before} -> {after} KiB");
    assert!(
        growth < 20 * 1024,
        "RSS grew by {growth} KiB ({before} -> {after} KiB)"
    );
    check_bystander(&broker, &mut bystander, v);
}

/// Row 3: the first packet must be CONNECT [MQTT-3.1.0-1]; anything else is closed at once. The
/// level is unknown before CONNECT, so no packet can be answered.
#[test]
fn row_03_non_connect_first_packet() {
    with_bystander(ProtocolVersion::V311, |broker| {
        let cases: [&[u8]; 8] = [
            &[0x00, 0x00],
            &[0x20, 0x02, 0x00, 0x00],
            &[0x82, 0x08, 0x12, 0x34, 0x00, 0x03, b'a', b'/', b'b', 0x00],
            &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'b'],
            &[0x62, 0x02, 0x00, 0x01],
            &[0xC0, 0x00],
            &[0xE0, 0x00],
            &[0xF0, 0x00],
        ];
        for bytes in cases {
            let mut c = Client::tcp(broker.addr, ProtocolVersion::V311);
            c.send_bytes(bytes);
            let got = c.expect_closed();
            assert!(
                got.is_empty(),
                "{bytes:02x?} as first packet: no answer, got {got:?}"
            );
        }
    });
}

/// Row 4: packet type 0 is reserved in every level (a packet that cannot be parsed: Malformed,
/// spec 4.13.1); type 15 is reserved in 3.1.1. In 5.0 type 15 is AUTH, and `F0 00` is an AUTH
/// without Authentication Method: "It is a Protocol Error to omit the Authentication Method"
/// (3.15.2.2.2), so 0x82.
fn row_04_reserved_packet_types(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        closes_after_connect(
            broker.addr,
            v,
            &[0x00, 0x00],
            &[R::MalformedPacket],
            "type 0",
        );
        closes_after_connect(
            broker.addr,
            v,
            &[0xF0, 0x00],
            &[R::ProtocolError],
            "type 15",
        );
    });
}

/// Row 5: reserved fixed-header flag bits that are not as specified: "If invalid flags are
/// received it is a Malformed Packet" [MQTT-2.1.3-1] (5.0: 0x81).
fn row_05_wrong_fixed_header_flags(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let connect = connect_raw(v, 0x02, &[], &lp(b"flags"));
        for first in [0x11, 0x12, 0x14, 0x18] {
            let bytes = cat(&[&[first], &connect[1..]]);
            refused_at_connect(
                broker.addr,
                v,
                &bytes,
                &[R::MalformedPacket],
                &format!("CONNECT {first:#04x}"),
            );
        }
        let sub_body = cat(&[&[0x00, 0x01], &props(v, &[]), &lp(b"a/b"), &[0x00]]);
        let unsub_body = cat(&[&[0x00, 0x01], &props(v, &[]), &lp(b"a/b")]);
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        for first in [0x63, 0x64, 0x66, 0x6A] {
            cases.push((format!("PUBREL {first:#04x}"), frame(first, &[0x00, 0x01])));
        }
        for first in [0x80, 0x83, 0x84, 0x86, 0x8A] {
            cases.push((format!("SUBSCRIBE {first:#04x}"), frame(first, &sub_body)));
        }
        for first in [0xA0, 0xA3] {
            cases.push((
                format!("UNSUBSCRIBE {first:#04x}"),
                frame(first, &unsub_body),
            ));
        }
        cases.push(("PINGREQ 0xc1".into(), vec![0xC1, 0x00]));
        cases.push(("DISCONNECT 0xe1".into(), vec![0xE1, 0x00]));
        for (case, bytes) in cases {
            closes_after_connect(broker.addr, v, &bytes, &[R::MalformedPacket], &case);
        }
    });
}

/// Row 6: a remaining length that disagrees with the packet's fields is a Malformed Packet
/// (3.1.1: PUBREL, PUBACK, PINGREQ and DISCONNECT have fixed lengths; 5.0: bytes left over
/// after the property block). The 5.0 forms differ because `62 03 0001 00` is a valid 5.0
/// PUBREL (reason code 0x00) and `E0 01 00` a valid 5.0 DISCONNECT.
fn row_06_length_disagrees_with_fields(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let cases: Vec<(&str, Vec<u8>)> = if v.is_v5() {
            vec![
                (
                    "PUBREL long",
                    vec![0x62, 0x05, 0x00, 0x01, 0x00, 0x00, 0xFF],
                ),
                ("PUBREL short", vec![0x62, 0x01, 0x00]),
                (
                    "PUBACK long",
                    vec![0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0xFF],
                ),
                ("PINGREQ long", vec![0xC0, 0x01, 0x00]),
                ("DISCONNECT long", vec![0xE0, 0x03, 0x00, 0x00, 0xFF]),
            ]
        } else {
            vec![
                ("PUBREL long", vec![0x62, 0x03, 0x00, 0x01, 0x00]),
                ("PUBREL short", vec![0x62, 0x01, 0x00]),
                ("PUBACK long", vec![0x40, 0x03, 0x00, 0x01, 0x00]),
                ("PINGREQ long", vec![0xC0, 0x01, 0x00]),
                ("DISCONNECT long", vec![0xE0, 0x01, 0x00]),
            ]
        };
        for (case, bytes) in cases {
            closes_after_connect(broker.addr, v, &bytes, &[R::MalformedPacket], case);
        }
    });
}

/// Row 7: a QoS 1 PUBLISH that ends before its packet id (`32 07 0005 'topic'`): Malformed.
fn row_07_publish_cut_before_packet_id(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let bytes = frame(0x32, &lp(b"topic"));
        assert_eq!(
            bytes,
            [0x32, 0x07, 0x00, 0x05, b't', b'o', b'p', b'i', b'c']
        );
        closes_after_connect(
            broker.addr,
            v,
            &bytes,
            &[R::MalformedPacket],
            "QoS 1 PUBLISH without id",
        );
    });
}

/// Row 8: a SUBSCRIBE that ends right after its topic filter (no options byte): Malformed.
fn row_08_subscribe_without_options_byte(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let bytes = frame(0x82, &cat(&[&[0x12, 0x34], &props(v, &[]), &lp(b"a/b")]));
        if !v.is_v5() {
            assert_eq!(
                bytes,
                [0x82, 0x07, 0x12, 0x34, 0x00, 0x03, b'a', b'/', b'b']
            );
        }
        closes_after_connect(
            broker.addr,
            v,
            &bytes,
            &[R::MalformedPacket],
            "SUBSCRIBE without options",
        );
    });
}

/// Row 9 (5.0): malformed property blocks. A property length that overruns the packet, a
/// property id 0x00 or an unknown id, a property value cut short: Malformed Packet (spec
/// 2.2.2.2: an identifier not valid for the packet type is a Malformed Packet).
#[test]
fn row_09_malformed_property_blocks() {
    let v = ProtocolVersion::V5;
    with_bystander(v, |broker| {
        let cases: [(&str, &[u8]); 5] = [
            ("length overruns the packet", &[0x20, 0x21, 0x00, 0x0A]),
            ("id 0x00", &[0x02, 0x00, 0x01]),
            ("unknown id 0x04", &[0x02, 0x04, 0x00]),
            ("unknown two-byte id 0x80 0x01", &[0x03, 0x80, 0x01, 0x00]),
            ("session expiry cut short", &[0x03, 0x11, 0x00, 0x00]),
        ];
        for (case, block) in cases {
            // `block` is the raw property length and properties, written as is.
            let connect = frame(
                0x10,
                &cat(&[&lp(b"MQTT"), &[5, 0x02, 0x00, 0x0A], block, &lp(b"p")]),
            );
            refused_at_connect(
                broker.addr,
                v,
                &connect,
                &[R::MalformedPacket],
                &format!("CONNECT: {case}"),
            );
            let publish = frame(0x30, &cat(&[&lp(b"t"), block, b"x"]));
            closes_after_connect(
                broker.addr,
                v,
                &publish,
                &[R::MalformedPacket],
                &format!("PUBLISH: {case}"),
            );
        }
        // The example row as written: `10 10 0004 MQTT 05 02 000A 02 00 01 ...`.
        let literal = [
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x0A, 0x02, 0x00,
            0x01, 0x00, 0x01, b'p',
        ];
        refused_at_connect(
            broker.addr,
            v,
            &literal,
            &[R::MalformedPacket],
            "row 9 literal",
        );
    });
}

both_versions!(
    row_01_five_byte_variable_byte_integer,
    row_04_reserved_packet_types,
    row_05_wrong_fixed_header_flags,
    row_06_length_disagrees_with_fields,
    row_07_publish_cut_before_packet_id,
    row_08_subscribe_without_options_byte,
);

//! bad-input rows 10-18, 28, 30 and 31: CONNECT framing and flags, client ids, keep alive,
//! mutated CONNECTs and takeover storms. The 5.0 property rows (20-27, 29) are in
//! `connect_props.rs`.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;

use ringmq::codec::ReasonCode as R;
use ringmq::codec::{Packet, ProtocolVersion, QoS};

use super::common::{Client, connect_packet};
use super::{
    cat, closes_after_connect, connect_raw, connected, expect_refused_for_size, frame, lp,
    publish_raw, read_until_closed, refused_at_connect, unique_id, with_bystander,
};

/// A CONNECT with any protocol name and level (5.0 property block when the level is 5).
fn connect_named(name: &[u8], level: u8) -> Vec<u8> {
    let properties: &[u8] = if level == 5 { &[0x00] } else { &[] };
    frame(
        0x10,
        &cat(&[
            &lp(name),
            &[level, 0x02, 0x00, 0x3C],
            properties,
            &lp(b"named"),
        ]),
    )
}

/// Row 10: a wrong protocol name or level is answered with CONNACK "unsupported protocol
/// version" (3.x return code 0x01, 5.0 reason 0x84), then the connection closes
/// [MQTT-3.1.2-1], [MQTT-3.1.2-2]. Levels 2 and 6 are no level RingMQ speaks, so their
/// CONNACK is in the 3.1.1 format (as mosquitto does).
fn row_10_wrong_protocol_name_or_level(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let cases: Vec<(&str, Vec<u8>)> = if v.is_v5() {
            vec![
                ("MQTU level 5", connect_named(b"MQTU", 5)),
                ("MQIsdp level 5", connect_named(b"MQIsdp", 5)),
            ]
        } else {
            vec![
                ("MQIsdp level 4", connect_named(b"MQIsdp", 4)),
                ("MQTU level 4", connect_named(b"MQTU", 4)),
                ("MQTT level 2", connect_named(b"MQTT", 2)),
                ("MQTT level 6", connect_named(b"MQTT", 6)),
            ]
        };
        for (case, bytes) in cases {
            let mut c = Client::tcp(broker.addr, v);
            c.send_bytes(&bytes);
            let got = c.expect_closed();
            assert!(
                matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason == R::UnsupportedProtocolVersion),
                "{case}: expected CONNACK unsupported protocol version, got {got:?}"
            );
        }
    });
}

/// Row 11: the reserved CONNECT flag (bit 0) must be 0 [MQTT-3.1.2-3]; 5.0: "If the reserved
/// flag is not 0 it is a Malformed Packet".
fn row_11_reserved_connect_flag(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        for flags in [0x01, 0x03] {
            let bytes = connect_raw(v, flags, &[], &lp(b"reserved"));
            refused_at_connect(
                broker.addr,
                v,
                &bytes,
                &[R::MalformedPacket],
                &format!("flags {flags:#04x}"),
            );
        }
    });
}

/// Row 12: Will Flag = 1 but the payload ends after the client id (`10 0D 0004 MQTT 04 06
/// 000A 0001 70`): Malformed.
fn row_12_will_flag_without_will(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let bytes = connect_raw(v, 0x06, &[], &lp(b"p"));
        if !v.is_v5() {
            let mut literal = vec![
                0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00, 0x0A,
            ];
            literal.extend([0x00, 0x01, 0x70]);
            refused_at_connect(
                broker.addr,
                v,
                &literal,
                &[R::MalformedPacket],
                "row 12 literal",
            );
        }
        refused_at_connect(
            broker.addr,
            v,
            &bytes,
            &[R::MalformedPacket],
            "will flag, no will",
        );
    });
}

/// The payload of a CONNECT with a will: client id, (5.0) will properties, topic, payload.
fn will_payload(v: ProtocolVersion, client_id: &[u8], will_props: &[u8], topic: &[u8]) -> Vec<u8> {
    cat(&[
        &lp(client_id),
        &super::props(v, will_props),
        &lp(topic),
        &lp(b"gone"),
    ])
}

/// Row 13: Will QoS or Will Retain set while the Will Flag is 0 [MQTT-3.1.2-11],
/// [MQTT-3.1.2-13], and Will QoS 3 [MQTT-3.1.2-12]. 5.0 names the code only for QoS 3
/// ("A value of 3 is a Malformed Packet"); for the others it says only that the CONNECT does
/// not match the format (3.1.4: close, CONNACK 0x80 or greater optional), so 0x81 or 0x82.
fn row_13_will_qos_and_retain_without_will(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        for flags in [0x0A, 0x12, 0x22] {
            let bytes = connect_raw(v, flags, &[], &lp(b"no-will"));
            let codes = [R::MalformedPacket, R::ProtocolError];
            refused_at_connect(
                broker.addr,
                v,
                &bytes,
                &codes,
                &format!("flags {flags:#04x}"),
            );
        }
        let bytes = connect_raw(v, 0x1E, &[], &will_payload(v, b"qos3", &[], b"will/t"));
        refused_at_connect(broker.addr, v, &bytes, &[R::MalformedPacket], "will QoS 3");
    });
}

/// Row 14: Password Flag without User Name Flag is an error in 3.1.1 [MQTT-3.1.2-22] and
/// allowed in 5.0 (3.1.2.9: a password without a user name is permitted).
fn row_14_password_without_username(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let bytes = connect_raw(v, 0x42, &[], &cat(&[&lp(b"pw-only"), &lp(b"secret")]));
        let mut c = Client::tcp(broker.addr, v);
        c.send_bytes(&bytes);
        if v.is_v5() {
            match c.recv() {
                Packet::ConnAck(a) => {
                    assert_eq!(a.reason, R::Success, "5.0 accepts a password alone")
                }
                other => panic!("expected CONNACK, got {other:?}"),
            }
            c.ping();
        } else {
            let got = c.expect_closed();
            assert!(got.is_empty(), "3.1.1 closes without a packet, got {got:?}");
        }
    });
}

/// Row 15: flags promise a user name and password the payload lacks. The literal row declares
/// a remaining length of 7, which ends the CONNECT after the level byte; the second case has
/// a consistent length but no user name or password after the client id. Both Malformed.
fn row_15_flags_promise_missing_fields(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let literal = cat(&[
            &[0x10, 0x07],
            &lp(b"MQTT"),
            &[v.level(), 0xC2, 0x00, 0x3C],
            &lp(b"test-python"),
        ]);
        refused_at_connect(
            broker.addr,
            v,
            &literal,
            &[R::MalformedPacket],
            "remaining length 7",
        );
        let bytes = connect_raw(v, 0xC2, &[], &lp(b"test-python"));
        refused_at_connect(
            broker.addr,
            v,
            &bytes,
            &[R::MalformedPacket],
            "no user name or password",
        );
        let bytes = connect_raw(v, 0xC2, &[], &cat(&[&lp(b"test-python"), &lp(b"user")]));
        refused_at_connect(broker.addr, v, &bytes, &[R::MalformedPacket], "no password");
    });
}

/// Row 16: a second CONNECT on a connection is a Protocol Error [MQTT-3.1.0-2] (5.0: 0x82).
fn row_16_second_connect(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let again = connect_raw(v, 0x02, &[], &lp(b"again"));
        closes_after_connect(
            broker.addr,
            v,
            &again,
            &[R::ProtocolError],
            "second CONNECT",
        );
    });
}

/// Row 17: an empty client id needs clean session = 1 in 3.1.1: CONNACK 0x02, then close
/// [MQTT-3.1.3-8]. 5.0 lets the server assign an id (3.1.3.1) or refuse with 0x85: either
/// CONNACK Success with an Assigned Client Identifier, or CONNACK 0x85 and close.
fn row_17_empty_client_id_without_clean_session(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let bytes = connect_raw(v, 0x00, &[], &lp(b""));
        if !v.is_v5() {
            let literal = [
                0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x00, 0x00, 0x3C, 0x00, 0x00,
            ];
            assert_eq!(bytes, literal);
        }
        let mut c = Client::tcp(broker.addr, v);
        c.send_bytes(&bytes);
        let first = c.recv();
        let Packet::ConnAck(ack) = first else {
            panic!("expected CONNACK, got {first:?}")
        };
        if v.is_v5() && ack.reason == R::Success {
            let id = ack.properties.assigned_client_identifier.as_ref();
            assert!(
                id.is_some_and(|id| !id.is_empty()),
                "accepted without an assigned id: {ack:?}"
            );
            c.ping();
        } else {
            let expected = R::ClientIdentifierNotValid;
            assert_eq!(
                ack.reason, expected,
                "empty client id without clean session"
            );
            let rest = c.expect_closed();
            assert!(rest.is_empty(), "closed after the CONNACK, got {rest:?}");
        }
    });
}

/// Byte sequences that are not valid MQTT strings, or hold code points RingMQ refuses:
/// U+0000 [MQTT-1.5.4-2], surrogates and overlong or truncated UTF-8 [MQTT-1.5.4-1], control
/// characters and the non-character U+FFFF (bad-input row 18 lists them all as "Close").
const FORBIDDEN: [(&str, &[u8]); 12] = [
    ("U+0000", &[0x00]),
    ("U+D800 surrogate", &[0xED, 0xA0, 0x80]),
    ("U+0001", &[0x01]),
    ("U+001F", &[0x1F]),
    ("U+007F", &[0x7F]),
    ("U+0080", &[0xC2, 0x80]),
    ("U+009F", &[0xC2, 0x9F]),
    ("U+FFFF", &[0xEF, 0xBF, 0xBF]),
    ("overlong NUL C0 80", &[0xC0, 0x80]),
    ("overlong '/' E0 80 AF", &[0xE0, 0x80, 0xAF]),
    ("truncated E2 82", &[0xE2, 0x82]),
    ("byte FF", &[0xFF]),
];

/// Row 18: forbidden code points in the client id, user name, will topic, PUBLISH topic and
/// (5.0) a user property: Malformed, found by the decoder for every string.
fn row_18_forbidden_code_points(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        for (what, bad) in FORBIDDEN {
            let s = cat(&[b"to", bad, b"pic"]);
            let at_connect: Vec<(&str, Vec<u8>)> = vec![
                ("client id", connect_raw(v, 0x02, &[], &lp(&s))),
                (
                    "user name",
                    connect_raw(v, 0x82, &[], &cat(&[&lp(b"u"), &lp(&s)])),
                ),
                (
                    "will topic",
                    connect_raw(v, 0x06, &[], &will_payload(v, b"w", &[], &s)),
                ),
            ];
            for (field, bytes) in at_connect {
                refused_at_connect(
                    broker.addr,
                    v,
                    &bytes,
                    &[R::MalformedPacket],
                    &format!("{what} in {field}"),
                );
            }
            let publish = publish_raw(v, 0x30, &s, None, &[], b"x");
            closes_after_connect(
                broker.addr,
                v,
                &publish,
                &[R::MalformedPacket],
                &format!("{what} in topic"),
            );
            if v.is_v5() {
                let user_property = cat(&[&[0x26], &lp(&s), &lp(b"value")]);
                let connect = connect_raw(v, 0x02, &user_property, &lp(b"up"));
                let case = format!("{what} in CONNECT user property");
                refused_at_connect(broker.addr, v, &connect, &[R::MalformedPacket], &case);
                let publish = publish_raw(v, 0x30, b"t", None, &user_property, b"x");
                let case = format!("{what} in PUBLISH user property");
                closes_after_connect(broker.addr, v, &publish, &[R::MalformedPacket], &case);
            }
        }
    });
}

/// Row 28: keep alive 65535 or 0 would hold idle connections for about 27 hours or forever.
/// `limits.max_keep_alive` (3600 s) caps it: 5.0 clients asking for more, or for 0, are told
/// Server Keep Alive 3600 [MQTT-3.2.2-21]; a 3.1.1 client asking for more is refused with
/// CONNACK 0x02 (src/config.rs `max_keep_alive`). A 3.1.1 keep alive of 0 is a client's right
/// [MQTT-3.1.2-24 allows 0 = off] and the limits do not refuse it, so it is not tested here.
fn row_28_keep_alive_cap(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let mut connect = connect_packet(v, &unique_id("sleepy"), true);
        connect.keep_alive = 0xFFFF;
        if v.is_v5() {
            for keep_alive in [0xFFFF, 0] {
                connect.keep_alive = keep_alive;
                let (mut c, ack) = Client::connect_with(broker.addr, connect.clone());
                assert_eq!(ack.reason, R::Success);
                assert_eq!(
                    ack.properties.server_keep_alive,
                    Some(3600),
                    "keep alive {keep_alive}"
                );
                c.ping();
            }
        } else {
            let (mut c, ack) = Client::connect_with(broker.addr, connect);
            assert_eq!(
                ack.reason,
                R::ClientIdentifierNotValid,
                "3.1.1 keep alive 65535: CONNACK 0x02"
            );
            let rest = c.expect_closed();
            assert!(rest.is_empty(), "closed after the CONNACK, got {rest:?}");
        }
    });
}

/// A tiny deterministic generator (xorshift64) for the mutants of row 30.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Sends `bytes`, half-closes, and returns what the broker answered before closing; panics if
/// it keeps the connection open for `WAIT`.
fn answer_then_close(addr: SocketAddr, bytes: &[u8], case: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    // The broker may close before reading everything; a failed write is fine.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    read_until_closed(&mut stream).unwrap_or_else(|| panic!("{case}: connection not closed"))
}

/// Row 30: CONNECT mutants must not make the broker allocate by declared lengths, hang or
/// crash. (a) A CONNECT declaring 1 MiB (over `max_connect_size`, 64 KiB) is closed without
/// the broker waiting for the rest (see `expect_refused_for_size`). (b) Fields declaring 65535 bytes inside a
/// short packet: Malformed. (c) 300 seeded mutants of a full CONNECT (will, user name,
/// password): each answered with at most a CONNACK, then closed once the client half-closes.
fn row_30_mutated_connects(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let mut c = Client::tcp(broker.addr, v);
        let start = cat(&[
            &[0x10, 0x80, 0x80, 0x40],
            &lp(b"MQTT"),
            &[v.level(), 0x02, 0x00, 0x3C],
        ]);
        c.send_bytes(&start);
        let _ = c.try_send_bytes(&vec![0u8; 70 * 1024]);
        expect_refused_for_size(&mut c, "1 MiB CONNECT");

        let long_id = cat(&[&[0xFF, 0xFF], b"short"]);
        let long_will = cat(&[
            &lp(b"w"),
            &super::props(v, &[]),
            &lp(b"t"),
            &[0xFF, 0xFF, 0x00],
        ]);
        let long_password = cat(&[&lp(b"u"), &lp(b"user"), &[0xFF, 0xFF, 0x01]]);
        for (case, flags, payload) in [
            ("client id", 0x02, long_id),
            ("will payload", 0x06, long_will),
            ("password", 0xC2, long_password),
        ] {
            let bytes = connect_raw(v, flags, &[], &payload);
            refused_at_connect(
                broker.addr,
                v,
                &bytes,
                &[R::MalformedPacket],
                &format!("65535-byte {case}"),
            );
        }

        let will_props: &[u8] = &[0x18, 0x00, 0x00, 0x00, 0x05];
        let connect_props: &[u8] = &[0x11, 0x00, 0x00, 0x00, 0x3C, 0x21, 0x00, 0x0A];
        let payload = cat(&[
            &will_payload(
                v,
                b"mutant",
                if v.is_v5() { will_props } else { &[] },
                b"will/t",
            ),
            &lp(b"user"),
            &lp(b"password"),
        ]);
        let base = connect_raw(
            v,
            0xEE,
            if v.is_v5() { connect_props } else { &[] },
            &payload,
        );
        let mut rng = XorShift(0x5EED_0000 + u64::from(v.level()));
        for i in 0..300 {
            let mut mutant = base.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(mutant.len());
                mutant[at] = rng.next() as u8;
            }
            let answer = answer_then_close(broker.addr, &mutant, &format!("mutant {i}"));
            assert!(
                answer.is_empty() || answer[0] == 0x20,
                "mutant {i} {mutant:02x?}: only a CONNACK may come back, got {answer:02x?}"
            );
        }
    });
}

/// Row 31: 200 takeovers of one client id from 4 threads at once. Each connection gets its
/// CONNACK; afterwards exactly one connection for the id works (the last one), every earlier
/// one has been closed (5.0: after DISCONNECT 0x8E), and the broker serves others.
fn row_31_takeover_storm(v: ProtocolVersion) {
    /// Threads and connections per thread: 200 takeovers in all.
    const THREADS: usize = 4;
    const PER_THREAD: usize = 50;
    with_bystander(v, |broker| {
        let id = unique_id("flapper");
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (addr, id, barrier) = (broker.addr, id.clone(), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    (0..PER_THREAD)
                        .map(|_| {
                            let (c, ack) = Client::connect_with(addr, connect_packet(v, &id, true));
                            assert_eq!(ack.reason, R::Success, "every takeover is accepted");
                            c
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut earlier: Vec<Client> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect();
        let (mut last, ack) = Client::connect(broker.addr, v, &id, true);
        assert!(!ack.session_present);
        for (i, old) in earlier.iter_mut().enumerate() {
            let got = old.expect_closed();
            if v.is_v5() {
                assert!(
                    matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == R::SessionTakenOver),
                    "connection {i}: DISCONNECT 0x8E, got {got:?}"
                );
            } else {
                assert!(
                    got.is_empty(),
                    "connection {i}: closed without a packet, got {got:?}"
                );
            }
        }
        last.subscribe("flap/t", QoS::AtLeastOnce);
        let mut publisher = connected(broker.addr, v);
        publisher.publish("flap/t", b"to the survivor", QoS::AtLeastOnce, false);
        assert_eq!(&last.recv_publish().payload[..], b"to the survivor");
        last.ping();
    });
}

both_versions!(
    row_10_wrong_protocol_name_or_level,
    row_11_reserved_connect_flag,
    row_12_will_flag_without_will,
    row_13_will_qos_and_retain_without_will,
    row_14_password_without_username,
    row_15_flags_promise_missing_fields,
    row_16_second_connect,
    row_17_empty_client_id_without_clean_session,
    row_18_forbidden_code_points,
    row_28_keep_alive_cap,
    row_30_mutated_connects,
    row_31_takeover_storm,
);

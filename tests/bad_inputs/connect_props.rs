//! bad-input rows 20-27 and 29: MQTT 5.0 CONNECT properties (duplicates, bad values,
//! properties of other packets, authentication, will properties, user-property floods), the
//! memory cost of rejected CONNECTs, and the client's Maximum Packet Size.
//!
//! Spec 2.2.2.2 says "A Control Packet which contains an Identifier which is not valid for its
//! packet type ... is a Malformed Packet", while bad-input rows 22, 24 and 41 answer 0x82:
//! where they disagree the tests accept either code.

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use ringmq::codec::ReasonCode as R;
use ringmq::codec::{Packet, ProtocolVersion, QoS};

use super::common::{Broker, Client, connect_packet};
use super::{
    SHARDS, cat, check_bystander, closes_after_connect, connect_bystander, connect_raw, connected,
    exclusive_rss_guard, frame, lp, publish_raw, read_until_closed, refused_at_connect, rss_kib,
    subscribe_raw, unique_id, with_bystander,
};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Either code, where spec 2.2.2.2 (Malformed) and the table (Protocol Error) disagree.
const WRONG_PACKET_PROPERTY: [R; 2] = [R::MalformedPacket, R::ProtocolError];

/// A 5.0 CONNECT (clean start, client id "p") with the given property block content.
fn connect_with_props(properties: &[u8]) -> Vec<u8> {
    connect_raw(V5, 0x02, properties, &lp(b"p"))
}

/// A string property: identifier and length-prefixed value.
fn str_prop(id: u8, value: &[u8]) -> Vec<u8> {
    cat(&[&[id], &lp(value)])
}

/// Row 20: single-instance properties sent twice: "It is a Protocol Error to include the
/// <property> more than once" (3.1.2.11.x), CONNACK 0x82.
#[test]
fn row_20_duplicate_single_instance_properties() {
    with_bystander(V5, |broker| {
        let method = str_prop(0x15, b"X");
        let data = str_prop(0x16, b"d");
        let cases: [(&str, Vec<u8>); 8] = [
            ("session expiry", vec![0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1]),
            ("receive maximum", vec![0x21, 0, 10, 0x21, 0, 10]),
            (
                "maximum packet size",
                vec![0x27, 0, 0, 0x10, 0, 0x27, 0, 0, 0x10, 0],
            ),
            ("topic alias maximum", vec![0x22, 0, 10, 0x22, 0, 10]),
            ("request response information", vec![0x19, 1, 0x19, 1]),
            ("request problem information", vec![0x17, 1, 0x17, 1]),
            ("authentication method", cat(&[&method, &method])),
            ("authentication data", cat(&[&method, &data, &data])),
        ];
        for (case, properties) in cases {
            refused_at_connect(
                broker.addr,
                V5,
                &connect_with_props(&properties),
                &[R::ProtocolError],
                case,
            );
        }
        // The row's literal property block: `0A 11 00000001 11 00000001`.
        let literal = cat(&[
            &lp(b"MQTT"),
            &[
                5, 0x02, 0x00, 0x3C, 0x0A, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1,
            ],
            &lp(b"p"),
        ]);
        refused_at_connect(
            broker.addr,
            V5,
            &frame(0x10, &literal),
            &[R::ProtocolError],
            "row 20 literal",
        );
    });
}

/// Row 21: values the spec forbids: Receive Maximum 0 and Maximum Packet Size 0 (3.1.2.11.3,
/// 3.1.2.11.4: "It is a Protocol Error ... for it to have the value 0"), Request Problem /
/// Response Information other than 0 or 1 (3.1.2.11.6-7: Protocol Error). CONNACK 0x82.
#[test]
fn row_21_forbidden_property_values() {
    with_bystander(V5, |broker| {
        let cases: [(&str, &[u8]); 4] = [
            ("receive maximum 0", &[0x21, 0x00, 0x00]),
            ("maximum packet size 0", &[0x27, 0, 0, 0, 0]),
            ("request problem information 2", &[0x17, 0x02]),
            ("request response information 2", &[0x19, 0x02]),
        ];
        for (case, properties) in cases {
            refused_at_connect(
                broker.addr,
                V5,
                &connect_with_props(properties),
                &[R::ProtocolError],
                case,
            );
        }
    });
}

/// Row 22: properties that exist but not in CONNECT: 0x82 by the table, Malformed by spec
/// 2.2.2.2 (either is accepted); identifiers that exist nowhere: 0x81 (2.2.2.2).
#[test]
fn row_22_properties_not_allowed_in_connect() {
    with_bystander(V5, |broker| {
        let cases: [(&str, Vec<u8>); 10] = [
            ("maximum QoS", vec![0x24, 0x01]),
            ("retain available", vec![0x25, 0x01]),
            ("payload format indicator", vec![0x01, 0x01]),
            ("topic alias", vec![0x23, 0x00, 0x01]),
            ("subscription identifier", vec![0x0B, 0x01]),
            ("server keep alive", vec![0x13, 0x00, 0x0A]),
            ("assigned client identifier", str_prop(0x12, b"x")),
            ("reason string", str_prop(0x1F, b"x")),
            ("server reference", str_prop(0x1C, b"x")),
            ("wildcard subscription available", vec![0x28, 0x01]),
        ];
        for (case, properties) in cases {
            refused_at_connect(
                broker.addr,
                V5,
                &connect_with_props(&properties),
                &WRONG_PACKET_PROPERTY,
                case,
            );
        }
        for unknown in [0x04, 0x30, 0x7F] {
            let case = format!("unknown identifier {unknown:#04x}");
            refused_at_connect(
                broker.addr,
                V5,
                &connect_with_props(&[unknown, 0x01]),
                &[R::MalformedPacket],
                &case,
            );
        }
    });
}

/// Row 23: Authentication Data without Authentication Method is a Protocol Error
/// (3.1.2.11.10); an authentication method the server does not support gets CONNACK 0x8C
/// (the table's choice among the two [MQTT-4.12.0-1] allows).
#[test]
fn row_23_authentication_properties() {
    with_bystander(V5, |broker| {
        let data_only = connect_with_props(&[0x16, 0x00, 0x00]);
        refused_at_connect(
            broker.addr,
            V5,
            &data_only,
            &[R::ProtocolError],
            "auth data, no method",
        );
        let scram = connect_with_props(&cat(&[
            &str_prop(0x15, b"SCRAM-X"),
            &str_prop(0x16, b"n,,n=user"),
        ]));
        refused_at_connect(
            broker.addr,
            V5,
            &scram,
            &[R::BadAuthenticationMethod],
            "method SCRAM-X",
        );
    });
}

/// A 5.0 CONNECT with a will carrying `will_props`.
fn connect_with_will_props(will_props: &[u8]) -> Vec<u8> {
    connect_raw(
        V5,
        0x06,
        &[],
        &cat(&[
            &lp(b"w"),
            &super::props(V5, will_props),
            &lp(b"will/t"),
            &lp(b"x"),
        ]),
    )
}

/// Row 24: will properties of the wrong kind (0x24 Maximum QoS, 0x11 Session Expiry, 0x23
/// Topic Alias: 0x82 or 0x81, see the module comment), a duplicated Will Delay Interval and a
/// Payload Format Indicator of 2 (Protocol Errors, 3.1.3.2).
#[test]
fn row_24_invalid_will_properties() {
    with_bystander(V5, |broker| {
        for (case, will_props) in [
            ("maximum QoS", &[0x24u8, 0x01][..]),
            ("session expiry", &[0x11, 0, 0, 0, 1]),
            ("topic alias", &[0x23, 0, 1]),
        ] {
            let bytes = connect_with_will_props(will_props);
            refused_at_connect(
                broker.addr,
                V5,
                &bytes,
                &WRONG_PACKET_PROPERTY,
                &format!("will {case}"),
            );
        }
        let twice = connect_with_will_props(&[0x18, 0, 0, 0, 1, 0x18, 0, 0, 0, 1]);
        refused_at_connect(
            broker.addr,
            V5,
            &twice,
            &[R::ProtocolError],
            "will delay twice",
        );
        let pfi = connect_with_will_props(&[0x01, 0x02]);
        refused_at_connect(
            broker.addr,
            V5,
            &pfi,
            &[R::ProtocolError],
            "will payload format 2",
        );
    });
}

/// `count` user properties named `k` with the given value.
fn user_props(count: usize, value: &[u8]) -> Vec<u8> {
    cat(&[&[0x26], &lp(b"k"), &lp(value)]).repeat(count)
}

/// The row's flood: the empty pair `26 0000 0000`, 10,000 times.
fn user_prop_flood() -> Vec<u8> {
    [0x26, 0, 0, 0, 0].repeat(10_000)
}

/// Crafted CONNECTs that are each refused after the decoder has parsed a kilobyte of user
/// properties (so a leak of the parsed packet would show). From rows 20-24 and 27.
fn rejected_connects() -> Vec<Vec<u8>> {
    let bulk = user_props(60, b"0123456789abcdef");
    let tails: [&[u8]; 5] = [
        &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1],
        &[0x21, 0x00, 0x00],
        &[0x24, 0x01],
        &[0x16, 0x00, 0x00],
        &[0x26, 0x00, 0x03, b'a', b'b'],
    ];
    let mut out: Vec<Vec<u8>> = tails
        .iter()
        .map(|t| connect_with_props(&cat(&[&bulk, t])))
        .collect();
    out.push(connect_with_props(&cat(&[
        &bulk,
        &str_prop(0x15, b"SCRAM-X"),
    ])));
    out.push(connect_with_will_props(&cat(&[&bulk, &[0x24, 0x01]])));
    out
}

/// Sends `total` rejected CONNECTs from `threads` threads; returns how many were not closed.
fn reject_many(addr: std::net::SocketAddr, total: usize, threads: usize) -> usize {
    let connects = Arc::new(rejected_connects());
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (connects, next) = (Arc::clone(&connects), Arc::clone(&next));
            thread::spawn(move || {
                let mut open = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return open;
                    }
                    let mut stream = TcpStream::connect(addr).expect("connect");
                    let _ = std::io::Write::write_all(&mut stream, &connects[i % connects.len()]);
                    if read_until_closed(&mut stream).is_none() {
                        open += 1;
                    }
                }
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("thread")).sum()
}

/// Row 25: 20,000 crafted CONNECTs that are refused must not grow memory. Each carries 60
/// parsed user properties (1.3 KiB), so leaking the parsed packet of each would add about
/// 26 MiB, and leaking even a 500-byte session or buffer per connection about 10 MiB; after a
/// 2,000-connection warm-up (allocator pools, shard buffers), RSS may grow by at most 8 MiB.
#[test]
fn row_25_rejected_connects_do_not_leak() {
    let _exclusive = exclusive_rss_guard();
    let broker = Broker::start(SHARDS);
    let mut bystander = connect_bystander(&broker, V5);
    assert_eq!(
        reject_many(broker.addr, 2_000, 4),
        0,
        "every refused CONNECT is closed"
    );
    let before = rss_kib();
    assert_eq!(
        reject_many(broker.addr, 20_000, 4),
        0,
        "every refused CONNECT is closed"
    );
    let after = rss_kib();
    let growth = after.saturating_sub(before);
    eprintln!("row 25: RSS {before} -> {after} KiB");
    assert!(
        growth < 8 * 1024,
        "RSS grew by {growth} KiB over 20,000 refused CONNECTs ({before} -> {after})"
    );
    check_bystander(&broker, &mut bystander, V5);
}

/// Asserts a refusal whose code the spec leaves to the server: 5.0 DISCONNECT or CONNACK with
/// any error code (0x80 or above), then close.
fn expect_any_refusal(c: &mut Client, case: &str) {
    let got = c.expect_closed();
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason.is_error())
            || matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason.is_error()),
        "{case}: expected a refusal (code >= 0x80) then close, got {got:?}"
    );
}

/// Row 26: thousands of user properties. The spec sets no count limit, so no reason code is
/// named: RingMQ caps them at `max_user_properties` (64) and refuses more with some error code.
/// 64 are accepted, and forwarded in order [MQTT-3.3.2-18]; 10,000 empty pairs in CONNECT,
/// PUBLISH and SUBSCRIBE are refused within the harness's bounded wait.
#[test]
fn row_26_thousands_of_user_properties() {
    with_bystander(V5, |broker| {
        let mut c = Client::tcp(broker.addr, V5);
        c.send_bytes(&connect_raw(
            V5,
            0x02,
            &user_props(64, b"v"),
            &lp(&unique_id("up").into_bytes()),
        ));
        match c.recv() {
            Packet::ConnAck(a) => assert_eq!(
                a.reason,
                R::Success,
                "64 user properties are within the cap"
            ),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c.subscribe("props/t", QoS::AtMostOnce);
        let mut publisher = connected(broker.addr, V5);
        publisher.send_bytes(&publish_raw(
            V5,
            0x30,
            b"props/t",
            None,
            &user_props(64, b"v"),
            b"x",
        ));
        let got = c.recv_publish();
        assert_eq!(
            got.properties.user_properties.len(),
            64,
            "all 64 user properties forwarded"
        );

        let flood = user_prop_flood();
        let mut c = Client::tcp(broker.addr, V5);
        c.send_bytes(&connect_with_props(&flood));
        expect_any_refusal(&mut c, "CONNECT with 10,000 user properties");
        let mut c = connected(broker.addr, V5);
        c.send_bytes(&publish_raw(V5, 0x30, b"props/t", None, &flood, b"x"));
        expect_any_refusal(&mut c, "PUBLISH with 10,000 user properties");
        let mut c = connected(broker.addr, V5);
        c.send_bytes(&subscribe_raw(V5, &flood, &[(b"a/b", 0)]));
        expect_any_refusal(&mut c, "SUBSCRIBE with 10,000 user properties");
    });
}

/// Row 27: a user-property name whose length (3) overruns the property block (`26 0003 'ab'`):
/// Malformed, in CONNECT, PUBLISH and SUBSCRIBE.
#[test]
fn row_27_user_property_shorter_than_its_length() {
    with_bystander(V5, |broker| {
        let short: &[u8] = &[0x26, 0x00, 0x03, b'a', b'b'];
        refused_at_connect(
            broker.addr,
            V5,
            &connect_with_props(short),
            &[R::MalformedPacket],
            "CONNECT",
        );
        let publish = publish_raw(V5, 0x30, b"t", None, short, b"payload");
        closes_after_connect(broker.addr, V5, &publish, &[R::MalformedPacket], "PUBLISH");
        let subscribe = subscribe_raw(V5, short, &[(b"a/b", 0)]);
        closes_after_connect(
            broker.addr,
            V5,
            &subscribe,
            &[R::MalformedPacket],
            "SUBSCRIBE",
        );
    });
}

/// Row 29: a 5.0 client announcing Maximum Packet Size 64. A message that would make a larger
/// PUBLISH is discarded for it, as if sent [MQTT-3.1.2-24], [MQTT-3.1.2-25], without
/// disconnecting it; a small one is delivered, and nothing else arrives afterwards.
#[test]
fn row_29_tiny_client_maximum_packet_size() {
    with_bystander(V5, |broker| {
        let mut connect = connect_packet(V5, &unique_id("tiny"), true);
        connect.properties.maximum_packet_size = Some(64);
        let (mut tiny, ack) = Client::connect_with(broker.addr, connect);
        assert_eq!(ack.reason, R::Success);
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let topic = format!("tiny/{}", qos as u8);
            tiny.subscribe(&topic, qos);
            let mut publisher = connected(broker.addr, V5);
            publisher.publish(&topic, &[b'x'; 200], qos, false);
            publisher.publish(&topic, b"0123456789", qos, false);
            let got = tiny.recv_publish();
            assert_eq!(
                &got.payload[..],
                b"0123456789",
                "QoS {qos:?}: only the small message arrives"
            );
            tiny.expect_nothing();
            tiny.ping();
        }
    });
}

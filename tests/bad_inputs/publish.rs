//! bad-input rows 32-45: PUBLISH topics, flags, properties, sizes and retain.

use ringmq::codec::ReasonCode as R;
use ringmq::codec::{Packet, ProtocolVersion, QoS};

use super::common::{Client, QUIET, connect_packet, will};
use super::{
    cat, closes_after_connect, connect_raw, connected, expect_close, expect_refused_for_size, lp,
    props, publish_raw, refused_at_connect, unique_id, with_bystander, with_bystander_config,
};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Row 32: a zero-length topic without a Topic Alias (`30 09 0000 'payload'`). 3.1.1: topic
/// names are at least one character [MQTT-4.7.3-1], close. 5.0 names the code: "It is a
/// Protocol Error if the Topic Name is zero length and there is no Topic Alias" (3.3.2.1), so
/// 0x82 (mosquitto's 0x81 is not what the text says).
fn row_32_zero_length_topic(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let bytes = publish_raw(v, 0x30, b"", None, &[], b"payload");
        if !v.is_v5() {
            assert_eq!(bytes, cat(&[&[0x30, 0x09, 0x00, 0x00], b"payload"]));
        }
        closes_after_connect(broker.addr, v, &bytes, &[R::ProtocolError], "empty topic");
    });
}

/// Row 33: wildcards in a PUBLISH topic [MQTT-3.3.2-2]. The spec names no code: the packet
/// breaks a format rule (0x81) or a protocol rule (0x82); 0x90 is for names "correctly formed
/// but not accepted", which these are not.
fn row_33_wildcards_in_publish_topic(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        for topic in [&b"+opic"[..], b"a/#", b"#", b"a/+/b", b"a+b", b"a#"] {
            let bytes = publish_raw(v, 0x30, topic, None, &[], b"payload");
            let case = format!("topic {:?}", String::from_utf8_lossy(topic));
            closes_after_connect(
                broker.addr,
                v,
                &bytes,
                &[R::MalformedPacket, R::ProtocolError],
                &case,
            );
        }
    });
}

/// Row 34: QoS 3 (`36 0E 0005 'topic' 'payload'`): "If a Server or Client receives a PUBLISH
/// packet which has both QoS bits set to 1 it is a Malformed Packet" [MQTT-3.3.1-4].
fn row_34_publish_qos_3(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let bytes = publish_raw(v, 0x36, b"topic", None, &[], b"payload");
        closes_after_connect(broker.addr, v, &bytes, &[R::MalformedPacket], "QoS 3");
    });
}

/// Row 35: QoS 1 and 2 with packet id 0 [MQTT-2.2.1-3]; the table names 0x82 for 5.0.
fn row_35_packet_id_zero(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        for first in [0x32, 0x34] {
            let bytes = publish_raw(v, first, b"topic", Some(0), &[], b"payload");
            closes_after_connect(
                broker.addr,
                v,
                &bytes,
                &[R::ProtocolError],
                &format!("{first:#04x} id 0"),
            );
        }
    });
}

/// Row 36: DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]; no code is named (format or protocol
/// rule: 0x81 or 0x82).
fn row_36_dup_on_qos_0(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let bytes = publish_raw(v, 0x38, b"topic", None, &[], b"payload");
        closes_after_connect(
            broker.addr,
            v,
            &bytes,
            &[R::MalformedPacket, R::ProtocolError],
            "DUP on QoS 0",
        );
    });
}

/// Row 37: `$` topics. Clients never publish into `$SYS` or `$CONTROL` (the broker owns
/// them; README "`$SYS` topics"): such publishes (QoS 0 and 1) and a will to `$CONTROL/...` reach no subscriber,
/// and the publisher stays connected (as tests/publish.rs expects for QoS 0). `#` and `+` at
/// the first level never match `$` topics [MQTT-4.7.2-1]. The broker's own `$SYS` tree is
/// off here: its retained topics would reach the `$SYS/#` subscriber.
fn row_37_dollar_topics(v: ProtocolVersion) {
    with_bystander_config(
        v,
        |c| c.ops.sys_interval_secs = 0,
        |broker| {
            let (mut wild, _) = Client::connect(broker.addr, v, &unique_id("wild"), true);
            wild.subscribe("#", QoS::AtMostOnce);
            wild.subscribe("+/bar", QoS::AtMostOnce);
            let (mut sys, _) = Client::connect(broker.addr, v, &unique_id("sys"), true);
            sys.subscribe("$SYS/#", QoS::AtMostOnce);
            sys.subscribe("$CONTROL/#", QoS::AtMostOnce);
            let mut publisher = connected(broker.addr, v);
            publisher.publish("$foo/bar", b"dollar", QoS::AtMostOnce, false);
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                publisher.publish("$SYS/aedes-x/new/clients", b"forged", qos, false);
                publisher.publish("$CONTROL/x", b"forged", qos, false);
            }
            publisher.ping();
            let mut connect = connect_packet(v, &unique_id("dollar-will"), true);
            connect.will = Some(will(
                "$CONTROL/will",
                b"forged will",
                QoS::AtMostOnce,
                false,
            ));
            let (c, ack) = Client::connect_with(broker.addr, connect);
            // Refusing the CONNECT is as good as dropping the will; if accepted, drop the
            // connection abnormally so that the will is due.
            if ack.reason == R::Success {
                c.drop_connection();
            }
            wild.expect_nothing();
            sys.expect_nothing();
            publisher.publish("plain/bar", b"plain", QoS::AtMostOnce, false);
            assert_eq!(
                &wild.recv_publish().payload[..],
                b"plain",
                "wildcards still match plain topics"
            );
        },
    );
}

/// `levels` levels named `a`.
fn deep_topic(levels: usize) -> Vec<u8> {
    vec!["a"; levels].join("/").into_bytes()
}

/// Row 38: a topic with 10,000 levels (and 19,999 bytes) exceeds `max_topic_levels` (128) and
/// `max_topic_len` (4096). PUBLISH: 5.0 DISCONNECT 0x90, 3.x close. SUBSCRIBE: 5.0 SUBACK 0x8F
/// and stay connected; 3.x SUBACK 0x80, or close. 129 levels (257 bytes) are refused the same
/// way; exactly 128 levels work.
fn row_38_topic_with_huge_number_of_levels(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        for levels in [10_000, 129] {
            let topic = deep_topic(levels);
            let publish = publish_raw(v, 0x30, &topic, None, &[], b"deep");
            closes_after_connect(
                broker.addr,
                v,
                &publish,
                &[R::TopicNameInvalid],
                &format!("PUBLISH {levels} levels"),
            );
            let mut c = connected(broker.addr, v);
            c.send_bytes(&super::subscribe_raw(v, &[], &[(&topic, 0)]));
            match c.recv_within(super::common::WAIT) {
                Ok(Some(Packet::SubAck(ack))) => {
                    let expected = if v.is_v5() {
                        R::TopicFilterInvalid.code()
                    } else {
                        0x80
                    };
                    let codes: Vec<u8> = ack.reasons.iter().map(|r| r.code()).collect();
                    assert_eq!(codes, [expected], "SUBSCRIBE {levels} levels");
                    c.ping();
                }
                Err(_) if !v.is_v5() => {}
                other => panic!("SUBSCRIBE {levels} levels: expected SUBACK, got {other:?}"),
            }
        }
        let topic = String::from_utf8(deep_topic(128)).expect("ascii");
        let mut sub = connected(broker.addr, v);
        let ack = sub.subscribe(&topic, QoS::AtMostOnce);
        assert_eq!(
            ack.reasons,
            [R::GrantedQoS0],
            "128 levels are within the limit"
        );
        connected(broker.addr, v).publish(&topic, b"deep", QoS::AtLeastOnce, false);
        assert_eq!(&sub.recv_publish().payload[..], b"deep");
    });
}

/// A 5.0 PUBLISH with a Topic Alias property.
fn aliased(topic: &[u8], alias: u16, payload: &[u8]) -> Vec<u8> {
    let [hi, lo] = alias.to_be_bytes();
    publish_raw(V5, 0x30, topic, None, &[0x23, hi, lo], payload)
}

/// Row 39 (5.0): topic aliases. We advertise Topic Alias Maximum 10. An alias above it gets
/// DISCONNECT 0x94 [MQTT-3.3.2-9]. Alias 0 [MQTT-3.3.2-8] and an unknown alias with an empty
/// topic: the table says 0x94, the spec names no code for them (0x94's text covers only
/// "greater than the maximum"), and implementations answer 0x82: either is accepted.
/// Redefining an alias is legal (3.3.2.3.4: the mapping is updated). Aliases are per network
/// connection [MQTT-3.3.2-7]: a new connection of the same session does not know them.
#[test]
fn row_39_topic_alias_abuse() {
    with_bystander(V5, |broker| {
        let mut sub = connected(broker.addr, V5);
        sub.subscribe("alias/#", QoS::AtMostOnce);
        let id = unique_id("aliaser");
        let mut connect = connect_packet(V5, &id, false);
        connect.properties.session_expiry_interval = Some(60);
        let (mut c, ack) = Client::connect_with(broker.addr, connect.clone());
        assert_eq!(ack.properties.topic_alias_maximum, Some(10));
        for (bytes, topic) in [
            (aliased(b"alias/a", 1, b"1"), "alias/a"),
            (aliased(b"", 1, b"2"), "alias/a"),
            (aliased(b"alias/b", 1, b"3"), "alias/b"),
            (aliased(b"", 1, b"4"), "alias/b"),
        ] {
            c.send_bytes(&bytes);
            let got = sub.recv_publish();
            assert_eq!(got.topic.as_str(), topic, "payload {:?}", got.payload);
        }
        c.drop_connection();
        let (mut c, _) = Client::connect_with(broker.addr, connect);
        c.send_bytes(&aliased(b"", 1, b"stale"));
        expect_close(
            &mut c,
            &[R::TopicAliasInvalid, R::ProtocolError],
            "alias from the previous connection",
        );
        let cases: [(&str, Vec<u8>, &[R]); 3] = [
            (
                "alias 11 > maximum 10",
                aliased(b"alias/c", 11, b"x"),
                &[R::TopicAliasInvalid],
            ),
            (
                "alias 0",
                aliased(b"alias/c", 0, b"x"),
                &[R::TopicAliasInvalid, R::ProtocolError],
            ),
            (
                "unknown alias, empty topic",
                aliased(b"", 5, b"x"),
                &[R::TopicAliasInvalid, R::ProtocolError],
            ),
        ];
        for (case, bytes, codes) in cases {
            closes_after_connect(broker.addr, V5, &bytes, codes, case);
        }
        sub.expect_nothing();
    });
}

/// Row 40 (5.0): a Subscription Identifier in a client's PUBLISH is a Protocol Error
/// [MQTT-3.3.4-6]; one encoded in five bytes is Malformed (1.5.5).
#[test]
fn row_40_subscription_identifier_in_publish() {
    with_bystander(V5, |broker| {
        let one = publish_raw(V5, 0x30, b"t", None, &[0x0B, 0x01], b"x");
        closes_after_connect(
            broker.addr,
            V5,
            &one,
            &[R::ProtocolError],
            "subscription id 1",
        );
        let five = publish_raw(
            V5,
            0x30,
            b"t",
            None,
            &[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01],
            b"x",
        );
        closes_after_connect(
            broker.addr,
            V5,
            &five,
            &[R::MalformedPacket],
            "5-byte subscription id",
        );
    });
}

/// Row 41 (5.0): server-only properties in a client's PUBLISH (Server Reference, Session
/// Expiry Interval, Authentication Method, Assigned Client Identifier, Server Keep Alive):
/// refused (0x82 by the table, 0x81 by spec 2.2.2.2) and never forwarded.
#[test]
fn row_41_server_only_properties_in_publish() {
    with_bystander(V5, |broker| {
        let mut sub = connected(broker.addr, V5);
        sub.subscribe("server-only/t", QoS::AtMostOnce);
        let cases: [(&str, Vec<u8>); 5] = [
            ("server reference", cat(&[&[0x1C], &lp(b"elsewhere")])),
            ("session expiry", vec![0x11, 0, 0, 0, 1]),
            ("authentication method", cat(&[&[0x15], &lp(b"X")])),
            ("assigned client identifier", cat(&[&[0x12], &lp(b"x")])),
            ("server keep alive", vec![0x13, 0, 10]),
        ];
        for (case, property) in cases {
            let bytes = publish_raw(V5, 0x30, b"server-only/t", None, &property, b"x");
            closes_after_connect(
                broker.addr,
                V5,
                &bytes,
                &[R::MalformedPacket, R::ProtocolError],
                case,
            );
        }
        sub.expect_nothing();
    });
}

/// Row 42 (5.0): Payload Format Indicator 2 is a Protocol Error (table: 0x82). PFI 1 with a
/// payload that is not UTF-8: checking it is optional [MQTT-3.3.2-4 allows 0x99]: the broker
/// either forwards it (PUBACK Success), or refuses it with PUBACK 0x99 or DISCONNECT 0x99.
#[test]
fn row_42_payload_format_indicator() {
    with_bystander(V5, |broker| {
        let two = publish_raw(V5, 0x30, b"pfi/t", None, &[0x01, 0x02], b"x");
        closes_after_connect(broker.addr, V5, &two, &[R::ProtocolError], "PFI 2");
        let mut sub = connected(broker.addr, V5);
        sub.subscribe("pfi/t", QoS::AtMostOnce);
        let mut c = connected(broker.addr, V5);
        c.send_bytes(&publish_raw(
            V5,
            0x32,
            b"pfi/t",
            Some(7),
            &[0x01, 0x01],
            &[0xFF, 0xFE],
        ));
        let got = c.recv_within(super::common::WAIT);
        match got {
            Ok(Some(Packet::PubAck(a))) if a.reason == R::Success => {
                let p = sub.recv_publish();
                assert_eq!(&p.payload[..], [0xFF, 0xFE]);
                assert_eq!(
                    p.properties.payload_format_indicator,
                    Some(true),
                    "forwarded as sent"
                );
            }
            Ok(Some(Packet::PubAck(a))) if a.reason == R::PayloadFormatInvalid => {
                sub.expect_nothing()
            }
            Ok(Some(Packet::Disconnect(d))) if d.reason == R::PayloadFormatInvalid => {
                sub.expect_nothing()
            }
            other => panic!(
                "PFI 1, payload FF FE: expected PUBACK 0x00/0x99 or DISCONNECT 0x99, got {other:?}"
            ),
        }
    });
}

/// Row 43 (5.0): a Response Topic with wildcards [MQTT-3.3.2-14] or empty (it is a topic name,
/// at least one character [MQTT-4.7.3-1]): 0x82 per the table, in PUBLISH and in a will.
#[test]
fn row_43_bad_response_topic() {
    with_bystander(V5, |broker| {
        for topic in [&b"a/#"[..], b"a/+", b""] {
            let property = cat(&[&[0x08], &lp(topic)]);
            let case = format!("response topic {:?}", String::from_utf8_lossy(topic));
            let publish = publish_raw(V5, 0x30, b"t", None, &property, b"x");
            closes_after_connect(broker.addr, V5, &publish, &[R::ProtocolError], &case);
            let will_payload = cat(&[&lp(b"w"), &props(V5, &property), &lp(b"will/t"), &lp(b"x")]);
            let connect = connect_raw(V5, 0x06, &[], &will_payload);
            refused_at_connect(
                broker.addr,
                V5,
                &connect,
                &[R::ProtocolError],
                &format!("will {case}"),
            );
        }
    });
}

/// Row 44: with `max_packet_size` set to 1 KiB, a 1024-byte PUBLISH is delivered, a 1025-byte
/// one, a 4 KiB one and one declaring 256 MiB (only 1 KiB sent: the limit is checked on the
/// declared length) get 5.0 DISCONNECT 0x95 / 3.x close; a CONNECT with a 4 KiB will payload
/// is refused (see `expect_refused_for_size`). 5.0 clients are told the limit in CONNACK.
fn row_44_packet_larger_than_maximum(v: ProtocolVersion) {
    with_bystander_config(
        v,
        |c| c.limits.max_packet_size = 1024,
        |broker| {
            let mut sub = connected(broker.addr, v);
            sub.subscribe("big", QoS::AtMostOnce);
            // Fixed header 3 bytes (remaining length >= 128), topic 5, 5.0 property length 1.
            let fits = 1024 - 3 - 5 - usize::from(v.is_v5());
            let (mut c, ack) = Client::connect(broker.addr, v, &unique_id("big"), true);
            if v.is_v5() {
                assert_eq!(ack.properties.maximum_packet_size, Some(1024));
            }
            let exact = publish_raw(v, 0x30, b"big", None, &[], &vec![b'x'; fits]);
            assert_eq!(exact.len(), 1024);
            c.send_bytes(&exact);
            assert_eq!(
                sub.recv_publish().payload.len(),
                fits,
                "a 1024-byte PUBLISH is within the limit"
            );
            for (case, payload) in [("1025 bytes", fits + 1), ("4 KiB", 4096)] {
                let bytes = publish_raw(v, 0x30, b"big", None, &[], &vec![b'x'; payload]);
                closes_after_connect(broker.addr, v, &bytes, &[R::PacketTooLarge], case);
            }
            let mut c = connected(broker.addr, v);
            c.send_bytes(&cat(&[&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], &lp(b"big")]));
            let _ = c.try_send_bytes(&[b'x'; 1024]);
            expect_close(&mut c, &[R::PacketTooLarge], "declared 256 MiB");
            let will_payload = cat(&[
                &lp(b"w"),
                &props(v, &[]),
                &lp(b"will/t"),
                &lp(&[b'x'; 4096]),
            ]);
            let mut c = Client::tcp(broker.addr, v);
            c.send_bytes(&connect_raw(v, 0x06, &[], &will_payload));
            expect_refused_for_size(&mut c, "CONNECT with a 4 KiB will");
            sub.expect_nothing();
        },
    );
}

/// Row 45: retain disabled (`retain_available = false`). 5.0: CONNACK says Retain Available 0;
/// a retained PUBLISH gets DISCONNECT 0x9A [MQTT-3.3.1-... 3.2.2.3.5], a will with Will
/// Retain gets CONNACK 0x9A [MQTT-3.2.2-13]. 3.1.1 cannot be told: the broker closes the
/// connection or accepts the message without retaining it (a later subscriber gets nothing).
fn row_45_retain_when_unavailable(v: ProtocolVersion) {
    with_bystander_config(
        v,
        |c| c.limits.retain_available = false,
        |broker| {
            let retained = publish_raw(v, 0x31, b"retain/t", None, &[], b"keep me");
            let mut connect = connect_packet(v, &unique_id("retain-will"), true);
            connect.will = Some(will("retain/will", b"keep me", QoS::AtMostOnce, true));
            if v.is_v5() {
                let (_, ack) = Client::connect(broker.addr, v, &unique_id("retain"), true);
                assert_eq!(ack.properties.retain_available, Some(false));
                closes_after_connect(
                    broker.addr,
                    v,
                    &retained,
                    &[R::RetainNotSupported],
                    "retained PUBLISH",
                );
                let (mut c, ack) = Client::connect_with(broker.addr, connect);
                assert_eq!(ack.reason, R::RetainNotSupported, "will retain");
                assert!(c.expect_closed().is_empty());
                return;
            }
            let mut c = connected(broker.addr, v);
            c.send_bytes(&retained);
            match c.recv_within(QUIET) {
                Err(_) => {}
                Ok(None) => c.ping(),
                Ok(Some(p)) => panic!("retained PUBLISH (QoS 0): expected nothing, got {p:?}"),
            }
            let mut watcher = connected(broker.addr, v);
            watcher.subscribe("retain/will", QoS::AtMostOnce);
            let (c, ack) = Client::connect_with(broker.addr, connect);
            if ack.reason == R::Success {
                c.drop_connection();
                // The will is published (not retained) before the late subscriber comes.
                assert_eq!(&watcher.recv_publish().payload[..], b"keep me");
            }
            let mut late = connected(broker.addr, v);
            late.subscribe("retain/#", QoS::AtMostOnce);
            late.expect_nothing();
        },
    );
}

both_versions!(
    row_32_zero_length_topic,
    row_33_wildcards_in_publish_topic,
    row_34_publish_qos_3,
    row_35_packet_id_zero,
    row_36_dup_on_qos_0,
    row_37_dollar_topics,
    row_38_topic_with_huge_number_of_levels,
    row_44_packet_larger_than_maximum,
    row_45_retain_when_unavailable,
);

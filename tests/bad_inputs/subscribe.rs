//! bad-input rows 55-62: SUBSCRIBE and UNSUBSCRIBE. Row 60 (fuzzing SUBSCRIBE decoding and
//! handling) belongs to the fuzz targets, not to this file.

use ringmq::codec::ReasonCode as R;
use ringmq::codec::{Packet, ProtocolVersion, QoS, Subscribe, SubscriptionOptions};

use super::common::{Client, QUIET, WAIT, filter, pid};
use super::{
    cat, closes_after_connect, connected, frame, lp, props, subscribe_raw, with_bystander,
    with_bystander_config,
};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// An UNSUBSCRIBE (0xA2) with packet id 0x1234 and the given filters.
fn unsubscribe_raw(v: ProtocolVersion, filters: &[&[u8]]) -> Vec<u8> {
    let mut body = cat(&[&[0x12, 0x34], &props(v, &[])]);
    for f in filters {
        body.extend(lp(f));
    }
    frame(0xA2, &body)
}

/// Row 55: SUBSCRIBE or UNSUBSCRIBE with no filter is a Protocol Error [MQTT-3.8.3-2],
/// [MQTT-3.10.3-2] (0x82). A zero-length filter breaks [MQTT-4.7.3-1] with no code named:
/// 0x81 or 0x82.
fn row_55_no_filters_or_empty_filter(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let none = subscribe_raw(v, &[], &[]);
        if !v.is_v5() {
            assert_eq!(none, [0x82, 0x02, 0x12, 0x34]);
        }
        closes_after_connect(
            broker.addr,
            v,
            &none,
            &[R::ProtocolError],
            "SUBSCRIBE without filters",
        );
        let unsub_none = unsubscribe_raw(v, &[]);
        closes_after_connect(
            broker.addr,
            v,
            &unsub_none,
            &[R::ProtocolError],
            "UNSUBSCRIBE without filters",
        );
        let either = [R::MalformedPacket, R::ProtocolError];
        let empty = subscribe_raw(v, &[], &[(b"", 0)]);
        closes_after_connect(
            broker.addr,
            v,
            &empty,
            &either,
            "SUBSCRIBE zero-length filter",
        );
        let unsub_empty = unsubscribe_raw(v, &[b""]);
        closes_after_connect(
            broker.addr,
            v,
            &unsub_empty,
            &either,
            "UNSUBSCRIBE zero-length filter",
        );
    });
}

/// Row 56: subscription options. 3.1.1: any reserved bit (bits 2-7) or QoS 3 is malformed
/// [MQTT-3.8.3-4], close. 5.0: reserved bits 6-7 are malformed [MQTT-3.8.3-5] (0x81); QoS 3
/// and Retain Handling 3 are Protocol Errors (3.8.3.1: "It is a Protocol Error if the Maximum
/// QoS field has the value 3", "... to send a Retain Handling value of 3").
fn row_56_reserved_subscription_option_bits(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let cases: Vec<(u8, R)> = if v.is_v5() {
            vec![
                (0x40, R::MalformedPacket),
                (0x80, R::MalformedPacket),
                (0xC0, R::MalformedPacket),
                (0x03, R::ProtocolError),
                (0x30, R::ProtocolError),
            ]
        } else {
            [0x04, 0x08, 0x30, 0x40, 0x80, 0xC0, 0x03]
                .map(|o| (o, R::MalformedPacket))
                .to_vec()
        };
        for (options, code) in cases {
            let bytes = subscribe_raw(v, &[], &[(b"a/b", options)]);
            closes_after_connect(
                broker.addr,
                v,
                &bytes,
                &[code],
                &format!("options {options:#04x}"),
            );
        }
    });
}

/// Row 57: malformed shared subscriptions: empty or wildcard share name, no filter after the
/// share name [MQTT-4.8.2-1], [MQTT-4.8.2-2] (the table: 0x82); a shared subscription with No
/// Local is a Protocol Error [MQTT-3.8.3-4] (5.0 only: in 3.1.1 bit 2 is reserved, row 56).
/// 3.1.1 has no Protocol Error code: SUBACK 0x80, or close.
fn row_57_malformed_shared_subscriptions(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        for f in [
            &b"$share/p/"[..],
            b"$share//t",
            b"$share/p",
            b"$share/+/t",
            b"$share/#/t",
        ] {
            let case = format!("filter {:?}", String::from_utf8_lossy(f));
            let bytes = subscribe_raw(v, &[], &[(f, 0)]);
            if v.is_v5() {
                closes_after_connect(broker.addr, v, &bytes, &[R::ProtocolError], &case);
                continue;
            }
            let mut c = connected(broker.addr, v);
            c.send_bytes(&bytes);
            match c.recv_within(WAIT) {
                Ok(Some(Packet::SubAck(a))) => {
                    assert_eq!(
                        a.reasons.iter().map(|r| r.code()).collect::<Vec<_>>(),
                        [0x80],
                        "{case}"
                    );
                }
                Err(_) => {}
                other => panic!("{case}: expected SUBACK 0x80 or close, got {other:?}"),
            }
        }
        if v.is_v5() {
            let literal = [0x82, 0x0F, 0x12, 0x34, 0x00, 0x00, 0x09];
            let literal = cat(&[&literal, b"$share/p/", &[0x00]]);
            closes_after_connect(
                broker.addr,
                v,
                &literal,
                &[R::ProtocolError],
                "row 57 literal",
            );
            let no_local = subscribe_raw(v, &[], &[(b"$share/g/t", 0x04)]);
            closes_after_connect(
                broker.addr,
                v,
                &no_local,
                &[R::ProtocolError],
                "shared + no local",
            );
        }
    });
}

/// Receives publishes until `QUIET` passes with none; returns their payloads.
fn drain(c: &mut Client) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Ok(Some(p)) = c.recv_within(QUIET) {
        match p {
            Packet::Publish(p) => {
                c.ack(&p);
                got.push(p.payload.to_vec());
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    got
}

/// Row 58: a shared and a normal subscription to the same filter, then unsubscribing one:
/// each keeps working alone. While both exist the client gets the message once or twice
/// (they are separate subscriptions, 4.8.2); after UNSUBSCRIBE `test`, once (shared); after
/// UNSUBSCRIBE of the shared one, never.
fn row_58_shared_and_normal_same_filter(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let mut c = connected(broker.addr, v);
        c.subscribe("$share/sharename/test", QoS::AtMostOnce);
        c.subscribe("test", QoS::AtMostOnce);
        let mut publisher = connected(broker.addr, v);
        publisher.publish("test", b"both", QoS::AtLeastOnce, false);
        let n = drain(&mut c).len();
        assert!((1..=2).contains(&n), "both subscriptions: got {n} copies");
        c.unsubscribe("test");
        publisher.publish("test", b"shared", QoS::AtLeastOnce, false);
        assert_eq!(drain(&mut c), [b"shared".to_vec()]);
        c.unsubscribe("$share/sharename/test");
        publisher.publish("test", b"none", QoS::AtLeastOnce, false);
        assert!(drain(&mut c).is_empty());
        c.ping();
    });
}

/// Row 59: SUBSCRIBE three filters in one packet, UNSUBSCRIBE the first, SUBSCRIBE the third
/// again (the sequence that crashed a broker): routing follows exactly.
fn row_59_subscribe_unsubscribe_ordering(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let mut c = connected(broker.addr, v);
        let options = SubscriptionOptions {
            qos: QoS::AtMostOnce,
            ..SubscriptionOptions::default()
        };
        let id = pid(c.next_packet_id());
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: id,
            filters: ["drash/1/#", "erash/2/#", "crash/3/#"]
                .map(|f| (filter(f), options))
                .to_vec(),
            properties: Default::default(),
        }));
        match c.recv() {
            Packet::SubAck(a) => assert_eq!(a.reasons, [R::GrantedQoS0; 3]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        c.unsubscribe("drash/1/#");
        c.subscribe("crash/3/#", QoS::AtMostOnce);
        let mut publisher = connected(broker.addr, v);
        for topic in ["drash/1/x", "erash/2/x", "crash/3/x"] {
            publisher.publish(topic, topic.as_bytes(), QoS::AtLeastOnce, false);
        }
        assert_eq!(
            drain(&mut c),
            [b"erash/2/x".to_vec(), b"crash/3/x".to_vec()]
        );
    });
}

/// Row 61: subscription floods. With `max_subscriptions` = 20, filters 1-20 are granted, the
/// 21st gets SUBACK 0x97 "Quota exceeded" (3.x: 0x80) and the connection stays; subscribing to
/// an existing filter again replaces it and is granted; after freeing a slot, 500 pipelined
/// SUBSCRIBE/UNSUBSCRIBE pairs are all answered.
fn row_61_subscription_flood(v: ProtocolVersion) {
    with_bystander_config(
        v,
        |c| c.limits.max_subscriptions = 20,
        |broker| {
            let mut c = connected(broker.addr, v);
            for i in 0..20 {
                assert_eq!(
                    c.subscribe(&format!("flood/{i}"), QoS::AtMostOnce).reasons,
                    [R::GrantedQoS0]
                );
            }
            let refused = c.subscribe("flood/20", QoS::AtMostOnce);
            let expected = if v.is_v5() {
                R::QuotaExceeded.code()
            } else {
                0x80
            };
            assert_eq!(
                refused.reasons.iter().map(|r| r.code()).collect::<Vec<_>>(),
                [expected]
            );
            assert_eq!(
                c.subscribe("flood/0", QoS::AtLeastOnce).reasons,
                [R::GrantedQoS1],
                "replacement"
            );
            c.unsubscribe("flood/0");
            let mut burst = Vec::new();
            for i in 0..500u16 {
                burst.extend(frame(
                    0x82,
                    &cat(&[
                        &(2 * i + 1).to_be_bytes(),
                        &props(v, &[]),
                        &lp(b"churn"),
                        &[0],
                    ]),
                ));
                burst.extend(frame(
                    0xA2,
                    &cat(&[&(2 * i + 2).to_be_bytes(), &props(v, &[]), &lp(b"churn")]),
                ));
            }
            c.send_bytes(&burst);
            for i in 0..500u16 {
                match c.recv() {
                    Packet::SubAck(a) => assert_eq!(
                        (a.packet_id.get(), a.reasons.as_slice()),
                        (2 * i + 1, &[R::GrantedQoS0][..])
                    ),
                    other => panic!("pair {i}: expected SUBACK, got {other:?}"),
                }
                match c.recv() {
                    Packet::UnsubAck(a) => assert_eq!(a.packet_id.get(), 2 * i + 2),
                    other => panic!("pair {i}: expected UNSUBACK, got {other:?}"),
                }
            }
            c.ping();
        },
    );
}

/// Row 62 (5.0): Subscription Identifier 0 is a Protocol Error (3.8.2.1.2); one encoded in 5
/// bytes (`0B 8080808001`) is Malformed (1.5.5). The largest, 268,435,455, is granted.
#[test]
fn row_62_subscription_identifier_out_of_range() {
    with_bystander(V5, |broker| {
        let zero = subscribe_raw(V5, &[0x0B, 0x00], &[(b"a/b", 0)]);
        closes_after_connect(
            broker.addr,
            V5,
            &zero,
            &[R::ProtocolError],
            "subscription id 0",
        );
        let five = subscribe_raw(V5, &[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01], &[(b"a/b", 0)]);
        closes_after_connect(
            broker.addr,
            V5,
            &five,
            &[R::MalformedPacket],
            "5-byte subscription id",
        );
        let mut c = connected(broker.addr, V5);
        let ack = c.subscribe_with("a/b", SubscriptionOptions::default(), Some(268_435_455));
        assert_eq!(ack.reasons, [R::GrantedQoS0]);
    });
}

both_versions!(
    row_55_no_filters_or_empty_filter,
    row_56_reserved_subscription_option_bits,
    row_57_malformed_shared_subscriptions,
    row_58_shared_and_normal_same_filter,
    row_59_subscribe_unsubscribe_ordering,
    row_61_subscription_flood,
);

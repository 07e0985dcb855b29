//! Rows 46-53 of `docs/bad-inputs.md`: QoS 2 flows, packet ids and the Receive Maximum.
//! Row 54 (inbound QoS 2 state committed before it is acknowledged) needs a store and a
//! restart: `tests/persistence/` covers it.

use ringmq::codec::ReasonCode as R;
use ringmq::codec::{Ack, Packet, ProtocolVersion, QoS};

use super::common::{Broker, Client, pid, publish};
use super::{
    SHARDS, check_bystander, closes_after_connect, connect_bystander, connected, expect_close,
    shared_rss_guard, unique_id, with_bystander, with_bystander_config,
};

/// Sends a QoS 2 PUBLISH on `qos2/t`.
fn send_qos2(c: &mut Client, id: u16, payload: &[u8], dup: bool) {
    let mut p = publish("qos2/t", payload, QoS::ExactlyOnce, Some(id));
    p.dup = dup;
    c.send(&Packet::Publish(p));
}

/// Receives the next packet and asserts it is `kind` (PUBREC, PUBCOMP...) for `id`.
fn expect_ack(c: &mut Client, kind: &str, id: u16) -> Ack {
    let got = c.recv();
    let ack = match (&got, kind) {
        (Packet::PubAck(a), "PUBACK")
        | (Packet::PubRec(a), "PUBREC")
        | (Packet::PubRel(a), "PUBREL")
        | (Packet::PubComp(a), "PUBCOMP") => a.clone(),
        _ => panic!("expected {kind} {id}, got {got:?}"),
    };
    assert_eq!(ack.packet_id.get(), id, "{kind} for the right id");
    ack
}

/// Sends PUBREL `id` and expects PUBCOMP `id` (Success).
fn release(c: &mut Client, id: u16) {
    c.send(&Packet::PubRel(Ack::new(pid(id))));
    let comp = expect_ack(c, "PUBCOMP", id);
    assert_eq!(comp.reason, R::Success, "PUBCOMP for a known id");
}

/// A subscriber on `qos2/t` (QoS 0, so deliveries are simply counted).
fn qos2_subscriber(broker: &Broker, v: ProtocolVersion) -> Client {
    let mut sub = connected(broker.addr, v);
    sub.subscribe("qos2/t", QoS::AtMostOnce);
    sub
}

/// Row 46: QoS 2 PUBLISHes never released. The same id repeated is one message: each copy gets
/// PUBREC and it is routed once [MQTT-4.3.3-... "MUST NOT cause duplicate messages to be
/// delivered"]. Distinct unreleased ids are bounded: they count against our Receive Maximum
/// (32) until PUBCOMP [MQTT-3.3.4-9], so the 33rd gets 5.0 DISCONNECT 0x93 / 3.x close. The
/// Receive Maximum (32) is below `max_awaiting_rel` (100), so it is the bound that trips.
fn row_46_qos2_pubrel_starvation(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let mut sub = qos2_subscriber(broker, v);
        let mut c = connected(broker.addr, v);
        for _ in 0..5 {
            send_qos2(&mut c, 1, b"once", false);
            expect_ack(&mut c, "PUBREC", 1);
        }
        release(&mut c, 1);
        assert_eq!(&sub.recv_publish().payload[..], b"once");
        sub.expect_nothing();
        for id in 1..=32 {
            send_qos2(&mut c, id, b"unreleased", false);
            expect_ack(&mut c, "PUBREC", id);
        }
        send_qos2(&mut c, 33, b"one too many", false);
        expect_close(
            &mut c,
            &[R::ReceiveMaximumExceeded],
            "33rd unreleased QoS 2 message",
        );
    });
}

/// Row 47: a QoS 2 DUP retry after the broker's awaiting-PUBREL state is gone. RingMQ keeps
/// awaiting-PUBREL ids until PUBREL (there is no expiry timer) and stores them with a
/// persistent session (`tests/persistence/` restarts the broker between PUBLISH and PUBREL).
/// What is testable here: once an id has been released (PUBREL/PUBCOMP), a DUP PUBLISH with
/// that id is a new message [MQTT-4.3.3-... the id is free after PUBCOMP]: PUBREC again, and
/// it is delivered again.
fn row_47_dup_retry_after_release(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let mut sub = qos2_subscriber(broker, v);
        let mut c = connected(broker.addr, v);
        send_qos2(&mut c, 7, b"first", false);
        expect_ack(&mut c, "PUBREC", 7);
        release(&mut c, 7);
        assert_eq!(&sub.recv_publish().payload[..], b"first");
        send_qos2(&mut c, 7, b"retry", true);
        expect_ack(&mut c, "PUBREC", 7);
        release(&mut c, 7);
        assert_eq!(
            &sub.recv_publish().payload[..],
            b"retry",
            "the released id starts a new message"
        );
        sub.expect_nothing();
    });
}

/// Row 48: PUBREL for an id the broker does not know (`62 02 0001`): answer PUBCOMP and stay
/// connected [MQTT-4.3.3-... the receiver MUST respond to PUBREL with PUBCOMP]. 5.0 names the
/// code: PUBCOMP 0x92 "Packet Identifier not found" (3.7.2.1).
fn row_48_unsolicited_pubrel(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let mut c = connected(broker.addr, v);
        c.send_bytes(&[0x62, 0x02, 0x00, 0x01]);
        let comp = expect_ack(&mut c, "PUBCOMP", 1);
        let expected = if v.is_v5() {
            R::PacketIdentifierNotFound
        } else {
            R::Success
        };
        assert_eq!(comp.reason, expected);
        c.ping();
    });
}

/// Row 49: 5.0 PUBREL with reason code 0xFF, which PUBREL cannot carry (`62 04 0001 FF 00`):
/// the table says 0x82. In 3.1.1 the same bytes are a PUBREL longer than 2 bytes: close.
fn row_49_pubrel_unknown_reason_code(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let bytes = [0x62, 0x04, 0x00, 0x01, 0xFF, 0x00];
        closes_after_connect(broker.addr, v, &bytes, &[R::ProtocolError], "PUBREL 0xFF");
    });
}

/// What a wrong acknowledgement led to.
#[derive(Debug, PartialEq, Eq)]
enum WrongAck {
    /// DISCONNECT 0x82, then close (5.0).
    Disconnected,
    /// Closed without a packet.
    Closed,
    /// Nothing happened; the connection still answers PINGREQ.
    Ignored,
}

/// Delivers one message at `qos` to a fresh subscriber, lets `misbehave` answer it wrongly,
/// and reports what the broker did.
fn wrong_ack_case(
    broker: &Broker,
    v: ProtocolVersion,
    qos: QoS,
    misbehave: fn(&mut Client, u16),
) -> WrongAck {
    let topic = unique_id("flow");
    let mut sub = connected(broker.addr, v);
    sub.subscribe(&topic, qos);
    connected(broker.addr, v).publish(&topic, b"flow", qos, false);
    let p = match sub.recv() {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    assert_eq!(p.qos, qos);
    misbehave(&mut sub, p.packet_id.expect("QoS > 0 has an id").get());
    match sub.recv_within(super::common::QUIET) {
        Err(_) => WrongAck::Closed,
        Ok(Some(Packet::Disconnect(d))) if d.reason == R::ProtocolError => {
            let rest = sub.expect_closed();
            assert!(rest.is_empty(), "closed after the DISCONNECT, got {rest:?}");
            WrongAck::Disconnected
        }
        Ok(None) => {
            sub.ping();
            WrongAck::Ignored
        }
        Ok(Some(other)) => panic!("wrong acknowledgement answered with {other:?}"),
    }
}

/// Row 50: the wrong acknowledgement for the flow: QoS 1 answered with PUBREC, QoS 2 with
/// PUBACK, and PUBREC -> PUBREL answered with PUBACK. 5.0: DISCONNECT 0x82 (the table); 3.x:
/// close or ignore, the same way in all three cases.
fn row_50_wrong_ack_for_the_flow(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let outcomes = [
            wrong_ack_case(broker, v, QoS::AtLeastOnce, |c, id| {
                c.send(&Packet::PubRec(Ack::new(pid(id))))
            }),
            wrong_ack_case(broker, v, QoS::ExactlyOnce, |c, id| {
                c.send(&Packet::PubAck(Ack::new(pid(id))))
            }),
            wrong_ack_case(broker, v, QoS::ExactlyOnce, |c, id| {
                c.send(&Packet::PubRec(Ack::new(pid(id))));
                expect_ack(c, "PUBREL", id);
                c.send(&Packet::PubAck(Ack::new(pid(id))));
            }),
        ];
        if v.is_v5() {
            let all = outcomes.iter().all(|o| *o == WrongAck::Disconnected);
            assert!(all, "5.0: DISCONNECT 0x82 each time, got {outcomes:?}");
        } else {
            let consistent =
                outcomes.iter().all(|o| *o == outcomes[0]) && outcomes[0] != WrongAck::Disconnected;
            assert!(
                consistent,
                "3.x: close or ignore, consistently: {outcomes:?}"
            );
        }
    });
}

/// Row 51: PUBREC repeated during our outbound QoS 2 flow: the broker sends PUBREL again
/// (the sender "MUST send a PUBREL packet when it receives a PUBREC packet", 4.3.3), then
/// completes on PUBCOMP and sends nothing more.
fn row_51_duplicate_pubrec(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let mut sub = connected(broker.addr, v);
        sub.subscribe("dup-rec/t", QoS::ExactlyOnce);
        connected(broker.addr, v).publish("dup-rec/t", b"x", QoS::ExactlyOnce, false);
        let p = match sub.recv() {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        };
        let id = p.packet_id.expect("QoS 2 has an id").get();
        for _ in 0..2 {
            sub.send(&Packet::PubRec(Ack::new(pid(id))));
            expect_ack(&mut sub, "PUBREL", id);
        }
        sub.send(&Packet::PubComp(Ack::new(pid(id))));
        sub.expect_nothing();
        sub.ping();
    });
}

/// Row 52: more unreleased inbound QoS 2 messages than the Receive Maximum we advertised (set
/// to 10 here). 5.0 clients are told 10; ids 1-10 get PUBREC; releasing one frees its slot
/// (the quota counts until PUBCOMP [MQTT-3.3.4-9]); the next over the limit gets DISCONNECT
/// 0x93 [MQTT-3.3.4-8], 3.x close. With `receive_maximum_log_only` it is only logged.
/// (QoS 1 publishes are acknowledged at once, so only QoS 2 can hold slots from outside.)
fn row_52_receive_maximum_exceeded(v: ProtocolVersion) {
    with_bystander_config(
        v,
        |c| c.limits.receive_maximum = 10,
        |broker| {
            let (mut c, ack) = Client::connect(broker.addr, v, &unique_id("eager"), true);
            if v.is_v5() {
                assert_eq!(ack.properties.receive_maximum, Some(10));
            }
            for id in 1..=10 {
                send_qos2(&mut c, id, b"x", false);
                expect_ack(&mut c, "PUBREC", id);
            }
            release(&mut c, 1);
            send_qos2(&mut c, 11, b"x", false);
            expect_ack(&mut c, "PUBREC", 11);
            send_qos2(&mut c, 12, b"x", false);
            expect_close(
                &mut c,
                &[R::ReceiveMaximumExceeded],
                "11 unreleased with Receive Maximum 10",
            );
        },
    );
    let _guard = shared_rss_guard();
    let broker = Broker::start_with(SHARDS, |c| {
        c.limits.receive_maximum = 10;
        c.limits.receive_maximum_log_only = true;
    });
    let mut bystander = connect_bystander(&broker, v);
    let mut c = connected(broker.addr, v);
    for id in 1..=11 {
        send_qos2(&mut c, id, b"x", false);
        expect_ack(&mut c, "PUBREC", id);
    }
    c.ping();
    check_bystander(&broker, &mut bystander, v);
}

/// Row 53: a packet id reused while its QoS 2 message awaits PUBREL is the same message
/// [MQTT-4.3.3-... "MUST NOT cause duplicate messages"], even without DUP and with another
/// payload: PUBREC again, and only the first is delivered.
fn row_53_packet_id_reused_in_flight(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let mut sub = qos2_subscriber(broker, v);
        let mut c = connected(broker.addr, v);
        send_qos2(&mut c, 5, b"first", false);
        expect_ack(&mut c, "PUBREC", 5);
        send_qos2(&mut c, 5, b"second", false);
        expect_ack(&mut c, "PUBREC", 5);
        release(&mut c, 5);
        assert_eq!(&sub.recv_publish().payload[..], b"first");
        sub.expect_nothing();
    });
}

both_versions!(
    row_46_qos2_pubrel_starvation,
    row_47_dup_retry_after_release,
    row_48_unsolicited_pubrel,
    row_49_pubrel_unknown_reason_code,
    row_50_wrong_ack_for_the_flow,
    row_51_duplicate_pubrec,
    row_52_receive_maximum_exceeded,
    row_53_packet_id_reused_in_flight,
);

//! Outbound delivery: QoS and RETAIN per delivery, packet ids, the inflight window, the
//! queue and its bounds, acknowledgements from the client, Maximum Packet Size, expiry,
//! resend on resume.

use super::*;

fn persistent(v: ProtocolVersion) -> Connect {
    let mut c = connect_packet(v, "c1", false);
    if v.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

#[test]
fn delivery_qos_is_the_minimum_and_ids_are_allocated() {
    let mut h = Harness::v5();
    h.deliver(&message("t", QoS::ExactlyOnce), &live(QoS::AtLeastOnce));
    h.deliver(&message("t", QoS::AtLeastOnce), &live(QoS::ExactlyOnce));
    h.deliver(&message("t", QoS::ExactlyOnce), &live(QoS::AtMostOnce));
    let packets = h.packets();
    let p = publishes(&packets);
    assert_eq!(
        p.iter().map(|p| (p.qos, p.packet_id)).collect::<Vec<_>>(),
        [
            (QoS::AtLeastOnce, Some(pid(1))),
            (QoS::AtLeastOnce, Some(pid(2))),
            (QoS::AtMostOnce, None),
        ]
    );
    assert!(p.iter().all(|p| !p.dup && p.topic == topic("t")));
    assert_eq!(h.s.data().inflight.len(), 2);
}

#[test]
fn retain_flag_follows_retain_as_published_and_retained_store() {
    // [MQTT-3.3.1-9], [MQTT-3.3.1-12], [MQTT-3.3.1-13].
    let mut h = Harness::v5();
    let mut m = (*message("t", QoS::AtMostOnce)).clone();
    m.retain = true;
    let m = Arc::new(m);
    let rap = Delivery {
        retain_as_published: true,
        ..live(QoS::AtMostOnce)
    };
    let stored = Delivery {
        from_retained_store: true,
        ..live(QoS::AtMostOnce)
    };
    h.deliver(&m, &live(QoS::AtMostOnce));
    h.deliver(&m, &rap);
    h.deliver(&m, &stored);
    h.deliver(&message("t", QoS::AtMostOnce), &stored);
    let packets = h.packets();
    let flags: Vec<bool> = publishes(&packets).iter().map(|p| p.retain).collect();
    assert_eq!(flags, [false, true, true, false]);
}

#[test]
fn subscription_ids_and_remaining_expiry_are_per_delivery() {
    let mut h = Harness::v5();
    let mut m = (*message("t", QoS::AtMostOnce)).clone();
    m.properties.message_expiry_interval = Some(10);
    m.expires_at_ms = Some(h.now + 10_000);
    let m = Arc::new(m);
    h.now += 2_500;
    let d = Delivery {
        subscription_ids: &[4, 9],
        ..live(QoS::AtMostOnce)
    };
    h.deliver(&m, &d);
    let packets = h.packets();
    let p = publishes(&packets)[0];
    assert_eq!(p.properties.subscription_identifiers, [4, 9]);
    // 7.5 s remain: rounded up so an unexpired message never says 0 [MQTT-3.3.2-6].
    assert_eq!(p.properties.message_expiry_interval, Some(8));
    h.now += 7_500;
    h.deliver(&m, &d);
    assert!(h.packets().is_empty());
    assert_eq!(h.s.stats().dropped_expired, 1);
}

#[test]
fn puback_frees_the_window_and_drains_the_queue() {
    let limits = Limits {
        max_inflight: 2,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V311, "c1", true));
    for _ in 0..4 {
        h.deliver(&message("t", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    }
    assert_eq!(h.packets().len(), 2);
    assert_eq!(h.s.data().queue.len(), 2);
    // A QoS 0 message waits behind queued QoS 1 messages: one publisher's order is kept
    // across QoS levels.
    h.deliver(&message("q0", QoS::AtMostOnce), &live(QoS::AtMostOnce));
    assert!(h.packets().is_empty());
    assert_eq!(h.s.data().queue.len(), 3);
    h.packet(Packet::PubAck(ack(1)));
    let packets = h.packets();
    let p = publishes(&packets);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].packet_id, Some(pid(3)));
    h.packet(Packet::PubAck(ack(2)));
    let packets = h.packets();
    let p = publishes(&packets);
    assert_eq!(
        p.len(),
        2,
        "the last QoS 1 message, then the QoS 0 one behind it"
    );
    assert_eq!(p[0].packet_id, Some(pid(4)));
    assert_eq!((p[1].topic.as_str(), p[1].packet_id), ("q0", None));
    h.packet(Packet::PubAck(ack(3)));
    assert!(h.packets().is_empty());
    assert!(h.s.data().queue.is_empty());
    assert_eq!(h.s.data().inflight.len(), 1);
    // With nothing queued, QoS 0 is not held back by a full window.
    h.deliver(&message("t", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    assert_eq!(h.s.data().inflight.len(), 2);
    h.deliver(&message("q0", QoS::AtMostOnce), &live(QoS::AtMostOnce));
    let packets = h.packets();
    let p = publishes(&packets);
    assert_eq!(p.len(), 2);
    assert_eq!(p[1].packet_id, None);
}

#[test]
fn outbound_load_has_a_band_between_full_and_spare() {
    let limits = Limits {
        max_inflight: 4,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V311, "c1", true));
    let q1 = || message("t", QoS::AtLeastOnce);
    let mut loads = vec![h.s.outbound_load()];
    for _ in 0..5 {
        h.deliver(&q1(), &live(QoS::AtLeastOnce));
        loads.push(h.s.outbound_load());
    }
    use OutboundLoad::{Between, Full, Spare};
    // 0, 1, 2 in flight: spare; 3: between; 4: full; 4 + 1 queued: full.
    assert_eq!(loads, [Spare, Spare, Spare, Between, Full, Full]);
    let mut loads = Vec::new();
    for id in 1..=4 {
        h.packet(Packet::PubAck(ack(id)));
        loads.push(h.s.outbound_load());
    }
    // The queued one takes the freed slot (4 in flight), then 3, 2, 1.
    assert_eq!(loads, [Full, Between, Spare, Spare]);
    h.lost();
    assert_eq!(h.s.outbound_load(), Full, "no connection, no room");
}

#[test]
fn client_receive_maximum_caps_the_window() {
    // [MQTT-3.3.4-7..9].
    let mut c = connect_packet(ProtocolVersion::V5, "c1", true);
    c.properties.receive_maximum = Some(1);
    let mut h = Harness::connected(Limits::default(), c);
    h.deliver(&message("t", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    h.deliver(&message("t", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    assert_eq!(h.packets().len(), 1);
    assert_eq!(h.s.data().queue.len(), 1);
}

#[test]
fn qos2_outbound_flow_and_duplicate_pubrec() {
    let mut h = Harness::v5();
    h.deliver(&message("t", QoS::ExactlyOnce), &live(QoS::ExactlyOnce));
    h.take();
    h.packet(Packet::PubRec(ack(1)));
    assert_eq!(h.packets(), vec![Packet::PubRel(ack(1))]);
    // bad input #51: PUBREC again -> PUBREL again.
    h.packet(Packet::PubRec(ack(1)));
    assert_eq!(h.packets(), vec![Packet::PubRel(ack(1))]);
    assert_eq!(
        h.s.data().inflight,
        [Outbound::Released {
            packet_id: pid(1),
            seq: 0
        }]
    );
    h.packet(Packet::PubComp(ack(1)));
    assert!(h.packets().is_empty());
    assert!(h.s.data().inflight.is_empty());
}

#[test]
fn pubrec_with_error_code_ends_the_flow() {
    let mut h = Harness::v5();
    h.deliver(&message("t", QoS::ExactlyOnce), &live(QoS::ExactlyOnce));
    h.take();
    h.packet(Packet::PubRec(ack_with(1, ReasonCode::QuotaExceeded)));
    assert!(h.packets().is_empty());
    assert!(h.s.data().inflight.is_empty());
}

#[test]
fn wrong_ack_for_the_flow_is_a_protocol_error() {
    // bad input #50: QoS 1 answered with PUBREC or PUBCOMP; QoS 2 with PUBACK or an early
    // PUBCOMP; PUBREC -> PUBREL -> PUBACK.
    let cases: [(QoS, Vec<Packet>); 5] = [
        (QoS::AtLeastOnce, vec![Packet::PubRec(ack(1))]),
        (QoS::AtLeastOnce, vec![Packet::PubComp(ack(1))]),
        (QoS::ExactlyOnce, vec![Packet::PubAck(ack(1))]),
        (QoS::ExactlyOnce, vec![Packet::PubComp(ack(1))]),
        (
            QoS::ExactlyOnce,
            vec![Packet::PubRec(ack(1)), Packet::PubAck(ack(1))],
        ),
    ];
    for (qos, acks) in cases {
        for v in [ProtocolVersion::V5, ProtocolVersion::V311] {
            let mut h = Harness::connected(Limits::default(), connect_packet(v, "c1", true));
            h.deliver(&message("t", qos), &live(qos));
            h.take();
            for a in acks.clone() {
                h.packet(a);
            }
            let (packets, actions) = h.take();
            let last = packets.last().cloned();
            if v.is_v5() {
                assert_eq!(
                    last,
                    Some(disconnect(ReasonCode::ProtocolError)),
                    "{acks:?}"
                );
            } else {
                assert!(!matches!(last, Some(Packet::Disconnect(_))));
            }
            assert_eq!(
                actions,
                [Action::Close { will: true }, Action::Ended],
                "{acks:?}"
            );
        }
    }
}

#[test]
fn acks_for_unknown_ids_are_tolerated() {
    let mut h = Harness::v5();
    h.packet(Packet::PubAck(ack(5)));
    h.packet(Packet::PubComp(ack(6)));
    assert!(h.packets().is_empty());
    h.packet(Packet::PubRec(ack(7)));
    assert_eq!(
        h.packets(),
        vec![Packet::PubRel(ack_with(
            7,
            ReasonCode::PacketIdentifierNotFound
        ))]
    );
    assert_eq!(h.s.stats().unknown_acks, 3);
    assert!(h.s.is_connected());
}

#[test]
fn packet_ids_skip_ids_in_use_and_wrap() {
    let limits = Limits {
        max_inflight: 3,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V5, "c1", true));
    h.s.data.last_packet_id = u16::MAX - 1;
    for _ in 0..3 {
        h.deliver(&message("t", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    }
    let ids = |h: &mut Harness| -> Vec<u16> {
        let packets = h.packets();
        publishes(&packets)
            .iter()
            .map(|p| p.packet_id.map_or(0, |i| i.get()))
            .collect()
    };
    assert_eq!(ids(&mut h), [u16::MAX, 1, 2]);
    // Free 1, keep 65535 and 2 in use: from 65534 the next id skips 65535 and 0 and reuses 1.
    h.s.data.last_packet_id = u16::MAX - 1;
    h.packet(Packet::PubAck(ack(1)));
    h.deliver(&message("t", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    assert_eq!(ids(&mut h), [1]);
}

#[test]
fn offline_queue_and_qos0_setting() {
    for queue_qos0 in [false, true] {
        let limits = Limits {
            queue_qos0_offline: queue_qos0,
            ..Limits::default()
        };
        let mut h = Harness::connected(limits, persistent(ProtocolVersion::V311));
        h.lost();
        assert_eq!(h.actions(), vec![]);
        h.deliver(&message("a", QoS::AtMostOnce), &live(QoS::AtMostOnce));
        h.deliver(&message("b", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
        h.deliver(&message("c", QoS::ExactlyOnce), &live(QoS::ExactlyOnce));
        h.connect(persistent(ProtocolVersion::V311), true);
        let (packets, _) = h.take();
        assert!(matches!(&packets[0], Packet::ConnAck(c) if c.session_present));
        let topics: Vec<&str> = publishes(&packets[1..])
            .iter()
            .map(|p| p.topic.as_str())
            .collect();
        if queue_qos0 {
            assert_eq!(topics, ["a", "b", "c"]);
        } else {
            assert_eq!(topics, ["b", "c"]);
            assert_eq!(h.s.stats().dropped_qos0, 1);
        }
    }
}

#[test]
fn queue_bounds_evict_qos0_first() {
    let limits = Limits {
        max_queued_messages: 2,
        queue_qos0_offline: true,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, persistent(ProtocolVersion::V5));
    h.lost();
    h.take();
    h.deliver(&message("q0", QoS::AtMostOnce), &live(QoS::AtMostOnce));
    h.deliver(&message("a", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    // Full: a QoS 1 message evicts the QoS 0 one; a QoS 0 message is dropped itself.
    h.deliver(&message("b", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    h.deliver(&message("q0b", QoS::AtMostOnce), &live(QoS::AtMostOnce));
    // Full of QoS 1: another is dropped.
    h.deliver(&message("c", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    let queued: Vec<&str> =
        h.s.data()
            .queue
            .iter()
            .map(|q| q.message.topic.as_str())
            .collect();
    assert_eq!(queued, ["a", "b"]);
    let stats = h.s.stats();
    assert_eq!((stats.dropped_qos0, stats.dropped_queue_full), (2, 1));
}

#[test]
fn queue_byte_bound() {
    let limits = Limits {
        max_queued_bytes: 10,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, persistent(ProtocolVersion::V5));
    h.lost();
    h.take();
    // Topic "a" and "payload": 8 bytes are charged; one fits, the second does not.
    h.deliver(&message("a", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    h.deliver(&message("b", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    assert_eq!(h.s.data().queue.len(), 1);
    assert_eq!(h.s.data().queued_bytes, 8);
    assert_eq!(h.s.stats().dropped_queue_full, 1);
}

/// A queued message is charged for everything it holds (topic and properties too) and
/// keeps none of the read buffer it was decoded from.
#[test]
fn queued_messages_own_their_bytes_and_are_charged_in_full() {
    let mut h = Harness::connected(Limits::default(), persistent(ProtocolVersion::V5));
    h.lost();
    h.take();
    // A message whose topic and payload are views into a much larger read.
    let read = Bytes::from(vec![b'x'; 1 << 20]);
    let mut m = (*message("big/read", QoS::AtLeastOnce)).clone();
    m.payload = read.slice(10..11);
    m.pinned_read = read.len() as u32;
    m.properties
        .user_properties
        .push(crate::codec::UserProperty {
            name: mstr("k"),
            value: mstr("vv"),
        });
    h.deliver(&Arc::new(m), &live(QoS::AtLeastOnce));
    let queued = &h.s.data().queue[0];
    assert_eq!(queued.message.pinned_read, 0);
    assert_eq!(h.s.data().queued_bytes, "big/read".len() + 1 + 3);
    drop(h);
    // The session let go of its view: the 1 MiB buffer has one owner again.
    assert!(read.is_unique(), "the queued message still pins the read");
}

/// A message that views a small read (a client's pipelined publishes) is queued as it is:
/// copying it would cost more than the few kilobytes it keeps alive.
#[test]
fn a_queued_message_from_a_small_read_is_not_copied() {
    let mut h = Harness::connected(Limits::default(), persistent(ProtocolVersion::V5));
    h.lost();
    h.take();
    let read = Bytes::from(vec![b'x'; 4096]);
    let mut m = (*message("small/read", QoS::AtLeastOnce)).clone();
    m.payload = read.slice(10..11);
    m.pinned_read = read.len() as u32;
    h.deliver(&Arc::new(m), &live(QoS::AtLeastOnce));
    let queued = &h.s.data().queue[0];
    assert_eq!(queued.message.pinned_read, 4096, "kept as a view");
    assert!(!read.is_unique(), "the queue shares the read");
}

#[test]
fn expired_queued_messages_are_dropped_at_dequeue() {
    let mut h = Harness::connected(Limits::default(), persistent(ProtocolVersion::V5));
    h.lost();
    h.take();
    let mut m = (*message("t", QoS::AtLeastOnce)).clone();
    m.expires_at_ms = Some(h.now + 1_000);
    h.deliver(&Arc::new(m), &live(QoS::AtLeastOnce));
    h.now += 1_000;
    h.connect(persistent(ProtocolVersion::V5), true);
    let (packets, _) = h.take();
    assert_eq!(packets.len(), 1, "only CONNACK: {packets:?}");
    assert_eq!(h.s.stats().dropped_expired, 1);
}

#[test]
fn resume_resends_with_dup_and_pubrel_in_order() {
    // [MQTT-4.4.0-1], [MQTT-4.6.0-1].
    let mut h = Harness::connected(Limits::default(), persistent(ProtocolVersion::V5));
    h.deliver(&message("a", QoS::ExactlyOnce), &live(QoS::ExactlyOnce));
    h.deliver(&message("b", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    h.packet(Packet::PubRec(ack(1)));
    h.lost();
    h.take();
    h.deliver(&message("c", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    h.connect(persistent(ProtocolVersion::V5), true);
    let (packets, actions) = h.take();
    assert!(actions.is_empty());
    assert!(matches!(&packets[0], Packet::ConnAck(c) if c.session_present));
    assert_eq!(packets[1], Packet::PubRel(ack(1)));
    let p = publishes(&packets[2..]);
    assert_eq!(
        p.iter()
            .map(|p| (p.topic.as_str(), p.dup, p.packet_id))
            .collect::<Vec<_>>(),
        [("b", true, Some(pid(2))), ("c", false, Some(pid(3)))]
    );
}

/// What the shard's read check refuses is dropped before a resume sends anything: queued
/// messages and unacknowledged PUBLISH flows, each stored one as a completed flow; a
/// released QoS 2 flow (no message left) is kept.
#[test]
fn unreadable_messages_are_dropped_before_a_resume() {
    let mut h = Harness::connected(Limits::default(), persistent(ProtocolVersion::V5));
    for (t, qos) in [
        ("a", QoS::ExactlyOnce),
        ("no/1", QoS::AtLeastOnce),
        ("b", QoS::AtLeastOnce),
    ] {
        h.deliver(&message(t, qos), &live(qos));
    }
    h.packet(Packet::PubRec(ack(1)));
    h.lost();
    for t in ["no/2", "c"] {
        h.deliver(&message(t, QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    }
    h.take();
    h.take_changes();
    let mut asked = Vec::new();
    let mut may_read = |t: &TopicName| {
        asked.push(t.as_str().to_owned());
        !t.as_str().starts_with("no/")
    };
    assert_eq!(h.s.drop_unreadable(&mut may_read, &mut h.actions), 2);
    assert_eq!(asked, ["no/1", "b", "no/2", "c"]);
    assert_eq!(
        h.take_changes(),
        [Change::Completed { seq: 1 }, Change::Completed { seq: 3 }]
    );
    assert_eq!(h.s.stats().dropped_not_authorized, 2);
    h.connect(persistent(ProtocolVersion::V5), true);
    let packets = h.take().0;
    assert_eq!(packets[1], Packet::PubRel(ack(1)));
    let p = publishes(&packets[2..]);
    assert_eq!(
        p.iter()
            .map(|p| (p.topic.as_str(), p.dup, p.packet_id))
            .collect::<Vec<_>>(),
        [("b", true, Some(pid(3))), ("c", false, Some(pid(4)))]
    );
}

/// On a live connection the flows in flight were already sent to this client: only the
/// queue is checked.
#[test]
fn on_a_live_connection_only_the_queue_is_checked() {
    let mut c = persistent(ProtocolVersion::V5);
    c.properties.receive_maximum = Some(1);
    let mut h = Harness::connected(Limits::default(), c);
    for t in ["no/1", "no/2", "b"] {
        h.deliver(&message(t, QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    }
    h.take();
    h.take_changes();
    let mut may_read = |t: &TopicName| !t.as_str().starts_with("no/");
    assert_eq!(h.s.drop_unreadable(&mut may_read, &mut h.actions), 1);
    assert_eq!(h.take_changes(), [Change::Completed { seq: 1 }]);
    h.packet(Packet::PubAck(ack(1)));
    let packets = h.packets();
    let p = publishes(&packets);
    assert_eq!(
        p.iter()
            .map(|p| (p.topic.as_str(), p.packet_id))
            .collect::<Vec<_>>(),
        [("b", Some(pid(2)))]
    );
}

#[test]
fn resume_with_smaller_receive_maximum_requeues_the_excess() {
    let mut h = Harness::connected(Limits::default(), persistent(ProtocolVersion::V5));
    for t in ["a", "b", "c"] {
        h.deliver(&message(t, QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    }
    h.lost();
    h.take();
    let mut c = persistent(ProtocolVersion::V5);
    c.properties.receive_maximum = Some(1);
    h.connect(c, true);
    let packets = h.take().0;
    let p = publishes(&packets[1..]);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].topic.as_str(), p[0].dup), ("a", true));
    h.packet(Packet::PubAck(ack(1)));
    let packets = h.packets();
    let p = publishes(&packets);
    // Re-queued: a fresh flow, not a duplicate.
    assert_eq!((p[0].topic.as_str(), p[0].dup), ("b", false));
}

#[test]
fn clean_start_discards_queued_and_inflight() {
    let mut h = Harness::connected(Limits::default(), persistent(ProtocolVersion::V311));
    h.deliver(&message("a", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    h.lost();
    h.deliver(&message("b", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    h.take();
    h.connect(connect_packet(ProtocolVersion::V311, "c1", true), true);
    let packets = h.take().0;
    assert_eq!(packets.len(), 1);
    assert!(matches!(&packets[0], Packet::ConnAck(c) if !c.session_present));
    let fresh = SessionData {
        next_seq: h.s.data().next_seq,
        ..SessionData::default()
    };
    assert_eq!(h.s.data(), &fresh, "only the message numbering goes on");
}

#[test]
fn slow_consumer_drops_qos0() {
    let limits = Limits {
        max_output_buffer: 4,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V5, "c1", true));
    h.out.extend_from_slice(b"full");
    h.deliver(&message("t", QoS::AtMostOnce), &live(QoS::AtMostOnce));
    assert_eq!(&h.out[..], b"full");
    assert_eq!(h.s.stats().dropped_qos0, 1);
}

#[test]
fn merge_applies_no_local_and_picks_max_qos() {
    let me = client("c1");
    let mut own = (*message("t", QoS::ExactlyOnce)).clone();
    own.origin = Some(me.clone());
    let subs = [
        Subscription {
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                ..SubscriptionOptions::default()
            },
            id: Some(1),
        },
        Subscription {
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                retain_as_published: true,
                ..SubscriptionOptions::default()
            },
            id: Some(2),
        },
    ];
    let mut ids = Vec::new();
    let d = Delivery::merge(&subs, &own, &me, &mut ids).expect("one subscription left");
    assert_eq!(d.qos, QoS::AtLeastOnce);
    assert!(d.retain_as_published);
    assert_eq!(d.subscription_ids, [2]);
    let mut ids = Vec::new();
    let d =
        Delivery::merge(&subs, &message("t", QoS::ExactlyOnce), &me, &mut ids).expect("both match");
    assert_eq!((d.qos, d.subscription_ids), (QoS::ExactlyOnce, &[1, 2][..]));
    let mut ids = Vec::new();
    assert!(Delivery::merge(&subs[..1], &own, &me, &mut ids).is_none());
}

/// Limits with outbound topic aliases on (`recent`).
fn aliasing() -> Limits {
    Limits {
        outbound_topic_aliases: crate::session::TopicAliasPolicy::Recent,
        ..Limits::default()
    }
}

/// A v5 connection whose client accepts `client_max` topic aliases.
fn aliased(limits: Limits, client_max: Option<u16>) -> Harness {
    let mut c = connect_packet(ProtocolVersion::V5, "c1", false);
    c.properties.topic_alias_maximum = client_max;
    c.properties.session_expiry_interval = Some(60);
    Harness::connected(limits, c)
}

/// (topic, alias) of each PUBLISH a delivery per topic wrote.
fn sent(h: &mut Harness, topics: &[&'static str]) -> Vec<(String, Option<u16>)> {
    for t in topics {
        h.deliver(&message(t, QoS::AtMostOnce), &live(QoS::AtMostOnce));
    }
    let packets = h.packets();
    publishes(&packets)
        .iter()
        .map(|p| (p.topic.as_str().to_owned(), p.properties.topic_alias))
        .collect()
}

fn pairs(v: &[(&str, Option<u16>)]) -> Vec<(String, Option<u16>)> {
    v.iter().map(|(t, a)| ((*t).to_owned(), *a)).collect()
}

#[test]
fn outbound_topic_aliases_up_to_the_clients_maximum() {
    // Recent: a, b get 1, 2; c takes b's alias (least recently used).
    let mut h = aliased(aliasing(), Some(2));
    assert_eq!(
        sent(&mut h, &["a", "b", "a", "c", "a", "c"]),
        pairs(&[
            ("a", Some(1)),
            ("b", Some(2)),
            ("", Some(1)),
            ("c", Some(2)),
            ("", Some(1)),
            ("", Some(2)),
        ])
    );
    // Our own cap bounds it too.
    let one = Limits {
        outbound_topic_alias_maximum: 1,
        ..aliasing()
    };
    let mut h = aliased(one, Some(5));
    assert_eq!(
        sent(&mut h, &["a", "b", "b"]),
        pairs(&[("a", Some(1)), ("b", Some(1)), ("", Some(1))])
    );
}

#[test]
fn no_outbound_topic_aliases_unless_the_client_and_the_setting_allow() {
    let plain = pairs(&[("a", None), ("a", None)]);
    // The client's Topic Alias Maximum absent or 0 [MQTT-3.2.2-... MUST NOT send].
    assert_eq!(sent(&mut aliased(aliasing(), None), &["a", "a"]), plain);
    assert_eq!(sent(&mut aliased(aliasing(), Some(0)), &["a", "a"]), plain);
    // Off, the default.
    assert_eq!(
        sent(&mut aliased(Limits::default(), Some(5)), &["a", "a"]),
        plain
    );
    let v311 = connect_packet(ProtocolVersion::V311, "c1", true);
    assert_eq!(
        sent(&mut Harness::connected(aliasing(), v311), &["a", "a"]),
        plain
    );
}

#[test]
fn outbound_topic_aliases_start_afresh_on_each_connection() {
    let mut h = aliased(aliasing(), Some(3));
    assert_eq!(
        sent(&mut h, &["a", "a"]),
        pairs(&[("a", Some(1)), ("", Some(1))])
    );
    h.lost();
    let mut c = connect_packet(ProtocolVersion::V5, "c1", false);
    c.properties.topic_alias_maximum = Some(3);
    c.properties.session_expiry_interval = Some(60);
    h.connect(c, true);
    h.take();
    assert_eq!(
        sent(&mut h, &["a", "a"]),
        pairs(&[("a", Some(1)), ("", Some(1))])
    );
}

#[test]
fn an_alias_whose_publish_was_too_large_is_defined_again() {
    let mut c = connect_packet(ProtocolVersion::V5, "c1", true);
    c.properties.topic_alias_maximum = Some(1);
    c.properties.maximum_packet_size = Some(64);
    let mut h = Harness::connected(aliasing(), c);
    let mut big = (*message("a", QoS::AtMostOnce)).clone();
    big.payload = Bytes::from(vec![b'x'; 100]);
    h.deliver(&Arc::new(big), &live(QoS::AtMostOnce));
    assert!(h.packets().is_empty());
    assert_eq!(h.s.stats().dropped_too_large, 1);
    // The client never saw alias 1 defined: the next one carries the topic again.
    assert_eq!(
        sent(&mut h, &["a", "a"]),
        pairs(&[("a", Some(1)), ("", Some(1))])
    );
}

#[test]
fn queue_would_refuse_only_when_the_message_would_wait_in_a_full_queue() {
    let limits = Limits {
        max_inflight: 1,
        max_queued_messages: 1,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V311, "c1", true));
    let m = message("t", QoS::AtLeastOnce);
    let refuses = |h: &Harness, qos| h.s.queue_would_refuse(qos, &m);
    assert!(!refuses(&h, QoS::AtLeastOnce), "window room: sent at once");
    h.deliver(&m, &live(QoS::AtLeastOnce));
    assert!(
        !refuses(&h, QoS::AtLeastOnce),
        "window full, queue has room"
    );
    h.deliver(&m, &live(QoS::AtLeastOnce));
    assert!(refuses(&h, QoS::AtLeastOnce), "window and queue full");
    assert!(refuses(&h, QoS::ExactlyOnce));
    assert!(!refuses(&h, QoS::AtMostOnce), "QoS 0 never waits for it");
    h.packet(Packet::PubAck(ack(1)));
    assert!(!refuses(&h, QoS::AtLeastOnce));
}

/// A shared QoS 1/2 message that reaches a member with a full queue was already handed on
/// (its publisher was acknowledged): it may use up to twice the queue limit, then it is
/// dropped like any other.
#[test]
fn a_shared_message_may_use_twice_the_queue_limit() {
    let limits = Limits {
        max_inflight: 1,
        max_queued_messages: 2,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V5, "c1", true));
    let group = std::sync::Arc::new(filter("$share/g/t"));
    let shared = Delivery {
        share_group: Some(&group),
        ..live(QoS::AtLeastOnce)
    };
    let m = message("t", QoS::AtLeastOnce);
    h.deliver(&m, &live(QoS::AtLeastOnce)); // the window
    h.deliver(&m, &live(QoS::AtLeastOnce));
    h.deliver(&m, &live(QoS::AtLeastOnce));
    h.deliver(&m, &live(QoS::AtLeastOnce));
    assert_eq!(
        h.s.data().queue.len(),
        2,
        "a plain delivery stops at the limit"
    );
    assert_eq!(h.s.stats().dropped_queue_full, 1);
    for _ in 0..3 {
        h.deliver(&m, &shared);
    }
    assert_eq!(h.s.data().queue.len(), 4, "a shared one may go to twice it");
    assert_eq!(h.s.stats().dropped_queue_full, 2);
}

/// `refuses` says yes exactly where `deliver` could only drop the message, and counts the
/// same drop: a full queue with no QoS 0 message to evict. With one to evict, or room, or
/// a share group, it leaves the message to `deliver`.
#[test]
fn refuses_only_what_deliver_would_drop_and_counts_it_alike() {
    let limits = Limits {
        max_inflight: 1,
        max_queued_messages: 2,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V5, "c1", true));
    let q1 = message("t", QoS::AtLeastOnce);
    let q0 = message("t", QoS::AtMostOnce);
    let now = h.now;
    assert!(
        !h.s.refuses(&q1, &live(QoS::AtLeastOnce), now),
        "window room"
    );
    h.deliver(&q1, &live(QoS::AtLeastOnce)); // the window
    h.deliver(&q1, &live(QoS::AtLeastOnce));
    assert!(
        !h.s.refuses(&q1, &live(QoS::AtLeastOnce), now),
        "queue room"
    );
    h.deliver(&q0, &live(QoS::AtMostOnce)); // queued behind the QoS 1 one: the queue is full
    assert!(
        !h.s.refuses(&q1, &live(QoS::AtLeastOnce), now),
        "a queued QoS 0 message can make room"
    );
    h.deliver(&q1, &live(QoS::AtLeastOnce)); // evicts it
    assert_eq!(h.s.stats().dropped_qos0, 1);
    assert!(h.s.refuses(&q1, &live(QoS::AtLeastOnce), now));
    assert!(h.s.refuses(&q0, &live(QoS::AtMostOnce), now));
    assert!(
        h.s.refuses(&q1, &live(QoS::AtMostOnce), now),
        "granted QoS 0"
    );
    let stats = h.s.stats();
    assert_eq!((stats.dropped_queue_full, stats.dropped_qos0), (1, 3));
    // `deliver` would have counted the same.
    h.deliver(&q1, &live(QoS::AtLeastOnce));
    h.deliver(&q0, &live(QoS::AtMostOnce));
    let stats = h.s.stats();
    assert_eq!((stats.dropped_queue_full, stats.dropped_qos0), (2, 4));
    let group = Arc::new(filter("$share/g/t"));
    let shared = Delivery {
        share_group: Some(&group),
        ..live(QoS::AtLeastOnce)
    };
    assert!(
        !h.s.refuses(&q1, &shared, now),
        "a full member hands shared ones on"
    );
    assert!(
        h.packets()
            .iter()
            .all(|p| !matches!(p, Packet::Disconnect(_)))
    );
    h.packet(Packet::PubAck(ack(1)));
    assert!(
        !h.s.refuses(&q1, &live(QoS::AtLeastOnce), now),
        "room again"
    );
}

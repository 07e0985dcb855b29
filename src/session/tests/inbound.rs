//! Inbound PUBLISH flows, PUBREL, topic aliases, publish checks, packets a client must not
//! send.

use super::*;

fn routed(actions: &[Action]) -> Vec<Arc<Message>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { message: m, .. } => Some(Arc::clone(m)),
            _ => None,
        })
        .collect()
}

const V5_CLOSE: [Action; 2] = [Action::Close { will: true }, Action::Ended];

#[test]
fn qos0_is_routed_without_ack() {
    let mut h = Harness::v5();
    h.packet(Packet::Publish(publish("a/b", QoS::AtMostOnce, None)));
    let (packets, actions) = h.take();
    assert!(packets.is_empty());
    let m = routed(&actions);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].topic, topic("a/b"));
    assert_eq!(m[0].payload, Bytes::from_static(b"hello"));
    assert_eq!(m[0].qos, QoS::AtMostOnce);
    assert_eq!(m[0].origin, Some(client("c1")));
    assert_eq!(m[0].expires_at_ms, None);
}

#[test]
fn a_publish_the_shard_refuses_is_answered_with_its_code() {
    // v5: PUBACK / PUBREC carry the code; a refused QoS 2 id is not awaiting PUBREL.
    let mut h = Harness::v5();
    h.packet_refused(
        Packet::Publish(publish("a/b", QoS::AtLeastOnce, Some(3))),
        ReasonCode::QuotaExceeded,
    );
    h.packet_refused(
        Packet::Publish(publish("a/b", QoS::ExactlyOnce, Some(4))),
        ReasonCode::QuotaExceeded,
    );
    let (packets, _) = h.take();
    assert_eq!(
        packets,
        vec![
            Packet::PubAck(ack_with(3, ReasonCode::QuotaExceeded)),
            Packet::PubRec(ack_with(4, ReasonCode::QuotaExceeded)),
        ]
    );
    assert!(h.s.data().awaiting_rel.is_empty());
    // 3.x acknowledgements have no code: the connection is closed instead.
    let mut h = Harness::v311();
    h.packet_refused(
        Packet::Publish(publish("a/b", QoS::AtLeastOnce, Some(3))),
        ReasonCode::QuotaExceeded,
    );
    let (packets, actions) = h.take();
    assert!(packets.is_empty(), "{packets:?}");
    assert!(
        actions.contains(&Action::Close { will: true }),
        "{actions:?}"
    );
}

#[test]
fn qos1_is_routed_and_acked() {
    for mut h in [Harness::v5(), Harness::v311()] {
        h.packet(Packet::Publish(publish("a/b", QoS::AtLeastOnce, Some(7))));
        let (packets, actions) = h.take();
        assert_eq!(packets, vec![Packet::PubAck(ack(7))]);
        assert_eq!(routed(&actions).len(), 1);
    }
}

#[test]
fn qos2_flow_routes_once_and_completes() {
    let mut h = Harness::v5();
    h.packet(Packet::Publish(publish("a/b", QoS::ExactlyOnce, Some(3))));
    let (packets, actions) = h.take();
    assert_eq!(packets, vec![Packet::PubRec(ack(3))]);
    assert_eq!(routed(&actions).len(), 1);
    assert!(h.s.data().awaiting_rel.contains(&pid(3)));

    // bad input #53: the same id again (DUP or not) is a duplicate: PUBREC, not routed.
    let mut dup = publish("a/b", QoS::ExactlyOnce, Some(3));
    dup.dup = true;
    h.packet(Packet::Publish(dup));
    h.packet(Packet::Publish(publish("other", QoS::ExactlyOnce, Some(3))));
    assert_eq!(
        h.packets(),
        vec![Packet::PubRec(ack(3)), Packet::PubRec(ack(3))]
    );

    h.packet(Packet::PubRel(ack(3)));
    assert_eq!(h.packets(), vec![Packet::PubComp(ack(3))]);
    assert!(h.s.data().awaiting_rel.is_empty());

    // After PUBCOMP the id is free: a new message with it is routed.
    h.packet(Packet::Publish(publish("a/b", QoS::ExactlyOnce, Some(3))));
    assert_eq!(routed(&h.take().1).len(), 1);
}

#[test]
fn unknown_pubrel_gets_pubcomp_and_stays_connected() {
    // bad input #48.
    let mut h = Harness::v5();
    h.packet(Packet::PubRel(ack(9)));
    assert_eq!(
        h.packets(),
        vec![Packet::PubComp(ack_with(
            9,
            ReasonCode::PacketIdentifierNotFound
        ))]
    );
    assert!(h.s.is_connected());
    let mut h = Harness::v311();
    h.packet(Packet::PubRel(ack(9)));
    // The 3.x encoder never writes the reason code.
    assert_eq!(h.take().0.len(), 1);
    assert!(h.s.is_connected());
}

#[test]
fn receive_maximum_exceeded_disconnects_v5_and_closes_3x() {
    // bad input #52 with Receive Maximum 2: the third QoS 2 awaiting PUBREL is one too many.
    let limits = Limits {
        receive_maximum: 2,
        ..Limits::default()
    };
    for v in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let mut h = Harness::connected(limits.clone(), connect_packet(v, "c1", true));
        for id in 1..=2 {
            h.packet(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(id))));
        }
        assert_eq!(routed(&h.take().1).len(), 2);
        // A duplicate of a pending id does not count.
        h.packet(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(2))));
        assert_eq!(h.packets(), vec![Packet::PubRec(ack(2))]);
        h.packet(Packet::Publish(publish("t", QoS::AtLeastOnce, Some(3))));
        let (packets, actions) = h.take();
        if v.is_v5() {
            assert_eq!(
                packets,
                vec![disconnect(ReasonCode::ReceiveMaximumExceeded)]
            );
        } else {
            assert!(packets.is_empty());
        }
        assert_eq!(actions, V5_CLOSE);
        assert!(!h.s.is_connected());
    }
}

#[test]
fn receive_maximum_log_only_counts_and_continues() {
    let limits = Limits {
        receive_maximum: 1,
        receive_maximum_log_only: true,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V5, "c1", true));
    h.packet(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(1))));
    h.packet(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(2))));
    let (packets, actions) = h.take();
    assert_eq!(
        packets,
        vec![Packet::PubRec(ack(1)), Packet::PubRec(ack(2))]
    );
    assert_eq!(routed(&actions).len(), 2);
    assert_eq!(h.s.stats().receive_maximum_exceeded, 1);
    assert!(h.s.is_connected());
}

#[test]
fn awaiting_rel_is_a_hard_bound_even_when_log_only() {
    // bad input #46: PUBREL starvation.
    let limits = Limits {
        receive_maximum: 100,
        receive_maximum_log_only: true,
        max_awaiting_rel: 3,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V5, "c1", true));
    for id in 1..=3 {
        h.packet(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(id))));
    }
    h.take();
    h.packet(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(4))));
    let (packets, actions) = h.take();
    assert_eq!(
        packets,
        vec![disconnect(ReasonCode::ReceiveMaximumExceeded)]
    );
    assert_eq!(actions, V5_CLOSE);
}

fn aliased(t: &'static str, alias: u16) -> Publish {
    let mut p = publish(t, QoS::AtMostOnce, None);
    p.properties.topic_alias = Some(alias);
    p
}

fn alias_only(alias: u16) -> Publish {
    let mut p = aliased("x", alias);
    p.topic = TopicName::default();
    p
}

#[test]
fn topic_alias_defines_resolves_and_redefines() {
    let mut h = Harness::v5();
    h.packet(Packet::Publish(aliased("a/b", 1)));
    h.packet(Packet::Publish(alias_only(1)));
    h.packet(Packet::Publish(aliased("c/d", 1)));
    h.packet(Packet::Publish(alias_only(1)));
    let m = routed(&h.actions());
    let topics: Vec<&str> = m.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, ["a/b", "a/b", "c/d", "c/d"]);
    // The routed message never carries the alias.
    assert!(m.iter().all(|m| m.properties.topic_alias.is_none()));
}

#[test]
fn topic_alias_above_maximum_or_zero_is_0x94() {
    // bad input #39.
    for alias in [0, 11] {
        let mut h = Harness::v5();
        h.packet(Packet::Publish(aliased("a", alias)));
        let (packets, actions) = h.take();
        assert_eq!(packets, vec![disconnect(ReasonCode::TopicAliasInvalid)]);
        assert_eq!(actions, V5_CLOSE);
    }
}

#[test]
fn unknown_alias_with_empty_topic_is_protocol_error() {
    let mut h = Harness::v5();
    h.packet(Packet::Publish(alias_only(2)));
    assert_eq!(h.take().0, vec![disconnect(ReasonCode::ProtocolError)]);
}

#[test]
fn topic_aliases_do_not_survive_the_connection() {
    // bad input #39: per connection, never persisted.
    let mut connect = connect_packet(ProtocolVersion::V5, "c1", false);
    connect.properties.session_expiry_interval = Some(100);
    let mut h = Harness::connected(Limits::default(), connect.clone());
    h.packet(Packet::Publish(aliased("a/b", 1)));
    h.lost();
    h.take();
    h.connect(connect, true);
    h.take();
    h.packet(Packet::Publish(alias_only(1)));
    assert_eq!(h.take().0, vec![disconnect(ReasonCode::ProtocolError)]);
}

#[test]
fn dollar_topics_are_refused_and_never_routed() {
    // bad input #37. v5: 0x87 in the ack, QoS 0 dropped silently.
    let mut h = Harness::v5();
    h.packet(Packet::Publish(publish(
        "$SYS/x",
        QoS::AtLeastOnce,
        Some(1),
    )));
    h.packet(Packet::Publish(publish("$foo", QoS::ExactlyOnce, Some(2))));
    h.packet(Packet::Publish(publish("$SYS/x", QoS::AtMostOnce, None)));
    assert_eq!(
        h.packets(),
        vec![
            Packet::PubAck(ack_with(1, ReasonCode::NotAuthorized)),
            Packet::PubRec(ack_with(2, ReasonCode::NotAuthorized)),
        ]
    );
    assert!(h.s.data().awaiting_rel.is_empty());
    assert_eq!(h.s.stats().refused_publishes, 3);
    // 3.x: acknowledged as success, not routed (as mosquitto).
    let mut h = Harness::v311();
    h.packet(Packet::Publish(publish(
        "$SYS/x",
        QoS::AtLeastOnce,
        Some(1),
    )));
    assert_eq!(h.packets(), vec![Packet::PubAck(ack(1))]);
}

#[test]
fn publish_checks_that_disconnect() {
    let no_retain = Limits {
        retain_available: false,
        ..Limits::default()
    };
    let qos1_only = Limits {
        max_qos: 1,
        ..Limits::default()
    };
    let shallow = Limits {
        max_topic_levels: 3,
        ..Limits::default()
    };
    let mut retained = publish("t", QoS::AtMostOnce, None);
    retained.retain = true;
    let mut with_sub_id = publish("t", QoS::AtMostOnce, None);
    with_sub_id.properties.subscription_identifiers = vec![1];
    let cases = [
        // bad input #45.
        (no_retain, retained, ReasonCode::RetainNotSupported),
        // [MQTT-3.2.2-11].
        (
            qos1_only,
            publish("t", QoS::ExactlyOnce, Some(1)),
            ReasonCode::QoSNotSupported,
        ),
        // bad input #38.
        (
            shallow,
            publish("a/b/c/d", QoS::AtMostOnce, None),
            ReasonCode::TopicNameInvalid,
        ),
        // bad input #40.
        (Limits::default(), with_sub_id, ReasonCode::ProtocolError),
    ];
    for (limits, p, code) in cases {
        for v in [ProtocolVersion::V5, ProtocolVersion::V311] {
            let mut h = Harness::connected(limits.clone(), connect_packet(v, "c1", true));
            h.packet(Packet::Publish(p.clone()));
            let (packets, actions) = h.take();
            let want = if v.is_v5() {
                vec![disconnect(code)]
            } else {
                vec![]
            };
            assert_eq!(packets, want, "{code:?} {v:?}");
            assert_eq!(actions, V5_CLOSE, "{code:?} {v:?}");
        }
    }
}

#[test]
fn invalid_utf8_payload_with_format_indicator_is_0x99() {
    // bad input #42 (the optional check).
    let mut h = Harness::v5();
    let mut p = publish("t", QoS::AtLeastOnce, Some(1));
    p.properties.payload_format_indicator = Some(true);
    p.payload = Bytes::from_static(b"\xff\xfe");
    h.packet(Packet::Publish(p.clone()));
    assert_eq!(
        h.packets(),
        vec![Packet::PubAck(ack_with(
            1,
            ReasonCode::PayloadFormatInvalid
        ))]
    );
    p.payload = Bytes::from_static("caf\u{e9}".as_bytes());
    h.packet(Packet::Publish(p));
    assert_eq!(routed(&h.take().1).len(), 1);
}

#[test]
fn message_expiry_sets_the_deadline() {
    let mut h = Harness::v5();
    let mut p = publish("t", QoS::AtMostOnce, None);
    p.properties.message_expiry_interval = Some(30);
    h.packet(Packet::Publish(p));
    let m = routed(&h.actions());
    assert_eq!(m[0].expires_at_ms, Some(h.now + 30_000));
    assert_eq!(m[0].properties.message_expiry_interval, Some(30));
}

#[test]
fn packets_only_the_server_sends_are_protocol_errors() {
    // bad input #16 and #63; AUTH without an authentication method.
    let bad = [
        Packet::Connect(Box::new(connect_packet(ProtocolVersion::V5, "c1", true))),
        Packet::ConnAck(crate::codec::ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: Default::default(),
        }),
        Packet::SubAck(crate::codec::SubAck {
            packet_id: pid(1),
            reasons: vec![ReasonCode::GrantedQoS0],
            properties: AckProperties::default(),
        }),
        Packet::UnsubAck(crate::codec::UnsubAck {
            packet_id: pid(1),
            reasons: vec![],
            properties: AckProperties::default(),
        }),
        Packet::PingResp,
        Packet::Auth(crate::codec::Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: Default::default(),
        }),
    ];
    for p in bad {
        let mut h = Harness::v5();
        h.packet(p.clone());
        assert_eq!(
            h.take(),
            (
                vec![disconnect(ReasonCode::ProtocolError)],
                V5_CLOSE.to_vec()
            )
        );
        let mut h = Harness::v311();
        h.packet(p);
        assert_eq!(h.take(), (vec![], V5_CLOSE.to_vec()));
    }
}

#[test]
fn pingreq_gets_pingresp() {
    let mut h = Harness::v311();
    h.packet(Packet::PingReq);
    assert_eq!(h.packets(), vec![Packet::PingResp]);
}

#[test]
fn packets_after_close_are_ignored() {
    let mut h = Harness::v5();
    h.packet(disconnect(ReasonCode::NormalDisconnection));
    h.take();
    h.packet(Packet::Publish(publish("t", QoS::AtLeastOnce, Some(1))));
    assert_eq!(h.take(), (vec![], vec![]));
}

/// The shard may refuse a routed publish (its store is failing, an ACL denies it): v5 gets
/// the code in PUBACK/PUBREC and a refused QoS 2 id is not kept as awaiting PUBREL (a resend
/// is a new attempt); 3.x acknowledgements carry no code, so the connection closes.
#[test]
fn a_refused_publish_is_answered_with_its_code() {
    let mut h = Harness::v5();
    h.packet_refused(
        Packet::Publish(publish("t", QoS::AtLeastOnce, Some(1))),
        ReasonCode::QuotaExceeded,
    );
    let (packets, _) = h.take();
    assert_eq!(
        packets,
        vec![Packet::PubAck(ack_with(1, ReasonCode::QuotaExceeded))]
    );
    h.packet_refused(
        Packet::Publish(publish("t", QoS::ExactlyOnce, Some(2))),
        ReasonCode::QuotaExceeded,
    );
    let (packets, _) = h.take();
    assert_eq!(
        packets,
        vec![Packet::PubRec(ack_with(2, ReasonCode::QuotaExceeded))]
    );
    assert!(h.s.data().awaiting_rel.is_empty());

    let mut h = Harness::v311();
    h.packet_refused(
        Packet::Publish(publish("t", QoS::AtLeastOnce, Some(1))),
        ReasonCode::QuotaExceeded,
    );
    let (packets, actions) = h.take();
    assert!(packets.is_empty(), "3.x: no acknowledgement");
    assert!(actions.contains(&Action::Close { will: true }));
}

//! Connection, will prompting, registration, PUBLISH at QoS 0/1/2 in both directions,
//! SUBSCRIBE with each topic id type, retained messages.

use super::*;

#[test]
fn connect_without_will_gets_connack_and_a_session() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    assert_eq!(br.gw.client_count(), 1);
    assert!(br.sessions[&id("dev1")].is_connected());
    assert_eq!(br.gw.address_of(&id("dev1")), Some(1));
}

#[test]
fn connect_with_will_prompts_for_topic_and_message() {
    let mut br = Broker::new();
    br.mqtt_connect("obs");
    br.mqtt_subscribe("obs", "wills/#", QoS::AtLeastOnce);
    br.send(1, connect_msg("dev1", true, true, 10));
    assert_eq!(br.take(1), vec![SnMessage::WillTopicReq]);
    assert!(
        !br.sessions.contains_key(&id("dev1")),
        "no session before the will"
    );
    br.send(1, will_topic("wills/dev1", QoS::AtLeastOnce));
    assert_eq!(br.take(1), vec![SnMessage::WillMsgReq]);
    br.send(1, SnMessage::WillMsg { msg: b("gone") });
    assert_eq!(
        br.take(1),
        vec![SnMessage::ConnAck {
            code: ReturnCode::Accepted
        }]
    );
    // Silent past 1.5 x keep alive: lost, the will goes out through the session.
    br.advance(15_001);
    assert_eq!(br.take(1), vec![SnMessage::Disconnect { duration: None }]);
    assert_eq!(br.mqtt_payloads("obs"), vec!["gone"]);
    assert!(
        !br.sessions.contains_key(&id("dev1")),
        "clean session ended"
    );
    assert_eq!(br.gw.client_count(), 0);
    assert_eq!(br.gw.stats().lost, 1);
}

#[test]
fn disconnect_discards_the_will() {
    let mut br = Broker::new();
    br.mqtt_connect("obs");
    br.mqtt_subscribe("obs", "wills/#", QoS::AtMostOnce);
    br.send(1, connect_msg("dev1", true, true, 10));
    br.send(1, will_topic("wills/dev1", QoS::AtMostOnce));
    br.send(1, SnMessage::WillMsg { msg: b("gone") });
    br.take(1);
    br.send(1, SnMessage::Disconnect { duration: None });
    assert_eq!(br.take(1), vec![SnMessage::Disconnect { duration: None }]);
    br.advance(60_000);
    assert!(br.mqtt_payloads("obs").is_empty());
    assert!(!br.sessions.contains_key(&id("dev1")));
}

#[test]
fn client_publishes_at_qos_0_1_2() {
    let mut br = Broker::new();
    br.mqtt_connect("obs");
    br.mqtt_subscribe("obs", "t/#", QoS::ExactlyOnce);
    br.connect(1, "dev1", true, 60);
    let t = br.register(1, 1, "t/x");
    assert_ne!(t, TopicId::NONE);

    br.send(1, publish(TopicRef::Normal(t), SnQoS::Zero, 0, "q0"));
    assert!(br.take(1).is_empty(), "QoS 0 is not acknowledged");

    br.send(1, publish(TopicRef::Normal(t), SnQoS::One, 7, "q1"));
    assert_eq!(
        br.take(1),
        vec![SnMessage::PubAck {
            topic_id: t,
            msg_id: MsgId(7),
            code: ReturnCode::Accepted
        }]
    );

    br.send(1, publish(TopicRef::Normal(t), SnQoS::Two, 8, "q2"));
    assert_eq!(br.take(1), vec![SnMessage::PubRec { msg_id: MsgId(8) }]);
    // A retransmitted QoS 2 PUBLISH is not routed twice (the session's rule).
    let mut dup = publish(TopicRef::Normal(t), SnQoS::Two, 8, "q2");
    if let SnMessage::Publish(p) = &mut dup {
        p.dup = true;
    }
    br.send(1, dup);
    assert_eq!(br.take(1), vec![SnMessage::PubRec { msg_id: MsgId(8) }]);
    br.send(1, SnMessage::PubRel { msg_id: MsgId(8) });
    assert_eq!(br.take(1), vec![SnMessage::PubComp { msg_id: MsgId(8) }]);

    let got: Vec<String> = br.mqtt_payloads("obs");
    assert_eq!(got, vec!["q0", "q1", "q2"]);
}

#[test]
fn delivery_to_a_plain_subscription_uses_the_subacked_id() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    let suback = br.subscribe(1, 1, SubTopic::Name(b("a/b")), QoS::AtLeastOnce);
    let SnMessage::SubAck {
        qos,
        topic_id,
        msg_id,
        code,
    } = suback
    else {
        panic!("{suback:?}")
    };
    assert_eq!(
        (qos, msg_id, code),
        (QoS::AtLeastOnce, MsgId(1), ReturnCode::Accepted)
    );
    assert_ne!(
        topic_id,
        TopicId::NONE,
        "a plain name gets its id in SUBACK"
    );

    br.mqtt_connect("pub");
    br.mqtt_publish("pub", "a/b", "m1", QoS::AtLeastOnce, false);
    br.mqtt_publish("pub", "a/b", "m2", QoS::AtLeastOnce, false);
    let got = br.take(1);
    let p = publishes(&got);
    assert_eq!(
        p.len(),
        1,
        "one QoS 1 message outstanding at a time: {got:?}"
    );
    assert_eq!(p[0].topic, TopicRef::Normal(topic_id));
    assert_eq!((p[0].qos, text(p[0])), (SnQoS::One, "m1".to_owned()));
    let m1 = p[0].msg_id;
    assert_ne!(m1, MsgId(0));
    br.send(
        1,
        SnMessage::PubAck {
            topic_id,
            msg_id: m1,
            code: ReturnCode::Accepted,
        },
    );
    let got = br.take(1);
    let p = publishes(&got);
    assert_eq!(p.len(), 1, "{got:?}");
    assert_eq!(text(p[0]), "m2");
    assert_ne!(p[0].msg_id, m1);
}

#[test]
fn wildcard_subscription_registers_topics_before_publishing() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    let suback = br.subscribe(1, 1, SubTopic::Name(b("w/#")), QoS::AtMostOnce);
    assert!(
        matches!(
            suback,
            SnMessage::SubAck {
                topic_id: TopicId::NONE,
                code: ReturnCode::Accepted,
                ..
            }
        ),
        "{suback:?}"
    );
    br.mqtt_connect("pub");
    br.mqtt_publish("pub", "w/x", "one", QoS::AtMostOnce, false);
    br.mqtt_publish("pub", "w/y", "two", QoS::AtMostOnce, false);
    // 6.10: REGISTER first; the PUBLISHes wait for its REGACK.
    let got = br.take(1);
    let [
        SnMessage::Register {
            topic_id,
            msg_id,
            topic_name,
        },
    ] = got.as_slice()
    else {
        panic!("{got:?}")
    };
    assert_eq!(topic_name, &b("w/x"));
    let (tx, mx) = (*topic_id, *msg_id);
    br.send(
        1,
        SnMessage::RegAck {
            topic_id: tx,
            msg_id: mx,
            code: ReturnCode::Accepted,
        },
    );
    let got = br.take(1);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(publishes(&got)[0].topic, TopicRef::Normal(tx));
    let SnMessage::Register {
        topic_id: ty,
        msg_id: my,
        topic_name,
    } = &got[1]
    else {
        panic!("{got:?}")
    };
    assert_eq!(topic_name, &b("w/y"));
    assert_ne!(*ty, tx);
    assert_ne!(*my, mx);
    let (ty, my) = (*ty, *my);
    br.send(
        1,
        SnMessage::RegAck {
            topic_id: ty,
            msg_id: my,
            code: ReturnCode::Accepted,
        },
    );
    let got = br.take(1);
    assert_eq!(publishes(&got)[0].topic, TopicRef::Normal(ty));
    assert_eq!(text(publishes(&got)[0]), "two");
    // Known now: no second REGISTER.
    br.mqtt_publish("pub", "w/x", "three", QoS::AtMostOnce, false);
    let got = br.take(1);
    assert_eq!(publishes(&got)[0].topic, TopicRef::Normal(tx));
}

#[test]
fn predefined_and_short_topics_both_ways() {
    let mut br = Broker::new();
    br.mqtt_connect("obs");
    br.mqtt_subscribe("obs", "#", QoS::AtMostOnce);
    br.connect(1, "dev1", true, 60);
    let s = br.subscribe(1, 1, SubTopic::Predefined(TopicId(5)), QoS::AtMostOnce);
    assert!(
        matches!(
            s,
            SnMessage::SubAck {
                topic_id: TopicId(5),
                code: ReturnCode::Accepted,
                ..
            }
        ),
        "{s:?}"
    );
    let s = br.subscribe(1, 2, SubTopic::Short(*b"ab"), QoS::AtMostOnce);
    assert!(
        matches!(
            s,
            SnMessage::SubAck {
                topic_id: TopicId::NONE,
                code: ReturnCode::Accepted,
                ..
            }
        ),
        "{s:?}"
    );
    let s = br.subscribe(1, 3, SubTopic::Predefined(TopicId(9)), QoS::AtMostOnce);
    assert!(
        matches!(
            s,
            SnMessage::SubAck {
                code: ReturnCode::InvalidTopicId,
                ..
            }
        ),
        "an unconfigured pre-defined id: {s:?}"
    );

    br.mqtt_connect("pub");
    br.mqtt_publish("pub", "pre/def", "p", QoS::AtMostOnce, false);
    br.mqtt_publish("pub", "ab", "s", QoS::AtMostOnce, false);
    let got = br.take(1);
    let p = publishes(&got);
    assert_eq!(p.len(), 2, "no REGISTER needed: {got:?}");
    assert_eq!(p[0].topic, TopicRef::Predefined(TopicId(5)));
    assert_eq!(p[1].topic, TopicRef::Short(*b"ab"));
    br.mqtt_take("obs");

    // And from the client: both name their topics without registration.
    br.send(
        1,
        publish(TopicRef::Predefined(TopicId(5)), SnQoS::Zero, 0, "from-pre"),
    );
    br.send(
        1,
        publish(TopicRef::Short(*b"ab"), SnQoS::Zero, 0, "from-short"),
    );
    let got = br.mqtt_take("obs");
    let topics: Vec<&str> = got
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.topic.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(topics, vec!["pre/def", "ab"]);
}

#[test]
fn gateway_publishes_qos2_to_the_client() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    br.subscribe(1, 1, SubTopic::Short(*b"q2"), QoS::ExactlyOnce);
    br.mqtt_connect("pub");
    br.mqtt_publish("pub", "q2", "x", QoS::ExactlyOnce, false);
    let got = br.take(1);
    let p = publishes(&got);
    assert_eq!(p[0].qos, SnQoS::Two);
    let m = p[0].msg_id;
    br.send(1, SnMessage::PubRec { msg_id: m });
    assert_eq!(br.take(1), vec![SnMessage::PubRel { msg_id: m }]);
    br.send(1, SnMessage::PubComp { msg_id: m });
    assert!(br.take(1).is_empty());
    // The flow ended at the session: the next QoS 2 message goes out.
    br.mqtt_publish("pub", "q2", "y", QoS::ExactlyOnce, false);
    assert_eq!(text(publishes(&br.take(1))[0]), "y");
}

#[test]
fn unsubscribe_stops_deliveries() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    br.subscribe(1, 1, SubTopic::Short(*b"ab"), QoS::AtMostOnce);
    br.send(
        1,
        SnMessage::Unsubscribe {
            msg_id: MsgId(2),
            topic: SubTopic::Short(*b"ab"),
        },
    );
    assert_eq!(br.take(1), vec![SnMessage::UnsubAck { msg_id: MsgId(2) }]);
    br.mqtt_connect("pub");
    br.mqtt_publish("pub", "ab", "x", QoS::AtMostOnce, false);
    assert!(br.take(1).is_empty());
}

#[test]
fn retained_message_follows_suback() {
    let mut br = Broker::new();
    br.mqtt_connect("pub");
    br.mqtt_publish("pub", "r/x", "kept", QoS::AtMostOnce, true);
    br.connect(1, "dev1", true, 60);
    br.send(
        1,
        SnMessage::Subscribe(SnSubscribe {
            dup: false,
            qos: QoS::AtMostOnce,
            msg_id: MsgId(1),
            topic: SubTopic::Name(b("r/x")),
        }),
    );
    let got = br.take(1);
    assert!(matches!(got[0], SnMessage::SubAck { .. }), "{got:?}");
    let p = publishes(&got);
    assert_eq!(p.len(), 1);
    assert!(p[0].retain, "from the retained store: RETAIN set");
    assert_eq!(text(p[0]), "kept");
}

#[test]
fn retained_publish_from_the_client_reaches_later_mqtt_subscribers() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    let mut m = publish(TopicRef::Short(*b"rt"), SnQoS::One, 3, "state");
    if let SnMessage::Publish(p) = &mut m {
        p.retain = true;
    }
    br.send(1, m);
    br.take(1);
    br.mqtt_connect("late");
    br.mqtt_subscribe("late", "rt", QoS::AtMostOnce);
    assert_eq!(br.mqtt_payloads("late"), vec!["state"]);
}

//! Bad and hostile input: malformed datagrams, unknown topic ids, refused CONNECTs, QoS -1
//! from anywhere, gateway discovery, and the anti-amplification rules.

use super::*;

#[test]
fn malformed_datagrams_are_dropped_and_counted() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    let bad: [&[u8]; 6] = [
        b"",
        b"\x07\x0c\x00\x00\x01",         // truncated: the length says 7
        b"\x09\x16",                     // the length lies
        b"\x02\x03",                     // reserved type
        b"\x03\x18\x01",                 // DISCONNECT with half a duration
        b"\x07\x0c\x03\x00\x01\x00\x00", // reserved topic id type
    ];
    for d in bad {
        br.send_raw(1, Bytes::copy_from_slice(d));
        br.send_raw(9, Bytes::copy_from_slice(d));
    }
    assert!(br.take(1).is_empty());
    assert!(
        br.take(9).is_empty(),
        "no answer to garbage, not even DISCONNECT"
    );
    assert_eq!(br.gw.stats().malformed, 12);
    assert_eq!(
        br.gw.client_count(),
        1,
        "a bad datagram does not end a connection"
    );
    // Larger than max_message_size: dropped unread.
    let mut c = config();
    c.max_message_size = 64;
    let mut small = Broker::with(c);
    small.send_raw(1, Bytes::from(vec![0u8; 65]));
    assert_eq!(small.gw.stats().oversized, 1);
}

#[test]
fn publish_to_an_unregistered_topic_id_is_refused_with_invalid_topic_id() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    for (qos, msg_id) in [(SnQoS::Zero, 0), (SnQoS::One, 4)] {
        br.send(1, publish(TopicRef::Normal(TopicId(77)), qos, msg_id, "x"));
        assert_eq!(
            br.take(1),
            vec![SnMessage::PubAck {
                topic_id: TopicId(77),
                msg_id: MsgId(msg_id),
                code: ReturnCode::InvalidTopicId
            }]
        );
    }
    br.send(
        1,
        publish(TopicRef::Predefined(TopicId(6)), SnQoS::One, 5, "x"),
    );
    assert!(matches!(
        br.take(1).as_slice(),
        [SnMessage::PubAck {
            code: ReturnCode::InvalidTopicId,
            ..
        }]
    ));
}

#[test]
fn register_with_an_invalid_name_is_refused() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    for name in ["a/#", "", "a/+/b", "bad\u{0}"] {
        br.send(
            1,
            SnMessage::Register {
                topic_id: TopicId::NONE,
                msg_id: MsgId(3),
                topic_name: b(name),
            },
        );
        assert_eq!(
            br.take(1),
            vec![SnMessage::RegAck {
                topic_id: TopicId::NONE,
                msg_id: MsgId(3),
                code: ReturnCode::NotSupported
            }],
            "{name:?}"
        );
    }
}

#[test]
fn client_puback_invalid_topic_id_makes_the_gateway_register_again() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    let s = br.subscribe(1, 1, SubTopic::Name(b("a/b")), QoS::AtLeastOnce);
    let SnMessage::SubAck { topic_id, .. } = s else {
        panic!("{s:?}")
    };
    br.mqtt_connect("pub");
    br.mqtt_publish("pub", "a/b", "1", QoS::AtLeastOnce, false);
    let got = br.take(1);
    let m = publishes(&got)[0].msg_id;
    // The client lost its table: "invalid topic id" (6.10).
    br.send(
        1,
        SnMessage::PubAck {
            topic_id,
            msg_id: m,
            code: ReturnCode::InvalidTopicId,
        },
    );
    br.mqtt_publish("pub", "a/b", "2", QoS::AtLeastOnce, false);
    let got = br.take(1);
    assert!(
        matches!(&got[..], [SnMessage::Register { topic_name, .. }] if topic_name == &b("a/b")),
        "{got:?}"
    );
}

#[test]
fn refused_registration_makes_the_message_undeliverable_not_stuck() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    br.subscribe(1, 1, SubTopic::Name(b("w/#")), QoS::AtLeastOnce);
    br.mqtt_connect("pub");
    br.mqtt_publish("pub", "w/1", "one", QoS::AtLeastOnce, false);
    br.mqtt_publish("pub", "w/2", "two", QoS::AtLeastOnce, false);
    let got = br.take(1);
    let [
        SnMessage::Register {
            topic_id, msg_id, ..
        },
    ] = got.as_slice()
    else {
        panic!("{got:?}")
    };
    let (t, m) = (*topic_id, *msg_id);
    br.send(
        1,
        SnMessage::RegAck {
            topic_id: t,
            msg_id: m,
            code: ReturnCode::Congestion,
        },
    );
    // The QoS 1 flow of "one" ended at the session as failed; "two" comes next.
    let got = br.take(1);
    assert!(
        matches!(&got[..], [SnMessage::Register { topic_name, .. }] if topic_name == &b("w/2")),
        "{got:?}"
    );
    assert_eq!(br.gw.stats().clients.undeliverable, 1);
}

#[test]
fn registry_full_refuses_register_and_subscribe() {
    let mut c = config();
    c.max_topics_per_client = 1;
    let mut br = Broker::with(c);
    br.connect(1, "dev1", true, 60);
    br.register(1, 1, "a");
    br.send(
        1,
        SnMessage::Register {
            topic_id: TopicId::NONE,
            msg_id: MsgId(2),
            topic_name: b("b/c"),
        },
    );
    assert!(matches!(
        br.take(1).as_slice(),
        [SnMessage::RegAck {
            code: ReturnCode::NotSupported,
            ..
        }]
    ));
    let s = br.subscribe(1, 3, SubTopic::Name(b("x/y")), QoS::AtMostOnce);
    assert!(
        matches!(
            s,
            SnMessage::SubAck {
                code: ReturnCode::NotSupported,
                ..
            }
        ),
        "{s:?}"
    );
}

#[test]
fn refused_connects() {
    let mut br = Broker::new();
    let bad_protocol = SnMessage::Connect(SnConnect {
        will: false,
        clean_session: true,
        protocol_id: 2,
        duration: 10,
        client_id: b("dev1"),
    });
    for msg in [
        bad_protocol,
        connect_msg("", false, true, 10),
        connect_msg("bad\u{1}id", false, true, 10),
    ] {
        br.send(1, msg);
        assert_eq!(
            br.take(1),
            vec![SnMessage::ConnAck {
                code: ReturnCode::NotSupported
            }]
        );
    }
    assert_eq!(br.gw.client_count(), 0);
    assert_eq!(br.gw.stats().refused_connects, 3);
    // A will the broker refuses (retain while retained messages are off): the session's
    // refusal (CONNACK 0x9A) becomes "not supported".
    br.limits = Arc::new(Limits {
        retain_available: false,
        ..Limits::default()
    });
    br.send(1, connect_msg("dev2", true, true, 10));
    br.send(
        1,
        SnMessage::WillTopic(Some(WillTopic {
            qos: QoS::AtMostOnce,
            retain: true,
            topic: b("w"),
        })),
    );
    br.send(1, SnMessage::WillMsg { msg: b("m") });
    let got = br.take(1);
    assert_eq!(
        got.last(),
        Some(&SnMessage::ConnAck {
            code: ReturnCode::NotSupported
        })
    );
    assert_eq!(br.gw.client_count(), 0);
}

#[test]
fn qos_minus_one_from_anywhere_reaches_subscribers_and_is_never_answered() {
    let mut br = Broker::new();
    br.mqtt_connect("obs");
    br.mqtt_subscribe("obs", "#", QoS::AtMostOnce);
    br.send(
        50,
        publish(TopicRef::Predefined(TopicId(5)), SnQoS::MinusOne, 0, "pre"),
    );
    br.send(
        51,
        publish(TopicRef::Short(*b"sh"), SnQoS::MinusOne, 0, "short"),
    );
    // Not usable without a connection: a normal id, an unknown pre-defined id.
    br.send(
        52,
        publish(TopicRef::Normal(TopicId(1)), SnQoS::MinusOne, 0, "no"),
    );
    br.send(
        53,
        publish(TopicRef::Predefined(TopicId(9)), SnQoS::MinusOne, 0, "no"),
    );
    let got = br.mqtt_take("obs");
    let got: Vec<(String, String)> = got
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                p.topic.as_str().to_owned(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("pre/def".to_owned(), "pre".to_owned()),
            ("sh".to_owned(), "short".to_owned())
        ]
    );
    for addr in 50..=53 {
        assert!(br.take(addr).is_empty(), "reply to {addr}");
    }
    let s = br.gw.stats();
    assert_eq!((s.anonymous_publishes, s.anonymous_dropped), (2, 2));
    assert_eq!(br.gw.client_count(), 0, "no state for QoS -1 senders");
}

#[test]
fn searchgw_gets_a_gwinfo_no_larger_than_itself() {
    let mut c = config();
    c.gateway_id = 42;
    let mut br = Broker::with(c);
    br.send_raw(7, b("\x03\x01\x01"));
    assert_eq!(
        br.take(7),
        vec![SnMessage::GwInfo {
            gw_id: 42,
            gw_addr: Bytes::new()
        }]
    );
    assert_eq!(br.gw.client_count(), 0);
}

#[test]
fn unconnected_addresses_get_at_most_a_small_disconnect() {
    let mut br = Broker::new();
    br.mqtt_connect("pub");
    // A sleeping client with buffered data...
    br.connect(1, "dev1", false, 60);
    br.subscribe(1, 1, SubTopic::Short(*b"sl"), QoS::AtMostOnce);
    br.send(
        1,
        SnMessage::Disconnect {
            duration: Some(300),
        },
    );
    br.take(1);
    for i in 0..20 {
        br.mqtt_publish(
            "pub",
            "sl",
            &format!("secret {i} {}", "x".repeat(200)),
            QoS::AtMostOnce,
            false,
        );
    }
    // ...woken by someone else naming it: nothing of its data goes there, only DISCONNECT
    // (2 bytes for a 6-byte PINGREQ), and the client itself is untouched.
    br.send(
        66,
        SnMessage::PingReq {
            client_id: Some(b("dev1")),
        },
    );
    assert_eq!(br.take(66), vec![SnMessage::Disconnect { duration: None }]);
    assert!(br.take(1).is_empty());
    // Client messages from unknown addresses: DISCONNECT, never longer than the datagram.
    br.send(67, publish(TopicRef::Normal(TopicId(1)), SnQoS::One, 1, ""));
    br.send(
        68,
        SnMessage::Subscribe(SnSubscribe {
            dup: false,
            qos: QoS::AtMostOnce,
            msg_id: MsgId(1),
            topic: SubTopic::Name(b("#")),
        }),
    );
    assert_eq!(br.take(67), vec![SnMessage::Disconnect { duration: None }]);
    assert_eq!(br.take(68), vec![SnMessage::Disconnect { duration: None }]);
    // A DISCONNECT or a gateway's message from an unknown address is not answered.
    br.send(69, SnMessage::Disconnect { duration: None });
    br.send(
        69,
        SnMessage::Advertise {
            gw_id: 3,
            duration: 900,
        },
    );
    br.send(69, SnMessage::PingResp);
    assert!(br.take(69).is_empty());
    assert_eq!(br.gw.client_count(), 1);
    // The real client, waking from its own address, gets everything buffered once it has
    // proved the address (its few bytes so far pay for no 200-byte message).
    br.send(
        1,
        SnMessage::PingReq {
            client_id: Some(b("dev1")),
        },
    );
    let got = br.take(1);
    let [
        SnMessage::Register {
            topic_id, msg_id, ..
        },
    ] = got[..]
    else {
        panic!("a challenge expected, got {got:?}")
    };
    br.send(
        1,
        SnMessage::RegAck {
            topic_id,
            msg_id,
            code: ReturnCode::Accepted,
        },
    );
    let got = br.take(1);
    assert_eq!(publishes(&got).len(), 20);
    assert_eq!(got.last(), Some(&SnMessage::PingResp));
}

#[test]
fn advertise_is_broadcast_every_interval() {
    let mut c = config();
    c.advertise_interval_secs = 900;
    c.advertise_to = Some("255.255.255.255:1884".parse().expect("addr"));
    c.gateway_id = 3;
    let mut br = Broker::with(c);
    br.advance(1);
    br.advance(900_000);
    br.advance(900_000);
    let adv = SnMessage::Advertise {
        gw_id: 3,
        duration: 900,
    };
    assert_eq!(br.broadcasts, vec![adv.clone(), adv.clone(), adv]);
    // Without a destination there is no ADVERTISE.
    let mut c = config();
    c.advertise_to = None;
    let br = Broker::with(c);
    assert_eq!(br.gw.next_deadline(), None);
}

#[test]
fn unknown_msg_ids_and_stray_acks_are_ignored() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    for m in [
        SnMessage::PubAck {
            topic_id: TopicId(1),
            msg_id: MsgId(99),
            code: ReturnCode::Accepted,
        },
        SnMessage::PubRec { msg_id: MsgId(99) },
        SnMessage::PubComp { msg_id: MsgId(99) },
        SnMessage::RegAck {
            topic_id: TopicId(1),
            msg_id: MsgId(99),
            code: ReturnCode::Accepted,
        },
        SnMessage::ConnAck {
            code: ReturnCode::Accepted,
        },
        SnMessage::WillTopicReq,
    ] {
        br.send(1, m);
    }
    assert!(br.take(1).is_empty());
    assert_eq!(br.gw.client_count(), 1);
    assert_eq!(br.gw.stats().clients.ignored, 6);
}

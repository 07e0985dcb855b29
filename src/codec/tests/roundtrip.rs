//! `decode(encode(p)) == p` for every packet type at every level, every v5 property, and
//! encodings compared with literal bytes (examples of the specification).

use bytes::Bytes;

use super::*;

fn users() -> Vec<UserProperty> {
    // Order matters and duplicates are allowed (3.1.2.11.8).
    vec![
        UserProperty {
            name: s("k"),
            value: s("v1"),
        },
        UserProperty {
            name: s("a"),
            value: s("x"),
        },
        UserProperty {
            name: s("k"),
            value: s("v2"),
        },
    ]
}

fn connect(protocol: ProtocolVersion) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: s("client-1"),
        will: Some(Will {
            topic: topic("will/topic"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"\x00secret\xFF")),
        properties: ConnectProperties::default(),
    }
}

fn full_connect_v5() -> Connect {
    let mut c = connect(V5);
    c.properties = ConnectProperties {
        session_expiry_interval: Some(3600),
        receive_maximum: Some(20),
        maximum_packet_size: Some(65_536),
        topic_alias_maximum: Some(10),
        request_response_information: Some(true),
        request_problem_information: Some(false),
        user_properties: users(),
        authentication_method: Some(s("SCRAM-SHA-1")),
        authentication_data: Some(Bytes::from_static(b"\x01\x02")),
    };
    if let Some(w) = &mut c.will {
        w.properties = WillProperties {
            will_delay_interval: Some(30),
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(120),
            content_type: Some(s("text/plain")),
            response_topic: Some(topic("reply/here")),
            correlation_data: Some(Bytes::from_static(b"corr")),
            user_properties: users(),
        };
    }
    c
}

fn publish(qos: QoS, id: Option<u16>) -> Publish {
    Publish {
        dup: qos != QoS::AtMostOnce,
        qos,
        retain: true,
        topic: topic("a/b"),
        packet_id: id.map(pid),
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"payload"),
    }
}

fn full_publish_props() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(true),
        message_expiry_interval: Some(60),
        topic_alias: Some(3),
        response_topic: Some(topic("resp")),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        user_properties: users(),
        subscription_identifiers: vec![1, 268_435_455, 128],
        content_type: Some(s("application/json")),
    }
}

fn ack_props() -> AckProperties {
    AckProperties {
        reason_string: Some(s("because")),
        user_properties: users(),
    }
}

fn subscribe(version: ProtocolVersion) -> Subscribe {
    let v5 = version.is_v5();
    let opt = |qos, rh| SubscriptionOptions {
        qos,
        no_local: v5,
        retain_as_published: v5,
        retain_handling: if v5 {
            rh
        } else {
            RetainHandling::SendAtSubscribe
        },
    };
    Subscribe {
        packet_id: pid(10),
        filters: vec![
            (
                filter("a/+"),
                opt(QoS::AtMostOnce, RetainHandling::SendAtSubscribe),
            ),
            (
                filter("b/#"),
                opt(QoS::AtLeastOnce, RetainHandling::SendAtSubscribeIfNew),
            ),
            (
                filter("c"),
                opt(QoS::ExactlyOnce, RetainHandling::DoNotSend),
            ),
        ],
        properties: SubscribeProperties::default(),
    }
}

/// Every packet type, with the fields the level carries, at `v`.
fn all_packets(v: ProtocolVersion) -> Vec<Packet> {
    let mut out = vec![
        Packet::Connect(Box::new(connect(v))),
        Packet::Connect(Box::new(Connect {
            will: None,
            username: None,
            password: None,
            clean_start: false,
            ..connect(v)
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: ConnAckProperties::default(),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::NotAuthorized,
            properties: ConnAckProperties::default(),
        }),
        Packet::Publish(publish(QoS::AtMostOnce, None)),
        Packet::Publish(Publish {
            dup: false,
            retain: false,
            ..publish(QoS::AtMostOnce, None)
        }),
        Packet::Publish(publish(QoS::AtLeastOnce, Some(1))),
        Packet::Publish(publish(QoS::ExactlyOnce, Some(65_535))),
        Packet::PubAck(Ack::new(pid(1))),
        Packet::PubRec(Ack::new(pid(2))),
        Packet::PubRel(Ack::new(pid(3))),
        Packet::PubComp(Ack::new(pid(4))),
        Packet::Subscribe(subscribe(v)),
        Packet::SubAck(SubAck {
            packet_id: pid(10),
            reasons: vec![
                ReasonCode::GrantedQoS0,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
                ReasonCode::UnspecifiedError,
            ],
            properties: AckProperties::default(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(11),
            filters: vec![filter("a/+"), filter("b")],
            user_properties: Vec::new(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(11),
            reasons: Vec::new(),
            properties: AckProperties::default(),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::new(ReasonCode::NormalDisconnection)),
    ];
    if v.is_v5() {
        out.push(Packet::Auth(Auth {
            reason: ReasonCode::Success,
            properties: Default::default(),
        }));
    }
    out
}

#[test]
fn every_packet_type_round_trips_at_every_level() {
    for v in [V31, V311, V5] {
        for p in all_packets(v) {
            roundtrip(&p, v);
        }
    }
}

#[test]
fn every_v5_property_round_trips() {
    let packets = vec![
        Packet::Connect(Box::new(full_connect_v5())),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: ConnAckProperties {
                session_expiry_interval: Some(0),
                receive_maximum: Some(100),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                maximum_packet_size: Some(1 << 20),
                assigned_client_identifier: Some(s("auto-123")),
                topic_alias_maximum: Some(0),
                reason_string: Some(s("welcome")),
                user_properties: users(),
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(false),
                shared_subscription_available: Some(true),
                server_keep_alive: Some(30),
                response_information: Some(s("resp/")),
                server_reference: Some(s("other:1883")),
                authentication_method: Some(s("SCRAM-SHA-1")),
                authentication_data: Some(Bytes::from_static(b"final")),
            },
        }),
        Packet::Publish(Publish {
            properties: full_publish_props(),
            ..publish(QoS::ExactlyOnce, Some(9))
        }),
        Packet::PubAck(Ack {
            packet_id: pid(1),
            reason: ReasonCode::NoMatchingSubscribers,
            properties: ack_props(),
        }),
        Packet::PubRec(Ack {
            packet_id: pid(2),
            reason: ReasonCode::QuotaExceeded,
            properties: ack_props(),
        }),
        Packet::PubRel(Ack {
            packet_id: pid(3),
            reason: ReasonCode::PacketIdentifierNotFound,
            properties: ack_props(),
        }),
        Packet::PubComp(Ack {
            packet_id: pid(4),
            reason: ReasonCode::Success,
            properties: ack_props(),
        }),
        // Reason code without properties (Remaining Length 3).
        Packet::PubAck(Ack {
            packet_id: pid(5),
            reason: ReasonCode::NotAuthorized,
            properties: AckProperties::default(),
        }),
        Packet::Subscribe(Subscribe {
            properties: SubscribeProperties {
                subscription_identifier: Some(268_435_455),
                user_properties: users(),
            },
            ..subscribe(V5)
        }),
        Packet::SubAck(SubAck {
            packet_id: pid(10),
            reasons: vec![
                ReasonCode::GrantedQoS2,
                ReasonCode::NotAuthorized,
                ReasonCode::WildcardSubscriptionsNotSupported,
            ],
            properties: ack_props(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(11),
            filters: vec![filter("x")],
            user_properties: users(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(11),
            reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
            properties: ack_props(),
        }),
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::ServerMoved,
            properties: DisconnectProperties {
                session_expiry_interval: Some(10),
                reason_string: Some(s("moving")),
                user_properties: users(),
                server_reference: Some(s("b:1883")),
            },
        }),
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
        Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: Some(s("SCRAM-SHA-1")),
                authentication_data: Some(Bytes::from_static(b"client-first")),
                reason_string: Some(s("continue")),
                user_properties: users(),
            },
        }),
    ];
    // Subscription identifiers in PUBLISH only travel server -> client.
    for p in &packets {
        roundtrip_with(p, V5, &client_limits());
    }
}

#[test]
fn empty_topic_with_alias_round_trips_as_default_topic() {
    let p = Packet::Publish(Publish {
        topic: TopicName::default(),
        properties: PublishProperties {
            topic_alias: Some(7),
            ..Default::default()
        },
        ..publish(QoS::AtMostOnce, None)
    });
    roundtrip(&p, V5);
}

#[test]
fn v311_connect_literal_bytes() {
    // 3.1.1 section 3.1.2.10 example variable header (flags CE: user name, password, will
    // QoS 1, will flag, clean session; keep alive 10), then the payload fields.
    let bytes = "10 19 0004'MQTT' 04 CE 000A 0001'c' 0001'w' 0001'm' 0001'u' 0001'p'";
    let p = Packet::Connect(Box::new(Connect {
        protocol: V311,
        clean_start: true,
        keep_alive: 10,
        client_id: s("c"),
        will: Some(Will {
            topic: topic("w"),
            payload: Bytes::from_static(b"m"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        }),
        username: Some(s("u")),
        password: Some(Bytes::from_static(b"p")),
        properties: ConnectProperties::default(),
    }));
    assert_eq!(dec(bytes, None), Ok(p.clone()));
    assert_eq!(enc(&p, V311), hex(bytes));
}

#[test]
fn v31_connect_literal_bytes() {
    let bytes = "10 11 0006'MQIsdp' 03 02 003C 0003'abc'";
    let p = dec(bytes, None).unwrap();
    let Packet::Connect(c) = &p else {
        panic!("not a CONNECT: {p:?}")
    };
    assert_eq!(
        (c.protocol, c.keep_alive, c.client_id.as_str()),
        (V31, 60, "abc")
    );
    assert_eq!(enc(&p, V31), hex(bytes));
}

#[test]
fn publish_literal_bytes() {
    // 3.1.1 section 3.3.2.3 example: topic "a/b", packet identifier 10.
    let bytes = "33 09 0003'a/b' 000A 'hi'";
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: topic("a/b"),
        packet_id: Some(pid(10)),
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"hi"),
    });
    assert_eq!(dec(bytes, Some(V311)), Ok(p.clone()));
    assert_eq!(enc(&p, V311), hex(bytes));
    // 5.0 adds the property length (0) after the packet identifier.
    assert_eq!(enc(&p, V5), hex("33 0A 0003'a/b' 000A 00 'hi'"));
}

#[test]
fn publish_payload_and_topic_are_views_of_the_input() {
    let mut buf = hex("30 07 0003'a/b' 'hi'");
    let start = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, Some(V311), &limits()) else {
        panic!("no publish")
    };
    assert_eq!(p.payload.as_ptr() as usize, start + 7, "payload was copied");
    assert_eq!(
        p.topic.as_bytes().as_ptr() as usize,
        start + 4,
        "topic was copied"
    );
}

#[test]
fn subscribe_literal_bytes() {
    // 3.1.1 section 3.8.3 example: "a/b" QoS 1, "c/d" QoS 2, packet identifier 10.
    let bytes = "82 0E 000A 0003'a/b' 01 0003'c/d' 02";
    let p = dec(bytes, Some(V311)).unwrap();
    let Packet::Subscribe(sub) = &p else {
        panic!("not a SUBSCRIBE")
    };
    assert_eq!(sub.filters.len(), 2);
    assert_eq!(sub.filters[1].1.qos, QoS::ExactlyOnce);
    assert_eq!(enc(&p, V311), hex(bytes));
    // 5.0 options: QoS 1, no local, retain as published, retain handling 2 = 0x2D.
    let v5 = dec("82 09 000A 00 0003'a/b' 2D", Some(V5)).unwrap();
    let Packet::Subscribe(sub) = &v5 else {
        panic!("not a SUBSCRIBE")
    };
    let o = sub.filters[0].1;
    assert_eq!(
        (o.qos, o.no_local, o.retain_as_published),
        (QoS::AtLeastOnce, true, true)
    );
    assert_eq!(o.retain_handling, RetainHandling::DoNotSend);
}

#[test]
fn short_forms_of_v5_acks_disconnect_and_auth() {
    assert_eq!(
        enc(&Packet::PubAck(Ack::new(pid(1))), V5),
        hex("40 02 0001")
    );
    assert_eq!(
        dec("40 03 0001 00", Some(V5)),
        Ok(Packet::PubAck(Ack::new(pid(1))))
    );
    assert_eq!(
        dec("40 04 0001 00 00", Some(V5)),
        Ok(Packet::PubAck(Ack::new(pid(1))))
    );
    let normal = Packet::Disconnect(Disconnect::new(ReasonCode::NormalDisconnection));
    assert_eq!(enc(&normal, V5), hex("E0 00"));
    assert_eq!(dec("E0 01 00", Some(V5)), Ok(normal.clone()));
    assert_eq!(enc(&normal, V311), hex("E0 00"));
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::Success,
        properties: Default::default(),
    });
    assert_eq!(enc(&auth, V5), hex("F0 00"));
    assert_eq!(dec("F0 00", Some(V5)), Ok(auth.clone()));
    // AUTH has no 3.x encoding.
    assert_eq!(encoded_len(&auth, V311), 0);
    assert!(enc(&auth, V311).is_empty());
}

#[test]
fn v3_return_codes_literal_bytes() {
    let refused = |reason| {
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Default::default(),
        })
    };
    assert_eq!(
        enc(&refused(ReasonCode::UnsupportedProtocolVersion), V311),
        hex("20 02 00 01")
    );
    assert_eq!(
        enc(&refused(ReasonCode::ClientIdentifierNotValid), V311),
        hex("20 02 00 02")
    );
    assert_eq!(enc(&refused(ReasonCode::Banned), V311), hex("20 02 00 05"));
    assert_eq!(
        enc(&refused(ReasonCode::UnsupportedProtocolVersion), V5),
        hex("20 03 00 84 00")
    );
    let suback = Packet::SubAck(SubAck {
        packet_id: pid(1),
        reasons: vec![ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized],
        properties: Default::default(),
    });
    assert_eq!(enc(&suback, V311), hex("90 04 0001 01 80"));
    assert_eq!(enc(&suback, V5), hex("90 05 0001 00 01 87"));
}

#[test]
fn v3_encoding_drops_v5_only_fields() {
    let p = Packet::Publish(Publish {
        properties: full_publish_props(),
        ..publish(QoS::AtLeastOnce, Some(2))
    });
    assert_eq!(enc(&p, V311), hex("3B 0E 0003'a/b' 0002 'payload'"));
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: pid(3),
        reasons: vec![ReasonCode::NoSubscriptionExisted],
        properties: ack_props(),
    });
    assert_eq!(enc(&unsuback, V311), hex("B0 02 0003"));
}

#[test]
fn encoded_len_matches_for_large_remaining_lengths() {
    for n in [0usize, 120, 121, 16_380, 16_400, 2_097_200] {
        let p = Packet::Publish(Publish {
            payload: Bytes::from(vec![0u8; n]),
            ..publish(QoS::AtMostOnce, None)
        });
        let bytes = enc(&p, V5);
        let big = DecodeLimits {
            max_packet_size: u32::MAX,
            ..limits()
        };
        roundtrip_with(&p, V5, &big);
        assert_eq!(bytes.len(), encoded_len(&p, V5));
    }
}

#[test]
fn borrowed_publish_encodes_like_the_owned_packet() {
    // The broker's delivery path writes from borrowed parts with per-delivery values; the
    // bytes must be those of the owned packet carrying the same values.
    let base = full_publish_props();
    for v in [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ] {
        for (qos, id) in [(QoS::AtMostOnce, None), (QoS::ExactlyOnce, Some(7))] {
            let mut owned = publish(qos, id);
            owned.dup = id.is_some();
            owned.retain = true;
            owned.properties = base.clone();
            owned.properties.message_expiry_interval = Some(42);
            owned.properties.topic_alias = None;
            owned.properties.subscription_identifiers = vec![3, 268_435_455];
            let mut expected = BytesMut::new();
            encode(&Packet::Publish(owned.clone()), v, &mut expected);

            let view = PublishOut {
                dup: owned.dup,
                qos,
                retain: true,
                topic: &owned.topic,
                packet_id: owned.packet_id,
                properties: &base,
                message_expiry_interval: Some(42),
                topic_alias: None,
                subscription_identifiers: &[3, 268_435_455],
                payload: &owned.payload,
            };
            let mut got = BytesMut::new();
            let n = encode_publish(&view, v, &mut got);
            assert_eq!(got, expected, "{v:?} {qos:?}");
            assert_eq!(n, got.len());
        }
    }
}

/// Property blocks kept by storage read back to what was written.
#[test]
fn stored_property_blocks_round_trip() {
    use crate::codec::{
        decode_publish_properties, decode_will_properties, encode_publish_properties,
        encode_will_properties,
    };
    let publish = PublishProperties {
        payload_format_indicator: Some(true),
        message_expiry_interval: Some(30),
        response_topic: Some(crate::codec::topic::TopicName::from_static("re/ply")),
        correlation_data: Some(bytes::Bytes::from_static(b"\x01\x02")),
        content_type: Some(MqttStr::try_from_str("text/plain").expect("str")),
        ..PublishProperties::default()
    };
    let mut block = bytes::BytesMut::new();
    encode_publish_properties(&publish, &mut block);
    assert_eq!(decode_publish_properties(block.freeze()), Ok(publish));
    let will = WillProperties {
        will_delay_interval: Some(5),
        ..WillProperties::default()
    };
    let mut block = bytes::BytesMut::new();
    encode_will_properties(&will, &mut block);
    assert_eq!(decode_will_properties(block.freeze()), Ok(will));
    assert!(decode_publish_properties(bytes::Bytes::from_static(b"\x05\x01")).is_err());
}

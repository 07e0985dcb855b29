//! Time and state: sleeping clients (6.14), keep alive (6.11), retransmission under loss
//! (6.13), will updates (6.4), reconnection and takeover, the gateway's session ping.

use super::*;

/// Subscribes `dev1` (at address 1) to the short topic "sl" at QoS 1 and puts it to sleep.
fn asleep(br: &mut Broker, sleep_s: u16) {
    br.connect(1, "dev1", false, 60);
    br.subscribe(1, 1, SubTopic::Short(*b"sl"), QoS::AtLeastOnce);
    br.send(
        1,
        SnMessage::Disconnect {
            duration: Some(sleep_s),
        },
    );
    assert_eq!(br.take(1), vec![SnMessage::Disconnect { duration: None }]);
    br.mqtt_connect("pub");
}

/// Acknowledges every QoS 1 PUBLISH in `msgs`.
fn ack_all(br: &mut Broker, msgs: &[SnMessage]) {
    for p in publishes(msgs) {
        if p.qos == SnQoS::One {
            br.send(
                1,
                SnMessage::PubAck {
                    topic_id: TopicId::NONE,
                    msg_id: p.msg_id,
                    code: ReturnCode::Accepted,
                },
            );
        }
    }
}

#[test]
fn sleeping_client_gets_buffered_messages_when_it_wakes() {
    let mut br = Broker::new();
    asleep(&mut br, 300);
    br.mqtt_publish("pub", "sl", "a", QoS::AtMostOnce, false);
    br.mqtt_publish("pub", "sl", "b", QoS::AtLeastOnce, false);
    br.mqtt_publish("pub", "sl", "c", QoS::AtLeastOnce, false);
    br.mqtt_publish("pub", "sl", "d", QoS::AtMostOnce, false);
    br.advance(100_000);
    assert!(br.take(1).is_empty(), "nothing reaches a sleeping client");
    assert!(
        br.sessions[&id("dev1")].is_connected(),
        "the MQTT connection stays"
    );

    br.send(
        1,
        SnMessage::PingReq {
            client_id: Some(b("dev1")),
        },
    );
    let mut seen = Vec::new();
    let mut rounds = 0;
    loop {
        let got = br.take(1);
        seen.extend(publishes(&got).iter().map(|p| text(p)));
        if got.last() == Some(&SnMessage::PingResp) {
            assert!(publishes(&got[..got.len() - 1]).len() == got.len() - 1);
            break;
        }
        assert!(!got.is_empty(), "stalled after {seen:?}");
        ack_all(&mut br, &got);
        rounds += 1;
        assert!(rounds < 10);
    }
    // QoS 0 "d" waited behind the QoS 1 messages in the session's queue, in order.
    assert_eq!(seen, vec!["a", "b", "c", "d"]);
    // Back to sleep: the next message waits again.
    br.mqtt_publish("pub", "sl", "e", QoS::AtMostOnce, false);
    assert!(br.take(1).is_empty());
    br.send(
        1,
        SnMessage::PingReq {
            client_id: Some(b("dev1")),
        },
    );
    let got = br.take(1);
    assert_eq!(text(publishes(&got)[0]), "e");
    assert_eq!(got.last(), Some(&SnMessage::PingResp));
}

#[test]
fn wake_with_nothing_buffered_is_just_pingresp() {
    let mut br = Broker::new();
    asleep(&mut br, 300);
    br.send(
        1,
        SnMessage::PingReq {
            client_id: Some(b("dev1")),
        },
    );
    assert_eq!(br.take(1), vec![SnMessage::PingResp]);
}

#[test]
fn sleep_buffer_is_bounded_and_drops_oldest_qos0() {
    let mut c = config();
    c.sleep_buffer_messages = 3;
    let mut br = Broker::with(c);
    br.connect(1, "dev1", false, 60);
    br.subscribe(1, 1, SubTopic::Short(*b"sl"), QoS::AtMostOnce);
    br.send(
        1,
        SnMessage::Disconnect {
            duration: Some(300),
        },
    );
    br.take(1);
    br.mqtt_connect("pub");
    for m in ["1", "2", "3", "4", "5"] {
        br.mqtt_publish("pub", "sl", m, QoS::AtMostOnce, false);
    }
    br.send(
        1,
        SnMessage::PingReq {
            client_id: Some(b("dev1")),
        },
    );
    let got = br.take(1);
    let texts: Vec<String> = publishes(&got).iter().map(|p| text(p)).collect();
    assert_eq!(texts, vec!["3", "4", "5"]);
    assert_eq!(br.gw.stats().clients.dropped_qos0, 2);
}

#[test]
fn connect_makes_a_sleeping_client_active_without_a_new_session() {
    let mut br = Broker::new();
    asleep(&mut br, 300);
    br.mqtt_publish("pub", "sl", "x", QoS::AtLeastOnce, false);
    br.send(1, connect_msg("dev1", false, false, 60));
    let got = br.take(1);
    assert_eq!(
        got[0],
        SnMessage::ConnAck {
            code: ReturnCode::Accepted
        }
    );
    assert_eq!(text(publishes(&got)[0]), "x", "buffered messages follow");
    assert_eq!(br.gw.stats().lost, 0);
}

#[test]
fn sleeping_client_that_never_wakes_is_lost() {
    let mut br = Broker::new();
    br.mqtt_connect("obs");
    br.mqtt_subscribe("obs", "wills/#", QoS::AtMostOnce);
    br.send(1, connect_msg("dev1", true, false, 60));
    br.send(1, will_topic("wills/dev1", QoS::AtMostOnce));
    br.send(
        1,
        SnMessage::WillMsg {
            msg: b("slept away"),
        },
    );
    br.take(1);
    br.send(
        1,
        SnMessage::Disconnect {
            duration: Some(100),
        },
    );
    br.take(1);
    // Longer than the keep alive, shorter than 1.5 x the sleep: still there.
    br.advance(149_000);
    assert!(br.mqtt_payloads("obs").is_empty());
    assert_eq!(br.gw.client_count(), 1);
    br.advance(1_001);
    assert_eq!(br.mqtt_payloads("obs"), vec!["slept away"]);
    assert_eq!(br.gw.client_count(), 0);
    assert!(
        br.sessions.contains_key(&id("dev1")),
        "CleanSession 0: the session stays"
    );
}

#[test]
fn pingreq_keeps_an_active_client_alive() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 10);
    for _ in 0..5 {
        br.advance(9_000);
        br.send(1, SnMessage::PingReq { client_id: None });
        assert_eq!(br.take(1), vec![SnMessage::PingResp]);
    }
    assert_eq!(br.gw.client_count(), 1);
    br.advance(15_001);
    assert_eq!(br.gw.client_count(), 0);
}

#[test]
fn unacknowledged_publish_is_retransmitted_with_dup_then_the_client_is_lost() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 0);
    br.subscribe(1, 1, SubTopic::Short(*b"rt"), QoS::AtLeastOnce);
    br.mqtt_connect("pub");
    br.mqtt_publish("pub", "rt", "x", QoS::AtLeastOnce, false);
    let first = br.take(1);
    assert!(!publishes(&first)[0].dup);
    for n in 1..=3 {
        br.advance(9_999);
        assert!(br.take(1).is_empty(), "not before T_retry");
        br.advance(1);
        let got = br.take(1);
        let p = publishes(&got);
        assert_eq!(p.len(), 1, "retransmission {n}");
        assert!(p[0].dup, "DUP on retransmission (5.3.4)");
        assert_eq!(p[0].msg_id, publishes(&first)[0].msg_id);
    }
    // N_retry (3) retransmissions went unanswered: lost.
    br.advance(10_000);
    assert_eq!(br.take(1), vec![SnMessage::Disconnect { duration: None }]);
    assert_eq!(br.gw.client_count(), 0);
    assert_eq!(br.gw.stats().clients.retransmissions, 3);
}

/// Every 3rd datagram from the gateway is lost; the client acknowledges what it gets and
/// answers REGISTERs. All messages arrive, in order, duplicates only with DUP.
#[test]
fn deliveries_survive_induced_loss() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 0);
    br.subscribe(1, 1, SubTopic::Name(b("loss/#")), QoS::AtLeastOnce);
    br.mqtt_connect("pub");
    br.drop_every = Some(3);
    let sent: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    for (i, m) in sent.iter().enumerate() {
        let topic = if i % 2 == 0 { "loss/a" } else { "loss/b" };
        br.mqtt_publish("pub", topic, m, QoS::AtLeastOnce, false);
    }
    let mut received: Vec<String> = Vec::new();
    for _ in 0..400 {
        let got = br.take(1);
        for m in &got {
            match m {
                SnMessage::Publish(p) => {
                    let t = text(p);
                    if received.last() != Some(&t) {
                        assert!(!received.contains(&t) || p.dup, "undeclared duplicate {t}");
                        received.push(t);
                    }
                    br.send(
                        1,
                        SnMessage::PubAck {
                            topic_id: TopicId::NONE,
                            msg_id: p.msg_id,
                            code: ReturnCode::Accepted,
                        },
                    );
                }
                SnMessage::Register {
                    topic_id, msg_id, ..
                } => br.send(
                    1,
                    SnMessage::RegAck {
                        topic_id: *topic_id,
                        msg_id: *msg_id,
                        code: ReturnCode::Accepted,
                    },
                ),
                other => panic!("unexpected {other:?}"),
            }
        }
        if received.len() == sent.len() {
            break;
        }
        br.advance(10_000);
    }
    assert_eq!(received, sent);
    assert!(br.dropped > 0);
    assert!(br.gw.stats().clients.retransmissions > 0);
    assert_eq!(br.gw.client_count(), 1, "never lost: each loss was retried");
}

#[test]
fn will_updates_reach_the_session() {
    let mut br = Broker::new();
    br.mqtt_connect("obs");
    br.mqtt_subscribe("obs", "w/#", QoS::AtMostOnce);
    br.send(1, connect_msg("dev1", true, true, 10));
    br.send(1, will_topic("w/old", QoS::AtMostOnce));
    br.send(1, SnMessage::WillMsg { msg: b("old") });
    br.take(1);
    br.subscribe(1, 1, SubTopic::Short(*b"ab"), QoS::AtMostOnce);

    br.send(
        1,
        SnMessage::WillTopicUpd(Some(WillTopic {
            qos: QoS::AtMostOnce,
            retain: false,
            topic: b("w/new"),
        })),
    );
    assert_eq!(
        br.take(1),
        vec![SnMessage::WillTopicResp {
            code: ReturnCode::Accepted
        }]
    );
    br.send(1, SnMessage::WillMsgUpd { msg: b("new") });
    assert_eq!(
        br.take(1),
        vec![SnMessage::WillMsgResp {
            code: ReturnCode::Accepted
        }]
    );
    assert!(
        br.mqtt_payloads("obs").is_empty(),
        "no will published by the update"
    );

    // The clean session survived the swap with its subscription.
    br.mqtt_connect("pub");
    br.mqtt_publish("pub", "ab", "still subscribed", QoS::AtMostOnce, false);
    assert_eq!(text(publishes(&br.take(1))[0]), "still subscribed");

    br.advance(15_001);
    let wills = br.mqtt_take("obs");
    let [Packet::Publish(w)] = wills.as_slice() else {
        panic!("{wills:?}")
    };
    assert_eq!((w.topic.as_str(), &w.payload[..]), ("w/new", &b"new"[..]));
    assert!(
        !br.sessions.contains_key(&id("dev1")),
        "clean session ends when lost"
    );
}

#[test]
fn empty_willtopicupd_deletes_the_will() {
    let mut br = Broker::new();
    br.mqtt_connect("obs");
    br.mqtt_subscribe("obs", "w/#", QoS::AtMostOnce);
    br.send(1, connect_msg("dev1", true, true, 10));
    br.send(1, will_topic("w/x", QoS::AtMostOnce));
    br.send(1, SnMessage::WillMsg { msg: b("x") });
    br.take(1);
    br.send(1, SnMessage::WillTopicUpd(None));
    assert_eq!(
        br.take(1),
        vec![SnMessage::WillTopicResp {
            code: ReturnCode::Accepted
        }]
    );
    br.advance(15_001);
    assert_eq!(
        br.take(1),
        vec![SnMessage::Disconnect { duration: None }],
        "lost"
    );
    assert!(br.mqtt_payloads("obs").is_empty());
    // And WILLMSGUPD without a will topic is refused.
    br.connect(1, "dev1", true, 10);
    br.send(1, SnMessage::WillMsgUpd { msg: b("y") });
    assert_eq!(
        br.take(1),
        vec![SnMessage::WillMsgResp {
            code: ReturnCode::NotSupported
        }]
    );
}

#[test]
fn retransmitted_connect_is_answered_without_a_new_connection() {
    let mut br = Broker::new();
    br.connect(1, "dev1", false, 60);
    // CONNACK lost: the client sends the same CONNECT again (6.13).
    br.connect(1, "dev1", false, 60);
    assert_eq!(br.gw.stats().lost, 0);
    br.subscribe(1, 1, SubTopic::Short(*b"ab"), QoS::AtMostOnce);
    // After traffic, a CONNECT is a new connection: the old one counts as lost (its will
    // would go out) and the persistent session is resumed.
    br.connect(1, "dev1", false, 60);
    assert_eq!(br.gw.stats().lost, 1);
    br.mqtt_connect("pub");
    br.mqtt_publish("pub", "ab", "kept", QoS::AtMostOnce, false);
    assert_eq!(text(publishes(&br.take(1))[0]), "kept");
}

#[test]
fn a_clean_reconnect_from_a_new_address_replaces_the_old_one_silently() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    br.connect(2, "dev1", true, 60);
    assert!(br.take(1).is_empty(), "nothing to the old address");
    assert_eq!(br.gw.address_of(&id("dev1")), Some(2));
    assert_eq!(br.gw.client_count(), 1);
    // The old address is unknown now: a PINGREQ from it gets DISCONNECT.
    br.send(1, SnMessage::PingReq { client_id: None });
    assert_eq!(br.take(1), vec![SnMessage::Disconnect { duration: None }]);
}

#[test]
fn mqtt_takeover_disconnects_the_mqttsn_client() {
    let mut br = Broker::new();
    br.connect(1, "dev1", true, 60);
    br.mqtt_connect("dev1");
    assert_eq!(br.take(1), vec![SnMessage::Disconnect { duration: None }]);
    assert_eq!(br.gw.client_count(), 0);
}

#[test]
fn gateway_keeps_the_sessions_server_keep_alive_satisfied() {
    let mut br = Broker::new();
    // Duration 0: the gateway does not supervise the client, and the session was given
    // keep alive 0, which MQTT 5 turns into Server Keep Alive = max_keep_alive (3600 s).
    br.connect(1, "dev1", true, 0);
    br.advance(3 * 3600 * 1000);
    assert!(br.sessions[&id("dev1")].is_connected());
    assert_eq!(br.gw.client_count(), 1);
    assert!(
        br.take(1).is_empty(),
        "the pings stay between gateway and session"
    );
}

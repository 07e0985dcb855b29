//! The MQTT-SN 1.2 gateway, black box: MQTT-SN clients over real UDP sockets and MQTT
//! clients over TCP on one broker, sharing topics, retained messages and wills. Multi-shard
//! cases put the MQTT-SN client on every shard, so datagrams read by one shard are served on
//! the client's home shard.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::sn::SnClient;
use common::{Broker, Client, WAIT};
use ringmq::codec::{ProtocolVersion, QoS};
use ringmq::config::{Config, ListenerConfig, ListenerUrl};
use ringmq::mqttsn::codec::{ReturnCode, SnMessage, SnQoS, SubTopic, TopicId, TopicRef};
use ringmq::router::topic::TopicName;

const V: ProtocolVersion = ProtocolVersion::V311;
const PREDEFINED: u16 = 5;

/// A broker with an `mqttsn://` listener on an ephemeral port, T_retry 1 s and topic id 5
/// pre-defined as `sn/predefined`.
fn start(shards: usize, adjust: impl FnOnce(&mut Config)) -> (Broker, SocketAddr) {
    let b = Broker::start_with(shards, |c| {
        let udp = SocketAddr::from(([127, 0, 0, 1], 0));
        c.listeners
            .push(ListenerConfig::new(ListenerUrl::mqttsn(udp)));
        c.mqttsn.retry_interval_secs = 1;
        c.mqttsn
            .predefined_topics
            .insert(PREDEFINED, TopicName::from_static("sn/predefined"));
        adjust(c);
    });
    let gw = b.mqttsn.expect("the gateway runs");
    (b, gw)
}

fn name(t: &str) -> SubTopic {
    SubTopic::Name(Bytes::copy_from_slice(t.as_bytes()))
}

/// Each shard count, with the MQTT-SN client homed on each shard in turn.
fn homes() -> Vec<(usize, usize)> {
    vec![(1, 0), (3, 0), (3, 1), (3, 2)]
}

#[test]
fn publishes_at_every_qos_reach_mqtt_subscribers() {
    for (shards, home) in homes() {
        let (b, gw) = start(shards, |_| {});
        let mut sub = Client::connect(b.addr, V, "mqtt-sub", true).0;
        sub.subscribe("sn/#", QoS::ExactlyOnce);
        let mut sn = SnClient::new(gw);
        let id = b.client_id_on("sn-pub", home);
        assert_eq!(sn.connect(&id, true, 60), ReturnCode::Accepted);
        let topic = sn.register("sn/a");
        assert_ne!(topic, TopicId::NONE);
        for (qos, mqtt_qos, payload) in [
            (SnQoS::Zero, QoS::AtMostOnce, &b"zero"[..]),
            (SnQoS::One, QoS::AtLeastOnce, b"one"),
            (SnQoS::Two, QoS::ExactlyOnce, b"two"),
        ] {
            let code = sn.publish(TopicRef::Normal(topic), qos, payload);
            assert_eq!(code, ReturnCode::Accepted);
            let p = sub.recv_publish();
            assert_eq!(
                (p.topic.as_str(), &p.payload[..], p.qos),
                ("sn/a", payload, mqtt_qos),
                "{shards} shards, home {home}"
            );
        }
        // QoS -1: no connection at all (6.8), pre-defined id and short name.
        let anon = SnClient::new(gw);
        let mut anon = anon;
        anon.publish(
            TopicRef::Predefined(TopicId(PREDEFINED)),
            SnQoS::MinusOne,
            b"m1",
        );
        let p = sub.recv_publish();
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("sn/predefined", &b"m1"[..])
        );
        sub.subscribe("ab", QoS::AtMostOnce);
        anon.publish(TopicRef::Short(*b"ab"), SnQoS::MinusOne, b"m2");
        let p = sub.recv_publish();
        assert_eq!((p.topic.as_str(), &p.payload[..]), ("ab", &b"m2"[..]));
        anon.expect_nothing();
        // DISCONNECT is answered with DISCONNECT.
        sn.send(&SnMessage::Disconnect { duration: None });
        assert_eq!(sn.recv(), SnMessage::Disconnect { duration: None });
        b.stop();
    }
}

#[test]
fn mqtt_publishes_reach_mqttsn_subscribers_at_every_qos() {
    for (shards, home) in homes() {
        let (b, gw) = start(shards, |_| {});
        let mut sn = SnClient::new(gw);
        let id = b.client_id_on("sn-sub", home);
        assert_eq!(sn.connect(&id, true, 60), ReturnCode::Accepted);
        // A plain name: SUBACK carries the topic id.
        let (topic, granted, code) = sn.subscribe(name("up/x"), QoS::ExactlyOnce);
        assert_eq!((granted, code), (QoS::ExactlyOnce, ReturnCode::Accepted));
        // A wildcard: the gateway REGISTERs each new topic before its first PUBLISH.
        let (wild, _, code) = sn.subscribe(name("w/+"), QoS::AtLeastOnce);
        assert_eq!((wild, code), (TopicId::NONE, ReturnCode::Accepted));
        let mut publisher = Client::connect(b.addr, V, "mqtt-pub", true).0;
        for (qos, sn_qos) in [
            (QoS::AtMostOnce, SnQoS::Zero),
            (QoS::AtLeastOnce, SnQoS::One),
            (QoS::ExactlyOnce, SnQoS::Two),
        ] {
            publisher.publish("up/x", b"hello", qos, false);
            let (p, regs) = sn.receive_publish();
            assert!(regs.is_empty());
            assert_eq!(
                (p.topic, p.qos, &p.data[..]),
                (TopicRef::Normal(topic), sn_qos, &b"hello"[..])
            );
        }
        publisher.publish("w/1", b"w", QoS::AtLeastOnce, false);
        let (p, regs) = sn.receive_publish();
        assert_eq!(regs.len(), 1, "{regs:?}");
        assert_eq!(&regs[0].1[..], b"w/1");
        assert_eq!(
            (p.topic, &p.data[..]),
            (TopicRef::Normal(regs[0].0), &b"w"[..])
        );
        // UNSUBSCRIBE: nothing more.
        let msg_id = sn.msg_id();
        sn.send(&SnMessage::Unsubscribe {
            msg_id,
            topic: name("up/x"),
        });
        assert_eq!(sn.recv(), SnMessage::UnsubAck { msg_id });
        publisher.publish("up/x", b"late", QoS::AtLeastOnce, false);
        sn.expect_nothing();
        b.stop();
    }
}

#[test]
fn predefined_and_short_topics_and_retained_messages_are_shared() {
    let (b, gw) = start(2, |_| {});
    let mut publisher = Client::connect(b.addr, V, "mqtt-pub", true).0;
    publisher.publish("sn/predefined", b"kept", QoS::AtLeastOnce, true);
    let mut sn = SnClient::new(gw);
    assert_eq!(sn.connect("sn-pre", true, 60), ReturnCode::Accepted);
    let (id, _, code) = sn.subscribe(SubTopic::Predefined(TopicId(PREDEFINED)), QoS::AtLeastOnce);
    assert_eq!((id, code), (TopicId(PREDEFINED), ReturnCode::Accepted));
    // The retained message, under the pre-defined id.
    let (p, _) = sn.receive_publish();
    assert_eq!(
        (p.topic, p.retain, &p.data[..]),
        (
            TopicRef::Predefined(TopicId(PREDEFINED)),
            true,
            &b"kept"[..]
        )
    );
    let (_, _, code) = sn.subscribe(SubTopic::Short(*b"zz"), QoS::AtMostOnce);
    assert_eq!(code, ReturnCode::Accepted);
    publisher.publish("zz", b"s", QoS::AtMostOnce, false);
    let (p, _) = sn.receive_publish();
    assert_eq!((p.topic, &p.data[..]), (TopicRef::Short(*b"zz"), &b"s"[..]));
    // A pre-defined id that is not configured.
    let (_, _, code) = sn.subscribe(SubTopic::Predefined(TopicId(77)), QoS::AtMostOnce);
    assert_eq!(code, ReturnCode::InvalidTopicId);
    // UNSUBSCRIBE names them the same way (topic id types 0b01 and 0b10).
    for topic in [
        SubTopic::Predefined(TopicId(PREDEFINED)),
        SubTopic::Short(*b"zz"),
    ] {
        let msg_id = sn.msg_id();
        sn.send(&SnMessage::Unsubscribe { msg_id, topic });
        assert_eq!(sn.recv(), SnMessage::UnsubAck { msg_id });
    }
    publisher.publish("sn/predefined", b"late", QoS::AtLeastOnce, false);
    publisher.publish("zz", b"late", QoS::AtMostOnce, false);
    sn.expect_nothing();
    b.stop();
}

#[test]
fn will_is_published_when_the_client_is_lost() {
    for (shards, home) in homes() {
        let (b, gw) = start(shards, |_| {});
        let mut sub = Client::connect(b.addr, V, "watcher", true).0;
        sub.subscribe("wills/#", QoS::AtLeastOnce);
        let mut sn = SnClient::new(gw);
        let id = b.client_id_on("sn-will", home);
        // Keep alive 1 s.
        sn.connect_with_will(&id, 1, "wills/x", b"gone", QoS::AtLeastOnce);
        // The will can be changed while connected (6.4): topic and message.
        sn.send(&SnMessage::WillTopicUpd(Some(
            ringmq::mqttsn::codec::WillTopic {
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: Bytes::from_static(b"wills/y"),
            },
        )));
        assert_eq!(
            sn.recv(),
            SnMessage::WillTopicResp {
                code: ReturnCode::Accepted
            }
        );
        sn.send(&SnMessage::WillMsgUpd {
            msg: Bytes::from_static(b"gone for good"),
        });
        assert_eq!(
            sn.recv(),
            SnMessage::WillMsgResp {
                code: ReturnCode::Accepted
            }
        );
        // Then silence: the client is lost after 1.5 x the keep alive (no DISCONNECT), and
        // its will is published.
        let t0 = Instant::now();
        let p = sub.recv_publish();
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("wills/y", &b"gone for good"[..])
        );
        b.stop();
    }
}

#[test]
fn sleeping_client_gets_buffered_messages_when_it_wakes() {
    for (shards, home) in [(1, 0), (2, 1)] {
        let (b, gw) = start(shards, |_| {});
        let mut sn = SnClient::new(gw);
        let id = b.client_id_on("sleeper", home);
        assert_eq!(sn.connect(&id, true, 30), ReturnCode::Accepted);
        let (topic, _, _) = sn.subscribe(name("s/t"), QoS::AtLeastOnce);
        sn.send(&SnMessage::Disconnect { duration: Some(60) });
        assert_eq!(sn.recv(), SnMessage::Disconnect { duration: None });
        let mut publisher = Client::connect(b.addr, V, "mqtt-pub", true).0;
        publisher.publish("s/t", b"1", QoS::AtMostOnce, false);
        publisher.publish("s/t", b"2", QoS::AtLeastOnce, false);
        sn.expect_nothing();
        // Awake: PINGREQ with the client id flushes what was buffered, then PINGRESP.
        sn.send(&SnMessage::PingReq {
            client_id: Some(Bytes::copy_from_slice(id.as_bytes())),
        });
        let mut got = Vec::new();
        loop {
            match sn.recv() {
                SnMessage::Publish(p) => {
                    assert_eq!(p.topic, TopicRef::Normal(topic));
                    sn.ack(&p);
                    got.push(p.data);
                }
                SnMessage::PingResp => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            got,
            vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]
        );
        b.stop();
    }
}

#[test]
fn gateway_discovery_searchgw_and_advertise() {
    let probe = SnClient::new("127.0.0.1:9".parse().expect("addr"));
    let to = probe.addr();
    let (b, gw) = start(2, |c| {
        c.mqttsn.gateway_id = 7;
        c.mqttsn.advertise_to = Some(to);
        c.mqttsn.advertise_interval_secs = 1;
    });
    let mut probe = probe;
    probe.gw = gw;
    // ADVERTISE at start, then every interval, from one shard only.
    let start_at = Instant::now();
    let mut adverts = 0;
    while start_at.elapsed() < Duration::from_millis(2500) {
        match probe.recv_within(Duration::from_millis(100)) {
            Some(SnMessage::Advertise { gw_id, duration }) => {
                assert_eq!((gw_id, duration), (7, 1));
                adverts += 1;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    assert!((2..=4).contains(&adverts), "{adverts} ADVERTISEs in 2.5 s");
    let mut searcher = SnClient::new(gw);
    searcher.send(&SnMessage::SearchGw { radius: 1 });
    match searcher.recv() {
        SnMessage::GwInfo { gw_id, .. } => assert_eq!(gw_id, 7),
        other => panic!("expected GWINFO, got {other:?}"),
    }
    b.stop();
}

#[test]
fn deliveries_are_retransmitted_under_loss() {
    for (shards, home) in [(1, 0), (2, 1)] {
        let (b, gw) = start(shards, |_| {});
        let mut sn = SnClient::new(gw);
        let id = b.client_id_on("lossy", home);
        assert_eq!(sn.connect(&id, true, 60), ReturnCode::Accepted);
        sn.subscribe(name("l/t"), QoS::AtLeastOnce);
        // From now on every second datagram the client receives is lost.
        sn.drop_every = Some(2);
        sn.received = 1;
        let mut publisher = Client::connect(b.addr, V, "mqtt-pub", true).0;
        let t0 = Instant::now();
        publisher.publish("l/t", b"x", QoS::AtLeastOnce, false);
        // The first PUBLISH is lost; T_retry (1 s) later it comes again, with DUP.
        let (p, _) = sn.receive_publish();
        assert!(p.dup, "a retransmission");
        assert!(t0.elapsed() >= Duration::from_millis(800));
        assert_eq!(sn.dropped, 1);
        assert_eq!(&p.data[..], b"x");
        // The acknowledged message is not sent again.
        sn.drop_every = None;
        sn.expect_nothing();
        b.stop();
    }
}

#[test]
fn register_and_qos_2_flow_are_retransmitted_under_loss() {
    // Each message of the gateway's side is lost once in the test's socket layer: the
    // REGISTER of a wildcard subscription's topic, the QoS 2 PUBLISH and its PUBREL. Each
    // comes again T_retry (1 s here) later, with the same MsgId (the PUBLISH with DUP, 5.3.4),
    // and the message is delivered once.
    for (shards, home) in [(1, 0), (2, 1)] {
        let (b, gw) = start(shards, |_| {});
        let mut sn = SnClient::new(gw);
        let id = b.client_id_on("lossy2", home);
        assert_eq!(sn.connect(&id, true, 60), ReturnCode::Accepted);
        let (_, granted, code) = sn.subscribe(name("l2/+"), QoS::ExactlyOnce);
        assert_eq!((granted, code), (QoS::ExactlyOnce, ReturnCode::Accepted));
        let mut publisher = Client::connect(b.addr, V, "mqtt-pub", true).0;
        publisher.publish("l2/a", b"once", QoS::ExactlyOnce, false);
        let register = sn.recv();
        let SnMessage::Register {
            topic_id, msg_id, ..
        } = lost_once(&mut sn, register)
        else {
            unreachable!()
        };
        sn.send(&SnMessage::RegAck {
            topic_id,
            msg_id,
            code: ReturnCode::Accepted,
        });
        let publish = sn.recv();
        let SnMessage::Publish(p) = lost_once(&mut sn, publish) else {
            unreachable!()
        };
        assert!(p.dup, "a retransmitted PUBLISH has DUP");
        assert_eq!(
            (p.topic, p.qos, &p.data[..]),
            (TopicRef::Normal(topic_id), SnQoS::Two, &b"once"[..])
        );
        sn.send(&SnMessage::PubRec { msg_id: p.msg_id });
        let pubrel = sn.recv();
        lost_once(&mut sn, pubrel);
        sn.send(&SnMessage::PubComp { msg_id: p.msg_id });
        // The flow is over: nothing is sent again.
        std::thread::sleep(Duration::from_millis(1200));
        sn.expect_nothing();
        b.stop();
    }
}

/// `first` was lost: waits for its retransmission T_retry (1 s) later, checks that it is the
/// same message with the same MsgId (a PUBLISH with DUP) and returns it.
fn lost_once(sn: &mut SnClient, first: SnMessage) -> SnMessage {
    let t0 = Instant::now();
    let again = sn.recv();
    let waited = t0.elapsed();
    assert!(
        (Duration::from_millis(800)..Duration::from_millis(2500)).contains(&waited),
        "{again:?} after {waited:?}"
    );
    match (&first, &again) {
        (SnMessage::Register { .. }, SnMessage::Register { .. })
        | (SnMessage::PubRel { .. }, SnMessage::PubRel { .. }) => {
            assert_eq!(first, again, "retransmitted as it was");
        }
        (SnMessage::Publish(a), SnMessage::Publish(b)) => {
            assert_eq!(
                (a.dup, a.msg_id, a.topic, &a.data),
                (false, b.msg_id, b.topic, &b.data)
            );
        }
        _ => panic!("{first:?} was followed by {again:?}"),
    }
    again
}

#[test]
fn an_mqtt_client_takes_over_an_mqttsn_client_id() {
    let (b, gw) = start(2, |_| {});
    let mut sn = SnClient::new(gw);
    assert_eq!(sn.connect("shared-id", true, 60), ReturnCode::Accepted);
    let _tcp = Client::connect(b.addr, V, "shared-id", true);
    assert_eq!(sn.recv(), SnMessage::Disconnect { duration: None });
    b.stop();
}

#[test]
fn congestion_when_the_broker_is_full() {
    let (b, gw) = start(1, |c| c.limits.max_sessions = 1);
    let mut one = SnClient::new(gw);
    assert_eq!(one.connect("first", false, 60), ReturnCode::Accepted);
    let mut two = SnClient::new(gw);
    assert_eq!(two.connect("second", false, 60), ReturnCode::Congestion);
    b.stop();
}

#[test]
fn bad_datagrams_are_dropped_and_never_stop_the_gateway() {
    for shards in [1, 2] {
        let (b, gw) = start(shards, |c| {
            c.ops.metrics = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            c.mqttsn.max_message_size = 256;
        });
        let mut bad = SnClient::new(gw);
        // (datagram, dropped unread as malformed or oversized)
        let oversized = [0x00; 300];
        let junk: [(&[u8], bool); 14] = [
            (&[], true),
            (&[0x00], true),                         // length 0
            (&[0x01], true),                         // 3-byte length, cut short
            (&[0x05, 0x04, 0x04, 0x01], true),       // CONNECT cut short
            (&[0x20, 0x0C, 0x00], true),             // length says 32, 3 bytes came
            (&[0x03, 0x0C, 0x00, 0x01, 0x02], true), // length says 3, 5 bytes came
            (&[0x01, 0x00, 0x05, 0x0C, 0x00], true), // 3-byte length, PUBLISH cut short
            (&[0x02, 0x03], true),                   // reserved type
            (&[0x02, 0x42], true),                   // reserved type
            (&[0x02, 0xFF], true),                   // reserved type
            (&[0x02, 0xFE], true),                   // forwarder encapsulation (not built)
            (&oversized, true),                      // above max_message_size
            (&[0x03, 0x1D, 0x00], false),            // WILLMSGRESP, a gateway's message
            // PUBLISH from an address without a connection:
            (&[0x07, 0x0C, 0x00, 0x00, 0x01, 0x00, 0x01], false),
        ];
        for (d, _) in junk {
            bad.send_raw(d);
        }
        // Dropped and counted (ringmq_mqttsn_malformed_total, summed over the shards).
        let dropped = junk.iter().filter(|(_, dropped)| *dropped).count() as u64;
        assert_eq!(
            counter_reaches(&b, "ringmq_mqttsn_malformed_total", dropped),
            dropped
        );
        // Only the unconnected PUBLISH is answered (DISCONNECT, never longer than it).
        if let Some(reply) = bad.recv_raw_within(Duration::from_millis(500)) {
            assert!(reply.len() <= 7, "{reply:?}");
        }
        // A CONNECT with another protocol id: CONNACK "not supported" (5.3.8).
        let mut old = SnClient::new(gw);
        old.send(&SnMessage::Connect(ringmq::mqttsn::codec::SnConnect {
            will: false,
            clean_session: true,
            protocol_id: 0x02,
            duration: 60,
            client_id: Bytes::from_static(b"old-protocol"),
        }));
        assert_eq!(
            old.recv(),
            SnMessage::ConnAck {
                code: ReturnCode::NotSupported
            }
        );
        // A topic id that was never registered: PUBACK "invalid topic id" (6.5).
        let mut sn = SnClient::new(gw);
        assert_eq!(sn.connect("sn-bad", true, 60), ReturnCode::Accepted);
        let code = sn.publish(TopicRef::Normal(TopicId(999)), SnQoS::One, b"?");
        assert_eq!(code, ReturnCode::InvalidTopicId);
        // A flood from one address: others are still served.
        let flood = SnClient::new(gw);
        for i in 0..20_000u32 {
            let b = i.to_be_bytes();
            flood.send_raw(&[0x06, 0x0C, 0x00, b[2], b[3], 0x00]);
        }
        let mut sub = Client::connect(b.addr, V, "mqtt-sub", true).0;
        sub.subscribe("f/t", QoS::AtLeastOnce);
        let mut other = SnClient::new(gw);
        assert_eq!(other.connect("sn-other", true, 60), ReturnCode::Accepted);
        let t = other.register("f/t");
        assert_eq!(
            other.publish(TopicRef::Normal(t), SnQoS::One, b"ok"),
            ReturnCode::Accepted
        );
        assert_eq!(&sub.recv_publish().payload[..], b"ok");
        // Amplification: a CONNECT for a client is never answered at length to an address
        // that did not send one; SEARCHGW's answer is no longer than the question.
        let mut small = SnClient::new(gw);
        small.send_raw(&[0x03, 0x01, 0x00]);
        let reply = small.recv_raw_within(WAIT).expect("GWINFO");
        assert!(reply.len() <= 3, "{reply:?}");
        b.stop(); // A panicked shard fails the clean shutdown.
    }
}

/// The Prometheus counter `metric` summed over the shards, scraped until it reaches `want`
/// (the shards' snapshots are at most a second old) or `WAIT` passes; its last sum.
fn counter_reaches(b: &Broker, metric: &str, want: u64) -> u64 {
    use std::io::{Read, Write};
    let addr = b.metrics_addr().expect("metrics endpoint");
    let until = Instant::now() + WAIT;
    loop {
        let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("write");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        let sum: u64 = text
            .lines()
            .filter(|l| l.strip_prefix(metric).is_some_and(|r| r.starts_with('{')))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if sum >= want || Instant::now() >= until {
            return sum;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn mqttsn_session_persists_across_reconnects() {
    let (b, gw) = start(2, |_| {});
    let mut sn = SnClient::new(gw);
    assert_eq!(sn.connect("keeper", false, 60), ReturnCode::Accepted);
    let (topic, _, _) = sn.subscribe(name("p/t"), QoS::AtLeastOnce);
    sn.send(&SnMessage::Disconnect { duration: None });
    assert_eq!(sn.recv(), SnMessage::Disconnect { duration: None });
    let mut publisher = Client::connect(b.addr, V, "mqtt-pub", true).0;
    publisher.publish("p/t", b"queued", QoS::AtLeastOnce, false);
    // Clean session 0: the subscription and the queued message wait for the client.
    let mut again = SnClient::new(gw);
    let p = reconnect_for_one_publish(&mut again, "keeper");
    assert_eq!(&p.data[..], b"queued");
    let _ = topic;
    b.stop();
}

/// CONNECT with clean session 0 from a new address; returns the first PUBLISH (REGISTERs
/// acknowledged on the way).
fn reconnect_for_one_publish(sn: &mut SnClient, id: &str) -> ringmq::mqttsn::codec::SnPublish {
    sn.send(&SnClient::connect_msg(id, false, false, 60));
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match sn.recv() {
            SnMessage::ConnAck { code } => assert_eq!(code, ReturnCode::Accepted),
            SnMessage::Register {
                topic_id, msg_id, ..
            } => sn.send(&SnMessage::RegAck {
                topic_id,
                msg_id,
                code: ReturnCode::Accepted,
            }),
            SnMessage::Publish(p) => {
                sn.ack(&p);
                return p;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("no PUBLISH within {WAIT:?}");
}

/// A UDP port that was free a moment ago (the broker process binds it next).
fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

#[test]
fn mqttsn_session_survives_a_broker_restart() {
    use common::process::{BrokerProcess, DataDir};
    let port = free_udp_port();
    let url = format!("mqttsn://127.0.0.1:{port}");
    let args = ["--shards", "2", "--listen", url.as_str()];
    let dir = DataDir::new("sn-restart");
    let broker = BrokerProcess::start_in(&dir, &args);
    let gw = SocketAddr::from(([127, 0, 0, 1], port));
    let mut sn = SnClient::new(gw);
    assert_eq!(sn.connect("sn-keeper", false, 60), ReturnCode::Accepted);
    sn.subscribe(name("r/t"), QoS::AtLeastOnce);
    sn.send(&SnMessage::Disconnect { duration: None });
    assert_eq!(sn.recv(), SnMessage::Disconnect { duration: None });
    let mut publisher = Client::connect(broker.addr, V, "mqtt-pub", true).0;
    publisher.publish("r/t", b"across the restart", QoS::AtLeastOnce, false);
    drop(publisher);
    let status = broker.terminate(Duration::from_secs(10));
    assert!(status.success(), "clean stop: {status}");
    let _broker = BrokerProcess::start_in(&dir, &args);
    let mut again = SnClient::new(gw);
    let p = reconnect_for_one_publish(&mut again, "sn-keeper");
    assert_eq!(&p.data[..], b"across the restart");
}

#[test]
fn an_address_reused_by_another_client_keeps_working() {
    // A client's datagrams are read by the shard its source address hashes to; several
    // sockets per home make it all but certain that some are read by another shard, so the
    // route and its epochs are exercised: a second client id at the same address, homed on
    // the same shard as the first or on another, must be served at once.
    let (b, gw) = start(3, |_| {});
    for first in 0..3 {
        for second in 0..3 {
            for k in 0..2 {
                let mut sn = SnClient::new(gw);
                let a = b.client_id_on(&format!("first-{first}-{second}-{k}"), first);
                let c = b.client_id_on(&format!("second-{first}-{second}-{k}"), second);
                assert_eq!(sn.connect(&a, true, 60), ReturnCode::Accepted);
                assert_ne!(sn.register("r/1"), TopicId::NONE);
                assert_eq!(sn.connect(&c, true, 60), ReturnCode::Accepted);
                assert_ne!(sn.register("r/2"), TopicId::NONE);
                sn.send(&SnMessage::PingReq { client_id: None });
                assert_eq!(sn.recv(), SnMessage::PingResp);
            }
        }
    }
    b.stop();
}

#[test]
fn one_reading_shard_serves_clients_homed_on_every_shard() {
    // `socket_per_shard = false`: shard 0 reads every datagram and forwards those of clients
    // homed elsewhere; the home shards answer from copies of its socket.
    let (b, gw) = start(3, |c| c.mqttsn.socket_per_shard = false);
    let mut sub = Client::connect(b.addr, V, "mqtt-sub", true).0;
    sub.subscribe("one/#", QoS::AtLeastOnce);
    for home in 0..3 {
        let mut sn = SnClient::new(gw);
        let id = b.client_id_on("one-reader", home);
        assert_eq!(sn.connect(&id, true, 60), ReturnCode::Accepted);
        let (_, _, code) = sn.subscribe(name("back/#"), QoS::AtLeastOnce);
        assert_eq!(code, ReturnCode::Accepted);
        let t = sn.register(&format!("one/{home}"));
        let code = sn.publish(TopicRef::Normal(t), SnQoS::Two, b"up");
        assert_eq!(code, ReturnCode::Accepted);
        assert_eq!(sub.recv_publish().topic.as_str(), format!("one/{home}"));
        sub.publish("back/x", b"down", QoS::AtLeastOnce, false);
        let (p, _) = sn.receive_publish();
        assert_eq!(&p.data[..], b"down");
    }
    b.stop();
}

#[test]
fn an_address_that_never_answers_gets_three_times_its_bytes() {
    // From the gateway's side a spoofed client is one whose address never answers: the
    // victim's host ignores what it is sent. Its CONNECT and SUBSCRIBE (QoS 0, a plain name:
    // nothing waits for an answer) to a busy topic earn it three times their bytes, plus a few small challenges (REGISTER, at most 4 of at most
    // 64 bytes, T_retry apart), and then the gateway forgets it. A client next to it that
    // answers the challenge gets every message.
    use ringmq::mqttsn::codec::{MsgId, SnSubscribe, decode, encode_to_bytes};
    let (b, gw) = start(2, |_| {});
    let mut victim = SnClient::new(gw);
    let (mut from_victim, mut to_victim) = (0, 0);
    for m in [
        SnClient::connect_msg("spoofed", false, true, 0),
        SnMessage::Subscribe(SnSubscribe {
            dup: false,
            qos: QoS::AtMostOnce,
            msg_id: MsgId(1),
            topic: name("amp/busy"),
        }),
    ] {
        from_victim += encode_to_bytes(&m).expect("encodable").len();
        victim.send(&m);
        // Only for the pace (a SUBSCRIBE before the CONNACK would be ignored).
        to_victim += victim.recv_raw_within(WAIT).expect("CONNACK, SUBACK").len();
    }
    let mut good = SnClient::new(gw);
    assert_eq!(good.connect("good", true, 0), ReturnCode::Accepted);
    good.subscribe(name("amp/busy"), QoS::AtLeastOnce);
    let mut publisher = Client::connect(b.addr, V, "mqtt-pub", true).0;
    let payload = |i: usize| format!("{i:03} {}", "x".repeat(100)).into_bytes();
    for i in 0..50 {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce][i % 2];
        publisher.publish("amp/busy", &payload(i), qos, false);
    }
    for i in 0..50 {
        let (p, _) = good.receive_publish();
        assert_eq!(&p.data[..], &payload(i)[..]);
    }
    // T_retry is 1 s and N_retry 3: the victim's challenge is over within about 4 s.
    let until = Instant::now() + Duration::from_millis(5500);
    let (mut challenges, mut publishes) = (0, 0);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Some(raw) = victim.recv_raw_within(left.max(Duration::from_millis(1))) else {
            break;
        };
        to_victim += raw.len();
        match decode(&Bytes::from(raw)).expect("valid datagrams") {
            SnMessage::Register { .. } => challenges += 1,
            SnMessage::Publish(_) => publishes += 1,
            _ => {}
        }
    }
    assert!(
        to_victim <= 3 * from_victim + 4 * 64,
        "{to_victim} bytes for {from_victim}"
    );
    assert!((1..=4).contains(&challenges), "{challenges} challenges");
    assert_eq!(publishes, 0, "no 100-byte message fits its budget");
    // Forgotten: the address gets the answer of one without a client.
    victim.send(&SnMessage::PingReq { client_id: None });
    assert_eq!(victim.recv(), SnMessage::Disconnect { duration: None });
    b.stop();
}

//! End-to-end publish/subscribe through the shard runtime over real sockets, on one shard
//! and across shards, with both I/O drivers (io_uring-or-epoll "auto", and forced epoll), and
//! most of it again with the receive ring (`uring`).

mod common;

use common::{Broker, Client, connect_packet};
use ringmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use ringmq::config::DriverKind;

const SHARDS: usize = 4;

both_drivers!(
    connect_v311_and_v5,
    qos_0_1_2_on_one_shard,
    qos_0_1_2_across_shards,
    retained_across_shards,
    shared_subscription_members_on_several_shards,
    pipelined_packets_behind_connect_survive_hand_off,
    cross_shard_back_pressure_loses_nothing,
    a_congested_shard_holds_only_its_publishers,
);

/// The same bodies with the shards' receive ring (`DriverKind::Uring`, off by default): input
/// of attached connections comes from multishot receives, reads held for a congested shard
/// cancel and re-arm them, hand-offs and closes leave the ring first. (The congested-shard
/// bound is timing-bound and already runs twice above.)
mod uring {
    use ringmq::config::DriverKind::Uring;

    #[test]
    fn connect_v311_and_v5() {
        super::connect_v311_and_v5(Uring)
    }
    #[test]
    fn qos_0_1_2_on_one_shard() {
        super::qos_0_1_2_on_one_shard(Uring)
    }
    #[test]
    fn qos_0_1_2_across_shards() {
        super::qos_0_1_2_across_shards(Uring)
    }
    #[test]
    fn retained_across_shards() {
        super::retained_across_shards(Uring)
    }
    #[test]
    fn shared_subscription_members_on_several_shards() {
        super::shared_subscription_members_on_several_shards(Uring)
    }
    #[test]
    fn pipelined_packets_behind_connect_survive_hand_off() {
        super::pipelined_packets_behind_connect_survive_hand_off(Uring)
    }
    #[test]
    fn cross_shard_back_pressure_loses_nothing() {
        super::cross_shard_back_pressure_loses_nothing(Uring)
    }
}

fn connect_v311_and_v5(driver: DriverKind) {
    let broker = Broker::start_driver(SHARDS, driver);
    for shard in 0..SHARDS {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let id = broker.client_id_on(&format!("c-{version:?}"), shard);
            let (client, connack) = Client::connect(broker.addr, version, &id, true);
            assert_eq!(connack.reason, ReasonCode::Success);
            client.disconnect();
        }
    }
    broker.stop();
}

/// Subscriber and publisher on shards `sub_shard` / `pub_shard`; every QoS both ways.
fn pubsub(driver: DriverKind, sub_shard: usize, pub_shard: usize, version: ProtocolVersion) {
    let broker = Broker::start_driver(SHARDS, driver);
    let sub_id = broker.client_id_on("sub", sub_shard);
    let pub_id = broker.client_id_on("pub", pub_shard);
    let (mut sub, _) = Client::connect(broker.addr, version, &sub_id, true);
    sub.subscribe("a/+/c", QoS::ExactlyOnce);
    let (mut publisher, _) = Client::connect(broker.addr, version, &pub_id, true);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let payload = format!("m{i}");
        publisher.publish("a/b/c", payload.as_bytes(), qos, false);
        let got = sub.recv_publish();
        assert_eq!(got.topic.as_str(), "a/b/c");
        assert_eq!(&got.payload[..], payload.as_bytes());
        assert_eq!(got.qos, qos);
    }
    // A topic nobody subscribed to goes nowhere.
    publisher.publish("x/y", b"nobody", QoS::AtLeastOnce, false);
    sub.expect_nothing_for(std::time::Duration::from_millis(200));
    publisher.disconnect();
    sub.disconnect();
    broker.stop();
}

fn qos_0_1_2_on_one_shard(driver: DriverKind) {
    pubsub(driver, 1, 1, ProtocolVersion::V311);
    pubsub(driver, 2, 2, ProtocolVersion::V5);
}

fn qos_0_1_2_across_shards(driver: DriverKind) {
    pubsub(driver, 0, 3, ProtocolVersion::V311);
    pubsub(driver, 3, 1, ProtocolVersion::V5);
}

fn retained_across_shards(driver: DriverKind) {
    let broker = Broker::start_driver(SHARDS, driver);
    let (mut publisher, _) = Client::connect(
        broker.addr,
        ProtocolVersion::V5,
        &broker.client_id_on("rp", 0),
        true,
    );
    publisher.publish("r/1", b"one", QoS::AtLeastOnce, true);
    publisher.publish("r/2", b"two", QoS::AtLeastOnce, true);
    // Cleared: an empty retained payload removes the topic's message.
    publisher.publish("r/2", b"", QoS::AtLeastOnce, true);
    for shard in 0..SHARDS {
        let id = broker.client_id_on("rs", shard);
        let (mut sub, _) = Client::connect(broker.addr, ProtocolVersion::V311, &id, true);
        sub.subscribe("r/#", QoS::AtLeastOnce);
        let got = sub.recv_publish();
        assert_eq!(got.topic.as_str(), "r/1", "shard {shard}");
        assert!(got.retain, "retained flag set for a new subscription");
        assert_eq!(&got.payload[..], b"one");
        sub.expect_nothing_for(std::time::Duration::from_millis(100));
        sub.disconnect();
    }
    publisher.disconnect();
    broker.stop();
}

fn shared_subscription_members_on_several_shards(driver: DriverKind) {
    let broker = Broker::start_driver(SHARDS, driver);
    let mut members: Vec<Client> = (1..SHARDS)
        .map(|shard| {
            let id = broker.client_id_on("member", shard);
            let (mut c, _) = Client::connect(broker.addr, ProtocolVersion::V5, &id, true);
            c.subscribe("$share/g/jobs/#", QoS::AtLeastOnce);
            c
        })
        .collect();
    let (mut publisher, _) = Client::connect(
        broker.addr,
        ProtocolVersion::V5,
        &broker.client_id_on("boss", 0),
        true,
    );
    const N: u16 = 30;
    for i in 1..=N {
        publisher.publish("jobs/x", format!("{i}").as_bytes(), QoS::AtLeastOnce, false);
    }
    let mut total = 0;
    for m in members.iter_mut() {
        let mut got = 0;
        while let Ok(Some(Packet::Publish(p))) =
            m.recv_within(std::time::Duration::from_millis(300))
        {
            if let Some(id) = p.packet_id {
                m.send(&Packet::PubAck(ringmq::codec::Ack::new(id)));
            }
            got += 1;
        }
        assert!(got > 0, "round robin reaches every member's shard");
        total += got;
    }
    assert_eq!(total, usize::from(N), "each message to exactly one member");
    broker.stop();
}

/// CONNECT, SUBSCRIBE and PUBLISH in one write: the bytes after CONNECT travel with the
/// fd to the home shard.
fn pipelined_packets_behind_connect_survive_hand_off(driver: DriverKind) {
    use bytes::BytesMut;
    let broker = Broker::start_driver(SHARDS, driver);
    for shard in 0..SHARDS {
        let id = broker.client_id_on("pipe", shard);
        let connect = connect_packet(ProtocolVersion::V311, &id, true);
        let mut bytes = BytesMut::new();
        let v = ProtocolVersion::V311;
        ringmq::codec::encode(&Packet::Connect(Box::new(connect)), v, &mut bytes);
        let sub = ringmq::codec::Subscribe {
            packet_id: common::pid(1),
            filters: vec![(common::filter("p/q"), Default::default())],
            properties: Default::default(),
        };
        ringmq::codec::encode(&Packet::Subscribe(sub), v, &mut bytes);
        let publish = common::publish("p/q", b"self", QoS::AtMostOnce, None);
        ringmq::codec::encode(&Packet::Publish(publish), v, &mut bytes);
        let mut client = Client::tcp(broker.addr, v);
        client.send_bytes(&bytes);
        assert!(matches!(client.recv(), Packet::ConnAck(_)));
        assert!(matches!(client.recv(), Packet::SubAck(_)));
        let got = client.recv_publish();
        assert_eq!(&got.payload[..], b"self");
        client.disconnect();
    }
    broker.stop();
}

/// With a cross-shard queue of 8 envelopes, 4 publishers on shard 0 flooding a subscriber on
/// shard 1 keep shard 0's outbox over its bound most of the time: shard 0 then stops reading
/// its clients (events stay queued, reads stop between two `recv`s) and resumes as shard 1
/// drains. Every QoS 0 message still arrives, in each publisher's order (the subscriber reads
/// as fast as it can, so none is dropped for output size).
fn cross_shard_back_pressure_loses_nothing(driver: DriverKind) {
    use bytes::{Bytes, BytesMut};
    use ringmq::codec::{self, Publish, PublishProperties};
    const PUBLISHERS: usize = 4;
    const EACH: u32 = 10_000;
    let broker = Broker::start_with(2, |c| {
        c.driver = driver;
        c.limits.cross_shard_queue = 8;
    });
    let (mut sub, _) = Client::connect_keep_alive(
        broker.addr,
        ProtocolVersion::V311,
        &broker.client_id_on("bp-sub", 1),
        true,
        0,
    );
    sub.subscribe("bp/t", QoS::AtMostOnce);
    let reader = std::thread::spawn(move || {
        let mut next = [0u32; PUBLISHERS];
        for _ in 0..PUBLISHERS as u32 * EACH {
            let p = sub.recv_publish();
            let publisher = usize::from(p.payload[0]);
            let seq = u32::from_be_bytes(p.payload[1..5].try_into().expect("4 bytes"));
            assert_eq!(
                seq, next[publisher],
                "publisher {publisher}: in order, none lost"
            );
            next[publisher] += 1;
        }
        next
    });
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| {
            let id = broker.client_id_on(&format!("bp-pub{i}"), 0);
            let (mut publisher, _) =
                Client::connect_keep_alive(broker.addr, ProtocolVersion::V311, &id, true, 0);
            std::thread::spawn(move || {
                let mut out = BytesMut::new();
                for seq in 0..EACH {
                    let mut payload = vec![i as u8];
                    payload.extend_from_slice(&seq.to_be_bytes());
                    let publish = Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtMostOnce,
                        retain: false,
                        topic: common::topic("bp/t"),
                        packet_id: None,
                        properties: PublishProperties::default(),
                        payload: Bytes::from(payload),
                    });
                    codec::encode(&publish, ProtocolVersion::V311, &mut out);
                    if out.len() > 16 * 1024 {
                        publisher.send_bytes(&out);
                        out.clear();
                    }
                }
                publisher.send_bytes(&out);
                publisher
            })
        })
        .collect();
    let publishers: Vec<Client> = publishers
        .into_iter()
        .map(|p| p.join().expect("publisher"))
        .collect();
    let received = reader.join().expect("every message, in order");
    assert_eq!(received, [EACH; PUBLISHERS]);
    drop(publishers);
    broker.stop();
}

/// Shard 1 is slow (150 subscribers of the flood that do not read: each publish costs it 150
/// deliveries) and four publishers on shard 0 flood it, so shard 0's outbox to it stays
/// backlogged. Only those publishers wait: a client of shard 0 that publishes nothing there
/// gets its PINGRESPs at once, and its publishes to its own shard go on.
fn a_congested_shard_holds_only_its_publishers(driver: DriverKind) {
    use bytes::{Bytes, BytesMut};
    use ringmq::codec::{self, Publish, PublishProperties};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let broker = Broker::start_with(2, |c| {
        c.driver = driver;
        // Larger than what one read of a flooder makes (a 64 KiB read: about 4,600 of these
        // publishes), so that only the far-behind bound holds everyone.
        c.limits.cross_shard_queue = 8192;
        c.limits.max_output_buffer = 16 * 1024;
    });
    let slow: Vec<Client> = (0..150)
        .map(|i| {
            let id = broker.client_id_on(&format!("slow-{i}"), 1);
            let (mut c, _) =
                Client::connect_keep_alive(broker.addr, ProtocolVersion::V311, &id, true, 0);
            c.subscribe("flood/#", QoS::AtMostOnce);
            c
        })
        .collect();
    // The bystander subscribes before the flood: its SUBACK waits until shard 1 has applied
    // the new interest, which during the flood is behind everything queued for shard 1
    // (channels are FIFO); this test is about what a connected client waits for.
    let id = broker.client_id_on("bystander", 0);
    let (mut bystander, _) =
        Client::connect_keep_alive(broker.addr, ProtocolVersion::V311, &id, true, 0);
    bystander.subscribe("local/t", QoS::AtMostOnce);
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..4)
        .map(|i| {
            let id = broker.client_id_on(&format!("flooder-{i}"), 0);
            let (mut publisher, _) =
                Client::connect_keep_alive(broker.addr, ProtocolVersion::V311, &id, true, 0);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut out = BytesMut::new();
                let publish = Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: common::topic("flood/x"),
                    packet_id: None,
                    properties: PublishProperties::default(),
                    payload: Bytes::from_static(b"0123456789"),
                });
                for _ in 0..2000 {
                    codec::encode(&publish, ProtocolVersion::V311, &mut out);
                }
                // 280 KB each (80,000 publishes in all): shard 1 needs seconds for them
                // (each costs it 150 deliveries), about the bystander's 2 s, and no more, so
                // that the broker is done with them soon after.
                for _ in 0..10 {
                    if stop.load(Ordering::Relaxed) || publisher.try_send_bytes(&out).is_err() {
                        break;
                    }
                }
                publisher
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut worst = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let t = Instant::now();
        bystander.ping();
        bystander.publish("local/t", b"x", QoS::AtMostOnce, false);
        match bystander.recv() {
            Packet::Publish(p) => assert_eq!(p.topic.as_str(), "local/t"),
            other => panic!("expected its own publish, got {other:?}"),
        }
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    drop(slow);
    for p in publishers {
        let _ = p.join();
    }
    assert!(
        worst < Duration::from_millis(250),
        "the bystander waited {worst:?} for a PINGRESP and its own message"
    );
    broker.stop();
}

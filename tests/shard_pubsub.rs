//! End-to-end publish/subscribe through the shard runtime over real sockets, on one shard
//! and across shards, with both I/O drivers (io_uring-or-epoll "auto", and forced epoll).

mod shard_support;

use ringmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use ringmq::config::DriverKind;
use shard_support::{Client, config, connack_reason, id_on, start};

const SHARDS: usize = 4;

/// Runs each scenario once per driver.
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        mod auto {
            $( #[test] fn $name() { super::$name(ringmq::config::DriverKind::Auto) } )*
        }
        mod epoll {
            $( #[test] fn $name() { super::$name(ringmq::config::DriverKind::Epoll) } )*
        }
    };
}

both_drivers!(
    connect_v311_and_v5,
    qos_0_1_2_on_one_shard,
    qos_0_1_2_across_shards,
    retained_across_shards,
    shared_subscription_members_on_several_shards,
    pipelined_packets_behind_connect_survive_hand_off,
    cross_shard_back_pressure_loses_nothing,
);

fn connect_v311_and_v5(driver: DriverKind) {
    let (broker, addr) = start(config(SHARDS, driver));
    for shard in 0..SHARDS {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let id = id_on(shard, SHARDS, &format!("c-{version:?}"));
            let (client, connack) = Client::connect(addr, &id, version, true, 30);
            assert_eq!(connack_reason(&connack), ReasonCode::Success);
            client.disconnect();
        }
    }
    broker.shutdown().expect("clean shutdown");
}

/// Subscriber and publisher on shards `sub_shard` / `pub_shard`; every QoS both ways.
fn pubsub(driver: DriverKind, sub_shard: usize, pub_shard: usize, version: ProtocolVersion) {
    let (broker, addr) = start(config(SHARDS, driver));
    let sub_id = id_on(sub_shard, SHARDS, "sub");
    let pub_id = id_on(pub_shard, SHARDS, "pub");
    let (mut sub, _) = Client::connect(addr, &sub_id, version, true, 30);
    sub.subscribe("a/+/c", QoS::ExactlyOnce, 1);
    let (mut publisher, _) = Client::connect(addr, &pub_id, version, true, 30);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let payload = format!("m{i}");
        publisher.publish_acked("a/b/c", payload.as_bytes(), qos, false, 10 + i as u16);
        let got = sub.receive_publish();
        assert_eq!(got.topic.as_str(), "a/b/c");
        assert_eq!(&got.payload[..], payload.as_bytes());
        assert_eq!(got.qos, qos);
    }
    // A topic nobody subscribed to goes nowhere.
    publisher.publish_acked("x/y", b"nobody", QoS::AtLeastOnce, false, 20);
    sub.expect_silence(std::time::Duration::from_millis(200));
    publisher.disconnect();
    sub.disconnect();
    broker.shutdown().expect("clean shutdown");
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
    let (broker, addr) = start(config(SHARDS, driver));
    let (mut publisher, _) =
        Client::connect(addr, &id_on(0, SHARDS, "rp"), ProtocolVersion::V5, true, 30);
    publisher.publish_acked("r/1", b"one", QoS::AtLeastOnce, true, 1);
    publisher.publish_acked("r/2", b"two", QoS::AtLeastOnce, true, 2);
    // Cleared: an empty retained payload removes the topic's message.
    publisher.publish_acked("r/2", b"", QoS::AtLeastOnce, true, 3);
    for shard in 0..SHARDS {
        let id = id_on(shard, SHARDS, "rs");
        let (mut sub, _) = Client::connect(addr, &id, ProtocolVersion::V311, true, 30);
        sub.subscribe("r/#", QoS::AtLeastOnce, 1);
        let got = sub.receive_publish();
        assert_eq!(got.topic.as_str(), "r/1", "shard {shard}");
        assert!(got.retain, "retained flag set for a new subscription");
        assert_eq!(&got.payload[..], b"one");
        sub.expect_silence(std::time::Duration::from_millis(100));
        sub.disconnect();
    }
    publisher.disconnect();
    broker.shutdown().expect("clean shutdown");
}

fn shared_subscription_members_on_several_shards(driver: DriverKind) {
    let (broker, addr) = start(config(SHARDS, driver));
    let mut members: Vec<Client> = (1..SHARDS)
        .map(|shard| {
            let id = id_on(shard, SHARDS, "member");
            let (mut c, _) = Client::connect(addr, &id, ProtocolVersion::V5, true, 30);
            c.subscribe("$share/g/jobs/#", QoS::AtLeastOnce, 1);
            c
        })
        .collect();
    let (mut publisher, _) = Client::connect(
        addr,
        &id_on(0, SHARDS, "boss"),
        ProtocolVersion::V5,
        true,
        30,
    );
    const N: u16 = 30;
    for i in 1..=N {
        publisher.publish_acked(
            "jobs/x",
            format!("{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            i,
        );
    }
    let mut total = 0;
    for m in members.iter_mut() {
        let mut got = 0;
        while let Some(Some(Packet::Publish(p))) =
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
    broker.shutdown().expect("clean shutdown");
}

/// CONNECT, SUBSCRIBE and PUBLISH in one write: the bytes after CONNECT travel with the
/// fd to the home shard.
fn pipelined_packets_behind_connect_survive_hand_off(driver: DriverKind) {
    use bytes::BytesMut;
    use std::io::Write;
    let (broker, addr) = start(config(SHARDS, driver));
    for shard in 0..SHARDS {
        let id = id_on(shard, SHARDS, "pipe");
        let connect = ringmq::codec::Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 30,
            client_id: ringmq::codec::MqttStr::try_from_str(&id).expect("id"),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        let mut bytes = BytesMut::new();
        let v = ProtocolVersion::V311;
        ringmq::codec::encode(&Packet::Connect(Box::new(connect)), v, &mut bytes);
        let sub = ringmq::codec::Subscribe {
            packet_id: shard_support::pid(1),
            filters: vec![(shard_support::filter("p/q"), Default::default())],
            properties: Default::default(),
        };
        ringmq::codec::encode(&Packet::Subscribe(sub), v, &mut bytes);
        let publish = ringmq::codec::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: shard_support::topic("p/q"),
            packet_id: None,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"self"),
        };
        ringmq::codec::encode(&Packet::Publish(publish), v, &mut bytes);
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.write_all(&bytes).expect("write");
        let mut client = Client::from_stream(stream, v);
        assert!(matches!(client.recv(), Some(Packet::ConnAck(_))));
        assert!(matches!(client.recv(), Some(Packet::SubAck(_))));
        let got = client.receive_publish();
        assert_eq!(&got.payload[..], b"self");
        client.disconnect();
    }
    broker.shutdown().expect("clean shutdown");
}

/// With a cross-shard queue of 8 envelopes, 4 publishers on shard 0 flooding a subscriber on
/// shard 1 keep shard 0's outbox over its bound most of the time: shard 0 then stops reading
/// its clients (events stay queued, reads stop between two `recv`s) and resumes as shard 1
/// drains. Every QoS 0 message still arrives, in each publisher's order (the subscriber reads
/// as fast as it can, so none is dropped for output size).
fn cross_shard_back_pressure_loses_nothing(driver: DriverKind) {
    use bytes::{Bytes, BytesMut};
    use ringmq::codec::{self, Publish, PublishProperties};
    use std::io::Write;
    const PUBLISHERS: usize = 4;
    const EACH: u32 = 10_000;
    let mut cfg = config(2, driver);
    cfg.limits.cross_shard_queue = 8;
    let (broker, addr) = start(cfg);
    let (mut sub, _) =
        Client::connect(addr, &id_on(1, 2, "bp-sub"), ProtocolVersion::V311, true, 0);
    sub.subscribe("bp/t", QoS::AtMostOnce, 1);
    let reader = std::thread::spawn(move || {
        let mut next = [0u32; PUBLISHERS];
        for _ in 0..PUBLISHERS as u32 * EACH {
            let p = sub.receive_publish();
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
            let id = id_on(0, 2, &format!("bp-pub{i}"));
            let (mut publisher, _) = Client::connect(addr, &id, ProtocolVersion::V311, true, 0);
            std::thread::spawn(move || {
                let mut out = BytesMut::new();
                for seq in 0..EACH {
                    let mut payload = vec![i as u8];
                    payload.extend_from_slice(&seq.to_be_bytes());
                    let publish = Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtMostOnce,
                        retain: false,
                        topic: shard_support::topic("bp/t"),
                        packet_id: None,
                        properties: PublishProperties::default(),
                        payload: Bytes::from(payload),
                    });
                    codec::encode(&publish, ProtocolVersion::V311, &mut out);
                    if out.len() > 16 * 1024 {
                        publisher.stream.write_all(&out).expect("write");
                        out.clear();
                    }
                }
                publisher.stream.write_all(&out).expect("write");
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
    broker.shutdown().expect("clean shutdown");
}

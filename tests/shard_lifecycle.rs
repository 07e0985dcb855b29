//! Connection lifecycle through the shard runtime: takeover across accepting shards, keep
//! alive and CONNECT timeouts on the timer wheel, wills across shards, shutdown, slow
//! consumers; with both I/O drivers.

mod shard_support;

use std::io::Write;
use std::time::{Duration, Instant};

use ringmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use ringmq::config::DriverKind;
use shard_support::{Client, config, id_on, start};

const SHARDS: usize = 4;

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
    takeover_closes_the_old_connection,
    keep_alive_timeout_closes,
    connect_timeout_closes_silent_sockets,
    will_reaches_a_subscriber_on_another_shard,
    shutdown_sends_server_shutting_down_to_v5_clients,
    persistent_session_resumes_with_queued_messages,
    slow_consumer_does_not_stall_others,
    paused_reader_resumes_once_it_drains,
);

fn disconnect_reason(p: &Packet) -> ReasonCode {
    match p {
        Packet::Disconnect(d) => d.reason,
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

fn takeover_closes_the_old_connection(driver: DriverKind) {
    let (broker, addr) = start(config(SHARDS, driver));
    // Several rounds: the kernel spreads the connections over the accepting shards, and
    // whichever accepts them, both end on the id's home shard.
    let persistent = |id: &str| ringmq::codec::Connect {
        protocol: ProtocolVersion::V5,
        clean_start: false,
        keep_alive: 30,
        client_id: ringmq::codec::MqttStr::try_from_str(id).expect("id"),
        will: None,
        username: None,
        password: None,
        properties: ringmq::codec::ConnectProperties {
            session_expiry_interval: Some(60),
            ..Default::default()
        },
    };
    for round in 0..6 {
        let id = format!("taker-{round}");
        let (mut old, _) = Client::connect_with(addr, persistent(&id));
        old.subscribe("t/old", QoS::AtLeastOnce, 1);
        let (mut new, connack) = Client::connect_with(addr, persistent(&id));
        match connack {
            Packet::ConnAck(c) => assert!(c.session_present, "session resumed"),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        let seen = old.expect_closed(Duration::from_secs(5));
        assert_eq!(
            seen.iter().map(disconnect_reason).collect::<Vec<_>>(),
            vec![ReasonCode::SessionTakenOver]
        );
        // The subscription moved with the session.
        let (mut publisher, _) =
            Client::connect(addr, "takeover-pub", ProtocolVersion::V311, true, 30);
        publisher.publish_acked("t/old", b"still here", QoS::AtLeastOnce, false, 1);
        assert_eq!(&new.receive_publish().payload[..], b"still here");
        publisher.disconnect();
        new.disconnect();
    }
    broker.shutdown().expect("clean shutdown");
}

fn keep_alive_timeout_closes(driver: DriverKind) {
    let (broker, addr) = start(config(2, driver));
    let start_at = Instant::now();
    let (mut v3, _) = Client::connect(addr, "ka-3", ProtocolVersion::V311, true, 1);
    let (mut v5, _) = Client::connect(addr, "ka-5", ProtocolVersion::V5, true, 1);
    let seen = v5.expect_closed(Duration::from_secs(5));
    assert_eq!(
        seen.iter().map(disconnect_reason).collect::<Vec<_>>(),
        vec![ReasonCode::KeepAliveTimeout]
    );
    assert!(v3.expect_closed(Duration::from_secs(5)).is_empty());
    // 1.5 x keep alive, plus at most one wheel tick.
    let elapsed = start_at.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400),
        "closed too early: {elapsed:?}"
    );
    // A client that pings stays.
    let (mut alive, _) = Client::connect(addr, "ka-ping", ProtocolVersion::V311, true, 1);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(600));
        alive.send(&Packet::PingReq);
        assert!(matches!(alive.recv(), Some(Packet::PingResp)));
    }
    broker.shutdown().expect("clean shutdown");
}

fn connect_timeout_closes_silent_sockets(driver: DriverKind) {
    let mut cfg = config(2, driver);
    cfg.limits.connect_timeout_secs = 1;
    let (broker, addr) = start(cfg);
    let mut silent = std::net::TcpStream::connect(addr).expect("connect");
    // Half a CONNECT, then nothing.
    silent.write_all(&[0x10, 0x20, 0x00]).expect("write");
    let mut client = Client::from_stream(silent, ProtocolVersion::V311);
    let t = Instant::now();
    client.expect_closed(Duration::from_secs(5));
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "closed at {:?}",
        t.elapsed()
    );
    broker.shutdown().expect("clean shutdown");
}

fn will_reaches_a_subscriber_on_another_shard(driver: DriverKind) {
    let (broker, addr) = start(config(SHARDS, driver));
    let (mut watcher, _) = Client::connect(
        addr,
        &id_on(2, SHARDS, "watch"),
        ProtocolVersion::V311,
        true,
        30,
    );
    watcher.subscribe("wills/#", QoS::AtLeastOnce, 1);
    let connect = ringmq::codec::Connect {
        protocol: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 30,
        client_id: ringmq::codec::MqttStr::try_from_str(&id_on(1, SHARDS, "mortal")).expect("id"),
        will: Some(ringmq::codec::Will {
            topic: shard_support::topic("wills/mortal"),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        }),
        username: None,
        password: None,
        properties: Default::default(),
    };
    let (mortal, _) = Client::connect_with(addr, connect);
    // Dropped without DISCONNECT: the will is due.
    drop(mortal);
    let got = watcher.receive_publish();
    assert_eq!(got.topic.as_str(), "wills/mortal");
    assert_eq!(&got.payload[..], b"gone");
    broker.shutdown().expect("clean shutdown");
}

fn shutdown_sends_server_shutting_down_to_v5_clients(driver: DriverKind) {
    let (broker, addr) = start(config(SHARDS, driver));
    let mut clients: Vec<Client> = (0..SHARDS)
        .map(|s| {
            Client::connect(
                addr,
                &id_on(s, SHARDS, "bye"),
                ProtocolVersion::V5,
                true,
                30,
            )
            .0
        })
        .collect();
    let (mut v3, _) = Client::connect(addr, "bye-v3", ProtocolVersion::V311, true, 30);
    let stopper = std::thread::spawn(move || broker.shutdown());
    for c in clients.iter_mut() {
        let seen = c.expect_closed(Duration::from_secs(5));
        assert_eq!(
            seen.iter().map(disconnect_reason).collect::<Vec<_>>(),
            vec![ReasonCode::ServerShuttingDown]
        );
    }
    assert!(v3.expect_closed(Duration::from_secs(5)).is_empty());
    stopper.join().expect("join").expect("clean shutdown");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener closed"
    );
}

fn persistent_session_resumes_with_queued_messages(driver: DriverKind) {
    let (broker, addr) = start(config(SHARDS, driver));
    let id = id_on(3, SHARDS, "durable");
    let (mut sub, _) = Client::connect(addr, &id, ProtocolVersion::V311, false, 30);
    sub.subscribe("q/#", QoS::AtLeastOnce, 1);
    sub.disconnect();
    std::thread::sleep(Duration::from_millis(100));
    let (mut publisher, _) = Client::connect(
        addr,
        &id_on(0, SHARDS, "feeder"),
        ProtocolVersion::V311,
        true,
        30,
    );
    for i in 1..=3u16 {
        publisher.publish_acked("q/x", format!("{i}").as_bytes(), QoS::AtLeastOnce, false, i);
    }
    let (mut sub, connack) = Client::connect(addr, &id, ProtocolVersion::V311, false, 30);
    match connack {
        Packet::ConnAck(c) => assert!(c.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    for i in 1..=3u16 {
        assert_eq!(
            &sub.receive_publish().payload[..],
            format!("{i}").as_bytes()
        );
    }
    broker.shutdown().expect("clean shutdown");
}

/// A subscriber that never reads must not stop a healthy one from getting messages, and
/// is disconnected after `slow_consumer_timeout_secs` over `max_output_buffer`.
fn slow_consumer_does_not_stall_others(driver: DriverKind) {
    let mut cfg = config(2, driver);
    cfg.limits.max_output_buffer = 64 * 1024;
    cfg.limits.slow_consumer_timeout_secs = 1;
    let (broker, addr) = start(cfg);
    let (mut frozen, _) = Client::connect(addr, "frozen", ProtocolVersion::V311, true, 0);
    frozen.subscribe("flood", QoS::AtLeastOnce, 1);
    let (mut healthy, _) = Client::connect(addr, "healthy", ProtocolVersion::V311, true, 0);
    healthy.subscribe("flood", QoS::AtLeastOnce, 1);
    // The healthy subscriber reads on its own thread until the end marker (QoS 1: never
    // dropped for output size), while `frozen` reads nothing at all.
    let reader = std::thread::spawn(move || {
        let mut got = 0usize;
        loop {
            let p = healthy.receive_publish();
            if &p.payload[..] == b"end" {
                return got;
            }
            got += 1;
        }
    });
    let (mut publisher, _) = Client::connect(addr, "flooder", ProtocolVersion::V311, true, 0);
    let payload = vec![b'x'; 16 * 1024];
    let t = Instant::now();
    // Far more than the socket buffers of `frozen` hold (32 MB).
    for _ in 0..2000u32 {
        publisher.publish("flood", &payload, QoS::AtMostOnce, false, 0);
    }
    publisher.publish_acked("flood", b"end", QoS::AtLeastOnce, false, 1);
    let got = reader.join().expect("reader");
    assert!(got > 0, "the healthy subscriber received the flood");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    // Leave `frozen` over the limit for longer than the 1 s timeout (plus a wheel tick)
    // before reading anything from it.
    std::thread::sleep(Duration::from_millis(2500));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut drained = 0usize;
    loop {
        assert!(
            Instant::now() < deadline,
            "slow consumer never disconnected"
        );
        match frozen.recv_within(Duration::from_secs(5)) {
            Some(Some(_)) => drained += 1,
            Some(None) => break,
            None => panic!("slow consumer still connected after {drained} packets"),
        }
    }
    broker.shutdown().expect("clean shutdown");
}

/// A client that publishes without reading, until the broker's output to it is over
/// `max_output_buffer` and its socket is full, is not read any further (TCP back-pressure on
/// its publishes); once it reads its socket, the broker reads it again from where it
/// stopped: every publish is acknowledged and every delivery the window allows arrives.
fn paused_reader_resumes_once_it_drains(driver: DriverKind) {
    use bytes::{Bytes, BytesMut};
    use ringmq::codec::{self, Publish, PublishProperties};
    const N: u16 = 200;
    let mut cfg = config(2, driver);
    cfg.limits.max_output_buffer = 64 * 1024;
    cfg.limits.slow_consumer_timeout_secs = 60;
    let window = usize::from(cfg.limits.max_inflight);
    let (broker, addr) = start(cfg);
    let (mut echo, _) = Client::connect(addr, "echo", ProtocolVersion::V311, true, 0);
    echo.subscribe("echo", QoS::AtLeastOnce, 1);
    // 200 x 100 KB publishes to its own subscription: the 128 deliveries in flight (12.8 MB)
    // outgrow the socket buffers of a reader that reads nothing, and the 20 MB of publishes
    // outgrow what the sockets hold while the broker does not read them.
    let mut writer = echo.stream.try_clone().expect("clone");
    let payload = Bytes::from(vec![b'e'; 100 * 1024]);
    let sender = std::thread::spawn(move || {
        let mut out = BytesMut::new();
        for id in 1..=N {
            let publish = Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: shard_support::topic("echo"),
                packet_id: Some(shard_support::pid(id)),
                properties: PublishProperties::default(),
                payload: payload.clone(),
            });
            codec::encode(&publish, ProtocolVersion::V311, &mut out);
            writer.write_all(&out).expect("write publish");
            out.clear();
        }
    });
    // Nobody reads for a while: the broker's output to `echo` piles up and it stops reading.
    std::thread::sleep(Duration::from_millis(1500));
    let (mut acks, mut deliveries) = (0u16, 0usize);
    while acks < N || deliveries < window {
        match echo.recv_within(Duration::from_secs(10)) {
            Some(Some(Packet::PubAck(ack))) => {
                acks += 1;
                assert_eq!(ack.packet_id.get(), acks, "PUBACKs in publish order");
            }
            Some(Some(Packet::Publish(p))) => {
                deliveries += 1;
                assert_eq!(p.payload.len(), 100 * 1024);
            }
            other => panic!("after {acks} PUBACKs and {deliveries} deliveries: {other:?}"),
        }
    }
    sender.join().expect("sender");
    assert_eq!(
        deliveries, window,
        "the inflight window, no more (nothing was acked)"
    );
    broker.shutdown().expect("clean shutdown");
}

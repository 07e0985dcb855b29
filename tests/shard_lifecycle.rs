//! Connection lifecycle through the shard runtime: takeover across accepting shards, keep
//! alive and CONNECT timeouts on the timer wheel, wills across shards, shutdown, slow
//! consumers; with both I/O drivers.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Broker, Client, connect_packet, will};
use ringmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use ringmq::config::DriverKind;

const SHARDS: usize = 4;

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
    let broker = Broker::start_driver(SHARDS, driver);
    // Several rounds: the kernel spreads the connections over the accepting shards, and
    // whichever accepts them, both end on the id's home shard.
    let persistent = |id: &str| {
        let mut c = connect_packet(ProtocolVersion::V5, id, false);
        c.properties.session_expiry_interval = Some(60);
        c
    };
    for round in 0..6 {
        let id = format!("taker-{round}");
        let (mut old, _) = Client::connect_with(broker.addr, persistent(&id));
        old.subscribe("t/old", QoS::AtLeastOnce);
        let (mut new, connack) = Client::connect_with(broker.addr, persistent(&id));
        assert!(connack.session_present, "session resumed");
        let seen = old.expect_closed();
        assert_eq!(
            seen.iter().map(disconnect_reason).collect::<Vec<_>>(),
            vec![ReasonCode::SessionTakenOver]
        );
        // The subscription moved with the session.
        let (mut publisher, _) =
            Client::connect(broker.addr, ProtocolVersion::V311, "takeover-pub", true);
        publisher.publish("t/old", b"still here", QoS::AtLeastOnce, false);
        assert_eq!(&new.recv_publish().payload[..], b"still here");
        publisher.disconnect();
        new.disconnect();
    }
    broker.stop();
}

fn keep_alive_timeout_closes(driver: DriverKind) {
    let broker = Broker::start_driver(2, driver);
    let start_at = Instant::now();
    let (mut v3, _) =
        Client::connect_keep_alive(broker.addr, ProtocolVersion::V311, "ka-3", true, 1);
    let (mut v5, _) = Client::connect_keep_alive(broker.addr, ProtocolVersion::V5, "ka-5", true, 1);
    let seen = v5.expect_closed();
    assert_eq!(
        seen.iter().map(disconnect_reason).collect::<Vec<_>>(),
        vec![ReasonCode::KeepAliveTimeout]
    );
    assert!(v3.expect_closed().is_empty());
    // 1.5 x keep alive, plus at most one wheel tick.
    let elapsed = start_at.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400),
        "closed too early: {elapsed:?}"
    );
    // A client that pings stays.
    let (mut alive, _) =
        Client::connect_keep_alive(broker.addr, ProtocolVersion::V311, "ka-ping", true, 1);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(600));
        alive.ping();
    }
    broker.stop();
}

fn connect_timeout_closes_silent_sockets(driver: DriverKind) {
    let broker = Broker::start_with(2, |c| {
        c.driver = driver;
        c.limits.connect_timeout_secs = 1;
    });
    let mut client = Client::tcp(broker.addr, ProtocolVersion::V311);
    // Half a CONNECT, then nothing.
    client.send_bytes(&[0x10, 0x20, 0x00]);
    let t = Instant::now();
    client.expect_closed();
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "closed at {:?}",
        t.elapsed()
    );
    broker.stop();
}

fn will_reaches_a_subscriber_on_another_shard(driver: DriverKind) {
    let broker = Broker::start_driver(SHARDS, driver);
    let (mut watcher, _) = Client::connect(
        broker.addr,
        ProtocolVersion::V311,
        &broker.client_id_on("watch", 2),
        true,
    );
    watcher.subscribe("wills/#", QoS::AtLeastOnce);
    let mut connect = connect_packet(
        ProtocolVersion::V311,
        &broker.client_id_on("mortal", 1),
        true,
    );
    connect.will = Some(will("wills/mortal", b"gone", QoS::AtLeastOnce, false));
    let (mortal, _) = Client::connect_with(broker.addr, connect);
    // Dropped without DISCONNECT: the will is due.
    drop(mortal);
    let got = watcher.recv_publish();
    assert_eq!(got.topic.as_str(), "wills/mortal");
    assert_eq!(&got.payload[..], b"gone");
    broker.stop();
}

fn shutdown_sends_server_shutting_down_to_v5_clients(driver: DriverKind) {
    let broker = Broker::start_driver(SHARDS, driver);
    let addr = broker.addr;
    let mut clients: Vec<Client> = (0..SHARDS)
        .map(|s| {
            let id = broker.client_id_on("bye", s);
            Client::connect(addr, ProtocolVersion::V5, &id, true).0
        })
        .collect();
    let (mut v3, _) = Client::connect(addr, ProtocolVersion::V311, "bye-v3", true);
    // `stop` panics, failing the join, unless the broker shuts down cleanly.
    let stopper = std::thread::spawn(move || broker.stop());
    for c in clients.iter_mut() {
        let seen = c.expect_closed();
        assert_eq!(
            seen.iter().map(disconnect_reason).collect::<Vec<_>>(),
            vec![ReasonCode::ServerShuttingDown]
        );
    }
    assert!(v3.expect_closed().is_empty());
    stopper.join().expect("clean shutdown");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener closed"
    );
}

fn persistent_session_resumes_with_queued_messages(driver: DriverKind) {
    let broker = Broker::start_driver(SHARDS, driver);
    let id = broker.client_id_on("durable", 3);
    let (mut sub, _) = Client::connect(broker.addr, ProtocolVersion::V311, &id, false);
    sub.subscribe("q/#", QoS::AtLeastOnce);
    sub.disconnect();
    std::thread::sleep(Duration::from_millis(100));
    let (mut publisher, _) = Client::connect(
        broker.addr,
        ProtocolVersion::V311,
        &broker.client_id_on("feeder", 0),
        true,
    );
    for i in 1..=3u16 {
        publisher.publish("q/x", format!("{i}").as_bytes(), QoS::AtLeastOnce, false);
    }
    let (mut sub, connack) = Client::connect(broker.addr, ProtocolVersion::V311, &id, false);
    assert!(connack.session_present);
    for i in 1..=3u16 {
        assert_eq!(&sub.recv_publish().payload[..], format!("{i}").as_bytes());
    }
    broker.stop();
}

/// A subscriber that never reads must not stop a healthy one from getting messages, and
/// is disconnected after `slow_consumer_timeout_secs` over `max_output_buffer`.
fn slow_consumer_does_not_stall_others(driver: DriverKind) {
    let broker = Broker::start_with(2, |c| {
        c.driver = driver;
        c.limits.max_output_buffer = 64 * 1024;
        c.limits.slow_consumer_timeout_secs = 1;
    });
    let (mut frozen, _) =
        Client::connect_keep_alive(broker.addr, ProtocolVersion::V311, "frozen", true, 0);
    frozen.subscribe("flood", QoS::AtLeastOnce);
    let (mut healthy, _) =
        Client::connect_keep_alive(broker.addr, ProtocolVersion::V311, "healthy", true, 0);
    healthy.subscribe("flood", QoS::AtLeastOnce);
    // The healthy subscriber reads on its own thread until the end marker (QoS 1: never
    // dropped for output size), while `frozen` reads nothing at all.
    let reader = std::thread::spawn(move || {
        let mut got = 0usize;
        loop {
            let p = healthy.recv_publish();
            if &p.payload[..] == b"end" {
                return got;
            }
            got += 1;
        }
    });
    let (mut publisher, _) =
        Client::connect_keep_alive(broker.addr, ProtocolVersion::V311, "flooder", true, 0);
    let payload = vec![b'x'; 16 * 1024];
    let t = Instant::now();
    // Far more than the socket buffers of `frozen` hold (32 MB).
    for _ in 0..2000u32 {
        publisher.publish("flood", &payload, QoS::AtMostOnce, false);
    }
    publisher.publish("flood", b"end", QoS::AtLeastOnce, false);
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
            Ok(Some(_)) => drained += 1,
            Err(_) => break,
            Ok(None) => panic!("slow consumer still connected after {drained} packets"),
        }
    }
    broker.stop();
}

/// A client that publishes without reading, until the broker's output to it is over
/// `max_output_buffer` and its socket is full, is not read any further (TCP back-pressure on
/// its publishes); once it reads its socket, the broker reads it again from where it
/// stopped: every publish is acknowledged and every delivery the window allows arrives.
fn paused_reader_resumes_once_it_drains(driver: DriverKind) {
    use bytes::{Bytes, BytesMut};
    use ringmq::codec::{self, Publish, PublishProperties};
    const N: u16 = 200;
    let mut window = 0;
    let broker = Broker::start_with(2, |c| {
        c.driver = driver;
        c.limits.max_output_buffer = 64 * 1024;
        c.limits.slow_consumer_timeout_secs = 60;
        window = usize::from(c.limits.max_inflight);
    });
    let (mut echo, _) =
        Client::connect_keep_alive(broker.addr, ProtocolVersion::V311, "echo", true, 0);
    echo.subscribe("echo", QoS::AtLeastOnce);
    // 200 x 100 KB publishes to its own subscription: deliveries beyond `max_output_buffer`
    // wait in the session's queue (they go out as the client reads), and the 20 MB of
    // publishes outgrow what the sockets hold while the broker does not read them.
    let mut writer = echo.writer();
    let payload = Bytes::from(vec![b'e'; 100 * 1024]);
    let sender = std::thread::spawn(move || {
        let mut out = BytesMut::new();
        for id in 1..=N {
            let publish = Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: common::topic("echo"),
                packet_id: Some(common::pid(id)),
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
            Ok(Some(Packet::PubAck(ack))) => {
                acks += 1;
                assert_eq!(ack.packet_id.get(), acks, "PUBACKs in publish order");
            }
            Ok(Some(Packet::Publish(p))) => {
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
    broker.stop();
}

//! Memory a client cannot make the broker hold: queued messages do not keep the read buffer
//! they arrived in, and deliveries to a client that does not read wait in its bounded queue
//! instead of growing its output; subscribers that stop acknowledging are disconnected.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::codec::{self, Packet, ProtocolVersion, Publish, PublishProperties, QoS};

use crate::common::process::BrokerProcess;
use crate::common::{self, Client};

const MB: usize = 1_000_000;

fn publish_bytes(
    v: ProtocolVersion,
    topic: &str,
    payload: Bytes,
    qos: QoS,
    id: Option<u16>,
) -> BytesMut {
    let p = Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: common::topic(topic),
        packet_id: id.map(common::pid),
        properties: PublishProperties::default(),
        payload,
    });
    let mut out = BytesMut::new();
    codec::encode(&p, v, &mut out);
    out
}

/// RSS after the broker settled: the figure a leak or a pinned buffer would keep high.
fn settled_rss_mib(broker: &BrokerProcess) -> f64 {
    std::thread::sleep(Duration::from_millis(500));
    broker.rss_kib() as f64 / 1024.0
}

/// 150 one-byte QoS 1 messages for an offline session, each read in the same batch as a
/// 1 MB QoS 0 publish nobody subscribed to: the queue holds 150 small messages, not 150
/// read buffers (143 MB when queued messages were views into them).
#[test]
fn queued_messages_do_not_pin_read_buffers() {
    // One at a time: RSS is measured, and a non-reader's close counts in TCPAbortOnClose.
    let _serial = super::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let broker = BrokerProcess::start(&["--shards", "1"]);
    let v = ProtocolVersion::V311;
    let (mut sub, _) = Client::connect(broker.addr, v, "offline", false);
    sub.subscribe("q/#", QoS::AtLeastOnce);
    sub.disconnect();
    let (mut publisher, _) = Client::connect(broker.addr, v, "batcher", true);
    let bulk = Bytes::from(vec![b'b'; MB]);
    // Warm up: the first large reads size the allocator's arenas.
    for _ in 0..5 {
        publisher.send_bytes(&publish_bytes(
            v,
            "bulk",
            bulk.clone(),
            QoS::AtMostOnce,
            None,
        ));
    }
    publisher.ping();
    let before = settled_rss_mib(&broker);
    for i in 1..=150u16 {
        let mut batch = publish_bytes(v, "bulk", bulk.clone(), QoS::AtMostOnce, None);
        batch.extend_from_slice(&publish_bytes(
            v,
            &format!("q/{i}"),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            Some(i),
        ));
        publisher.send_bytes(&batch);
        match publisher.recv() {
            Packet::PubAck(a) => assert_eq!(a.packet_id.get(), i),
            other => panic!("expected PUBACK {i}, got {other:?}"),
        }
    }
    let after = settled_rss_mib(&broker);
    eprintln!("150 queued 1-byte messages: RSS {before:.1} -> {after:.1} MiB");
    assert!(
        after - before < 32.0,
        "RSS grew by {:.1} MiB for 150 queued bytes",
        after - before
    );
    // And every one of them is there.
    let (mut sub, ack) = Client::connect(broker.addr, v, "offline", false);
    assert!(ack.session_present);
    for i in 1..=150u16 {
        let p = sub.recv_publish();
        assert_eq!(p.topic.as_str(), format!("q/{i}"));
    }
    broker.terminate(Duration::from_secs(5));
}

/// A QoS 1 subscriber that never reads while 200 x 1 MB QoS 1 messages are published to it:
/// what it is owed waits in its bounded queue (`max_queued_bytes`), not in an output buffer
/// past `max_output_buffer` (RSS grew by 261 MB when deliveries ignored the limit).
#[test]
fn qos1_deliveries_to_a_non_reader_stay_bounded() {
    // One at a time: RSS is measured, and a non-reader's close counts in TCPAbortOnClose.
    let _serial = super::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let broker = BrokerProcess::start(&["--shards", "1"]);
    let v = ProtocolVersion::V311;
    let (mut stuck, _) = Client::connect_keep_alive(broker.addr, v, "never-reads", true, 0);
    stuck.subscribe("big", QoS::AtLeastOnce);
    let (mut publisher, _) = Client::connect_keep_alive(broker.addr, v, "big-sender", true, 0);
    let payload = Bytes::from(vec![b'p'; MB]);
    publisher.send_bytes(&publish_bytes(
        v,
        "warm",
        payload.clone(),
        QoS::AtMostOnce,
        None,
    ));
    publisher.ping();
    let before = settled_rss_mib(&broker);
    for i in 1..=200u16 {
        publisher.send_bytes(&publish_bytes(
            v,
            "big",
            payload.clone(),
            QoS::AtLeastOnce,
            Some(i),
        ));
        match publisher.recv() {
            Packet::PubAck(a) => assert_eq!(a.packet_id.get(), i),
            other => panic!("expected PUBACK {i}, got {other:?}"),
        }
    }
    let after = settled_rss_mib(&broker);
    eprintln!("200 x 1 MB to a non-reader: RSS {before:.1} -> {after:.1} MiB");
    // 4 MiB of output, 16 MiB of queue and the allocator's slack.
    assert!(
        after - before < 64.0,
        "RSS grew by {:.1} MiB",
        after - before
    );
    drop(stuck);
    broker.terminate(Duration::from_secs(5));
}

/// Four QoS 1 subscribers that stop acknowledging (their inflight window full, messages
/// waiting) are disconnected once `slow_consumer_timeout_secs` passed, not before; a
/// healthy subscriber of the same topic gets every message meanwhile.
#[test]
fn subscribers_that_stop_acknowledging_are_disconnected() {
    // One at a time: RSS is measured, and a non-reader's close counts in TCPAbortOnClose.
    let _serial = super::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    const TIMEOUT_S: u64 = 2;
    let config = common::process::DataDir::new("slow-config");
    let file = config.0.join("ringmq.toml");
    std::fs::write(
        &file,
        format!("[limits]\nslow_consumer_timeout_secs = {TIMEOUT_S}\n"),
    )
    .expect("write config");
    let broker = BrokerProcess::start(&[
        "--shards",
        "2",
        "--config",
        file.to_str().expect("utf-8 path"),
    ]);
    let v = ProtocolVersion::V5;
    let mut stuck: Vec<Client> = (0..4)
        .map(|i| {
            let (mut c, _) =
                Client::connect_keep_alive(broker.addr, v, &format!("stuck{i}"), true, 0);
            c.subscribe("feed", QoS::AtLeastOnce);
            c
        })
        .collect();
    let (mut healthy, _) = Client::connect_keep_alive(broker.addr, v, "healthy", true, 0);
    healthy.subscribe("feed", QoS::AtLeastOnce);
    const N: usize = 3_000;
    let reader = std::thread::spawn(move || {
        for _ in 0..N {
            healthy.recv_publish();
        }
    });
    let (mut publisher, _) = Client::connect_keep_alive(broker.addr, v, "feeder", true, 0);
    let started = Instant::now();
    let mut writer = publisher.writer();
    // 3,000 messages over about 6 s: the stuck windows (128) fill within the first second.
    let mut batch = BytesMut::new();
    for i in 1..=N {
        let id = publisher.next_packet_id();
        batch.extend_from_slice(&publish_bytes(
            v,
            "feed",
            Bytes::from_static(b"tick"),
            QoS::AtLeastOnce,
            Some(id),
        ));
        if i % 20 == 0 {
            writer.write_all(&batch).expect("publish");
            batch.clear();
            std::thread::sleep(Duration::from_millis(40));
        }
    }
    for _ in 0..N {
        match publisher.recv() {
            Packet::PubAck(_) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    reader
        .join()
        .expect("the healthy subscriber got every message");
    for (i, c) in stuck.iter_mut().enumerate() {
        // Drain what was written to it; the end of the stream must come.
        let mut deliveries = 0;
        let closed_at = loop {
            match c.recv_within(Duration::from_secs(10)) {
                Ok(Some(Packet::Publish(_))) => deliveries += 1,
                Ok(Some(Packet::Disconnect(_))) => {}
                Ok(Some(other)) => panic!("stuck{i}: unexpected {other:?}"),
                Ok(None) => panic!("stuck{i} still connected after {deliveries} deliveries"),
                Err(_) => break started.elapsed(),
            }
        };
        assert!(
            deliveries >= 128,
            "stuck{i}: its window was full ({deliveries} deliveries)"
        );
        assert!(
            closed_at >= Duration::from_secs(TIMEOUT_S),
            "stuck{i}: disconnected after {closed_at:?}, before the timeout"
        );
    }
    broker.terminate(Duration::from_secs(5));
}

//! Retained messages are replicated on every shard. When clients homed on different shards
//! publish retained messages to the same topics at the same moment, every replica must end
//! with the same message per topic: a subscriber gets the same retained message whichever
//! shard its client id lives on.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use bytes::BytesMut;
use common::{Broker, Client, publish};
use ringmq::codec::{self, Packet, ProtocolVersion, QoS};

const TOPICS: usize = 2000;

/// Every topic `conv/N` published retained by `who`, QoS 0, in one buffer.
fn flood(who: &str, v: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    for t in 0..TOPICS {
        let mut p = publish(&format!("conv/{t}"), who.as_bytes(), QoS::AtMostOnce, None);
        p.retain = true;
        codec::encode(&Packet::Publish(p), v, &mut out);
    }
    out
}

/// What a new subscriber homed on `shard` is sent for `conv/+`: topic -> payload.
fn retained_seen_from(
    broker: &Broker,
    shard: usize,
    v: ProtocolVersion,
) -> BTreeMap<String, Vec<u8>> {
    let id = broker.client_id_on(&format!("conv-sub{shard}"), shard);
    let (mut sub, _) = Client::connect(broker.addr, v, &id, true);
    sub.subscribe("conv/+", QoS::AtMostOnce);
    let mut seen = BTreeMap::new();
    for _ in 0..TOPICS {
        let p = sub.recv_publish();
        assert!(p.retain, "sent from the retained store");
        seen.insert(p.topic.as_str().to_owned(), p.payload.to_vec());
    }
    sub.disconnect();
    seen
}

fn converge(shards: usize) {
    let v = ProtocolVersion::V311;
    let broker = Broker::start(shards);
    let start = Arc::new(Barrier::new(shards));
    let publishers: Vec<_> = (0..shards)
        .map(|shard| {
            let id = broker.client_id_on(&format!("conv-pub{shard}"), shard);
            let (mut c, _) = Client::connect(broker.addr, v, &id, true);
            let bytes = flood(&format!("from shard {shard}"), v);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                c.send_bytes(&bytes);
                // A QoS 1 retained publish is acknowledged only once every shard has applied
                // it, and so (channels are FIFO) everything this client published before.
                c.publish(
                    &format!("conv-done/{shard}"),
                    b"done",
                    QoS::AtLeastOnce,
                    true,
                );
                c.disconnect();
            })
        })
        .collect();
    for p in publishers {
        p.join().expect("publisher");
    }
    let views: Vec<_> = (0..shards)
        .map(|shard| retained_seen_from(&broker, shard, v))
        .collect();
    for (shard, view) in views.iter().enumerate() {
        assert_eq!(
            view.len(),
            TOPICS,
            "shard {shard}: one retained message per topic"
        );
    }
    for (shard, view) in views.iter().enumerate().skip(1) {
        let differ = view
            .iter()
            .filter(|(topic, payload)| views[0].get(*topic) != Some(*payload))
            .count();
        assert_eq!(
            differ, 0,
            "shard {shard} and shard 0 disagree on {differ} of {TOPICS} topics"
        );
    }
}

#[test]
fn concurrent_retained_publishes_converge_on_2_shards() {
    converge(2);
}

#[test]
fn concurrent_retained_publishes_converge_on_4_shards() {
    converge(4);
}

/// A retained publish is acknowledged only once every shard's replica holds it, also when
/// the topic's owner (which orders its updates) is neither the publisher's shard nor the
/// subscriber's: right after each PUBACK, a client homed on a third shard subscribes and is
/// sent exactly that message.
#[test]
fn acknowledged_retained_message_is_on_every_replica() {
    let v = ProtocolVersion::V5;
    let broker = Broker::start(4);
    let (mut publisher, _) =
        Client::connect(broker.addr, v, &broker.client_id_on("ack-pub", 0), true);
    let (mut sub, _) = Client::connect(broker.addr, v, &broker.client_id_on("ack-sub", 2), true);
    let topics = (0..10_000)
        .map(|i| format!("owned/{i}"))
        .filter(|t| ringmq::shard::home_shard(t.as_bytes(), 4).index() == 1)
        .take(100);
    for (i, topic) in topics.enumerate() {
        let payload = format!("v{i}");
        publisher.publish(&topic, payload.as_bytes(), QoS::AtLeastOnce, true);
        sub.subscribe(&topic, QoS::AtMostOnce);
        let p = sub.recv_publish();
        assert_eq!(p.topic.as_str(), topic);
        assert_eq!(
            &p.payload[..],
            payload.as_bytes(),
            "the acknowledged message"
        );
        assert!(p.retain);
    }
}

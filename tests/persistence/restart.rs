//! A clean restart (SIGTERM, start again on the same store) keeps persistent sessions,
//! their subscriptions with every option, their queued and in-flight QoS 1/2 messages,
//! QoS 2 flows in both directions, retained messages, and delayed wills; a session whose
//! expiry passed while the broker was down is gone. The shard count may change between
//! runs.

use std::time::Duration;

use ringmq::codec::{
    Ack, Packet, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions,
};

use crate::common::process::{BrokerProcess, DataDir};
use crate::common::{Client, connect_packet, pid, publish};

const STOP: Duration = Duration::from_secs(10);

/// A persistent CONNECT: 3.x clean session 0, v5 clean start 0 with a session expiry.
fn persistent(v: ProtocolVersion, id: &str, expiry: u32) -> ringmq::codec::Connect {
    let mut c = connect_packet(v, id, false);
    if v.is_v5() {
        c.properties.session_expiry_interval = Some(expiry);
    }
    c
}

fn restart(broker: BrokerProcess, dir: &DataDir, args: &[&str]) -> BrokerProcess {
    let status = broker.terminate(STOP);
    assert!(status.success(), "clean stop: {status}");
    BrokerProcess::start_in(dir, args)
}

fn expect_publish(c: &mut Client) -> ringmq::codec::Publish {
    match c.recv() {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

fn queued_messages_and_subscription_options(v: ProtocolVersion) {
    let dir = DataDir::new("queued");
    let broker = BrokerProcess::start_in(&dir, &["--shards", "2"]);
    let (mut sub, ack) = Client::connect_with(broker.addr, persistent(v, "keeper", 3600));
    assert!(!ack.session_present);
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: v.is_v5(),
        retain_as_published: v.is_v5(),
        retain_handling: RetainHandling::SendAtSubscribe,
    };
    let id = v.is_v5().then_some(7);
    sub.subscribe_with("fleet/+/temp", options, id);
    sub.disconnect();

    let (mut publisher, _) = Client::connect(broker.addr, v, "sensor", true);
    publisher.publish("fleet/1/temp", b"q1", QoS::AtLeastOnce, false);
    publisher.publish("fleet/2/temp", b"q2", QoS::ExactlyOnce, false);
    publisher.publish("fleet/3/temp", b"q0", QoS::AtMostOnce, false);
    publisher.publish("retained/a", b"kept", QoS::AtLeastOnce, true);
    publisher.disconnect();

    let broker = restart(broker, &dir, &["--shards", "2"]);
    let (mut sub, ack) = Client::connect_with(broker.addr, persistent(v, "keeper", 3600));
    assert!(ack.session_present, "the session survived the restart");
    let a = sub.recv_publish();
    assert_eq!((&a.payload[..], a.qos), (&b"q1"[..], QoS::AtLeastOnce));
    let b = sub.recv_publish();
    assert_eq!((&b.payload[..], b.qos), (&b"q2"[..], QoS::ExactlyOnce));
    if v.is_v5() {
        assert_eq!(a.properties.subscription_identifiers, vec![7]);
        assert_eq!(b.properties.subscription_identifiers, vec![7]);
    }
    sub.expect_nothing();
    // The subscription itself survived, with its options: a new message reaches it.
    let (mut publisher, _) = Client::connect(broker.addr, v, "sensor", true);
    publisher.publish("fleet/9/temp", b"after", QoS::AtLeastOnce, false);
    assert_eq!(&sub.recv_publish().payload[..], b"after");
    // The retained message survived.
    let (mut late, _) = Client::connect(broker.addr, v, "late", true);
    late.subscribe("retained/#", QoS::AtLeastOnce);
    let r = late.recv_publish();
    assert_eq!((&r.payload[..], r.retain), (&b"kept"[..], true));
    drop(broker);
}

#[test]
fn queued_messages_and_subscription_options_v311() {
    queued_messages_and_subscription_options(ProtocolVersion::V311);
}

#[test]
fn queued_messages_and_subscription_options_v5() {
    queued_messages_and_subscription_options(ProtocolVersion::V5);
}

/// A QoS 1 message sent to the client but not acknowledged when the broker stopped is sent
/// again after the restart with DUP and the same packet id [MQTT-4.4.0-1].
#[test]
fn inflight_qos1_is_resent_with_dup_and_the_same_packet_id() {
    let v = ProtocolVersion::V311;
    let dir = DataDir::new("inflight");
    let broker = BrokerProcess::start_in(&dir, &[]);
    let (mut sub, _) = Client::connect_with(broker.addr, persistent(v, "slow", 0));
    sub.subscribe("jobs", QoS::AtLeastOnce);
    let (mut publisher, _) = Client::connect(broker.addr, v, "boss", true);
    publisher.publish("jobs", b"job-1", QoS::AtLeastOnce, false);
    let first = expect_publish(&mut sub);
    assert!(!first.dup);
    // No PUBACK: the broker stops with the message in flight.
    let broker = restart(broker, &dir, &[]);
    let (mut sub, ack) = Client::connect_with(broker.addr, persistent(v, "slow", 0));
    assert!(ack.session_present);
    let again = expect_publish(&mut sub);
    assert_eq!(&again.payload[..], b"job-1");
    assert!(again.dup, "a resend carries DUP");
    assert_eq!(again.packet_id, first.packet_id, "with the same packet id");
    sub.ack(&again);
    sub.expect_nothing();
}

/// Inbound QoS 2 between PUBREC and PUBREL: the publisher's resend after the restart is a
/// duplicate (PUBREC, not delivered again); its PUBREL completes the flow.
#[test]
fn inbound_qos2_awaiting_pubrel_survives_a_restart() {
    let v = ProtocolVersion::V5;
    let dir = DataDir::new("qos2-in");
    let broker = BrokerProcess::start_in(&dir, &["--shards", "2"]);
    let (mut sub, _) = Client::connect_with(broker.addr, persistent(v, "watcher", 3600));
    sub.subscribe("once", QoS::ExactlyOnce);
    let (mut p, _) = Client::connect_with(broker.addr, persistent(v, "sender", 3600));
    p.send(&Packet::Publish(publish(
        "once",
        b"exactly",
        QoS::ExactlyOnce,
        Some(10),
    )));
    match p.recv() {
        Packet::PubRec(a) => assert_eq!(a.packet_id, pid(10)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], b"exactly");
    let broker = restart(broker, &dir, &["--shards", "2"]);
    let (mut p, ack) = Client::connect_with(broker.addr, persistent(v, "sender", 3600));
    assert!(ack.session_present);
    let mut dup = publish("once", b"exactly", QoS::ExactlyOnce, Some(10));
    dup.dup = true;
    p.send(&Packet::Publish(dup));
    match p.recv() {
        Packet::PubRec(a) => assert_eq!((a.packet_id, a.reason), (pid(10), ReasonCode::Success)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    p.send(&Packet::PubRel(Ack::new(pid(10))));
    match p.recv() {
        Packet::PubComp(a) => assert_eq!((a.packet_id, a.reason), (pid(10), ReasonCode::Success)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    let (mut sub, ack) = Client::connect_with(broker.addr, persistent(v, "watcher", 3600));
    assert!(ack.session_present);
    sub.expect_nothing_for(Duration::from_millis(500));
}

/// Outbound QoS 2 between PUBREL and PUBCOMP: after the restart the broker sends PUBREL
/// again, not the message [MQTT-4.4.0-1].
#[test]
fn outbound_qos2_released_survives_a_restart() {
    let v = ProtocolVersion::V311;
    let dir = DataDir::new("qos2-out");
    let broker = BrokerProcess::start_in(&dir, &[]);
    let (mut sub, _) = Client::connect_with(broker.addr, persistent(v, "receiver", 0));
    sub.subscribe("twice", QoS::ExactlyOnce);
    let (mut p, _) = Client::connect(broker.addr, v, "p", true);
    p.publish("twice", b"m", QoS::ExactlyOnce, false);
    let m = expect_publish(&mut sub);
    let id = m.packet_id.expect("QoS 2 has an id");
    sub.send(&Packet::PubRec(Ack::new(id)));
    match sub.recv() {
        Packet::PubRel(a) => assert_eq!(a.packet_id, id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    // No PUBCOMP before the stop.
    let broker = restart(broker, &dir, &[]);
    let (mut sub, ack) = Client::connect_with(broker.addr, persistent(v, "receiver", 0));
    assert!(ack.session_present);
    match sub.recv() {
        Packet::PubRel(a) => assert_eq!(a.packet_id, id),
        other => panic!("expected PUBREL again, got {other:?}"),
    }
    sub.send(&Packet::PubComp(Ack::new(id)));
    sub.expect_nothing();
}

/// Outbound QoS 2 between PUBLISH and PUBREC: resent with DUP and the same id.
#[test]
fn outbound_qos2_unacknowledged_is_resent_with_its_id() {
    let v = ProtocolVersion::V5;
    let dir = DataDir::new("qos2-pub");
    let broker = BrokerProcess::start_in(&dir, &["--shards", "2"]);
    let (mut sub, _) = Client::connect_with(broker.addr, persistent(v, "r2", 600));
    sub.subscribe("q2", QoS::ExactlyOnce);
    let (mut p, _) = Client::connect(broker.addr, v, "p2", true);
    p.publish("q2", b"m", QoS::ExactlyOnce, false);
    let m = expect_publish(&mut sub);
    let broker = restart(broker, &dir, &["--shards", "2"]);
    let (mut sub, _) = Client::connect_with(broker.addr, persistent(v, "r2", 600));
    let again = expect_publish(&mut sub);
    assert_eq!((again.packet_id, again.dup), (m.packet_id, true));
    sub.ack(&again);
    sub.expect_nothing();
}

#[test]
fn retained_set_and_deleted_survive_a_restart() {
    let v = ProtocolVersion::V311;
    let dir = DataDir::new("retained");
    let broker = BrokerProcess::start_in(&dir, &["--shards", "3"]);
    let (mut p, _) = Client::connect(broker.addr, v, "p", true);
    for i in 0..20 {
        p.publish(
            &format!("r/{i}"),
            format!("v{i}").as_bytes(),
            QoS::AtLeastOnce,
            true,
        );
    }
    // Deleted by an empty retained payload [MQTT-3.3.1-6], and one replaced.
    p.publish("r/0", b"", QoS::AtLeastOnce, true);
    p.publish("r/1", b"new", QoS::AtLeastOnce, true);
    p.disconnect();
    let broker = restart(broker, &dir, &["--shards", "2"]);
    let (mut s, _) = Client::connect(broker.addr, v, "s", true);
    s.subscribe("r/#", QoS::AtLeastOnce);
    let mut got = std::collections::BTreeMap::new();
    for _ in 0..19 {
        let m = s.recv_publish();
        got.insert(m.topic.as_str().to_owned(), m.payload.to_vec());
    }
    s.expect_nothing();
    assert!(
        !got.contains_key("r/0"),
        "a deleted retained message stays deleted"
    );
    assert_eq!(got.get("r/1").map(Vec::as_slice), Some(&b"new"[..]));
    assert_eq!(got.get("r/19").map(Vec::as_slice), Some(&b"v19"[..]));
}

/// A session whose expiry passes while the broker is down is gone at the next start.
#[test]
fn session_expiring_during_downtime_is_gone() {
    let v = ProtocolVersion::V5;
    let dir = DataDir::new("expiry");
    let broker = BrokerProcess::start_in(&dir, &[]);
    let (c, _) = Client::connect_with(broker.addr, persistent(v, "brief", 1));
    c.disconnect();
    let (long, _) = Client::connect_with(broker.addr, persistent(v, "long", 3600));
    long.disconnect();
    let status = broker.terminate(STOP);
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(2_500));
    let broker = BrokerProcess::start_in(&dir, &[]);
    let (_c, ack) = Client::connect_with(broker.addr, persistent(v, "brief", 1));
    assert!(!ack.session_present, "expired while the broker was down");
    let (_l, ack) = Client::connect_with(broker.addr, persistent(v, "long", 3600));
    assert!(ack.session_present, "not expired");
}

/// Sessions are found on their home shard whatever the shard count was when they were
/// stored: 1 -> 2 -> 3 shards.
#[test]
fn shard_count_changes_between_restarts() {
    let v = ProtocolVersion::V311;
    let dir = DataDir::new("shards");
    let ids: Vec<String> = (0..12).map(|i| format!("dev-{i}")).collect();
    let mut broker = BrokerProcess::start_in(&dir, &["--shards", "1"]);
    for id in &ids {
        let (mut c, _) = Client::connect_with(broker.addr, persistent(v, id, 0));
        c.subscribe(&format!("to/{id}"), QoS::AtLeastOnce);
        c.disconnect();
    }
    for (round, shards) in ["2", "3"].into_iter().enumerate() {
        let (mut p, _) = Client::connect(broker.addr, v, "p", true);
        for id in &ids {
            p.publish(
                &format!("to/{id}"),
                format!("r{round}").as_bytes(),
                QoS::AtLeastOnce,
                false,
            );
        }
        p.disconnect();
        broker = restart(broker, &dir, &["--shards", shards]);
        for id in &ids {
            let (mut c, ack) = Client::connect_with(broker.addr, persistent(v, id, 0));
            assert!(ack.session_present, "{id} on {shards} shards");
            let m = c.recv_publish();
            assert_eq!(&m.payload[..], format!("r{round}").as_bytes(), "{id}");
            c.expect_nothing_for(Duration::from_millis(50));
            c.disconnect();
        }
    }
}

/// A clean stop keeps a connected persistent session's will unpublished; the will of a
/// session that was connected when the broker was killed is published after the restart,
/// its delay counted from the last moment the broker was known alive.
#[test]
fn wills_after_a_clean_stop_and_after_a_crash() {
    let v = ProtocolVersion::V5;
    let dir = DataDir::new("wills");
    let broker = BrokerProcess::start_in(&dir, &["--shards", "2"]);
    let (mut watcher, _) = Client::connect_with(broker.addr, persistent(v, "watcher", 3600));
    watcher.subscribe("status/#", QoS::AtLeastOnce);
    watcher.disconnect();
    let mut c = persistent(v, "device", 3600);
    let mut will = crate::common::will("status/device", b"offline", QoS::AtLeastOnce, false);
    will.properties.will_delay_interval = Some(1);
    c.will = Some(will);
    let (_device, _) = Client::connect_with(broker.addr, c.clone());
    let broker = restart(broker, &dir, &["--shards", "2"]);
    let (mut watcher, _) = Client::connect_with(broker.addr, persistent(v, "watcher", 3600));
    watcher.expect_nothing_for(Duration::from_millis(1_500));
    watcher.disconnect();
    // Connected again, then the broker dies.
    let (_device, ack) = Client::connect_with(broker.addr, c);
    assert!(ack.session_present);
    std::thread::sleep(Duration::from_millis(300));
    broker.kill();
    let broker = BrokerProcess::start_in(&dir, &["--shards", "2"]);
    let (mut watcher, _) = Client::connect_with(broker.addr, persistent(v, "watcher", 3600));
    match watcher.recv_within(Duration::from_secs(5)) {
        Ok(Some(Packet::Publish(p))) => {
            assert_eq!(
                (p.topic.as_str(), &p.payload[..]),
                ("status/device", &b"offline"[..])
            );
            watcher.ack(&p);
        }
        other => panic!("expected the will after the crash, got {other:?}"),
    }
}

/// Each shard numbers the messages it stores; after a restart every shard must number above
/// every id still in the store, whichever shard stored it. Here shard 0 stores five
/// messages and shard 1 one before the restart; shard 0's next messages must not take the
/// ids of its five still queued ones (after the next restart the subscriber would get an
/// old payload twice and never the new one).
#[test]
fn message_ids_stay_unique_across_a_restart_with_two_shards() {
    let v = ProtocolVersion::V311;
    let dir = DataDir::new("msg-ids");
    let args = ["--shards", "2"];
    let on = |shard: usize| {
        (0..10_000)
            .map(|i| format!("pub-{i}"))
            .find(|id| ringmq::shard::home_shard(id.as_bytes(), 2).index() == shard)
            .expect("an id on each shard")
    };
    let (p0, p1) = (on(0), on(1));
    let broker = BrokerProcess::start_in(&dir, &args);
    let (mut sub, _) = Client::connect_with(broker.addr, persistent(v, "keeper", 0));
    sub.subscribe("ids/#", QoS::AtLeastOnce);
    sub.disconnect();
    let mut sent = Vec::new();
    let (mut a, _) = Client::connect(broker.addr, v, &p0, true);
    for i in 0..5 {
        let payload = format!("before-0-{i}");
        a.publish("ids/0", payload.as_bytes(), QoS::AtLeastOnce, false);
        sent.push(payload);
    }
    a.disconnect();
    let (mut b, _) = Client::connect(broker.addr, v, &p1, true);
    b.publish("ids/1", b"before-1", QoS::AtLeastOnce, false);
    sent.push("before-1".into());
    b.disconnect();

    let broker = restart(broker, &dir, &args);
    let (mut a, _) = Client::connect(broker.addr, v, &p0, true);
    for i in 0..3 {
        let payload = format!("after-0-{i}");
        a.publish("ids/0", payload.as_bytes(), QoS::AtLeastOnce, false);
        sent.push(payload);
    }
    a.disconnect();
    // What the store holds is what counts: read it back once more.
    let broker = restart(broker, &dir, &args);
    let (mut sub, ack) = Client::connect_with(broker.addr, persistent(v, "keeper", 0));
    assert!(ack.session_present);
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        let m = sub.recv_publish();
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
        sub.ack(&m);
    }
    sub.expect_nothing_for(Duration::from_millis(100));
    got.sort();
    sent.sort();
    assert_eq!(
        got, sent,
        "every acknowledged message once, each with its own payload"
    );
}

//! Sessions, retained messages, wills and shared subscriptions over real sockets
//! (spec 3.1.2.4-5, 3.3.1.3, 4.1, 4.4, 4.8.2), at 3.1.1 and 5.0 with 1 and 4 shards.

mod common;

use std::time::Duration;

use common::{Broker, Client, connect_packet, will};
use ringmq::codec::{Connect, Packet, ProtocolVersion, QoS};

/// A CONNECT for a persistent session (3.x clean session 0; v5 clean start 0 + expiry).
fn persistent(v: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect_packet(v, id, false);
    if v == ProtocolVersion::V5 {
        c.properties.session_expiry_interval = Some(600);
    }
    c
}

/// QoS 1/2 messages published while a persistent session is offline are delivered on resume.
fn offline_messages_are_queued(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    let id = broker.client_id_on("offline", 0);
    let (mut sub, _) = Client::connect_with(broker.addr, persistent(v, &id));
    sub.subscribe("queue/#", QoS::ExactlyOnce);
    sub.disconnect();
    let pub_id = broker.client_id_on("offline-pub", 1);
    let (mut publisher, _) = Client::connect(broker.addr, v, &pub_id, true);
    // QoS 0 first: it has no acknowledgement, so only time orders it before the reconnect
    // (with several shards, the reconnect and the message reach the subscriber's shard on
    // different channels). The QoS 1/2 acknowledgements and a pause give it that time.
    publisher.publish("queue/0", b"zero", QoS::AtMostOnce, false);
    publisher.publish("queue/1", b"one", QoS::AtLeastOnce, false);
    publisher.publish("queue/2", b"two", QoS::ExactlyOnce, false);
    std::thread::sleep(Duration::from_millis(200));
    let (mut sub, ack) = Client::connect_with(broker.addr, persistent(v, &id));
    assert!(ack.session_present);
    let first = sub.recv_publish();
    let second = sub.recv_publish();
    assert_eq!(
        (&first.payload[..], first.qos),
        (&b"one"[..], QoS::AtLeastOnce)
    );
    assert_eq!(
        (&second.payload[..], second.qos),
        (&b"two"[..], QoS::ExactlyOnce)
    );
    // QoS 0 is not queued for offline sessions by default.
    sub.expect_nothing();
}

/// An unacknowledged QoS 1 delivery is resent with DUP when the session resumes [MQTT-4.4.0-1].
fn unacknowledged_messages_are_resent_with_dup(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    let (mut sub, _) = Client::connect_with(broker.addr, persistent(v, "resend"));
    sub.subscribe("resend/t", QoS::AtLeastOnce);
    let (mut publisher, _) = Client::connect(broker.addr, v, "resend-pub", true);
    publisher.publish("resend/t", b"again", QoS::AtLeastOnce, false);
    let first = match sub.recv() {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    assert!(!first.dup);
    sub.drop_connection(); // never acknowledged
    std::thread::sleep(Duration::from_millis(100));
    let (mut sub, ack) = Client::connect_with(broker.addr, persistent(v, "resend"));
    assert!(ack.session_present);
    let again = sub.recv_publish();
    assert!(again.dup, "resent with DUP");
    assert_eq!(again.packet_id, first.packet_id, "same packet id");
    assert_eq!(&again.payload[..], b"again");
    sub.expect_nothing();
}

/// A clean session forgets subscriptions.
fn clean_session_forgets(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    let (mut c, _) = Client::connect(broker.addr, v, "forgetful", true);
    c.subscribe("forget/t", QoS::AtLeastOnce);
    c.disconnect();
    let (mut c, ack) = Client::connect(broker.addr, v, "forgetful", true);
    assert!(!ack.session_present);
    let (mut publisher, _) = Client::connect(broker.addr, v, "forget-pub", true);
    publisher.publish("forget/t", b"nobody", QoS::AtLeastOnce, false);
    c.expect_nothing();
}

/// Retained messages: stored, sent on subscribe with the retain flag, replaced, cleared by an
/// empty payload [MQTT-3.3.1-5..-11]; live copies carry no retain flag.
fn retained_messages(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    let pub_id = broker.client_id_on("ret-pub", 0);
    let (mut publisher, _) = Client::connect(broker.addr, v, &pub_id, true);
    publisher.publish("ret/a", b"first", QoS::AtLeastOnce, true);
    publisher.publish("ret/a", b"second", QoS::AtLeastOnce, true);
    publisher.publish("ret/b", b"bee", QoS::AtMostOnce, true);
    publisher.publish("ret/c", b"gone", QoS::AtLeastOnce, true);
    publisher.publish("ret/c", b"", QoS::AtLeastOnce, true);
    for shard in 0..shards {
        let id = broker.client_id_on("ret-sub", shard);
        let (mut sub, _) = Client::connect(broker.addr, v, &id, true);
        sub.subscribe("ret/+", QoS::AtLeastOnce);
        let mut got: Vec<_> = (0..2).map(|_| sub.recv_publish()).collect();
        got.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
        assert_eq!(&got[0].payload[..], b"second");
        assert_eq!(got[0].qos, QoS::AtLeastOnce);
        assert!(
            got[0].retain,
            "sent because of the subscription: retain set [MQTT-3.3.1-8]"
        );
        assert_eq!(&got[1].payload[..], b"bee");
        assert_eq!(got[1].qos, QoS::AtMostOnce);
        sub.expect_nothing();
        publisher.publish("ret/a", b"live", QoS::AtLeastOnce, true);
        let live = sub.recv_publish();
        assert_eq!(&live.payload[..], b"live");
        assert!(!live.retain, "live delivery: retain 0 [MQTT-3.3.1-9]");
        publisher.publish("ret/a", b"second", QoS::AtLeastOnce, true);
        let _ = sub.recv_publish();
    }
}

/// Wills: published on an abnormal close, not after DISCONNECT [MQTT-3.1.2-8, -10].
fn wills(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    let watcher_id = broker.client_id_on("will-watch", 0);
    let (mut watcher, _) = Client::connect(broker.addr, v, &watcher_id, true);
    watcher.subscribe("wills/#", QoS::AtLeastOnce);

    let mut c = connect_packet(v, &broker.client_id_on("will-drop", 1), true);
    c.will = Some(will("wills/dropped", b"gone", QoS::AtLeastOnce, false));
    let (dropper, _) = Client::connect_with(broker.addr, c);
    dropper.drop_connection();
    let got = watcher.recv_publish();
    assert_eq!(got.topic.as_str(), "wills/dropped");
    assert_eq!(&got.payload[..], b"gone");
    assert_eq!(got.qos, QoS::AtLeastOnce);

    let mut c = connect_packet(v, &broker.client_id_on("will-polite", 1), true);
    c.will = Some(will("wills/polite", b"never", QoS::AtLeastOnce, false));
    let (polite, _) = Client::connect_with(broker.addr, c);
    polite.disconnect();
    watcher.expect_nothing();

    // A will published with retain is kept for later subscribers.
    let mut c = connect_packet(v, "will-retained", true);
    c.will = Some(will("wills/retained", b"kept", QoS::AtMostOnce, true));
    let (r, _) = Client::connect_with(broker.addr, c);
    r.drop_connection();
    assert_eq!(&watcher.recv_publish().payload[..], b"kept");
    let (mut late, _) = Client::connect(broker.addr, v, "will-late", true);
    late.subscribe("wills/retained", QoS::AtMostOnce);
    let got = late.recv_publish();
    assert!(got.retain);
    assert_eq!(&got.payload[..], b"kept");
}

/// Shared subscriptions: each message goes to exactly one member, members on any shard.
fn shared_subscriptions(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    let mut members: Vec<Client> = (0..3)
        .map(|i| {
            let id = broker.client_id_on(&format!("member{i}"), i);
            let (mut m, _) = Client::connect(broker.addr, v, &id, true);
            m.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce);
            m
        })
        .collect();
    let pub_id = broker.client_id_on("jobs-pub", 3);
    let (mut publisher, _) = Client::connect(broker.addr, v, &pub_id, true);
    const N: usize = 60;
    for i in 0..N {
        publisher.publish(
            &format!("jobs/{i}"),
            format!("{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        );
    }
    let mut seen = vec![0u32; N];
    let mut per_member = Vec::new();
    for m in &mut members {
        let mut count = 0;
        while let Ok(Some(Packet::Publish(p))) = m.recv_within(Duration::from_millis(500)) {
            m.ack(&p);
            let i: usize = std::str::from_utf8(&p.payload)
                .expect("utf8")
                .parse()
                .expect("n");
            seen[i] += 1;
            count += 1;
        }
        per_member.push(count);
    }
    assert!(
        seen.iter().all(|&n| n == 1),
        "each message exactly once: {seen:?}"
    );
    assert!(
        per_member.iter().all(|&n| n > 0),
        "every member gets work: {per_member:?}"
    );
}

matrix!(
    offline_messages_are_queued,
    unacknowledged_messages_are_resent_with_dup,
    clean_session_forgets,
    retained_messages,
    wills,
    shared_subscriptions,
);

/// v5 Will Delay: the will waits, and is not sent when the client comes back in time.
#[test]
fn v5_will_delay() {
    let v = ProtocolVersion::V5;
    let broker = Broker::start(2);
    let (mut watcher, _) = Client::connect(broker.addr, v, "delay-watch", true);
    watcher.subscribe("delayed/#", QoS::AtLeastOnce);

    let mut c = persistent(v, "delayed-returns");
    let mut w = will("delayed/returns", b"no", QoS::AtLeastOnce, false);
    w.properties.will_delay_interval = Some(2);
    c.will = Some(w);
    let (first, _) = Client::connect_with(broker.addr, c.clone());
    first.drop_connection();
    std::thread::sleep(Duration::from_millis(500));
    let (_back, ack) = Client::connect_with(broker.addr, c);
    assert!(ack.session_present);
    watcher.expect_nothing();

    let mut c = persistent(v, "delayed-gone");
    let mut w = will("delayed/gone", b"yes", QoS::AtLeastOnce, false);
    w.properties.will_delay_interval = Some(1);
    c.will = Some(w);
    let (gone, _) = Client::connect_with(broker.addr, c);
    gone.drop_connection();
    assert!(
        matches!(watcher.recv_within(Duration::from_millis(500)), Ok(None)),
        "not before the delay"
    );
    let got = watcher.recv_publish();
    assert_eq!(&got.payload[..], b"yes");
}

/// Shutdown: the wills of sessions that end with the broker are due and reach subscribers
/// on other shards before the broker closes their connections; v5 clients then get
/// DISCONNECT 0x8B. A session the store keeps keeps its will too (a delayed will of an
/// offline persistent session is published only without a store).
#[test]
fn shutdown_publishes_wills_before_closing() {
    for (v, stored) in [
        (ProtocolVersion::V311, true),
        (ProtocolVersion::V5, true),
        (ProtocolVersion::V5, false),
    ] {
        let broker = Broker::start_with(4, |c| {
            if !stored {
                c.storage.durability = ringmq::config::Durability::None;
            }
        });
        let watcher_id = broker.client_id_on("stop-watch", 0);
        let (mut watcher, _) = Client::connect(broker.addr, v, &watcher_id, true);
        watcher.subscribe("stopping/#", QoS::AtLeastOnce);
        let mut c = connect_packet(v, &broker.client_id_on("stop-will", 1), true);
        c.will = Some(will(
            "stopping/owner",
            b"broker went away",
            QoS::AtLeastOnce,
            false,
        ));
        let (_owner, _) = Client::connect_with(broker.addr, c);
        // A delayed will of a session that is already offline is due too.
        if v == ProtocolVersion::V5 {
            let mut c = persistent(v, &broker.client_id_on("stop-delayed", 2));
            let mut w = will("stopping/delayed", b"delayed", QoS::AtLeastOnce, false);
            w.properties.will_delay_interval = Some(3600);
            c.will = Some(w);
            let (gone, _) = Client::connect_with(broker.addr, c);
            gone.drop_connection();
            std::thread::sleep(Duration::from_millis(100));
        }
        broker.stop();
        let got = watcher.expect_closed();
        let mut wills: Vec<&str> = got
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.topic.as_str()),
                _ => None,
            })
            .collect();
        wills.sort_unstable();
        let expected: &[&str] = if v == ProtocolVersion::V5 && !stored {
            &["stopping/delayed", "stopping/owner"]
        } else {
            &["stopping/owner"]
        };
        assert_eq!(wills, expected, "{v:?}, stored {stored}: {got:?}");
        if v == ProtocolVersion::V5 {
            assert!(
                matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == ringmq::codec::ReasonCode::ServerShuttingDown),
                "v5: DISCONNECT 0x8B last, got {got:?}"
            );
        }
    }
}

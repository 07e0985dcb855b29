//! The state clients can create is bounded and the bounds are refused politely: connections
//! and sessions beyond their limits get CONNACK 0x97 (3.x 0x03), a new retained topic beyond
//! the retained limits gets PUBACK 0x97 (3.x: delivered but not retained), and a 3.x session
//! that outlives its connection expires after `session_expiry_3x`.

use std::time::Duration;

use ringmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};

use crate::common::{Broker, Client, connect_packet, publish};

fn connack(addr: std::net::SocketAddr, v: ProtocolVersion, id: &str, clean: bool) -> ReasonCode {
    let mut c = connect_packet(v, id, clean);
    if v.is_v5() && !clean {
        c.properties.session_expiry_interval = Some(600);
    }
    let (_c, ack) = Client::connect_with(addr, c);
    ack.reason
}

#[test]
fn connections_beyond_max_connections_are_refused_with_a_code() {
    let broker = Broker::start_with(2, |c| c.limits.max_connections = 3);
    let v = ProtocolVersion::V5;
    let held: Vec<Client> = (0..3)
        .map(|i| Client::connect(broker.addr, v, &format!("held-{i}"), true).0)
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    // v5: 0x97; 3.x: return code 3, read back as "server unavailable".
    for (v, code) in [
        (ProtocolVersion::V5, ReasonCode::QuotaExceeded),
        (ProtocolVersion::V311, ReasonCode::ServerUnavailable),
    ] {
        let (_c, ack) = Client::connect_with(broker.addr, connect_packet(v, "one-more", true));
        assert_eq!(ack.reason, code, "{v:?}");
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        connack(broker.addr, v, "room-again", true),
        ReasonCode::Success
    );
}

#[test]
fn sessions_beyond_max_sessions_are_refused_and_existing_ones_resume() {
    let broker = Broker::start_with(2, |c| c.limits.max_sessions = 2);
    let v = ProtocolVersion::V5;
    for id in ["s1", "s2"] {
        let (c, ack) = Client::connect_with(broker.addr, {
            let mut c = connect_packet(v, id, false);
            c.properties.session_expiry_interval = Some(600);
            c
        });
        assert_eq!(ack.reason, ReasonCode::Success);
        c.disconnect();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        connack(broker.addr, v, "s3", false),
        ReasonCode::QuotaExceeded
    );
    assert_eq!(
        connack(broker.addr, ProtocolVersion::V311, "s4", true),
        ReasonCode::ServerUnavailable,
        "3.x: return code 3"
    );
    assert_eq!(
        connack(broker.addr, v, "s1", false),
        ReasonCode::Success,
        "resumes"
    );
}

#[test]
fn retained_topics_beyond_the_limit_are_refused() {
    // `$SYS` on: the broker's own retained topics take no place under the limit.
    let broker = Broker::start_with(2, |c| {
        c.limits.max_retained_messages = 3;
        c.ops.sys_interval_secs = 1;
    });
    let (mut p5, _) = Client::connect(broker.addr, ProtocolVersion::V5, "p5", true);
    for i in 0..3 {
        p5.publish(&format!("keep/{i}"), b"v", QoS::AtLeastOnce, true);
    }
    let mut m = publish("keep/3", b"v", QoS::AtLeastOnce, Some(100));
    m.retain = true;
    p5.send(&Packet::Publish(m));
    match p5.recv() {
        Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::QuotaExceeded),
        other => panic!("expected PUBACK 0x97, got {other:?}"),
    }
    // Replacing a retained message is not a new topic.
    p5.publish("keep/0", b"replaced", QoS::AtLeastOnce, true);
    // 3.x has no code: acknowledged, delivered, not retained.
    let (mut p3, _) = Client::connect(broker.addr, ProtocolVersion::V311, "p3", true);
    p3.publish("keep/4", b"v", QoS::AtLeastOnce, true);
    let (mut s, _) = Client::connect(broker.addr, ProtocolVersion::V5, "late", true);
    s.subscribe("keep/#", QoS::AtMostOnce);
    let mut topics: Vec<String> = (0..3)
        .map(|_| s.recv_publish().topic.as_str().to_owned())
        .collect();
    s.expect_nothing();
    topics.sort();
    assert_eq!(topics, ["keep/0", "keep/1", "keep/2"]);
}

#[test]
fn a_3x_persistent_session_expires_after_session_expiry_3x() {
    let broker = Broker::start_with(1, |c| c.limits.session_expiry_3x = 1);
    let v = ProtocolVersion::V311;
    let (c, _) = Client::connect(broker.addr, v, "old-device", false);
    c.disconnect();
    let (c, ack) = Client::connect(broker.addr, v, "old-device", false);
    assert!(ack.session_present, "within the expiry");
    c.disconnect();
    std::thread::sleep(Duration::from_millis(2_500));
    let (_c, ack) = Client::connect(broker.addr, v, "old-device", false);
    assert!(!ack.session_present, "expired after session_expiry_3x");
}

//! CONNECT / CONNACK, keep alive, PING, DISCONNECT and takeover over real sockets
//! (spec 3.1, 3.2, 3.12-3.14, 4.1), each at 3.1.1 and 5.0 with 1 and 4 shards.

mod common;

use std::time::{Duration, Instant};

use common::{Broker, Client, connect_packet};
use ringmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};

fn connack_then_ping_then_disconnect(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    let (mut c, ack) = Client::connect(broker.addr, v, "ping-client", true);
    assert!(
        !ack.session_present,
        "clean start never has a session [MQTT-3.2.2-2]"
    );
    c.ping();
    c.ping();
    c.disconnect();
}

fn session_present_only_for_resumed_sessions(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    let mut first = connect_packet(v, "resumer", false);
    if v == ProtocolVersion::V5 {
        first.properties.session_expiry_interval = Some(300);
    }
    let (c, ack) = Client::connect_with(broker.addr, first.clone());
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present, "no session existed yet");
    c.disconnect();
    let (c, ack) = Client::connect_with(broker.addr, first);
    assert!(
        ack.session_present,
        "persistent session resumed [MQTT-3.2.2-3]"
    );
    c.disconnect();
    let (_c, ack) = Client::connect(broker.addr, v, "resumer", true);
    assert!(!ack.session_present, "clean start discards the session");
}

fn empty_client_id(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    // Clean session with an empty id: accepted; v5 gets an assigned identifier.
    let (mut c, ack) = Client::connect(broker.addr, v, "", true);
    if v == ProtocolVersion::V5 {
        let assigned = ack
            .properties
            .assigned_client_identifier
            .expect("assigned id [MQTT-3.2.2-16]");
        assert!(!assigned.is_empty());
    }
    c.ping();
    // 3.1.1: empty id without clean session is refused with return code 0x02 [MQTT-3.1.3-8].
    if v == ProtocolVersion::V311 {
        let (mut c, ack) = Client::connect_with(broker.addr, connect_packet(v, "", false));
        assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
        c.expect_closed();
    }
}

fn second_connect_is_a_protocol_violation(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    let (mut c, _) = Client::connect(broker.addr, v, "twice", true);
    c.send(&Packet::Connect(Box::new(connect_packet(v, "twice", true))));
    let got = c.expect_closed();
    if v == ProtocolVersion::V5 {
        assert!(
            matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError),
            "v5 gets DISCONNECT 0x82 [MQTT-3.1.0-2], got {got:?}"
        );
    } else {
        assert!(
            got.is_empty(),
            "3.1.1 is closed without a packet, got {got:?}"
        );
    }
}

fn keep_alive_is_enforced_at_one_and_a_half(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    let mut connect = connect_packet(v, "sleepy", true);
    connect.keep_alive = 1;
    let (mut c, _) = Client::connect_with(broker.addr, connect);
    let started = Instant::now();
    let got = c.expect_closed();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed too early: {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(3500),
        "closed too late: {waited:?}"
    );
    if v == ProtocolVersion::V5 {
        assert!(
            matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::KeepAliveTimeout),
            "v5 gets DISCONNECT 0x8D, got {got:?}"
        );
    }
}

fn pings_keep_the_connection_alive(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    let mut connect = connect_packet(v, "pinger", true);
    connect.keep_alive = 1;
    let (mut c, _) = Client::connect_with(broker.addr, connect);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        c.ping();
    }
}

fn takeover_closes_the_old_connection(v: ProtocolVersion, shards: usize) {
    let broker = Broker::start(shards);
    // Several rounds so that, with SO_REUSEPORT, the two connections arrive on different
    // accepting shards at least some of the time; all meet on the id's home shard.
    let mut persistent = connect_packet(v, "taken", false);
    if v == ProtocolVersion::V5 {
        persistent.properties.session_expiry_interval = Some(300);
    }
    for round in 0..4 {
        let (mut old, _) = Client::connect_with(broker.addr, persistent.clone());
        old.subscribe("takeover/t", QoS::AtLeastOnce);
        let (mut new, ack) = Client::connect_with(broker.addr, persistent.clone());
        assert!(
            ack.session_present,
            "round {round}: the new connection resumes the session"
        );
        let got = old.expect_closed();
        if v == ProtocolVersion::V5 {
            assert!(
                matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::SessionTakenOver),
                "round {round}: v5 gets DISCONNECT 0x8E, got {got:?}"
            );
        }
        // The subscription moved with the session.
        let (mut publisher, _) = Client::connect(broker.addr, v, "takeover-pub", true);
        publisher.publish("takeover/t", b"after", QoS::AtLeastOnce, false);
        let p = new.recv_publish();
        assert_eq!(&p.payload[..], b"after");
        new.unsubscribe("takeover/t");
        new.disconnect();
    }
}

matrix!(
    connack_then_ping_then_disconnect,
    session_present_only_for_resumed_sessions,
    empty_client_id,
    second_connect_is_a_protocol_violation,
    keep_alive_is_enforced_at_one_and_a_half,
    pings_keep_the_connection_alive,
    takeover_closes_the_old_connection,
);

#[test]
fn unknown_protocol_level_is_refused() {
    let broker = Broker::start(1);
    // Level 2 predates every supported level: 3.x return code 0x01 [MQTT-3.1.2-2] (3.1.1).
    let mut c = Client::tcp(broker.addr, ProtocolVersion::V311);
    c.send_bytes(&[
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x02, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ]);
    let got = c.expect_closed();
    assert!(
        matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason == ReasonCode::UnsupportedProtocolVersion),
        "got {got:?}"
    );
    // Level 6: a level we do not speak also gets the two-byte 3.x form (0x01), the one
    // format every client level can parse.
    let mut c = Client::tcp(broker.addr, ProtocolVersion::V311);
    c.send_bytes(&[
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ]);
    let got = c.expect_closed();
    assert!(
        matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason == ReasonCode::UnsupportedProtocolVersion),
        "got {got:?}"
    );
}

#[test]
fn first_packet_must_be_connect() {
    let broker = Broker::start(1);
    for bytes in [
        &[0xC0u8, 0x00][..],
        &[0x20, 0x02, 0x00, 0x00],
        &[0x00, 0x00],
    ] {
        let mut c = Client::tcp(broker.addr, ProtocolVersion::V311);
        c.send_bytes(bytes);
        assert!(
            c.expect_closed().is_empty(),
            "{bytes:02x?} closed without an answer"
        );
    }
    // Other clients are unaffected.
    let (mut ok, _) = Client::connect(broker.addr, ProtocolVersion::V5, "bystander", true);
    ok.ping();
}

#[test]
fn mqtt31_clients_connect() {
    let broker = Broker::start(2);
    let (mut c, ack) = Client::connect(broker.addr, ProtocolVersion::V31, "old-timer", true);
    assert!(!ack.session_present);
    c.subscribe("legacy/t", QoS::AtLeastOnce);
    c.publish("legacy/t", b"hi", QoS::AtLeastOnce, false);
    assert_eq!(&c.recv_publish().payload[..], b"hi");
}

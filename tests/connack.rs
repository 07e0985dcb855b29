//! What a CONNACK advertises is what the broker enforces (spec 3.2.2.3): each test changes
//! one setting, checks the value a 5.0 client is told and then the behaviour, at 3.1.1
//! (which is told nothing but gets the same limits) and 5.0, on a 2-shard broker.
//!
//! Covered elsewhere with a changed setting: Receive Maximum (`tests/bad_inputs/qos.rs`,
//! row 52: 10), Maximum Packet Size (`tests/bad_inputs/publish.rs`, row 44: 1 KiB), Retain
//! Available (row 45: false), Assigned Client Identifier (`tests/connect.rs`).

mod common;

use std::time::{Duration, Instant};

use common::{Broker, Client, connect_packet, publish};
use ringmq::codec::{
    ConnAck, Packet, ProtocolVersion, PublishProperties, QoS, ReasonCode, SubscriptionOptions,
};
use ringmq::config::Config;
use ringmq::router::TopicName;

const SHARDS: usize = 2;

/// Expands to `v311` and `v5` tests for a body `fn(ProtocolVersion)`.
macro_rules! both_versions {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use ringmq::codec::ProtocolVersion;
                #[test]
                fn v311() { super::$name(ProtocolVersion::V311) }
                #[test]
                fn v5() { super::$name(ProtocolVersion::V5) }
            }
        )*
    };
}

fn broker(adjust: impl FnOnce(&mut Config)) -> Broker {
    Broker::start_with(SHARDS, adjust)
}

/// The SUBACK code of a refused filter: 3.1.1 has only 0x80.
fn refused(v: ProtocolVersion, code: ReasonCode) -> ReasonCode {
    if v.is_v5() {
        code
    } else {
        ReasonCode::UnspecifiedError
    }
}

fn connect(broker: &Broker, v: ProtocolVersion, id: &str) -> (Client, ConnAck) {
    Client::connect(broker.addr, v, id, true)
}

/// The broker closes the connection: v5 with DISCONNECT `code` first, 3.x with nothing.
fn expect_close(c: &mut Client, code: ReasonCode, case: &str) {
    let got = c.expect_closed();
    if c.version.is_v5() {
        assert!(
            matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == code),
            "{case}: expected DISCONNECT {code:?}, got {got:?}"
        );
    } else {
        assert!(got.is_empty(), "{case}: 3.x closes silently, got {got:?}");
    }
}

/// `max_qos = 1`: Maximum QoS 1; SUBSCRIBE at QoS 2 is granted QoS 1 [MQTT-3.2.2-9..10];
/// a QoS 2 PUBLISH is refused (DISCONNECT 0x9B) [MQTT-3.2.2-11].
fn maximum_qos(v: ProtocolVersion) {
    let broker = broker(|c| c.limits.max_qos = 1);
    let (mut c, ack) = connect(&broker, v, "qos");
    if v.is_v5() {
        assert_eq!(ack.properties.maximum_qos, Some(QoS::AtLeastOnce));
    }
    let suback = c.subscribe("q/t", QoS::ExactlyOnce);
    assert_eq!(suback.reasons, [ReasonCode::granted(QoS::AtLeastOnce)]);
    c.publish("q/t", b"one", QoS::AtLeastOnce, false);
    assert_eq!(c.recv_publish().qos, QoS::AtLeastOnce);
    c.send(&Packet::Publish(publish(
        "q/t",
        b"two",
        QoS::ExactlyOnce,
        Some(9),
    )));
    expect_close(&mut c, ReasonCode::QoSNotSupported, "QoS 2 publish");
}

/// `topic_alias_maximum = 2`: Topic Alias Maximum 2; alias 2 works, alias 3 gets
/// DISCONNECT 0x94 [MQTT-3.2.2-17]. With 0 the property is absent and any alias is refused
/// [MQTT-3.2.2-18]. (5.0 only: 3.1.1 has no aliases.)
#[test]
fn topic_alias_maximum() {
    let v = ProtocolVersion::V5;
    let aliased = |topic: &str, alias: u16| {
        let mut p = publish("x", b"x", QoS::AtMostOnce, None);
        // An empty topic (alias only) is not a valid `TopicName` to build from text.
        p.topic = if topic.is_empty() {
            TopicName::default()
        } else {
            common::topic(topic)
        };
        p.properties = PublishProperties {
            topic_alias: Some(alias),
            ..Default::default()
        };
        Packet::Publish(p)
    };
    let broker = broker(|c| c.limits.topic_alias_maximum = 2);
    let (mut sub, _) = connect(&broker, v, "alias-sub");
    sub.subscribe("a/#", QoS::AtMostOnce);
    let (mut c, ack) = connect(&broker, v, "alias");
    assert_eq!(ack.properties.topic_alias_maximum, Some(2));
    c.send(&aliased("a/two", 2));
    c.send(&aliased("", 2));
    for _ in 0..2 {
        assert_eq!(sub.recv_publish().topic.as_str(), "a/two");
    }
    c.send(&aliased("a/three", 3));
    expect_close(&mut c, ReasonCode::TopicAliasInvalid, "alias 3 of 2");

    let none = self::broker(|c| c.limits.topic_alias_maximum = 0);
    let (mut c, ack) = connect(&none, v, "alias");
    assert_eq!(ack.properties.topic_alias_maximum, None);
    c.send(&aliased("a/one", 1));
    expect_close(&mut c, ReasonCode::TopicAliasInvalid, "alias 1 of 0");
}

/// `wildcard_subscriptions = false`: Wildcard Subscription Available 0; a wildcard filter
/// gets SUBACK 0xA2 (3.x: 0x80) [MQTT-3.2.2-... 3.2.2.3.11], an exact one is granted.
fn wildcard_subscription_available(v: ProtocolVersion) {
    let broker = broker(|c| c.limits.wildcard_subscriptions = false);
    let (mut c, ack) = connect(&broker, v, "wild");
    if v.is_v5() {
        assert_eq!(ack.properties.wildcard_subscription_available, Some(false));
    }
    for f in ["a/+", "a/#", "#"] {
        let suback = c.subscribe(f, QoS::AtMostOnce);
        assert_eq!(
            suback.reasons,
            [refused(v, ReasonCode::WildcardSubscriptionsNotSupported)],
            "{f}"
        );
    }
    assert_eq!(
        c.subscribe("a/b", QoS::AtMostOnce).reasons,
        [ReasonCode::granted(QoS::AtMostOnce)]
    );
    // The refused filters route nothing.
    c.publish("a/x", b"x", QoS::AtMostOnce, false);
    c.publish("a/b", b"b", QoS::AtMostOnce, false);
    assert_eq!(c.recv_publish().topic.as_str(), "a/b");
    c.expect_nothing();
}

/// `subscription_identifiers = false`: Subscription Identifiers Available 0; a SUBSCRIBE with
/// an identifier gets SUBACK 0xA1 [3.2.2.3.12]. (5.0 only: 3.1.1 has no identifiers.)
#[test]
fn subscription_identifiers_available() {
    let v = ProtocolVersion::V5;
    let broker = broker(|c| c.limits.subscription_identifiers = false);
    let (mut c, ack) = connect(&broker, v, "ids");
    assert_eq!(
        ack.properties.subscription_identifiers_available,
        Some(false)
    );
    let options = SubscriptionOptions::default();
    let suback = c.subscribe_with("i/t", options, Some(5));
    assert_eq!(
        suback.reasons,
        [ReasonCode::SubscriptionIdentifiersNotSupported]
    );
    let suback = c.subscribe_with("i/t", options, None);
    assert_eq!(suback.reasons, [ReasonCode::granted(QoS::AtMostOnce)]);
}

/// `shared_subscriptions = false`: Shared Subscription Available 0; `$share/...` gets
/// SUBACK 0x9E (3.x: 0x80) [3.2.2.3.13] and routes nothing.
fn shared_subscription_available(v: ProtocolVersion) {
    let broker = broker(|c| c.limits.shared_subscriptions = false);
    let (mut c, ack) = connect(&broker, v, "share");
    if v.is_v5() {
        assert_eq!(ack.properties.shared_subscription_available, Some(false));
    }
    let suback = c.subscribe("$share/g/s/t", QoS::AtMostOnce);
    assert_eq!(
        suback.reasons,
        [refused(v, ReasonCode::SharedSubscriptionsNotSupported)]
    );
    c.publish("s/t", b"x", QoS::AtMostOnce, false);
    c.expect_nothing();
}

/// Waits until the broker closes `c` for its keep alive; returns how long that took.
fn closed_for_keep_alive(c: &mut Client) -> Duration {
    let started = Instant::now();
    expect_close(c, ReasonCode::KeepAliveTimeout, "keep alive");
    started.elapsed()
}

/// `server_keep_alive = 1`: every 5.0 client is told Server Keep Alive 1, whatever it asked
/// (here 60), and is closed (0x8D) after 1.5 s without a packet [MQTT-3.2.2-21],
/// [MQTT-3.1.2-22]. 3.1.1 cannot be told and keeps its own keep alive.
fn server_keep_alive(v: ProtocolVersion) {
    let broker = broker(|c| c.limits.server_keep_alive = Some(1));
    let (mut c, ack) = connect(&broker, v, "ska");
    if v.is_v5() {
        assert_eq!(ack.properties.server_keep_alive, Some(1));
        let waited = closed_for_keep_alive(&mut c);
        assert!(
            waited >= Duration::from_millis(1400) && waited <= Duration::from_millis(3500),
            "closed after {waited:?}"
        );
    } else {
        assert_eq!(ack.properties.server_keep_alive, None);
        c.expect_nothing_for(Duration::from_millis(2500));
        c.ping();
    }
}

/// `max_keep_alive = 1`: a 5.0 client asking for no keep alive (0) or more is told 1 and
/// held to it; a 3.1.1 client asking for more is refused (CONNACK 0x02, it cannot be told).
fn max_keep_alive(v: ProtocolVersion) {
    let broker = broker(|c| c.limits.max_keep_alive = 1);
    let mut connect = connect_packet(v, "mka", true);
    connect.keep_alive = if v.is_v5() { 0 } else { 2 };
    let (mut c, ack) = Client::connect_with(broker.addr, connect);
    if v.is_v5() {
        assert_eq!(ack.reason, ReasonCode::Success);
        assert_eq!(ack.properties.server_keep_alive, Some(1));
        let waited = closed_for_keep_alive(&mut c);
        assert!(
            waited <= Duration::from_millis(3500),
            "closed after {waited:?}"
        );
    } else {
        assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
        c.expect_closed();
    }
}

/// `max_session_expiry = 1`: a 5.0 client asking for 300 s is told 1 s; a session resumed
/// at once is present, one resumed after the expiry is gone. 3.1.1's "never expires"
/// (clean session 0) is capped the same way.
fn session_expiry(v: ProtocolVersion) {
    let broker = broker(|c| c.limits.max_session_expiry = 1);
    let persistent = || {
        let mut connect = connect_packet(v, "expiring", false);
        if v.is_v5() {
            connect.properties.session_expiry_interval = Some(300);
        }
        connect
    };
    let (c, ack) = Client::connect_with(broker.addr, persistent());
    if v.is_v5() {
        assert_eq!(ack.properties.session_expiry_interval, Some(1));
    }
    c.disconnect();
    let (c, ack) = Client::connect_with(broker.addr, persistent());
    assert!(ack.session_present, "resumed within the expiry");
    c.disconnect();
    // Expiry runs on the shard's 1 s timer ticks: gone within 3 s.
    std::thread::sleep(Duration::from_millis(3000));
    let (_c, ack) = Client::connect_with(broker.addr, persistent());
    assert!(!ack.session_present, "the session expired after 1 s");
}

/// `response_information` is returned to a 5.0 client that asks for it (Request Response
/// Information 1) and to no other [MQTT-3.1.2-28].
#[test]
fn response_information() {
    let v = ProtocolVersion::V5;
    let broker = broker(|c| c.limits.response_information = Some("replies/".to_owned()));
    let mut connect = connect_packet(v, "asks", true);
    connect.properties.request_response_information = Some(true);
    let (_c, ack) = Client::connect_with(broker.addr, connect);
    let info = ack.properties.response_information.expect("asked for it");
    assert_eq!(info.as_str(), "replies/");
    let (_c, ack) = Client::connect(broker.addr, v, "does-not-ask", true);
    assert_eq!(ack.properties.response_information, None);
}

both_versions!(
    maximum_qos,
    wildcard_subscription_available,
    shared_subscription_available,
    server_keep_alive,
    max_keep_alive,
    session_expiry,
);

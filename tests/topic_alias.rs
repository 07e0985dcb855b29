//! Outbound topic aliases over real sockets (spec 3.3.2.3.4): the subscriber here resolves
//! aliases as a client must, and checks every PUBLISH against the topic its payload names.

mod common;

use std::collections::HashMap;

use common::{Broker, Client, connect_packet};
use ringmq::codec::{Packet, ProtocolVersion, Publish, QoS};
use ringmq::session::TopicAliasPolicy;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A client's alias table: what a PUBLISH's topic is, following the rules a receiver
/// applies [MQTT-3.3.2-... 3.3.2.3.4].
struct Resolver {
    /// The Topic Alias Maximum the client sent.
    max: u16,
    map: HashMap<u16, String>,
    /// PUBLISH packets that came with an empty topic and an alias.
    by_alias_only: usize,
    /// Highest alias seen.
    highest: u16,
}

impl Resolver {
    fn new(max: u16) -> Resolver {
        Resolver {
            max,
            map: HashMap::new(),
            by_alias_only: 0,
            highest: 0,
        }
    }

    fn resolve(&mut self, p: &Publish) -> String {
        let alias = p.properties.topic_alias;
        if let Some(a) = alias {
            assert!(
                (1..=self.max).contains(&a),
                "alias {a} outside 1..={}",
                self.max
            );
            self.highest = self.highest.max(a);
        }
        match (p.topic.as_str(), alias) {
            ("", None) => panic!("an empty topic without an alias"),
            ("", Some(a)) => {
                self.by_alias_only += 1;
                self.map
                    .get(&a)
                    .unwrap_or_else(|| panic!("alias {a} used before it was defined"))
                    .clone()
            }
            (topic, Some(a)) => {
                self.map.insert(a, topic.to_owned());
                topic.to_owned()
            }
            (topic, None) => topic.to_owned(),
        }
    }
}

fn broker(policy: TopicAliasPolicy) -> Broker {
    Broker::start_with(2, |c| c.limits.outbound_topic_aliases = policy)
}

/// A v5 subscriber to `t/#` that accepts `max` aliases (none when `None`).
fn subscriber(broker: &Broker, max: Option<u16>, clean: bool) -> Client {
    let mut connect = connect_packet(V5, &broker.client_id_on("aliased", 0), clean);
    connect.properties.topic_alias_maximum = max;
    if !clean {
        connect.properties.session_expiry_interval = Some(60);
    }
    let (mut c, _) = Client::connect_with(broker.addr, connect);
    c.subscribe("t/#", QoS::AtLeastOnce);
    c
}

fn publisher(broker: &Broker) -> Client {
    Client::connect(broker.addr, V5, &broker.client_id_on("aliaser", 1), true).0
}

/// The topics of `n` messages over 8 topics, a few hot and the rest rare: message `i` goes
/// to `t/k` with `k` the number of trailing zero bits of `i` (at most 7), so half are on
/// `t/0`, a quarter on `t/1`, and so on.
fn skewed(n: u32) -> Vec<String> {
    (1..=n)
        .map(|i| format!("t/{}", i.trailing_zeros().min(7)))
        .collect()
}

/// Publishes one QoS 1 message per topic, payload `"{topic}#{i}"`.
fn publish_all(p: &mut Client, topics: &[String]) {
    for (i, t) in topics.iter().enumerate() {
        p.publish(t, format!("{t}#{i}").as_bytes(), QoS::AtLeastOnce, false);
    }
}

/// Receives `n` messages through `resolver`; checks each resolves to the topic its
/// payload names, in order.
fn receive_checked(sub: &mut Client, resolver: &mut Resolver, topics: &[String]) {
    for (i, want) in topics.iter().enumerate() {
        let p = sub.recv_publish();
        let payload = String::from_utf8(p.payload.to_vec()).expect("utf-8");
        assert_eq!(payload, format!("{want}#{i}"), "order");
        assert_eq!(resolver.resolve(&p), *want, "message {i}");
    }
}

/// Every delivery resolves to its topic; aliases stay within the client's maximum (3, below
/// our default cap of 10) and are actually used.
fn aliases_resolve_to_the_right_topics(policy: TopicAliasPolicy) {
    let broker = broker(policy);
    let mut sub = subscriber(&broker, Some(3), true);
    let mut publisher = publisher(&broker);
    let topics = skewed(400);
    publish_all(&mut publisher, &topics);
    let mut resolver = Resolver::new(3);
    receive_checked(&mut sub, &mut resolver, &topics);
    sub.expect_nothing();
    assert_eq!(resolver.highest, 3, "{policy:?}: every alias in use");
    // Most messages are on the three hottest topics: most go out with the alias alone.
    assert!(
        resolver.by_alias_only > 250,
        "{policy:?}: {} of 400 by alias only",
        resolver.by_alias_only
    );
}

#[test]
fn recent_aliases_resolve_to_the_right_topics() {
    aliases_resolve_to_the_right_topics(TopicAliasPolicy::Recent);
}

#[test]
fn hot_aliases_resolve_to_the_right_topics() {
    aliases_resolve_to_the_right_topics(TopicAliasPolicy::Hot);
}

#[test]
fn off_is_the_default() {
    assert_eq!(
        ringmq::config::Limits::default().outbound_topic_aliases,
        TopicAliasPolicy::Off
    );
}

/// Our own cap applies when the client accepts more.
#[test]
fn never_above_our_cap() {
    let broker = Broker::start_with(2, |c| {
        c.limits.outbound_topic_aliases = TopicAliasPolicy::Recent;
        c.limits.outbound_topic_alias_maximum = 2;
    });
    let mut sub = subscriber(&broker, Some(100), true);
    let mut publisher = publisher(&broker);
    let topics = skewed(100);
    publish_all(&mut publisher, &topics);
    let mut resolver = Resolver::new(2);
    receive_checked(&mut sub, &mut resolver, &topics);
    assert_eq!(resolver.highest, 2);
}

/// No alias for a client that sent no Topic Alias Maximum, nor with the setting off (the
/// default), nor for 3.1.1.
#[test]
fn no_aliases_unless_accepted_and_enabled() {
    let topics = skewed(20);
    for (policy, max) in [
        (TopicAliasPolicy::Recent, None),
        (TopicAliasPolicy::Recent, Some(0)),
        (TopicAliasPolicy::Off, Some(10)),
    ] {
        let broker = broker(policy);
        let mut sub = subscriber(&broker, max, true);
        publish_all(&mut publisher(&broker), &topics);
        for _ in &topics {
            let p = sub.recv_publish();
            assert_eq!(p.properties.topic_alias, None, "{policy:?} {max:?}");
            assert!(!p.topic.is_empty());
        }
    }
    let broker = broker(TopicAliasPolicy::Recent);
    let (mut sub, _) = Client::connect(broker.addr, ProtocolVersion::V311, "old", true);
    sub.subscribe("t/#", QoS::AtMostOnce);
    publish_all(&mut publisher(&broker), &topics);
    for t in &topics {
        assert_eq!(sub.recv_publish().topic.as_str(), t);
    }
}

/// Aliases belong to one connection: after a reconnect the first message on a topic
/// carries the topic again, also when it was queued while the client was away.
#[test]
fn aliases_start_afresh_on_reconnect() {
    let broker = broker(TopicAliasPolicy::Recent);
    let mut sub = subscriber(&broker, Some(2), false);
    let mut publisher = publisher(&broker);
    let topics: Vec<String> = ["t/a", "t/a"].map(String::from).to_vec();
    publish_all(&mut publisher, &topics);
    let mut resolver = Resolver::new(2);
    receive_checked(&mut sub, &mut resolver, &topics);
    assert_eq!(resolver.by_alias_only, 1);
    sub.disconnect();
    // Queued for the offline session.
    publisher.publish("t/a", b"t/a#0", QoS::AtLeastOnce, false);
    let mut connect = connect_packet(V5, &broker.client_id_on("aliased", 0), false);
    connect.properties.topic_alias_maximum = Some(2);
    connect.properties.session_expiry_interval = Some(60);
    let (mut sub, ack) = Client::connect_with(broker.addr, connect);
    assert!(ack.session_present);
    let p = match sub.recv() {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    sub.ack(&p);
    assert_eq!(p.topic.as_str(), "t/a", "a new connection knows no alias");
    let mut resolver = Resolver::new(2);
    assert_eq!(resolver.resolve(&p), "t/a");
    publisher.publish("t/a", b"t/a#1", QoS::AtLeastOnce, false);
    let p = sub.recv_publish();
    assert_eq!(resolver.resolve(&p), "t/a");
    assert_eq!(resolver.by_alias_only, 1);
}

//! Interoperability with third-party clients: the `rumqttc` library (3.1.1 and 5.0) and
//! mosquitto's command-line clients `mosquitto_pub` / `mosquitto_sub` (3.1, 3.1.1, 5.0;
//! installed by `.ci/run`). Publisher and subscriber are homed on different shards.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Broker;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// rumqttc (3.1.1): QoS 0/1/2 publish and subscribe through the broker.
#[test]
fn rumqttc_v311_pubsub() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let broker = Broker::start(4);
    let addr = broker.addr;
    let sub_id = broker.client_id_on("rq-sub", 0);
    let pub_id = broker.client_id_on("rq-pub", 1);
    runtime().block_on(async move {
        let (sub, mut sub_loop) =
            AsyncClient::new(MqttOptions::new(sub_id, "127.0.0.1", addr.port()), 16);
        sub.subscribe("interop/v4/#", QoS::ExactlyOnce)
            .await
            .expect("subscribe");
        // Drive the subscriber until the SUBACK arrives.
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await.expect("sub loop") {
                break;
            }
        }
        let (publisher, mut pub_loop) =
            AsyncClient::new(MqttOptions::new(pub_id, "127.0.0.1", addr.port()), 16);
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            publisher
                .publish(format!("interop/v4/{i}"), qos, false, format!("m{i}"))
                .await
                .expect("publish");
        }
        tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
        let mut got = Vec::new();
        while got.len() < 3 {
            let event = tokio::time::timeout(Duration::from_secs(5), sub_loop.poll())
                .await
                .expect("delivery within 5 s")
                .expect("sub loop");
            if let Event::Incoming(Packet::Publish(p)) = event {
                got.push((String::from_utf8_lossy(&p.payload).into_owned(), p.qos));
            }
        }
        assert_eq!(
            got,
            vec![
                ("m0".to_owned(), QoS::AtMostOnce),
                ("m1".to_owned(), QoS::AtLeastOnce),
                ("m2".to_owned(), QoS::ExactlyOnce)
            ]
        );
    });
}

/// rumqttc (5.0): publish with properties; the subscriber sees them and its subscription id.
#[test]
fn rumqttc_v5_pubsub_with_properties() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties, SubscribeProperties};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let broker = Broker::start(4);
    let addr = broker.addr;
    let sub_id = broker.client_id_on("rq5-sub", 2);
    let pub_id = broker.client_id_on("rq5-pub", 3);
    runtime().block_on(async move {
        let (sub, mut sub_loop) =
            AsyncClient::new(MqttOptions::new(sub_id, "127.0.0.1", addr.port()), 16);
        let props = SubscribeProperties {
            id: Some(42),
            user_properties: Vec::new(),
        };
        sub.subscribe_with_properties("interop/v5/+", QoS::AtLeastOnce, props)
            .await
            .expect("subscribe");
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await.expect("sub loop") {
                break;
            }
        }
        let (publisher, mut pub_loop) =
            AsyncClient::new(MqttOptions::new(pub_id, "127.0.0.1", addr.port()), 16);
        let props = PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        publisher
            .publish_with_properties("interop/v5/x", QoS::AtLeastOnce, false, "hello", props)
            .await
            .expect("publish");
        tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), sub_loop.poll())
                .await
                .expect("delivery within 5 s")
                .expect("sub loop");
            if let Event::Incoming(Packet::Publish(p)) = event {
                assert_eq!(&p.payload[..], b"hello");
                let props = p.properties.expect("properties forwarded");
                assert_eq!(props.content_type.as_deref(), Some("text/plain"));
                assert_eq!(
                    props.user_properties,
                    vec![("k".to_owned(), "v".to_owned())]
                );
                assert_eq!(props.subscription_identifiers, vec![42]);
                break;
            }
        }
    });
}

fn mosquitto_tool(name: &str) -> Command {
    let ok = Command::new(name)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "{name} not found: install mosquitto-clients (.ci/run does)"
    );
    Command::new(name)
}

/// mosquitto_sub / mosquitto_pub at protocol 3.1, 3.1.1 and 5.0: retained + live QoS 1.
#[test]
fn mosquitto_clients_all_protocol_levels() {
    let broker = Broker::start(2);
    let port = broker.addr.port().to_string();
    for version in ["mqttv31", "mqttv311", "mqttv5"] {
        let topic = format!("interop/mosq/{version}");
        let status = mosquitto_tool("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-q",
                "1",
                "-r",
            ])
            .args(["-t", &topic, "-m", "retained"])
            .status()
            .expect("run mosquitto_pub");
        assert!(status.success(), "{version}: mosquitto_pub failed");
        let sub = mosquitto_tool("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-q",
                "1",
                "-v",
            ])
            .args(["-t", &topic, "-C", "2", "-W", "5"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run mosquitto_sub");
        // Give the subscriber time to subscribe, then publish the live message.
        std::thread::sleep(Duration::from_millis(500));
        publish_with_mosquitto(broker.addr, version, &topic, "live");
        let out = sub.wait_with_output().expect("mosquitto_sub output");
        assert!(
            out.status.success(),
            "{version}: mosquitto_sub exit {:?}",
            out.status
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text,
            format!("{topic} retained\n{topic} live\n"),
            "{version}"
        );
    }
}

fn publish_with_mosquitto(addr: SocketAddr, version: &str, topic: &str, message: &str) {
    let status = mosquitto_tool("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-V",
            version,
            "-q",
            "1",
        ])
        .args(["-t", topic, "-m", message])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "{version}: mosquitto_pub failed");
}

/// rumqttc (5.0) accepting 2 topic aliases, broker set to assign them: rumqttc checks every
/// alias against its table (an unknown one would make it send DISCONNECT 0x82 and end the
/// stream), and the aliased deliveries (topic + alias, then the alias alone, re-mapped when
/// more topics than aliases come) resolve to the topics published, in order. rumqttc 0.25
/// hands the application the PUBLISH as received (empty topic) and resolves only in its
/// own state, so the test resolves the events itself, as such an application must: one
/// more reason why `outbound_topic_aliases` is off by default.
#[test]
fn rumqttc_v5_resolves_outbound_topic_aliases() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let broker = Broker::start_with(2, |c| {
        c.limits.outbound_topic_aliases = ringmq::session::TopicAliasPolicy::Recent;
    });
    let addr = broker.addr;
    let topics = ["a", "b", "a", "a", "c", "a", "b", "b", "d", "c", "a", "a"];
    runtime().block_on(async move {
        let mut options = MqttOptions::new("rq5-alias-sub", "127.0.0.1", addr.port());
        options.set_topic_alias_max(Some(2));
        let (sub, mut sub_loop) = AsyncClient::new(options, 16);
        sub.subscribe("interop/alias/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await.expect("sub loop") {
                break;
            }
        }
        let options = MqttOptions::new("rq5-alias-pub", "127.0.0.1", addr.port());
        let (publisher, mut pub_loop) = AsyncClient::new(options, 16);
        for (i, t) in topics.iter().enumerate() {
            let topic = format!("interop/alias/{t}");
            publisher
                .publish(topic, QoS::AtLeastOnce, false, format!("m{i}"))
                .await
                .expect("publish");
        }
        tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
        let mut got = Vec::new();
        let mut by_alias_only = 0;
        let mut aliases = std::collections::HashMap::new();
        while got.len() < topics.len() {
            let event = tokio::time::timeout(Duration::from_secs(5), sub_loop.poll())
                .await
                .expect("delivery within 5 s")
                .expect("sub loop");
            if let Event::Incoming(Packet::Publish(p)) = event {
                let alias = p.properties.as_ref().and_then(|p| p.topic_alias);
                assert!(alias.is_some_and(|a| (1..=2).contains(&a)), "{alias:?}");
                let mut topic = String::from_utf8(p.topic.to_vec()).expect("utf-8 topic");
                if topic.is_empty() {
                    by_alias_only += 1;
                    topic = aliases.get(&alias).cloned().expect("a known alias");
                } else {
                    aliases.insert(alias, topic.clone());
                }
                let payload = String::from_utf8(p.payload.to_vec()).expect("utf-8");
                got.push((topic, payload));
            }
        }
        let want: Vec<(String, String)> = topics
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("interop/alias/{t}"), format!("m{i}")))
            .collect();
        assert_eq!(got, want);
        // Least recently used replaced: m2, m3, m5 (a), m7 (b), m11 (a) by alias alone.
        assert_eq!(by_alias_only, 5);
    });
}

/// mosquitto_sub 2.0.11 (Debian's libmosquitto) sends a Topic Alias Maximum when asked
/// (`-D connect topic-alias-maximum 2`) but treats a PUBLISH with an empty topic and a
/// known alias as a protocol error and disconnects (mosquitto issue 1468; newer versions
/// accept it). With the default `outbound_topic_aliases = "off"` such a client gets every
/// topic in full.
#[test]
fn mosquitto_sub_advertising_aliases_works_with_the_default() {
    let broker = Broker::start(2);
    let port = broker.addr.port().to_string();
    let topics = ["a", "b", "a", "a", "c", "a"];
    let sub = mosquitto_tool("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-v",
        ])
        .args(["-D", "connect", "topic-alias-maximum", "2"])
        .args([
            "-t",
            "interop/alias/#",
            "-C",
            &topics.len().to_string(),
            "-W",
            "5",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub");
    std::thread::sleep(Duration::from_millis(500));
    let (mut publisher, _) = common::Client::connect(
        broker.addr,
        ringmq::codec::ProtocolVersion::V5,
        "alias-pub",
        true,
    );
    let mut want = String::new();
    for (i, t) in topics.iter().enumerate() {
        let topic = format!("interop/alias/{t}");
        let payload = format!("m{i}");
        publisher.publish(
            &topic,
            payload.as_bytes(),
            ringmq::codec::QoS::AtLeastOnce,
            false,
        );
        want.push_str(&format!("{topic} {payload}\n"));
    }
    let out = sub.wait_with_output().expect("mosquitto_sub output");
    assert!(out.status.success(), "mosquitto_sub exit {:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

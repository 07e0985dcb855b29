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

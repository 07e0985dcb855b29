//! Interop of the MQTT-SN gateway with a third-party client: the Python package
//! `mqtt-sn-12` (PyPI, MIT; its `mqtt_sn_pub` / `mqtt_sn_sub` commands), against the
//! broker's own `mqttsn://` listener (two shards), with an MQTT client on the other side.
//!
//! Subscribers subscribe at QoS 0: `mqtt_sn_sub` 1.0.9 never acknowledges a QoS 1 delivery
//! (it compares the QoS, 1, with its flag constant, 0x20) nor handles QoS 2 ones; the
//! gateway then retransmits with DUP and drops the client after N_retry, as 6.13 says.
//! Its publisher works at QoS -1, 0, 1 and 2. It answers the gateway's REGISTERs, the
//! address challenge included (REGISTER msg ids stay below 32768: it writes REGACK's
//! fields as signed numbers).
//!
//! Ignored by default (it needs the Python client):
//!
//! ```sh
//! python3 -m venv /tmp/snvenv && /tmp/snvenv/bin/pip install mqtt-sn-12
//! PATH=/tmp/snvenv/bin:$PATH cargo test --test mqttsn_interop -- --ignored --test-threads 1
//! ```

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Broker, Client};
use ringmq::codec::{ProtocolVersion, QoS};
use ringmq::config::{ListenerConfig, ListenerUrl};
use ringmq::router::topic::TopicName;

/// A two-shard broker with an MQTT-SN listener and topic id 5 pre-defined as
/// `sn/predefined`; returns it with the gateway's port.
fn start() -> (Broker, u16) {
    let b = Broker::start_with(2, |c| {
        let udp = SocketAddr::from(([127, 0, 0, 1], 0));
        c.listeners
            .push(ListenerConfig::new(ListenerUrl::mqttsn(udp)));
        c.mqttsn
            .predefined_topics
            .insert(5, TopicName::from_static("sn/predefined"));
    });
    let port = b.mqttsn.expect("the gateway runs").port();
    (b, port)
}

fn tool(name: &str, port: u16, args: &[&str]) -> Command {
    let mut c = Command::new(name);
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Starts `mqtt_sn_sub` and gives it time to subscribe.
fn subscriber(port: u16, args: &[&str]) -> Child {
    let child = tool("mqtt_sn_sub", port, args)
        .spawn()
        .expect("mqtt_sn_sub not found: pip install mqtt-sn-12 and put its bin directory on PATH");
    std::thread::sleep(Duration::from_millis(1500));
    child
}

fn publish(port: u16, args: &[&str]) {
    let out = tool("mqtt_sn_pub", port, args)
        .output()
        .expect("mqtt_sn_pub");
    assert!(
        out.status.success(),
        "mqtt_sn_pub {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the subscriber printed, one payload per line, after a moment for the last
/// deliveries (`mqtt_sn_sub` 1.0.9 ignores its `-C` count, so it is stopped here).
fn lines(mut child: Child) -> Vec<String> {
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "needs the Python MQTT-SN client: pip install mqtt-sn-12"]
fn python_client_publishes_and_subscribes_at_qos_0_1_2() {
    let (b, port) = start();
    let mut mqtt = Client::connect(b.addr, ProtocolVersion::V311, "mqtt-side", true).0;
    mqtt.subscribe("sn/#", QoS::AtLeastOnce);
    // A plain name (SUBACK carries its id) and a wildcard (REGISTER before PUBLISH).
    let plain = subscriber(port, &["-t", "sn/test", "-q", "0"]);
    let wild = subscriber(port, &["-t", "sn/#", "-q", "0"]);
    publish(port, &["-t", "sn/test", "-m", "zero", "-q", "0"]);
    publish(port, &["-t", "sn/test", "-m", "one", "-q", "1"]);
    publish(port, &["-t", "sn/test", "-m", "two", "-q", "2"]);
    let mut other = Client::connect(b.addr, ProtocolVersion::V311, "mqtt-pub", true).0;
    other.publish("sn/test", b"from mqtt", QoS::AtLeastOnce, false);
    assert_eq!(lines(plain), vec!["zero", "one", "two", "from mqtt"]);
    assert_eq!(lines(wild), vec!["zero", "one", "two", "from mqtt"]);
    // The MQTT client saw the three, and its own reached the MQTT-SN subscribers above.
    for want in ["zero", "one", "two"] {
        assert_eq!(&mqtt.recv_publish().payload[..], want.as_bytes());
    }
}

#[test]
#[ignore = "needs the Python MQTT-SN client: pip install mqtt-sn-12"]
fn python_client_short_predefined_and_qos_minus_one() {
    let (_b, port) = start();
    let short = subscriber(port, &["-t", "ab", "-q", "0"]);
    let pre = subscriber(port, &["-T", "5", "-q", "0"]);
    publish(port, &["-t", "ab", "-m", "short", "-q", "1"]);
    publish(port, &["-T", "5", "-m", "predefined", "-q", "1"]);
    // QoS -1: no CONNECT at all (6.8).
    publish(port, &["-T", "5", "-m", "connectionless", "-q", "-1"]);
    assert_eq!(lines(short), vec!["short"]);
    assert_eq!(lines(pre), vec!["predefined", "connectionless"]);
}

#[test]
#[ignore = "needs the Python MQTT-SN client: pip install mqtt-sn-12"]
fn python_client_answers_the_address_challenge() {
    // A message larger than three times what the subscriber sent so far (CONNECT and
    // SUBSCRIBE) waits until the client proves its address: the gateway re-announces the
    // topic id of its subscription in a REGISTER, and `mqtt_sn_sub` answers REGACK.
    let (b, port) = start();
    let sub = subscriber(port, &["-t", "sn/big", "-q", "0"]);
    let big = "b".repeat(300);
    let mut mqtt = Client::connect(b.addr, ProtocolVersion::V311, "mqtt-pub", true).0;
    mqtt.publish("sn/big", big.as_bytes(), QoS::AtLeastOnce, false);
    mqtt.publish("sn/big", b"after", QoS::AtLeastOnce, false);
    assert_eq!(lines(sub), vec![big, "after".to_owned()]);
}

//! Receive Maximum with acknowledgements held for a commit: a PUBACK that waits for the
//! store is still outstanding for the client, so a 5.0 client that sends more QoS 1/2
//! PUBLISHes than our Receive Maximum without waiting for them is disconnected with 0x93
//! [MQTT-3.3.4-9]; a client that waits is never refused, and a 3.1.1 client (no Receive
//! Maximum in 3.1.1) may pipeline as it likes.

use bytes::BytesMut;
use ringmq::codec::{self, Packet, ProtocolVersion, QoS, ReasonCode};

use crate::common::process::BrokerProcess;
use crate::common::{Client, connect_packet, publish};

/// Our Receive Maximum in these tests.
const CONFIG: &str = "[limits]\nreceive_maximum = 2\n";

/// A broker on a real store whose QoS 1 messages to `flow/t` reach a persistent session
/// (so every PUBACK waits for a commit).
fn broker_with_keeper(shards: &str) -> BrokerProcess {
    let broker =
        BrokerProcess::start_config(CONFIG, &["--listen", "127.0.0.1:0", "--shards", shards]);
    let mut keeper = connect_packet(ProtocolVersion::V5, "flow-keeper", false);
    keeper.properties.session_expiry_interval = Some(3600);
    let (mut keeper, _) = Client::connect_with(broker.addr, keeper);
    keeper.subscribe("flow/t", QoS::AtLeastOnce);
    keeper.disconnect();
    broker
}

/// `n` QoS 1 PUBLISHes (ids 1..=n) in one write: the broker reads them in one pass, before
/// any commit can answer.
fn pipelined(c: &mut Client, n: u16) {
    let mut bytes = BytesMut::new();
    for id in 1..=n {
        let p = publish("flow/t", b"m", QoS::AtLeastOnce, Some(id));
        codec::encode(&Packet::Publish(p), c.version, &mut bytes);
    }
    c.send_bytes(&bytes);
}

fn pubacks(packets: &[Packet]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::PubAck(a) => Some(a.packet_id.get()),
            _ => None,
        })
        .collect()
}

fn held_pubacks_count_against_receive_maximum(shards: &str) {
    let broker = broker_with_keeper(shards);

    // Two at a time, waiting for the PUBACKs: within the limit, however slow the commits.
    let (mut polite, ack) = Client::connect(broker.addr, ProtocolVersion::V5, "polite", true);
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for _ in 0..3 {
        pipelined(&mut polite, 2);
        let got = [polite.recv(), polite.recv()];
        assert_eq!(pubacks(&got), [1, 2], "{got:?}");
    }
    polite.ping();

    // Three without waiting: the third exceeds the Receive Maximum of 2.
    let (mut eager, _) = Client::connect(broker.addr, ProtocolVersion::V5, "eager", true);
    pipelined(&mut eager, 3);
    let got = eager.expect_closed();
    assert!(
        got.iter().any(|p| matches!(p,
            Packet::Disconnect(d) if d.reason == ReasonCode::ReceiveMaximumExceeded)),
        "expected DISCONNECT 0x93, got {got:?}"
    );
    let eager_acked = pubacks(&got).len();
    assert!(eager_acked <= 2, "the third is not acknowledged: {got:?}");

    // 3.1.1 has no Receive Maximum: ten pipelined QoS 1 PUBLISHes are all acknowledged.
    let (mut old, _) = Client::connect(broker.addr, ProtocolVersion::V311, "old", true);
    pipelined(&mut old, 10);
    let got: Vec<Packet> = (0..10).map(|_| old.recv()).collect();
    assert_eq!(pubacks(&got), (1..=10).collect::<Vec<_>>());
    old.ping();

    // Every acknowledged message is in the keeper's session.
    let mut keeper = connect_packet(ProtocolVersion::V5, "flow-keeper", false);
    keeper.properties.session_expiry_interval = Some(3600);
    let (mut keeper, ack) = Client::connect_with(broker.addr, keeper);
    assert!(ack.session_present);
    // (The eager client's first two may be there unacknowledged: routed before the third.)
    let mut received = 0;
    while let Ok(Some(Packet::Publish(p))) = keeper.recv_within(std::time::Duration::from_secs(1)) {
        keeper.ack(&p);
        received += 1;
    }
    let acked = 6 + eager_acked + 10;
    assert!(
        (acked..=6 + 2 + 10).contains(&received),
        "{received} messages queued, {acked} acknowledged"
    );
    drop(broker);
}

#[test]
fn held_pubacks_count_against_receive_maximum_one_shard() {
    held_pubacks_count_against_receive_maximum("1");
}

#[test]
fn held_pubacks_count_against_receive_maximum_two_shards() {
    held_pubacks_count_against_receive_maximum("2");
}

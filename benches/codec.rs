//! Codec throughput: decode and encode of PUBLISH (16 B, 256 B, 4 KiB payloads) at 3.1.1 and
//! 5.0 (v5 with message expiry, content type and one user property), and of CONNECT.
//!
//! Run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`.
//! Throughput is the packet's encoded size, so criterion prints bytes/s next to ns/packet.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ringmq::codec::{
    self, Connect, ConnectProperties, DecodeLimits, MqttStr, Packet, PacketId, ProtocolVersion,
    Publish, PublishProperties, QoS, UserProperty,
};
use ringmq::router::topic::TopicName;

fn s(x: &str) -> MqttStr {
    MqttStr::try_from_str(x).expect("valid string")
}

fn publish(payload: usize, v5: bool) -> Packet {
    let properties = if v5 {
        PublishProperties {
            message_expiry_interval: Some(3600),
            content_type: Some(s("application/octet-stream")),
            user_properties: vec![UserProperty {
                name: s("trace-id"),
                value: s("4bf92f3577b34da6"),
            }],
            ..Default::default()
        }
    } else {
        PublishProperties::default()
    };
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::new(Bytes::from_static(
            b"sensors/building-7/floor-3/temperature",
        ))
        .expect("topic"),
        packet_id: PacketId::new(4242),
        properties,
        payload: Bytes::from(vec![0xA5u8; payload]),
    })
}

fn connect(protocol: ProtocolVersion) -> Packet {
    let properties = if protocol.is_v5() {
        ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(32),
            maximum_packet_size: Some(1 << 20),
            topic_alias_maximum: Some(10),
            ..Default::default()
        }
    } else {
        ConnectProperties::default()
    };
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: s("bench-client-000001"),
        will: None,
        username: Some(s("device-000001")),
        password: Some(Bytes::from_static(b"correct horse battery staple")),
        properties,
    }))
}

fn bench_packet(c: &mut Criterion, group: &str, packet: &Packet, version: ProtocolVersion) {
    let limits = DecodeLimits::default();
    let mut wire = BytesMut::new();
    codec::encode(packet, version, &mut wire);
    let wire = wire.freeze();
    // CONNECT is decoded as the first packet of a connection.
    let at = if matches!(packet, Packet::Connect(_)) {
        None
    } else {
        Some(version)
    };

    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("decode", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| codec::decode(black_box(&mut buf), at, &limits),
            BatchSize::SmallInput,
        )
    });
    let mut dst = BytesMut::with_capacity(wire.len() * 2);
    g.bench_function("encode", |b| {
        b.iter(|| {
            dst.clear();
            codec::encode(black_box(packet), version, &mut dst);
            black_box(dst.len())
        })
    });
    g.finish();
}

fn publishes(c: &mut Criterion) {
    for (name, version) in [("v311", ProtocolVersion::V311), ("v5", ProtocolVersion::V5)] {
        for size in [16usize, 256, 4096] {
            let p = publish(size, version.is_v5());
            bench_packet(c, &format!("publish_{name}_{size}B"), &p, version);
        }
    }
}

fn connects(c: &mut Criterion) {
    bench_packet(
        c,
        "connect_v311",
        &connect(ProtocolVersion::V311),
        ProtocolVersion::V311,
    );
    bench_packet(
        c,
        "connect_v5",
        &connect(ProtocolVersion::V5),
        ProtocolVersion::V5,
    );
}

criterion_group!(benches, publishes, connects);
criterion_main!(benches);

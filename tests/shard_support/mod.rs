//! Test support for the runtime's end-to-end tests: start a broker in-process on an
//! ephemeral port, and a tiny blocking MQTT client over a real socket built on the codec
//! (`Role::Client`). Every read has a timeout, so a broken broker fails a test instead of
//! hanging it.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::codec::{
    self, Connect, ConnectProperties, DecodeLimits, MqttStr, Packet, PacketId, ProtocolVersion,
    Publish, PublishProperties, QoS, Role, Subscribe, SubscribeProperties, SubscriptionOptions,
};
use ringmq::config::{Config, DriverKind};
use ringmq::router::topic::{TopicFilter, TopicName};
use ringmq::shard::{BrokerHandle, home_shard};

/// How long any single expected packet may take.
pub const STEP: Duration = Duration::from_secs(5);

pub fn config(shards: usize, driver: DriverKind) -> Config {
    Config {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        shards,
        driver,
        pin_threads: false,
        ..Config::default()
    }
}

pub fn start(config: Config) -> (BrokerHandle, SocketAddr) {
    let handle = ringmq::shard::start(config).expect("broker starts");
    let addr = handle.local_addrs()[0];
    (handle, addr)
}

/// A client id with `prefix` whose home is `shard`.
pub fn id_on(shard: usize, shards: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| home_shard(id.as_bytes(), shards) == shard)
        .expect("some id hashes to every shard")
}

pub fn topic(s: &str) -> TopicName {
    TopicName::new(Bytes::copy_from_slice(s.as_bytes())).expect("topic")
}

pub fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(Bytes::copy_from_slice(s.as_bytes())).expect("filter")
}

pub fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("non-zero")
}

pub struct Client {
    pub stream: TcpStream,
    pub version: ProtocolVersion,
    buf: BytesMut,
}

impl Client {
    /// Opens a socket and sends CONNECT; returns the client and the broker's first packet.
    pub fn connect(
        addr: SocketAddr,
        client_id: &str,
        version: ProtocolVersion,
        clean_start: bool,
        keep_alive: u16,
    ) -> (Client, Packet) {
        let connect = Connect {
            protocol: version,
            clean_start,
            keep_alive,
            client_id: MqttStr::try_from_str(client_id).expect("id"),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        };
        Self::connect_with(addr, connect)
    }

    /// Wraps a socket on which CONNECT was already written by the test.
    pub fn from_stream(stream: TcpStream, version: ProtocolVersion) -> Client {
        Client {
            stream,
            version,
            buf: BytesMut::new(),
        }
    }

    pub fn connect_with(addr: SocketAddr, connect: Connect) -> (Client, Packet) {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut client = Client {
            stream,
            version: connect.protocol,
            buf: BytesMut::new(),
        };
        client.send(&Packet::Connect(Box::new(connect)));
        let connack = client.recv().expect("CONNACK");
        (client, connack)
    }

    pub fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(packet, self.version, &mut out);
        self.stream.write_all(&out).expect("write");
    }

    /// The next packet, or `None` when the broker closed the connection. Panics after
    /// `STEP` without a packet.
    pub fn recv(&mut self) -> Option<Packet> {
        self.recv_within(STEP)
            .unwrap_or_else(|| panic!("no packet within {STEP:?}"))
    }

    /// `Some(None)`: closed; `None`: nothing within `limit`.
    pub fn recv_within(&mut self, limit: Duration) -> Option<Option<Packet>> {
        let deadline = Instant::now() + limit;
        let limits = DecodeLimits {
            max_packet_size: 16 * 1024 * 1024,
            max_user_properties: 1024,
            role: Role::Client,
        };
        loop {
            match codec::decode(&mut self.buf, Some(self.version), &limits) {
                Ok(Some(p)) => return Some(Some(p)),
                Ok(None) => {}
                Err(e) => panic!("broker sent an undecodable packet: {e:?}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Some(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(None),
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Asserts that nothing arrives for `d` (the connection stays open and quiet).
    pub fn expect_silence(&mut self, d: Duration) {
        if let Some(p) = self.recv_within(d) {
            panic!("expected silence, got {p:?}");
        }
    }

    /// Reads until the broker closes the connection; returns the packets seen before.
    pub fn expect_closed(&mut self, limit: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_within(left) {
                Some(Some(p)) => seen.push(p),
                Some(None) => return seen,
                None => panic!("connection not closed within {limit:?}; saw {seen:?}"),
            }
        }
    }

    pub fn subscribe(&mut self, f: &str, qos: QoS, id: u16) {
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        self.subscribe_with(f, options, id);
    }

    pub fn subscribe_with(&mut self, f: &str, options: SubscriptionOptions, id: u16) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: pid(id),
            filters: vec![(filter(f), options)],
            properties: SubscribeProperties::default(),
        }));
        match self.recv() {
            Some(Packet::SubAck(ack)) => assert_eq!(ack.packet_id, pid(id)),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub fn publish(&mut self, t: &str, payload: &[u8], qos: QoS, retain: bool, id: u16) {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic(t),
            packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
            properties: PublishProperties::default(),
            payload: Bytes::copy_from_slice(payload),
        }));
    }

    /// Publishes and completes the QoS flow as the publisher.
    pub fn publish_acked(&mut self, t: &str, payload: &[u8], qos: QoS, retain: bool, id: u16) {
        self.publish(t, payload, qos, retain, id);
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => match self.recv() {
                Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, pid(id)),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                match self.recv() {
                    Some(Packet::PubRec(a)) => assert_eq!(a.packet_id, pid(id)),
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(&Packet::PubRel(codec::Ack::new(pid(id))));
                match self.recv() {
                    Some(Packet::PubComp(a)) => assert_eq!(a.packet_id, pid(id)),
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// Receives one PUBLISH and completes its QoS flow as the subscriber.
    pub fn receive_publish(&mut self) -> Publish {
        let p = match self.recv() {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        };
        if let Some(id) = p.packet_id {
            match p.qos {
                QoS::AtLeastOnce => self.send(&Packet::PubAck(codec::Ack::new(id))),
                QoS::ExactlyOnce => {
                    self.send(&Packet::PubRec(codec::Ack::new(id)));
                    match self.recv() {
                        Some(Packet::PubRel(a)) => assert_eq!(a.packet_id, id),
                        other => panic!("expected PUBREL, got {other:?}"),
                    }
                    self.send(&Packet::PubComp(codec::Ack::new(id)));
                }
                QoS::AtMostOnce => {}
            }
        }
        p
    }

    pub fn disconnect(mut self) {
        self.send(&Packet::Disconnect(codec::Disconnect::new(
            codec::ReasonCode::NormalDisconnection,
        )));
    }
}

/// CONNACK's reason code (v5) / return code mapped back (3.x), asserting the packet type.
pub fn connack_reason(p: &Packet) -> codec::ReasonCode {
    match p {
        Packet::ConnAck(c) => c.reason,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

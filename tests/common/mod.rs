//! Shared harness for the black-box tests: an in-process broker on an ephemeral loopback port
//! (with the I/O driver from `RINGMQ_DRIVER`, or a chosen one) and a blocking raw-packet client
//! built on RingMQ's codec (used as a client: it decodes CONNACK, SUBACK, server PUBLISH...).
//! Every wait is bounded.
#![allow(dead_code)]

pub mod authfiles;
pub mod conn;
pub mod process;
pub mod sn;
pub mod transport;

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::codec::{
    self, Ack, Connect, ConnectProperties, DecodeLimits, Disconnect, MqttStr, Packet, PacketId,
    ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode, SubAck, Subscribe,
    SubscribeProperties, SubscriptionOptions, Unsubscribe, Will, WillProperties,
};
use ringmq::config::{Config, DriverKind};
use ringmq::router::topic::{TopicFilter, TopicName};

/// How long any single wait for a packet may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to wait when asserting that nothing arrives.
pub const QUIET: Duration = Duration::from_millis(300);

/// The protocol levels and shard counts every black-box test runs over.
pub const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V311, ProtocolVersion::V5];

/// Expands to one `#[test]` per (protocol level, shard count) for a test body
/// `fn(ProtocolVersion, usize)`.
#[macro_export]
macro_rules! matrix {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use ringmq::codec::ProtocolVersion;
                #[test]
                fn v311_1_shard() { super::$name(ProtocolVersion::V311, 1) }
                #[test]
                fn v311_4_shards() { super::$name(ProtocolVersion::V311, 4) }
                #[test]
                fn v5_1_shard() { super::$name(ProtocolVersion::V5, 1) }
                #[test]
                fn v5_4_shards() { super::$name(ProtocolVersion::V5, 4) }
            }
        )*
    };
}

/// Expands to one `#[test]` per I/O driver (`auto::name`, `epoll::name`) for a test body
/// `fn(DriverKind)`.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        mod auto {
            $( #[test] fn $name() { super::$name(ringmq::config::DriverKind::Auto) } )*
        }
        mod epoll {
            $( #[test] fn $name() { super::$name(ringmq::config::DriverKind::Epoll) } )*
        }
    };
}

/// A broker running in this process, on a store of its own in a temporary directory
/// (removed with it); shut down on drop.
pub struct Broker {
    handle: Option<ringmq::shard::BrokerHandle>,
    /// The first listener's address.
    pub addr: SocketAddr,
    /// The MQTT-SN gateway's UDP address, when `adjust` added an `mqttsn://` listener.
    pub mqttsn: Option<SocketAddr>,
    /// Every listener's address, in `config.listeners` order
    /// (TCP ones: the MQTT-SN address is `mqttsn`).
    pub addrs: Vec<SocketAddr>,
    pub shards: usize,
    _data: process::DataDir,
}

impl Broker {
    pub fn start(shards: usize) -> Broker {
        Broker::start_with(shards, |_| {})
    }

    /// A broker on the given I/O driver, whatever `RINGMQ_DRIVER` says.
    pub fn start_driver(shards: usize, driver: DriverKind) -> Broker {
        Broker::start_with(shards, |config| config.driver = driver)
    }

    /// `adjust` runs after `RINGMQ_DRIVER` is applied, so it may also pick the driver.
    pub fn start_with(shards: usize, adjust: impl FnOnce(&mut Config)) -> Broker {
        let mut config = Config {
            shards,
            pin_threads: false,
            ..Config::default()
        }
        .listen_on(SocketAddr::from(([127, 0, 0, 1], 0)));
        // Every black-box test runs on the persistent path: acknowledgements of stored state
        // wait for real commits.
        let data = process::DataDir::new("inproc");
        config.storage.data_dir = data.0.clone();
        config
            .apply_env(std::env::var("RINGMQ_DRIVER").ok().as_deref())
            .expect("RINGMQ_DRIVER");
        adjust(&mut config);
        let handle = ringmq::shard::start(config).expect("broker starts");
        let addrs = handle.local_addrs();
        let mqttsn = handle.mqttsn_addr();
        Broker {
            handle: Some(handle),
            addr: addrs[0],
            addrs,
            mqttsn,
            shards,
            _data: data,
        }
    }

    /// The Prometheus endpoint's address, when the config asked for one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.handle.as_ref()?.metrics_addr()
    }

    /// A client id whose home shard is `shard` (so tests can put clients on chosen shards).
    pub fn client_id_on(&self, prefix: &str, shard: usize) -> String {
        (0..10_000)
            .map(|i| format!("{prefix}-{i}"))
            .find(|id| {
                ringmq::shard::home_shard(id.as_bytes(), self.shards).index() == shard % self.shards
            })
            .expect("some id hashes to every shard")
    }

    /// Reloads the password and ACL files (what SIGHUP does); the error as text.
    pub fn reload_auth(&self) -> Result<(), String> {
        self.handle
            .as_ref()
            .expect("running")
            .reload_auth()
            .map_err(|e| e.to_string())
    }

    /// Stops the broker and waits for its threads.
    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().expect("broker shuts down cleanly");
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            // A shard that panicked fails the test, unless it is already failing.
            if let Err(e) = h.shutdown() {
                assert!(
                    std::thread::panicking(),
                    "broker did not shut down cleanly: {e}"
                );
            }
        }
    }
}

pub fn s(text: &str) -> MqttStr {
    MqttStr::try_from_str(text).expect("valid MQTT string")
}

pub fn topic(text: &str) -> TopicName {
    TopicName::new(Bytes::copy_from_slice(text.as_bytes())).expect("valid topic")
}

pub fn filter(text: &str) -> TopicFilter {
    TopicFilter::new(Bytes::copy_from_slice(text.as_bytes())).expect("valid filter")
}

pub fn pid(v: u16) -> PacketId {
    PacketId(NonZeroU16::new(v).expect("non-zero packet id"))
}

/// The keep alive (seconds) clients connect with unless a test says otherwise.
pub const KEEP_ALIVE: u16 = 60;

/// A CONNECT with the given id and clean flag, keep alive `KEEP_ALIVE`, no will.
pub fn connect_packet(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: KEEP_ALIVE,
        client_id: s(client_id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// A CONNECT with a user name and password (either may be left out).
pub fn connect_credentials(
    version: ProtocolVersion,
    client_id: &str,
    username: Option<&str>,
    password: Option<&[u8]>,
) -> Connect {
    Connect {
        username: username.map(s),
        password: password.map(Bytes::copy_from_slice),
        ..connect_packet(version, client_id, true)
    }
}

pub fn will(topic_name: &str, payload: &[u8], qos: QoS, retain: bool) -> Will {
    Will {
        topic: topic(topic_name),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain,
        properties: WillProperties::default(),
    }
}

pub fn publish(topic_name: &str, payload: &[u8], qos: QoS, id: Option<u16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic(topic_name),
        packet_id: id.map(pid),
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// A blocking client speaking raw packets through RingMQ's codec, over TCP or any
/// transport (`transport::Link`).
pub struct Client {
    stream: transport::Link,
    buf: BytesMut,
    pub version: ProtocolVersion,
    next_id: u16,
}

impl Client {
    /// A TCP connection with nothing sent yet.
    pub fn tcp(addr: SocketAddr, version: ProtocolVersion) -> Client {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        Client::over(
            transport::Link::Stream(transport::Stream::Tcp(stream)),
            version,
        )
    }

    /// A client over an open link (handshakes done), nothing sent yet.
    pub fn over(link: transport::Link, version: ProtocolVersion) -> Client {
        Client {
            stream: link,
            buf: BytesMut::new(),
            version,
            next_id: 0,
        }
    }

    /// Sends `connect` over `link` and returns the client with the CONNACK.
    pub fn connect_over(link: transport::Link, connect: Connect) -> (Client, codec::ConnAck) {
        let mut c = Client::over(link, connect.protocol);
        c.send(&Packet::Connect(Box::new(connect)));
        match c.recv() {
            Packet::ConnAck(ack) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and returns the client with the CONNACK; panics unless CONNACK arrives.
    pub fn connect_with(addr: SocketAddr, connect: Connect) -> (Client, codec::ConnAck) {
        let mut c = Client::tcp(addr, connect.protocol);
        c.send(&Packet::Connect(Box::new(connect)));
        match c.recv() {
            Packet::ConnAck(ack) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects with the given id and clean flag; asserts success.
    pub fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
        clean: bool,
    ) -> (Client, codec::ConnAck) {
        Client::connect_keep_alive(addr, version, client_id, clean, KEEP_ALIVE)
    }

    /// Like `connect`, with the given keep alive in seconds (0: none).
    pub fn connect_keep_alive(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
        clean: bool,
        keep_alive: u16,
    ) -> (Client, codec::ConnAck) {
        let mut connect = connect_packet(version, client_id, clean);
        connect.keep_alive = keep_alive;
        let (c, ack) = Client::connect_with(addr, connect);
        assert_eq!(ack.reason, ReasonCode::Success, "CONNACK for {client_id}");
        (c, ack)
    }

    pub fn next_packet_id(&mut self) -> u16 {
        self.next_id = self.next_id % 65_535 + 1;
        self.next_id
    }

    pub fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(packet, self.version, &mut out);
        self.send_bytes(&out);
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to broker");
    }

    /// A second handle on the socket, to write from another thread while this one reads.
    pub fn writer(&self) -> TcpStream {
        self.stream.tcp().try_clone().expect("clone the socket")
    }

    /// Like `send_bytes`, but a write the broker refused (it already closed) is returned, not
    /// a panic: for inputs the broker may reject before reading all of them.
    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Topics of the PUBLISHes that arrive within `QUIET`, each acknowledged, sorted; any
    /// other packet fails the test.
    pub fn received_topics(&mut self) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(Some(p)) = self.recv_within(QUIET) {
            match p {
                Packet::Publish(p) => {
                    self.ack(&p);
                    got.push(p.topic.as_str().to_owned());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        got.sort();
        got
    }

    /// Next packet within `timeout`; `Err(closed)` when the broker closed the connection.
    pub fn recv_within(&mut self, timeout: Duration) -> Result<Option<Packet>, &'static str> {
        let deadline = Instant::now() + timeout;
        let limits = DecodeLimits {
            max_packet_size: 268_435_460,
            max_user_properties: 10_000,
            role: codec::Role::Client,
        };
        loop {
            match codec::decode(&mut self.buf, Some(self.version), &limits) {
                Ok(Some(p)) => return Ok(Some(p)),
                Ok(None) => {}
                Err(e) => panic!("client could not decode broker output: {e:?}"),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.stream.set_read_timeout(deadline - now);
            let mut chunk = Vec::new();
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("closed"),
                Ok(_) => self.buf.extend_from_slice(&chunk),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset
                            | ErrorKind::UnexpectedEof
                            | ErrorKind::BrokenPipe
                            | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Err("closed");
                }
                Err(e) => panic!("read error: {e}"),
            }
        }
    }

    /// Next packet; panics after `WAIT` or on close.
    pub fn recv(&mut self) -> Packet {
        match self.recv_within(WAIT) {
            Ok(Some(p)) => p,
            Ok(None) => panic!("no packet from the broker within {WAIT:?}"),
            Err(e) => panic!("connection {e} while waiting for a packet"),
        }
    }

    /// Asserts nothing arrives for `QUIET` and the connection stays open.
    pub fn expect_nothing(&mut self) {
        self.expect_nothing_for(QUIET);
    }

    /// Asserts nothing arrives for `d` and the connection stays open.
    pub fn expect_nothing_for(&mut self, d: Duration) {
        match self.recv_within(d) {
            Ok(None) => {}
            Ok(Some(p)) => panic!("expected no packet, got {p:?}"),
            Err(e) => panic!("expected no packet, but the connection {e}"),
        }
    }

    /// Reads until the broker closes the connection; returns what arrived first.
    pub fn expect_closed(&mut self) -> Vec<Packet> {
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.recv_within(deadline - Instant::now()) {
                Ok(Some(p)) => got.push(p),
                Ok(None) => break,
                Err(_) => return got,
            }
        }
        panic!("broker did not close the connection within {WAIT:?}; received {got:?}");
    }

    /// Subscribes to one filter and returns the SUBACK.
    pub fn subscribe(&mut self, filter_text: &str, qos: QoS) -> SubAck {
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        self.subscribe_with(filter_text, options, None)
    }

    pub fn subscribe_with(
        &mut self,
        filter_text: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> SubAck {
        let packet_id = pid(self.next_packet_id());
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![(filter(filter_text), options)],
            properties: SubscribeProperties {
                subscription_identifier: id,
                ..Default::default()
            },
        }));
        match self.recv() {
            Packet::SubAck(ack) => {
                assert_eq!(ack.packet_id, packet_id);
                ack
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub fn unsubscribe(&mut self, filter_text: &str) {
        let packet_id = pid(self.next_packet_id());
        self.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id,
            filters: vec![filter(filter_text)],
            user_properties: Vec::new(),
        }));
        match self.recv() {
            Packet::UnsubAck(ack) => assert_eq!(ack.packet_id, packet_id),
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS flow from the publisher's side.
    pub fn publish(&mut self, topic_name: &str, payload: &[u8], qos: QoS, retain: bool) {
        let id = (qos != QoS::AtMostOnce).then(|| self.next_packet_id());
        let mut p = publish(topic_name, payload, qos, id);
        p.retain = retain;
        self.send(&Packet::Publish(p));
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => match self.recv() {
                Packet::PubAck(a) => assert_eq!(a.packet_id.get(), id.unwrap_or(0)),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                match self.recv() {
                    Packet::PubRec(a) => assert_eq!(a.packet_id.get(), id.unwrap_or(0)),
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(&Packet::PubRel(Ack::new(pid(id.unwrap_or(1)))));
                match self.recv() {
                    Packet::PubComp(a) => assert_eq!(a.packet_id.get(), id.unwrap_or(0)),
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// Receives one PUBLISH and acknowledges it per its QoS; returns it.
    pub fn recv_publish(&mut self) -> Publish {
        let p = match self.recv() {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        };
        self.ack(&p);
        p
    }

    /// Acknowledges a received PUBLISH (PUBACK, or PUBREC/PUBREL/PUBCOMP).
    pub fn ack(&mut self, p: &Publish) {
        let Some(id) = p.packet_id else { return };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::new(id))),
            QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(Ack::new(id)));
                match self.recv() {
                    Packet::PubRel(a) => assert_eq!(a.packet_id, id),
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(&Packet::PubComp(Ack::new(id)));
            }
        }
    }

    pub fn ping(&mut self) {
        self.send(&Packet::PingReq);
        match self.recv() {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }

    pub fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect::new(
            ReasonCode::NormalDisconnection,
        )));
        self.stream.shutdown();
    }

    /// Drops the TCP connection without DISCONNECT (an abnormal close: will is due).
    pub fn drop_connection(self) {
        let _ = self.stream.tcp().shutdown(Shutdown::Both);
    }
}

/// A Variable Byte Integer (spec 1.5.5).
pub fn vbi(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A packet: first byte, remaining length, body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(vbi(body.len()));
    out.extend_from_slice(body);
    out
}

/// The bytes of a QoS 0 PUBLISH to topic "p" with `len` bytes of remaining length, less its
/// last 10 bytes: a packet the broker must hold incomplete.
pub fn partial_publish(len: usize) -> Vec<u8> {
    let mut bytes = vec![0x30];
    bytes.extend(vbi(len));
    bytes.extend_from_slice(&[0, 1, b'p']);
    bytes.resize(bytes.len() + len - 3 - 10, b'x');
    bytes
}

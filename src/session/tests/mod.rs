//! Unit tests of the session state machine: literal packets in, exact packets and actions
//! out, a fake clock. `Harness` drives one session like the shard would.

mod auth;
mod connect;
mod inbound;
mod lifecycle;
mod outbound;
mod random;
mod subscribe;
mod wire;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::codec::{
    Ack, AckProperties, ConnectProperties, MqttStr, PacketId, Publish, PublishProperties,
    SubscriptionOptions, Will, WillProperties,
};
use crate::router::topic::TopicName;

pub(super) fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero packet id")
}

pub(super) fn topic(s: &'static str) -> TopicName {
    TopicName::from_static(s)
}

pub(super) fn filter(s: &'static str) -> TopicFilter {
    TopicFilter::from_static(s)
}

pub(super) fn mstr(s: &str) -> MqttStr {
    MqttStr::try_from_str(s).expect("valid MQTT string")
}

pub(super) fn client(s: &str) -> ClientId {
    ClientId::new(mstr(s), &Limits::default()).expect("valid client id")
}

/// A CONNECT with everything at its default: keep alive 60 s, no will, no properties.
pub(super) fn connect_packet(v: ProtocolVersion, id: &str, clean: bool) -> Connect {
    Connect {
        protocol: v,
        clean_start: clean,
        keep_alive: 60,
        client_id: mstr(id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

pub(super) fn will(t: &'static str, qos: QoS, delay: Option<u32>) -> Will {
    Will {
        topic: topic(t),
        payload: Bytes::from_static(b"gone"),
        qos,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            ..WillProperties::default()
        },
    }
}

/// An inbound PUBLISH.
pub(super) fn publish(t: &'static str, qos: QoS, id: Option<u16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic(t),
        packet_id: id.map(pid),
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"hello"),
    }
}

/// A routed message from another client.
pub(super) fn message(t: &'static str, qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: topic(t),
        payload: Bytes::from_static(b"payload"),
        qos,
        retain: false,
        properties: PublishProperties::default(),
        expires_at_ms: None,
        origin: Some(client("publisher")),
        store_id: 0,
        pinned_read: 0,
    })
}

pub(super) fn ack(id: u16) -> Ack {
    Ack::new(pid(id))
}

pub(super) fn ack_with(id: u16, reason: ReasonCode) -> Ack {
    Ack {
        packet_id: pid(id),
        reason,
        properties: AckProperties::default(),
    }
}

pub(super) fn live(qos: QoS) -> Delivery<'static> {
    Delivery {
        qos,
        retain_as_published: false,
        subscription_ids: &[],
        from_retained_store: false,
        share_group: None,
    }
}

pub(super) fn sub_opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

/// One session plus the buffers and clock a shard would hold. Like the shard, it
/// acknowledges a routed publish at once (`Session::acknowledge` with success), and it keeps
/// the storage changes apart (`changes`) so that tests about the protocol see the actions
/// they expect.
pub(super) struct Harness {
    pub s: Session,
    pub out: BytesMut,
    pub actions: Vec<Action>,
    /// `Action::Persist` changes taken out of `actions` by `take`, in order.
    pub changes: Vec<Change>,
    pub now: u64,
}

impl Harness {
    pub fn new(limits: Limits) -> Harness {
        Harness {
            s: Session::new(client("c1"), std::sync::Arc::new(limits)),
            out: BytesMut::new(),
            actions: Vec::new(),
            changes: Vec::new(),
            now: 1_000,
        }
    }

    /// A session connected with `connect`, CONNACK and actions already taken.
    pub fn connected(limits: Limits, connect: Connect) -> Harness {
        let mut h = Harness::new(limits);
        h.connect(connect, false);
        h.take();
        h
    }

    pub fn v5() -> Harness {
        Harness::connected(
            Limits::default(),
            connect_packet(ProtocolVersion::V5, "c1", true),
        )
    }

    pub fn v311() -> Harness {
        Harness::connected(
            Limits::default(),
            connect_packet(ProtocolVersion::V311, "c1", true),
        )
    }

    pub fn connect(&mut self, connect: Connect, session_present: bool) {
        self.s.connect(
            connect,
            session_present,
            false,
            self.now,
            &mut self.out,
            &mut self.actions,
        );
    }

    pub fn packet(&mut self, p: Packet) {
        let start = self.actions.len();
        self.s
            .handle_packet(p, self.now, &mut self.out, &mut self.actions);
        self.acknowledge_from(start, ReasonCode::Success);
    }

    /// A packet whose publish the shard refuses with `code` instead of routing it.
    pub fn packet_refused(&mut self, p: Packet, code: ReasonCode) {
        let start = self.actions.len();
        self.s
            .handle_packet(p, self.now, &mut self.out, &mut self.actions);
        self.acknowledge_from(start, code);
    }

    /// Acknowledges, as the shard does, every publish action from index `start` on.
    fn acknowledge_from(&mut self, start: usize, code: ReasonCode) {
        let acks: Vec<(QoS, PacketId)> = self.actions[start..]
            .iter()
            .filter_map(|a| match a {
                Action::Publish {
                    message,
                    ack: Some(id),
                } => Some((message.qos, *id)),
                _ => None,
            })
            .collect();
        for (qos, id) in acks {
            self.s
                .acknowledge(qos, id, code, self.now, &mut self.out, &mut self.actions);
        }
    }

    pub fn deliver(&mut self, m: &Arc<Message>, d: &Delivery) {
        self.s
            .deliver(m, d, self.now, &mut self.out, &mut self.actions);
    }

    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.s
            .handle_timeout(self.now, &mut self.out, &mut self.actions);
    }

    pub fn lost(&mut self) {
        self.s.connection_lost(self.now, &mut self.actions);
    }

    /// Packets written to `out` since the last call (decoded back from the bytes, as the
    /// client would), and the actions emitted.
    pub fn take(&mut self) -> (Vec<Packet>, Vec<Action>) {
        let packets = decode_all(&mut self.out, self.s.protocol());
        let mut actions = Vec::new();
        for a in std::mem::take(&mut self.actions) {
            match a {
                Action::Persist(c) => self.changes.push(c),
                other => actions.push(other),
            }
        }
        (packets, actions)
    }

    /// The storage changes since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.take_keeping_output();
        std::mem::take(&mut self.changes)
    }

    /// Moves `Persist` actions to `changes` without touching output or other actions.
    fn take_keeping_output(&mut self) {
        let (changes, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.actions)
            .into_iter()
            .partition(|a| matches!(a, Action::Persist(_)));
        self.actions = rest;
        for c in changes {
            if let Action::Persist(c) = c {
                self.changes.push(c);
            }
        }
    }

    pub fn packets(&mut self) -> Vec<Packet> {
        let (p, a) = self.take();
        assert!(a.is_empty(), "unexpected actions {a:?}");
        p
    }

    pub fn actions(&mut self) -> Vec<Action> {
        let (p, a) = self.take();
        assert!(p.is_empty(), "unexpected packets {p:?}");
        a
    }
}

/// Decodes every packet in `out` as a client of protocol `version` would; the buffer must
/// hold whole packets only.
pub(super) fn decode_all(out: &mut BytesMut, version: Option<ProtocolVersion>) -> Vec<Packet> {
    let limits = crate::codec::DecodeLimits {
        max_packet_size: u32::MAX,
        role: crate::codec::Role::Client,
        ..Default::default()
    };
    let mut packets = Vec::new();
    if out.is_empty() {
        return packets;
    }
    let version = version.expect("packets are only written on a connection");
    while !out.is_empty() {
        match crate::codec::decode(out, Some(version), &limits) {
            Ok(Some(p)) => packets.push(p),
            other => panic!("undecodable output {other:?}: {out:02x?}"),
        }
    }
    packets
}

/// The packet for a v5 DISCONNECT with `code`.
pub(super) fn disconnect(code: ReasonCode) -> Packet {
    Packet::Disconnect(crate::codec::Disconnect::new(code))
}

/// Unwraps the PUBLISH packets of a list.
pub(super) fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect()
}

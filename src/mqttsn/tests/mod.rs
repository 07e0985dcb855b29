//! End-to-end tests of the gateway in one process: MQTT-SN clients (addresses are `u32`)
//! talk to a `Gateway` whose outputs drive real `session::Session`s, routed by a minimal
//! in-test router (a subscription list and a retained map). MQTT "observers" are sessions
//! whose output the test decodes itself, so both directions are checked against MQTT.
//!
//! The harness follows the call order documented in `crate::mqttsn`, so it is also the
//! reference for the shard integration.

mod flows;
mod lifecycle;
mod robustness;
mod validation;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::codec::topic::{TopicFilter, TopicName};
use crate::codec::{
    self, Connect, ConnectProperties, DecodeLimits, MqttStr, Packet, PacketId, ProtocolVersion,
    Publish, PublishProperties, QoS, Role, Subscribe, SubscribeProperties, SubscriptionOptions,
};
use crate::config::{Limits, MqttSnConfig};
use crate::session::{
    Action, ClientId, ConnectDecision, Delivery, Message, Session, Subscription, refuse_connect,
    validate_connect,
};

use super::codec::{
    MsgId, ReturnCode, SnConnect, SnMessage, SnPublish, SnQoS, SnSubscribe, SubTopic, TopicId,
    TopicRef, WillTopic, decode, encode_to_bytes,
};
use super::{Gateway, GatewaySettings, Output, anonymous_client_id, translate};

/// The default test configuration: T_retry 10 s, N_retry 3, pre-defined 5 = "pre/def".
fn config() -> MqttSnConfig {
    let mut c = MqttSnConfig::default();
    c.predefined_topics
        .insert(5, TopicName::from_static("pre/def"));
    c
}

fn id(s: &str) -> ClientId {
    ClientId::new(MqttStr::try_from_str(s).expect("id"), &Limits::default()).expect("id")
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A broker with a gateway, as one shard would hold them.
struct Broker {
    gw: Gateway<u32>,
    limits: Arc<Limits>,
    sessions: BTreeMap<ClientId, Session>,
    /// Sessions whose connection is a gateway client, and that client's address.
    sn: BTreeMap<ClientId, u32>,
    /// Packets the sessions of MQTT observers wrote.
    mqtt_inbox: BTreeMap<ClientId, Vec<Packet>>,
    subs: Vec<(ClientId, TopicFilter, Subscription)>,
    retained: BTreeMap<TopicName, Arc<Message>>,
    anon: Session,
    now: u64,
    /// Datagrams delivered to each address, in order.
    inbox: BTreeMap<u32, VecDeque<SnMessage>>,
    /// Bytes of the datagrams each address sent, and of those the gateway sent it.
    bytes_from: BTreeMap<u32, usize>,
    bytes_to: BTreeMap<u32, usize>,
    /// Drop every n-th datagram the gateway sends.
    drop_every: Option<usize>,
    sent: usize,
    dropped: usize,
    broadcasts: Vec<SnMessage>,
    /// Packet ids of observer publishes.
    next_packet_id: u16,
}

impl Broker {
    fn new() -> Broker {
        Broker::with(config())
    }

    fn with(config: MqttSnConfig) -> Broker {
        let limits = Arc::new(Limits::default());
        let settings = Arc::new(GatewaySettings::new(&config, Arc::clone(&limits)));
        let anon_id = anonymous_client_id(&limits).expect("anonymous id");
        let mut anon = Session::new(anon_id, Arc::clone(&limits));
        let (mut out, mut actions) = (BytesMut::new(), Vec::new());
        anon.connect(
            translate::anonymous_connect(),
            false,
            false,
            0,
            &mut out,
            &mut actions,
        );
        Broker {
            gw: Gateway::new(settings),
            limits,
            sessions: BTreeMap::new(),
            sn: BTreeMap::new(),
            mqtt_inbox: BTreeMap::new(),
            subs: Vec::new(),
            retained: BTreeMap::new(),
            anon,
            now: 1_000,
            inbox: BTreeMap::new(),
            bytes_from: BTreeMap::new(),
            bytes_to: BTreeMap::new(),
            drop_every: None,
            sent: 0,
            dropped: 0,
            broadcasts: Vec::new(),
            next_packet_id: 0,
        }
    }

    // ---- MQTT-SN client side ----------------------------------------------------------

    /// A datagram from `from`.
    fn send_raw(&mut self, from: u32, datagram: Bytes) {
        *self.bytes_from.entry(from).or_default() += datagram.len();
        let mut out = Vec::new();
        self.gw.handle_datagram(from, datagram, self.now, &mut out);
        self.run(out);
    }

    fn send(&mut self, from: u32, msg: SnMessage) {
        let datagram = encode_to_bytes(&msg).expect("test messages encode");
        self.send_raw(from, datagram);
    }

    /// Everything delivered to `addr` since the last call.
    fn take(&mut self, addr: u32) -> Vec<SnMessage> {
        self.inbox.entry(addr).or_default().drain(..).collect()
    }

    /// CONNECT without will; asserts CONNACK accepted.
    fn connect(&mut self, addr: u32, client: &str, clean: bool, duration: u16) {
        self.send(addr, connect_msg(client, false, clean, duration));
        assert_eq!(
            self.take(addr),
            vec![SnMessage::ConnAck {
                code: ReturnCode::Accepted
            }],
            "CONNACK for {client}"
        );
    }

    /// REGISTER from the client; returns the id of its REGACK.
    fn register(&mut self, addr: u32, msg_id: u16, topic: &str) -> TopicId {
        self.send(
            addr,
            SnMessage::Register {
                topic_id: TopicId::NONE,
                msg_id: MsgId(msg_id),
                topic_name: b(topic),
            },
        );
        match self.take(addr).as_slice() {
            [
                SnMessage::RegAck {
                    topic_id,
                    msg_id: m,
                    code: ReturnCode::Accepted,
                },
            ] if m.0 == msg_id => *topic_id,
            other => panic!("REGACK expected, got {other:?}"),
        }
    }

    /// SUBSCRIBE; returns the SUBACK.
    fn subscribe(&mut self, addr: u32, msg_id: u16, topic: SubTopic, qos: QoS) -> SnMessage {
        self.send(
            addr,
            SnMessage::Subscribe(SnSubscribe {
                dup: false,
                qos,
                msg_id: MsgId(msg_id),
                topic,
            }),
        );
        let mut got = self.take(addr);
        assert!(!got.is_empty(), "no SUBACK");
        got.remove(0)
    }

    // ---- MQTT observers ---------------------------------------------------------------

    /// An MQTT 5 client `client` with a clean session.
    fn mqtt_connect(&mut self, client: &str) {
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 0,
            client_id: MqttStr::try_from_str(client).expect("id"),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        };
        let mut more = Vec::new();
        self.connect_session(id(client), connect, None, &mut more);
        self.run(more);
        let got = self.mqtt_take(client);
        assert!(matches!(got.as_slice(), [Packet::ConnAck(_)]), "{got:?}");
    }

    fn mqtt_subscribe(&mut self, client: &str, filter: &'static str, qos: QoS) {
        let s = Subscribe {
            packet_id: PacketId::new(1).expect("id"),
            filters: vec![(
                TopicFilter::from_static(filter),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
            properties: SubscribeProperties::default(),
        };
        self.mqtt_packet(client, Packet::Subscribe(s));
        let mut got = self.mqtt_take(client);
        assert!(matches!(got.first(), Some(Packet::SubAck(_))), "{got:?}");
        // Retained messages that followed stay for the test to read.
        got.remove(0);
        self.mqtt_inbox.insert(id(client), got);
    }

    /// PUBLISH from observer `client`; a QoS 2 flow is completed (PUBREL) at once.
    fn mqtt_publish(
        &mut self,
        client: &str,
        topic: &'static str,
        payload: &str,
        qos: QoS,
        retain: bool,
    ) {
        self.next_packet_id = self.next_packet_id % 60_000 + 1;
        let id = PacketId::new(self.next_packet_id).expect("non-zero");
        let packet_id = (qos != QoS::AtMostOnce).then_some(id);
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic: TopicName::from_static(topic),
            packet_id,
            properties: PublishProperties::default(),
            payload: b(payload),
        };
        self.mqtt_packet(client, Packet::Publish(p));
        if qos == QoS::ExactlyOnce {
            self.mqtt_packet(client, Packet::PubRel(codec::Ack::new(id)));
        }
    }

    fn mqtt_packet(&mut self, client: &str, packet: Packet) {
        let mut more = Vec::new();
        let now = self.now;
        self.session_call(&id(client), &mut more, |s, out, actions| {
            s.handle_packet(packet, now, out, actions)
        });
        self.run(more);
    }

    /// Packets written to observer `client` since the last call.
    fn mqtt_take(&mut self, client: &str) -> Vec<Packet> {
        self.mqtt_inbox.remove(&id(client)).unwrap_or_default()
    }

    /// Payloads of the PUBLISHes observer `client` received, as strings.
    fn mqtt_payloads(&mut self, client: &str) -> Vec<String> {
        self.mqtt_take(client)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(String::from_utf8_lossy(&p.payload).into_owned()),
                _ => None,
            })
            .collect()
    }

    // ---- time ------------------------------------------------------------------------

    /// Moves the clock forward by `ms`, firing every gateway and session timer on the way.
    fn advance(&mut self, ms: u64) {
        let target = self.now + ms;
        loop {
            let session_due = self
                .sessions
                .iter()
                .filter_map(|(id, s)| s.next_deadline().map(|t| (t, id.clone())))
                .min();
            let gw_due = self.gw.next_deadline();
            let next = [gw_due, session_due.as_ref().map(|(t, _)| *t)]
                .into_iter()
                .flatten()
                .min();
            let Some(t) = next.filter(|&t| t <= target) else {
                break;
            };
            self.now = self.now.max(t);
            let mut more = Vec::new();
            if gw_due == Some(t) {
                self.gw.handle_timeout(self.now, &mut more);
            } else if let Some((_, client)) = session_due {
                let now = self.now;
                self.session_call(&client, &mut more, |s, out, actions| {
                    s.handle_timeout(now, out, actions)
                });
            }
            self.run(more);
        }
        self.now = target;
    }

    // ---- the shard's part ------------------------------------------------------------

    /// Executes gateway outputs in order, then those produced meanwhile.
    fn run(&mut self, outputs: Vec<Output<u32>>) {
        let mut queue: VecDeque<Output<u32>> = outputs.into();
        while let Some(o) = queue.pop_front() {
            let mut more = Vec::new();
            match o {
                Output::Send { to, datagram } => {
                    self.sent += 1;
                    *self.bytes_to.entry(to).or_default() += datagram.len();
                    if self.drop_every.is_some_and(|n| self.sent.is_multiple_of(n)) {
                        self.dropped += 1;
                        continue;
                    }
                    let msg = decode(&datagram).expect("the gateway sends valid messages");
                    self.inbox.entry(to).or_default().push_back(msg);
                }
                Output::Broadcast { datagram } => {
                    self.broadcasts
                        .push(decode(&datagram).expect("valid ADVERTISE"));
                }
                Output::Session {
                    at,
                    client,
                    packet: Packet::Connect(c),
                } => self.connect_session(client, *c, Some(at), &mut more),
                Output::Session { client, packet, .. } => {
                    let now = self.now;
                    self.session_call(&client, &mut more, |s, out, actions| {
                        s.handle_packet(packet, now, out, actions)
                    });
                }
                // The gateway's client at `addr` is over: a session still listed for it
                // (one that did not close) is no longer that client's connection.
                Output::Gone(addr) => self.sn.retain(|_, at| *at != addr),
                Output::Anonymous(p) => {
                    let (mut out, mut actions) = (BytesMut::new(), Vec::new());
                    self.anon
                        .handle_packet(Packet::Publish(p), self.now, &mut out, &mut actions);
                    for a in actions {
                        if let Action::Publish { message: m, .. } = a {
                            self.route(&m, &mut more);
                        }
                    }
                }
            }
            queue.extend(more);
        }
    }

    /// The shard's CONNECT handling, the same for TCP and gateway clients.
    fn connect_session(
        &mut self,
        client: ClientId,
        connect: Connect,
        via_gw: Option<u32>,
        more: &mut Vec<Output<u32>>,
    ) {
        let now = self.now;
        let id = match validate_connect(&connect, &self.limits) {
            Ok(ConnectDecision::UseId(id)) => id,
            Ok(ConnectDecision::AssignId) => panic!("the gateway never sends an empty id"),
            Err(code) => {
                let mut out = BytesMut::new();
                refuse_connect(connect.protocol, code, &mut out);
                if let Some(at) = via_gw {
                    self.gw.handle_session_output(at, &mut out, now, more);
                }
                return;
            }
        };
        assert_eq!(id, client);
        if self.sessions.get(&id).is_some_and(Session::is_connected) {
            self.session_call(&id, more, |s, out, actions| s.taken_over(now, out, actions));
        }
        if self.sessions.get(&id).is_some_and(Session::is_ended) {
            self.sessions.remove(&id);
        }
        let present = self.sessions.contains_key(&id);
        let limits = Arc::clone(&self.limits);
        self.sessions
            .entry(id.clone())
            .or_insert_with(|| Session::new(id.clone(), limits));
        match via_gw {
            Some(at) => self.sn.insert(id.clone(), at),
            None => self.sn.remove(&id),
        };
        self.session_call(&id, more, |s, out, actions| {
            s.connect(connect, present, false, now, out, actions)
        });
    }

    /// Calls the session of `client`, then executes its actions and hands its output on.
    fn session_call(
        &mut self,
        client: &ClientId,
        more: &mut Vec<Output<u32>>,
        f: impl FnOnce(&mut Session, &mut BytesMut, &mut Vec<Action>),
    ) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let (mut out, mut actions) = (BytesMut::new(), Vec::new());
        f(s, &mut out, &mut actions);
        // As the shard does: a routed publish is acknowledged (success) at once.
        let acks: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish {
                    message,
                    ack: Some(id),
                } => Some((message.qos, *id)),
                _ => None,
            })
            .collect();
        let now = self.now;
        for (qos, id) in acks {
            s.acknowledge(
                qos,
                id,
                crate::codec::ReasonCode::Success,
                now,
                &mut out,
                &mut actions,
            );
        }
        // What the call wrote goes out before its actions run (a retained message that
        // `Action::Subscribe` delivers follows the SUBACK), as on a TCP connection.
        self.session_output(client, &mut out, more);
        let mut closed = false;
        for a in actions {
            match a {
                Action::Publish { message: m, .. } => self.route(&m, more),
                Action::Persist(_) => {}
                Action::Subscribe { filter, sub, .. } => {
                    self.subscribe_action(client, filter, sub, more)
                }
                Action::Unsubscribe { filter } => {
                    self.subs.retain(|(c, f, _)| !(c == client && *f == filter));
                }
                Action::Close { .. } => closed = true,
                Action::Ended => {
                    self.subs.retain(|(c, _, _)| c != client);
                    self.sessions.remove(client);
                }
                // No shared subscriptions in these tests.
                Action::ReturnToGroup { .. } => {}
            }
        }
        if closed && let Some(at) = self.sn.remove(client) {
            self.gw.session_closed(at, more);
        }
    }

    /// Where a session's bytes go: the gateway for its clients, the inbox for observers.
    fn session_output(
        &mut self,
        client: &ClientId,
        out: &mut BytesMut,
        more: &mut Vec<Output<u32>>,
    ) {
        if let Some(&at) = self.sn.get(client) {
            return self.gw.handle_session_output(at, out, self.now, more);
        }
        let limits = DecodeLimits {
            role: Role::Client,
            ..DecodeLimits::default()
        };
        while let Some(p) = codec::decode(out, Some(ProtocolVersion::V5), &limits).expect("valid") {
            self.mqtt_inbox.entry(client.clone()).or_default().push(p);
        }
    }

    fn subscribe_action(
        &mut self,
        client: &ClientId,
        filter: TopicFilter,
        sub: Subscription,
        more: &mut Vec<Output<u32>>,
    ) {
        self.subs.retain(|(c, f, _)| !(c == client && *f == filter));
        self.subs.push((client.clone(), filter.clone(), sub));
        let retained: Vec<Arc<Message>> = self
            .retained
            .values()
            .filter(|m| filter.matches(&m.topic))
            .cloned()
            .collect();
        for m in retained {
            let d = Delivery {
                qos: sub.options.qos,
                retain_as_published: false,
                subscription_ids: &[],
                from_retained_store: true,
                share_group: None,
            };
            let now = self.now;
            self.session_call(client, more, |s, out, a| s.deliver(&m, &d, now, out, a));
        }
    }

    /// The router: retained store, then one delivery per subscribed session.
    fn route(&mut self, m: &Arc<Message>, more: &mut Vec<Output<u32>>) {
        if m.retain {
            if m.payload.is_empty() {
                self.retained.remove(&m.topic);
            } else {
                self.retained.insert(m.topic.clone(), Arc::clone(m));
            }
        }
        let mut targets: BTreeMap<ClientId, Vec<Subscription>> = BTreeMap::new();
        for (c, f, s) in &self.subs {
            if f.matches(&m.topic) {
                targets.entry(c.clone()).or_default().push(*s);
            }
        }
        for (client, subs) in targets {
            let mut ids = Vec::new();
            let Some(d) = Delivery::merge(subs.iter(), m, &client, &mut ids) else {
                continue;
            };
            let d = Delivery {
                subscription_ids: &[],
                ..d
            };
            let now = self.now;
            self.session_call(&client, more, |s, out, a| s.deliver(m, &d, now, out, a));
        }
    }
}

/// CONNECT with ProtocolId 0x01.
fn connect_msg(client: &str, will: bool, clean: bool, duration: u16) -> SnMessage {
    SnMessage::Connect(SnConnect {
        will,
        clean_session: clean,
        protocol_id: 1,
        duration,
        client_id: b(client),
    })
}

fn publish(topic: TopicRef, qos: SnQoS, msg_id: u16, data: &str) -> SnMessage {
    SnMessage::Publish(SnPublish {
        dup: false,
        qos,
        retain: false,
        topic,
        msg_id: MsgId(msg_id),
        data: b(data),
    })
}

fn will_topic(topic: &str, qos: QoS) -> SnMessage {
    SnMessage::WillTopic(Some(WillTopic {
        qos,
        retain: false,
        topic: b(topic),
    }))
}

/// The PUBLISH datagrams among `msgs`.
fn publishes(msgs: &[SnMessage]) -> Vec<&SnPublish> {
    msgs.iter()
        .filter_map(|m| match m {
            SnMessage::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn text(p: &SnPublish) -> String {
    String::from_utf8_lossy(&p.data).into_owned()
}

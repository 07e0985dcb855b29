//! Interop of the MQTT-SN gateway with a third-party client: the Python package
//! `mqtt-sn-12` (PyPI, MIT; its `mqtt_sn_pub` / `mqtt_sn_sub` commands).
//!
//! The shards do not host the gateway yet, so this test serves it itself: one thread, one
//! UDP socket on loopback, `mqttsn::Gateway` and real `session::Session`s routed by a
//! subscription list, driven in the call order `ringmq::mqttsn` documents. When the shards
//! own the UDP socket, the same scenarios move to the broker.
//!
//! Subscribers subscribe at QoS 0: `mqtt_sn_sub` 1.0.9 never acknowledges a QoS 1 delivery
//! (it compares the QoS, 1, with its flag constant, 0x20) nor handles QoS 2 ones; the
//! gateway then retransmits with DUP and drops the client after N_retry, as 6.13 says.
//! Its publisher works at QoS -1, 0, 1 and 2.
//!
//! Ignored by default (it needs the Python client):
//!
//! ```sh
//! python3 -m venv /tmp/snvenv && /tmp/snvenv/bin/pip install mqtt-sn-12
//! PATH=/tmp/snvenv/bin:$PATH cargo test --test mqttsn_interop -- --ignored --test-threads 1
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::codec::Packet;
use ringmq::config::{Limits, MqttSnConfig};
use ringmq::mqttsn::{Gateway, GatewaySettings, Output, anonymous_client_id, translate};
use ringmq::router::topic::{TopicFilter, TopicName};
use ringmq::session::{
    Action, ClientId, ConnectDecision, Delivery, Message, Session, Subscription, refuse_connect,
    validate_connect,
};

/// The gateway and its sessions, as one shard would hold them.
struct Loopback {
    sock: UdpSocket,
    gw: Gateway<SocketAddr>,
    limits: Arc<Limits>,
    sessions: HashMap<ClientId, Session>,
    subs: Vec<(ClientId, TopicFilter, Subscription)>,
    retained: BTreeMap<TopicName, Arc<Message>>,
    anon: Session,
    start: Instant,
}

impl Loopback {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn serve(mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            let mut out = Vec::new();
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                let d = Bytes::copy_from_slice(&buf[..n]);
                self.gw.handle_datagram(from, d, self.now(), &mut out);
            }
            if self.gw.next_deadline().is_some_and(|t| t <= self.now()) {
                self.gw.handle_timeout(self.now(), &mut out);
            }
            self.run(out);
        }
    }

    fn run(&mut self, outputs: Vec<Output<SocketAddr>>) {
        let mut queue: VecDeque<_> = outputs.into();
        while let Some(o) = queue.pop_front() {
            let mut more = Vec::new();
            match o {
                Output::Send { to, datagram } => {
                    let _ = self.sock.send_to(&datagram, to);
                }
                Output::Broadcast { .. } => {}
                Output::Session {
                    client,
                    packet: Packet::Connect(c),
                } => {
                    let now = self.now();
                    match validate_connect(&c, &self.limits) {
                        Ok(ConnectDecision::UseId(id)) => {
                            let present = self.sessions.contains_key(&id);
                            let limits = Arc::clone(&self.limits);
                            self.sessions
                                .entry(id.clone())
                                .or_insert_with(|| Session::new(id.clone(), limits));
                            self.call(&id, &mut more, |s, o, a| {
                                s.connect(*c, present, false, now, o, a)
                            });
                        }
                        Ok(ConnectDecision::AssignId) | Err(_) => {
                            let mut o = BytesMut::new();
                            refuse_connect(
                                c.protocol,
                                ringmq::codec::ReasonCode::ClientIdentifierNotValid,
                                &mut o,
                            );
                            self.gw
                                .handle_session_output(&client, &mut o, now, &mut more);
                        }
                    }
                }
                Output::Session { client, packet } => {
                    let now = self.now();
                    self.call(&client, &mut more, |s, o, a| {
                        s.handle_packet(packet, now, o, a)
                    });
                }
                Output::Anonymous(p) => {
                    let (mut o, mut a) = (BytesMut::new(), Vec::new());
                    let now = self.now();
                    self.anon
                        .handle_packet(Packet::Publish(p), now, &mut o, &mut a);
                    for action in a {
                        if let Action::Publish { message: m, .. } = action {
                            self.route(&m, &mut more);
                        }
                    }
                }
            }
            queue.extend(more);
        }
    }

    fn call(
        &mut self,
        client: &ClientId,
        more: &mut Vec<Output<SocketAddr>>,
        f: impl FnOnce(&mut Session, &mut BytesMut, &mut Vec<Action>),
    ) {
        let now = self.now();
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
        for (qos, id) in acks {
            s.acknowledge(
                qos,
                id,
                ringmq::codec::ReasonCode::Success,
                now,
                &mut out,
                &mut actions,
            );
        }
        self.gw.handle_session_output(client, &mut out, now, more);
        for a in actions {
            match a {
                Action::Publish { message: m, .. } => self.route(&m, more),
                Action::Persist(_) => {}
                Action::Subscribe { filter, sub, .. } => self.subscribe(client, filter, sub, more),
                Action::Unsubscribe { filter } => {
                    self.subs.retain(|(c, f, _)| !(c == client && *f == filter));
                }
                Action::Close { .. } => self.gw.session_closed(client, more),
                Action::Ended => {
                    self.subs.retain(|(c, _, _)| c != client);
                    self.sessions.remove(client);
                }
                // No shared subscriptions in these tests.
                Action::ReturnToGroup { .. } => {}
            }
        }
    }

    /// Adds the subscription and delivers the retained messages it matches.
    fn subscribe(
        &mut self,
        client: &ClientId,
        filter: TopicFilter,
        sub: Subscription,
        more: &mut Vec<Output<SocketAddr>>,
    ) {
        self.subs.retain(|(c, f, _)| !(c == client && *f == filter));
        self.subs.push((client.clone(), filter.clone(), sub));
        let kept: Vec<_> = self
            .retained
            .values()
            .filter(|m| filter.matches(&m.topic))
            .cloned()
            .collect();
        let now = self.now();
        for m in kept {
            let d = Delivery {
                qos: sub.options.qos,
                retain_as_published: false,
                subscription_ids: &[],
                from_retained_store: true,
                share_group: None,
            };
            self.call(client, more, |s, o, a| s.deliver(&m, &d, now, o, a));
        }
    }

    fn route(&mut self, m: &Arc<Message>, more: &mut Vec<Output<SocketAddr>>) {
        if m.retain {
            self.retained.insert(m.topic.clone(), Arc::clone(m));
        }
        let mut targets: BTreeMap<ClientId, Vec<Subscription>> = BTreeMap::new();
        for (c, f, s) in &self.subs {
            if f.matches(&m.topic) {
                targets.entry(c.clone()).or_default().push(*s);
            }
        }
        let now = self.now();
        for (client, subs) in targets {
            let mut ids = Vec::new();
            if let Some(d) = Delivery::merge(subs.iter(), m, &client, &mut ids) {
                let d = Delivery {
                    subscription_ids: &[],
                    ..d
                };
                self.call(&client, more, |s, o, a| s.deliver(m, &d, now, o, a));
            }
        }
    }
}

/// A running loopback gateway; stops when dropped.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(10)))
            .expect("timeout");
        let port = sock.local_addr().expect("addr").port();
        let mut config = MqttSnConfig::default();
        config
            .predefined_topics
            .insert(5, TopicName::from_static("sn/predefined"));
        let limits = Arc::new(Limits::default());
        let settings = Arc::new(GatewaySettings::new(&config, Arc::clone(&limits)));
        let mut anon = Session::new(
            anonymous_client_id(&limits).expect("id"),
            Arc::clone(&limits),
        );
        let (mut o, mut a) = (BytesMut::new(), Vec::new());
        anon.connect(
            translate::anonymous_connect(),
            false,
            false,
            0,
            &mut o,
            &mut a,
        );
        let lb = Loopback {
            sock,
            gw: Gateway::new(settings),
            limits,
            sessions: HashMap::new(),
            subs: Vec::new(),
            retained: BTreeMap::new(),
            anon,
            start: Instant::now(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || lb.serve(&s));
        Server {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
    let server = Server::start();
    let port = server.port;
    // A plain name (SUBACK carries its id) and a wildcard (REGISTER before PUBLISH).
    let plain = subscriber(port, &["-t", "sn/test", "-q", "0"]);
    let wild = subscriber(port, &["-t", "sn/#", "-q", "0"]);
    publish(port, &["-t", "sn/test", "-m", "zero", "-q", "0"]);
    publish(port, &["-t", "sn/test", "-m", "one", "-q", "1"]);
    publish(port, &["-t", "sn/test", "-m", "two", "-q", "2"]);
    assert_eq!(lines(plain), vec!["zero", "one", "two"]);
    assert_eq!(lines(wild), vec!["zero", "one", "two"]);
}

#[test]
#[ignore = "needs the Python MQTT-SN client: pip install mqtt-sn-12"]
fn python_client_short_predefined_and_qos_minus_one() {
    let server = Server::start();
    let port = server.port;
    let short = subscriber(port, &["-t", "ab", "-q", "0"]);
    let pre = subscriber(port, &["-T", "5", "-q", "0"]);
    publish(port, &["-t", "ab", "-m", "short", "-q", "1"]);
    publish(port, &["-T", "5", "-m", "predefined", "-q", "1"]);
    // QoS -1: no CONNECT at all (6.8).
    publish(port, &["-T", "5", "-m", "connectionless", "-q", "-1"]);
    assert_eq!(lines(short), vec!["short"]);
    assert_eq!(lines(pre), vec!["predefined", "connectionless"]);
}

//! MQTT over every transport of a running broker (in process): TLS, WebSocket, WebSocket
//! over TLS beside plain TCP, at 3.1.1 and 5.0 with 1 and 4 shards (with 4, connections are
//! handed to their client's home shard with their TLS session and WebSocket state). A
//! session is a session whatever transport it came on: takeover across transports.
//! Certificates are made at run time (`common::transport::Pki`).

mod common;

use std::sync::Arc;

use common::transport::{Link, Pki};
use common::{Broker, Client, connect_packet};
use ringmq::codec::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use ringmq::config::ListenerKind;

const KINDS: [ListenerKind; 4] = [
    ListenerKind::Mqtt,
    ListenerKind::Mqtts,
    ListenerKind::Ws,
    ListenerKind::Wss,
];

/// A broker with one listener of each kind on ephemeral ports, in `KINDS` order.
struct Setup {
    broker: Broker,
    pki: Pki,
    tls: Arc<rustls::ClientConfig>,
}

impl Setup {
    fn new(shards: usize) -> Setup {
        let pki = Pki::new("transport");
        let listeners = KINDS
            .iter()
            .map(|k| {
                let path = if k.is_websocket() { "/mqtt" } else { "" };
                pki.listener(&format!("{}://127.0.0.1:0{path}", k.scheme()))
            })
            .collect();
        let broker = Broker::start_with(shards, |c| c.set_listeners(listeners));
        let tls = pki.client_config(&[], None);
        Setup { broker, pki, tls }
    }

    fn link(&self, kind: ListenerKind) -> Link {
        let i = KINDS.iter().position(|k| *k == kind).expect("kind");
        Link::open(kind, self.broker.addrs[i], Some(Arc::clone(&self.tls)))
    }

    fn connect(&self, kind: ListenerKind, connect: Connect) -> (Client, ringmq::codec::ConnAck) {
        Client::connect_over(self.link(kind), connect)
    }
}

fn persistent(v: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect_packet(v, id, false);
    if v == ProtocolVersion::V5 {
        c.properties.session_expiry_interval = Some(600);
    }
    c
}

/// A subscriber and a publisher per transport, homed on different shards, subscribers on
/// `x/#`: every QoS published from every transport reaches every transport.
fn every_transport_reaches_every_other(v: ProtocolVersion, shards: usize) {
    let setup = Setup::new(shards);
    let open = |role: &str, i: usize, kind: ListenerKind| {
        let id = setup
            .broker
            .client_id_on(&format!("{role}-{}", kind.scheme()), i);
        let (c, ack) = setup.connect(kind, connect_packet(v, &id, true));
        assert_eq!(ack.reason, ReasonCode::Success, "{kind:?}");
        c
    };
    let mut subs: Vec<Client> = KINDS
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let mut c = open("sub", i, *kind);
            c.subscribe("x/#", QoS::ExactlyOnce);
            c
        })
        .collect();
    let mut pubs: Vec<Client> = KINDS
        .iter()
        .enumerate()
        .map(|(i, kind)| open("pub", i + 1, *kind))
        .collect();
    for (i, kind) in KINDS.iter().enumerate() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = format!("x/{}/{}", kind.scheme(), qos as u8);
            pubs[i].publish(&topic, topic.as_bytes(), qos, false);
            for (j, receiver) in subs.iter_mut().enumerate() {
                let p = receiver.recv_publish();
                assert_eq!(
                    (p.topic.as_str(), &p.payload[..], p.qos),
                    (topic.as_str(), topic.as_bytes(), qos),
                    "{:?} -> {:?}",
                    kind,
                    KINDS[j]
                );
            }
        }
    }
    for c in subs.iter_mut().chain(pubs.iter_mut()) {
        c.ping();
    }
    for c in subs.into_iter().chain(pubs) {
        c.disconnect();
    }
}

/// A persistent session opened over TCP is taken over from WebSocket over TLS (the TCP
/// connection is told, v5: DISCONNECT 0x8E, and closed), keeps its subscription and its
/// queued messages, and is taken back over TLS.
fn takeover_across_transports(v: ProtocolVersion, shards: usize) {
    let setup = Setup::new(shards);
    let id = setup.broker.client_id_on("roamer", 1);
    let (mut tcp, _) = setup.connect(ListenerKind::Mqtt, persistent(v, &id));
    tcp.subscribe("roam/#", QoS::AtLeastOnce);
    let pub_id = setup.broker.client_id_on("roam-pub", 0);
    let (mut publisher, _) = setup.connect(ListenerKind::Ws, connect_packet(v, &pub_id, true));

    let (mut wss, ack) = setup.connect(ListenerKind::Wss, persistent(v, &id));
    assert!(ack.session_present, "the TCP session goes on over WSS");
    let got = tcp.expect_closed();
    if v == ProtocolVersion::V5 {
        assert!(
            matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::SessionTakenOver),
            "v5 gets DISCONNECT 0x8E, got {got:?}"
        );
    }
    publisher.publish("roam/1", b"to wss", QoS::AtLeastOnce, false);
    assert_eq!(&wss.recv_publish().payload[..], b"to wss");

    wss.disconnect();
    publisher.publish("roam/2", b"queued", QoS::AtLeastOnce, false);
    let (mut tls, ack) = setup.connect(ListenerKind::Mqtts, persistent(v, &id));
    assert!(ack.session_present);
    assert_eq!(&tls.recv_publish().payload[..], b"queued");
    // The PINGRESP comes after the broker read the PUBACK: without it the takeover below may
    // come first, and "queued" is then rightly sent again (DUP) to the new connection.
    tls.ping();
    let (mut back, ack) = setup.connect(ListenerKind::Mqtt, persistent(v, &id));
    assert!(ack.session_present);
    tls.expect_closed();
    publisher.publish("roam/3", b"home", QoS::AtLeastOnce, false);
    assert_eq!(&back.recv_publish().payload[..], b"home");
    back.disconnect();
    let _ = &setup.pki;
}

/// Messages larger than a TLS record (16 KiB) and than one read (64 KiB), both ways, at
/// QoS 1: they cross record and frame boundaries intact.
fn large_messages(v: ProtocolVersion, shards: usize) {
    let setup = Setup::new(shards);
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for from in [ListenerKind::Mqtts, ListenerKind::Wss, ListenerKind::Ws] {
        for to in [ListenerKind::Mqtts, ListenerKind::Wss, ListenerKind::Ws] {
            let sub_id = setup.broker.client_id_on("big-sub", 0);
            let pub_id = setup.broker.client_id_on("big-pub", 1);
            let (mut sub, _) = setup.connect(to, connect_packet(v, &sub_id, true));
            sub.subscribe("big", QoS::AtLeastOnce);
            let (mut publisher, _) = setup.connect(from, connect_packet(v, &pub_id, true));
            publisher.publish("big", &payload, QoS::AtLeastOnce, false);
            let p = sub.recv_publish();
            assert!(p.payload[..] == payload[..], "{from:?} -> {to:?}");
            publisher.disconnect();
            sub.disconnect();
        }
    }
}

matrix!(
    every_transport_reaches_every_other,
    takeover_across_transports,
    large_messages
);

/// With a password file and an ACL in force, a client certificate on a listener with
/// `use_identity_as_username` is the authentication: its name is the user whatever the
/// CONNECT says (no password asked), and the ACL applies to that name. The same name over
/// plain TCP without its password is refused, and a v5 Authentication Method beside a
/// certificate gets 0x8C.
#[test]
fn a_client_certificate_authenticates_beside_a_password_file() {
    use common::authfiles::AuthFiles;
    use common::connect_credentials;
    let pki = Pki::new("cert-auth");
    let files = AuthFiles::new("cert-auth");
    files.ringmq_user("operator", "secret");
    files.write_acl("user device-7\ntopic readwrite dev/device-7/#\n");
    let listeners = vec![
        pki.listener("mqtt://127.0.0.1:0"),
        pki.mtls_listener("mqtts://127.0.0.1:0"),
    ];
    let broker = Broker::start_with(2, |c| {
        c.set_listeners(listeners);
        c.auth.password_file = Some(files.passwd());
        c.auth.acl_file = Some(files.acl());
    });
    let (plain, mtls) = (broker.addrs[0], broker.addrs[1]);
    let cert = pki.client_cert("device-7");
    let tls = pki.client_config(&[], Some(&cert));
    let open = || Link::open(ListenerKind::Mqtts, mtls, Some(Arc::clone(&tls)));
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let id = format!("cert-{v:?}");
        let connect = connect_credentials(v, &id, Some("operator"), None);
        let (mut c, ack) = Client::connect_over(open(), connect);
        assert_eq!(ack.reason, ReasonCode::Success, "{v:?}");
        let mine = c.subscribe("dev/device-7/#", QoS::AtLeastOnce);
        assert_eq!(mine.reasons, [ReasonCode::GrantedQoS1], "{v:?}");
        let other = c.subscribe("dev/device-8/#", QoS::AtLeastOnce);
        assert_ne!(
            other.reasons,
            [ReasonCode::GrantedQoS1],
            "{v:?}: ACL of device-7"
        );
        c.publish("dev/device-7/t", b"own", QoS::AtLeastOnce, false);
        assert_eq!(&c.recv_publish().payload[..], b"own");
        c.disconnect();
    }

    let no_password = connect_credentials(ProtocolVersion::V5, "plain-7", Some("device-7"), None);
    let (_, ack) = Client::connect_with(plain, no_password);
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);

    let mut method = connect_packet(ProtocolVersion::V5, "cert-method", true);
    method.properties.authentication_method = Some(common::s("SCRAM-SHA-256"));
    let (_, ack) = Client::connect_over(open(), method);
    assert_eq!(ack.reason, ReasonCode::BadAuthenticationMethod);
}

//! Black-box tests of MQTT 5 enhanced authentication with SCRAM-SHA-256 [MQTT-4.12] over
//! real sockets: a client written here from RFC 5802 section 3 and checked against RFC 7677's
//! test vector, a user whose SCRAM material uses the RFC's salt, the exchange through to
//! CONNACK (1 and 4 shards: the exchange runs on the accepting shard, then the connection is
//! handed off), every refusal, AUTH out of sequence and from 3.1.1, re-authentication on a
//! live connection, the throttle and the CONNECT timeout.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use common::authfiles::AuthFiles;
use common::{Broker, Client, s};
use hmac::{Hmac, Mac};
use ringmq::codec::{Auth, AuthProperties, ConnAck, Packet, ProtocolVersion, QoS, ReasonCode as R};
use sha2::{Digest, Sha256};

const V5: ProtocolVersion = ProtocolVersion::V5;
const METHOD: &str = "SCRAM-SHA-256";
/// RFC 7677 section 3: user, password, salt, client nonce and the exchange it gives.
const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// A SCRAM-SHA-256 client, step by step as RFC 5802 section 3 writes it.
struct ScramClient {
    password: Vec<u8>,
    nonce: String,
    first_bare: String,
}

impl ScramClient {
    fn new(user: &str, password: &str, nonce: &str) -> ScramClient {
        let name = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            password: password.as_bytes().to_vec(),
            nonce: nonce.to_owned(),
            first_bare: format!("n={name},r={nonce}"),
        }
    }

    fn first(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// client-final-message and the server-final-message the server must answer with.
    fn last(&self, server_first: &str) -> (String, String) {
        let attr = |k: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(k))
                .unwrap_or_else(|| panic!("{k} in {server_first}"))
        };
        let nonce = attr("r=");
        assert!(
            nonce.starts_with(&self.nonce),
            "the server nonce extends ours"
        );
        let salt = B64.decode(attr("s=")).expect("salt");
        let i: u32 = attr("i=").parse().expect("i");
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&self.password, &salt, i, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            format!("v={}", B64.encode(server_signature)),
        )
    }
}

/// The file field of SCRAM material for `password` with `salt` (what `ringmq passwd`
/// writes, computed here independently).
fn scram_field(password: &str, salt_b64: &str) -> String {
    let salt = B64.decode(salt_b64).expect("salt");
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, 4096, &mut salted);
    let stored = Sha256::digest(hmac(&salted, b"Client Key"));
    let server = hmac(&salted, b"Server Key");
    format!(
        "$scram-sha-256$i=4096${salt_b64}${}${}",
        B64.encode(stored),
        B64.encode(server)
    )
}

#[test]
fn the_test_client_reproduces_rfc7677() {
    let c = ScramClient::new("user", "pencil", RFC_NONCE);
    assert_eq!(c.first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
    assert_eq!(
        c.last(RFC_SERVER_FIRST),
        (RFC_CLIENT_FINAL.to_owned(), RFC_SERVER_FINAL.to_owned())
    );
}

/// `user`/`pencil` with the RFC's salt, and `other`/`pw2` (each with a mosquitto hash for
/// password CONNECTs, SCRAM material appended to its line).
fn rfc_user_files(tag: &str) -> AuthFiles {
    let files = AuthFiles::new(tag);
    files.mosquitto_user("user", "pencil", &[]);
    files.mosquitto_user("other", "pw2", &[]);
    let text = std::fs::read_to_string(files.passwd()).expect("passwd");
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.split(':').next() {
            Some("user") => format!("{l}:{}", scram_field("pencil", RFC_SALT)),
            Some("other") => format!("{l}:{}", scram_field("pw2", "c2FsdHNhbHRzYWx0")),
            _ => l.to_owned(),
        })
        .collect();
    files.write_passwd(&(lines.join("\n") + "\n"));
    files
}

fn scram_broker(
    shards: usize,
    files: &AuthFiles,
    adjust: impl FnOnce(&mut ringmq::config::Config),
) -> Broker {
    let passwd = files.passwd();
    Broker::start_with(shards, move |c| {
        c.auth.password_file = Some(passwd);
        adjust(c);
    })
}

fn auth_packet(reason: R, method: &str, data: &str) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: AuthProperties {
            authentication_method: Some(s(method)),
            authentication_data: Some(Bytes::copy_from_slice(data.as_bytes())),
            ..AuthProperties::default()
        },
    })
}

/// Sends CONNECT with `method` and `data`; the first packet back.
fn start(b: &Broker, id: &str, method: &str, data: &str) -> (Client, Packet) {
    let mut c = Client::tcp(b.addr, V5);
    let mut connect = common::connect_packet(V5, id, true);
    connect.properties.authentication_method = Some(s(method));
    connect.properties.authentication_data = Some(Bytes::copy_from_slice(data.as_bytes()));
    c.send(&Packet::Connect(Box::new(connect)));
    let first = c.recv();
    (c, first)
}

/// The data of an AUTH from the server with `reason`.
fn auth_data(p: &Packet, reason: R) -> String {
    match p {
        Packet::Auth(a) => {
            assert_eq!(a.reason, reason);
            assert_eq!(a.properties.authentication_method, Some(s(METHOD)));
            let d = a.properties.authentication_data.clone().expect("data");
            String::from_utf8(d.to_vec()).expect("ascii")
        }
        other => panic!("expected AUTH {reason:?}, got {other:?}"),
    }
}

fn connack(p: Packet) -> ConnAck {
    match p {
        Packet::ConnAck(a) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// The whole exchange as `user`/`password`: the CONNACK, the client, and the expected
/// server-final.
fn scram_connect(b: &Broker, id: &str, user: &str, password: &str) -> (Client, ConnAck, String) {
    let sc = ScramClient::new(user, password, "fyko+d2lbbFgONRv9qkxdawL");
    let (mut c, first) = start(b, id, METHOD, &sc.first());
    let server_first = auth_data(&first, R::ContinueAuthentication);
    let (fin, v) = sc.last(&server_first);
    c.send(&auth_packet(R::ContinueAuthentication, METHOD, &fin));
    let ack = connack(c.recv());
    (c, ack, v)
}

#[test]
fn scram_connect_succeeds_and_proves_the_server() {
    for shards in [1, 4] {
        let files = rfc_user_files("scram-ok");
        let b = scram_broker(shards, &files, |_| {});
        // The server-first carries the RFC's salt and iteration count for this user.
        let sc = ScramClient::new("user", "pencil", RFC_NONCE);
        let (c, first) = start(&b, "probe", METHOD, &sc.first());
        let server_first = auth_data(&first, R::ContinueAuthentication);
        assert!(server_first.starts_with(&format!("r={RFC_NONCE}")));
        assert!(server_first.ends_with(&format!(",s={RFC_SALT},i=4096")));
        c.drop_connection();
        for n in 0..4 {
            let id = b.client_id_on("scram", n);
            let (mut c, ack, v) = scram_connect(&b, &id, "user", "pencil");
            assert_eq!(ack.reason, R::Success);
            assert_eq!(ack.properties.authentication_method, Some(s(METHOD)));
            let data = ack.properties.authentication_data.expect("server-final");
            assert_eq!(&data[..], v.as_bytes(), "the server knows the key");
            c.subscribe("scram/x", QoS::AtLeastOnce);
            c.publish("scram/x", b"hi", QoS::AtLeastOnce, false);
            assert_eq!(&c.recv_publish().payload[..], b"hi");
            c.disconnect();
        }
    }
}

#[test]
fn scram_refusals() {
    let files = rfc_user_files("scram-refuse");
    let b = scram_broker(2, &files, |_| {});
    let (mut c, ack, _) = scram_connect(&b, "w1", "user", "pencil?");
    assert_eq!(ack.reason, R::BadUserNameOrPassword);
    c.expect_closed();
    // An unknown user gets a salt and the same iteration count, and fails at the proof.
    let (mut c, ack, _) = scram_connect(&b, "w2", "nobody", "pencil");
    assert_eq!(ack.reason, R::BadUserNameOrPassword);
    c.expect_closed();
    let (mut ok, ack, _) = scram_connect(&b, "w3", "user", "pencil"); // forgives the source
    assert_eq!(ack.reason, R::Success);
    ok.ping();
    for method in ["SCRAM-SHA-1", "PLAIN", "scram-sha-256"] {
        let (mut c, p) = start(&b, "m", method, "n,,n=user,r=abc");
        assert_eq!(connack(p).reason, R::BadAuthenticationMethod, "{method}");
        c.expect_closed();
    }
    // Channel binding is not offered: `p=` is refused, as is a malformed client-first.
    for data in ["p=tls-unique,,n=user,r=abc", "garbage", ""] {
        let (mut c, p) = start(&b, "cb", METHOD, data);
        assert_eq!(connack(p).reason, R::NotAuthorized, "{data:?}");
        c.expect_closed();
    }
    // Without a password file there is nothing to check SCRAM against: 0x8C.
    let open = Broker::start(1);
    let (mut c, p) = start(&open, "nofile", METHOD, "n,,n=user,r=abc");
    assert_eq!(connack(p).reason, R::BadAuthenticationMethod);
    c.expect_closed();
}

#[test]
fn packets_out_of_sequence_before_connack() {
    let files = rfc_user_files("scram-seq");
    let b = scram_broker(2, &files, |_| {});
    let sc = ScramClient::new("user", "pencil", "abc");
    let cases = [
        Packet::PingReq,
        Packet::Publish(common::publish("x", b"p", QoS::AtMostOnce, None)),
        auth_packet(R::ReAuthenticate, METHOD, "n,,n=user,r=abc"),
        auth_packet(R::ContinueAuthentication, "SCRAM-SHA-1", "c=biws"),
        auth_packet(R::Success, METHOD, ""),
    ];
    for p in cases {
        let (mut c, first) = start(&b, "seq", METHOD, &sc.first());
        auth_data(&first, R::ContinueAuthentication);
        c.send(&p);
        let got = c.expect_closed();
        assert!(
            matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason == R::ProtocolError),
            "{p:?} -> {got:?}"
        );
    }
    // DISCONNECT during the exchange: closed, nothing sent.
    let (mut c, first) = start(&b, "seq", METHOD, &sc.first());
    auth_data(&first, R::ContinueAuthentication);
    c.send(&Packet::Disconnect(ringmq::codec::Disconnect::new(
        R::NormalDisconnection,
    )));
    assert!(c.expect_closed().is_empty());
    // AUTH on a connection that did not authenticate with a method: DISCONNECT 0x82.
    let plain = common::connect_credentials(V5, "plain", Some("user"), Some(b"pencil"));
    let (mut c, ack) = Client::connect_with(b.addr, plain);
    assert_eq!(ack.reason, R::Success);
    c.send(&auth_packet(R::ReAuthenticate, METHOD, &sc.first()));
    let got = c.expect_closed();
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == R::ProtocolError),
        "{got:?}"
    );
}

/// AUTH is a reserved packet type at 3.1.1: the connection is closed without a packet.
#[test]
fn auth_from_a_3_1_1_client_closes() {
    let files = rfc_user_files("scram-v3");
    let b = scram_broker(1, &files, |_| {});
    let v = ProtocolVersion::V311;
    let plain = common::connect_credentials(v, "old", Some("user"), Some(b"pencil"));
    let (mut c, ack) = Client::connect_with(b.addr, plain);
    assert_eq!(ack.reason, R::Success);
    c.send_bytes(&[0xF0, 0x00]);
    assert!(c.expect_closed().is_empty());
}

fn reauth(c: &mut Client, user: &str, password: &str, nonce: &str) -> Result<(), Box<Packet>> {
    let sc = ScramClient::new(user, password, nonce);
    c.send(&auth_packet(R::ReAuthenticate, METHOD, &sc.first()));
    let p = c.recv();
    let Packet::Auth(_) = &p else {
        return Err(Box::new(p));
    };
    let server_first = auth_data(&p, R::ContinueAuthentication);
    let (fin, v) = sc.last(&server_first);
    c.send(&auth_packet(R::ContinueAuthentication, METHOD, &fin));
    let p = c.recv();
    match &p {
        Packet::Auth(_) => {
            assert_eq!(auth_data(&p, R::Success), v);
            Ok(())
        }
        _ => Err(Box::new(p)),
    }
}

#[test]
fn reauthentication_on_a_live_connection() {
    for shards in [1, 4] {
        let files = rfc_user_files("scram-reauth");
        let b = scram_broker(shards, &files, |_| {});
        let id = b.client_id_on("re", 1);
        let (mut c, ack, _) = scram_connect(&b, &id, "user", "pencil");
        assert_eq!(ack.reason, R::Success);
        c.subscribe("re/x", QoS::AtLeastOnce);
        for round in 0..2 {
            reauth(&mut c, "user", "pencil", &format!("again{round}")).expect("re-authenticated");
            c.publish("re/x", b"still", QoS::AtLeastOnce, false);
            assert_eq!(&c.recv_publish().payload[..], b"still");
        }
        // A wrong password ends the connection: DISCONNECT 0x87 (DISCONNECT has no 0x86).
        let got = reauth(&mut c, "user", "wrong", "n1").expect_err("refused");
        assert!(matches!(*got, Packet::Disconnect(ref d) if d.reason == R::NotAuthorized));
        c.expect_closed();
        // Another user, even with a right password, is not this connection's user.
        let (mut c, ack, _) = scram_connect(&b, &id, "user", "pencil");
        assert_eq!(ack.reason, R::Success);
        let got = reauth(&mut c, "other", "pw2", "n2").expect_err("refused");
        assert!(matches!(*got, Packet::Disconnect(ref d) if d.reason == R::NotAuthorized));
        c.expect_closed();
        // AUTH 0x18 with no re-authentication running: DISCONNECT 0x82.
        let (mut c, ack, _) = scram_connect(&b, &id, "user", "pencil");
        assert_eq!(ack.reason, R::Success);
        c.send(&auth_packet(
            R::ContinueAuthentication,
            METHOD,
            "c=biws,r=x,p=AA==",
        ));
        let got = c.expect_closed();
        assert!(
            matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == R::ProtocolError),
            "{got:?}"
        );
    }
}

#[test]
fn failed_proofs_are_throttled_and_the_connect_timeout_bounds_an_exchange() {
    let files = rfc_user_files("scram-throttle");
    let b = scram_broker(2, &files, |c| c.limits.connect_timeout_secs = 1);
    for i in 0..4 {
        let (mut c, ack, _) = scram_connect(&b, &format!("g{i}"), "user", "guess");
        assert_eq!(ack.reason, R::BadUserNameOrPassword);
        c.expect_closed();
    }
    let sc = ScramClient::new("user", "pencil", "abc");
    let (mut c, p) = start(&b, "right", METHOD, &sc.first());
    assert_eq!(connack(p).reason, R::ServerBusy, "throttled: no exchange");
    c.expect_closed();
    std::thread::sleep(Duration::from_millis(600));
    // An exchange the client never finishes ends at the CONNECT timeout.
    let (mut c, first) = start(&b, "stall", METHOD, &sc.first());
    auth_data(&first, R::ContinueAuthentication);
    let t = std::time::Instant::now();
    assert!(c.expect_closed().is_empty());
    assert!(
        t.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        t.elapsed()
    );
}

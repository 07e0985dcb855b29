//! Black-box tests of password authentication on the running broker (real sockets, 1 and 4
//! shards, 3.1.1 and 5.0): a password file made by `mosquitto_passwd` and used unchanged,
//! one made by `ringmq passwd` (argon2id), every CONNECT refusal code, CONNECTs parked while
//! their password is checked off the shard (pipelined packets, hand-off, a full verifier
//! queue; a slow check and the CONNECT timeout in `tests/auth_slow.rs`), the failure
//! throttle, and rumqttc and mosquitto_pub/sub with credentials. SCRAM is in
//! `tests/auth_scram.rs`, ACLs in `tests/acl.rs`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::authfiles::AuthFiles;
use common::{Broker, Client, connect_credentials};
use ringmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode as R};
use ringmq::config::Config;

/// A broker whose `[auth]` table names the files in `files` that exist.
fn auth_broker(shards: usize, files: &AuthFiles, adjust: impl FnOnce(&mut Config)) -> Broker {
    let (passwd, acl) = (files.passwd(), files.acl());
    Broker::start_with(shards, move |c| {
        c.auth.password_file = passwd.exists().then_some(passwd);
        c.auth.acl_file = acl.exists().then_some(acl);
        adjust(c);
    })
}

/// CONNECT with credentials; the CONNACK.
fn try_connect(
    b: &Broker,
    v: ProtocolVersion,
    id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> (Client, ringmq::codec::ConnAck) {
    Client::connect_with(
        b.addr,
        connect_credentials(v, id, user, password.map(str::as_bytes)),
    )
}

/// Asserts a refusal: `v5` at 5.0; at 3.x the return code `v3` (the client decodes it back
/// into the reason code that maps to it), then the connection closes.
fn refused(
    (mut c, ack): (Client, ringmq::codec::ConnAck),
    v: ProtocolVersion,
    v5: R,
    v3: u8,
    what: &str,
) {
    if v.is_v5() {
        assert_eq!(ack.reason, v5, "{what}");
    } else {
        assert_eq!(ack.reason.v3_connack_return_code(), v3, "{what}");
    }
    assert!(!ack.session_present, "{what}");
    c.expect_closed();
}

fn accepted((mut c, ack): (Client, ringmq::codec::ConnAck), what: &str) -> Client {
    assert_eq!(ack.reason, R::Success, "{what}");
    c.ping();
    c
}

/// Every refusal of a password CONNECT, with a file `mosquitto_passwd` wrote, unchanged.
fn refusal_codes(v: ProtocolVersion, shards: usize) {
    let files = AuthFiles::new("codes");
    files.mosquitto_user("alice", "secret", &[]);
    files.mosquitto_user("bob", "hunter2", &["-H", "sha512"]); // mosquitto 1.x `$6$`
    files.write_acl("pattern readwrite clients/%c/#\nuser alice\ntopic readwrite alice/#\n");
    let b = auth_broker(shards, &files, |_| {});
    let id = |n: usize| b.client_id_on("codes", n);
    let ok = |b: &Broker| {
        accepted(
            try_connect(b, v, &id(0), Some("alice"), Some("secret")),
            "ok",
        )
    };
    ok(&b).disconnect();
    accepted(
        try_connect(&b, v, &id(1), Some("bob"), Some("hunter2")),
        "$6$",
    )
    .disconnect();
    // Each failure is followed by a success: the throttle forgets the source then.
    let bad = |user: Option<&str>, pw: Option<&str>, what: &str| {
        let c = try_connect(&b, v, &id(2), user, pw);
        refused(c, v, R::BadUserNameOrPassword, 0x04, what);
        ok(&b).disconnect();
    };
    bad(Some("alice"), Some("wrong"), "wrong password");
    bad(
        Some("mallory"),
        Some("secret"),
        "unknown user: the same answer",
    );
    bad(Some("alice"), None, "user name without password");
    bad(Some(""), Some("secret"), "empty user name");
    let anon = try_connect(&b, v, &id(3), None, None);
    refused(anon, v, R::NotAuthorized, 0x05, "anonymous not allowed");
    let slash = try_connect(&b, v, "a/b", Some("alice"), Some("secret"));
    refused(slash, v, R::ClientIdentifierNotValid, 0x02, "%c with '/'");
    let mut with_will = connect_credentials(v, &id(4), Some("alice"), Some(b"secret"));
    with_will.will = Some(common::will("bob/status", b"gone", QoS::AtMostOnce, false));
    let will = Client::connect_with(b.addr, with_will);
    refused(will, v, R::NotAuthorized, 0x05, "will topic not allowed");
    let mut allowed_will = connect_credentials(v, &id(5), Some("alice"), Some(b"secret"));
    allowed_will.will = Some(common::will(
        "alice/status",
        b"gone",
        QoS::AtMostOnce,
        false,
    ));
    accepted(Client::connect_with(b.addr, allowed_will), "allowed will").disconnect();
}

/// A file `ringmq passwd` wrote (argon2id): with `allow_anonymous = true`, clients without a
/// user name connect too, and a user name without a password file entry is still checked.
fn argon2id_and_anonymous(v: ProtocolVersion, shards: usize) {
    let files = AuthFiles::new("argon2");
    files.ringmq_user("carol", "pa55 word");
    let b = auth_broker(shards, &files, |c| c.auth.allow_anonymous = Some(true));
    let id = |n: usize| b.client_id_on("argon", n);
    accepted(try_connect(&b, v, &id(0), None, None), "anonymous").disconnect();
    let carol = try_connect(&b, v, &id(1), Some("carol"), Some("pa55 word"));
    accepted(carol, "argon2id").disconnect();
    let wrong = try_connect(&b, v, &id(2), Some("carol"), Some("pa55word"));
    refused(wrong, v, R::BadUserNameOrPassword, 0x04, "argon2id wrong");
}

/// Packets pipelined behind a CONNECT wait while its password is checked, then run in
/// order; with 4 shards most clients are handed to another shard after the check.
fn pipelined_behind_a_parked_connect(v: ProtocolVersion, shards: usize) {
    let files = AuthFiles::new("pipeline");
    files.ringmq_user("dave", "pw");
    let b = auth_broker(shards, &files, |_| {});
    for n in 0..4 {
        let id = b.client_id_on("pipe", n);
        let mut c = Client::tcp(b.addr, v);
        let mut bytes = bytes::BytesMut::new();
        let connect = connect_credentials(v, &id, Some("dave"), Some(b"pw"));
        let enc = |p: &Packet, out: &mut bytes::BytesMut| ringmq::codec::encode(p, v, out);
        enc(&Packet::Connect(Box::new(connect)), &mut bytes);
        enc(
            &Packet::Subscribe(ringmq::codec::Subscribe {
                packet_id: common::pid(1),
                filters: vec![(common::filter("pipe/#"), Default::default())],
                properties: Default::default(),
            }),
            &mut bytes,
        );
        enc(
            &Packet::Publish(common::publish("pipe/x", b"self", QoS::AtMostOnce, None)),
            &mut bytes,
        );
        enc(&Packet::PingReq, &mut bytes);
        c.send_bytes(&bytes);
        assert!(matches!(c.recv(), Packet::ConnAck(a) if a.reason == R::Success));
        assert!(matches!(c.recv(), Packet::SubAck(_)));
        match c.recv() {
            Packet::Publish(p) => assert_eq!(&p.payload[..], b"self"),
            other => panic!("expected the pipelined publish, got {other:?}"),
        }
        assert!(matches!(c.recv(), Packet::PingResp));
        c.disconnect();
    }
    // A refused CONNECT's pipelined packets never act: the publish is not routed.
    let (mut watcher, _) =
        try_connect(&b, v, &b.client_id_on("watch", 1), Some("dave"), Some("pw"));
    watcher.subscribe("pipe/#", QoS::AtMostOnce);
    let mut c = Client::tcp(b.addr, v);
    let mut bytes = bytes::BytesMut::new();
    let connect = connect_credentials(v, &b.client_id_on("intruder", 0), Some("dave"), Some(b"no"));
    ringmq::codec::encode(&Packet::Connect(Box::new(connect)), v, &mut bytes);
    let p = common::publish("pipe/x", b"intruder", QoS::AtMostOnce, None);
    ringmq::codec::encode(&Packet::Publish(p), v, &mut bytes);
    c.send_bytes(&bytes);
    let got = c.expect_closed();
    assert!(
        matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason != R::Success),
        "only the refusal: {got:?}"
    );
    watcher.expect_nothing();
}

matrix!(
    refusal_codes,
    argon2id_and_anonymous,
    pipelined_behind_a_parked_connect
);

/// One verifier thread (64 queued checks): a burst of 150 CONNECTs fills the queue; those
/// beyond it are refused as busy at once, the others succeed, nobody waits forever.
#[test]
fn a_full_verifier_queue_answers_server_busy() {
    let files = AuthFiles::new("busy");
    files.ringmq_user("erin", "pw"); // argon2id: ~15 ms a check
    let b = auth_broker(1, &files, |c| c.auth.verifier_threads = 1);
    for v in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let mut clients = Vec::new();
        for i in 0..150 {
            let mut c = Client::tcp(b.addr, v);
            let connect = connect_credentials(v, &format!("burst-{i}"), Some("erin"), Some(b"pw"));
            c.send(&Packet::Connect(Box::new(connect)));
            clients.push(c);
        }
        let (mut ok, mut busy) = (0, 0);
        for mut c in clients {
            match c.recv_within(Duration::from_secs(10)) {
                Ok(Some(Packet::ConnAck(a))) if a.reason == R::Success => ok += 1,
                Ok(Some(Packet::ConnAck(a))) => {
                    let want = if v.is_v5() {
                        R::ServerBusy
                    } else {
                        R::ServerUnavailable
                    };
                    assert_eq!(a.reason, want);
                    busy += 1;
                }
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        eprintln!("{v:?}: {ok} accepted, {busy} refused as busy");
        assert!(ok >= 64, "at least a queue's worth is checked: {ok}");
        assert!(busy > 0, "the burst is beyond the queue");
    }
}

/// Failures from one address are slowed down: after 3 free ones, the 4th sets a 0.5 s
/// delay during which even the right password is refused as busy (v5 0x89, 3.x 0x03)
/// without a check; afterwards it is accepted and the source is forgiven.
#[test]
fn repeated_failures_are_throttled() {
    let files = AuthFiles::new("throttle");
    files.mosquitto_user("frank", "right", &[]);
    let b = auth_broker(2, &files, |_| {});
    for v in [ProtocolVersion::V5, ProtocolVersion::V311] {
        for i in 0..4 {
            let c = try_connect(&b, v, &format!("guess{i}"), Some("frank"), Some("wrong"));
            refused(c, v, R::BadUserNameOrPassword, 0x04, "a guess");
        }
        let c = try_connect(&b, v, "frank", Some("frank"), Some("right"));
        refused(c, v, R::ServerBusy, 0x03, "throttled");
        std::thread::sleep(Duration::from_millis(600));
        accepted(
            try_connect(&b, v, "frank", Some("frank"), Some("right")),
            "later",
        )
        .disconnect();
        // Forgiven: a typo costs nothing again.
        let typo = try_connect(&b, v, "frank", Some("frank"), Some("typo"));
        refused(typo, v, R::BadUserNameOrPassword, 0x04, "typo");
        accepted(
            try_connect(&b, v, "frank", Some("frank"), Some("right")),
            "right",
        )
        .disconnect();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// rumqttc 3.1.1 and 5.0 with credentials: accepted with the right password; the wrong one
/// is refused with the right code.
#[test]
fn rumqttc_with_credentials() {
    let files = AuthFiles::new("rumqttc");
    files.mosquitto_user("grace", "s3cret", &[]);
    let b = auth_broker(2, &files, |_| {});
    let port = b.addr.port();
    runtime().block_on(async move {
        use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions};
        for (password, ok) in [("s3cret", true), ("wrong", false)] {
            let mut o = MqttOptions::new(format!("rq-{password}"), "127.0.0.1", port);
            o.set_credentials("grace", password);
            let (_c, mut lp) = AsyncClient::new(o, 4);
            match tokio::time::timeout(Duration::from_secs(5), lp.poll()).await {
                Ok(Ok(Event::Incoming(rumqttc::Packet::ConnAck(a)))) => {
                    assert!(ok && a.code == ConnectReturnCode::Success, "{a:?}");
                }
                Ok(Err(ConnectionError::ConnectionRefused(code))) => {
                    assert!(!ok);
                    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as Code5, Packet as P5};
        use rumqttc::v5::{AsyncClient as Client5, ConnectionError as E5, Event as Ev5};
        for (password, ok) in [("s3cret", true), ("wrong", false)] {
            let mut o = rumqttc::v5::MqttOptions::new(format!("rq5-{password}"), "127.0.0.1", port);
            o.set_credentials("grace", password);
            let (_c, mut lp) = Client5::new(o, 4);
            match tokio::time::timeout(Duration::from_secs(5), lp.poll()).await {
                Ok(Ok(Ev5::Incoming(P5::ConnAck(a)))) => {
                    assert!(ok && a.code == Code5::Success, "{a:?}");
                }
                Ok(Err(E5::ConnectionRefused(code))) => {
                    assert!(!ok);
                    assert_eq!(code, Code5::BadUserNamePassword);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
}

/// mosquitto_pub / mosquitto_sub at 3.1.1 and 5.0 with `-u`/`-P` against a file
/// mosquitto_passwd wrote: the right password passes a message through, the wrong one is
/// refused (exit status non-zero, "not authorised" / "bad user name or password").
#[test]
fn mosquitto_clients_with_credentials() {
    let files = AuthFiles::new("mosq");
    files.mosquitto_user("heidi", "pw-h", &[]);
    let b = auth_broker(2, &files, |_| {});
    let port = b.addr.port().to_string();
    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("mosq/{version}");
        let mut sub = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-q",
                "1",
                "-C",
                "1",
            ])
            .args(["-W", "10", "-u", "heidi", "-P", "pw-h", "-t", &topic])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub (install mosquitto-clients)");
        std::thread::sleep(Duration::from_millis(500));
        let publish = |password: &str| {
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "1"])
                .args(["-u", "heidi", "-P", password, "-t", &topic, "-m", "hello"])
                .output()
                .expect("mosquitto_pub")
        };
        let bad = publish("nope");
        assert!(!bad.status.success(), "{version}: a wrong password fails");
        let ok = publish("pw-h");
        assert!(
            ok.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let _ = sub.wait();
        let mut out = String::new();
        use std::io::Read;
        sub.stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read");
        assert_eq!(out.trim(), "hello", "{version}");
    }
}

/// A broker whose password file does not parse does not start, and the message names the
/// file and line but never the line's content.
#[test]
fn a_bad_password_file_stops_the_start() {
    let files = AuthFiles::new("badfile");
    files.write_passwd("alice:$7$101$notbase64!!$zz\n");
    let mut config = Config {
        listeners: vec![ringmq::config::ListenerConfig::new(
            ringmq::config::ListenerUrl::mqtt(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        )],
        shards: 1,
        ..Config::default()
    };
    config.auth.password_file = Some(files.passwd());
    config.storage.durability = ringmq::config::Durability::None;
    let err = ringmq::shard::start(config).expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("passwd") && text.contains("line 1"), "{text}");
    assert!(
        !text.contains("notbase64"),
        "the line's content stays out: {text}"
    );
}

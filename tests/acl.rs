//! Black-box tests of the ACL on the running broker (real sockets, 1 and 4 shards, 3.1.1 and
//! 5.0): every rule kind (`topic` read / write / readwrite / bare / deny, `user`, `pattern`
//! with `%c` and `%u`, anonymous rules) on SUBSCRIBE (per filter: v5 0x87, 3.x 0x80),
//! PUBLISH (v5 PUBACK/PUBREC 0x87; 3.x acknowledged and dropped), deliveries through a
//! subscription the ACL covers only in part, retained messages at subscribe, wills, `$SYS`,
//! and reloading the rules on a running broker (revoked subscriptions, refused publishes,
//! a file with errors, reloads under load without a disconnect).

mod common;

use std::time::{Duration, Instant};

use common::authfiles::AuthFiles;
use common::{Broker, Client, connect_credentials, filter, pid, publish};
use ringmq::codec::{
    Packet, ProtocolVersion, QoS, ReasonCode as R, Subscribe, SubscriptionOptions,
};

const RULES: &str = "\
# clients without a user name
topic read public/#
topic write inbox/#

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic read shared/#
topic write shared/alice
topic sensors/+/temp

user admin
topic readwrite #
topic read $SYS/#

pattern read clients/%c/in/#
pattern write clients/%c/out/#
pattern readwrite users/%u/#
pattern deny users/%u/locked
";

/// A broker with `RULES` (or `acl`) and no password file: user names are taken as given.
fn acl_broker(shards: usize, files: &AuthFiles, acl: &str) -> Broker {
    files.write_acl(acl);
    let path = files.acl();
    Broker::start_with(shards, move |c| c.auth.acl_file = Some(path))
}

fn connect_as(b: &Broker, v: ProtocolVersion, id: &str, user: Option<&str>) -> Client {
    let (mut c, ack) = Client::connect_with(b.addr, connect_credentials(v, id, user, None));
    assert_eq!(ack.reason, R::Success, "{id}");
    c.ping();
    c
}

/// One SUBSCRIBE with every filter in `filters` (QoS 1); the SUBACK's codes.
fn subscribe_all(c: &mut Client, filters: &[&str]) -> Vec<R> {
    let packet_id = pid(c.next_packet_id());
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..SubscriptionOptions::default()
    };
    c.send(&Packet::Subscribe(Subscribe {
        packet_id,
        filters: filters.iter().map(|f| (filter(f), options)).collect(),
        properties: Default::default(),
    }));
    match c.recv() {
        Packet::SubAck(a) => a.reasons,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// The SUBACK code the client decodes for a refused filter: v5 0x87, 3.x 0x80.
fn denied(v: ProtocolVersion) -> R {
    if v.is_v5() {
        R::NotAuthorized
    } else {
        R::UnspecifiedError
    }
}

/// Publishes at `qos` and returns the acknowledgement's reason (completing a QoS 2 flow the
/// broker accepted).
fn publish_code(c: &mut Client, topic: &str, qos: QoS) -> R {
    let id = c.next_packet_id();
    c.send(&Packet::Publish(publish(topic, b"m", qos, Some(id))));
    match c.recv() {
        Packet::PubAck(a) => a.reason,
        Packet::PubRec(a) => {
            if !a.reason.is_error() {
                c.send(&Packet::PubRel(ringmq::codec::Ack::new(pid(id))));
                assert!(matches!(c.recv(), Packet::PubComp(_)));
            }
            a.reason
        }
        other => panic!("expected PUBACK/PUBREC, got {other:?}"),
    }
}

fn subscribe_codes_per_filter(v: ProtocolVersion, shards: usize) {
    let files = AuthFiles::new("acl-sub");
    let b = acl_broker(shards, &files, RULES);
    let no = denied(v);
    let mut alice = connect_as(&b, v, "alice-c", Some("alice"));
    let codes = subscribe_all(
        &mut alice,
        &[
            "alice/#",              // partly: alice/secret/# is denied
            "alice/secret/#",       // denied whole
            "shared/#",             // read rule
            "sensors/+/temp",       // bare filter: readwrite
            "sensors/#",            // partly
            "bob/#",                // nothing
            "$SYS/#",               // only where a rule names it
            "clients/alice-c/in/#", // %c
            "clients/other/in/#",   // not this client's
            "users/alice/#",        // %u (partly: users/alice/locked)
            "users/bob/#",          // another user's
            "public/#",             // anonymous rules are not alice's
            "$share/g/alice/x",     // shared subscriptions check the filter
            "$share/g/bob/x",
        ],
    );
    let g = R::GrantedQoS1;
    assert_eq!(
        codes,
        vec![g, no, g, g, g, no, no, g, no, g, no, no, g, no],
        "{v:?}"
    );
    let mut anon = connect_as(&b, v, "anon-c", None);
    let codes = subscribe_all(&mut anon, &["public/#", "inbox/x", "alice/#", "#"]);
    assert_eq!(
        codes,
        vec![g, no, no, g],
        "write-only is not readable; # partly"
    );
    let mut admin = connect_as(&b, v, "admin-c", Some("admin"));
    assert_eq!(subscribe_all(&mut admin, &["#", "$SYS/#"]), vec![g, g]);
}

fn publish_checks(v: ProtocolVersion, shards: usize) {
    let files = AuthFiles::new("acl-pub");
    let b = acl_broker(shards, &files, RULES);
    let mut admin = connect_as(&b, v, &b.client_id_on("admin", 1), Some("admin"));
    assert_eq!(subscribe_all(&mut admin, &["#"]), vec![R::GrantedQoS1]);
    let alice_id = b.client_id_on("alice", 0);
    let mut alice = connect_as(&b, v, &alice_id, Some("alice"));
    let refused = if v.is_v5() {
        R::NotAuthorized
    } else {
        R::Success
    };
    for (topic, qos, allowed) in [
        ("alice/x", QoS::AtLeastOnce, true),
        ("alice/secret/x", QoS::AtLeastOnce, false),
        ("shared/alice", QoS::ExactlyOnce, true),
        ("shared/bob", QoS::ExactlyOnce, false),
        ("sensors/k/temp", QoS::AtLeastOnce, true),
        ("bob/x", QoS::AtLeastOnce, false),
        (&format!("clients/{alice_id}/out/1"), QoS::AtLeastOnce, true),
        ("clients/other/out/1", QoS::AtLeastOnce, false),
        ("users/alice/data", QoS::AtLeastOnce, true),
        ("users/alice/locked", QoS::AtLeastOnce, false),
        ("users/bob/data", QoS::AtLeastOnce, false),
    ] {
        let want = if allowed { R::Success } else { refused };
        assert_eq!(publish_code(&mut alice, topic, qos), want, "{topic}");
    }
    // QoS 0 has no answer: a refused one is dropped.
    alice.send(&Packet::Publish(publish(
        "bob/q0",
        b"m",
        QoS::AtMostOnce,
        None,
    )));
    alice.send(&Packet::Publish(publish(
        "alice/q0",
        b"m",
        QoS::AtMostOnce,
        None,
    )));
    alice.ping();
    let got = admin.received_topics();
    let want = [
        "alice/q0",
        "alice/x",
        &format!("clients/{alice_id}/out/1"),
        "sensors/k/temp",
        "shared/alice",
        "users/alice/data",
    ];
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "only allowed publishes are routed");
    let mut anon = connect_as(&b, v, &b.client_id_on("anon", 2), None);
    assert_eq!(
        publish_code(&mut anon, "inbox/1", QoS::AtLeastOnce),
        R::Success
    );
    assert_eq!(
        publish_code(&mut anon, "public/x", QoS::AtLeastOnce),
        refused
    );
    assert_eq!(admin.received_topics(), vec!["inbox/1".to_owned()]);
    alice.ping();
    anon.ping();
}

/// A subscription the ACL covers in part delivers only what the client may read, live and
/// from the retained store.
fn partial_subscriptions_filter_deliveries(v: ProtocolVersion, shards: usize) {
    let files = AuthFiles::new("acl-partial");
    let b = acl_broker(shards, &files, RULES);
    let mut admin = connect_as(&b, v, &b.client_id_on("admin", 0), Some("admin"));
    for t in [
        "alice/r",
        "alice/secret/r",
        "bob/r",
        "shared/r",
        "users/alice/locked",
    ] {
        admin.publish(t, b"kept", QoS::AtLeastOnce, true);
    }
    let mut alice = connect_as(&b, v, &b.client_id_on("alice", 1), Some("alice"));
    assert_eq!(subscribe_all(&mut alice, &["#"]), vec![R::GrantedQoS1]);
    assert_eq!(
        alice.received_topics(),
        vec!["alice/r", "shared/r"],
        "retained"
    );
    for t in [
        "alice/x",
        "alice/secret/x",
        "bob/x",
        "shared/x",
        "users/alice/y",
    ] {
        for _ in 0..3 {
            admin.publish(t, b"live", QoS::AtLeastOnce, false);
        }
    }
    let got = alice.received_topics();
    let mut want: Vec<String> = ["alice/x", "shared/x", "users/alice/y"]
        .iter()
        .flat_map(|t| std::iter::repeat_n(t.to_string(), 3))
        .collect();
    want.sort();
    assert_eq!(got, want, "live, per topic, every time");
    // A second, overlapping filter (partial too) brings its retained message, and still
    // nothing unreadable; a topic both filters match arrives once per subscription (the
    // default `overlapping_subscriptions`).
    assert_eq!(
        subscribe_all(&mut alice, &["alice/#"]),
        vec![R::GrantedQoS1]
    );
    admin.publish("alice/secret/z", b"no", QoS::AtLeastOnce, false);
    admin.publish("alice/z", b"yes", QoS::AtLeastOnce, false);
    assert_eq!(
        alice.received_topics(),
        vec!["alice/r", "alice/z", "alice/z"]
    );
}

matrix!(
    subscribe_codes_per_filter,
    publish_checks,
    partial_subscriptions_filter_deliveries
);

/// The will is checked at CONNECT (tests/auth.rs) and again when it is published: rules
/// reloaded in between that take the right away keep it from being routed.
#[test]
fn a_will_is_checked_again_when_published() {
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let files = AuthFiles::new("acl-will");
        let b = acl_broker(2, &files, RULES);
        let mut admin = connect_as(&b, v, &b.client_id_on("admin", 0), Some("admin"));
        assert_eq!(subscribe_all(&mut admin, &["#"]), vec![R::GrantedQoS1]);
        for (revoke, expect) in [(false, true), (true, false)] {
            files.write_acl(RULES);
            b.reload_auth().expect("reload");
            let mut connect =
                connect_credentials(v, &b.client_id_on("alice", 1), Some("alice"), None);
            connect.will = Some(common::will("alice/will", b"bye", QoS::AtLeastOnce, false));
            let (mut alice, ack) = Client::connect_with(b.addr, connect);
            assert_eq!(ack.reason, R::Success);
            alice.ping();
            if revoke {
                files.write_acl(&RULES.replace("topic readwrite alice/#", "topic read alice/#"));
                b.reload_auth().expect("reload");
                std::thread::sleep(Duration::from_millis(100));
            }
            alice.drop_connection();
            let got = admin.received_topics();
            assert_eq!(
                got == vec!["alice/will".to_owned()],
                expect,
                "{v:?} {got:?}"
            );
        }
    }
}

/// Reloading: a client whose rules shrink loses the subscriptions it may no longer hold
/// (nothing more arrives through them) and, at 5.0, its next PUBLISH there is refused
/// 0x87; nobody is disconnected; a file with an error keeps the rules in force.
#[test]
fn reload_shrinks_permissions_of_connected_clients() {
    for shards in [1, 4] {
        for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let files = AuthFiles::new("acl-reload");
            let b = acl_broker(shards, &files, RULES);
            let mut admin = connect_as(&b, v, &b.client_id_on("admin", 0), Some("admin"));
            let mut alice = connect_as(&b, v, &b.client_id_on("alice", 1), Some("alice"));
            let g = R::GrantedQoS1;
            assert_eq!(
                subscribe_all(&mut alice, &["shared/#", "alice/#"]),
                vec![g, g]
            );
            admin.publish("shared/1", b"a", QoS::AtLeastOnce, false);
            assert_eq!(alice.received_topics(), vec!["shared/1"]);
            // A file with an error: refused, with the line; the old rules stay.
            files.write_acl(&format!("{RULES}topic bogus-access x y\n"));
            let err = b.reload_auth().expect_err("bad file refused");
            assert!(err.contains("line 20"), "{err}");
            admin.publish("shared/2", b"a", QoS::AtLeastOnce, false);
            assert_eq!(alice.received_topics(), vec!["shared/2"]);
            // Shrink: no shared/#, alice/# read only.
            let shrunk = RULES
                .replace("topic read shared/#\n", "")
                .replace("topic readwrite alice/#", "topic read alice/#");
            files.write_acl(&shrunk);
            b.reload_auth().expect("reload");
            let t = Instant::now();
            let refused = if v.is_v5() {
                R::NotAuthorized
            } else {
                R::Success
            };
            while publish_code(&mut alice, "alice/x", QoS::AtLeastOnce) != refused {
                assert!(t.elapsed() < Duration::from_secs(1), "in force within 1 s");
            }
            std::thread::sleep(Duration::from_millis(50));
            admin.publish("shared/3", b"a", QoS::AtLeastOnce, false);
            admin.publish("alice/y", b"a", QoS::AtLeastOnce, false);
            assert_eq!(alice.received_topics(), vec!["alice/y"], "{v:?} {shards}");
            // Still connected, and the revoked filter is gone for good.
            alice.ping();
            files.write_acl(RULES);
            b.reload_auth().expect("reload");
            std::thread::sleep(Duration::from_millis(50));
            admin.publish("shared/4", b"a", QoS::AtLeastOnce, false);
            assert!(alice.received_topics().is_empty(), "revoked, not suspended");
            admin.ping();
        }
    }
}

/// Reloads every 100 ms while publishers and subscribers run at QoS 1: no connection is
/// closed, no acknowledged message allowed by both rule sets is lost, and the last rules
/// are in force within a second.
#[test]
fn reload_under_load_disconnects_nobody() {
    let files = AuthFiles::new("acl-load");
    let base = "topic readwrite load/#\n";
    let b = acl_broker(2, &files, base);
    let v = ProtocolVersion::V5;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..4 {
        let addr = b.addr;
        let stop = stop.clone();
        let id = b.client_id_on(&format!("load{i}"), i);
        threads.push(std::thread::spawn(move || {
            let (mut c, ack) = Client::connect_with(addr, connect_credentials(v, &id, None, None));
            assert_eq!(ack.reason, R::Success);
            assert_eq!(
                subscribe_all(&mut c, &[&format!("load/{i}/#")]),
                vec![R::GrantedQoS1]
            );
            let (mut sent, mut got) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = c.next_packet_id();
                c.send(&Packet::Publish(publish(
                    &format!("load/{i}/m"),
                    b"x",
                    QoS::AtLeastOnce,
                    Some(id),
                )));
                sent += 1;
                // Our own message and our PUBACK, in either order.
                let mut acked = false;
                let mut delivered = false;
                while !(acked && delivered) {
                    match c.recv() {
                        Packet::PubAck(a) => {
                            assert_eq!(a.reason, R::Success);
                            acked = true;
                        }
                        Packet::Publish(p) => {
                            c.ack(&p);
                            delivered = true;
                            got += 1;
                        }
                        other => panic!("client {i}: unexpected {other:?}"),
                    }
                }
            }
            c.ping();
            (sent, got)
        }));
    }
    let other = format!("{base}topic read other/#\n");
    let started = Instant::now();
    let mut reloads = 0;
    while started.elapsed() < Duration::from_secs(3) {
        files.write_acl(if reloads % 2 == 0 { &other } else { base });
        b.reload_auth().expect("reload");
        reloads += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for t in threads {
        let (sent, got) = t.join().expect("client thread kept its connection");
        assert_eq!(sent, got);
        total += sent;
    }
    eprintln!("{reloads} reloads under load; {total} QoS 1 round trips, none lost");
    // The last rules are in force within a second: load/0 becomes forbidden.
    files.write_acl("topic readwrite load/1/#\n");
    b.reload_auth().expect("reload");
    let mut c = connect_as(&b, v, "late", None);
    let t = Instant::now();
    while publish_code(&mut c, "load/0/m", QoS::AtLeastOnce) != R::NotAuthorized {
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}

/// Rules for the tests of messages that wait in a session: alice reads `x/#`, bob only
/// `x/open/#`.
const WAITING_RULES: &str = "\
user alice
topic read x/#

user bob
topic read x/open/#

user admin
topic readwrite #
";

/// `WAITING_RULES` after alice lost `x/secret/#`.
fn alice_denied_secret() -> String {
    WAITING_RULES.replace(
        "topic read x/#\n",
        "topic read x/#\ntopic deny x/secret/#\n",
    )
}

/// A CONNECT as `user` that resumes (or makes) a persistent session.
fn persistent_as(v: ProtocolVersion, id: &str, user: &str) -> ringmq::codec::Connect {
    let mut c = connect_credentials(v, id, Some(user), None);
    c.clean_start = false;
    if v.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

/// The next packet, a PUBLISH, left unacknowledged (its flow stays in flight); its topic.
fn recv_unacked(c: &mut Client) -> String {
    match c.recv() {
        Packet::Publish(p) => p.topic.as_str().to_owned(),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// alice's persistent session on `x/#` with `x/secret/1` in flight (sent, never
/// acknowledged) and, with `live` false, the connection dropped and `x/open/1`,
/// `x/secret/2` (QoS 1), `x/secret/3`, `x/open/2` (QoS 2) queued; with `live` true, these
/// are in flight too and the connection stays (returned).
fn alice_with_waiting_messages(
    b: &Broker,
    v: ProtocolVersion,
    id: &str,
    live: bool,
) -> Option<Client> {
    let mut admin = connect_as(b, v, &b.client_id_on("admin", 0), Some("admin"));
    let (mut alice, ack) = Client::connect_with(b.addr, persistent_as(v, id, "alice"));
    assert_eq!(ack.reason, R::Success);
    assert_eq!(subscribe_all(&mut alice, &["x/#"]), vec![R::GrantedQoS1]);
    admin.publish("x/secret/1", b"m", QoS::AtLeastOnce, false);
    assert_eq!(recv_unacked(&mut alice), "x/secret/1");
    let mut alice = if live {
        Some(alice)
    } else {
        alice.drop_connection();
        std::thread::sleep(Duration::from_millis(100));
        None
    };
    admin.publish("x/open/1", b"m", QoS::AtLeastOnce, false);
    admin.publish("x/secret/2", b"m", QoS::AtLeastOnce, false);
    admin.publish("x/secret/3", b"m", QoS::ExactlyOnce, false);
    admin.publish("x/open/2", b"m", QoS::ExactlyOnce, false);
    if let Some(alice) = alice.as_mut() {
        for _ in 0..4 {
            recv_unacked(alice);
        }
    }
    alice
}

/// Read permission is checked when a message is sent: a session's queued and unacknowledged
/// messages reach its client after a reload only if the new rules let it read them; those
/// it may not read are gone for good (not resent at the next resume).
#[test]
fn a_resumed_session_gets_only_what_the_rules_let_it_read_now() {
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let files = AuthFiles::new("acl-resume");
        let b = acl_broker(2, &files, WAITING_RULES);
        let id = b.client_id_on("alice", 1);
        alice_with_waiting_messages(&b, v, &id, false);
        files.write_acl(&alice_denied_secret());
        b.reload_auth().expect("reload");
        std::thread::sleep(Duration::from_millis(200));
        let (mut alice, ack) = Client::connect_with(b.addr, persistent_as(v, &id, "alice"));
        assert!(ack.session_present);
        assert_eq!(
            alice.received_topics(),
            vec!["x/open/1", "x/open/2"],
            "{v:?}"
        );
        alice.disconnect();
        let (mut alice, ack) = Client::connect_with(b.addr, persistent_as(v, &id, "alice"));
        assert!(ack.session_present);
        assert!(
            alice.received_topics().is_empty(),
            "{v:?}: dropped, not kept"
        );
    }
}

/// Another user who takes over a client id (clean session 0) gets the waiting messages it
/// may read and none of the others, whether the old connection was gone or still open.
#[test]
fn another_user_resuming_a_client_id_gets_only_what_it_may_read() {
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for live in [false, true] {
            let files = AuthFiles::new("acl-takeover");
            let b = acl_broker(2, &files, WAITING_RULES);
            let id = b.client_id_on("alice", 1);
            let _alice = alice_with_waiting_messages(&b, v, &id, live);
            let (mut bob, ack) = Client::connect_with(b.addr, persistent_as(v, &id, "bob"));
            assert!(ack.session_present);
            assert_eq!(
                bob.received_topics(),
                vec!["x/open/1", "x/open/2"],
                "{v:?} live {live}"
            );
        }
    }
}

/// A reload takes from a connected client's queue what it may no longer read: with a
/// window of 1, the messages behind an unacknowledged one are checked when the window
/// frees, under the rules then in force.
#[test]
fn a_reload_checks_what_waits_for_a_connected_client() {
    let v = ProtocolVersion::V5;
    let files = AuthFiles::new("acl-queue");
    let b = acl_broker(2, &files, WAITING_RULES);
    let mut admin = connect_as(&b, v, &b.client_id_on("admin", 0), Some("admin"));
    let mut connect = connect_credentials(v, &b.client_id_on("alice", 1), Some("alice"), None);
    connect.properties.receive_maximum = Some(1);
    let (mut alice, ack) = Client::connect_with(b.addr, connect);
    assert_eq!(ack.reason, R::Success);
    assert_eq!(subscribe_all(&mut alice, &["x/#"]), vec![R::GrantedQoS1]);
    for t in ["x/open/1", "x/secret/1", "x/open/2"] {
        admin.publish(t, b"m", QoS::AtLeastOnce, false);
    }
    let first = match alice.recv() {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    assert_eq!(first.topic.as_str(), "x/open/1");
    files.write_acl(&alice_denied_secret());
    b.reload_auth().expect("reload");
    std::thread::sleep(Duration::from_millis(200));
    alice.ack(&first);
    assert_eq!(alice.received_topics(), vec!["x/open/2"]);
}

/// mosquitto_sub as a user whose `#` the ACL covers in part receives only what it may read.
#[test]
fn mosquitto_sub_through_a_partial_subscription() {
    let files = AuthFiles::new("acl-mosq");
    let b = acl_broker(2, &files, RULES);
    let port = b.addr.port().to_string();
    let sub = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1"])
        .args(["-u", "alice", "-t", "#", "-v", "-C", "2", "-W", "10"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (install mosquitto-clients)");
    std::thread::sleep(Duration::from_millis(500));
    let mut admin = connect_as(&b, ProtocolVersion::V311, "admin", Some("admin"));
    for t in ["bob/1", "alice/1", "alice/secret/1", "shared/1"] {
        admin.publish(t, b"m", QoS::AtLeastOnce, false);
    }
    let out = sub.wait_with_output().expect("mosquitto_sub");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "alice/1 m\nshared/1 m\n");
}

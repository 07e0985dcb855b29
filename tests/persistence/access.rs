//! The ACL across a restart: the store keeps no user name, so a restored session is
//! attributed to its user when its client connects again; what waits in it (queued before
//! the stop, in flight, or queued for it after the start) reaches the client only if the
//! rules in force then let it read the topic.

use std::time::Duration;

use ringmq::codec::{Packet, ProtocolVersion, QoS};

use crate::common::authfiles::AuthFiles;
use crate::common::process::{BrokerProcess, DataDir};
use crate::common::{Client, connect_credentials};

const RULES: &str = "user alice\ntopic read x/#\n\nuser admin\ntopic readwrite #\n";

/// A CONNECT as `user`, persistent (3.x clean session 0, v5 an expiry of an hour).
fn persistent_as(v: ProtocolVersion, id: &str, user: &str) -> ringmq::codec::Connect {
    let mut c = connect_credentials(v, id, Some(user), None);
    c.clean_start = false;
    if v.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

fn unreadable_after_restart(v: ProtocolVersion) {
    let dir = DataDir::new("acl-restart");
    let files = AuthFiles::new("acl-restart");
    files.write_acl(RULES);
    let config = dir.0.join("ringmq.toml");
    let acl = files.acl();
    let text = format!("[auth]\nacl_file = \"{}\"\n", AuthFiles::path_str(&acl));
    std::fs::write(&config, text).expect("write config");
    let args = ["--shards", "2", "--config", AuthFiles::path_str(&config)];
    let broker = BrokerProcess::start_in(&dir, &args);
    let admin = |addr| {
        let (c, _) =
            Client::connect_with(addr, connect_credentials(v, "admin", Some("admin"), None));
        c
    };
    let (mut alice, ack) = Client::connect_with(broker.addr, persistent_as(v, "alice", "alice"));
    assert!(!ack.session_present);
    alice.subscribe("x/#", QoS::AtLeastOnce);
    let mut publisher = admin(broker.addr);
    publisher.publish("x/secret/1", b"m", QoS::AtLeastOnce, false);
    match alice.recv() {
        // Left unacknowledged: in flight across the restart.
        Packet::Publish(p) => assert_eq!(p.topic.as_str(), "x/secret/1"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    alice.drop_connection();
    std::thread::sleep(Duration::from_millis(100));
    publisher.publish("x/open/1", b"m", QoS::AtLeastOnce, false);
    publisher.publish("x/secret/2", b"m", QoS::ExactlyOnce, false);
    publisher.disconnect();

    let status = broker.terminate(Duration::from_secs(10));
    assert!(status.success(), "clean stop: {status}");
    files.write_acl(&RULES.replace(
        "topic read x/#\n",
        "topic read x/#\ntopic deny x/secret/#\n",
    ));
    let broker = BrokerProcess::start_in(&dir, &args);
    // Queued for the restored session before its client is back.
    let mut publisher = admin(broker.addr);
    publisher.publish("x/secret/3", b"m", QoS::AtLeastOnce, false);
    publisher.publish("x/open/2", b"m", QoS::AtLeastOnce, false);

    let (mut alice, ack) = Client::connect_with(broker.addr, persistent_as(v, "alice", "alice"));
    assert!(ack.session_present, "the session survived the restart");
    assert_eq!(
        alice.received_topics(),
        vec!["x/open/1", "x/open/2"],
        "{v:?}"
    );
    alice.disconnect();
    let dropped: Vec<String> = broker
        .log()
        .lines()
        .filter(|l| l.contains("waiting message(s) dropped"))
        .map(str::to_owned)
        .collect();
    assert_eq!(dropped.len(), 1, "one line per resume: {dropped:?}");
    assert!(
        dropped[0].contains("client alice (user alice): 3 waiting message(s) dropped"),
        "{dropped:?}"
    );

    // Dropped from the store too: neither the next resume nor the next restart sends them.
    let status = broker.terminate(Duration::from_secs(10));
    assert!(status.success(), "clean stop: {status}");
    files.write_acl(RULES);
    let broker = BrokerProcess::start_in(&dir, &args);
    let (mut alice, ack) = Client::connect_with(broker.addr, persistent_as(v, "alice", "alice"));
    assert!(ack.session_present);
    assert!(alice.received_topics().is_empty(), "{v:?}");
}

#[test]
fn unreadable_after_restart_v311() {
    unreadable_after_restart(ProtocolVersion::V311);
}

#[test]
fn unreadable_after_restart_v5() {
    unreadable_after_restart(ProtocolVersion::V5);
}

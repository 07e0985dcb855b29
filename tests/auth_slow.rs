//! A password check that takes seconds (PBKDF2 with millions of rounds, written by
//! mosquitto_passwd -I): the shard keeps serving other clients while it runs on a verifier
//! thread, and the CONNECT timeout still ends the parked connection. In a test binary of its
//! own so that no sibling test loads the CPU while the check is calibrated.

mod common;

use std::time::{Duration, Instant};

use common::authfiles::AuthFiles;
use common::{Broker, Client, connect_credentials};
use ringmq::codec::{Packet, ProtocolVersion, ReasonCode as R};

/// PBKDF2 rounds (mosquitto_passwd -I) whose check takes about `target` in this build, from
/// a check of 50,000 rounds timed here (the broker runs in this process, with the same code).
fn rounds_taking(target: Duration) -> u32 {
    let files = AuthFiles::new("calibrate");
    files.mosquitto_user("c", "pw", &["-I", "50000"]);
    let line = std::fs::read_to_string(files.passwd()).expect("passwd");
    let field = line.trim().split(':').nth(1).expect("hash field");
    let hash = ringmq::auth::password::PasswordHash::parse(field).expect("$7$ hash");
    let t = Instant::now();
    assert!(hash.verify(b"pw"));
    let per_round = t.elapsed().as_secs_f64() / 50_000.0;
    (target.as_secs_f64() / per_round).clamp(100_000.0, 10_000_000.0) as u32
}

/// A password that takes about 6 s to check: the shard keeps serving others meanwhile (the
/// hash runs on a verifier thread), and the CONNECT timeout (1 s) still ends the parked
/// connection.
#[test]
fn a_slow_check_blocks_no_shard_and_the_connect_timeout_still_holds() {
    let files = AuthFiles::new("slow");
    files.mosquitto_user("fast", "pw", &[]);
    let rounds = rounds_taking(Duration::from_secs(6)).to_string();
    files.mosquitto_user("slow", "pw", &["-I", &rounds]);
    let passwd = files.passwd();
    let b = Broker::start_with(1, move |c| {
        c.auth.password_file = Some(passwd);
        c.limits.connect_timeout_secs = 1;
        c.auth.verifier_threads = 1;
    });
    let v = ProtocolVersion::V5;
    let mut other = accepted(&b, "other", "fast", "pw");
    let started = Instant::now();
    let mut slow = Client::tcp(b.addr, v);
    let connect = connect_credentials(v, "slowpoke", Some("slow"), Some(b"pw"));
    slow.send(&Packet::Connect(Box::new(connect)));
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(800) {
        let t = Instant::now();
        other.ping();
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        worst < Duration::from_millis(50),
        "PINGRESP took {worst:?} during a check"
    );
    let got = slow.expect_closed();
    let waited = started.elapsed();
    assert!(
        got.is_empty(),
        "closed by the CONNECT timeout, no CONNACK: {got:?}"
    );
    assert!(
        waited < Duration::from_millis(3_000),
        "closed before the check ended ({waited:?}, {rounds} rounds)"
    );
    other.ping();
}

fn accepted(b: &Broker, id: &str, user: &str, password: &str) -> Client {
    let c = connect_credentials(
        ProtocolVersion::V5,
        id,
        Some(user),
        Some(password.as_bytes()),
    );
    let (mut c, ack) = Client::connect_with(b.addr, c);
    assert_eq!(ack.reason, R::Success);
    c.ping();
    c
}

//! A password-guessing flood against the broker as a process: 1,000 wrong-password CONNECTs
//! a second from one address while another client pings every 10 ms. Its PINGRESP must stay
//! under 10 ms (the hashing runs on the verifier threads, the throttle refuses the flood
//! without hashing, and refusals log one line a second). Prints the latency distribution
//! and the answers the flood got; `cargo test --release --test auth_load -- --nocapture`
//! for the figures in the README.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::authfiles::AuthFiles;
use common::process::{BrokerProcess, DataDir};
use common::{Client, connect_credentials};
use ringmq::codec::{self, Packet, ProtocolVersion, ReasonCode as R};

const FLOOD_PER_S: u64 = 1_000;
const FLOOD_THREADS: u64 = 4;
const RUN: Duration = Duration::from_secs(5);
const BASELINE: Duration = Duration::from_secs(2);

/// One guess: connect, CONNECT with a wrong password, read the CONNACK's return code.
fn guess(port: u16, connect: &[u8]) -> Option<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(connect).ok()?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).ok()?;
    Some(ack[3])
}

/// PINGREQ every 10 ms for `run`; the round trips, sorted.
fn ping_for(pinger: &mut Client, run: Duration) -> Vec<Duration> {
    let mut rtts = Vec::new();
    let started = Instant::now();
    while started.elapsed() < run {
        let t = Instant::now();
        pinger.ping();
        rtts.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    rtts.sort();
    rtts
}

fn distribution(rtts: &[Duration]) -> String {
    format!(
        "PINGRESP over {} pings: p50 {:?}, p90 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        rtts.len(),
        percentile(rtts, 0.5),
        percentile(rtts, 0.9),
        percentile(rtts, 0.99),
        percentile(rtts, 0.999),
        rtts[rtts.len() - 1]
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn a_guessing_flood_leaves_pings_under_10_ms() {
    let files = AuthFiles::new("flood");
    files.ringmq_user("victim", "correct horse"); // argon2id
    let data = DataDir::new("flood");
    let config = data.0.join("ringmq.toml");
    let text = format!(
        "[auth]\npassword_file = \"{}\"\n",
        AuthFiles::path_str(&files.passwd())
    );
    std::fs::write(&config, text).expect("config");
    let broker = BrokerProcess::start_in(
        &data,
        &["--shards", "2", "--config", AuthFiles::path_str(&config)],
    );
    let port = broker.addr.port();
    let v = ProtocolVersion::V311;
    let login = connect_credentials(v, "pinger", Some("victim"), Some(b"correct horse"));
    let (mut pinger, ack) = Client::connect_with(broker.addr, login);
    assert_eq!(ack.reason, R::Success);
    let fds_before = broker.open_fds();
    // The same pings without the flood first: what this machine gives anyway.
    let baseline = ping_for(&mut pinger, BASELINE);
    eprintln!("without the flood: {}", distribution(&baseline));

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new([0u64; 256]));
    let sent = Arc::new(AtomicU64::new(0));
    let mut flood = Vec::new();
    for t in 0..FLOOD_THREADS {
        let (stop, answers, sent) = (stop.clone(), answers.clone(), sent.clone());
        flood.push(std::thread::spawn(move || {
            let mut bytes = BytesMut::new();
            let c = connect_credentials(v, &format!("guess{t}"), Some("victim"), Some(b"nope"));
            codec::encode(&Packet::Connect(Box::new(c)), v, &mut bytes);
            let interval = Duration::from_micros(1_000_000 * FLOOD_THREADS / FLOOD_PER_S);
            let start = Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let due = start + interval * n;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                n += 1;
                let code = guess(port, &bytes);
                sent.fetch_add(1, Ordering::SeqCst);
                let mut a = answers.lock().expect("answers");
                a[code.map_or(255, usize::from)] += 1;
            }
        }));
    }
    let started = Instant::now();
    let rtts = ping_for(&mut pinger, RUN);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for t in flood {
        t.join().expect("flood thread");
    }
    let rate = sent.load(Ordering::SeqCst) as f64 / elapsed.as_secs_f64();
    let a = answers.lock().expect("answers");
    eprintln!(
        "flood: {rate:.0} wrong-password CONNECTs/s from 127.0.0.1 for {elapsed:.1?}; answers: \
         0x04 bad password {}, 0x03 refused by the throttle {}, other {}, no answer {}",
        a[4],
        a[3],
        a.iter().sum::<u64>() - a[4] - a[3] - a[255],
        a[255]
    );
    eprintln!("during the flood: {}", distribution(&rtts));
    assert!(
        rate >= 0.9 * FLOOD_PER_S as f64,
        "the flood ran at {rate:.0}/s"
    );
    assert!(a[3] > a[4], "the throttle answered most of the flood");
    assert_eq!(a[255], 0, "every guess got an answer");
    assert!(
        percentile(&rtts, 0.99) < Duration::from_millis(10),
        "p99 PINGRESP {:?}",
        percentile(&rtts, 0.99)
    );
    pinger.ping();
    // Every refused connection was closed (a little slack for sockets still closing).
    std::thread::sleep(Duration::from_millis(300));
    let fds_after = broker.open_fds();
    assert!(
        fds_after <= fds_before + 8,
        "fds {fds_before} -> {fds_after}"
    );
    let log = broker.log();
    let throttle_lines = log.matches("refused as busy").count();
    assert!(
        throttle_lines <= 2 * (RUN.as_secs() as usize + 2),
        "{throttle_lines} log lines"
    );
}

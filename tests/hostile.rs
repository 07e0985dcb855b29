//! Soak with a hostile mix (ignored by default; minutes long):
//!
//! ```sh
//! cargo test --release --test hostile -- --ignored --nocapture
//! HOSTILE_SECS=600 cargo test --release --test hostile -- --ignored --nocapture
//! ```
//!
//! The `ringmq` binary runs as a child process (2 shards). Four QoS 1 publisher/subscriber
//! pairs publish as fast as their acknowledgements come (one message in flight each) for a
//! baseline third of the run; then, for the rest, hostile and unlucky clients join:
//! - SUBSCRIBE floods: packets of 256 `#` filters over 2,000 retained messages, never read;
//! - four QoS 1 subscribers of all the normal traffic that never read (disconnected after
//!   `slow_consumer_timeout_secs`, and back);
//! - 300 connections each sending a 1 MB PUBLISH short of its last 10 bytes (partial input);
//! - a takeover storm: four threads connecting and dropping five client ids in turn;
//! - descriptor exhaustion: 5 s in, the broker's open-files limit is lowered to what it
//!   uses plus 600 and 900 more connections are opened.
//!
//! It asserts that normal traffic keeps at least 80% of its baseline rate, that the broker's
//! RSS stays bounded (peak under hostile load at most 160 MB above the baseline peak: the
//! partial-input budget is 64 MiB, the rest is the queues and buffers the limits allow), and
//! that every acknowledged normal message reached its subscriber. Figures are printed.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{BrokerProcess, DataDir};
use common::{Client, connect_packet, filter};
use ringmq::codec::{
    self, Packet, ProtocolVersion, QoS, Subscribe, SubscribeProperties, SubscriptionOptions,
};

const PAIRS: usize = 4;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Shared {
    stop: AtomicBool,
    /// Attackers run while set.
    attack: AtomicBool,
    acked: AtomicU64,
    /// Per pair: messages acknowledged to the publisher and received by the subscriber. A
    /// publisher waits while its subscriber is 200 behind (end-to-end flow control: the
    /// subscriber's queue never overflows, so every acknowledged message must arrive).
    pair_sent: Vec<AtomicU64>,
    pair_got: Vec<AtomicU64>,
    /// Per pair: sequence numbers acknowledged to the publisher / received by the subscriber.
    sent: Vec<Mutex<HashSet<u64>>>,
    got: Vec<Mutex<HashSet<u64>>>,
    attacks: AtomicU64,
}

fn encode(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    codec::encode(p, v, &mut out);
    out.to_vec()
}

fn connect_bytes(id: &str, clean: bool) -> Vec<u8> {
    encode(
        &Packet::Connect(Box::new(connect_packet(ProtocolVersion::V311, id, clean))),
        ProtocolVersion::V311,
    )
}

/// A connection attempt that gives up after a second (a broker out of descriptors leaves
/// new connections in its backlog).
fn dial(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let t = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    t.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(t)
}

fn publisher(i: usize, addr: SocketAddr, s: Arc<Shared>) {
    let mut c = Client::connect(addr, ProtocolVersion::V311, &format!("pub-{i}"), true).0;
    let mut seq = 0u64;
    while !s.stop.load(Ordering::Relaxed) {
        c.publish(
            &format!("n/{i}"),
            &seq.to_be_bytes(),
            QoS::AtLeastOnce,
            false,
        );
        s.sent[i].lock().unwrap().insert(seq);
        s.acked.fetch_add(1, Ordering::Relaxed);
        s.pair_sent[i].fetch_add(1, Ordering::Relaxed);
        seq += 1;
        while s.pair_sent[i].load(Ordering::Relaxed) > s.pair_got[i].load(Ordering::Relaxed) + 200
            && !s.stop.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn subscriber(i: usize, mut c: Client, s: Arc<Shared>) {
    loop {
        match c.recv_within(Duration::from_millis(500)) {
            Ok(Some(Packet::Publish(p))) => {
                c.ack(&p);
                let seq = u64::from_be_bytes(p.payload[..8].try_into().expect("8 bytes"));
                s.got[i].lock().unwrap().insert(seq);
                s.pair_got[i].fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(_)) => {}
            Ok(None) if s.stop.load(Ordering::Relaxed) => return,
            Ok(None) => {}
            Err(e) => panic!("normal subscriber {i} lost its connection: {e}"),
        }
    }
}

fn subscribe_flood(addr: SocketAddr, s: Arc<Shared>) {
    let filters = vec![(filter("#"), SubscriptionOptions::default()); 256];
    let packet = encode(
        &Packet::Subscribe(Subscribe {
            packet_id: common::pid(1),
            filters,
            properties: SubscribeProperties::default(),
        }),
        ProtocolVersion::V311,
    );
    let mut n = 0;
    while s.attack.load(Ordering::Relaxed) {
        if let Ok(mut t) = dial(addr) {
            let _ = t.write_all(&connect_bytes(&format!("flood-{n}"), true));
            let _ = t.write_all(&packet);
            s.attacks.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(200));
        }
        n += 1;
    }
}

fn stuck_subscribers(addr: SocketAddr, s: Arc<Shared>) {
    let subscribe = encode(
        &Packet::Subscribe(Subscribe {
            packet_id: common::pid(1),
            filters: vec![(
                filter("n/#"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            )],
            properties: SubscribeProperties::default(),
        }),
        ProtocolVersion::V311,
    );
    while s.attack.load(Ordering::Relaxed) {
        // Four subscribers that never read; each round takes their ids over again.
        let conns: Vec<TcpStream> = (0..4)
            .filter_map(|k| {
                let mut t = dial(addr).ok()?;
                t.write_all(&connect_bytes(&format!("stuck-{k}"), true))
                    .ok()?;
                t.write_all(&subscribe).ok()?;
                Some(t)
            })
            .collect();
        s.attacks.fetch_add(conns.len() as u64, Ordering::Relaxed);
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until && s.attack.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(conns);
    }
}

fn partial_packets(addr: SocketAddr, s: Arc<Shared>) {
    // PUBLISH QoS 0 of 1,000,000 bytes (under the default 1 MiB packet limit): topic "p"
    // then payload; the last 10 bytes are never sent.
    let packet = common::partial_publish(1_000_000);
    let mut held: Vec<TcpStream> = Vec::new();
    while s.attack.load(Ordering::Relaxed) {
        // Keep 300 connections holding a partial packet; replace the ones the broker closed.
        held.retain(|t| {
            let mut b = [0u8; 1];
            t.set_nonblocking(true).ok();
            let gone = matches!(t.peek(&mut b), Ok(0));
            t.set_nonblocking(false).ok();
            !gone
        });
        while held.len() < 300 && s.attack.load(Ordering::Relaxed) {
            let Ok(mut t) = dial(addr) else {
                break;
            };
            t.set_write_timeout(Some(Duration::from_secs(2))).ok();
            let id = format!("partial-{}", s.attacks.fetch_add(1, Ordering::Relaxed));
            let ok = t.write_all(&connect_bytes(&id, true)).is_ok() && t.write_all(&packet).is_ok();
            if ok {
                held.push(t);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn takeover_storm(k: usize, addr: SocketAddr, s: Arc<Shared>) {
    let mut n = 0;
    while s.attack.load(Ordering::Relaxed) {
        if let Ok(mut t) = dial(addr) {
            let _ = t.write_all(&connect_bytes(&format!("storm-{}", (n + k) % 5), false));
            s.attacks.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(5));
        }
        n += 1;
    }
}

fn exhaust_descriptors(addr: SocketAddr, pid: u32, s: Arc<Shared>) {
    // The other attackers get in first.
    std::thread::sleep(Duration::from_secs(5));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(100);
    let limit = fds + 600;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit runs");
    assert!(status.success(), "prlimit");
    let mut held = Vec::new();
    for n in 0..900 {
        if let Ok(mut t) = dial(addr) {
            let _ = t.write_all(&connect_bytes(&format!("fd-{n}"), true));
            held.push(t);
        }
    }
    s.attacks.fetch_add(held.len() as u64, Ordering::Relaxed);
    while s.attack.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore]
fn hostile_mix_leaves_normal_traffic_alone() {
    let secs = env_or("HOSTILE_SECS", 90);
    let dir = DataDir::new("hostile");
    let config = format!("{}/ringmq.toml", dir.path());
    std::fs::write(&config, "[limits]\nslow_consumer_timeout_secs = 3\n").expect("config");
    let broker = BrokerProcess::start_in(&dir, &["--shards", "2", "--config", &config]);
    let addr = broker.addr;
    // 2,000 retained messages for the SUBSCRIBE floods to scan.
    let (mut r, _) = Client::connect(addr, ProtocolVersion::V311, "retainer", true);
    for i in 0..2000 {
        r.publish(&format!("r/{i}"), b"retained", QoS::AtMostOnce, true);
    }
    r.ping();
    let s = Arc::new(Shared {
        stop: AtomicBool::new(false),
        attack: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        pair_sent: (0..PAIRS).map(|_| AtomicU64::new(0)).collect(),
        pair_got: (0..PAIRS).map(|_| AtomicU64::new(0)).collect(),
        sent: (0..PAIRS).map(|_| Mutex::new(HashSet::new())).collect(),
        got: (0..PAIRS).map(|_| Mutex::new(HashSet::new())).collect(),
        attacks: AtomicU64::new(0),
    });
    let mut normal = Vec::new();
    for i in 0..PAIRS {
        let (mut c, _) = Client::connect(addr, ProtocolVersion::V311, &format!("sub-{i}"), true);
        c.subscribe(&format!("n/{i}"), QoS::AtLeastOnce);
        let s2 = Arc::clone(&s);
        normal.push(std::thread::spawn(move || subscriber(i, c, s2)));
    }
    for i in 0..PAIRS {
        let s2 = Arc::clone(&s);
        normal.push(std::thread::spawn(move || publisher(i, addr, s2)));
    }
    let rss_peak = |from: Instant, d: Duration| {
        let mut peak = 0;
        while from.elapsed() < d {
            peak = peak.max(broker.rss_kib());
            std::thread::sleep(Duration::from_millis(250));
        }
        peak
    };
    // Warm-up, then the baseline third.
    std::thread::sleep(Duration::from_secs(2));
    let base_secs = (secs / 3).max(10);
    let (a0, t0) = (s.acked.load(Ordering::Relaxed), Instant::now());
    let base_rss = rss_peak(t0, Duration::from_secs(base_secs));
    let base_rate = (s.acked.load(Ordering::Relaxed) - a0) as f64 / t0.elapsed().as_secs_f64();

    eprintln!("baseline: {base_rate:.0} msgs/s, RSS peak {base_rss} KiB; attack starts");
    s.attack.store(true, Ordering::SeqCst);
    let mut attackers = Vec::new();
    let spawn = |f: Box<dyn FnOnce() + Send>| std::thread::spawn(f);
    for _ in 0..2 {
        let s2 = Arc::clone(&s);
        attackers.push(spawn(Box::new(move || subscribe_flood(addr, s2))));
    }
    let s2 = Arc::clone(&s);
    attackers.push(spawn(Box::new(move || stuck_subscribers(addr, s2))));
    let s2 = Arc::clone(&s);
    attackers.push(spawn(Box::new(move || partial_packets(addr, s2))));
    for k in 0..4 {
        let s2 = Arc::clone(&s);
        attackers.push(spawn(Box::new(move || takeover_storm(k, addr, s2))));
    }
    let (s2, pid) = (Arc::clone(&s), broker.pid());
    attackers.push(spawn(Box::new(move || exhaust_descriptors(addr, pid, s2))));
    // Let the attack settle in (floods start, partial packets are sent), then measure.
    std::thread::sleep(Duration::from_secs(3));
    let hostile_secs = secs.saturating_sub(base_secs).max(20);
    let (a1, t1) = (s.acked.load(Ordering::Relaxed), Instant::now());
    let hostile_rss = rss_peak(t1, Duration::from_secs(hostile_secs));
    let hostile_rate = (s.acked.load(Ordering::Relaxed) - a1) as f64 / t1.elapsed().as_secs_f64();
    eprintln!("under attack: {hostile_rate:.0} msgs/s, RSS peak {hostile_rss} KiB; stopping");
    s.attack.store(false, Ordering::SeqCst);
    for a in attackers {
        a.join().expect("attacker");
    }
    s.stop.store(true, Ordering::SeqCst);
    for t in normal {
        t.join().expect("normal client");
    }
    eprintln!("stopped");
    let mut lost = 0;
    let mut acked = 0;
    for i in 0..PAIRS {
        let sent = s.sent[i].lock().unwrap();
        let got = s.got[i].lock().unwrap();
        acked += sent.len();
        lost += sent.iter().filter(|q| !got.contains(q)).count();
    }
    let closes = broker.log().matches("slow consumer").count();
    eprintln!(
        "hostile mix, 2 shards, {secs} s: normal QoS 1 {base_rate:.0} msgs/s before, \
         {hostile_rate:.0} msgs/s under attack ({:.0}%); RSS peak {:.1} MB before, {:.1} MB \
         under attack; {} attacking connections; {acked} acknowledged, {lost} lost; \
         slow-consumer disconnects logged: {closes}",
        100.0 * hostile_rate / base_rate,
        base_rss as f64 / 1024.0,
        hostile_rss as f64 / 1024.0,
        s.attacks.load(Ordering::Relaxed),
    );
    assert_eq!(lost, 0, "acknowledged normal messages lost");
    assert!(
        hostile_rate >= 0.8 * base_rate,
        "normal traffic fell below 80% of its rate"
    );
    assert!(
        hostile_rss <= base_rss + 160 * 1024,
        "RSS grew by more than 160 MB under attack"
    );
}

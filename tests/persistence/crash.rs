//! Crash consistency: publishers and persistent subscribers at QoS 1 and QoS 2 keep going
//! while the broker is killed (SIGKILL) at random moments, also right after a start (during
//! recovery) and in the middle of a clean stop, and started again on the same store at
//! once. An independent checker records every message the broker acknowledged (PUBACK,
//! PUBREC) and every message a subscriber received, and asserts: no acknowledged message is
//! lost, QoS 2 arrives exactly once, each publisher's order holds (first arrivals); it
//! reports QoS 1 duplicates.
//!
//! The clients here are written for the test and keep their MQTT session state across
//! connections as a real client library does: unacknowledged PUBLISH resent with DUP and
//! the same packet id, PUBREL resent, and QoS 2 packet ids awaiting PUBREL remembered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmq::codec::{
    Ack, Connect, ConnectProperties, MqttStr, Packet, PacketId, ProtocolVersion, Publish,
    PublishProperties, QoS, Subscribe, SubscribeProperties, SubscriptionOptions,
};

use crate::common::conn::Conn;
use crate::common::process::{BrokerProcess, DataDir};
use crate::common::{filter, topic};

const V: ProtocolVersion = ProtocolVersion::V311;
/// Unacknowledged messages a publisher keeps in flight.
const WINDOW: usize = 16;

/// A small deterministic generator (xorshift64*), seeded per run and printed, so that a
/// failing schedule can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A persistent 3.1.1 CONNECT (clean session 0) for `client_id`.
fn persistent_connect(client_id: &str) -> Connect {
    Connect {
        protocol: V,
        clean_start: false,
        keep_alive: 30,
        client_id: MqttStr::try_from_str(client_id).expect("id"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// What the test knows about the broker of the moment.
struct Target {
    /// When the run began: times in the record count from it.
    epoch: Instant,
    addr: Mutex<SocketAddr>,
    stop: AtomicBool,
    /// Publishers stop sending new messages (they still complete their flows).
    drain: AtomicBool,
}

impl Target {
    fn addr(&self) -> SocketAddr {
        *self.addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects, retrying while the broker restarts, until `stop`. Every connection after
    /// the client's first must find its session (`lost_session` counts those that did not).
    fn connect(&self, id: &str, ever: &mut bool, lost_session: &mut u32) -> Option<Conn> {
        while !self.stop.load(Ordering::SeqCst) {
            match Conn::open(self.addr(), persistent_connect(id)) {
                Ok((c, ack)) if ack.reason == ringmq::codec::ReasonCode::Success => {
                    let present = ack.session_present;
                    if !present && *ever {
                        *lost_session += 1;
                    }
                    *ever = true;
                    return Some(c);
                }
                Ok(_) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        None
    }
}

/// Everything the checker records.
#[derive(Default)]
struct Record {
    /// Per publisher: the sequence numbers the broker acknowledged.
    acked: BTreeMap<usize, HashSet<u64>>,
    /// Per (subscriber, publisher): sequence numbers in arrival order (duplicates included).
    received: BTreeMap<(usize, usize), Vec<u64>>,
    /// Sessions found missing after a reconnect.
    lost_sessions: u32,
    /// When (ms into the run) each (publisher, sequence number) was acknowledged, and what
    /// happened to the broker when: for the report of a failure.
    acked_at: HashMap<(usize, u64), u64>,
    events: Vec<(u64, String)>,
}

/// One outbound flow of a publisher: the message's sequence number, or (QoS 2 after
/// PUBREC) only that the packet id awaits PUBCOMP.
#[derive(Clone, Copy)]
enum Flow {
    Published(u64),
    Released,
}

fn publisher(index: usize, qos: QoS, target: Arc<Target>, record: Arc<Mutex<Record>>) {
    let id = format!("crash-pub-{index}");
    let topic_name = format!("crash/{index}");
    let mut inflight: BTreeMap<u16, Flow> = BTreeMap::new();
    let mut next_seq = 0u64;
    let mut next_id = 0u16;
    let (mut lost, mut ever) = (0, false);
    'connection: while let Some(mut conn) = target.connect(&id, &mut ever, &mut lost) {
        // Resend what the broker did not finish, in order, as the session requires.
        for (&packet_id, flow) in &inflight {
            let pid = PacketId::new(packet_id).expect("non-zero");
            let p = match *flow {
                Flow::Published(seq) => Packet::Publish(message(&topic_name, qos, pid, seq, true)),
                Flow::Released => Packet::PubRel(Ack::new(pid)),
            };
            if conn.send(&p).is_err() {
                continue 'connection;
            }
        }
        loop {
            if target.stop.load(Ordering::SeqCst) {
                break 'connection;
            }
            while inflight.len() < WINDOW && !target.drain.load(Ordering::SeqCst) {
                next_id = next_id % 60_000 + 1;
                let pid = PacketId::new(next_id).expect("non-zero");
                let seq = next_seq;
                next_seq += 1;
                inflight.insert(next_id, Flow::Published(seq));
                let p = message(&topic_name, qos, pid, seq, false);
                if conn.send(&Packet::Publish(p)).is_err() {
                    continue 'connection;
                }
            }
            if target.drain.load(Ordering::SeqCst) && inflight.is_empty() {
                break 'connection;
            }
            let packet = match conn.recv(Duration::from_millis(50)) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(_) => continue 'connection,
            };
            let acked = match packet {
                Packet::PubAck(a) => inflight.remove(&a.packet_id.get()),
                Packet::PubRec(a) => {
                    let key = a.packet_id.get();
                    let flow = inflight.get(&key).copied();
                    if let Some(Flow::Published(_)) = flow {
                        inflight.insert(key, Flow::Released);
                    }
                    if conn.send(&Packet::PubRel(Ack::new(a.packet_id))).is_err() {
                        continue 'connection;
                    }
                    flow
                }
                Packet::PubComp(a) => {
                    inflight.remove(&a.packet_id.get());
                    None
                }
                _ => None,
            };
            if let Some(Flow::Published(seq)) = acked {
                let at = target.epoch.elapsed().as_millis() as u64;
                let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
                r.acked.entry(index).or_default().insert(seq);
                r.acked_at.insert((index, seq), at);
            }
        }
    }
    record
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .lost_sessions += lost;
}

fn message(topic_name: &str, qos: QoS, id: PacketId, seq: u64, dup: bool) -> Publish {
    Publish {
        dup,
        qos,
        retain: false,
        topic: topic(topic_name),
        packet_id: Some(id),
        properties: PublishProperties::default(),
        payload: Bytes::from(seq.to_be_bytes().to_vec()),
    }
}

fn subscriber(index: usize, qos: QoS, target: Arc<Target>, record: Arc<Mutex<Record>>) {
    let id = format!("crash-sub-{index}");
    // QoS 2 ids whose PUBREC was sent and whose PUBREL has not arrived: a PUBLISH with one
    // of them is the same message again (the client's half of exactly once).
    let mut awaiting_rel: HashSet<u16> = HashSet::new();
    let mut subscribed = false;
    let (mut lost, mut ever) = (0, false);
    'connection: while let Some(mut conn) = target.connect(&id, &mut ever, &mut lost) {
        if !subscribed {
            let sub = Subscribe {
                packet_id: PacketId::new(1).expect("id"),
                filters: vec![(
                    filter("crash/#"),
                    SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    },
                )],
                properties: SubscribeProperties::default(),
            };
            if conn.send(&Packet::Subscribe(sub)).is_err() {
                continue;
            }
            match conn.recv(Duration::from_secs(5)) {
                Ok(Some(Packet::SubAck(_))) => subscribed = true,
                _ => continue,
            }
        }
        loop {
            if target.stop.load(Ordering::SeqCst) {
                break 'connection;
            }
            let packet = match conn.recv(Duration::from_millis(50)) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(_) => continue 'connection,
            };
            let reply = match packet {
                Packet::Publish(p) => {
                    let Some(pid) = p.packet_id else { continue };
                    let fresh = p.qos != QoS::ExactlyOnce || awaiting_rel.insert(pid.get());
                    if fresh {
                        let from: usize = p.topic.as_str()[6..].parse().expect("publisher");
                        let seq = u64::from_be_bytes(p.payload[..8].try_into().expect("seq"));
                        let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
                        r.received.entry((index, from)).or_default().push(seq);
                    }
                    match p.qos {
                        QoS::ExactlyOnce => Packet::PubRec(Ack::new(pid)),
                        _ => Packet::PubAck(Ack::new(pid)),
                    }
                }
                Packet::PubRel(a) => {
                    awaiting_rel.remove(&a.packet_id.get());
                    Packet::PubComp(Ack::new(a.packet_id))
                }
                _ => continue,
            };
            if conn.send(&reply).is_err() {
                continue 'connection;
            }
        }
    }
    record
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .lost_sessions += lost;
}

/// The whole scenario: `kills` random SIGKILLs, then a drain and the checks. Returns a
/// summary line for the report.
pub fn crash_run(kills: usize, shards: &str) -> String {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("crash test seed {seed} (CRASH_SEED={seed} replays the kill schedule)");
    let mut rng = Rng(seed);
    // CRASH_SHARDS runs another shard count (to tell shard-local faults from cross-shard ones).
    let shards_env = std::env::var("CRASH_SHARDS").ok();
    let shards = shards_env.as_deref().unwrap_or(shards);
    let dir = DataDir::new("crash");
    // Crash consistency is what is checked, not the queue limits: a subscriber reconnecting
    // after a restart may be thousands of messages behind, and beyond `max_queued_messages`
    // (1,000 by default) the broker drops QoS 1/2 messages for it (counted, see `$SYS`),
    // which the checker would report as lost.
    let config = DataDir::new("crash-config");
    let config_file = config.0.join("ringmq.toml");
    std::fs::write(
        &config_file,
        "[limits]\nmax_queued_messages = 1000000\nmax_queued_bytes = 1073741824\n",
    )
    .expect("write config");
    let config_file = config_file.to_str().expect("utf-8 path").to_owned();
    let args = ["--shards", shards, "--config", config_file.as_str()];
    let mut broker = BrokerProcess::start_in(&dir, &args);
    let target = Arc::new(Target {
        epoch: Instant::now(),
        addr: Mutex::new(broker.addr),
        stop: AtomicBool::new(false),
        drain: AtomicBool::new(false),
    });
    let record = Arc::new(Mutex::new(Record::default()));
    // Subscribers first, so that their sessions and subscriptions exist before publishing.
    let mut threads = Vec::new();
    for (i, qos) in [QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        let (t, r) = (Arc::clone(&target), Arc::clone(&record));
        threads.push(std::thread::spawn(move || subscriber(i, qos, t, r)));
    }
    std::thread::sleep(Duration::from_millis(500));
    let publishers = [
        QoS::AtLeastOnce,
        QoS::AtLeastOnce,
        QoS::ExactlyOnce,
        QoS::ExactlyOnce,
    ];
    for (i, qos) in publishers.into_iter().enumerate() {
        let (t, r) = (Arc::clone(&target), Arc::clone(&record));
        threads.push(std::thread::spawn(move || publisher(i, qos, t, r)));
    }
    for k in 0..kills {
        let wait = match k % 5 {
            0 => rng.below(30),        // right after a start: during recovery
            _ => 100 + rng.below(500), // under load
        };
        std::thread::sleep(Duration::from_millis(wait));
        let event = |what: String| {
            let at = target.epoch.elapsed().as_millis() as u64;
            record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .events
                .push((at, what));
        };
        if k % 7 == 3 {
            // In the middle of a clean stop.
            event(format!("kill {k}: SIGTERM"));
            broker.signal(libc::SIGTERM);
            std::thread::sleep(Duration::from_millis(rng.below(20)));
        }
        for line in broker.log().lines().filter(|l| l.contains(" WARN ")) {
            event(format!("run before kill {k}: {line}"));
        }
        event(format!("kill {k}: SIGKILL ({wait} ms after the start)"));
        broker.kill();
        broker = BrokerProcess::start_in(&dir, &args);
        event(format!("kill {k}: restarted"));
        *target.addr.lock().unwrap_or_else(|e| e.into_inner()) = broker.addr;
    }
    std::thread::sleep(Duration::from_millis(500));
    target.drain.store(true, Ordering::SeqCst);
    // Everything acknowledged must arrive; give the flows time to finish.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let done = {
            let r = record.lock().unwrap_or_else(|e| e.into_inner());
            missing(&r, &publishers) == 0
        };
        if done || Instant::now() > deadline {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    target.stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("client thread");
    }
    let status = broker.terminate(Duration::from_secs(10));
    if std::env::var_os("CRASH_WARNINGS").is_some() {
        let r = record.lock().unwrap_or_else(|e| e.into_inner());
        for (at, what) in r.events.iter().filter(|(_, w)| w.contains("WARN")) {
            eprintln!("{at} ms: {what}");
        }
    }
    assert!(status.success(), "final stop: {status}");
    let r = record.lock().unwrap_or_else(|e| e.into_inner());
    check(&r, &publishers, kills, seed)
}

/// Acknowledged messages a subscriber has not received yet.
fn missing(r: &Record, publishers: &[QoS]) -> usize {
    let mut n = 0;
    for (p, acked) in &r.acked {
        for s in 0..2 {
            let got: HashSet<u64> = r
                .received
                .get(&(s, *p))
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default();
            n += acked.iter().filter(|seq| !got.contains(seq)).count();
        }
    }
    let _ = publishers;
    n
}

/// Which acknowledged messages are missing where, and what each subscriber got from that
/// publisher around them: tells a message never delivered from a stalled flow.
fn missing_detail(r: &Record) -> String {
    let mut lines = Vec::new();
    for (p, acked) in &r.acked {
        for s in 0..2 {
            let got = r.received.get(&(s, *p));
            let have: HashSet<u64> = got.map(|v| v.iter().copied().collect()).unwrap_or_default();
            let mut gone: Vec<u64> = acked
                .iter()
                .copied()
                .filter(|q| !have.contains(q))
                .collect();
            if gone.is_empty() {
                continue;
            }
            gone.sort_unstable();
            let last = got.and_then(|v| v.iter().max().copied());
            let when = r.acked_at.get(&(*p, gone[0])).copied().unwrap_or(0);
            let near: Vec<&str> = r
                .events
                .iter()
                .filter(|(at, _)| at.abs_diff(when) < 1_000)
                .map(|(_, what)| what.as_str())
                .collect();
            lines.push(format!(
                "subscriber {s} from publisher {p}: {} missing, first {:?}, highest received \
                 {last:?}; the first acknowledged at {when} ms, within 1 s of: {near:?} \
                 ({:?})",
                gone.len(),
                &gone[..gone.len().min(10)],
                r.events
                    .iter()
                    .filter(|(at, _)| at.abs_diff(when) < 1_000)
                    .map(|(at, _)| *at)
                    .collect::<Vec<_>>()
            ));
        }
    }
    lines.join("; ")
}

fn check(r: &Record, publishers: &[QoS], kills: usize, seed: u64) -> String {
    let acked: usize = r.acked.values().map(HashSet::len).sum();
    assert!(acked > 0, "nothing was acknowledged (seed {seed})");
    assert_eq!(
        r.lost_sessions, 0,
        "a persistent session was lost (seed {seed})"
    );
    let lost = missing(r, publishers);
    assert_eq!(
        lost,
        0,
        "{lost} acknowledged message(s) lost (seed {seed}): {}",
        missing_detail(r)
    );
    let mut duplicates = 0;
    for ((s, p), seqs) in &r.received {
        let mut seen: HashMap<u64, usize> = HashMap::new();
        let mut firsts = Vec::new();
        for &seq in seqs {
            let n = seen.entry(seq).or_insert(0);
            if *n == 0 {
                firsts.push(seq);
            }
            *n += 1;
        }
        let dups: usize = seen.values().map(|n| n - 1).sum();
        // Subscriber 1 takes QoS 2 publishers' messages at QoS 2: exactly once.
        if *s == 1 && publishers[*p] == QoS::ExactlyOnce {
            let first_dup = seen.iter().filter(|(_, n)| **n > 1).map(|(q, _)| *q).min();
            let when = first_dup.and_then(|q| r.acked_at.get(&(*p, q)).copied());
            let near: Vec<&(u64, String)> = r
                .events
                .iter()
                .filter(|(at, _)| when.is_some_and(|w| at.abs_diff(w) < 1_000))
                .collect();
            assert_eq!(
                dups, 0,
                "QoS 2 delivered twice to subscriber {s} from {p} (seed {seed}): first \
                 {first_dup:?}, acknowledged at {when:?} ms, within 1 s of {near:?}"
            );
        }
        duplicates += dups;
        let ordered = firsts.windows(2).all(|w| w[0] < w[1]);
        assert!(
            ordered,
            "publisher {p}'s order broken at subscriber {s} (seed {seed})"
        );
    }
    let received: usize = r.received.values().map(Vec::len).sum();
    format!(
        "{kills} kills: {acked} messages acknowledged, {received} deliveries, 0 lost, \
         {duplicates} QoS 1 duplicate(s), QoS 2 exactly once, order kept (seed {seed})"
    )
}

#[test]
fn twenty_kills_under_qos1_and_qos2_load_lose_nothing_acknowledged() {
    let summary = crash_run(20, "2");
    eprintln!("{summary}");
}

/// The long run whose result the README reports: `cargo test --release --test persistence
/// -- --ignored --nocapture hundred_kills`.
#[test]
#[ignore]
fn hundred_kills_under_qos1_and_qos2_load_lose_nothing_acknowledged() {
    let summary = crash_run(100, "2");
    eprintln!("{summary}");
}

//! A stress test with a watchdog: many concurrent clients mix QoS 1/2 flows, overlapping and
//! shared subscriptions, withheld acknowledgements under a small Receive Maximum, takeovers,
//! disconnects and reconnects, and every answer the broker owes (CONNACK, SUBACK, UNSUBACK,
//! PUBACK, PUBREC, PUBREL, PUBCOMP, PINGRESP, a delivery to a subscriber that keeps up) must
//! come within 1 s. At the end every acknowledged QoS 1/2 message must have reached every
//! subscriber that keeps up. Short runs in CI; the long run is ignored:
//! `WATCHDOG_SECS=1800 cargo test --release --test reliability -- --ignored --nocapture watchdog`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmq::codec::{
    Ack, Connect, ConnectProperties, Disconnect, MqttStr, Packet, PacketId, ProtocolVersion,
    Publish, PublishProperties, QoS, ReasonCode, Subscribe, SubscribeProperties,
    SubscriptionOptions, Unsubscribe,
};
use ringmq::config::DriverKind;

use crate::common::conn::Conn;
use crate::common::{Broker, filter, topic};

/// The longest any answer may take.
const LIMIT: Duration = Duration::from_secs(1);

/// Everything the clients report.
struct Run {
    epoch: Instant,
    stop: AtomicBool,
    /// Publishers stop publishing (flows in progress complete).
    drain: AtomicBool,
    failures: Mutex<Vec<String>>,
    /// Per publisher: QoS 1/2 sequence numbers the broker acknowledged.
    acked: Mutex<HashMap<usize, HashSet<u64>>>,
    /// Per (subscriber, publisher): sequence numbers received on the non-shared filter.
    received: Mutex<HashMap<(usize, usize), HashSet<u64>>>,
    answers: AtomicU64,
    deliveries: AtomicU64,
    worst_us: AtomicU64,
}

impl Run {
    fn fail(&self, what: String) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < 50 {
            f.push(what);
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Records an answer that took `took`; a failure beyond `LIMIT`.
    fn answered(&self, who: &str, what: &str, took: Duration) {
        self.answers.fetch_add(1, Ordering::Relaxed);
        self.worst_us
            .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        if took > LIMIT {
            self.fail(format!("{who}: {what} took {took:?}"));
        }
    }
}

fn connect_packet(v: ProtocolVersion, id: &str, clean: bool, receive_max: Option<u16>) -> Connect {
    Connect {
        protocol: v,
        clean_start: clean,
        keep_alive: 30,
        client_id: MqttStr::try_from_str(id).expect("id"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties {
            session_expiry_interval: (!clean && v.is_v5()).then_some(600),
            receive_maximum: receive_max,
            ..ConnectProperties::default()
        },
    }
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

/// Connects, checking the CONNACK's delay; `None` when the run is over or the broker refused.
fn connect(run: &Run, addr: std::net::SocketAddr, c: Connect) -> Option<Conn> {
    let who = c.client_id.as_str().to_owned();
    let sent = Instant::now();
    match Conn::open(addr, c) {
        Ok((conn, ack)) if ack.reason == ReasonCode::Success => {
            run.answered(&who, "CONNACK", sent.elapsed());
            Some(conn)
        }
        Ok((_, ack)) => {
            run.fail(format!("{who}: CONNACK {:?}", ack.reason));
            None
        }
        Err(e) => {
            if !run.stopped() {
                run.fail(format!("{who}: no CONNACK within 5 s: {e}"));
            }
            None
        }
    }
}

/// Waits for the packet `want` accepts, answering what arrives meanwhile (deliveries are
/// acknowledged at once). Returns false when the connection closed (`closed_ok`: a takeover
/// may close it) or the answer did not come within `LIMIT` (a failure).
fn wait_for(
    run: &Run,
    who: &str,
    conn: &mut Conn,
    what: &str,
    closed_ok: bool,
    mut want: impl FnMut(&Packet) -> bool,
) -> bool {
    let sent = Instant::now();
    loop {
        let left = (LIMIT + Duration::from_millis(500)).saturating_sub(sent.elapsed());
        match conn.recv(left) {
            Ok(Some(p)) if want(&p) => {
                run.answered(who, what, sent.elapsed());
                return true;
            }
            Ok(Some(p)) => answer_delivery(conn, &p),
            Ok(None) => {
                run.fail(format!("{who}: no {what} within {:?}", sent.elapsed()));
                return false;
            }
            Err(e) => {
                if !closed_ok && !run.stopped() {
                    run.fail(format!("{who}: connection lost waiting for {what}: {e}"));
                }
                return false;
            }
        }
    }
}

/// Acknowledges a delivery (or a PUBREL) that arrives while waiting for something else.
fn answer_delivery(conn: &mut Conn, p: &Packet) {
    let reply = match p {
        Packet::Publish(p) => match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => Packet::PubAck(Ack::new(id)),
            (QoS::ExactlyOnce, Some(id)) => Packet::PubRec(Ack::new(id)),
            _ => return,
        },
        Packet::PubRel(a) => Packet::PubComp(Ack::new(a.packet_id)),
        _ => return,
    };
    let _ = conn.send(&reply);
}

fn subscribe(run: &Run, who: &str, conn: &mut Conn, id: u16, filters: &[(&str, QoS)]) -> bool {
    let sub = Subscribe {
        packet_id: pid(id),
        filters: filters
            .iter()
            .map(|(f, qos)| {
                let options = SubscriptionOptions {
                    qos: *qos,
                    ..SubscriptionOptions::default()
                };
                (filter(f), options)
            })
            .collect(),
        properties: SubscribeProperties::default(),
    };
    conn.send(&Packet::Subscribe(sub)).is_ok()
        && wait_for(
            run,
            who,
            conn,
            "SUBACK",
            false,
            |p| matches!(p, Packet::SubAck(a) if a.packet_id == pid(id)),
        )
}

/// A publisher: QoS 0, 1 and 2 in turn to its own topic and a shared-group topic, paced, each
/// acknowledgement within the limit.
fn publisher(i: usize, addr: std::net::SocketAddr, run: Arc<Run>) {
    let v = if i.is_multiple_of(2) {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    let who = format!("wd-pub-{i}");
    let Some(mut conn) = connect(&run, addr, connect_packet(v, &who, true, None)) else {
        return;
    };
    let mut seq = 0u64;
    while !run.drain.load(Ordering::SeqCst) && !run.stopped() {
        seq += 1;
        let qos = match seq % 3 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let shared = seq.is_multiple_of(5);
        let t = if shared {
            format!("wd/s/{i}")
        } else {
            format!("wd/{i}/x")
        };
        let id = (seq % 60_000) as u16 + 1;
        let mut payload = seq.to_be_bytes().to_vec();
        payload.extend_from_slice(&(run.epoch.elapsed().as_micros() as u64).to_be_bytes());
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic(&t),
            packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
            properties: PublishProperties::default(),
            payload: Bytes::from(payload),
        };
        if conn.send(&Packet::Publish(publish)).is_err() {
            run.fail(format!("{who}: write failed"));
            return;
        }
        let ok = match qos {
            QoS::AtMostOnce => true,
            QoS::AtLeastOnce => wait_for(
                &run,
                &who,
                &mut conn,
                "PUBACK",
                false,
                |p| matches!(p, Packet::PubAck(a) if a.packet_id == pid(id)),
            ),
            QoS::ExactlyOnce => {
                wait_for(
                    &run,
                    &who,
                    &mut conn,
                    "PUBREC",
                    false,
                    |p| matches!(p, Packet::PubRec(a) if a.packet_id == pid(id)),
                ) && conn.send(&Packet::PubRel(Ack::new(pid(id)))).is_ok()
                    && wait_for(
                        &run,
                        &who,
                        &mut conn,
                        "PUBCOMP",
                        false,
                        |p| matches!(p, Packet::PubComp(a) if a.packet_id == pid(id)),
                    )
            }
        };
        if !ok {
            return;
        }
        if qos != QoS::AtMostOnce && !shared {
            let mut acked = run.acked.lock().unwrap_or_else(|e| e.into_inner());
            acked.entry(i).or_default().insert(seq);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A subscriber that keeps up: overlapping subscriptions (`wd/+/x` at QoS 2 and `wd/#` at
/// QoS 1) and a shared group; every delivery within the limit of its publish.
fn steady(i: usize, addr: std::net::SocketAddr, run: Arc<Run>) {
    let v = if i == 0 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    let who = format!("wd-steady-{i}");
    let Some(mut conn) = connect(&run, addr, connect_packet(v, &who, false, None)) else {
        return;
    };
    let filters = [
        ("wd/+/x", QoS::ExactlyOnce),
        ("wd/#", QoS::AtLeastOnce),
        ("$share/g/wd/s/#", QoS::AtLeastOnce),
    ];
    if !subscribe(&run, &who, &mut conn, 1, &filters) {
        return;
    }
    let mut qos2_pending: HashSet<u16> = HashSet::new();
    while !run.stopped() {
        let p = match conn.recv(Duration::from_millis(100)) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                if !run.stopped() {
                    run.fail(format!("{who}: connection lost: {e}"));
                }
                return;
            }
        };
        if let Packet::Publish(p) = &p {
            let fresh = p.qos != QoS::ExactlyOnce
                || p.packet_id.is_some_and(|id| qos2_pending.insert(id.get()));
            if fresh && p.payload.len() >= 16 {
                let seq = u64::from_be_bytes(p.payload[..8].try_into().expect("seq"));
                let at = u64::from_be_bytes(p.payload[8..16].try_into().expect("time"));
                let took = run
                    .epoch
                    .elapsed()
                    .saturating_sub(Duration::from_micros(at));
                run.deliveries.fetch_add(1, Ordering::Relaxed);
                run.answered(&who, &format!("delivery of {}", p.topic.as_str()), took);
                let parts: Vec<&str> = p.topic.as_str().split('/').collect();
                if parts.len() == 3
                    && parts[2] == "x"
                    && let Ok(from) = parts[1].parse::<usize>()
                {
                    let mut r = run.received.lock().unwrap_or_else(|e| e.into_inner());
                    r.entry((i, from)).or_default().insert(seq);
                }
            }
        }
        if let Packet::PubRel(a) = &p {
            qos2_pending.remove(&a.packet_id.get());
        }
        answer_delivery(&mut conn, &p);
    }
}

/// A slow client: Receive Maximum 2, acknowledgements withheld for a while; it still gets
/// PINGRESP within the limit.
fn withholder(i: usize, addr: std::net::SocketAddr, run: Arc<Run>) {
    let who = format!("wd-slow-{i}");
    let c = connect_packet(ProtocolVersion::V5, &who, true, Some(2));
    let Some(mut conn) = connect(&run, addr, c) else {
        return;
    };
    if !subscribe(&run, &who, &mut conn, 1, &[("wd/#", QoS::AtLeastOnce)]) {
        return;
    }
    let mut held: Vec<(Instant, PacketId)> = Vec::new();
    let mut next_ping = Instant::now();
    while !run.stopped() {
        if Instant::now() >= next_ping {
            next_ping = Instant::now() + Duration::from_millis(300);
            if conn.send(&Packet::PingReq).is_err() {
                return;
            }
            let sent = Instant::now();
            loop {
                match conn.recv(LIMIT + Duration::from_millis(500)) {
                    Ok(Some(Packet::PingResp)) => {
                        run.answered(&who, "PINGRESP", sent.elapsed());
                        break;
                    }
                    Ok(Some(Packet::Publish(p))) => {
                        if let Some(id) = p.packet_id {
                            held.push((Instant::now() + Duration::from_millis(400), id));
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        if !run.stopped() {
                            run.fail(format!("{who}: no PINGRESP within {:?}", sent.elapsed()));
                        }
                        return;
                    }
                }
            }
        }
        match conn.recv(Duration::from_millis(50)) {
            Ok(Some(Packet::Publish(p))) => {
                if let Some(id) = p.packet_id {
                    held.push((Instant::now() + Duration::from_millis(400), id));
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
        let now = Instant::now();
        for (_, id) in held.iter().filter(|(due, _)| *due <= now) {
            let _ = conn.send(&Packet::PubAck(Ack::new(*id)));
        }
        held.retain(|(due, _)| *due > now);
    }
}

/// Connects, subscribes, unsubscribes, pings and leaves in a loop, some of them under one
/// shared client id (takeovers); each answer within the limit.
fn churner(i: usize, addr: std::net::SocketAddr, run: Arc<Run>) {
    let mut round = 0u64;
    while !run.stopped() {
        round += 1;
        let v = if (i + round as usize).is_multiple_of(2) {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        };
        // Churners 0 and 1 share an id: each connection may take over the other's.
        let taking_over = i < 2;
        let who = if taking_over {
            "wd-shared-id".to_owned()
        } else {
            format!("wd-churn-{i}")
        };
        let clean = !round.is_multiple_of(3);
        let Some(mut conn) = connect(&run, addr, connect_packet(v, &who, clean, None)) else {
            if run.stopped() {
                return;
            }
            continue;
        };
        let sub = Subscribe {
            packet_id: pid(7),
            filters: vec![(
                filter(&format!("wd/churn/{i}/#")),
                SubscriptionOptions::default(),
            )],
            properties: SubscribeProperties::default(),
        };
        let ok = conn.send(&Packet::Subscribe(sub)).is_ok()
            && wait_for(&run, &who, &mut conn, "SUBACK", taking_over, |p| {
                matches!(p, Packet::SubAck(_))
            })
            && conn.send(&Packet::PingReq).is_ok()
            && wait_for(&run, &who, &mut conn, "PINGRESP", taking_over, |p| {
                matches!(p, Packet::PingResp)
            })
            && conn
                .send(&Packet::Unsubscribe(Unsubscribe {
                    packet_id: pid(8),
                    filters: vec![filter(&format!("wd/churn/{i}/#"))],
                    user_properties: Vec::new(),
                }))
                .is_ok()
            && wait_for(&run, &who, &mut conn, "UNSUBACK", taking_over, |p| {
                matches!(p, Packet::UnsubAck(_))
            });
        if ok && round.is_multiple_of(2) {
            let _ = conn.send(&Packet::Disconnect(Disconnect::new(
                ReasonCode::NormalDisconnection,
            )));
        }
        drop(conn);
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn watchdog_run(shards: usize, driver: DriverKind, secs: u64) {
    let broker = Broker::start_with(shards, |c| {
        c.driver = driver;
        // Small enough that the slow clients' windows fill; large enough for the others.
        c.limits.max_inflight = 32;
    });
    let addr = broker.addr;
    let run = Arc::new(Run {
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        drain: AtomicBool::new(false),
        failures: Mutex::new(Vec::new()),
        acked: Mutex::new(HashMap::new()),
        received: Mutex::new(HashMap::new()),
        answers: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        worst_us: AtomicU64::new(0),
    });
    let mut threads = Vec::new();
    let spawn = |f: fn(usize, std::net::SocketAddr, Arc<Run>), i: usize| {
        let run = Arc::clone(&run);
        std::thread::spawn(move || f(i, addr, run))
    };
    for i in 0..2 {
        threads.push(spawn(steady, i));
    }
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..2 {
        threads.push(spawn(withholder, i));
    }
    for i in 0..4 {
        threads.push(spawn(churner, i));
    }
    let publishers: Vec<_> = (0..4).map(|i| spawn(publisher, i)).collect();
    std::thread::sleep(Duration::from_secs(secs));
    run.drain.store(true, Ordering::SeqCst);
    for p in publishers {
        let _ = p.join();
    }
    // Every acknowledged QoS 1/2 message reaches both subscribers that keep up.
    let deadline = Instant::now() + Duration::from_secs(5);
    let missing = loop {
        let missing = {
            let acked = run.acked.lock().unwrap_or_else(|e| e.into_inner());
            let received = run.received.lock().unwrap_or_else(|e| e.into_inner());
            let mut n = 0;
            for (p, seqs) in acked.iter() {
                for s in 0..2 {
                    let got = received.get(&(s, *p));
                    n += seqs
                        .iter()
                        .filter(|q| got.is_none_or(|g| !g.contains(q)))
                        .count();
                }
            }
            n
        };
        if missing == 0 || Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    run.stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    let failures = run
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    eprintln!(
        "watchdog {shards} shard(s) {driver:?} {secs}s: {} answers, {} deliveries checked, \
         worst {:.1} ms, {} failure(s), {missing} acknowledged message(s) missing",
        run.answers.load(Ordering::Relaxed),
        run.deliveries.load(Ordering::Relaxed),
        run.worst_us.load(Ordering::Relaxed) as f64 / 1000.0,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "answers late or missing: {failures:#?}"
    );
    assert_eq!(missing, 0, "acknowledged messages that never arrived");
    broker.stop();
}

fn secs(default: u64) -> u64 {
    std::env::var("WATCHDOG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn watchdog_one_shard_io_uring() {
    watchdog_run(1, DriverKind::Auto, secs(6));
}

#[test]
fn watchdog_four_shards_epoll() {
    watchdog_run(4, DriverKind::Epoll, secs(6));
}

/// The long run: every driver and shard count for `WATCHDOG_SECS` each (default 30 min).
#[test]
#[ignore]
fn watchdog_long() {
    let s = secs(1800);
    for (shards, driver) in [
        (1, DriverKind::Auto),
        (4, DriverKind::Auto),
        (1, DriverKind::Epoll),
        (4, DriverKind::Epoll),
    ] {
        watchdog_run(shards, driver, s);
    }
}
